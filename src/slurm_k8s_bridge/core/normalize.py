"""The translation core: a Slurm request -> a validated ``BridgeRequest`` -> Kubernetes objects.

Pure functions, no I/O. ``normalize`` decides whether a job is bridged, checks it against the
GPU node shapes of its partition and either refuses it (``BridgeRefusal`` with the limit in the
user's words) or returns a ``BridgeRequest``; ``render`` turns that into plain dicts: a headless
Service, an Indexed Job with one pod per Slurm node and, for Volcano, a PodGroup.

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

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from slurm_k8s_bridge.core.config import BridgeConfig, NodeShape, PartitionRule
from slurm_k8s_bridge.core.errors import BridgeRefusal
from slurm_k8s_bridge.core.request import UNLIMITED, SlurmJobRequest

MANAGED_BY = "slurm-k8s-bridge"
LABEL_PREFIX = "slurm-k8s-bridge.io/"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
GPU_TOLERATION: Mapping[str, str] = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
#: Largest node count the bridge considers for one job.
MAX_NODES = 65536
#: Largest number of alternatives a --constraint may expand to.
MAX_CONSTRAINT_TERMS = 64
MAX_HOSTNAME = 63
TMP_VOLUME = "tmp"
MUNGE_KEY_DIR = "/etc/slurm-k8s-bridge/munge"

# Slurm's "not set" and "no limit" values, in case a producer passes them through raw.
_NO_VAL = 0xFFFFFFFE
_NO_VAL16 = 0xFFFE
_NO_VAL64 = 0xFFFFFFFFFFFFFFFE
_INFINITE = 0xFFFFFFFF
_NOT_SET = {_NO_VAL, _NO_VAL16, _NO_VAL64}

#: Capabilities slurmd/slurmstepd need to run tasks as the job's owner; everything else is dropped.
WORKER_CAPABILITIES: tuple[str, ...] = (
    "SETUID",        # slurmstepd becomes the job owner (setuid) before exec'ing each task
    "SETGID",        # ... and takes the owner's primary and supplementary groups (setgid/setgroups)
    "CHOWN",         # hands the job's spool files, output files and /dev/shm entries to the owner
    "DAC_OVERRIDE",  # opens the owner's working directory and output paths while still root
    "FOWNER",        # chmod/utime on files it does not own (spool, step sockets, X11/PMIx dirs)
    "KILL",          # signals tasks that run under the owner's uid (scancel, time limit, srun -K)
)

_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_IMAGE = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*"
                    r"(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[a-f0-9]{64})?$")


# -- the normalized request -------------------------------------------------------------

@dataclass(frozen=True)
class LabelRequirement:
    """``key In [values...]`` in a node selector term."""

    key: str
    values: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "operator": "In", "values": list(self.values)}


@dataclass(frozen=True)
class NodeSelectorTerm:
    """One alternative of a required node affinity (its requirements all hold)."""

    requirements: tuple[LabelRequirement, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"matchExpressions": [r.to_dict() for r in self.requirements]}


@dataclass(frozen=True)
class BridgeRequest:
    """Everything needed to build a bridged job's Kubernetes objects."""

    partition: str
    namespace: str
    gang: str
    image: str
    nodes: int
    #: the node count range the user gave (or the one derived without -N)
    node_range: tuple[int, int]
    tasks: int
    tasks_per_node: int
    cpus_per_task: int
    cpus_per_node: int
    memory_mb_per_node: int
    gpus_per_node: int
    #: ``nvidia.com/gpu`` or ``nvidia.com/mig-<profile>``; None without GPUs
    gpu_resource: str | None
    #: the GRES type asked for (a shape's gres_type or a MIG profile); None if untyped
    gpu_type: str | None
    #: names of the node shapes the pods may run on, configuration order
    shapes: tuple[str, ...]
    exclusive: bool
    queue: str | None = None
    priority_class: str | None = None
    service_account: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    node_affinity_terms: tuple[NodeSelectorTerm, ...] = ()
    #: label key all pods must share a value of (``--constraint=[a|b]`` over several shapes)
    same_shape_topology_key: str | None = None
    tolerations: tuple[Mapping[str, Any], ...] = ()
    time_limit_minutes: int | None = None
    active_deadline_seconds: int | None = None
    array_task_ids: tuple[int, ...] | None = None
    array_max_concurrent: int | None = None
    user_id: int | None = None
    group_id: int | None = None
    account: str | None = None
    qos: str | None = None
    #: the job name as a valid label value (None when nothing of it is left)
    job_name: str | None = None
    #: the Slurm node each pod registers: ``gpu:h100:8``, ``gpu:1g.10gb:2``, ``gpu:8`` or ""
    node_gres: str = ""
    node_features: tuple[str, ...] = ()
    spank_options: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_array(self) -> bool:
        return self.array_task_ids is not None


# -- normalize --------------------------------------------------------------------------

def normalize(req: SlurmJobRequest, config: BridgeConfig) -> BridgeRequest | None:
    """Validate ``req`` for its partition; ``None`` when the partition is not bridged."""
    rule = _bridged_rule(req.partition, config)
    if rule is None:
        return None
    if _given(req.het_job_offset) is not None:
        raise _refusal("heterogeneous jobs are not supported by slurm-k8s-bridge yet", "ESLURM_NOT_SUPPORTED")
    if _given(req.ntasks_per_tres) is not None:
        raise _refusal("--ntasks-per-gpu is not supported by slurm-k8s-bridge yet; use "
                       "--ntasks-per-node with --gpus-per-node", "ESLURM_NOT_SUPPORTED")
    image, spank_queue, spank_priority = _spank_choices(req, config, rule)
    account_rule = config.account_rule(req.account)
    gpu = _gpu_ask(req)
    gpu, typed_shapes = _shapes_for_type(gpu, config.shapes_of(rule), rule)
    terms, matching = _constraint_terms(req.features, config, rule)
    terms = tuple(t for t in (t.within(typed_shapes) for t in terms) if t.shapes)
    if not terms:
        raise _refusal(f"{_gpu_words(gpu)} and --constraint={_show(req.features)} together match no "
                       f"node shape in partition {rule.name}", "ESLURM_INVALID_FEATURE")
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
        user_id=_given(req.user_id),
        group_id=_given(req.group_id),
        account=req.account or None,
        qos=req.qos or None,
        job_name=label_value(req.name),
        node_gres=_node_gres(gpu, layout.gpus, chosen),
        node_features=_node_features(req.features, terms, chosen),
        spank_options=dict(req.spank_options),
    )


def _given(value: int | None) -> int | None:
    """``None`` for "not set", whether the producer passed None or Slurm's NO_VAL."""
    if value is None or value in _NOT_SET:
        return None
    return value


def _refusal(message: str, code: str) -> BridgeRefusal:
    """A refusal whose message is one line whatever the user typed."""
    return BridgeRefusal(re.sub(r"[\x00-\x1f\x7f]", "?", message), code)


def _show(text: str | None) -> str:
    return text if text is not None else ""


def _bridged_rule(partition: str | None, config: BridgeConfig) -> PartitionRule | None:
    names: list[str | None] = [p for p in (partition or "").split(",") if p] or [None]
    rules = [config.rule_for(name) for name in names]
    bridged = [r for r in rules if r.bridged]
    if not bridged:
        return None
    if len(rules) > 1:
        raise _refusal(f"-p {partition} names several partitions; slurm-k8s-bridge runs a job in "
                       f"exactly one when any of them ({', '.join(r.name for r in bridged)}) is bridged",
                       "ESLURM_INVALID_PARTITION_NAME")
    return bridged[0]


# -- SPANK options ----------------------------------------------------------------------

def _spank_choices(req: SlurmJobRequest, config: BridgeConfig,
                   rule: PartitionRule) -> tuple[str, str | None, str | None]:
    options = req.spank_options
    image = config.worker_image
    if "k8s-image" in options:
        image = _check_image(options["k8s-image"], config)
    queue = None
    if "k8s-queue" in options:
        queue = _check_queue(options["k8s-queue"], rule)
    priority = None
    if "k8s-priority" in options:
        priority = _check_priority(options["k8s-priority"], config)
    return image, queue, priority


def _check_image(value: str, config: BridgeConfig) -> str:
    if not value or len(value) > 512 or not _IMAGE.match(value):
        raise _refusal(f"--k8s-image={value} is not a container image reference "
                       "(like registry.example.com/team/image:tag)", "ESLURM_NOT_SUPPORTED")
    if not config.allowed_images:
        raise _refusal("--k8s-image is not enabled on this cluster (no allowed_images)", "ESLURM_NOT_SUPPORTED")
    if not any(value.startswith(prefix) for prefix in config.allowed_images):
        raise _refusal(f"--k8s-image={value} is not allowed; images must start with "
                       f"{' or '.join(config.allowed_images)}", "ESLURM_NOT_SUPPORTED")
    return value


def _check_queue(value: str, rule: PartitionRule) -> str:
    if not value or len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise _refusal(f"--k8s-queue={value} is not a valid queue name (lowercase letters, digits, "
                       "'-' and '.')", "ESLURM_NOT_SUPPORTED")
    if rule.gang == "builtin":
        raise _refusal(f"--k8s-queue has no effect in partition {rule.name}, which uses neither Kueue "
                       "nor Volcano", "ESLURM_NOT_SUPPORTED")
    return value


def _check_priority(value: str, config: BridgeConfig) -> str:
    if not value or len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise _refusal(f"--k8s-priority={value} is not a valid PriorityClass name (lowercase letters, "
                       "digits, '-' and '.')", "ESLURM_NOT_SUPPORTED")
    allowed = config.allowed_priority_classes
    if allowed is not None and value not in allowed:
        raise _refusal(f"--k8s-priority={value} is not allowed; choose one of {', '.join(allowed) or '(none)'}",
                       "ESLURM_NOT_SUPPORTED")
    if allowed is None and value.startswith("system-"):
        raise _refusal(f"--k8s-priority={value} is reserved for Kubernetes system components",
                       "ESLURM_NOT_SUPPORTED")
    return value


# -- GPUs -------------------------------------------------------------------------------

@dataclass(frozen=True)
class GpuAsk:
    """The GPU part of a request, whichever options expressed it."""

    type: str | None = None
    per_node: int | None = None
    per_job: int | None = None
    per_task: int | None = None
    #: MB per GPU (--mem-per-gpu) and CPUs per GPU (--cpus-per-gpu)
    mem_per_gpu: int | None = None
    cpus_per_gpu: int | None = None
    #: the user's words for each count, for messages
    words: Mapping[str, str] = field(default_factory=dict)
    mig: bool = False

    @property
    def any(self) -> bool:
        return bool(self.per_node or self.per_job or self.per_task)


@dataclass(frozen=True)
class TresItem:
    """One item of a ``tres_per_*`` string: ``gres:gpu:h100:8`` / ``gres/gpu:h100=8`` / ``cpu=4``."""

    kind: str
    name: str
    type: str | None
    count: int


def parse_tres(text: str | None, option: str) -> list[TresItem]:
    """Parse a ``tres_per_*`` / ``cpus_per_tres`` / ``mem_per_tres`` string.

    Both Slurm encodings are read: ``gres:gpu:h100:8`` (22.05) and ``gres/gpu:h100:8`` or
    ``gres/gpu=8`` (23.02 and later); plain TRES such as ``cpu=4`` come back with kind ``tres``.
    """
    items: list[TresItem] = []
    for raw in (text or "").split(","):
        raw = raw.strip()
        if not raw:
            continue
        items.append(_tres_item(raw, option))
    return items


def _tres_item(raw: str, option: str) -> TresItem:
    bad = _refusal(f"{option}: cannot read {raw!r}", "ESLURM_INVALID_GRES")
    kind = "gres"
    body = raw
    for prefix in ("gres:", "gres/"):
        if body.startswith(prefix):
            body = body[len(prefix):]
            break
    else:
        if "=" in body and ":" not in body:
            kind = "tres"
    count_text = None
    if "=" in body:
        body, count_text = body.rsplit("=", 1)
    parts = body.split(":")
    if count_text is None and len(parts) > 1 and parts[-1].isdigit():
        count_text = parts.pop()
    if not parts[0] or len(parts) > 2 or any(not p for p in parts):
        raise bad
    count = _tres_count(count_text) if count_text is not None else 1
    if count is None:
        raise bad
    return TresItem(kind, parts[0], parts[1] if len(parts) == 2 else None, count)


def _tres_count(text: str) -> int | None:
    match = re.fullmatch(r"([0-9]+)([kKmMgGtT]?)", text)
    if not match:
        return None
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[match.group(2).lower()]
    return int(match.group(1)) * scale


def _gpu_ask(req: SlurmJobRequest) -> GpuAsk:
    if req.tres_per_socket and parse_tres(req.tres_per_socket, "--gpus-per-socket"):
        raise _refusal("--gpus-per-socket is not supported by slurm-k8s-bridge: pods have no sockets; "
                       "use --gpus-per-node or --gpus-per-task", "ESLURM_NOT_SUPPORTED")
    found: dict[str, tuple[TresItem, str]] = {}
    types: dict[str, str] = {}
    for field_name, text, option in (("per_node", req.tres_per_node, "--gres"),
                                     ("per_job", req.tres_per_job, "--gpus"),
                                     ("per_task", req.tres_per_task, "--gpus-per-task")):
        gpus = _gpu_items(text, option, allow_cpu=field_name == "per_task")
        if len(gpus) > 1:
            raise _refusal(f"{_words(field_name, gpus[0])} and {_words(field_name, gpus[1])} both ask for "
                           "GPUs; give one GPU count per option", "ESLURM_INVALID_GRES")
        if gpus:
            item = gpus[0]
            found[field_name] = (item, _words(field_name, item))
            if item.type is not None:
                types[field_name] = item.type
    distinct = sorted(set(types.values()))
    if len(distinct) > 1:
        raise _refusal(f"{' and '.join(found[f][1] for f in types)} ask for different GPU types; "
                       "give one type", "ESLURM_INVALID_GRES_TYPE")
    return GpuAsk(
        type=distinct[0] if distinct else None,
        per_node=found["per_node"][0].count if "per_node" in found else None,
        per_job=found["per_job"][0].count if "per_job" in found else None,
        per_task=found["per_task"][0].count if "per_task" in found else None,
        mem_per_gpu=_per_gpu(req.mem_per_tres, "--mem-per-gpu"),
        cpus_per_gpu=_per_gpu(req.cpus_per_tres, "--cpus-per-gpu"),
        words={k: v[1] for k, v in found.items()},
    )


def _gpu_items(text: str | None, option: str, allow_cpu: bool) -> list[TresItem]:
    gpus = []
    for item in parse_tres(text, option):
        if item.kind == "tres" and allow_cpu and item.name == "cpu":
            continue  # 23.11+ puts -c into tres_per_task as cpu=N; cpus_per_task carries it
        if item.name != "gpu" or item.kind != "gres":
            what = f"gres {item.name}" if item.kind == "gres" else f"TRES {item.name}"
            raise _refusal(f"{option}={_tres_text(item)} asks for {what}; slurm-k8s-bridge runs jobs "
                           "whose generic resources are GPUs only", "ESLURM_INVALID_GRES")
        gpus.append(item)
    return gpus


def _tres_text(item: TresItem) -> str:
    parts = [item.name] + ([item.type] if item.type else []) + [str(item.count)]
    return ":".join(parts) if item.kind == "gres" else f"{item.name}={item.count}"


def _words(field_name: str, item: TresItem) -> str:
    typed = f"{item.type}:" if item.type else ""
    if field_name == "per_node":
        return f"--gres=gpu:{typed}{item.count}"
    if field_name == "per_job":
        return f"--gpus={typed}{item.count}"
    return f"--gpus-per-task={typed}{item.count}"


def _per_gpu(text: str | None, option: str) -> int | None:
    items = parse_tres(text, option)
    for item in items:
        if item.name != "gpu":
            raise _refusal(f"{option}: slurm-k8s-bridge knows this only for GPUs, not {item.name}",
                           "ESLURM_INVALID_GRES")
    return items[-1].count if items else None


def _gpu_words(gpu: GpuAsk) -> str:
    return " and ".join(gpu.words.values()) or "the request"


def _shapes_for_type(gpu: GpuAsk, shapes: Sequence[NodeShape],
                     rule: PartitionRule) -> tuple[GpuAsk, tuple[NodeShape, ...]]:
    """The partition's shapes that have the GPU type asked for (all of them when untyped);
    a type that is a MIG profile marks the ask as MIG."""
    if gpu.type is None:
        return gpu, tuple(shapes)
    typed = tuple(s for s in shapes if s.gres_type == gpu.type)
    if typed:
        return gpu, typed
    mig = tuple(s for s in shapes if gpu.type in s.mig)
    if mig:
        return replace(gpu, mig=True), mig
    types = ", ".join(dict.fromkeys(s.gres_type for s in shapes))
    profiles = ", ".join(dict.fromkeys(p for s in shapes for p in s.mig))
    offer = f"{types} (MIG profiles: {profiles})" if profiles else types
    raise _refusal(f"{next(iter(gpu.words.values()))} asks for GPU type {gpu.type}, but partition "
                   f"{rule.name} has {offer}", "ESLURM_INVALID_GRES_TYPE")


def _gpu_resource(gpu: GpuAsk, gpus: int) -> str | None:
    if gpus <= 0:
        return None
    if gpu.mig and gpu.type:
        return MIG_RESOURCE_PREFIX + gpu.type
    return GPU_RESOURCE


def _node_gres(gpu: GpuAsk, gpus: int, shapes: Sequence[NodeShape]) -> str:
    if gpus <= 0:
        return ""
    gres_type = gpu.type
    if gres_type is None:
        kinds = {s.gres_type for s in shapes}
        gres_type = kinds.pop() if len(kinds) == 1 else None
    return f"gpu:{gres_type}:{gpus}" if gres_type else f"gpu:{gpus}"


# -- node count and per-node share ------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    nodes: int
    node_range: tuple[int, int]
    tasks: int
    tasks_per_node: int
    cpus_per_task: int
    cpus: int
    memory_mb: int
    gpus: int
    exclusive: bool
    shapes: tuple[NodeShape, ...]


@dataclass(frozen=True)
class _Share:
    """What one pod asks for at a given node count, with the words that explain each number."""

    nodes: int
    tasks_per_node: int
    gpus: int
    gpus_why: str
    cpus: int
    cpus_why: str
    #: None: the whole node (--mem=0)
    memory_mb: int | None
    memory_why: str
    memory_is_default: bool


class _NoFit(Exception):
    """This node count does not work; ``spread`` when --gpus cannot be split evenly."""

    def __init__(self, refusal: BridgeRefusal, spread: bool = False) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.spread = spread


def _layout(req: SlurmJobRequest, gpu: GpuAsk, shapes: tuple[NodeShape, ...], config: BridgeConfig,
            rule: PartitionRule) -> _Layout:
    low, high, explicit = _node_range(req, gpu)
    exclusive = _given(req.shared) == 0
    failures: list[_NoFit] = []
    for nodes in range(low, high + 1):
        try:
            share = _share(req, gpu, nodes, config)
            fitting = _fitting_shapes(share, gpu, shapes, rule, exclusive)
        except _NoFit as no:
            failures.append(no)
            continue
        return _finish(req, share, fitting, (low, high), exclusive, gpu, config)
    if all(f.spread for f in failures) and gpu.per_job:
        raise _refusal(f"{gpu.words['per_job']} cannot be spread evenly over {_nodes_text(low, high, explicit)}",
                       "ESLURM_INVALID_GRES")
    raise [f for f in failures if not f.spread][-1].refusal


def _node_range(req: SlurmJobRequest, gpu: GpuAsk) -> tuple[int, int, bool]:
    min_nodes, max_nodes = _given(req.min_nodes), _given(req.max_nodes)
    tasks = _given(req.num_tasks)
    if min_nodes is not None:
        if min_nodes <= 0:
            raise _refusal(f"-N {min_nodes} asks for no nodes", "ESLURM_INVALID_NODE_COUNT")
        high = max_nodes if max_nodes is not None else min_nodes
        if high < min_nodes:
            raise _refusal(f"-N {min_nodes}-{high}: the maximum is below the minimum", "ESLURM_INVALID_NODE_COUNT")
        if min_nodes > MAX_NODES:
            raise _refusal(f"-N {min_nodes} asks for more than the {MAX_NODES} nodes slurm-k8s-bridge "
                           "runs one job on", "ESLURM_INVALID_NODE_COUNT")
        if tasks is not None and tasks < min_nodes:
            raise _refusal(f"-n {tasks} is fewer tasks than the {min_nodes} nodes -N asks for",
                           "ESLURM_BAD_TASK_COUNT")
        return min_nodes, min(high, MAX_NODES), True
    if tasks is not None and tasks <= 0:
        raise _refusal(f"-n {tasks} asks for no tasks", "ESLURM_BAD_TASK_COUNT")
    high = max(tasks or 1, gpu.per_job or 1)
    return 1, min(high, MAX_NODES), False


def _nodes_text(low: int, high: int, explicit: bool) -> str:
    if low == high:
        count = f"{low} node" if low == 1 else f"{low} nodes"
        return f"{count} (-N {low})" if explicit else count
    return f"{low} to {high} nodes (-N {low}-{high})" if explicit else f"1 to {high} nodes"


def _share(req: SlurmJobRequest, gpu: GpuAsk, nodes: int, config: BridgeConfig) -> _Share:
    tasks_per_node, tasks_why = _tasks_per_node(req, nodes)
    gpus, gpus_why = _gpus_per_node(gpu, nodes, tasks_per_node)
    cpus_per_task = _given(req.cpus_per_task) or 1
    cpus = cpus_per_task * tasks_per_node
    if _given(req.cpus_per_task):
        cpus_why = f"-c {cpus_per_task} with {_count(tasks_per_node, 'task')} per node"
    else:
        cpus_why = tasks_why
    if gpu.cpus_per_gpu and gpus and gpu.cpus_per_gpu * gpus > cpus:
        cpus = gpu.cpus_per_gpu * gpus
        cpus_why = f"--cpus-per-gpu={gpu.cpus_per_gpu} with {_count(gpus, 'GPU')} per node"
    memory, memory_why, default = _memory_per_node(req, gpu, cpus, gpus, config)
    return _Share(nodes, tasks_per_node, gpus, gpus_why, cpus, cpus_why, memory, memory_why, default)


def _tasks_per_node(req: SlurmJobRequest, nodes: int) -> tuple[int, str]:
    tasks = _given(req.num_tasks)
    per_node = _given(req.ntasks_per_node)
    if per_node:
        if tasks is not None and per_node * nodes < tasks:
            raise _NoFit(_refusal(f"-n {tasks} with --ntasks-per-node={per_node} needs "
                                  f"{math.ceil(tasks / per_node)} nodes, more than -N allows",
                                  "ESLURM_BAD_TASK_COUNT"))
        count = min(per_node, math.ceil(tasks / nodes)) if tasks is not None else per_node
        return count, f"--ntasks-per-node={per_node}"
    if tasks is not None:
        if tasks < nodes:
            raise _NoFit(_refusal(f"-n {tasks} is fewer tasks than {nodes} nodes", "ESLURM_BAD_TASK_COUNT"))
        count = math.ceil(tasks / nodes)
        return count, f"-n {tasks} over {_count(nodes, 'node')} ({count} per node)"
    return 1, "1 task per node"


def _gpus_per_node(gpu: GpuAsk, nodes: int, tasks_per_node: int) -> tuple[int, str]:
    if gpu.per_node is not None:
        if gpu.per_job is not None and gpu.per_node * nodes != gpu.per_job:
            raise _NoFit(_refusal(f"{gpu.words['per_job']} with {gpu.words['per_node']} needs "
                                  f"{_count(gpu.per_job // max(gpu.per_node, 1), 'node')}, not {nodes}",
                                  "ESLURM_INVALID_GRES"), spread=True)
        return gpu.per_node, gpu.words["per_node"]
    if gpu.per_job is not None:
        if gpu.per_job % nodes:
            raise _NoFit(_refusal(f"{gpu.words['per_job']} cannot be spread evenly over "
                                  f"{_count(nodes, 'node')}", "ESLURM_INVALID_GRES"), spread=True)
        return gpu.per_job // nodes, f"{gpu.words['per_job']} over {_count(nodes, 'node')}"
    if gpu.per_task is not None:
        return (gpu.per_task * tasks_per_node,
                f"{gpu.words['per_task']} with {_count(tasks_per_node, 'task')} per node")
    return 0, "no GPUs"


def _memory_per_node(req: SlurmJobRequest, gpu: GpuAsk, cpus: int, gpus: int,
                     config: BridgeConfig) -> tuple[int | None, str, bool]:
    memory = _given(req.pn_min_memory)
    if memory is not None and memory & (1 << 63):  # raw MEM_PER_CPU flag from job_desc
        memory, per_cpu = memory & ~(1 << 63), True
    else:
        per_cpu = req.mem_per_cpu
    if memory is not None and per_cpu:
        return memory * cpus, f"--mem-per-cpu={mem_text(memory)} with {_count(cpus, 'CPU')} per node", False
    if memory is not None:
        if memory == 0:
            return None, "--mem=0", False
        return memory, f"--mem={mem_text(memory)}", False
    if gpu.mem_per_gpu is not None and gpus:
        return (gpu.mem_per_gpu * gpus,
                f"--mem-per-gpu={mem_text(gpu.mem_per_gpu)} with {_count(gpus, 'GPU')} per node", False)
    return config.default_mem_per_cpu_mb * cpus, "the default memory per CPU", True


def _fitting_shapes(share: _Share, gpu: GpuAsk, shapes: Sequence[NodeShape], rule: PartitionRule,
                    exclusive: bool) -> tuple[NodeShape, ...]:
    """The shapes one pod's share fits on, or the limit it exceeds in the user's words."""
    by_gpu = [s for s in shapes if share.gpus <= _gpu_capacity(s, gpu)]
    if not by_gpu:
        raise _NoFit(_gpu_refusal(share, gpu, shapes, rule))
    by_cpu = [s for s in by_gpu if share.cpus <= s.cpus]
    if not by_cpu:
        largest = _largest(by_gpu, lambda s: s.cpus)
        raise _NoFit(_refusal(f"{share.cpus_why} asks for {share.cpus} CPUs per node, but the largest "
                              f"node shape in partition {rule.name} ({largest.name}) has {largest.cpus}",
                              "ESLURM_INVALID_CPU_COUNT"))
    by_memory = [s for s in by_cpu if share.memory_is_default or share.memory_mb is None
                 or share.memory_mb <= s.memory_mb]
    if not by_memory:
        largest = _largest(by_cpu, lambda s: s.memory_mb)
        raise _NoFit(_refusal(f"{share.memory_why} asks for {share.memory_mb} MB per node, but the largest "
                              f"node shape in partition {rule.name} ({largest.name}) has {largest.memory_mb} MB",
                              "ESLURM_INVALID_TASK_MEMORY"))
    return tuple(by_memory)


def _gpu_capacity(shape: NodeShape, gpu: GpuAsk) -> int:
    if gpu.mig and gpu.type:
        return shape.mig_per_node(gpu.type)
    return shape.gpus


def _gpu_refusal(share: _Share, gpu: GpuAsk, shapes: Sequence[NodeShape], rule: PartitionRule) -> BridgeRefusal:
    largest = _largest(shapes, lambda s: _gpu_capacity(s, gpu))
    if gpu.mig and gpu.type:
        per_gpu = largest.mig.get(gpu.type, 0)
        return _refusal(f"{share.gpus_why} asks for {share.gpus} MIG {gpu.type} instances per node, but the "
                        f"largest node shape offering {gpu.type} in partition {rule.name} ({largest.name}) "
                        f"has {largest.mig_per_node(gpu.type)} ({per_gpu} per GPU x {largest.gpus} GPUs)",
                        "ESLURM_INVALID_GRES")
    return _refusal(f"{share.gpus_why} asks for {share.gpus} GPUs per node, but the largest GPU node shape "
                    f"in partition {rule.name} ({largest.name}) has {largest.gpus}", "ESLURM_INVALID_GRES")


def _largest(shapes: Sequence[NodeShape], size: Callable[[NodeShape], int]) -> NodeShape:
    best = shapes[0]
    for shape in shapes[1:]:
        if size(shape) > size(best):
            best = shape
    return best


def _finish(req: SlurmJobRequest, share: _Share, fitting: tuple[NodeShape, ...], node_range: tuple[int, int],
            exclusive: bool, gpu: GpuAsk, config: BridgeConfig) -> _Layout:
    whole_node = exclusive or share.memory_mb is None
    chosen = fitting[:1] if whole_node else fitting
    pinned = chosen[0]
    gpus, cpus, memory = share.gpus, share.cpus, share.memory_mb
    if exclusive:
        cpus, memory = pinned.cpus, pinned.memory_mb
        if not gpu.mig:
            gpus = pinned.gpus
    if memory is None:
        memory = pinned.memory_mb
    elif share.memory_is_default:
        memory = min([memory] + [s.memory_mb for s in chosen])
    tasks = _given(req.num_tasks)
    return _Layout(
        nodes=share.nodes,
        node_range=node_range,
        tasks=tasks if tasks is not None else share.tasks_per_node * share.nodes,
        tasks_per_node=share.tasks_per_node,
        cpus_per_task=_given(req.cpus_per_task) or 1,
        cpus=cpus,
        memory_mb=memory,
        gpus=gpus,
        exclusive=exclusive,
        shapes=chosen,
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def mem_text(mb: int) -> str:
    """MB as sbatch users write it: ``3000G``, ``1T``, ``1536M``."""
    if mb and mb % (1024 * 1024) == 0:
        return f"{mb // (1024 * 1024)}T"
    if mb and mb % 1024 == 0:
        return f"{mb // 1024}G"
    return f"{mb}M"


# -- --constraint -----------------------------------------------------------------------

@dataclass(frozen=True)
class _Term:
    """One alternative of a constraint: the shapes it allows and the node labels it needs."""

    shapes: tuple[NodeShape, ...]
    labels: Mapping[str, str]
    features: frozenset[str]

    def within(self, shapes: Sequence[NodeShape]) -> _Term:
        return replace(self, shapes=tuple(s for s in self.shapes if s in shapes))


@dataclass(frozen=True)
class ConstraintExpr:
    """A parsed --constraint: alternatives (each a set of features that must all hold)."""

    alternatives: tuple[frozenset[str], ...]
    #: features inside ``[a|b]``: every node must pick the same one
    matching: frozenset[str] = frozenset()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(f for alt in self.alternatives for f in alt)


def parse_constraint(text: str) -> ConstraintExpr:
    """Parse Slurm's feature expression: ``&`` ``,`` ``|`` left to right, ``(...)``, ``[...]``."""
    tokens = re.findall(r"[&|,()\[\]*]|[^&|,()\[\]*\s]+|\s+", text)
    tokens = [t for t in tokens if not t.isspace()]
    if "".join(tokens) != re.sub(r"\s+", "", text) or not tokens:
        raise _bad_constraint(text)
    parser = _ConstraintParser(tokens, text)
    alternatives = parser.expression()
    if parser.pos != len(tokens):
        raise _bad_constraint(text)
    return ConstraintExpr(tuple(alternatives), frozenset(parser.matching))


def _bad_constraint(text: str) -> BridgeRefusal:
    return _refusal(f"--constraint={text} is not a valid feature expression", "ESLURM_INVALID_FEATURE")


class _ConstraintParser:
    """Recursive descent over the tokens; alternatives are sets of features (DNF)."""

    def __init__(self, tokens: list[str], text: str) -> None:
        self.tokens = tokens
        self.text = text
        self.pos = 0
        self.matching: set[str] = set()
        self.brackets = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _bad_constraint(self.text)
        self.pos += 1
        return token

    def expression(self) -> list[frozenset[str]]:
        result = self.operand()
        while self.peek() in ("&", ",", "|"):
            op = self.take()
            right = self.operand()
            if op == "|":
                result = list(dict.fromkeys(result + right))
            else:
                result = list(dict.fromkeys(a | b for a in result for b in right))
            if len(result) > MAX_CONSTRAINT_TERMS:
                raise _refusal(f"--constraint={self.text} has more than {MAX_CONSTRAINT_TERMS} alternatives",
                               "ESLURM_INVALID_FEATURE")
        return result

    def operand(self) -> list[frozenset[str]]:
        token = self.take()
        if token in ("(", "["):
            closing = ")" if token == "(" else "]"
            if token == "[":
                self.brackets += 1
                if self.brackets > 1:
                    raise _bad_constraint(self.text)
            inner = self.expression()
            if self.take() != closing:
                raise _bad_constraint(self.text)
            if token == "[" and len(inner) > 1:
                self.matching.update(f for alt in inner for f in alt)
            return inner
        if token in "&,|)]*":
            raise _bad_constraint(self.text)
        if self.peek() == "*":
            raise _refusal(f"--constraint={self.text}: feature counts ({token}*N) are not supported by "
                           "slurm-k8s-bridge", "ESLURM_NOT_SUPPORTED")
        return [frozenset([token])]


def _constraint_terms(features: str | None, config: BridgeConfig,
                      rule: PartitionRule) -> tuple[tuple[_Term, ...], bool]:
    """The constraint's alternatives over the partition's shapes, and whether it is a
    matching OR (``[a|b]``: all nodes alike)."""
    partition_shapes = config.shapes_of(rule)
    if not features:
        return (_Term(partition_shapes, {}, frozenset()),), False
    expr = parse_constraint(features)
    known = {f for s in partition_shapes for f in s.features} | set(config.node_features)
    for alternative in expr.alternatives:
        for name in sorted(alternative - known):
            raise _refusal(f"--constraint={features} names feature {name}, which no node of partition "
                           f"{rule.name} has (features: {', '.join(sorted(known))})", "ESLURM_INVALID_FEATURE")
    if expr.matching & set(config.node_features):
        names = ", ".join(sorted(expr.matching & set(config.node_features)))
        raise _refusal(f"--constraint={features}: [a|b] over node features ({names}) is not supported by "
                       "slurm-k8s-bridge; use it over GPU shape features", "ESLURM_NOT_SUPPORTED")
    terms = []
    for alternative in expr.alternatives:
        term = _term(alternative, config, partition_shapes)
        if term is not None:
            terms.append(term)
    if not terms:
        raise _refusal(f"--constraint={features} matches no GPU node shape in partition {rule.name}",
                       "ESLURM_INVALID_FEATURE")
    return tuple(terms), bool(expr.matching)


def _term(alternative: frozenset[str], config: BridgeConfig, shapes: tuple[NodeShape, ...]) -> _Term | None:
    labels: dict[str, str] = {}
    for name in sorted(alternative & set(config.node_features)):
        for key, value in config.node_features[name].items():
            if labels.get(key, value) != value:
                return None
            labels[key] = value
    wanted = alternative - set(config.node_features)
    allowed = tuple(s for s in shapes if wanted <= set(s.features)
                    and all(s.node_labels.get(k, v) == v for k, v in labels.items()))
    if not allowed:
        return None
    return _Term(allowed, labels, alternative)


def _node_placement(terms: tuple[_Term, ...], chosen: tuple[NodeShape, ...],
                    rule: PartitionRule) -> tuple[dict[str, str], tuple[NodeSelectorTerm, ...]]:
    node_selector = dict(rule.node_selector)
    labels_in_selector = len(terms) == 1
    if labels_in_selector:
        node_selector.update(terms[0].labels)
    out: list[NodeSelectorTerm] = []
    for term in terms:
        groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[str]] = {}
        for shape in term.shapes:
            if shape not in chosen:
                continue
            key = (shape.gpu_product_label, tuple(sorted(shape.node_labels.items())))
            products = groups.setdefault(key, [])
            if shape.gpu_product not in products:
                products.append(shape.gpu_product)
        for (product_label, node_labels), products in groups.items():
            requirements = [LabelRequirement(product_label, tuple(products))]
            extra = dict(node_labels)
            if not labels_in_selector:
                extra.update(term.labels)
            requirements += [LabelRequirement(k, (v,)) for k, v in sorted(extra.items())]
            selector_term = NodeSelectorTerm(tuple(requirements))
            if selector_term not in out:
                out.append(selector_term)
    return node_selector, tuple(out)


def _same_shape_key(matching: bool, chosen: tuple[NodeShape, ...], nodes: int) -> str | None:
    if not matching or nodes <= 1 or len({s.gpu_product for s in chosen}) <= 1:
        return None
    keys = {s.gpu_product_label for s in chosen}
    return keys.pop() if len(keys) == 1 else None


#: Every pod's dynamic Slurm node carries this feature: ``NodeSet=k8spods Feature=k8s-pod``
#: in slurm.conf puts the pods' nodes into the bridged partitions.
POD_NODE_FEATURE = "k8s-pod"


def _node_features(features: str | None, terms: tuple[_Term, ...], chosen: tuple[NodeShape, ...]) -> tuple[str, ...]:
    """Features the dynamic Slurm nodes advertise: every name the constraint uses, so slurmctld
    accepts the nodes for the job, plus the features all candidate shapes share."""
    common = set(chosen[0].features).intersection(*(s.features for s in chosen[1:])) if chosen else set()
    named = {f for t in terms for f in t.features}
    return tuple(sorted(common | named))


def _tolerations(rule: PartitionRule, gpus: bool) -> tuple[Mapping[str, Any], ...]:
    tolerations = list(rule.tolerations)
    if gpus and dict(GPU_TOLERATION) not in [dict(t) for t in tolerations]:
        tolerations.append(dict(GPU_TOLERATION))
    return tuple(tolerations)


# -- time and arrays --------------------------------------------------------------------

def _time_limit(value: int | None) -> int | None:
    if value is None or value in _NOT_SET:
        return None
    if value in (UNLIMITED, _INFINITE):
        return None
    if value <= 0:
        raise _refusal(f"time limit of {value} minutes is not valid", "ESLURM_INVALID_TIME_LIMIT")
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
        count = (last - first) // step + 1
        if len(ids) + count > max_tasks:
            raise _too_many(spec, max_tasks)
        ids.update(range(first, last + 1, step))
    if len(ids) > max_tasks:
        raise _too_many(spec, max_tasks)
    return tuple(sorted(ids)), limit


def _bad_array(spec: str) -> BridgeRefusal:
    return _refusal(f"--array={spec} is not a valid array specification (like 0-15:4%2 or 1,3,5-7)",
                    "ESLURM_INVALID_ARRAY")


def _too_many(spec: str, max_tasks: int) -> BridgeRefusal:
    return _refusal(f"--array={spec} asks for more than {max_tasks} array tasks, the most "
                    "slurm-k8s-bridge runs for one job", "ESLURM_INVALID_ARRAY")


def label_value(text: str | None) -> str | None:
    """A valid Kubernetes label value made of ``text``: other characters become ``-``, at most
    63 characters, letters or digits at both ends; None when nothing is left."""
    if not text:
        return None
    value = _LABEL_VALUE_BAD.sub("-", text)[:63]
    value = re.sub(r"^[^A-Za-z0-9]+", "", value)
    value = re.sub(r"[^A-Za-z0-9]+$", "", value)
    return value or None


# -- render -----------------------------------------------------------------------------

def object_name(config: BridgeConfig, job_id: int, array_task_id: int | None = None) -> str:
    """``{cluster_name}-{job_id}`` or ``{cluster_name}-{job_id}-{array_task_id}``."""
    if array_task_id is None:
        return f"{config.cluster_name}-{job_id}"
    return f"{config.cluster_name}-{job_id}-{array_task_id}"


def node_names(breq: BridgeRequest, config: BridgeConfig, job_id: int,
               array_task_id: int | None = None) -> list[str]:
    """The dynamic Slurm node names, which are the pods' hostnames: ``{job}-{index}``."""
    base = object_name(config, job_id, array_task_id)
    return [f"{base}-{index}" for index in range(breq.nodes)]


def render(breq: BridgeRequest, config: BridgeConfig, job_id: int,
           array_task_id: int | None = None) -> list[dict[str, Any]]:
    """The Kubernetes objects of one job (or one array task): Service, [PodGroup], Job."""
    _check_ids(breq, job_id, array_task_id)
    name = object_name(config, job_id, array_task_id)
    longest = f"{name}-{breq.nodes - 1}"
    if len(longest) > MAX_HOSTNAME:
        raise ValueError(f"pod hostname {longest} is longer than {MAX_HOSTNAME} characters")
    labels = _labels(breq, config, job_id, array_task_id)
    selector = _selector(config, job_id, array_task_id)
    annotations = _annotations(breq)
    objects = [_service(name, breq, config, labels, selector, annotations)]
    if breq.gang == "volcano":
        objects.append(_pod_group(name, breq, labels, annotations))
    objects.append(_job(name, breq, config, job_id, array_task_id, labels, selector, annotations))
    return objects


def render_all(breq: BridgeRequest, config: BridgeConfig, job_id: int) -> list[dict[str, Any]]:
    """Every object of the job: one set per array task (each array task is its own Job)."""
    if breq.array_task_ids is None:
        return render(breq, config, job_id)
    objects: list[dict[str, Any]] = []
    for task_id in breq.array_task_ids:
        objects.extend(render(breq, config, job_id, task_id))
    return objects


def translate_request(req: SlurmJobRequest, config: BridgeConfig, job_id: int) -> list[dict[str, Any]] | None:
    """``normalize`` then ``render_all``; ``None`` when the partition is not bridged."""
    breq = normalize(req, config)
    return None if breq is None else render_all(breq, config, job_id)


def _check_ids(breq: BridgeRequest, job_id: int, array_task_id: int | None) -> None:
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id <= 0:
        raise ValueError(f"job id must be a positive integer, not {job_id!r}")
    if breq.array_task_ids is None and array_task_id is not None:
        raise ValueError("array_task_id given for a job that is not an array")
    if breq.array_task_ids is not None and array_task_id not in breq.array_task_ids:
        raise ValueError(f"array task {array_task_id} is not one of the job's array tasks")


def _labels(breq: BridgeRequest, config: BridgeConfig, job_id: int, array_task_id: int | None) -> dict[str, str]:
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY, **_selector(config, job_id, array_task_id)}
    if breq.job_name:
        labels[LABEL_PREFIX + "job-name"] = breq.job_name
    if breq.user_id is not None:
        labels[LABEL_PREFIX + "uid"] = str(breq.user_id)
    return labels


def _selector(config: BridgeConfig, job_id: int, array_task_id: int | None) -> dict[str, str]:
    selector = {LABEL_PREFIX + "cluster": config.cluster_name, LABEL_PREFIX + "job-id": str(job_id)}
    if array_task_id is not None:
        selector[LABEL_PREFIX + "array-task-id"] = str(array_task_id)
    return selector


def _annotations(breq: BridgeRequest) -> dict[str, str]:
    out = {LABEL_PREFIX + "partition": breq.partition, LABEL_PREFIX + "shapes": ",".join(breq.shapes)}
    if breq.account:
        out[LABEL_PREFIX + "account"] = breq.account
    if breq.qos:
        out[LABEL_PREFIX + "qos"] = breq.qos
    return out


def _metadata(name: str, breq: BridgeRequest, labels: Mapping[str, str],
              annotations: Mapping[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": breq.namespace, "labels": dict(labels), "annotations": dict(annotations)}


def _service(name: str, breq: BridgeRequest, config: BridgeConfig, labels: Mapping[str, str],
             selector: Mapping[str, str], annotations: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, breq, labels, annotations),
        "spec": {
            "clusterIP": "None",
            # pods must resolve each other before they are Ready: slurmd registers first
            "publishNotReadyAddresses": True,
            "selector": dict(selector),
            "ports": [{"name": "slurmd", "port": config.slurmd_port, "targetPort": config.slurmd_port,
                       "protocol": "TCP"}],
        },
    }


def _resources(breq: BridgeRequest) -> dict[str, str]:
    resources = {"cpu": str(breq.cpus_per_node), "memory": f"{breq.memory_mb_per_node}Mi"}
    if breq.gpu_resource and breq.gpus_per_node:
        resources[breq.gpu_resource] = str(breq.gpus_per_node)
    return resources


def _pod_group(name: str, breq: BridgeRequest, labels: Mapping[str, str],
               annotations: Mapping[str, str]) -> dict[str, Any]:
    per_node = _resources(breq)
    total = {"cpu": str(breq.cpus_per_node * breq.nodes), "memory": f"{breq.memory_mb_per_node * breq.nodes}Mi"}
    for key, value in per_node.items():
        if key not in total:
            total[key] = str(int(value) * breq.nodes)
    spec: dict[str, Any] = {"minMember": breq.nodes, "minResources": total}
    if breq.queue:
        spec["queue"] = breq.queue
    if breq.priority_class:
        spec["priorityClassName"] = breq.priority_class
    return {"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup",
            "metadata": _metadata(name, breq, labels, annotations), "spec": spec}


def _job(name: str, breq: BridgeRequest, config: BridgeConfig, job_id: int, array_task_id: int | None,
         labels: Mapping[str, str], selector: Mapping[str, str], annotations: Mapping[str, str]) -> dict[str, Any]:
    job_labels = dict(labels)
    if breq.gang == "kueue" and breq.queue:
        job_labels[KUEUE_QUEUE_LABEL] = breq.queue
    pod_annotations = dict(annotations)
    if breq.gang == "volcano":
        pod_annotations[VOLCANO_GROUP_ANNOTATION] = name
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": breq.nodes,
        "parallelism": breq.nodes,
        # One failed pod fails its index only: the other pods keep running until their
        # slurmd have told Slurm the run ended (the daemon then removes the Job).
        "backoffLimitPerIndex": 0,
        "template": {
            "metadata": {"labels": dict(labels), "annotations": pod_annotations},
            "spec": _pod_spec(name, breq, config, job_id, array_task_id, selector),
        },
    }
    if breq.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = breq.active_deadline_seconds
    if breq.gang == "kueue":
        spec["suspend"] = True
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": _metadata(name, breq, job_labels, annotations), "spec": spec}


def _pod_spec(name: str, breq: BridgeRequest, config: BridgeConfig, job_id: int, array_task_id: int | None,
              selector: Mapping[str, str]) -> dict[str, Any]:
    volumes, mounts = _volumes(config)
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": name,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(breq, config, job_id, array_task_id, mounts)],
        "volumes": volumes,
        "affinity": _affinity(breq, selector),
        "tolerations": [dict(t) for t in breq.tolerations],
    }
    if breq.node_selector:
        pod["nodeSelector"] = dict(breq.node_selector)
    if breq.priority_class:
        pod["priorityClassName"] = breq.priority_class
    if breq.service_account:
        pod["serviceAccountName"] = breq.service_account
    if breq.gang == "volcano":
        pod["schedulerName"] = "volcano"
    return pod


def _affinity(breq: BridgeRequest, selector: Mapping[str, str]) -> dict[str, Any]:
    affinity: dict[str, Any] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [t.to_dict() for t in breq.node_affinity_terms]}}}
    if breq.same_shape_topology_key:
        affinity["podAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": dict(selector)},
            "topologyKey": breq.same_shape_topology_key,
        }]}
    return affinity


def _volumes(config: BridgeConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # slurmd, slurmstepd and PMIx keep sockets and spool files in /tmp: each pod its own
    volumes: list[dict[str, Any]] = [{"name": TMP_VOLUME, "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    for index, shared in enumerate(config.shared_mounts):
        volume = f"shared-{index}"
        volumes.append({"name": volume, "hostPath": {"path": shared.host_path, "type": "Directory"}})
        mounts.append({"name": volume, "mountPath": shared.path, "readOnly": shared.read_only})
    if config.munge_key_secret:
        volumes.append({"name": "munge-key", "secret": {"secretName": config.munge_key_secret,
                                                         "defaultMode": 0o400}})
        mounts.append({"name": "munge-key", "mountPath": MUNGE_KEY_DIR, "readOnly": True})
    return volumes, mounts


def _container(breq: BridgeRequest, config: BridgeConfig, job_id: int, array_task_id: int | None,
               mounts: list[dict[str, Any]]) -> dict[str, Any]:
    resources = _resources(breq)
    container: dict[str, Any] = {
        "name": "slurmd",
        "image": breq.image,
        "env": _env(breq, config, job_id, array_task_id),
        "ports": [{"name": "slurmd", "containerPort": config.slurmd_port, "protocol": "TCP"}],
        # a worker that fails to start says why in its status (the daemon shows it in squeue)
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "runAsUser": 0,
            "capabilities": {"drop": ["ALL"], "add": list(WORKER_CAPABILITIES)},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    if config.worker_command:
        container["command"] = list(config.worker_command)
    return container


def _env(breq: BridgeRequest, config: BridgeConfig, job_id: int, array_task_id: int | None) -> list[dict[str, Any]]:
    values: list[tuple[str, str]] = [
        ("SLURM_K8S_CLUSTER", config.cluster_name),
        ("SLURM_K8S_JOB_ID", str(job_id)),
    ]
    if array_task_id is not None:
        values.append(("SLURM_K8S_ARRAY_TASK_ID", str(array_task_id)))
    values += [
        ("SLURM_K8S_PARTITION", breq.partition),
        ("SLURM_K8S_NODE_GRES", breq.node_gres),
        ("SLURM_K8S_NODE_CPUS", str(breq.cpus_per_node)),
        ("SLURM_K8S_NODE_MEMORY_MB", str(breq.memory_mb_per_node)),
        ("SLURM_K8S_NODE_FEATURES", ",".join((POD_NODE_FEATURE, *breq.node_features))),
        ("SLURM_K8S_SLURMD_PORT", str(config.slurmd_port)),
    ]
    if breq.user_id is not None:
        values.append(("SLURM_K8S_JOB_UID", str(breq.user_id)))
    if breq.group_id is not None:
        values.append(("SLURM_K8S_JOB_GID", str(breq.group_id)))
    if config.conf_server:
        values.append(("SLURM_K8S_CONF_SERVER", config.conf_server))
    if config.munge_key_secret:
        values.append(("SLURM_K8S_MUNGE_KEY_FILE", f"{MUNGE_KEY_DIR}/munge.key"))
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values]
    for name, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"),
                       ("POD_IP", "status.podIP"), ("K8S_NODE_NAME", "spec.nodeName")):
        env.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
    return env

