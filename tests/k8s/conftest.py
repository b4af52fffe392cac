"""Fixtures for tests that run a real local Kubernetes control plane + KWOK GPU nodes.

``k8s_bin_dir`` (session) builds or finds the binaries via ``ensure_k8s_binaries()``
(instant when cached, ~7 min cold); when they cannot be built every k8s test is skipped
with the reason printed. ``kube_cluster`` (module) is a started ``LocalKubeCluster`` with
three 8-GPU KWOK nodes; ``make_kube_cluster`` makes extra, not-yet-started clusters that
are stopped and removed at teardown. Set SKB_KEEP_CLUSTER_DIR=1 to keep directories/logs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from slurm_k8s_devcluster.k8s import KubeClusterError, LocalKubeCluster, ensure_k8s_binaries

GPU_NODES = 3


def _base_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"skb-k8s-{prefix}-", dir="/tmp"))


def _remove(cluster: LocalKubeCluster) -> None:
    if os.environ.get("SKB_KEEP_CLUSTER_DIR"):
        print(f"kept {cluster.base_dir}")
    else:
        shutil.rmtree(cluster.base_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def k8s_bin_dir() -> Path:
    try:
        return ensure_k8s_binaries()
    except (KubeClusterError, OSError) as exc:
        reason = f"Kubernetes binaries unavailable: {exc}"
        print(f"SKIP: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def kube_cluster(k8s_bin_dir):
    cluster = LocalKubeCluster(_base_dir("cp"), bin_dir=k8s_bin_dir, kwok_nodes=GPU_NODES)
    try:
        cluster.start(timeout=120)
        print(f"\nLocalKubeCluster.start() with {GPU_NODES} KWOK nodes: "
              f"{cluster.start_seconds:.1f}s ({cluster.server})")
        yield cluster
    finally:
        cluster.stop()
        _remove(cluster)


@pytest.fixture
def make_kube_cluster(k8s_bin_dir):
    made: list[LocalKubeCluster] = []

    def factory(name: str = "extra", **kwargs) -> LocalKubeCluster:
        cluster = LocalKubeCluster(_base_dir(name), bin_dir=k8s_bin_dir, **kwargs)
        made.append(cluster)
        return cluster

    yield factory
    for cluster in made:
        cluster.stop()
        _remove(cluster)


@pytest.fixture
def admin(kube_cluster):
    with kube_cluster.admin_client() as api_client:
        yield api_client
