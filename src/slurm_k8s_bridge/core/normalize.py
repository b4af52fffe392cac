"""The translation core's first half: a Slurm request -> a validated ``BridgeRequest``.

Pure functions, no I/O. ``normalize`` decides whether a job is bridged, checks it against the
GPU node shapes of its partition and either refuses it (``BridgeRefusal`` with the limit in the
user's words) or returns a ``BridgeRequest``, which ``core.render`` turns into Kubernetes
objects. The parts: ``core.gpus`` (the GPU ask), ``core.layout`` (node count and per-pod
share), ``core.constraints`` (``--constraint``); the SPANK options and arrays are here.

How a request becomes pods (each pod is one dynamic Slurm node carrying the job's share):

* Node count: ``-N MIN[-MAX]`` gives a range; without ``-N`` the range is 1 .. the largest
  count the request could use (``-n`` tasks, or ``--gpus`` GPUs). The bridge takes the
  *smallest* count in the range for which one pod's share fits on some node shape of the
  partition; ``--gpus`` must spread evenly over it.
* Per pod: tasks = ``--ntasks-per-node``, else ``ceil(-n / nodes)``, else 1; GPUs =
  ``--gres``/``--gpus-per-node``, else ``--gpus / nodes``, else ``--gpus-per-task x tasks``;
  CPUs = ``-c x tasks`` (``-c`` default 1), at least ``--cpus-per-gpu x GPUs``; memory =
  ``--mem`` (0: the whole node), ``--mem-per-cpu x CPUs``, ``--mem-per-gpu x GPUs``, else
  ``default_mem_per_cpu_mb x CPUs`` capped at the node.
* ``--exclusive`` (``shared == 0``) and ``--mem=0`` take a whole node, so they pin the first
  fitting shape (configuration order); ``--exclusive`` gets all its GPUs, CPUs and memory.
  ``--exclusive=user``/``mcs`` only keep other users away, which a pod already does: the pod
  gets what was asked.
* ``--constraint``: ``&`` (or ``,``) and ``|`` evaluated left to right as Slurm does, ``(...)``
  groups, ``[a|b]`` makes every node pick the same alternative (a pod affinity on the GPU
  product label). Shape features narrow the shapes (required node affinity ``In`` on the
  product label); ``node_features`` become node labels.
* MIG profiles are GRES types: ``--gres=gpu:1g.10gb:2`` -> ``nvidia.com/mig-1g.10gb: 2``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from slurm_k8s_bridge.core import contract
from slurm_k8s_bridge.core.config import BridgeConfig, PartitionRule
from slurm_k8s_bridge.core.constraints import (
    _constraint_terms,
    _node_features,
    _node_placement,
    _same_shape_key,
)
from slurm_k8s_bridge.core.errors import BridgeRefusal, refusal, shown
from slurm_k8s_bridge.core.gang import backend
from slurm_k8s_bridge.core.gpus import (
    _gpu_ask,
    _gpu_resource,
    _gpu_words,
    _node_gres,
    _shapes_for_type,
)
from slurm_k8s_bridge.core.layout import _layout
from slurm_k8s_bridge.core.request import (
    INFINITE,
    KILL_JOB_BATCH,
    NOT_SET,
    UNLIMITED,
    BridgeRequest,
    SlurmJobRequest,
    given,
)

GPU_TOLERATION: Mapping[str, str] = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]")
#: Largest array index Slurm accepts (``MaxArraySize`` may be at most 4000001): it bounds the
#: array task's object names, which pod hostnames (63 characters) are made of.
MAX_ARRAY_INDEX = 4_000_000
#: uids and gids are 32-bit; 0xFFFFFFFF and above are no owner
_ID_MAX = 0xFFFFFFFE


# -- the normalized request -------------------------------------------------------------


# -- normalize --------------------------------------------------------------------------

def normalize(req: SlurmJobRequest, config: BridgeConfig) -> BridgeRequest | None:
    """Validate ``req`` for its partition; ``None`` when the partition is not bridged."""
    rule = _bridged_rule(req.partition, config)
    if rule is None:
        return None
    if given(req.het_job_offset) is not None:
        raise refusal("heterogeneous jobs are not supported by slurm-k8s-bridge yet", "ESLURM_NOT_SUPPORTED")
    if given(req.ntasks_per_tres) is not None:
        raise refusal("--ntasks-per-gpu is not supported by slurm-k8s-bridge yet; use "
                       "--ntasks-per-node with --gpus-per-node", "ESLURM_NOT_SUPPORTED")
    image, spank_queue, spank_priority = _spank_choices(req, config, rule)
    account_rule = config.account_rule(req.account)
    gpu = _gpu_ask(req)
    gpu, typed_shapes = _shapes_for_type(gpu, config.shapes_of(rule), rule)
    terms, matching = _constraint_terms(req.features, config, rule)
    terms = tuple(t for t in (t.within(typed_shapes) for t in terms) if t.shapes)
    if not terms:
        raise refusal(f"{_gpu_words(gpu)} and --constraint={shown(req.features)} together match no "
                       f"node shape in partition {shown(rule.name)}", "ESLURM_INVALID_FEATURE")
    shapes = tuple(s for s in typed_shapes if any(s in t.shapes for t in terms))
    layout = _layout(req, gpu, shapes, config, rule)
    chosen = layout.shapes
    time_limit = _time_limit(req.time_limit)
    array_ids, array_limit = expand_array(req.array_inx, config.max_array_tasks) if req.array_inx else (None, None)
    node_selector, affinity = _node_placement(terms, chosen, rule)
    return BridgeRequest(
        partition=rule.name,
        namespace=(account_rule.namespace if account_rule and account_rule.namespace else rule.namespace),
        queue=spank_queue or (account_rule.queue if account_rule else None) or rule.queue,
        priority_class=(spank_priority or (config.qos_priority_classes.get(req.qos) if req.qos else None)
                        or (account_rule.priority_class if account_rule else None) or rule.priority_class),
        workload_priority_class=(config.qos_workload_priority_classes.get(req.qos)
                                 if req.qos and rule.gang == "kueue" else None),
        gang=rule.gang,
        image=image,
        service_account=rule.service_account,
        nodes=layout.nodes,
        node_range=layout.node_range,
        tasks=layout.tasks,
        tasks_per_node=layout.tasks_per_node,
        cpus_per_task=layout.cpus_per_task,
        cpus_per_node=layout.cpus,
        memory_mb_per_node=layout.memory_mb,
        gpus_per_node=layout.gpus,
        gpu_resource=_gpu_resource(gpu, layout.gpus),
        gpu_type=gpu.type,
        shapes=tuple(s.name for s in chosen),
        exclusive=layout.exclusive,
        node_selector=node_selector,
        node_affinity_terms=affinity,
        same_shape_topology_key=_same_shape_key(matching, chosen, layout.nodes),
        tolerations=_tolerations(rule, layout.gpus > 0),
        time_limit_minutes=time_limit,
        active_deadline_seconds=(time_limit * 60 + config.time_limit_grace_seconds
                                 if time_limit is not None else None),
        array_task_ids=array_ids,
        array_max_concurrent=array_limit,
        user_id=_owner_id(req.user_id, "uid"),
        group_id=_owner_id(req.group_id, "gid"),
        account=req.account or None,
        qos=req.qos or None,
        job_name=label_value(req.name),
        node_gres=_node_gres(gpu, layout.gpus, chosen),
        node_features=_node_features(req.features, terms, chosen),
        spank_options=dict(req.spank_options),
        **preemption_fields(req, config),
    )


def _bridged_rule(partition: str | None, config: BridgeConfig) -> PartitionRule | None:
    names: list[str | None] = [p for p in (partition or "").split(",") if p] or [None]
    rules = [config.rule_for(name) for name in names]
    bridged = [r for r in rules if r.bridged]
    if not bridged:
        return None
    if len(rules) > 1:
        raise refusal(f"-p {shown(partition)} names several partitions; slurm-k8s-bridge runs a job in "
                       f"exactly one when any of them ({', '.join(r.name for r in bridged)}) is bridged",
                       "ESLURM_INVALID_PARTITION_NAME")
    return bridged[0]


# -- SPANK options ----------------------------------------------------------------------

def _spank_choices(req: SlurmJobRequest, config: BridgeConfig,
                   rule: PartitionRule) -> tuple[str, str | None, str | None]:
    options = req.spank_options
    image = config.worker_image
    if contract.IMAGE_OPTION in options:
        image = _check_image(options[contract.IMAGE_OPTION], config)
    queue = None
    if contract.QUEUE_OPTION in options:
        queue = _check_queue(options[contract.QUEUE_OPTION], rule)
    priority = None
    if contract.PRIORITY_OPTION in options:
        priority = _check_priority(options[contract.PRIORITY_OPTION], config)
    return image, queue, priority


def _check_image(value: str, config: BridgeConfig) -> str:
    if not contract.valid_image(value):
        raise refusal(f"--k8s-image={shown(value)} is not a container image reference "
                       "(like registry.example.com/team/image:tag)", "ESLURM_NOT_SUPPORTED")
    if not config.allowed_images:
        raise refusal("--k8s-image is not enabled on this cluster (no allowed_images)", "ESLURM_NOT_SUPPORTED")
    if not any(value.startswith(prefix) for prefix in config.allowed_images):
        raise refusal(f"--k8s-image={shown(value)} is not allowed; images must start with "
                       f"{' or '.join(config.allowed_images)}", "ESLURM_NOT_SUPPORTED")
    return value


def _check_queue(value: str, rule: PartitionRule) -> str:
    if not contract.valid_queue_name(value):
        raise refusal(f"--k8s-queue={shown(value)} is not a valid queue name (lowercase letters, digits, "
                      f"'-' and '.', at most {contract.QUEUE_NAME_MAX} characters)",
                      "ESLURM_NOT_SUPPORTED")
    if not backend(rule.gang).uses_queue:
        raise refusal(f"--k8s-queue has no effect in partition {shown(rule.name)}, which uses neither Kueue "
                       "nor Volcano", "ESLURM_NOT_SUPPORTED")
    return value


def _check_priority(value: str, config: BridgeConfig) -> str:
    if not contract.valid_priority_class(value):
        raise refusal(f"--k8s-priority={shown(value)} is not a valid PriorityClass name (lowercase letters, "
                       "digits, '-' and '.')", "ESLURM_NOT_SUPPORTED")
    allowed = config.allowed_priority_classes
    if allowed is not None and value not in allowed:
        raise refusal(f"--k8s-priority={shown(value)} is not allowed; choose one of {', '.join(allowed) or '(none)'}",
                       "ESLURM_NOT_SUPPORTED")
    if allowed is None and value.startswith("system-"):
        raise refusal(f"--k8s-priority={shown(value)} is reserved for Kubernetes system components",
                       "ESLURM_NOT_SUPPORTED")
    return value


# -- GPUs -------------------------------------------------------------------------------


# -- node count and per-node share ------------------------------------------------------


# -- --constraint -----------------------------------------------------------------------


def _owner_id(value: int | None, what: str) -> int | None:
    """The job owner's uid or gid, which the pods and their labels carry."""
    value = given(value)
    if value is not None and not 0 <= value < _ID_MAX:
        raise refusal(f"the job's {what} {value} is not a valid {what}", "ESLURM_ACCESS_DENIED")
    return value


def _tolerations(rule: PartitionRule, gpus: bool) -> tuple[Mapping[str, Any], ...]:
    tolerations = list(rule.tolerations)
    if gpus and dict(GPU_TOLERATION) not in [dict(t) for t in tolerations]:
        tolerations.append(dict(GPU_TOLERATION))
    return tuple(tolerations)


# -- time and arrays --------------------------------------------------------------------

def preemption_fields(req: SlurmJobRequest, config: BridgeConfig) -> dict[str, Any]:
    """What a preempted or evicted pod's job gets: its ``--signal`` and that TIME of grace
    (at most ``max_preempt_grace_seconds``) before the requeue; the pods' grace period
    covers it and Slurm's KillWait after it."""
    if not req.signal or not req.signal[0]:
        return {"termination_grace_seconds": config.kill_wait_seconds}
    number, seconds, flags = req.signal
    grace = min(seconds, config.max_preempt_grace_seconds)
    return {"preempt_signal": number, "preempt_signal_batch": bool(flags & KILL_JOB_BATCH),
            "preempt_grace_seconds": grace,
            "termination_grace_seconds": grace + config.kill_wait_seconds}


def _time_limit(value: int | None) -> int | None:
    if value is None or value in NOT_SET:
        return None
    if value in (UNLIMITED, INFINITE):
        return None
    if value <= 0:
        raise refusal(f"time limit of {value} minutes is not valid", "ESLURM_INVALID_TIME_LIMIT")
    return value


def expand_array(spec: str, max_tasks: int) -> tuple[tuple[int, ...], int | None]:
    """Expand ``--array``: ``0-15:4%2`` -> ((0, 4, 8, 12), 2); ``1,3,5-7`` -> ((1, 3, 5, 6, 7), None)."""
    body, _, limit_text = spec.partition("%")
    limit = None
    if limit_text:
        if not limit_text.isdigit() or int(limit_text) <= 0:
            raise _bad_array(spec)
        limit = int(limit_text)
    ids: set[int] = set()
    for part in body.split(","):
        match = re.fullmatch(r"([0-9]+)(?:-([0-9]+)(?::([0-9]+))?)?", part.strip())
        if not match:
            raise _bad_array(spec)
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        step = int(match.group(3)) if match.group(3) is not None else 1
        if last < first or step <= 0:
            raise _bad_array(spec)
        if last > MAX_ARRAY_INDEX:
            raise refusal(f"--array={shown(spec)} has an index above {MAX_ARRAY_INDEX}, the largest "
                          "Slurm allows (MaxArraySize is at most 4000001)", "ESLURM_INVALID_ARRAY")
        count = (last - first) // step + 1
        if len(ids) + count > max_tasks:
            raise _too_many(spec, max_tasks)
        ids.update(range(first, last + 1, step))
    if len(ids) > max_tasks:
        raise _too_many(spec, max_tasks)
    return tuple(sorted(ids)), limit


def _bad_array(spec: str) -> BridgeRefusal:
    return refusal(f"--array={shown(spec)} is not a valid array specification (like 0-15:4%2 or 1,3,5-7)",
                    "ESLURM_INVALID_ARRAY")


def _too_many(spec: str, max_tasks: int) -> BridgeRefusal:
    return refusal(f"--array={shown(spec)} asks for more than {max_tasks} array tasks, the most "
                    "slurm-k8s-bridge runs for one job", "ESLURM_INVALID_ARRAY")


def label_value(text: str | None) -> str | None:
    """A valid Kubernetes label value made of ``text``: other characters become ``-``, at most
    63 characters, letters or digits at both ends; None when nothing is left."""
    if not text:
        return None
    value = _LABEL_VALUE_BAD.sub("-", text)[:contract.LABEL_VALUE_MAX]
    value = re.sub(r"^[^A-Za-z0-9]+", "", value)
    value = re.sub(r"[^A-Za-z0-9]+$", "", value)
    return value or None


# -- render -----------------------------------------------------------------------------


