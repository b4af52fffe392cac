"""Helpers for tests that run a real local Slurm cluster (slurmctld + slurmd in netns).

``slurm_cluster(name, **kw)`` builds a ``LocalSlurmCluster`` under a fresh
world-traversable directory in /tmp (munged and non-root job owners must reach it) on a
free subnet. Tests skip, with the reason printed, only when not root.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from slurm_k8s_devcluster.slurm import LocalSlurmCluster

ROOT_REASON = "real Slurm tests need root (network namespaces, bridge, mknod, munged)"


def require_root() -> None:
    if os.geteuid() != 0:
        print(f"SKIP: {ROOT_REASON}")
        pytest.skip(ROOT_REASON)


def make_base_dir(prefix: str) -> Path:
    """A fresh 0755 directory under /tmp (pytest's tmp_path is 0700: munged can't reach it)."""
    path = Path(tempfile.mkdtemp(prefix=f"skb-{prefix}-", dir="/tmp"))
    os.chmod(path, 0o755)
    return path


def slurm_cluster(name: str = "test", **kwargs) -> LocalSlurmCluster:
    """A not-yet-started cluster; use as ``with slurm_cluster(...) as c:``."""
    require_root()
    return LocalSlurmCluster(make_base_dir(name), cluster_name=name, **kwargs)


def remove_base_dir(cluster: LocalSlurmCluster) -> None:
    """Delete the cluster's directory unless SKB_KEEP_CLUSTER_DIR is set (debugging)."""
    if not os.environ.get("SKB_KEEP_CLUSTER_DIR"):
        shutil.rmtree(cluster.base_dir, ignore_errors=True)


@pytest.fixture
def make_slurm_cluster():
    """Factory fixture: ``make_slurm_cluster(name, **kw)`` -> not-yet-started cluster.

    Every cluster it made is stopped (idempotent) and its directory removed at teardown.
    """
    made: list[LocalSlurmCluster] = []

    def factory(name: str = "test", **kwargs) -> LocalSlurmCluster:
        cluster = slurm_cluster(name, **kwargs)
        made.append(cluster)
        return cluster

    yield factory
    for cluster in made:
        cluster.stop()
        remove_base_dir(cluster)


@pytest.fixture(scope="module")
def harness_cluster():
    """A plain 2-node cluster (4 CPUs, 4000 MB, gpu:4 per node), shared by a module."""
    cluster = slurm_cluster("harness")
    with cluster:
        yield cluster
    remove_base_dir(cluster)
