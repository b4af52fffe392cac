"""Node objects of the local Kubernetes clusters, and the stages KWOK plays their pods by.

``gpu_node_labels``: the NFD / GPU-operator (gpu-feature-discovery) labels of a fake GPU
node, for the KWOK nodes of ``LocalKubeCluster.add_gpu_nodes`` and the real nodes of
kubelet.py alike; ``_parse_taint`` reads ``key[=value][:Effect]``; ``_node_schedulable``
is "Ready and no not-ready taint". ``write_kwok_stages`` writes the stages file kwok runs
with: upstream's, or (``pod_lifecycle="annotated"``) upstream's with the pod-complete stage
replaced by the annotation-driven completion and failure stages below.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slurm_k8s_devcluster.errors import KubeClusterError

KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
STAGES_RELPATH = Path("share") / "kwok" / "stages-fast.yaml"

# Taints the node lifecycle controller keeps on a node that is not (yet) Ready.
_NOT_READY_TAINTS = {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}

# gpu-feature-discovery style facts: product label -> (memory MiB, family).
GPU_PRODUCTS: dict[str, tuple[int, str]] = {
    "NVIDIA-H100-80GB-HBM3": (81559, "hopper"),
    "NVIDIA-H100-NVL": (95830, "hopper"),
    "NVIDIA-H200": (143771, "hopper"),
    "NVIDIA-GH200-480GB": (97871, "hopper"),
    "NVIDIA-B200": (183359, "blackwell"),
    "NVIDIA-A100-SXM4-80GB": (81920, "ampere"),
    "NVIDIA-A100-SXM4-40GB": (40960, "ampere"),
    "NVIDIA-A100-80GB-PCIe": (81920, "ampere"),
    "NVIDIA-L40S": (46068, "ada-lovelace"),
    "NVIDIA-L4": (23034, "ada-lovelace"),
    "Tesla-V100-SXM2-32GB": (32768, "volta"),
    "Tesla-T4": (15360, "turing"),
}


def _quantity(value: Any) -> str:
    return str(value)


def _parse_taint(taint: str | Mapping[str, str]) -> dict[str, str]:
    """``"key=value:NoSchedule"``, ``"key:NoExecute"`` or a dict -> a Node taint dict."""
    if isinstance(taint, Mapping):
        out = {"key": taint["key"], "effect": taint.get("effect", "NoSchedule")}
        if taint.get("value") is not None:
            out["value"] = str(taint["value"])
        return out
    m = re.fullmatch(r"([^=:]+)(?:=([^:]*))?(?::(NoSchedule|PreferNoSchedule|NoExecute))?",
                     taint.strip())
    if not m:
        raise ValueError(f"bad taint {taint!r}: want key[=value][:Effect]")
    out = {"key": m.group(1), "effect": m.group(3) or "NoSchedule"}
    if m.group(2) is not None:
        out["value"] = m.group(2)
    return out


def gpu_node_labels(name: str, *, gpus: int, gpu_product: str,
                    gpu_memory_mib: int | None = None,
                    mig: Mapping[str, int] | None = None) -> dict[str, str]:
    """NFD / GPU-operator (gpu-feature-discovery) style labels for a fake GPU node."""
    mem, family = GPU_PRODUCTS.get(gpu_product, (0, ""))
    if gpu_memory_mib is None:
        m = re.search(r"(\d+)GB", gpu_product)
        gpu_memory_mib = mem or (int(m.group(1)) * 1024 if m else 0)
    labels = {
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": f"kwok-{gpus}x-{gpu_product}".lower()[:63],
        "feature.node.kubernetes.io/pci-10de.present": "true",
        "feature.node.kubernetes.io/system-os_release.ID": "ubuntu",
        "feature.node.kubernetes.io/system-os_release.VERSION_ID": "22.04",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": gpu_product,
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/mig.capable": "true" if family in ("ampere", "hopper", "blackwell")
        else "false",
    }
    if gpu_memory_mib:
        labels["nvidia.com/gpu.memory"] = str(gpu_memory_mib)
    if family:
        labels["nvidia.com/gpu.family"] = family
    if mig:
        labels["nvidia.com/mig.strategy"] = "mixed"
        for profile, count in mig.items():
            labels[f"nvidia.com/mig-{profile}.count"] = str(count)
            labels[f"nvidia.com/mig-{profile}.product"] = f"{gpu_product}-MIG-{profile}"[:63]
    return labels


def _node_names(core: Any, prefix: str | None = None) -> list[str]:
    """Names of all nodes, or of the ``<prefix>-<n>`` ones."""
    names = [str(n.metadata.name) for n in core.list_node().items]
    if prefix is None:
        return names
    pattern = re.compile(rf"^{re.escape(prefix)}-\d+$")
    return [n for n in names if pattern.match(n)]


def _node_schedulable(node: Any) -> bool:
    """Ready=True and the lifecycle controller's not-ready taint is gone."""
    conds = (node.status.conditions or []) if node.status else []
    ready = any(c.type == "Ready" and c.status == "True" for c in conds)
    taints = (node.spec.taints or []) if node.spec else []
    return ready and not any(t.key in _NOT_READY_TAINTS for t in taints)


# Opt-in completion/failure stages that replace upstream's "complete every Job pod at
# once" pod-complete stage in pod_lifecycle="annotated": a pod annotated
# <stage>.stage.kwok.x-k8s.io/delay ends that long after it runs, Succeeded (exit 0) or
# Failed (pod-fail.stage.kwok.x-k8s.io/exit-code, default 1).
def _end_stage(name: str, *, phase: str, reason: str, weight: str, code_template: str,
               exit_code: str) -> str:
    return rf"""apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: {name}
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
    - key: '.metadata.annotations["{name}.stage.kwok.x-k8s.io/delay"]'
      operator: 'Exists'
{weight}  delay:
    durationMilliseconds: 0
    durationFrom:
      expressionFrom: '.metadata.annotations["{name}.stage.kwok.x-k8s.io/delay"]'
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
{code_template}      conditions:
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "False"
        type: Ready
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "False"
        type: ContainersReady
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: {exit_code}
            finishedAt: {{{{ $now | Quote }}}}
            reason: {reason}
            startedAt: {{{{ $now | Quote }}}}
      {{{{ end }}}}
      phase: {phase}
"""


_ANNOTATED_POD_STAGES = _end_stage(
    "pod-complete", phase="Succeeded", reason="Completed", weight="", code_template="",
    exit_code="0",
) + "---\n" + _end_stage(
    "pod-fail", phase="Failed", reason="Error", weight="  weight: 10\n",
    code_template='      {{ $annotations := or .metadata.annotations dict }}\n'
                  '      {{ $code := or ( index $annotations "pod-fail.stage.kwok.x-k8s.io/exit-code" ) "1" }}\n',
    exit_code="{{ $code }}",
)


def _split_yaml_docs(text: str) -> list[str]:
    docs: list[str] = []
    cur: list[str] = []
    for line in text.splitlines():
        if line.strip() == "---":
            docs.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    docs.append("\n".join(cur))
    return [d for d in docs if re.search(r"^kind:", d, re.MULTILINE)]


def _stage_name(doc: str) -> str:
    m = re.search(r"^metadata:\s*\n\s+name:\s*(\S+)", doc, re.MULTILINE)
    return m.group(1) if m else ""


def write_kwok_stages(bin_dir: Path, out: Path, pod_lifecycle: str) -> Path:
    """Write the stages for ``pod_lifecycle`` (``"fast"``/``"annotated"``) to ``out``, from
    the stages file shipped next to the kwok binary of ``bin_dir``."""
    shipped = bin_dir.parent / STAGES_RELPATH
    if not shipped.is_file():
        raise KubeClusterError(
            f"{shipped} not found (the kwok binary has no built-in stages); use the bin dir "
            f"from scripts/build-k8s-binaries.sh or pass stages_file=")
    if pod_lifecycle == "fast":
        shutil.copyfile(shipped, out)
        return out
    docs = [d for d in _split_yaml_docs(shipped.read_text())
            if _stage_name(d) != "pod-complete"]
    names = {_stage_name(d) for d in docs}
    need = {"node-initialize", "node-heartbeat-with-lease", "pod-ready", "pod-delete"}
    if not need <= names:
        raise KubeClusterError(f"{shipped} lacks stages {sorted(need - names)}")
    out.write_text("\n---\n".join([*docs, _ANNOTATED_POD_STAGES]))
    return out
