"""Mirrored Kubernetes GPU nodes in a real slurmctld: what sinfo shows."""

from __future__ import annotations

import pytest

from slurm_k8s_bridge.core.config import parse_config
from slurm_k8s_bridge.daemon.mirror import apply_mirror, desired_mirror, plan_mirror
from slurm_k8s_bridge.slurm.client import SlurmClient

from ..unit.test_mirror import k8s_node
from .bridge_fixtures import bridge_config_data, make_bridge_cluster
from .conftest import make_base_dir, remove_base_dir, require_root

pytestmark = pytest.mark.slurm


def sinfo(cluster) -> dict[str, tuple[str, ...]]:
    out = cluster.run(["sinfo", "-h", "-N", "-p", "gpu", "-o", "%N|%t|%G|%E"],
                      check=True).stdout
    return {row.split("|")[0]: tuple(row.split("|")[1:]) for row in out.splitlines()}


def test_kubernetes_gpu_nodes_show_in_sinfo_with_their_state():
    require_root()
    base = make_base_dir("mirror")
    bridge = make_bridge_cluster(base, "mirror")
    cluster = bridge.cluster
    config = parse_config(bridge_config_data())
    try:
        cluster.start()
        slurm = SlurmClient(cluster.env())

        def sync(nodes):
            apply_mirror(slurm, plan_mirror(desired_mirror(nodes, config), slurm.list_nodes()))
            # a second pass has nothing left to do
            assert plan_mirror(desired_mirror(nodes, config), slurm.list_nodes()) == []
            return sinfo(cluster)

        nodes = {f"gpu-{i}": k8s_node(f"gpu-{i}") for i in range(3)}
        shown = sync(nodes)
        for i in range(3):
            assert shown[f"k8s-gpu-{i}"][:2] == ("idle~", "gpu:h100:8")
        nodes["gpu-1"] = k8s_node("gpu-1", cordoned=True)
        nodes["gpu-2"] = k8s_node("gpu-2", ready="Unknown")
        shown = sync(nodes)
        assert shown["k8s-gpu-1"][0] == "drain~"
        assert shown["k8s-gpu-1"][2] == "k8s: cordoned (kubectl cordon / drain)"
        assert shown["k8s-gpu-2"][0] == "down~"
        assert shown["k8s-gpu-2"][2].startswith("k8s: NotReady: NodeStatusUnknown")
        nodes["gpu-1"] = k8s_node("gpu-1")            # uncordoned
        nodes["gpu-0"] = k8s_node("gpu-0", gpus=4)    # GPU count changed
        del nodes["gpu-2"]                            # removed from Kubernetes
        shown = sync(nodes)
        assert shown["k8s-gpu-1"][0] == "idle~"
        assert shown["k8s-gpu-0"][1] == "gpu:h100:4"
        assert "k8s-gpu-2" not in shown
    finally:
        cluster.stop()
        remove_base_dir(cluster)
