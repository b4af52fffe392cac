"""Kubernetes GPU nodes, mirrored into Slurm so sinfo tells the truth.

Every Kubernetes node that offers GPUs becomes a powered-down CLOUD node ``k8s-<node>`` in
Slurm (``State=CLOUD``, ``Feature=k8s-node,...``; the ``k8snodes`` NodeSet puts it into the
bridged partitions) with its GPU type and count, CPUs and memory. A cordoned node shows as
drained and a NotReady one as down, each with the Kubernetes reason; nodes added or removed
in Kubernetes appear or disappear. The mirrored nodes are never allocated: bridged jobs run
on their pods' own dynamic nodes.

``desired_mirror`` and ``plan_mirror`` are pure; the daemon executes the plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .config import BridgeConfig, parse_memory_mb
from .slurm_client import SlurmNode
from .slurmconf import MIRROR_NODE_FEATURE

MIRROR_PREFIX = "k8s-"
GPU_RESOURCE = "nvidia.com/gpu"
MIG_PREFIX = "nvidia.com/mig-"


@dataclass(frozen=True)
class MirrorNode:
    name: str
    k8s_name: str
    cpus: int
    memory_mb: int
    gres: str
    features: tuple[str, ...]
    state: str            # idle, drain, down
    reason: str = ""


@dataclass(frozen=True)
class MirrorAction:
    verb: str             # create, recreate, state, delete
    node: str
    spec: MirrorNode | None = None


def slurm_name(k8s_name: str) -> str:
    return MIRROR_PREFIX + re.sub(r"[^A-Za-z0-9-]", "-", k8s_name)


def _cpus(value: Any) -> int:
    text = str(value or "0")
    return int(text[:-1]) // 1000 if text.endswith("m") else int(float(text))


def _count(value: Any) -> int:
    try:
        return int(str(value or "0"))
    except ValueError:
        return 0


def desired_mirror(nodes: Mapping[str, Mapping[str, Any]], config: BridgeConfig
                   ) -> dict[str, MirrorNode]:
    """What Slurm should show for the Kubernetes nodes that offer GPUs."""
    by_product = {s.gpu_product: s for s in config.shapes.values()}
    out: dict[str, MirrorNode] = {}
    for k8s_name, node in nodes.items():
        meta = node.get("metadata") or {}
        spec = node.get("spec") or {}
        status = node.get("status") or {}
        alloc = status.get("allocatable") or status.get("capacity") or {}
        gpus = _count(alloc.get(GPU_RESOURCE))
        mig = {k[len(MIG_PREFIX):]: _count(v) for k, v in alloc.items()
               if k.startswith(MIG_PREFIX) and _count(v) > 0}
        if gpus <= 0 and not mig:
            continue
        labels = meta.get("labels") or {}
        shape = next((s for s in config.shapes.values()
                      if labels.get(s.gpu_product_label) == s.gpu_product), None)
        gtype = shape.gres_type if shape else \
            re.sub(r"[^a-z0-9.]", "", next((labels[k] for k in labels
                                            if k.endswith("gpu.product")), "gpu").lower())[:20]
        parts = [f"gpu:{gtype}:{gpus}"] if gpus else []
        parts += [f"gpu:{p}:{n}" for p, n in sorted(mig.items())]
        features = (MIRROR_NODE_FEATURE, *(shape.features if shape else ()))
        state, reason = "idle", ""
        ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
        if ready and ready[0].get("status") != "True":
            state = "down"
            reason = (f"k8s: NotReady: {ready[0].get('reason', '')} "
                      f"{ready[0].get('message', '')}").strip()
        elif spec.get("unschedulable"):
            state, reason = "drain", "k8s: cordoned (kubectl cordon / drain)"
        memory = alloc.get("memory")
        out[slurm_name(k8s_name)] = MirrorNode(
            name=slurm_name(k8s_name), k8s_name=k8s_name, cpus=max(_cpus(alloc.get("cpu")), 1),
            memory_mb=max(parse_memory_mb(memory) if memory else 1, 1), gres=",".join(parts),
            features=tuple(dict.fromkeys(features)), state=state, reason=reason[:200])
    return out


def _slurm_state(node: SlurmNode) -> str:
    if node.down:
        return "down"
    if node.drained:
        return "drain"
    return "idle"


def plan_mirror(desired: Mapping[str, MirrorNode], current: Mapping[str, SlurmNode]
                ) -> list[MirrorAction]:
    """Bring Slurm's mirrored nodes (those with Feature=k8s-node) to ``desired``."""
    actions: list[MirrorAction] = []
    mirrored = {n: s for n, s in current.items() if MIRROR_NODE_FEATURE in s.features}
    for name, want in sorted(desired.items()):
        have = mirrored.get(name)
        if have is None:
            if name in current:
                continue  # a node of that name that is not ours: leave it alone
            actions.append(MirrorAction("create", name, want))
        elif (have.gres != want.gres or have.cpus != want.cpus
              or have.real_memory_mb != want.memory_mb
              or set(have.features) != set(want.features)):
            actions.append(MirrorAction("recreate", name, want))
        elif _slurm_state(have) != want.state or (want.reason and have.reason != want.reason):
            actions.append(MirrorAction("state", name, want))
            continue
        else:
            continue
        if want.state != "idle":
            actions.append(MirrorAction("state", name, want))
    for name in sorted(set(mirrored) - set(desired)):
        actions.append(MirrorAction("delete", name))
    return actions


def apply_mirror(slurm: Any, actions: Sequence[MirrorAction]) -> None:
    """Execute ``plan_mirror``'s actions with a ``SlurmClient``."""
    for action in actions:
        spec = action.spec
        if action.verb == "delete":
            slurm.delete_node(action.node)
        elif action.verb in ("create", "recreate") and spec is not None:
            make = slurm.create_cloud_node if action.verb == "create" else \
                slurm.recreate_cloud_node
            make(spec.name, spec.cpus, spec.memory_mb, spec.gres, list(spec.features))
        elif action.verb == "state" and spec is not None:
            if spec.state == "idle":
                slurm.set_node_state(spec.name, "idle")
            else:
                slurm.set_node_state(spec.name, spec.state, spec.reason)
