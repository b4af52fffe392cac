"""The k8s tier's environment: one set of fixtures that every module of tests/k8s uses.

Module-scoped, each built once per module and torn down in reverse order:

* ``kube_cluster``: a started ``LocalKubeCluster`` (real etcd, kube-apiserver,
  controller-manager, scheduler, KWOK nodes) shaped by ``kube_options`` (its keyword
  arguments; default three 8-GPU KWOK nodes); ``kube_admin`` an admin ApiClient for it;
* ``sa_kubeconfig``: the daemon's namespaces and RBAC (``daemon_rbac``, default
  ``required_rbac(["slurm-jobs"])``) applied as admin, and a kubeconfig of the daemon's
  ServiceAccount; ``sa_client`` an ApiClient with it;
* ``bridge``: a started bridge Slurm cluster (``make_bridge_cluster`` with
  ``bridge_options``: slurmctld with job_submit/k8s and spank_k8s), user ``bridgeuser``
  created; skipped, with the reason printed, when not root;
* ``bridge_daemon``: the bridge daemon as a subprocess (``DaemonProcess``) with the bridge's
  configuration and the ServiceAccount's kubeconfig, arguments ``daemon_args`` (default
  ``--poll-interval 1``), started and up.

A module shapes its environment by overriding ``kube_options``, ``daemon_rbac``,
``bridge_options`` or ``daemon_args`` with a module-scoped fixture of the same name.

Session: ``k8s_bin_dir`` builds or finds the binaries via ``ensure_k8s_binaries()``
(instant when cached, ~7 min cold); when they cannot be built every k8s test is skipped
with the reason printed. Function scope: ``admin`` (an admin ApiClient per test) and
``make_kube_cluster`` (extra, not-yet-started clusters, stopped and removed at teardown).
Kueue (``kueue``, module scope, asked for by the modules that need it): a real Kueue
controller manager (``LocalKueue``: CRDs, webhooks, its own cert management) on the
module's control plane; ``kueue_bin_dir`` (session) builds it via ``ensure_kueue()``
(instant when cached, ~3 min cold) or skips those tests with the reason printed.
Set SKB_KEEP_CLUSTER_DIR=1 to keep directories and logs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from slurm_k8s_devcluster.bridge import BridgeCluster, make_bridge_cluster
from slurm_k8s_devcluster.k8s import LocalKubeCluster
from slurm_k8s_devcluster.kueue import KueueUnavailable, LocalKueue, ensure_kueue
from slurm_k8s_devcluster.podsim import PodStandIns

from ..kube_env import (
    BRIDGE_USER,
    DaemonProcess,
    DaemonRbac,
    built_or_skip,
    k8s_bin_dir,
    remove_scratch_dir,
    require_root,
    scratch_dir,
)

__all__ = ["k8s_bin_dir"]  # the session fixture, shared with tests/e2e

GPU_NODES = 3
#: the job namespace of the example configuration (slurm_plugins/k8s-bridge.example.yaml)
JOBS_NS = "slurm-jobs"
#: the bridge configuration's cluster_name (the prefix of its objects' names)
CLUSTER_NAME = "slurm"
#: a KWOK node like an 8-GPU H100 server (``LocalKubeCluster.add_kwok_nodes(**H100)``)
H100 = {"gpus": 8, "gpu_product": "NVIDIA-H100-80GB-HBM3", "cpus": 224, "memory": "2000Gi"}
#: the label selector of every object the bridge of CLUSTER_NAME made
SELECTOR = f"app.kubernetes.io/managed-by=slurm-k8s-bridge,slurm-k8s-bridge.io/cluster={CLUSTER_NAME}"
SLURM_ROOT_REASON = "real Slurm needs root (network namespaces, munged)"


def _module_name(request: pytest.FixtureRequest) -> str:
    return request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")


# -- the control plane ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def kube_options() -> dict[str, Any]:
    """``LocalKubeCluster`` keyword arguments of the module's control plane."""
    return {"kwok_nodes": GPU_NODES}


@pytest.fixture(scope="module")
def kube_cluster(request: pytest.FixtureRequest, k8s_bin_dir: Path,
                 kube_options: dict[str, Any]) -> Iterator[LocalKubeCluster]:
    base = scratch_dir(f"k8s-{_module_name(request)}")
    cluster = LocalKubeCluster(base, bin_dir=k8s_bin_dir, **kube_options)
    try:
        cluster.start(timeout=180)
        print(f"\nLocalKubeCluster.start() with {cluster.kwok_nodes} KWOK nodes: "
              f"{cluster.start_seconds:.1f}s ({cluster.server})")
        yield cluster
    finally:
        cluster.stop()
        remove_scratch_dir(base)


@pytest.fixture(scope="module")
def kube_admin(kube_cluster: LocalKubeCluster) -> Iterator[Any]:
    """An admin ApiClient for the whole module."""
    with kube_cluster.admin_client() as api_client:
        yield api_client


@pytest.fixture
def admin(kube_cluster: LocalKubeCluster) -> Iterator[Any]:
    with kube_cluster.admin_client() as api_client:
        yield api_client


@pytest.fixture
def make_kube_cluster(k8s_bin_dir: Path) -> Iterator[Any]:
    made: list[tuple[LocalKubeCluster, Path]] = []

    def factory(name: str = "extra", **kwargs: Any) -> LocalKubeCluster:
        base = scratch_dir(f"k8s-{name}")
        cluster = LocalKubeCluster(base, bin_dir=k8s_bin_dir, **kwargs)
        made.append((cluster, base))
        return cluster

    yield factory
    for cluster, base in made:
        cluster.stop()
        remove_scratch_dir(base)


# -- Kueue ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def kueue_bin_dir() -> Path:
    return built_or_skip("Kueue", ensure_kueue, (KueueUnavailable,))


@pytest.fixture(scope="module")
def kueue(kube_cluster: LocalKubeCluster, kueue_bin_dir: Path) -> Iterator[LocalKueue]:
    """Kueue's manager on the module's control plane, its webhooks answering; stopped (and
    its webhook configurations removed) at the end of the module."""
    running = LocalKueue(kube_cluster, bin_dir=kueue_bin_dir)
    try:
        running.start()
        print(f"\nLocalKueue.start(): {running.start_seconds:.1f}s")
        yield running
    finally:
        running.stop()


# -- the daemon's namespaces, RBAC and ServiceAccount ---------------------------------------
@pytest.fixture(scope="module")
def daemon_rbac() -> DaemonRbac:
    """What the daemon's ServiceAccount is given (``DaemonRbac.of_config`` for a bridge)."""
    return DaemonRbac(job_namespaces=(JOBS_NS,))


@pytest.fixture(scope="module")
def sa_kubeconfig(kube_cluster: LocalKubeCluster, daemon_rbac: DaemonRbac,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    return daemon_rbac.apply(kube_cluster, tmp_path_factory.mktemp("sa") / "bridge.kubeconfig")


@pytest.fixture(scope="module")
def sa_client(kube_cluster: LocalKubeCluster, sa_kubeconfig: Path) -> Iterator[Any]:
    """An ApiClient as the daemon's ServiceAccount."""
    api_client = kube_cluster.client_from_kubeconfig(sa_kubeconfig)
    try:
        yield api_client
    finally:
        api_client.close()


# -- Slurm with the bridge's plugins, and the daemon -------------------------------------------
@pytest.fixture(scope="module")
def bridge_options() -> dict[str, Any]:
    """``make_bridge_cluster`` keyword arguments (``name``: the Slurm cluster's name)."""
    return {}


@pytest.fixture(scope="module")
def bridge(request: pytest.FixtureRequest, k8s_bin_dir: Path,
           bridge_options: dict[str, Any]) -> Iterator[BridgeCluster]:
    require_root(SLURM_ROOT_REASON)
    options = dict(bridge_options)
    name = options.pop("name", "bridge")
    base = scratch_dir(_module_name(request), mode=0o755)
    made = make_bridge_cluster(base, name, **options)
    try:
        made.cluster.start(timeout=120)
        made.cluster.ensure_user(BRIDGE_USER)
        yield made
    finally:
        made.cluster.stop()
        remove_scratch_dir(base)


@pytest.fixture(scope="module")
def daemon_args() -> Sequence[str]:
    """What follows ``run --config CONFIG --kubeconfig KUBECONFIG`` on the daemon's command line."""
    return ("--poll-interval", "1")


@pytest.fixture(scope="module")
def bridge_daemon(bridge: BridgeCluster, sa_kubeconfig: Path,
                  daemon_args: Sequence[str]) -> Iterator[DaemonProcess]:
    base = bridge.cluster.base_dir
    daemon = DaemonProcess(bridge.config_path, sa_kubeconfig, env=bridge.cluster.env(), cwd=base,
                           log=base / "daemon.log", args=daemon_args)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def standins(bridge: BridgeCluster, kube_admin: Any) -> Iterator[PodStandIns]:
    """A real dynamic slurmd for every bridge pod Running on a KWOK node. Ask for it before
    ``bridge_daemon``: the stand-ins then run before the daemon starts and stop after it."""
    running = PodStandIns(kube_admin, bridge.cluster, JOBS_NS, CLUSTER_NAME).start()
    try:
        yield running
    finally:
        running.stop()
