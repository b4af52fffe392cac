"""Kubernetes GPU nodes, mirrored into Slurm so sinfo tells the truth.

Every Kubernetes node that offers GPUs becomes a powered-down CLOUD node ``k8s-<node>`` in
Slurm (``State=CLOUD``, ``Feature=k8s-node,...``; the ``k8snodes`` NodeSet puts it into the
bridged partitions) with its GPU type and count, CPUs and memory. A cordoned node shows as
drained and a NotReady one as down, each with the Kubernetes reason; nodes added or removed
in Kubernetes appear or disappear. The mirrored nodes are never allocated: bridged jobs run
on their pods' own dynamic nodes.

With ``native_gpu_usage: true`` each mirrored node's Comment also says which
Kubernetes-native pods (pods that are not this Slurm cluster's own jobs) hold GPUs there,
``k8s: 3/8 GPUs held by Kubernetes pods: infer/llama-0 (2), etl/x (1)``; the daemon keeps a
``GpuPod`` per pod of every namespace for that (``k8s_access.KubeAccess.watch_gpu_pods``).
The mirror owns the Comment of its nodes: with the option off it is kept empty.

``desired_mirror`` and ``plan_mirror`` are pure; the daemon executes the plan.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slurm_k8s_bridge.core.config import BridgeConfig, parse_memory_mb
from slurm_k8s_bridge.slurm.records import SlurmNode
from slurm_k8s_bridge.core.contract import MIRROR_NODE_FEATURE
from slurm_k8s_bridge.core.contract import MIRROR_PREFIX
from slurm_k8s_bridge.kube.gpu_pods import GPU_RESOURCE, MIG_PREFIX, GpuPod, _count, native_pods_by_node

#: longest node Comment the mirror writes (Slurm 22.05 took 2,000 characters; sinfo users
#: read one line)
COMMENT_LIMIT = 250
#: the Comment while the API server refuses the bridge the pods of all namespaces
NATIVE_USAGE_FORBIDDEN = ("k8s: GPUs held by Kubernetes pods unknown: the bridge may not list "
                          "pods in all namespaces (deploy/rbac-native-gpu-usage.yaml)")


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
    #: the node's Comment: GPUs held by Kubernetes-native pods; None: leave it as it is
    comment: str | None = None


@dataclass(frozen=True)
class MirrorAction:
    verb: str             # create, recreate, state, comment, delete
    node: str
    spec: MirrorNode | None = None


def slurm_name(k8s_name: str) -> str:
    return MIRROR_PREFIX + re.sub(r"[^A-Za-z0-9-]", "-", k8s_name)


def _cpus(value: Any) -> int:
    text = str(value or "0")
    return int(text[:-1]) // 1000 if text.endswith("m") else int(float(text))


# -- GPUs held by pods ------------------------------------------------------------------


def _resource_label(resource: str) -> str:
    return "GPUs" if resource == GPU_RESOURCE else f"MIG {resource[len(MIG_PREFIX):]}"


def _amount(pod: GpuPod) -> str:
    return ", ".join(str(n) if r == GPU_RESOURCE else f"{n} {_resource_label(r)}"
                     for r, n in pod.gpus)


def usage_comment(allocatable: Mapping[str, Any], pods: Sequence[GpuPod],
                  limit: int = COMMENT_LIMIT) -> str:
    """``k8s: 3/8 GPUs held by Kubernetes pods: infer/llama-0 (2), etl/x (1)``: the most
    GPUs first; pods that do not fit in ``limit`` characters are counted (``and 4
    more``). "" when no pod holds GPUs on the node."""
    held: dict[str, int] = {}
    for pod in pods:
        for resource, count in pod.gpus:
            held[resource] = held.get(resource, 0) + count
    if not held:
        return ""
    order = sorted(held, key=lambda r: (r != GPU_RESOURCE, r))
    totals = ", ".join(f"{held[r]}/{_count(allocatable.get(r))} {_resource_label(r)}"
                       for r in order)
    head = f"k8s: {totals} held by Kubernetes pods: "
    ranked = sorted(pods, key=lambda p: (-sum(n for _, n in p.gpus), p.namespace, p.name))
    entries = [f"{p.namespace}/{p.name} ({_amount(p)})" for p in ranked]
    text = head
    for shown in range(len(entries), -1, -1):
        rest = len(entries) - shown
        listed = entries[:shown] + ([f"and {rest} more"] if rest else [])
        text = head + ", ".join(listed)
        if len(text) <= limit:
            return text
    return text[:limit]


# -- nodes ---------------------------------------------------------------------------------
def desired_mirror(nodes: Mapping[str, Mapping[str, Any]], config: BridgeConfig,
                   gpu_pods: Iterable[GpuPod] | None = None, usage_unknown: str = ""
                   ) -> dict[str, MirrorNode]:
    """What Slurm should show for the Kubernetes nodes that offer GPUs.

    With ``config.native_gpu_usage`` each node's comment says what Kubernetes-native pods
    hold there (``usage_comment``); ``gpu_pods`` None means not known (yet): the comment
    is ``usage_unknown``, or left as it is when that is empty. Without the option the
    comment is kept empty.
    """
    native = native_pods_by_node(gpu_pods) if gpu_pods is not None else {}
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
        comment: str | None = ""
        if config.native_gpu_usage:
            comment = (usage_comment(alloc, native.get(k8s_name, ())) if gpu_pods is not None
                       else usage_unknown or None)
        memory = alloc.get("memory")
        out[slurm_name(k8s_name)] = MirrorNode(
            name=slurm_name(k8s_name), k8s_name=k8s_name, cpus=max(_cpus(alloc.get("cpu")), 1),
            memory_mb=max(parse_memory_mb(memory) if memory else 1, 1), gres=",".join(parts),
            features=tuple(dict.fromkeys(features)), state=state, reason=reason[:200],
            comment=comment)
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
        else:
            if _slurm_state(have) != want.state or (want.reason and have.reason != want.reason):
                actions.append(MirrorAction("state", name, want))
            if want.comment is not None and have.comment != want.comment:
                actions.append(MirrorAction("comment", name, want))
            continue
        # a node created (again) has no state and no comment yet
        if want.state != "idle":
            actions.append(MirrorAction("state", name, want))
        if want.comment:
            actions.append(MirrorAction("comment", name, want))
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
        elif action.verb == "comment" and spec is not None:
            slurm.set_node_comment(spec.name, spec.comment or "")
