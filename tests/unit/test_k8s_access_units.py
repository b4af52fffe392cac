"""k8s_access without a cluster: token bucket, metrics text, RBAC manifests, event names,
retry rules and the watch cache's bookkeeping, all with literal dicts."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from slurm_k8s_bridge.kube.cache import EVENT, JOB, NODE, POD, event_time
from slurm_k8s_bridge.kube.metrics import ApiMetrics
from slurm_k8s_bridge.kube.access import KubeAccess, event_name
from slurm_k8s_bridge.kube.errors import KubeApiError
from slurm_k8s_bridge.kube.transport import RetryPolicy, TokenBucket, _Reply, is_retryable
from slurm_k8s_bridge.kube.rbac import render_rbac_yaml, required_rbac

from ..paths import REPO

pytestmark = pytest.mark.unit

RBAC_YAML = REPO / "deploy" / "rbac.yaml"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


# -- token bucket -----------------------------------------------------------------------

def test_token_bucket_gives_the_burst_at_once_then_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, 3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        assert bucket.acquire() == 0.0
    assert clock.slept == []
    bucket.acquire()
    bucket.acquire()
    assert clock.slept == pytest.approx([0.5, 0.5])


def test_token_bucket_reservations_queue_up_in_order() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, 2, clock=clock, sleep=clock.sleep)
    assert [bucket.reserve() for _ in range(5)] == pytest.approx([0.0, 0.0, 1.0, 2.0, 3.0])


def test_token_bucket_refills_up_to_the_burst_only() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, 4, clock=clock, sleep=clock.sleep)
    for _ in range(4):
        bucket.acquire()
    clock.now += 3600
    assert bucket.tokens == pytest.approx(4.0)
    assert [bucket.try_acquire() for _ in range(5)] == [True, True, True, True, False]
    clock.now += 0.1
    assert bucket.try_acquire() is True


def test_token_bucket_long_run_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(20.0, 40, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(1040):
        bucket.acquire()
    assert clock.now - start == pytest.approx(1000 / 20.0)


def test_token_bucket_is_thread_safe() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, 1, clock=clock, sleep=lambda s: None)
    waits: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            delay = bucket.reserve()
            with lock:
                waits.append(delay)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 400 reservations at one instant with a burst of 1: every wait 0, 1, ..., 399 exactly once
    assert sorted(waits) == pytest.approx([float(i) for i in range(400)])


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_token_bucket_refuses_nonsense(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


# -- metrics ----------------------------------------------------------------------------

def test_metrics_text_format() -> None:
    metrics = ApiMetrics()
    metrics.observe("create", "jobs", 201, job="slurm-jobs/slurm-1")
    metrics.observe("create", "jobs", 201, job="slurm-jobs/slurm-2")
    metrics.observe("create", "jobs", 409, job="slurm-jobs/slurm-2")
    metrics.observe("create", "services", 503, error=True, job="slurm-jobs/slurm-2")
    metrics.observe("list", "pods", 200)
    metrics.observe("delete", "jobs", None, error=True)
    metrics.observe_relist("pods")
    metrics.observe_expired("pods")
    assert metrics.render_prometheus() == """\
# HELP slurm_k8s_bridge_api_requests_total Kubernetes API requests made by slurm-k8s-bridge, by verb, resource and HTTP status code (error: no answer).
# TYPE slurm_k8s_bridge_api_requests_total counter
slurm_k8s_bridge_api_requests_total{code="201",resource="jobs",verb="create"} 2
slurm_k8s_bridge_api_requests_total{code="409",resource="jobs",verb="create"} 1
slurm_k8s_bridge_api_requests_total{code="503",resource="services",verb="create"} 1
slurm_k8s_bridge_api_requests_total{code="error",resource="jobs",verb="delete"} 1
slurm_k8s_bridge_api_requests_total{code="200",resource="pods",verb="list"} 1
# HELP slurm_k8s_bridge_api_errors_total Kubernetes API requests that failed (after the answer was read), by verb and resource.
# TYPE slurm_k8s_bridge_api_errors_total counter
slurm_k8s_bridge_api_errors_total{resource="services",verb="create"} 1
slurm_k8s_bridge_api_errors_total{resource="jobs",verb="delete"} 1
# HELP slurm_k8s_bridge_api_job_requests_total Kubernetes API requests made on behalf of one gang (a Slurm job or array task).
# TYPE slurm_k8s_bridge_api_job_requests_total counter
slurm_k8s_bridge_api_job_requests_total 4
# HELP slurm_k8s_bridge_api_jobs_total Gangs (Slurm jobs or array tasks) the bridge made Kubernetes API requests for; requests per job = job_requests_total / jobs_total.
# TYPE slurm_k8s_bridge_api_jobs_total counter
slurm_k8s_bridge_api_jobs_total 2
# HELP slurm_k8s_bridge_api_watch_relists_total Full lists of a watched resource (start, 410 Gone, resync).
# TYPE slurm_k8s_bridge_api_watch_relists_total counter
slurm_k8s_bridge_api_watch_relists_total{resource="pods"} 1
# HELP slurm_k8s_bridge_api_watch_expired_total Watches the API server ended with 410 Gone (resourceVersion too old), each followed by a relist.
# TYPE slurm_k8s_bridge_api_watch_expired_total counter
slurm_k8s_bridge_api_watch_expired_total{resource="pods"} 1
"""
    assert metrics.requests_per_job() == pytest.approx(2.0)
    assert metrics.job_requests("slurm-jobs/slurm-2") == 3
    assert metrics.requests_total(verb="create") == 4
    assert metrics.requests_total(resource="jobs", code=201) == 2
    assert metrics.errors_total() == 2


SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? [0-9]+$')


def test_metrics_escape_label_values() -> None:
    metrics = ApiMetrics(prefix="test")
    metrics.observe('we"ird\\verb\nx', "jobs", 200)
    text = metrics.render_prometheus()
    assert 'verb="we\\"ird\\\\verb\\nx"' in text
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE.match(line), line


def test_metrics_forget_old_jobs_but_keep_counting() -> None:
    metrics = ApiMetrics(max_tracked_jobs=2)
    for job in ("a", "b", "c", "a"):
        metrics.observe("get", "jobs", 200, job=job)
    assert metrics.job_requests("b") == 0           # evicted ("a" came back, "b" was oldest)
    assert metrics.job_requests("a") == 1           # "a" was evicted once and counted again
    assert metrics.requests_per_job() == pytest.approx(1.0)


def test_metrics_are_thread_safe() -> None:
    metrics = ApiMetrics()

    def worker() -> None:
        for i in range(1000):
            metrics.observe("get", "jobs", 200, job=f"j{i % 10}")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metrics.requests_total() == 8000
    assert metrics.requests_per_job() == pytest.approx(800.0)


# -- RBAC -------------------------------------------------------------------------------

def test_rbac_manifests_are_deploy_rbac_yaml() -> None:
    text = RBAC_YAML.read_text()
    assert list(yaml.safe_load_all(text)) == required_rbac(["slurm-jobs"])
    assert text == render_rbac_yaml(), "regenerate deploy/rbac.yaml with render_rbac_yaml()"


def test_rbac_is_least_privilege() -> None:
    objects = required_rbac(["team-a", "team-b"], volcano=False)
    assert [(o["kind"], o["metadata"].get("namespace")) for o in objects] == [
        ("ServiceAccount", "slurm-k8s-bridge"),
        ("Role", "team-a"), ("RoleBinding", "team-a"),
        ("Role", "team-b"), ("RoleBinding", "team-b"),
        ("ClusterRole", None), ("ClusterRoleBinding", None)]
    grants = {(group, resource): set(rule["verbs"])
              for o in objects if o["kind"] in ("Role", "ClusterRole")
              for rule in o["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}
    assert grants == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "services"): {"create", "get", "delete"},
        ("", "pods"): {"list", "watch"},
        ("", "events"): {"create", "list", "watch"},
        ("", "nodes"): {"list", "watch"},
    }
    cluster_role = next(o for o in objects if o["kind"] == "ClusterRole")
    assert cluster_role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}]
    for binding in (o for o in objects if o["kind"].endswith("Binding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "slurm-k8s-bridge",
                                        "namespace": "slurm-k8s-bridge"}]
    with_volcano = required_rbac(["team-a"])
    role = next(o for o in with_volcano if o["kind"] == "Role")
    assert {"apiGroups": ["scheduling.volcano.sh"], "resources": ["podgroups"],
            "verbs": ["create", "get", "delete"]} in role["rules"]


def test_rbac_needs_distinct_namespaces() -> None:
    with pytest.raises(ValueError):
        required_rbac([])
    with pytest.raises(ValueError):
        required_rbac(["a", "a"])


# -- event names ------------------------------------------------------------------------

JOB_OBJ: dict[str, Any] = {"apiVersion": "batch/v1", "kind": "Job",
                           "metadata": {"name": "slurm-42", "namespace": "slurm-jobs", "uid": "u-1"}}

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def test_event_names_are_deterministic() -> None:
    name = event_name(JOB_OBJ, "Pending", "waiting for 16 GPUs")
    assert name == event_name(dict(JOB_OBJ), "Pending", "waiting for 16 GPUs")
    assert re.fullmatch(r"slurm-42\.[0-9a-f]{16}", name)
    others = {
        event_name(JOB_OBJ, "Pending", "waiting for 8 GPUs"),
        event_name(JOB_OBJ, "Released", "waiting for 16 GPUs"),
        event_name(JOB_OBJ, "Pending", "waiting for 16 GPUs", "Warning"),
        event_name({**JOB_OBJ, "metadata": {**JOB_OBJ["metadata"], "uid": "u-2"}}, "Pending", "waiting for 16 GPUs"),
        event_name({**JOB_OBJ, "kind": "Pod"}, "Pending", "waiting for 16 GPUs"),
    }
    assert name not in others and len(others) == 5


def test_event_names_stay_valid_for_long_object_names() -> None:
    obj = {"kind": "Pod", "metadata": {"name": "a" * 250 + "-x", "namespace": "ns"}}
    name = event_name(obj, "Reason", "message")
    assert len(name) <= 253 and DNS_SUBDOMAIN.match(name)
    with pytest.raises(ValueError):
        event_name({"kind": "Pod", "metadata": {}}, "Reason", "message")


def test_event_time_reads_every_event_flavour() -> None:
    legacy = {"lastTimestamp": "2026-01-01T00:00:05Z", "firstTimestamp": "2026-01-01T00:00:00Z"}
    new = {"eventTime": "2026-01-01T00:00:04.500000Z", "lastTimestamp": None}
    series = {"eventTime": "2026-01-01T00:00:01.000000Z", "series": {"lastObservedTime": "2026-01-01T00:00:09.000000Z"}}
    assert sorted([legacy, new, series], key=event_time) == [new, legacy, series]


# -- retries ----------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "retry"), [
    (None, True), (429, True), (500, True), (503, True), (504, True),
    (400, False), (401, False), (403, False), (404, False), (409, False), (410, False), (422, False)])
def test_which_failures_are_retried(status: int | None, retry: bool) -> None:
    assert is_retryable(KubeApiError("create", "jobs", "ns/x", status, "r")) is retry
    assert is_retryable(ValueError("x")) is False


def test_retry_wait_is_jittered_bounded_and_honours_retry_after() -> None:
    policy = RetryPolicy(initial_wait=0.2, max_wait=5.0)
    for attempt in range(1, 12):
        ceiling = min(5.0, 0.2 * 2 ** (attempt - 1))
        assert ceiling / 2 <= policy.wait(attempt) <= ceiling
    assert policy.wait(1, retry_after=3.0) >= 3.0
    assert policy.wait(1, retry_after=60.0) <= 5.0


@pytest.fixture
def offline() -> KubeAccess:
    """A KubeAccess that is never started: requests go to fake senders."""
    return KubeAccess(client.ApiClient(), cluster_name="slurm", namespaces=["slurm-jobs"], qps=1000, burst=1000,
                      retry=RetryPolicy(attempts=4, initial_wait=0.001, max_wait=0.002))


def sender(*outcomes: Any) -> Any:
    queue = list(outcomes)

    def send() -> _Reply:
        outcome = queue.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        reply: _Reply = outcome
        return reply
    send.left = queue  # type: ignore[attr-defined]
    return send


def api_error(status: int | None) -> KubeApiError:
    return KubeApiError("POST", "/apis/batch/v1/namespaces/slurm-jobs/jobs", "", status, "boom")


def test_429_and_5xx_are_retried_then_succeed(offline: KubeAccess) -> None:
    send = sender(api_error(429), api_error(503), api_error(None), _Reply(201, {"kind": "Job"}))
    assert offline._call("create", "jobs", send, job="slurm-jobs/slurm-1").status == 201
    m = offline.metrics
    assert (m.requests_total(code=429), m.requests_total(code=503), m.requests_total(code="error"),
            m.requests_total(code=201)) == (1, 1, 1, 1)
    assert m.errors_total("create", "jobs") == 3
    assert m.job_requests("slurm-jobs/slurm-1") == 4


def test_retries_are_bounded(offline: KubeAccess) -> None:
    send = sender(*[api_error(500) for _ in range(10)])
    with pytest.raises(KubeApiError) as info:
        offline._call("create", "jobs", send, what="slurm-jobs/slurm-1")
    assert info.value.status == 500
    assert str(info.value) == "create jobs slurm-jobs/slurm-1: 500 boom"
    assert len(send.left) == 10 - 4


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_other_4xx_fail_at_once(offline: KubeAccess, status: int) -> None:
    send = sender(api_error(status), _Reply(201, {}))
    with pytest.raises(KubeApiError) as info:
        offline._call("create", "jobs", send)
    assert info.value.status == status
    assert len(send.left) == 1


def test_expected_statuses_are_answers_not_errors(offline: KubeAccess) -> None:
    assert offline._call("create", "jobs", sender(api_error(409)), ok=(409,)).status == 409
    assert offline.metrics.errors_total() == 0
    assert offline.metrics.requests_total("create", "jobs", 409) == 1


def test_apply_gang_checks_objects_before_any_request(offline: KubeAccess) -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "slurm-1", "namespace": "elsewhere",
                        "labels": {"app.kubernetes.io/managed-by": "slurm-k8s-bridge",
                                   "slurm-k8s-bridge.io/cluster": "slurm", "slurm-k8s-bridge.io/job-id": "1"}}}
    with pytest.raises(ValueError, match="namespace elsewhere is not one of the bridge's job namespaces"):
        offline.apply_gang([job])
    job["metadata"]["namespace"] = "slurm-jobs"
    job["metadata"]["labels"]["slurm-k8s-bridge.io/cluster"] = "other"
    with pytest.raises(ValueError, match="lacks the labels"):
        offline.apply_gang([job])
    with pytest.raises(ValueError, match="not ConfigMap"):
        offline.apply_gang([{"kind": "ConfigMap", "metadata": {"name": "x", "namespace": "slurm-jobs"}}])
    assert offline.metrics.requests_total() == 0


# -- the watch cache's bookkeeping ------------------------------------------------------

def pod(name: str, job: str, rv: str, ns: str = "slurm-jobs", phase: str = "Pending") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv,
                         "labels": {"batch.kubernetes.io/job-name": job}},
            "status": {"phase": phase}}


def event(name: str, kind: str, obj: str, reason: str, at: str, ns: str = "slurm-jobs") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": name + at},
            "involvedObject": {"kind": kind, "name": obj, "namespace": ns},
            "reason": reason, "message": f"{reason} at {at}", "lastTimestamp": at}


def test_pods_are_indexed_by_job(offline: KubeAccess) -> None:
    offline._replace(POD, "slurm-jobs", [pod("slurm-1-1-b", "slurm-1", "5"), pod("slurm-1-0-a", "slurm-1", "4"),
                                         pod("slurm-2-0-c", "slurm-2", "6")])
    assert offline.changed.is_set()
    assert [p["metadata"]["name"] for p in offline.pods_of("slurm-jobs", "slurm-1")] == ["slurm-1-0-a", "slurm-1-1-b"]
    offline.changed.clear()
    offline._apply(POD, "MODIFIED", pod("slurm-1-0-a", "slurm-1", "4"))          # same resourceVersion
    assert not offline.changed.is_set()
    offline._apply(POD, "MODIFIED", pod("slurm-1-0-a", "slurm-1", "7", phase="Running"))
    assert offline.changed.is_set()
    assert offline.pods_of("slurm-jobs", "slurm-1")[0]["status"]["phase"] == "Running"
    offline._apply(POD, "DELETED", pod("slurm-1-1-b", "slurm-1", "8"))
    assert [p["metadata"]["name"] for p in offline.pods_of("slurm-jobs", "slurm-1")] == ["slurm-1-0-a"]
    offline._replace(POD, "slurm-jobs", [pod("slurm-2-0-c", "slurm-2", "6")])     # a relist
    assert offline.pods_of("slurm-jobs", "slurm-1") == []
    assert list(offline.pods()) == [("slurm-jobs", "slurm-2-0-c")]


def test_relist_replaces_only_its_namespace() -> None:
    access = KubeAccess(client.ApiClient(), cluster_name="slurm", namespaces=["a", "b"])
    access._replace(JOB, "a", [{"metadata": {"name": "slurm-1", "namespace": "a", "resourceVersion": "1"}}])
    access._replace(JOB, "b", [{"metadata": {"name": "slurm-2", "namespace": "b", "resourceVersion": "2"}}])
    access._replace(JOB, "a", [])
    assert list(access.jobs()) == [("b", "slurm-2")]
    access._replace(NODE, None, [{"metadata": {"name": "gpu-0", "resourceVersion": "3"}}])
    assert list(access.nodes()) == ["gpu-0"]


def test_events_keep_the_latest_per_object_and_reason(offline: KubeAccess) -> None:
    offline._replace(EVENT, "slurm-jobs", [
        event("e1", "Pod", "slurm-1-0-abcde", "FailedScheduling", "2026-01-01T00:00:01Z"),
        event("e2", "Pod", "slurm-1-0-abcde", "FailedScheduling", "2026-01-01T00:00:03Z"),
        event("e3", "Pod", "slurm-1-0-abcde", "Scheduled", "2026-01-01T00:00:02Z"),
        event("e4", "Pod", "web-0", "Scheduled", "2026-01-01T00:00:02Z"),             # not ours
        event("e5", "Job", "slurm-1", "SuccessfulCreate", "2026-01-01T00:00:00Z"),
        event("e6", "ConfigMap", "slurm-1", "Whatever", "2026-01-01T00:00:00Z"),      # not a kind of ours
    ])
    assert [e["metadata"]["name"] for e in offline.events_for("slurm-jobs", "Pod", "slurm-1-0-abcde")] == ["e3", "e2"]
    # an older event of the same reason does not replace the newer one
    offline._apply(EVENT, "ADDED", event("e0", "Pod", "slurm-1-0-abcde", "FailedScheduling", "2026-01-01T00:00:00Z"))
    assert offline.events_for("slurm-jobs", "Pod", "slurm-1-0-abcde")[-1]["metadata"]["name"] == "e2"
    assert offline.events_for("slurm-jobs", "Pod", "web-0") == []
    assert [e["reason"] for e in offline.events_for("slurm-jobs", "Job", "slurm-1")] == ["SuccessfulCreate"]
    offline._apply(EVENT, "DELETED", event("e5", "Job", "slurm-1", "SuccessfulCreate", "2026-01-01T00:00:00Z"))
    assert offline.events_for("slurm-jobs", "Job", "slurm-1") == []


def test_events_memory_is_bounded() -> None:
    access = KubeAccess(client.ApiClient(), cluster_name="slurm", namespaces=["slurm-jobs"], max_events=100)
    for i in range(1000):
        access._apply(EVENT, "ADDED", event(f"e{i}", "Pod", f"slurm-{i}-0-abcde", "Scheduled",
                                            "2026-01-01T00:00:00Z"))
    assert len(access._events.items) == 100
    assert access.events_for("slurm-jobs", "Pod", "slurm-999-0-abcde") != []
    assert access.events_for("slurm-jobs", "Pod", "slurm-0-0-abcde") == []


def test_not_started_is_not_synced(offline: KubeAccess) -> None:
    assert offline.synced() is False
    assert offline.wait_synced(0.05) is False


def test_api_problem_names_the_server_while_requests_get_no_answer(offline: KubeAccess) -> None:
    offline.api_client.configuration.host = "https://10.0.0.1:6443"
    assert offline.api_problem() == ""
    refused = KubeApiError("GET", "/api/v1/nodes", "", None,
                           "no answer (NewConnectionError: Failed to establish a new "
                           "connection: [Errno 111] Connection refused)")
    with pytest.raises(KubeApiError):
        offline._call("list", "nodes", sender(*[refused] * 4))
    assert offline.api_problem() == ("Kubernetes API server https://10.0.0.1:6443 not answering: "
                                     "Connection refused")
    # a refusal with a status is an answer: the server is there
    with pytest.raises(KubeApiError):
        offline._call("create", "jobs", sender(api_error(403)))
    assert offline.api_problem() == ""
    offline._call("list", "nodes", sender(refused, _Reply(200, {})))
    assert offline.api_problem() == ""
