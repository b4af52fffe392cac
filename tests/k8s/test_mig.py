"""MIG end to end on KWOK: GPU-feature-discovery labels, mixed-strategy MIG resources, a
``--gres=gpu:1g.10gb:2`` job placed on a MIG node, its Slurm node's GRES, sinfo's mirror.

One module-scoped environment (tests/k8s/conftest.py's fixtures): a control plane with one
KWOK node of the example's a100 shape partitioned by MIG (mixed strategy: 56
``nvidia.com/mig-1g.10gb``, 16 ``3g.40gb``, 8 ``7g.80gb``, no whole ``nvidia.com/gpu``) and
one whole-GPU h100 node; the example configuration; the daemon; a real dynamic slurmd per pod.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from slurm_k8s_devcluster.bridge import BridgeCluster, load_example_config
from slurm_k8s_devcluster.k8s import LocalKubeCluster
from slurm_k8s_devcluster.podsim import PodStandIns

from ..kube_env import DaemonProcess, DaemonRbac, poll
from .conftest import H100, JOBS_NS

pytestmark = pytest.mark.k8s

USER = "bridgeuser"
A100 = "NVIDIA-A100-SXM4-80GB"
MIG = {"1g.10gb": 56, "3g.40gb": 16, "7g.80gb": 8}
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


@pytest.fixture(scope="module")
def kube_options() -> dict[str, Any]:
    return {"kwok_nodes": 1, "node_shape": H100}


@pytest.fixture(scope="module")
def mig_node(kube_cluster: LocalKubeCluster) -> str:
    [name] = kube_cluster.add_gpu_nodes(1, prefix="mig", gpus=0, gpu_product=A100, cpus=128,
                                        memory="1000Gi", mig=MIG)
    return name


@pytest.fixture(scope="module")
def bridge_options() -> dict[str, Any]:
    data = copy.deepcopy(load_example_config())
    data["native_gpu_usage"] = False
    return {"name": "mig", "config_data": data}


@pytest.fixture(scope="module")
def daemon_rbac(bridge: BridgeCluster) -> DaemonRbac:
    return DaemonRbac.of_config(bridge.config_path)


def _wait(check: Any, timeout: float, what: str, daemon: DaemonProcess) -> Any:
    def alive() -> None:
        if daemon.exited() is not None:
            pytest.fail(f"the daemon exited rc={daemon.exited()}\n{daemon.tail(30)}")
    return poll(check, timeout=timeout, what=what, interval=0.25, alive=alive,
                diagnostics=lambda: daemon.tail(30),
                transient=(ApiException, subprocess.SubprocessError, OSError, IndexError))


def _state(bridge: BridgeCluster, job: int) -> str:
    out = bridge.cluster.run(["squeue", "-h", "-t", "all", "-j", str(job), "-o", "%T"]).stdout
    return out.strip().splitlines()[0] if out.strip() else ""


def _submit(bridge: BridgeCluster, *args: str) -> subprocess.CompletedProcess:
    return bridge.cluster.sbatch(["--parsable", *args], user=USER)


@pytest.fixture(scope="module")
def ready(mig_node: str, bridge: BridgeCluster, standins: PodStandIns,
          bridge_daemon: DaemonProcess) -> Iterator[str]:
    yield mig_node


def test_a_mig_job_lands_on_the_mig_node_and_its_slurm_node_has_the_mig_gres(
        ready: str, bridge: BridgeCluster, kube_admin: Any, bridge_daemon: DaemonProcess) -> None:
    res = _submit(bridge, "-N1", "--gres=gpu:1g.10gb:2", "-c1", "--mem=100", "--wrap",
                  "scontrol show node $SLURMD_NODENAME | grep -o 'Gres=[^ ]*'")
    assert res.returncode == 0, res.stderr
    job = int(res.stdout.strip().split(";")[0])
    core = client.CoreV1Api(kube_admin)

    def pod() -> Any:
        pods = core.list_namespaced_pod(JOBS_NS, label_selector=f"job-name=slurm-{job}").items
        return pods[0] if pods and pods[0].spec.node_name else None
    placed = _wait(pod, 60, f"the pod of job {job} placed", bridge_daemon)
    assert placed.spec.node_name == ready
    limits = placed.spec.containers[0].resources.limits
    assert limits.get("nvidia.com/mig-1g.10gb") == "2" and "nvidia.com/gpu" not in limits
    _wait(lambda: _state(bridge, job) in FINISHED, 120, f"job {job} finished", bridge_daemon)
    assert _state(bridge, job) == "COMPLETED"
    output = bridge.cluster.job_output(job)
    assert "Gres=gpu:1g.10gb:2" in output, output
    print(f"\nMIG job {job}: pod on {placed.spec.node_name}, limits {limits}, node {output.strip()}")


def test_sinfo_mirrors_the_mig_node_with_its_mig_gres(ready: str, bridge: BridgeCluster,
                                                     bridge_daemon: DaemonProcess) -> None:
    def gres() -> str:
        out = bridge.cluster.run(["sinfo", "-h", "-N", "-n", f"k8s-{ready}", "-o", "%G"]).stdout
        return out.strip()
    shown = _wait(lambda: "1g.10gb" in (g := gres()) and g, 60, f"sinfo's GRES for k8s-{ready}",
                  bridge_daemon)
    assert "gpu:1g.10gb:56" in shown and "gpu:3g.40gb:16" in shown, shown


def test_a_mig_profile_no_node_serves_is_refused_at_sbatch_naming_it(bridge: BridgeCluster) -> None:
    res = _submit(bridge, "-N1", "--gres=gpu:2g.20gb:1", "--wrap", "true")
    assert res.returncode != 0
    first = res.stderr.strip().splitlines()[0]
    assert first.startswith("sbatch: error: k8s-bridge: --gres=gpu:2g.20gb:1 asks for GPU type "
                            "2g.20gb"), first
