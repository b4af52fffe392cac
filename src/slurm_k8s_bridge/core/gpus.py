"""The GPU part of a request: ``--gres``/``--gpus*``/``--*-per-gpu`` read from Slurm's TRES
strings (both encodings, 22.05 and 23.02+) into one ``GpuAsk``, matched to the GPU types and
MIG profiles of the partition's node shapes. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from slurm_k8s_bridge.core.config import NodeShape, PartitionRule
from slurm_k8s_bridge.core.errors import refusal, shown
from slurm_k8s_bridge.core.request import SlurmJobRequest


GPU_RESOURCE = "nvidia.com/gpu"


MIG_RESOURCE_PREFIX = "nvidia.com/mig-"


#: Slurm keeps TRES counts in 64 bits (the top values mean "not set" / "no limit")
TRES_COUNT_LIMIT = 2**63


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
    bad = refusal(f"{option}: cannot read {shown(raw)!r}", "ESLURM_INVALID_GRES")
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
    count = int(match.group(1)) * scale
    return count if count < TRES_COUNT_LIMIT else None


def _gpu_ask(req: SlurmJobRequest) -> GpuAsk:
    if req.tres_per_socket and parse_tres(req.tres_per_socket, "--gpus-per-socket"):
        raise refusal("--gpus-per-socket is not supported by slurm-k8s-bridge: pods have no sockets; "
                       "use --gpus-per-node or --gpus-per-task", "ESLURM_NOT_SUPPORTED")
    found: dict[str, tuple[TresItem, str]] = {}
    types: dict[str, str] = {}
    for field_name, text, option in (("per_node", req.tres_per_node, "--gres"),
                                     ("per_job", req.tres_per_job, "--gpus"),
                                     ("per_task", req.tres_per_task, "--gpus-per-task")):
        gpus = _gpu_items(text, option, allow_cpu=field_name == "per_task")
        if len(gpus) > 1:
            raise refusal(f"{_words(field_name, gpus[0])} and {_words(field_name, gpus[1])} both ask for "
                           "GPUs; give one GPU count per option", "ESLURM_INVALID_GRES")
        if gpus:
            item = gpus[0]
            found[field_name] = (item, _words(field_name, item))
            if item.type is not None:
                types[field_name] = item.type
    distinct = sorted(set(types.values()))
    if len(distinct) > 1:
        raise refusal(f"{' and '.join(found[f][1] for f in types)} ask for different GPU types; "
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
            what = f"gres {shown(item.name)}" if item.kind == "gres" else f"TRES {shown(item.name)}"
            raise refusal(f"{option}={_tres_text(item)} asks for {what}; slurm-k8s-bridge runs jobs "
                           "whose generic resources are GPUs only", "ESLURM_INVALID_GRES")
        gpus.append(item)
    return gpus


def _tres_text(item: TresItem) -> str:
    parts = [item.name] + ([item.type] if item.type else []) + [str(item.count)]
    return shown(":".join(parts) if item.kind == "gres" else f"{item.name}={item.count}")


def _words(field_name: str, item: TresItem) -> str:
    typed = f"{shown(item.type)}:" if item.type else ""
    if field_name == "per_node":
        return f"--gres=gpu:{typed}{item.count}"
    if field_name == "per_job":
        return f"--gpus={typed}{item.count}"
    return f"--gpus-per-task={typed}{item.count}"


def _per_gpu(text: str | None, option: str) -> int | None:
    items = parse_tres(text, option)
    for item in items:
        if item.name != "gpu":
            raise refusal(f"{option}: slurm-k8s-bridge knows this only for GPUs, not {shown(item.name)}",
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
    raise refusal(f"{next(iter(gpu.words.values()))} asks for GPU type {shown(gpu.type)}, but partition "
                   f"{shown(rule.name)} has {offer}", "ESLURM_INVALID_GRES_TYPE")


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
