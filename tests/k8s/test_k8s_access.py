"""KubeAccess against a real control plane, as the daemon's ServiceAccount (never admin).

The namespaces and the RBAC of ``required_rbac`` are created as admin; everything
KubeAccess does runs with a token of ServiceAccount slurm-k8s-bridge/slurm-k8s-bridge, so
these tests also prove that the RBAC is enough, and (``test_least_privilege``) no more.
The objects come from ``translate.render`` for ``sbatch -N 2 --gres=gpu:h100:8``: two pods
of 8 GPUs, one on each of the two KWOK H100 nodes.

410 Gone: the API server's watch cache of a fresh cluster holds every event since it started,
so it serves a watch from any old resourceVersion. This module's cluster runs without the
pods watch cache (``--watch-cache-sizes=pods#0``): pod watches go to etcd, and compacting
etcd makes an old resourceVersion expire exactly as it does on a long-lived cluster.
"""

from __future__ import annotations

import base64
import copy
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from slurm_k8s_bridge.core.config import BridgeConfig, parse_config
from slurm_k8s_bridge.core.normalize import normalize
from slurm_k8s_bridge.core.render import render
from slurm_k8s_bridge.kube.access import KubeAccess
from slurm_k8s_bridge.kube.cache import POD
from slurm_k8s_bridge.kube.errors import (
    GangBackendMissing,
    KubeApiError,
    ObjectOwnedElsewhere,
)
from slurm_k8s_bridge.kube.rbac import DAEMON_NAMESPACE, SERVICE_ACCOUNT
from slurm_k8s_bridge.slurm.sbatch import request_from_sbatch
from slurm_k8s_devcluster.k8s import LocalKubeCluster

from ..kube_env import DaemonRbac, started_access
from .conftest import JOBS_NS
from ..paths import REPO, EXAMPLE_CONFIG

pytestmark = pytest.mark.k8s

OTHER_NS = "not-for-slurm"
LABEL = "slurm-k8s-bridge.io/"
T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy (and return it), or fail."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def example_config(**partition: Any) -> BridgeConfig:
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data["partitions"]["gpu"].update(partition)
    return parse_config(data)


def gang_objects(job_id: int, config: BridgeConfig | None = None) -> list[dict[str, Any]]:
    config = config or example_config()
    script = "#!/bin/bash\n#SBATCH -N 2\n#SBATCH --gres=gpu:h100:8\nsrun hostname\n"
    breq = normalize(request_from_sbatch(script, ["-p", "gpu"], 1000, 1000, script_name="job.sh"), config)
    assert breq is not None and breq.namespace == JOBS_NS
    return render(breq, config, job_id)


def compact_etcd(cluster: LocalKubeCluster) -> int:
    """Compact etcd at its current revision (etcd's JSON gateway); returns the revision."""
    def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{cluster.ports['etcd']}{path}",
                                         data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result
    revision = int(call("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
    call("/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision


def running_pods(access: KubeAccess, name: str) -> list[dict[str, Any]]:
    pods = access.pods_of(JOBS_NS, name)
    return [p for p in pods if p.get("status", {}).get("phase") == "Running"]


# -- fixtures (the control plane, RBAC and ServiceAccount: tests/k8s/conftest.py) ------------

@pytest.fixture(scope="module")
def kube_options() -> dict[str, Any]:
    return {"kwok_nodes": 2, "extra_args": {"kube-apiserver": ["--watch-cache-sizes=pods#0"]}}


@pytest.fixture(scope="module")
def daemon_rbac() -> DaemonRbac:
    return DaemonRbac(job_namespaces=(JOBS_NS,), other_namespaces=(OTHER_NS,))


@pytest.fixture(scope="module")
def access(sa_client: Any) -> Iterator[KubeAccess]:
    with started_access(sa_client, [JOBS_NS]) as kube:
        yield kube


# -- tests ------------------------------------------------------------------------------

def test_the_service_account_identity_is_used(sa_client: Any) -> None:
    review = client.AuthenticationV1Api(sa_client).create_self_subject_review({})
    assert review.status.user_info.username == f"system:serviceaccount:{DAEMON_NAMESPACE}:{SERVICE_ACCOUNT}"


def test_cache_lists_nodes(access: KubeAccess) -> None:
    nodes = access.nodes()
    assert {"gpu-0", "gpu-1"} <= set(nodes)
    assert nodes["gpu-0"]["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert nodes["gpu-0"]["kind"] == "Node"            # listed items get their kind back


def test_apply_gang_runs_two_pods_on_two_gpu_nodes(access: KubeAccess) -> None:
    objects = gang_objects(101)
    assert [o["kind"] for o in objects] == ["Service", "Job"]
    assert access.apply_gang(objects) == ["Service/slurm-101", "Job/slurm-101"]
    job = eventually(lambda: access.jobs().get((JOBS_NS, "slurm-101")), 30, "the Job in the cache")
    assert job["metadata"]["labels"][LABEL + "job-id"] == "101"
    pods = eventually(lambda: len(running_pods(access, "slurm-101")) == 2 and running_pods(access, "slurm-101"),
                      60, "two Running pods in the cache")
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["gpu-0", "gpu-1"]
    assert all(p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8" for p in pods)
    assert sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1"]


def test_apply_gang_again_creates_nothing(access: KubeAccess, admin: Any) -> None:
    eventually(lambda: len(running_pods(access, "slurm-101")) == 2, 60, "the gang of job 101")
    errors_before = access.metrics.errors_total()
    assert access.apply_gang(gang_objects(101)) == []
    assert access.apply_gang(gang_objects(101)) == []
    assert access.metrics.errors_total() == errors_before          # 409s are expected, not errors
    assert access.metrics.requests_total("create", "jobs", 409) >= 2
    selector = f"{LABEL}job-id=101"
    assert len(client.BatchV1Api(admin).list_namespaced_job(JOBS_NS, label_selector=selector).items) == 1
    assert len(client.CoreV1Api(admin).list_namespaced_service(JOBS_NS, label_selector=selector).items) == 1
    time.sleep(1.0)
    assert len(client.CoreV1Api(admin).list_namespaced_pod(JOBS_NS, label_selector=selector).items) == 2


def test_a_name_taken_by_another_slurm_job_is_refused(access: KubeAccess) -> None:
    eventually(lambda: access.jobs().get((JOBS_NS, "slurm-101")), 30, "job 101")
    impostor = copy.deepcopy(gang_objects(101))
    for obj in impostor:
        obj["metadata"]["labels"][LABEL + "job-id"] = "999"
    with pytest.raises(ObjectOwnedElsewhere, match="belongs to Slurm job 101 of cluster slurm, not to Slurm job 999"):
        access.apply_gang(impostor)


def test_volcano_gang_without_volcano_is_refused_before_creating_anything(access: KubeAccess, admin: Any) -> None:
    objects = gang_objects(150, example_config(gang="volcano"))
    assert [o["kind"] for o in objects] == ["Service", "PodGroup", "Job"]
    with pytest.raises(GangBackendMissing, match="Volcano is not installed"):
        access.apply_gang(objects)
    selector = f"{LABEL}job-id=150"
    assert client.CoreV1Api(admin).list_namespaced_service(JOBS_NS, label_selector=selector).items == []
    assert client.BatchV1Api(admin).list_namespaced_job(JOBS_NS, label_selector=selector).items == []


def test_recorded_events_appear_via_the_api_and_the_cache(access: KubeAccess, admin: Any) -> None:
    job = eventually(lambda: access.jobs().get((JOBS_NS, "slurm-101")), 30, "job 101")
    message = "Slurm job 101 released: running on slurm-101-[0-1]"
    name = access.record_event(job, "SlurmJobReleased", message)
    assert access.record_event(job, "SlurmJobReleased", message) == name      # idempotent
    events = client.CoreV1Api(admin).list_namespaced_event(
        JOBS_NS, field_selector="involvedObject.name=slurm-101,reason=SlurmJobReleased").items
    assert [(e.metadata.name, e.message, e.type, e.count) for e in events] == [(name, message, "Normal", 1)]
    assert events[0].reporting_component == "slurm-k8s-bridge"
    assert events[0].involved_object.uid == job["metadata"]["uid"]
    cached = eventually(lambda: {e["reason"]: e for e in access.events_for(JOBS_NS, "Job", "slurm-101")}
                        .get("SlurmJobReleased"), 30, "the Event in the cache")
    assert cached["message"] == message
    # the Job controller's own Events about our Job are kept too
    eventually(lambda: "SuccessfulCreate" in {e["reason"] for e in access.events_for(JOBS_NS, "Job", "slurm-101")},
               30, "the Job controller's SuccessfulCreate event")


def test_watch_relists_after_410_gone_and_converges(access: KubeAccess, kube_cluster: LocalKubeCluster) -> None:
    eventually(lambda: len(running_pods(access, "slurm-101")) == 2, 60, "the gang of job 101")
    ghost = {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "slurm-101-9-ghost", "namespace": JOBS_NS, "resourceVersion": "1",
                          "labels": {"batch.kubernetes.io/job-name": "slurm-101"}}}
    expired_before = access.metrics.expired_total("pods")
    relists_before = access.metrics.relists_total("pods")
    access._apply(POD, "ADDED", ghost)                            # a change the watch "missed"
    assert len(access.pods_of(JOBS_NS, "slurm-101")) == 3
    compact_etcd(kube_cluster)
    access.resync(resource_version="1")                           # compacted away: the server says 410
    access.apply_gang(gang_objects(102))                          # and something happens meanwhile
    eventually(lambda: access.metrics.expired_total("pods") > expired_before, 30, "a 410 Gone on the pods watch")
    eventually(lambda: access.metrics.relists_total("pods") > relists_before, 30, "a relist of pods")
    eventually(lambda: [p["metadata"]["name"] for p in access.pods_of(JOBS_NS, "slurm-101")
                        if p["metadata"]["name"] == "slurm-101-9-ghost"] == [], 30, "the ghost pod gone")
    assert len(access.pods_of(JOBS_NS, "slurm-101")) == 2
    eventually(lambda: access.jobs().get((JOBS_NS, "slurm-102")), 30, "job 102 in the cache after the relist")
    # the watches go on after the relist
    assert access.delete_gang(JOBS_NS, "slurm-102") == ["Job/slurm-102", "Service/slurm-102"]
    eventually(lambda: (JOBS_NS, "slurm-102") not in access.jobs(), 30, "job 102 gone from the cache")


def test_least_privilege(sa_client: Any) -> None:
    core = client.CoreV1Api(sa_client)
    with pytest.raises(ApiException) as info:
        core.delete_node("gpu-0")
    assert info.value.status == 403
    with pytest.raises(ApiException) as info:
        core.list_namespaced_secret(JOBS_NS)
    assert info.value.status == 403
    with pytest.raises(ApiException) as info:
        core.list_namespaced_pod(OTHER_NS)
    assert info.value.status == 403
    # creating a gang in a namespace the RBAC does not cover: 403, refused at once (no retries)
    outsider = KubeAccess(sa_client, cluster_name="slurm", namespaces=[OTHER_NS])
    objects = gang_objects(103)
    for obj in objects:
        obj["metadata"]["namespace"] = OTHER_NS
    with pytest.raises(KubeApiError) as api_error:
        outsider.apply_gang(list(reversed(objects)))               # the Job first
    assert api_error.value.status == 403
    assert outsider.metrics.requests_total("create", "jobs") == 1
    assert outsider.metrics.errors_total("create", "jobs") == 1


def test_missing_rbac_shows_in_sync_errors(sa_client: Any) -> None:
    outsider = KubeAccess(sa_client, cluster_name="slurm", namespaces=[OTHER_NS])
    outsider.start()
    try:
        assert outsider.wait_synced(2) is False
        errors = eventually(lambda: len(outsider.sync_errors()) == 3 and outsider.sync_errors(), 20,
                            "every namespaced watch to report its error")
        assert set(errors) == {f"{r} in {OTHER_NS}" for r in ("jobs", "pods", "events")}
        assert all(": 403 " in e for e in errors.values()), errors
        assert outsider.nodes()                                     # the ClusterRole still works
    finally:
        outsider.stop()


def test_stop_is_prompt_even_with_long_watches(sa_client: Any) -> None:
    kube = KubeAccess(sa_client, cluster_name="slurm", namespaces=[JOBS_NS], watch_timeout_seconds=600)
    kube.start()
    assert kube.wait_synced(30), kube.sync_errors()
    time.sleep(0.5)                                                 # every watch is open and idle
    started = time.monotonic()
    kube.stop()
    assert time.monotonic() - started < 3.0
    assert not any(r.thread.is_alive() for r in kube._reflectors)


def test_bridge_refuses_namespaces_it_does_not_watch(access: KubeAccess) -> None:
    objects = gang_objects(104)
    for obj in objects:
        obj["metadata"]["namespace"] = OTHER_NS
    with pytest.raises(ValueError, match="not one of the bridge's job namespaces"):
        access.apply_gang(objects)


def test_delete_gang_removes_everything(access: KubeAccess, admin: Any) -> None:
    eventually(lambda: len(running_pods(access, "slurm-101")) == 2, 60, "the gang of job 101")
    assert access.delete_gang(JOBS_NS, "slurm-101") == ["Job/slurm-101", "Service/slurm-101"]
    eventually(lambda: (JOBS_NS, "slurm-101") not in access.jobs(), 30, "job 101 gone from the cache")
    eventually(lambda: access.pods_of(JOBS_NS, "slurm-101") == [], 60, "job 101's pods garbage-collected")
    selector = f"{LABEL}job-id=101"
    assert client.CoreV1Api(admin).list_namespaced_pod(JOBS_NS, label_selector=selector).items == []
    assert client.CoreV1Api(admin).list_namespaced_service(JOBS_NS, label_selector=selector).items == []
    assert access.delete_gang(JOBS_NS, "slurm-101") == []                          # idempotent


def test_delete_gang_leaves_objects_it_does_not_own(access: KubeAccess, admin: Any) -> None:
    client.CoreV1Api(admin).create_namespaced_service(JOBS_NS, {
        "metadata": {"name": "slurm-105"}, "spec": {"clusterIP": "None", "selector": {"app": "x"}}})
    with pytest.raises(ObjectOwnedElsewhere, match="not managed by slurm-k8s-bridge"):
        access.delete_gang(JOBS_NS, "slurm-105")
    assert client.CoreV1Api(admin).read_namespaced_service("slurm-105", JOBS_NS).metadata.name == "slurm-105"


def test_metrics_count_what_happened(access: KubeAccess) -> None:
    metrics = access.metrics
    assert metrics.requests_total("create", "jobs", 201) >= 2
    assert metrics.requests_total("list", "pods", 200) >= 2                # initial list + relist
    assert metrics.requests_per_job() > 0
    text = metrics.render_prometheus()
    assert 'slurm_k8s_bridge_api_requests_total{code="201",resource="jobs",verb="create"}' in text
    assert "# TYPE slurm_k8s_bridge_api_errors_total counter" in text
