"""GPUs held by Kubernetes-native pods, seen in Slurm: real slurmctld, real control plane.

One module-scoped environment (the shared fixtures of tests/k8s/conftest.py), as an
administrator sets it up with ``native_gpu_usage: true`` (the example configuration):

* ``make_bridge_cluster`` (example configuration): slurmctld with the plugins, partition gpu
  holding the ``k8snodes`` NodeSet of mirrored nodes;
* ``LocalKubeCluster`` with 2 KWOK nodes of the example's h100 shape (8 GPUs each);
* ``required_rbac(..., native_gpu_usage=True)`` (deploy/rbac.yaml + deploy/rbac-native-gpu-usage.yaml)
  and a kubeconfig of the daemon's ServiceAccount;
* the daemon (``python -m slurm_k8s_bridge.cli run``) as a subprocess with that kubeconfig.

Native pods (no bridge labels) are created as admin in their own namespace; what Slurm
shows is read with ``scontrol show node`` and ``sinfo`` (as an ordinary user too).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from slurm_k8s_bridge.daemon.mirror import NATIVE_USAGE_FORBIDDEN
from slurm_k8s_bridge.kube.rbac import (
    POD_READER_CLUSTER_ROLE,
    native_gpu_usage_rbac,
)
from slurm_k8s_bridge.slurm.client import SlurmClient
from slurm_k8s_devcluster.bridge import BridgeCluster
from slurm_k8s_devcluster.k8s import LocalKubeCluster
from slurm_k8s_devcluster.slurm import _tail

from ..kube_env import DaemonProcess, DaemonRbac, diagnostics_on_failure, poll
from .conftest import H100

pytestmark = pytest.mark.k8s

NATIVE_NS = "infer"
OTHER_NS = "etl"
USER = "bridgeuser"
SINFO_FORMAT = "NodeList:20 ,StateLong:8 ,Gres:24 ,Comment:0"
KWOK_COMPLETE = "pod-complete.stage.kwok.x-k8s.io/delay"
T = TypeVar("T")


@dataclass
class Env:
    bridge: BridgeCluster
    kube: LocalKubeCluster
    admin: Any
    sa: Any                        # ApiClient as the daemon's ServiceAccount
    daemon: DaemonProcess          # the daemon, as its ServiceAccount (tests/k8s/conftest.py)
    slurm: SlurmClient

    @property
    def daemon_log(self) -> Path:
        return self.daemon.log

    def start_daemon(self) -> None:
        starts = self.daemon.starts()
        self.daemon.start(wait=False)
        self.wait(lambda: self.daemon.starts() > starts, 60, "the daemon to start")

    def stop_daemon(self) -> None:
        self.daemon.stop(signal.SIGTERM)

    def comment(self, node: str) -> str | None:
        found = self.slurm.node(node)
        return None if found is None else found.comment

    def diagnostics(self) -> str:
        return "\n".join(["--- daemon log (tail) ---", _tail(self.daemon_log, 40),
                          "--- sinfo ---", self.sinfo()])

    def sinfo(self, user: str | None = None) -> str:
        res = self.bridge.cluster.run(["sinfo", "-N", "-p", "gpu", "-O", SINFO_FORMAT], user=user)
        return res.stdout + res.stderr

    def wait(self, check: Callable[[], T], timeout: float, what: str) -> T:
        return poll(check, timeout=timeout, what=what, interval=0.2, alive=self.alive,
                    diagnostics=self.diagnostics,
                    transient=(ApiException, subprocess.SubprocessError, OSError))

    def alive(self) -> None:
        if self.daemon.exited() is not None:
            pytest.fail(f"the daemon exited rc={self.daemon.exited()}\n{self.diagnostics()}")

    def create_native_pod(self, name: str, node: str, containers: list[int], init: tuple[int, ...] | list[int] = (),
                          namespace: str = NATIVE_NS, annotations: dict[str, str] | None = None) -> None:
        def spec(prefix: str, gpus: int, i: int) -> dict[str, Any]:
            return {"name": f"{prefix}{i}", "image": "registry.local/serving:1",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": {"app": name},
                             "annotations": dict(annotations or {})},
                "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                         "containers": [spec("c", g, i) for i, g in enumerate(containers)],
                         "initContainers": [spec("init", g, i) for i, g in enumerate(init)]}}
        client.CoreV1Api(self.admin).create_namespaced_pod(namespace, body)

    def delete_pod(self, name: str, namespace: str = NATIVE_NS) -> None:
        try:
            client.CoreV1Api(self.admin).delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise


# -- the environment: the shared fixtures of tests/k8s/conftest.py, shaped for this module ----
@pytest.fixture(scope="module")
def bridge_options() -> dict[str, Any]:
    return {"name": "native"}


@pytest.fixture(scope="module")
def kube_options() -> dict[str, Any]:
    return {"kwok_nodes": 2, "node_shape": H100}


@pytest.fixture(scope="module")
def daemon_rbac(bridge: BridgeCluster) -> DaemonRbac:
    rbac = DaemonRbac.of_config(bridge.config_path, other_namespaces=(NATIVE_NS, OTHER_NS))
    assert rbac.native_gpu_usage, "the example configuration opts in"
    return rbac


@pytest.fixture(scope="module")
def env(bridge: BridgeCluster, kube_cluster: LocalKubeCluster, kube_admin: Any, sa_client: Any,
        bridge_daemon: DaemonProcess) -> Env:
    e = Env(bridge=bridge, kube=kube_cluster, admin=kube_admin, sa=sa_client, daemon=bridge_daemon,
            slurm=SlurmClient(bridge.cluster.env(), timeout=15))
    e.wait(lambda: e.comment("k8s-gpu-0") == "" and e.comment("k8s-gpu-1") == "", 30,
           "both KWOK nodes mirrored, with no comment")
    return e


@pytest.fixture(autouse=True)
def _log_tail_on_failure(request: pytest.FixtureRequest, env: Env) -> Iterator[None]:
    yield from diagnostics_on_failure(request, env.diagnostics)


# -- tests ------------------------------------------------------------------------------------

def test_a_native_pod_shows_on_its_node_then_clears(env: Env) -> None:
    # 2 + 1 GPUs in its containers, 3 in an init container: it holds 3, as the scheduler counts
    want = "k8s: 3/8 GPUs held by Kubernetes pods: infer/llama-0 (3)"
    t0 = time.monotonic()
    env.create_native_pod("llama-0", "gpu-0", containers=[2, 1], init=[3])
    env.wait(lambda: env.comment("k8s-gpu-0") == want, 20, f"k8s-gpu-0's comment {want!r}")
    shown = time.monotonic() - t0
    assert env.comment("k8s-gpu-1") == ""
    text = env.bridge.cluster.run(["scontrol", "show", "node", "k8s-gpu-0"]).stdout
    assert f"Comment={want}" in text and "POWERED_DOWN" in text
    # an ordinary user's sinfo shows it, on a node that stays powered down (idle~)
    rows = {line.split()[0]: line for line in env.sinfo(user=USER).splitlines()[1:] if line.strip()}
    assert rows["k8s-gpu-0"].split()[1:3] == ["idle~", "gpu:h100:8"], rows["k8s-gpu-0"]
    assert rows["k8s-gpu-0"].endswith(want)
    assert rows["k8s-gpu-1"].split()[-1] == "(null)"
    print(f"\nnative pod created -> Slurm comment {shown:.1f}s\n{env.sinfo(user=USER)}")

    # a second pod in another namespace on the same node: listed by size, counted
    env.create_native_pod("x", "gpu-0", containers=[1], namespace=OTHER_NS)
    both = "k8s: 4/8 GPUs held by Kubernetes pods: infer/llama-0 (3), etl/x (1)"
    env.wait(lambda: env.comment("k8s-gpu-0") == both, 20, f"the comment {both!r}")

    t0 = time.monotonic()
    env.delete_pod("llama-0")
    env.delete_pod("x", OTHER_NS)
    env.wait(lambda: env.comment("k8s-gpu-0") == "", 20, "the comment cleared")
    print(f"native pods deleted -> comment cleared {time.monotonic() - t0:.1f}s")


def test_a_finished_pod_holds_nothing(env: Env) -> None:
    env.create_native_pod("batch-1", "gpu-1", containers=[2], namespace=OTHER_NS,
                          annotations={KWOK_COMPLETE: "4s"})
    env.wait(lambda: env.comment("k8s-gpu-1") == "k8s: 2/8 GPUs held by Kubernetes pods: etl/batch-1 (2)",
             20, "the running pod in the comment")
    # KWOK completes it (phase Succeeded): the pod is still there, its GPUs are free
    env.wait(lambda: client.CoreV1Api(env.admin).read_namespaced_pod("batch-1", OTHER_NS).status.phase
             == "Succeeded", 30, "the pod Succeeded")
    env.wait(lambda: env.comment("k8s-gpu-1") == "", 20, "the comment cleared")
    env.delete_pod("batch-1", OTHER_NS)


def test_the_bridges_own_pods_are_not_listed(env: Env) -> None:
    env.create_native_pod("llama-1", "gpu-0", containers=[2])
    native = "k8s: 2/8 GPUs held by Kubernetes pods: infer/llama-1 (2)"
    env.wait(lambda: env.comment("k8s-gpu-0") == native, 20, "the native pod in the comment")
    res = env.bridge.cluster.sbatch(["--parsable", "-N1", "--gres=gpu:h100:8", "-c1", "--mem=100",
                                     "-o", "/dev/null", "--wrap", "sleep 600"], user=USER)
    assert res.returncode == 0, res.stderr
    job = int(res.stdout.strip().split(";")[0])
    core = client.CoreV1Api(env.admin)
    selector = f"slurm-k8s-bridge.io/job-id={job}"
    try:
        # its 8-GPU pod fits only on gpu-1 and runs there (KWOK)
        pod = env.wait(lambda: [p for p in core.list_namespaced_pod("slurm-jobs", label_selector=selector).items
                                if p.status.phase == "Running"], 60, "the bridge pod Running")[0]
        assert pod.spec.node_name == "gpu-1"
        time.sleep(3)                         # three daemon rounds (--poll-interval 1)
        assert env.comment("k8s-gpu-1") == "", env.diagnostics()
        assert env.comment("k8s-gpu-0") == native
    finally:
        env.bridge.cluster.run(["scancel", str(job)])
        env.delete_pod("llama-1")
    env.wait(lambda: not core.list_namespaced_pod("slurm-jobs", label_selector=selector).items, 60,
             "the bridge pod gone after scancel")
    env.wait(lambda: env.comment("k8s-gpu-0") == "", 20, "the comment cleared")


def test_the_daemon_reads_pods_everywhere_and_touches_nothing(env: Env) -> None:
    env.create_native_pod("guarded", "gpu-0", containers=[1])
    try:
        core = client.CoreV1Api(env.sa)
        listed = core.list_pod_for_all_namespaces(field_selector="status.phase!=Succeeded").items
        assert (NATIVE_NS, "guarded") in {(p.metadata.namespace, p.metadata.name) for p in listed}
        refused: list[tuple[str, Callable[[], Any]]] = [
            ("get a pod", lambda: core.read_namespaced_pod("guarded", NATIVE_NS)),
            ("delete a pod", lambda: core.delete_namespaced_pod("guarded", NATIVE_NS)),
            ("delete pods in its job namespace", lambda: core.delete_collection_namespaced_pod("slurm-jobs")),
            ("patch a pod", lambda: core.patch_namespaced_pod("guarded", NATIVE_NS,
                                                              {"metadata": {"labels": {"x": "y"}}})),
            ("create a pod", lambda: core.create_namespaced_pod(NATIVE_NS, {
                "metadata": {"name": "intruder"}, "spec": {"containers": [{"name": "c", "image": "x"}]}})),
            ("evict a pod", lambda: core.create_namespaced_pod_eviction("guarded", NATIVE_NS, {
                "apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": "guarded", "namespace": NATIVE_NS}})),
            ("list secrets in all namespaces", lambda: core.list_secret_for_all_namespaces()),
            ("list secrets of a native namespace", lambda: core.list_namespaced_secret(NATIVE_NS)),
            ("list secrets of its job namespace", lambda: core.list_namespaced_secret("slurm-jobs")),
            ("list configmaps in all namespaces", lambda: core.list_config_map_for_all_namespaces()),
        ]
        for what, call in refused:
            with pytest.raises(ApiException) as info:
                call()
            assert info.value.status == 403, f"{what}: {info.value.status}"
        authz = client.AuthorizationV1Api(env.sa)
        for verb, sub in (("create", "exec"), ("get", "log"), ("create", "attach")):
            review = authz.create_self_subject_access_review({"spec": {"resourceAttributes": {
                "namespace": NATIVE_NS, "verb": verb, "resource": "pods", "subresource": sub}}})
            assert review.status.allowed is False, f"pods/{sub} {verb}"
        assert client.CoreV1Api(env.admin).read_namespaced_pod("guarded", NATIVE_NS).metadata.deletion_timestamp is None
    finally:
        env.delete_pod("guarded")


def test_without_the_pod_reader_slurm_says_unknown_until_it_is_applied(env: Env) -> None:
    # last: it removes and restores the daemon's pod reader (deploy/rbac-native-gpu-usage.yaml)
    env.create_native_pod("llama-2", "gpu-0", containers=[1])
    rbac = client.RbacAuthorizationV1Api(env.admin)
    env.stop_daemon()
    rbac.delete_cluster_role_binding(POD_READER_CLUSTER_ROLE)
    try:
        env.start_daemon()                   # starts anyway: the rest of the bridge works
        env.wait(lambda: env.comment("k8s-gpu-0") == NATIVE_USAGE_FORBIDDEN
                 and env.comment("k8s-gpu-1") == NATIVE_USAGE_FORBIDDEN, 30,
                 "the comments saying the usage is unknown")
        log = env.daemon_log.read_text()
        assert "pods in all namespaces" in log and "403" in log
    finally:
        env.kube.apply_as_admin(native_gpu_usage_rbac())
    # the watch retries with backoff: once the binding is back, no restart is needed
    t0 = time.monotonic()
    env.wait(lambda: env.comment("k8s-gpu-0") == "k8s: 1/8 GPUs held by Kubernetes pods: infer/llama-2 (1)"
             and env.comment("k8s-gpu-1") == "", 60, "the usage known again")
    print(f"\npod reader applied -> usage shown {time.monotonic() - t0:.1f}s")
    env.delete_pod("llama-2")
    env.wait(lambda: env.comment("k8s-gpu-0") == "", 20, "the comment cleared")
