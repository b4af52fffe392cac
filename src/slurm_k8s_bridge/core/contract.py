"""The contract between the bridge's halves, defined once.

Everything that two parts of the bridge must spell the same way lives here: the labels and
annotations on the Kubernetes objects (the daemon finds its objects by them), the stamp the
job_submit plugin writes into AdminComment (the daemon trusts only that), the SPANK option
names and how their values travel to slurmctld, the features the dynamic Slurm nodes carry
(slurm.conf NodeSets select by them), the grammar of a user's ``--k8s-image`` /
``--k8s-queue`` / ``--k8s-priority``, and where the configuration is found.

The C shims (csrc/) get what they need from ``k8sb_contract.h``, generated from this module
by ``c_header()`` when the plugins are built (``slurm.plugin_build``); each built ``.so``
carries ``contract_fingerprint()`` so a test can prove a plugin and this module agree.
Pure data: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

# -- what the bridge's Kubernetes objects carry ------------------------------------------

#: The bridge's label and annotation prefix (a DNS subdomain and a ``/``).
LABEL_PREFIX = "slurm-k8s-bridge.io/"
#: ``app.kubernetes.io/managed-by`` value of every object the bridge creates.
MANAGED_BY = "slurm-k8s-bridge"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
CLUSTER_LABEL = LABEL_PREFIX + "cluster"
JOB_ID_LABEL = LABEL_PREFIX + "job-id"
ARRAY_TASK_LABEL = LABEL_PREFIX + "array-task-id"
JOB_NAME_LABEL = LABEL_PREFIX + "job-name"
UID_LABEL = LABEL_PREFIX + "uid"
PARTITION_ANNOTATION = LABEL_PREFIX + "partition"
SHAPES_ANNOTATION = LABEL_PREFIX + "shapes"
ACCOUNT_ANNOTATION = LABEL_PREFIX + "account"
QOS_ANNOTATION = LABEL_PREFIX + "qos"
#: labels the Job controller puts on a Job's pods (the second one before Kubernetes 1.27)
POD_JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")

# -- Slurm side ------------------------------------------------------------------------

#: AdminComment of an accepted bridged job starts with this (``core.request``).
STAMP_PREFIX = "k8sb1:"
#: what the C shim looks for to tell a stamped job (any stamp version)
STAMP_FAMILY = "k8sb"
#: every message the user reads from the bridge starts with this (``sbatch: error: k8s-bridge: ...``)
MESSAGE_PREFIX = "k8s-bridge: "
#: comments the daemon writes on a job (squeue %k) start with this
COMMENT_PREFIX = "k8s: "
#: ``SPANK_PLUGIN(k8s_bridge, 1)``: option values reach job_submit as
#: ``_SLURM_SPANK_OPTION_k8s_bridge_<option>=<value>`` in ``spank_job_env``
SPANK_PLUGIN_NAME = "k8s_bridge"
SPANK_ENV_PREFIX = "_SLURM_SPANK_OPTION_"
IMAGE_OPTION = "k8s-image"
QUEUE_OPTION = "k8s-queue"
PRIORITY_OPTION = "k8s-priority"
SPANK_OPTIONS = (IMAGE_OPTION, QUEUE_OPTION, PRIORITY_OPTION)
#: every pod's dynamic Slurm node carries this feature (``NodeSet=k8spods Feature=k8s-pod``)
POD_NODE_FEATURE = "k8s-pod"
#: mirrored Kubernetes GPU nodes: ``k8s-<node>`` with this feature, in NodeSet k8snodes
MIRROR_PREFIX = "k8s-"
MIRROR_NODE_FEATURE = "k8s-node"
POD_NODESET = "k8spods"
MIRROR_NODESET = "k8snodes"
#: set in the pod's environment (slurmd's, so slurmstepd's): the SPANK plugin acts there only
POD_JOB_ID_ENV = "SLURM_K8S_JOB_ID"
#: answer of the embedded Python's ping: the C side knows the package loaded
PING_MAGIC = 0x6B38

# -- configuration ---------------------------------------------------------------------

DEFAULT_CONFIG_PATH = "/etc/slurm/k8s-bridge.yaml"
CONFIG_ENV = "SLURM_K8S_BRIDGE_CONFIG"

# -- what users may type ---------------------------------------------------------------

#: A Kubernetes name that is a DNS subdomain (RFC 1123): PriorityClass, LocalQueue, ...
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
#: PriorityClass names are DNS subdomains: at most 253 characters.
PRIORITY_CLASS_MAX = 253
#: ``--k8s-queue``: a Kueue LocalQueue (or Volcano Queue) name. The name itself may be a DNS
#: subdomain, but the bridge puts it in the label ``kueue.x-k8s.io/queue-name``, and a label
#: value is at most 63 characters: that is the rule that applies.
QUEUE_NAME_MAX = 63
#: ``--k8s-image``: a container image reference, ``registry[:port]/path[:tag][@sha256:...]``.
IMAGE_PATTERN = re.compile(
    r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[a-f0-9]{64})?$")
#: longest image reference the bridge accepts
IMAGE_MAX = 512
#: characters an image reference may hold besides letters and digits (the C shim's check)
IMAGE_PUNCTUATION = "._-/:@"
#: Kubernetes label values: at most 63 characters
LABEL_VALUE_MAX = 63
#: pod hostnames (= dynamic Slurm node names) are DNS labels
HOSTNAME_MAX = 63


def valid_queue_name(value: str) -> bool:
    return 0 < len(value) <= QUEUE_NAME_MAX and bool(DNS_SUBDOMAIN.match(value))


def valid_priority_class(value: str) -> bool:
    return 0 < len(value) <= PRIORITY_CLASS_MAX and bool(DNS_SUBDOMAIN.match(value))


def valid_image(value: str) -> bool:
    return 0 < len(value) <= IMAGE_MAX and bool(IMAGE_PATTERN.match(value))


# -- the C side ------------------------------------------------------------------------

def c_values() -> Mapping[str, str | int]:
    """What the C shims use, by the macro name they use it under."""
    return {
        "K8SB_CONFIG_ENV": CONFIG_ENV,
        "K8SB_STAMP_FAMILY": STAMP_FAMILY,
        "K8SB_MESSAGE_PREFIX": MESSAGE_PREFIX,
        "K8SB_IMAGE_OPTION": IMAGE_OPTION,
        "K8SB_QUEUE_OPTION": QUEUE_OPTION,
        "K8SB_PRIORITY_OPTION": PRIORITY_OPTION,
        "K8SB_IMAGE_MAX": IMAGE_MAX,
        "K8SB_IMAGE_PUNCTUATION": IMAGE_PUNCTUATION,
        "K8SB_QUEUE_NAME_MAX": QUEUE_NAME_MAX,
        "K8SB_PRIORITY_CLASS_MAX": PRIORITY_CLASS_MAX,
        "K8SB_POD_JOB_ID_ENV": POD_JOB_ID_ENV,
        "K8SB_PY_MAGIC": PING_MAGIC,
    }


def contract_fingerprint() -> str:
    """The C values as one line of JSON; every built plugin carries it after
    ``k8sb-contract:`` (``tests/slurm/test_contract.py`` reads it back out of the ``.so``)."""
    return json.dumps(dict(c_values()), sort_keys=True, separators=(",", ":"))


def _c_literal(value: str | int) -> str:
    if isinstance(value, int):
        return f"{value:#x}" if value > 255 else str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def c_header() -> str:
    """``k8sb_contract.h``: the contract for the C shims (generated at plugin build)."""
    lines = ["/* Generated from slurm_k8s_bridge/core/contract.py by the plugin build: do not edit. */",
             "#ifndef K8SB_CONTRACT_H", "#define K8SB_CONTRACT_H", ""]
    for name, value in c_values().items():
        lines.append(f"#define {name} {_c_literal(value)}")
    lines.append(f"#define K8SB_SPANK_NAME {SPANK_PLUGIN_NAME}")
    # the path compiled in by ``plugins install --config`` wins; this is its default
    lines += ["#ifndef K8SB_DEFAULT_CONFIG", f"#define K8SB_DEFAULT_CONFIG {_c_literal(DEFAULT_CONFIG_PATH)}",
              "#endif"]
    fingerprint = "k8sb-contract:" + contract_fingerprint()
    lines += ["", "/* read back by a test: the plugin and the Python agree */",
              f"#define K8SB_CONTRACT_FINGERPRINT {_c_literal(fingerprint)}",
              f"#define K8SB_CONTRACT_DIGEST \"{hashlib.sha256(fingerprint.encode()).hexdigest()[:16]}\"",
              "", "#endif", ""]
    return "\n".join(lines)
