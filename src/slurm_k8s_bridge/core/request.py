"""The request model: what Slurm asks (``SlurmJobRequest``) and what the bridge will run
(``BridgeRequest``, made by ``core.normalize``).

The Slurm side of a request, exactly as slurmctld hands it to a job_submit plugin:

``SlurmJobRequest`` carries the fields of ``job_desc_msg_t`` the bridge reads, in Slurm's
own encoding (``tres_per_node="gres:gpu:h100:8"``, memory in MB with a per-CPU flag, time
in minutes). Two producers fill it: the job_submit plugin (from the real ``job_desc``) and
``slurm-k8s-bridge translate`` (from a batch script and sbatch options, parsed as sbatch
does). Everything downstream -- validation, normalisation, Kubernetes objects -- starts from
this one type, so both paths give the same answer for the same request.

The request also travels with the job: the plugin stores it, compressed, in the job's
AdminComment (``stamp``), which slurmctld keeps across restarts and users cannot change.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from slurm_k8s_bridge.core.errors import BridgeRefusal
from slurm_k8s_bridge.core.contract import SPANK_ENV_PREFIX, SPANK_PLUGIN_NAME, STAMP_PREFIX

#: Time limit meaning "no limit" (Slurm's INFINITE), kept as -1 here.
UNLIMITED = -1
# Slurm's "not set" and "no limit" values, in case a producer passes them through raw.
NO_VAL = 0xFFFFFFFE
NO_VAL16 = 0xFFFE
NO_VAL64 = 0xFFFFFFFFFFFFFFFE
INFINITE = 0xFFFFFFFF
#: job_desc->warn_flags bits (slurm.h): ``B:`` and ``R:`` of ``--signal``
KILL_JOB_BATCH = 0x1
KILL_JOB_RESV = 0x100
NOT_SET = frozenset({NO_VAL, NO_VAL16, NO_VAL64})


def given(value: int | None) -> int | None:
    """``None`` for "not set", whether the producer passed None or Slurm's NO_VAL."""
    if value is None or value in NOT_SET:
        return None
    return value


@dataclass(frozen=True)
class SlurmJobRequest:
    """Fields of ``job_desc_msg_t`` the bridge uses; ``None`` means "not given"."""

    partition: str | None = None
    min_nodes: int | None = None
    max_nodes: int | None = None
    num_tasks: int | None = None
    ntasks_per_node: int | None = None
    cpus_per_task: int | None = None
    #: ``--mem`` (per node) or ``--mem-per-cpu`` in MB; which one is ``mem_per_cpu``.
    pn_min_memory: int | None = None
    mem_per_cpu: bool = False
    tres_per_node: str | None = None
    tres_per_job: str | None = None
    tres_per_task: str | None = None
    tres_per_socket: str | None = None
    #: ``--ntasks-per-gpu`` (not supported by the bridge yet; carried so it is refused)
    ntasks_per_tres: int | None = None
    cpus_per_tres: str | None = None
    mem_per_tres: str | None = None
    features: str | None = None
    #: minutes; ``UNLIMITED`` (-1) for INFINITE
    time_limit: int | None = None
    #: job_desc->shared: 0 = ``--exclusive``, 1 = ``--oversubscribe``, 2 = ``--exclusive=user``,
    #: 3 = ``--exclusive=mcs``
    shared: int | None = None
    account: str | None = None
    qos: str | None = None
    name: str | None = None
    array_inx: str | None = None
    user_id: int | None = None
    group_id: int | None = None
    #: SPANK options by option name without dashes, e.g. ``{"k8s-image": "repo/img:tag"}``;
    #: a flag without argument has value ``""``.
    spank_options: Mapping[str, str] = field(default_factory=dict)
    #: set for a component of a heterogeneous job
    het_job_offset: int | None = None
    work_dir: str | None = None
    submit_line: str | None = None
    #: ``--signal=[{R|B}:]SIG[@TIME]`` as job_desc's (warn_signal, warn_time, warn_flags): the
    #: signal number, the seconds before the end it is sent, and Slurm's flags
    #: (``KILL_JOB_BATCH``: to the batch shell only; ``KILL_JOB_RESV``)
    signal: tuple[int, int, int] | None = None
    #: ``-O/--overcommit``: one CPU per node is allocated, tasks may outnumber the CPUs
    overcommit: bool = False
    #: bridge bookkeeping, not a job_desc field: the owner put their own hold on the job
    #: (``scontrol hold``), recorded by job_modify; the bridge creates no pods meanwhile
    user_hold: bool = False

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "spank_options":
                if value:
                    out[f.name] = dict(value)
                continue
            if value is None or (f.name in ("mem_per_cpu", "user_hold", "overcommit")
                                 and value is False):
                continue
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SlurmJobRequest":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown request fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        values["spank_options"] = dict(values.get("spank_options") or {})
        if values.get("signal") is not None:   # JSON has no tuples
            values["signal"] = tuple(values["signal"])
        return cls(**values)

    def replace(self, **changes: Any) -> "SlurmJobRequest":
        return dataclasses.replace(self, **changes)

    def stamp(self) -> str:
        """Compact, space-free text for the job's AdminComment."""
        raw = json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()
        return STAMP_PREFIX + base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")

    @classmethod
    def from_stamp(cls, text: str) -> "SlurmJobRequest":
        if not is_stamp(text):
            raise ValueError("not a slurm-k8s-bridge stamp")
        body = text[len(STAMP_PREFIX):].strip()
        body += "=" * (-len(body) % 4)
        return cls.from_dict(json.loads(zlib.decompress(base64.urlsafe_b64decode(body))))


def is_stamp(text: str | None) -> bool:
    return bool(text) and text.startswith(STAMP_PREFIX)  # type: ignore[union-attr]


def spank_options_from_env(entries: list[str]) -> dict[str, str]:
    """Pick this project's SPANK options out of ``spank_job_env`` entries.

    ``_SLURM_SPANK_OPTION_k8s_bridge_k8s_image=repo/img`` becomes ``{"k8s-image": "repo/img"}``;
    Slurm encodes a flag without argument as ``(null)``, kept here as ``""``.
    """
    prefix = f"{SPANK_ENV_PREFIX}{SPANK_PLUGIN_NAME}_"
    out: dict[str, str] = {}
    for entry in entries:
        if not entry.startswith(prefix) or "=" not in entry:
            continue
        key, value = entry[len(prefix):].split("=", 1)
        out[key.replace("_", "-")] = "" if value == "(null)" else value
    return out


def require_int(value: str, option: str, minimum: int = 0) -> int:
    """Parse an integer option value or refuse it naming the option."""
    try:
        number = int(value, 10)
    except (TypeError, ValueError):
        raise BridgeRefusal(f"invalid value for {option}: {value!r} is not a number",
                            "ESLURM_NOT_SUPPORTED") from None
    if number < minimum:
        raise BridgeRefusal(f"invalid value for {option}: {number} (must be >= {minimum})",
                            "ESLURM_NOT_SUPPORTED")
    return number


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
    #: Kueue's WorkloadPriorityClass (``qos_workload_priority_classes``; Kueue backend only)
    workload_priority_class: str | None = None
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
    #: what the job gets when Kubernetes takes one of its pods away (preemption, eviction):
    #: its ``--signal`` (number; to the batch shell only with ``B:``) and the seconds it has
    #: before the bridge requeues it. Without ``--signal``: None, 0 (the requeue's SIGTERM).
    preempt_signal: int | None = None
    preempt_signal_batch: bool = False
    preempt_grace_seconds: int = 0
    #: the pods' terminationGracePeriodSeconds: that grace plus Slurm's KillWait
    termination_grace_seconds: int = 30

    @property
    def is_array(self) -> bool:
        return self.array_task_ids is not None
