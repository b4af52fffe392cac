"""The e2e tier's environment: ``dev_cluster``, one ``DevCluster(real_node=True)`` per module.

slurmctld with both plugins on this machine, the control plane, a real kubelet node
(containerd, runc, a CNI bridge) that advertises 8 ``nvidia.com/gpu`` without GPUs, the
worker image imported into its containerd, the daemon's namespaces, RBAC and
ServiceAccount kubeconfig, and the bridge daemon -- all brought up by
``DevCluster.up()`` (``slurm-k8s-bridge dev-cluster up --real-node``) and taken down by
``down()``; a module's ``dev_options`` fixture adds ``DevCluster`` arguments (``kueue``). Skipped, with the reason printed, without root, without the control plane's
binaries (``k8s_bin_dir``, shared with tests/k8s), when the worker image cannot be built
(``bash scripts/build-images.sh --suite bookworm --only worker``) or the kubelet cannot
run here. Set SKB_KEEP_CLUSTER_DIR=1 to keep the directory.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from slurm_k8s_devcluster.dev import WORKER_IMAGE, DevCluster

from ..kube_env import (
    REPO,
    k8s_bin_dir,
    remove_scratch_dir,
    require_root,
    scratch_dir,
    skip,
)

__all__ = ["k8s_bin_dir"]  # the session fixture, shared with tests/k8s

SUBNET = 91                      # the dev cluster's own is 90


def _worker_image() -> None:
    """The worker image in podman's store, built by the project's script when missing."""
    if shutil.which("podman") is None:
        skip("podman is not installed (bash scripts/build-images.sh --install-deps)")
    if subprocess.run(["podman", "image", "exists", WORKER_IMAGE], check=False).returncode == 0:
        return
    res = subprocess.run(["bash", str(REPO / "scripts" / "build-images.sh"), "--suite",
                          "bookworm", "--only", "worker"], capture_output=True, text=True,
                         timeout=3600, check=False)
    if res.returncode != 0:
        skip(f"the worker image could not be built: {res.stdout[-1500:]}{res.stderr[-1500:]}")


@pytest.fixture(scope="module")
def dev_options() -> dict[str, Any]:
    """More ``DevCluster`` keyword arguments for the module (``{"kueue": True}``)."""
    return {}


@pytest.fixture(scope="module")
def dev_cluster(request: pytest.FixtureRequest, dev_options: dict[str, Any]) -> Iterator[DevCluster]:
    require_root("the e2e tier needs root (Slurm daemons, a kubelet)")
    request.getfixturevalue("k8s_bin_dir")          # after the root check, as the tier always did
    _worker_image()
    from slurm_k8s_devcluster.kubelet import RealNodeUnavailable
    base = scratch_dir("e2e", mode=0o755)
    if dev_options.get("kueue"):
        from slurm_k8s_devcluster.kueue import KueueUnavailable, ensure_kueue
        try:
            ensure_kueue()
        except KueueUnavailable as exc:
            skip(f"Kueue cannot be built here: {exc}")
    dev = DevCluster(base, kwok_nodes=0, real_node=True, subnet=SUBNET, **dev_options)
    try:
        started = time.monotonic()
        try:
            dev.up()
        except RealNodeUnavailable as exc:
            skip(f"a real kubelet cannot run here: {exc}")
        print(f"\ndev-cluster up --real-node: {time.monotonic() - started:.1f}s")
        yield dev
    finally:
        dev.down()
        remove_scratch_dir(base)
