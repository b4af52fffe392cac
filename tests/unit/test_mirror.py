"""Kubernetes GPU nodes -> Slurm mirrored nodes (pure part)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_k8s_bridge.core.config import load_config
from slurm_k8s_bridge.daemon.mirror import MirrorAction, desired_mirror, plan_mirror
from slurm_k8s_bridge.slurm.records import SlurmNode

pytestmark = pytest.mark.unit

CONFIG = load_config(Path(__file__).resolve().parents[2] / "slurm_plugins" /
                     "k8s-bridge.example.yaml")


def k8s_node(name, gpus=8, product="NVIDIA-H100-80GB-HBM3", ready="True", cordoned=False,
             mig=None):
    alloc = {"cpu": "224", "memory": "2000Gi", "nvidia.com/gpu": str(gpus)}
    for profile, count in (mig or {}).items():
        alloc[f"nvidia.com/mig-{profile}"] = str(count)
    return {"metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
            "spec": {"unschedulable": True} if cordoned else {},
            "status": {"allocatable": alloc,
                       "conditions": [{"type": "Ready", "status": ready,
                                       "reason": "NodeStatusUnknown" if ready != "True" else "",
                                       "message": "Kubelet stopped posting node status."
                                       if ready != "True" else ""}]}}


def test_gpu_nodes_become_cloud_nodes_with_type_count_and_state():
    nodes = {"gpu-0": k8s_node("gpu-0"), "gpu-1": k8s_node("gpu-1", cordoned=True),
             "gpu-2": k8s_node("gpu-2", ready="Unknown"),
             "cpu-0": k8s_node("cpu-0", gpus=0)}
    want = desired_mirror(nodes, CONFIG)
    assert sorted(want) == ["k8s-gpu-0", "k8s-gpu-1", "k8s-gpu-2"]
    g0 = want["k8s-gpu-0"]
    assert (g0.gres, g0.cpus, g0.memory_mb, g0.state) == ("gpu:h100:8", 224, 2048000, "idle")
    assert g0.features == ("k8s-node", "h100", "hopper")
    assert want["k8s-gpu-1"].state == "drain"
    assert want["k8s-gpu-1"].reason == "k8s: cordoned (kubectl cordon / drain)"
    assert want["k8s-gpu-2"].state == "down"
    assert want["k8s-gpu-2"].reason == ("k8s: NotReady: NodeStatusUnknown Kubelet stopped "
                                        "posting node status.")


def test_mig_resources_are_gres_types():
    node = k8s_node("a-0", gpus=0, product="NVIDIA-A100-SXM4-80GB", mig={"1g.10gb": 56})
    want = desired_mirror({"a-0": node}, CONFIG)["k8s-a-0"]
    assert want.gres == "gpu:1g.10gb:56"
    assert "a100" in want.features


def _slurm(name, state="IDLE+CLOUD+POWERED_DOWN", gres="gpu:h100:8", reason="",
           features=("k8s-node", "h100", "hopper")):
    return SlurmNode(name=name, state=state, gres=gres, features=features, cpus=224,
                     real_memory_mb=2048000, reason=reason)


def test_plan_creates_updates_states_and_deletes_only_mirrored_nodes():
    nodes = {"gpu-0": k8s_node("gpu-0"), "gpu-1": k8s_node("gpu-1", cordoned=True),
             "gpu-2": k8s_node("gpu-2", gpus=4)}
    current = {
        "k8s-gpu-1": _slurm("k8s-gpu-1"),                 # now cordoned -> drain
        "k8s-gpu-2": _slurm("k8s-gpu-2"),                 # 8 -> 4 GPUs -> recreate
        "k8s-gone": _slurm("k8s-gone"),                   # no longer in Kubernetes
        "node1": _slurm("node1", features=()),            # not ours
    }
    actions = plan_mirror(desired_mirror(nodes, CONFIG), current)
    assert [(a.verb, a.node) for a in actions] == [
        ("create", "k8s-gpu-0"), ("state", "k8s-gpu-1"), ("recreate", "k8s-gpu-2"),
        ("delete", "k8s-gone")]


def test_plan_is_quiet_when_in_sync():
    nodes = {"gpu-1": k8s_node("gpu-1", cordoned=True)}
    current = {"k8s-gpu-1": _slurm("k8s-gpu-1", state="IDLE+CLOUD+DRAIN+POWERED_DOWN",
                                   reason="k8s: cordoned (kubectl cordon / drain)")}
    assert plan_mirror(desired_mirror(nodes, CONFIG), current) == []
    uncordoned = plan_mirror(desired_mirror({"gpu-1": k8s_node("gpu-1")}, CONFIG), current)
    assert [(a.verb, a.spec.state) for a in uncordoned if isinstance(a, MirrorAction)] == \
        [("state", "idle")]
