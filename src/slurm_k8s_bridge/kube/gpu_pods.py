"""Pods that hold GPUs, as the mirror needs them: ``gpu_pod`` keeps of a pod only its
namespace/name, node, phase, GPU requests (``nvidia.com/gpu`` and MIG profiles) and whether it
is the bridge's own. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slurm_k8s_bridge.core.contract import CLUSTER_LABEL, MANAGED_BY, MANAGED_BY_LABEL


GPU_RESOURCE = "nvidia.com/gpu"


MIG_PREFIX = "nvidia.com/mig-"


#: phases of pods that hold nothing any more
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


#: field selector of the cluster-wide pod watch: finished pods are never sent
UNFINISHED_PODS = "status.phase!=Succeeded,status.phase!=Failed"


def _count(value: Any) -> int:
    try:
        return int(str(value or "0"))
    except ValueError:
        return 0


@dataclass(frozen=True)
class GpuPod:
    """What the bridge keeps of one pod of any namespace: where it is, what GPUs it holds."""

    namespace: str
    name: str
    node: str                           # spec.nodeName; "" while not scheduled
    phase: str
    gpus: tuple[tuple[str, int], ...]   # (resource, count), e.g. (("nvidia.com/gpu", 2),)
    bridge: bool                        # a pod of this Slurm cluster's jobs

    @property
    def holds_gpus(self) -> bool:
        """Bound to a node, not finished, and asking for GPUs."""
        return bool(self.node and self.gpus) and self.phase not in FINISHED_PHASES


def _is_gpu_resource(name: str) -> bool:
    return name == GPU_RESOURCE or name.startswith(MIG_PREFIX)


def _gpu_requests(container: Mapping[str, Any]) -> dict[str, int]:
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    out: dict[str, int] = {}
    for name in (*requests, *limits):
        if _is_gpu_resource(name) and name not in out:
            # extended resources: the request equals the limit; a limit alone is the request
            count = _count(requests.get(name, limits.get(name)))
            if count > 0:
                out[name] = count
    return out


def pod_gpu_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """The GPUs (``nvidia.com/gpu``, ``nvidia.com/mig-*``) a pod holds on its node, counted
    as the scheduler counts them: the larger of the app containers' sum (plus sidecars:
    init containers with ``restartPolicy: Always``) and each init container's own request
    (plus the sidecars started before it), plus the pod's overhead."""
    spec = pod.get("spec") or {}
    sidecars: dict[str, int] = {}
    init_peak: dict[str, int] = {}
    for container in spec.get("initContainers") or ():
        want = _gpu_requests(container)
        if container.get("restartPolicy") == "Always":
            for name, count in want.items():
                sidecars[name] = sidecars.get(name, 0) + count
            for name in want:
                init_peak[name] = max(init_peak.get(name, 0), sidecars[name])
        else:
            for name, count in want.items():
                init_peak[name] = max(init_peak.get(name, 0), count + sidecars.get(name, 0))
    running = dict(sidecars)
    for container in spec.get("containers") or ():
        for name, count in _gpu_requests(container).items():
            running[name] = running.get(name, 0) + count
    overhead = {name: _count(value) for name, value in (spec.get("overhead") or {}).items()
                if _is_gpu_resource(name)}
    total = {name: max(running.get(name, 0), init_peak.get(name, 0)) + overhead.get(name, 0)
             for name in (*running, *init_peak, *overhead)}
    return {name: count for name, count in sorted(total.items()) if count > 0}


def gpu_pod(pod: Mapping[str, Any], cluster_name: str) -> GpuPod:
    """The ``GpuPod`` of a pod as the API returns it. ``bridge``: it carries this Slurm
    cluster's labels (``app.kubernetes.io/managed-by=slurm-k8s-bridge`` and
    ``contract.CLUSTER_LABEL=<cluster_name>``)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    return GpuPod(namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
                  node=str((pod.get("spec") or {}).get("nodeName") or ""),
                  phase=str((pod.get("status") or {}).get("phase") or "Pending"),
                  gpus=tuple(pod_gpu_requests(pod).items()),
                  bridge=(labels.get(MANAGED_BY_LABEL) == MANAGED_BY
                          and labels.get(CLUSTER_LABEL) == cluster_name))


def native_pods_by_node(pods: Iterable[GpuPod]) -> dict[str, list[GpuPod]]:
    """Kubernetes-native pods holding GPUs, by Kubernetes node. The bridge's own pods are
    left out: Slurm shows them as its jobs' dynamic nodes."""
    out: dict[str, list[GpuPod]] = {}
    for pod in pods:
        if pod.holds_gpus and not pod.bridge:
            out.setdefault(pod.node, []).append(pod)
    return out
