"""GPUs held by Kubernetes-native pods, shown on the mirrored nodes (pure parts): what a pod
holds, which pods count, the Comment text, the mirror plan, the opt-in key, its RBAC, the
watch cache's GpuPod store and the daemon's wiring -- all with literal dicts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from slurm_k8s_bridge.core.config import load_config, parse_config
from slurm_k8s_bridge.daemon.daemon import BridgeDaemon
from slurm_k8s_bridge.core.errors import ConfigError
from slurm_k8s_bridge.kube.cache import NODE, POD, _Reflector
from slurm_k8s_bridge.kube.rbac import (
    POD_READER_CLUSTER_ROLE,
    native_gpu_usage_rbac,
    render_native_gpu_usage_rbac_yaml,
    required_rbac,
)
from slurm_k8s_bridge.kube.access import KubeAccess
from slurm_k8s_bridge.kube.transport import _Reply
from slurm_k8s_bridge.daemon.mirror import (
    COMMENT_LIMIT,
    NATIVE_USAGE_FORBIDDEN,
    MirrorAction,
    apply_mirror,
    desired_mirror,
    plan_mirror,
    usage_comment,
)
from slurm_k8s_bridge.kube.gpu_pods import (
    UNFINISHED_PODS,
    GpuPod,
    gpu_pod,
    native_pods_by_node,
    pod_gpu_requests,
)
from slurm_k8s_bridge.slurm.records import SlurmNode

from .test_mirror import k8s_node
from ..paths import REPO, EXAMPLE_CONFIG as EXAMPLE

pytestmark = pytest.mark.unit

POD_READER_YAML = REPO / "deploy" / "rbac-native-gpu-usage.yaml"
CONFIG = load_config(EXAMPLE)
BRIDGE_LABELS = {"app.kubernetes.io/managed-by": "slurm-k8s-bridge",
                 "slurm-k8s-bridge.io/cluster": "slurm"}


def example(**top: Any) -> Any:
    data = yaml.safe_load(EXAMPLE.read_text())
    data.update(top)
    return parse_config(data)


def container(name: str = "main", requests: dict[str, Any] | None = None,
              limits: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if requests is not None:
        resources["requests"] = requests
    if limits is not None:
        resources["limits"] = limits
    return {"name": name, "image": "x", "resources": resources, **extra}


def k8s_pod(name: str, ns: str = "infer", node: str | None = "gpu-0", phase: str = "Running",
            containers: list[dict[str, Any]] | None = None,
            init: list[dict[str, Any]] | None = None, labels: dict[str, str] | None = None,
            gpus: int | None = None, rv: str = "1") -> dict[str, Any]:
    if containers is None:
        containers = [container(limits={"nvidia.com/gpu": str(gpus if gpus is not None else 1)})]
    spec: dict[str, Any] = {"containers": containers}
    if init:
        spec["initContainers"] = init
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": ns, "labels": dict(labels or {}),
                         "resourceVersion": rv},
            "spec": spec, "status": {"phase": phase}}


def held(name: str, ns: str = "infer", node: str = "gpu-0", gpus: int = 1,
         bridge: bool = False, phase: str = "Running", **mig: int) -> GpuPod:
    res = ((("nvidia.com/gpu", gpus),) if gpus else ()) + tuple(
        (f"nvidia.com/mig-{p.replace('_', '.')}", n) for p, n in mig.items())
    return GpuPod(ns, name, node, phase, res, bridge)


# -- what one pod holds -------------------------------------------------------------------

def test_containers_add_up_and_a_limit_alone_is_the_request() -> None:
    pod = k8s_pod("p", containers=[
        container("a", requests={"nvidia.com/gpu": "2", "cpu": "4"}, limits={"nvidia.com/gpu": "2"}),
        container("b", limits={"nvidia.com/gpu": 1, "memory": "1Gi"}),
        container("c", requests={"cpu": "1"})])
    assert pod_gpu_requests(pod) == {"nvidia.com/gpu": 3}


def test_init_containers_count_as_their_maximum() -> None:
    # runs one at a time before the app containers: the pod holds the larger of the two
    pod = k8s_pod("p", containers=[container("a", limits={"nvidia.com/gpu": "1"}),
                                   container("b", limits={"nvidia.com/gpu": "1"})],
                  init=[container("i1", limits={"nvidia.com/gpu": "3"}),
                        container("i2", limits={"nvidia.com/gpu": "1"})])
    assert pod_gpu_requests(pod) == {"nvidia.com/gpu": 3}
    smaller = k8s_pod("p", containers=[container("a", limits={"nvidia.com/gpu": "4"})],
                      init=[container("i1", limits={"nvidia.com/gpu": "2"}),
                            container("i2", limits={"nvidia.com/gpu": "3"})])
    assert pod_gpu_requests(smaller) == {"nvidia.com/gpu": 4}


def test_sidecars_run_beside_everything_after_them() -> None:
    # restartPolicy Always: a sidecar, added to later init containers and to the app
    pod = k8s_pod("p", containers=[container("a", limits={"nvidia.com/gpu": "2"})],
                  init=[container("side", limits={"nvidia.com/gpu": "1"}, restartPolicy="Always"),
                        container("i", limits={"nvidia.com/gpu": "4"})])
    assert pod_gpu_requests(pod) == {"nvidia.com/gpu": 5}                # 4 + 1 > 2 + 1
    pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "6"
    assert pod_gpu_requests(pod) == {"nvidia.com/gpu": 7}                # 6 + 1


def test_mig_profiles_are_their_own_resources() -> None:
    pod = k8s_pod("p", containers=[
        container("a", limits={"nvidia.com/mig-1g.10gb": "2"}),
        container("b", limits={"nvidia.com/mig-1g.10gb": "1", "nvidia.com/mig-3g.40gb": "1"})],
        init=[container("i", limits={"nvidia.com/mig-1g.10gb": "5"})])
    assert pod_gpu_requests(pod) == {"nvidia.com/mig-1g.10gb": 5, "nvidia.com/mig-3g.40gb": 1}


def test_pods_without_gpus_and_odd_values_hold_nothing() -> None:
    assert pod_gpu_requests(k8s_pod("p", containers=[container(requests={"cpu": "8"})])) == {}
    assert pod_gpu_requests(k8s_pod("p", containers=[container(limits={"nvidia.com/gpu": "0"})])) == {}
    assert pod_gpu_requests(k8s_pod("p", containers=[container(limits={"nvidia.com/gpu": "lots"})])) == {}
    assert pod_gpu_requests({"metadata": {"name": "p"}}) == {}
    assert pod_gpu_requests(k8s_pod("p", containers=[container()])) == {}


def test_a_pod_becomes_a_small_record_and_bridge_pods_are_recognised() -> None:
    assert gpu_pod(k8s_pod("llama-0", gpus=2), "slurm") == GpuPod(
        "infer", "llama-0", "gpu-0", "Running", (("nvidia.com/gpu", 2),), False)
    assert gpu_pod(k8s_pod("slurm-7-0-x", ns="slurm-jobs", labels=BRIDGE_LABELS), "slurm").bridge
    # another Slurm cluster's bridge pod is not ours: its GPUs are not this cluster's jobs
    other = dict(BRIDGE_LABELS, **{"slurm-k8s-bridge.io/cluster": "other"})
    assert not gpu_pod(k8s_pod("other-7-0-x", labels=other), "slurm").bridge
    assert not gpu_pod(k8s_pod("x", labels={"app.kubernetes.io/managed-by": "helm"}), "slurm").bridge
    unbound = gpu_pod(k8s_pod("pending", node=None), "slurm")
    assert unbound.node == "" and not unbound.holds_gpus


def test_only_native_unfinished_bound_pods_count() -> None:
    pods = [held("llama-0", gpus=2), held("etl", ns="etl", gpus=1, node="gpu-1"),
            held("slurm-7-0", ns="slurm-jobs", gpus=8, bridge=True),
            held("done", gpus=4, phase="Succeeded"), held("oom", gpus=4, phase="Failed"),
            held("unbound", gpus=4, node=""), held("cpu-only", gpus=0)]
    by_node = native_pods_by_node(pods)
    assert {n: [p.name for p in ps] for n, ps in by_node.items()} == {"gpu-0": ["llama-0"],
                                                                      "gpu-1": ["etl"]}


# -- the Comment -----------------------------------------------------------------------------

ALLOC = {"nvidia.com/gpu": "8", "nvidia.com/mig-1g.10gb": "56"}


def test_comment_lists_the_biggest_holders_first() -> None:
    pods = [held("x", ns="etl", gpus=1), held("llama-0", gpus=2)]
    assert usage_comment(ALLOC, pods) == \
        "k8s: 3/8 GPUs held by Kubernetes pods: infer/llama-0 (2), etl/x (1)"
    assert usage_comment(ALLOC, []) == ""


def test_comment_with_mig() -> None:
    pods = [held("a", gpus=0, **{"1g_10gb": 3}), held("b", gpus=1, **{"1g_10gb": 1})]
    assert usage_comment(ALLOC, pods) == (
        "k8s: 1/8 GPUs, 4/56 MIG 1g.10gb held by Kubernetes pods: "
        "infer/a (3 MIG 1g.10gb), infer/b (1, 1 MIG 1g.10gb)")


def test_a_long_comment_is_cut_at_a_pod_and_counts_the_rest() -> None:
    pods = [held(f"worker-with-a-long-name-{i:03d}", ns="pipelines-team", gpus=1) for i in range(8)]
    text = usage_comment(ALLOC, pods)
    assert len(text) <= COMMENT_LIMIT
    assert text.startswith("k8s: 8/8 GPUs held by Kubernetes pods: pipelines-team/worker-with-a-long-name-000 (1), ")
    shown = text.count("(1)")
    assert text.endswith(f", and {8 - shown} more") and 0 < shown < 8
    tiny = usage_comment(ALLOC, pods, limit=60)
    assert tiny == "k8s: 8/8 GPUs held by Kubernetes pods: and 8 more"


# -- desired_mirror and plan_mirror ----------------------------------------------------------

NODES = {"gpu-0": k8s_node("gpu-0"), "gpu-1": k8s_node("gpu-1")}
PODS = [held("llama-0", gpus=2), held("x", ns="etl", gpus=1),
        held("slurm-3-0", ns="slurm-jobs", node="gpu-1", gpus=8, bridge=True)]


def test_desired_comment_per_node() -> None:
    want = desired_mirror(NODES, CONFIG, PODS)
    assert want["k8s-gpu-0"].comment == \
        "k8s: 3/8 GPUs held by Kubernetes pods: infer/llama-0 (2), etl/x (1)"
    assert want["k8s-gpu-1"].comment == ""                      # only a bridge pod there


def test_unknown_usage_leaves_the_comment_or_says_so() -> None:
    assert {n.comment for n in desired_mirror(NODES, CONFIG).values()} == {None}
    forbidden = desired_mirror(NODES, CONFIG, None, NATIVE_USAGE_FORBIDDEN)
    assert {n.comment for n in forbidden.values()} == {NATIVE_USAGE_FORBIDDEN}


def test_option_off_keeps_comments_empty() -> None:
    off = example(native_gpu_usage=False)
    assert {n.comment for n in desired_mirror(NODES, off, PODS).values()} == {""}
    assert {n.comment for n in desired_mirror(NODES, off).values()} == {""}


def slurm_node(name: str, comment: str = "", state: str = "IDLE+CLOUD+POWERED_DOWN",
               gres: str = "gpu:h100:8") -> SlurmNode:
    return SlurmNode(name=name, state=state, gres=gres, features=("k8s-node", "h100", "hopper"),
                     cpus=224, real_memory_mb=2048000, comment=comment)


def test_plan_sets_the_comment_only_when_it_changes() -> None:
    text = "k8s: 3/8 GPUs held by Kubernetes pods: infer/llama-0 (2), etl/x (1)"
    current = {"k8s-gpu-0": slurm_node("k8s-gpu-0"), "k8s-gpu-1": slurm_node("k8s-gpu-1")}
    actions = plan_mirror(desired_mirror(NODES, CONFIG, PODS), current)
    assert [(a.verb, a.node, a.spec and a.spec.comment) for a in actions] == [
        ("comment", "k8s-gpu-0", text)]
    in_sync = {"k8s-gpu-0": slurm_node("k8s-gpu-0", text), "k8s-gpu-1": slurm_node("k8s-gpu-1")}
    assert plan_mirror(desired_mirror(NODES, CONFIG, PODS), in_sync) == []
    # the pods went away: the comment is cleared
    cleared = plan_mirror(desired_mirror(NODES, CONFIG, []), in_sync)
    assert [(a.verb, a.node, a.spec and a.spec.comment) for a in cleared] == [
        ("comment", "k8s-gpu-0", "")]
    # not known (watch not listed yet): nothing touched
    assert plan_mirror(desired_mirror(NODES, CONFIG, None), in_sync) == []


def test_new_and_recreated_nodes_get_state_then_comment() -> None:
    nodes = {"gpu-0": k8s_node("gpu-0", cordoned=True), "gpu-1": k8s_node("gpu-1", gpus=4)}
    pods = [held("llama-0", gpus=2), held("y", node="gpu-1", gpus=1)]
    current = {"k8s-gpu-1": slurm_node("k8s-gpu-1", "k8s: old")}    # 8 -> 4 GPUs: recreate
    actions = plan_mirror(desired_mirror(nodes, CONFIG, pods), current)
    assert [(a.verb, a.node) for a in actions] == [
        ("create", "k8s-gpu-0"), ("state", "k8s-gpu-0"), ("comment", "k8s-gpu-0"),
        ("recreate", "k8s-gpu-1"), ("comment", "k8s-gpu-1")]
    assert actions[-1].spec is not None and actions[-1].spec.comment == \
        "k8s: 1/4 GPUs held by Kubernetes pods: infer/y (1)"
    # a new node with nothing on it needs no comment action
    fresh = plan_mirror(desired_mirror({"gpu-2": k8s_node("gpu-2")}, CONFIG, []), {})
    assert [(a.verb, a.node) for a in fresh] == [("create", "k8s-gpu-2")]


class RecordingSlurm:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, *args))


def test_apply_sets_the_node_comment() -> None:
    slurm = RecordingSlurm()
    want = desired_mirror(NODES, CONFIG, PODS)["k8s-gpu-0"]
    apply_mirror(slurm, [MirrorAction("comment", "k8s-gpu-0", want)])
    assert slurm.calls == [("set_node_comment", "k8s-gpu-0", want.comment)]


# -- configuration ---------------------------------------------------------------------------

def test_the_key_is_validated_and_off_by_default() -> None:
    assert CONFIG.native_gpu_usage is True                     # the example opts in
    data = yaml.safe_load(EXAMPLE.read_text())
    del data["native_gpu_usage"]
    assert parse_config(data).native_gpu_usage is False
    for bad in ("yes", 1, "true", [True]):
        with pytest.raises(ConfigError) as info:
            parse_config(dict(data, native_gpu_usage=bad))
        assert "native_gpu_usage" in str(info.value) and "true or false" in str(info.value)
    with pytest.raises(ConfigError, match="native_gpu_usages"):
        parse_config(dict(data, native_gpu_usages=True))


# -- RBAC ------------------------------------------------------------------------------------

def test_rbac_without_the_option_adds_nothing() -> None:
    base = required_rbac(["slurm-jobs"])
    assert not [o for o in base if o["metadata"]["name"] == POD_READER_CLUSTER_ROLE]
    assert required_rbac(["slurm-jobs"], native_gpu_usage=False) == base


def test_rbac_with_the_option_adds_only_a_pod_reader() -> None:
    base = required_rbac(["team-a", "team-b"])
    opted = required_rbac(["team-a", "team-b"], native_gpu_usage=True)
    assert opted[:len(base)] == base
    extra = opted[len(base):]
    assert extra == native_gpu_usage_rbac()
    assert [(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in extra] == [
        ("ClusterRole", POD_READER_CLUSTER_ROLE, None),
        ("ClusterRoleBinding", POD_READER_CLUSTER_ROLE, None)]
    assert extra[0]["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    assert extra[1]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                   "name": POD_READER_CLUSTER_ROLE}
    assert extra[1]["subjects"] == [{"kind": "ServiceAccount", "name": "slurm-k8s-bridge",
                                     "namespace": "slurm-k8s-bridge"}]
    moved = required_rbac(["a"], daemon_namespace="ops", service_account="bridge", native_gpu_usage=True)
    assert moved[-1]["subjects"] == [{"kind": "ServiceAccount", "name": "bridge", "namespace": "ops"}]


def test_deploy_pod_reader_yaml_is_generated() -> None:
    text = POD_READER_YAML.read_text()
    assert list(yaml.safe_load_all(text)) == native_gpu_usage_rbac()
    assert text == render_native_gpu_usage_rbac_yaml(), \
        "regenerate deploy/rbac-native-gpu-usage.yaml with render_native_gpu_usage_rbac_yaml()"


# -- the watch cache's GpuPod store ----------------------------------------------------------

@pytest.fixture
def offline() -> KubeAccess:
    return KubeAccess(client.ApiClient(), cluster_name="slurm", namespaces=["slurm-jobs"],
                      qps=1000, burst=1000, gpu_pods=True)


def test_the_pod_watch_is_cluster_wide_and_skips_finished_pods(offline: KubeAccess) -> None:
    reflector = offline._new_gpu_pod_reflector()
    assert reflector.namespace is None and reflector.kind is POD and reflector.optional
    assert reflector._query() == {"fieldSelector": UNFINISHED_PODS}
    assert UNFINISHED_PODS == "status.phase!=Succeeded,status.phase!=Failed"
    assert reflector.where == "pods in all namespaces"


def test_only_pods_holding_gpus_are_kept(offline: KubeAccess, monkeypatch: pytest.MonkeyPatch) -> None:
    reflector = offline._new_gpu_pod_reflector()
    offline._gpu_pod_reflector = reflector
    pages = [{"metadata": {"resourceVersion": "10", "continue": "next"},
              "items": [k8s_pod("llama-0", gpus=2), k8s_pod("web", containers=[container(requests={"cpu": "1"})])]},
             {"metadata": {"resourceVersion": "10"},
              "items": [k8s_pod("unbound", node=None), k8s_pod("slurm-3-0", ns="slurm-jobs", labels=BRIDGE_LABELS,
                                                             gpus=8, node="gpu-1")]}]
    queries: list[dict[str, Any]] = []

    def request(method: str, path: str, *, query: Any = None, body: Any = None) -> _Reply:
        assert (method, path) == ("GET", "/api/v1/pods")
        queries.append(dict(query))
        return _Reply(200, copy.deepcopy(pages[len(queries) - 1]))

    monkeypatch.setattr(offline, "_request", request)
    assert offline.gpu_pods() is None                               # not listed yet
    reflector._relist()
    assert [q.get("fieldSelector") for q in queries] == [UNFINISHED_PODS] * 2
    assert queries[1]["continue"] == "next"
    assert sorted((p.namespace, p.name, p.bridge) for p in offline.gpu_pods() or []) == [
        ("infer", "llama-0", False), ("slurm-jobs", "slurm-3-0", True)]
    assert all(isinstance(p, GpuPod) for p in offline._gpu_pods.items.values())

    # status changes that leave node, phase and GPUs alone do not wake the daemon
    offline.changed.clear()
    offline._apply(POD, "MODIFIED", reflector._keep(k8s_pod("llama-0", gpus=2, rv="11")), store="gpu_pods")
    assert not offline.changed.is_set()
    # bound later: kept; finished (the watch says DELETED: it left the field selector): gone
    offline._apply(POD, "MODIFIED", reflector._keep(k8s_pod("unbound", node="gpu-1", rv="12")), store="gpu_pods")
    assert offline.changed.is_set() and ("infer", "unbound") in offline._gpu_pods.items
    offline._apply(POD, "DELETED", reflector._keep(k8s_pod("unbound", node="gpu-1", phase="Succeeded")),
                   store="gpu_pods")
    offline._apply(POD, "MODIFIED", reflector._keep(k8s_pod("llama-0", gpus=2, phase="Failed")), store="gpu_pods")
    assert [p.name for p in offline.gpu_pods() or []] == ["slurm-3-0"]
    # the job namespaces' full pod cache is another store
    assert offline.pods() == {}


def test_forbidden_watch_means_unknown(offline: KubeAccess) -> None:
    reflector = offline._new_gpu_pod_reflector()
    offline._gpu_pod_reflector = reflector
    reflector.synced = True
    assert offline.gpu_pods() == [] and not offline.gpu_pods_forbidden()
    reflector.last_status = 403
    assert offline.gpu_pods() is None and offline.gpu_pods_forbidden()


def test_synced_does_not_wait_for_the_pod_watch(offline: KubeAccess) -> None:
    nodes = _Reflector(offline, NODE, None, None)
    nodes.synced = True
    offline._reflectors = [nodes, offline._new_gpu_pod_reflector()]
    assert offline.synced() is True                   # the daemon starts; comments wait


# -- the daemon's wiring ---------------------------------------------------------------------

class FakeKube:
    def __init__(self, pods: list[GpuPod] | None, forbidden: bool = False) -> None:
        self.pods, self.forbidden, self.watching = pods, forbidden, False

    def watch_gpu_pods(self) -> None:
        self.watching = True

    def gpu_pods(self) -> list[GpuPod] | None:
        return self.pods

    def gpu_pods_forbidden(self) -> bool:
        return self.forbidden

    def nodes(self) -> dict[str, Any]:
        return NODES


@pytest.mark.parametrize("pods, forbidden, expected", [
    (PODS, False, "k8s: 3/8 GPUs held by Kubernetes pods: infer/llama-0 (2), etl/x (1)"),
    (None, True, NATIVE_USAGE_FORBIDDEN),
])
def test_daemon_mirror_writes_the_comment(pods: Any, forbidden: bool, expected: str) -> None:
    kube, slurm = FakeKube(pods, forbidden), RecordingSlurm()
    daemon = BridgeDaemon(CONFIG, slurm, kube)  # type: ignore[arg-type]
    assert kube.watching
    daemon._slurm_nodes = {"k8s-gpu-0": slurm_node("k8s-gpu-0"), "k8s-gpu-1": slurm_node("k8s-gpu-1")}
    daemon.mirror_inventory()
    assert ("set_node_comment", "k8s-gpu-0", expected) in slurm.calls


def test_daemon_without_the_option_does_not_watch_pods() -> None:
    kube = FakeKube(PODS)
    BridgeDaemon(example(native_gpu_usage=False), RecordingSlurm(), kube)  # type: ignore[arg-type]
    assert not kube.watching
