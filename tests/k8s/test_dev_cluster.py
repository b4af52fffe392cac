"""``slurm-k8s-bridge dev-cluster up|status|down`` as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from slurm_k8s_devcluster.dev import DevCluster

from ..kube_env import require_root

pytestmark = pytest.mark.k8s


def cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slurm_k8s_bridge.cli", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def sourced_env(env_sh: Path) -> dict[str, str]:
    out = subprocess.run(["bash", "-c", f"source {env_sh} && env -0"], capture_output=True,
                         check=True, timeout=30).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def test_up_status_up_again_and_down(k8s_bin_dir):
    require_root("dev-cluster needs root")
    base = Path(tempfile.mkdtemp(prefix="skb-dev-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    try:
        up = cli("dev-cluster", "up", "--dir", str(base), "--kwok-nodes", "2")
        assert up.returncode == 0, up.stdout + up.stderr
        status = cli("dev-cluster", "status", "--dir", str(base))
        assert status.returncode == 0, status.stdout
        lines = status.stdout.splitlines()
        names = {line.split()[0] for line in lines}
        assert {"munged", "slurmctld", "slurmd:node1", "slurmd:node2", "etcd",
                "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
                "bridge-daemon"} <= names
        assert all(" running" in line for line in lines)
        before = DevCluster(base).components()

        # the shell environment reaches both worlds
        env = sourced_env(base / "env.sh")
        sinfo = subprocess.run(["sinfo", "-h", "-N", "-p", "gpu", "-o", "%N %t"], env=env,
                               capture_output=True, text=True, timeout=30)
        deadline = time.monotonic() + 30
        while "k8s-gpu-1" not in sinfo.stdout and time.monotonic() < deadline:
            time.sleep(0.5)
            sinfo = subprocess.run(["sinfo", "-h", "-N", "-p", "gpu", "-o", "%N %t"], env=env,
                                   capture_output=True, text=True, timeout=30)
        assert "k8s-gpu-0 idle~" in sinfo.stdout and "k8s-gpu-1 idle~" in sinfo.stdout
        nodes = subprocess.run(["kubectl", "get", "nodes", "-o", "name"], env=env,
                               capture_output=True, text=True, timeout=30)
        assert nodes.returncode == 0, nodes.stderr
        assert nodes.stdout.split() == ["node/gpu-0", "node/gpu-1"]

        # up again: nothing restarted
        again = cli("dev-cluster", "up", "--dir", str(base), "--kwok-nodes", "2")
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout
        assert DevCluster(base).components() == before

        # one component gone: up starts only that one
        daemon_pid = before["bridge-daemon"][0]
        os.kill(daemon_pid, 9)
        time.sleep(0.5)
        assert cli("dev-cluster", "status", "--dir", str(base)).returncode == 1
        again = cli("dev-cluster", "up", "--dir", str(base), "--kwok-nodes", "2")
        assert again.returncode == 0, again.stderr
        after = DevCluster(base).components()
        assert after["bridge-daemon"][0] != daemon_pid
        assert {k: v for k, v in after.items() if k != "bridge-daemon"} == \
            {k: v for k, v in before.items() if k != "bridge-daemon"}
    finally:
        down = cli("dev-cluster", "down", "--dir", str(base))
        comps = DevCluster(base).components()
        leftover = subprocess.run(["pgrep", "-f", str(base)], capture_output=True, text=True)
        shutil.rmtree(base, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert not any(alive for _, alive in comps.values())
    assert leftover.stdout.strip() == ""
