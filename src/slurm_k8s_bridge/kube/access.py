"""Everything the bridge daemon does with the Kubernetes API, in one place.

``KubeAccess`` owns the daemon's view of Kubernetes and every change it makes there:

* a **watch cache** of the bridge's Jobs and Pods (label selector
  ``app.kubernetes.io/managed-by=slurm-k8s-bridge,slurm-k8s-bridge.io/cluster=<cluster>``) and
  of the Events about them in each job namespace, plus every Node. Each resource is listed
  once (its resourceVersion recorded), then watched from there; a ``410 Gone`` (expired
  resourceVersion) relists, any other failure backs off and watches again from the last
  resourceVersion seen. ``changed`` is set on every change, so the daemon's loop wakes up
  early; snapshots are plain dicts, exactly the API's JSON, so the daemon's logic is tested
  with literal dicts. Opt-in (``watch_gpu_pods``, config ``native_gpu_usage``): the pods of
  every namespace that are not finished (field selector), each kept only as a
  ``mirror.GpuPod`` (namespace/name, node, phase, GPU requests, whether it is the bridge's)
  and only while it asks for GPUs on a node;
* **writes** that are idempotent (deterministic names; ``409 AlreadyExists`` on create means
  "already done" once the existing object is read back and proven to be the same Slurm
  job's; ``404`` on delete means "already gone"), rate-limited by a token bucket (``qps`` /
  ``burst``, as client-go) and retried with jittered exponential backoff on ``429``, ``5xx``
  and connection errors only;
* ``ApiMetrics``: request and error counters in the Prometheus text format;
* ``required_rbac``: the exact RBAC the daemon needs, which ``deploy/rbac.yaml`` holds (and
  ``deploy/rbac-native-gpu-usage.yaml``, the pods of all namespaces, when opted in).

Requests go straight through the ApiClient's connection pool with its credentials
(``configuration.auth_settings()``): bodies are sent and read as JSON, never through the
client's generated models, which refuse fields they do not know (a newer API server's, a
CRD's) and cost far more CPU than the watch cache can spend.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
import yaml
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
)

from slurm_k8s_bridge.daemon.mirror import UNFINISHED_PODS, GpuPod, gpu_pod
from slurm_k8s_bridge.core.contract import LABEL_PREFIX, MANAGED_BY

log = logging.getLogger(__name__)

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
CLUSTER_LABEL = LABEL_PREFIX + "cluster"
JOB_ID_LABEL = LABEL_PREFIX + "job-id"
ARRAY_TASK_LABEL = LABEL_PREFIX + "array-task-id"
#: labels the Job controller puts on a Job's pods (the second one before Kubernetes 1.27)
POD_JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
#: ``reportingComponent`` / ``source.component`` of the Events the bridge records
REPORTING_CONTROLLER = "slurm-k8s-bridge"
#: the daemon's ServiceAccount and the namespace it runs in (deploy/rbac.yaml)
SERVICE_ACCOUNT = "slurm-k8s-bridge"
DAEMON_NAMESPACE = "slurm-k8s-bridge"
VOLCANO_GROUP = "scheduling.volcano.sh"
VOLCANO_VERSION = "v1beta1"
USER_AGENT = "slurm-k8s-bridge/0.1"
#: Event messages longer than this are cut (events.k8s.io refuses notes over 1 KiB)
EVENT_MESSAGE_LIMIT = 1024
EVENT_TYPES = ("Normal", "Warning")
_DNS_SUBDOMAIN_MAX = 253


# -- errors -----------------------------------------------------------------------------

class KubeAccessError(Exception):
    """Something the bridge could not do in Kubernetes; the message is for the user."""


class KubeApiError(KubeAccessError):
    """A request the API server refused (``status``) or never answered (``status`` None)."""

    def __init__(self, verb: str, resource: str, what: str, status: int | None, reason: str,
                 retry_after: float | None = None) -> None:
        code = f"{status} {reason}" if status is not None else reason
        super().__init__(f"{verb} {resource} {what}: {code}")
        self.verb = verb
        self.resource = resource
        self.what = what
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class ObjectOwnedElsewhere(KubeAccessError):
    """The deterministic name is taken by an object of another Slurm job, or not the bridge's."""


class GangStillTerminating(KubeAccessError):
    """An object of the same job is still being deleted (a requeued job); try again later."""


class GangBackendMissing(KubeAccessError):
    """The gang scheduler a job asks for (Volcano's PodGroup CRD) is not installed."""


# -- rate limiting ----------------------------------------------------------------------

class TokenBucket:
    """client-go's rate limiter: ``burst`` requests at once, then ``rate`` per second.

    ``acquire`` takes a token, waiting for it when the bucket is empty; waiting callers
    reserve their token first (the count may go negative), so concurrent callers are served
    in order and the long-run rate never exceeds ``rate``.
    """

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now

    def reserve(self) -> float:
        """Take a token now; returns the seconds to wait before using it."""
        with self._lock:
            self._refill()
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def try_acquire(self) -> bool:
        """Take a token if one is there now, without waiting."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def acquire(self) -> float:
        """Take a token, waiting as long as needed; returns the seconds waited."""
        delay = self.reserve()
        if delay > 0:
            self._sleep(delay)
        return delay

    @property
    def tokens(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens


# -- metrics ----------------------------------------------------------------------------

class ApiMetrics:
    """Thread-safe counters of the bridge's Kubernetes API requests.

    * ``<prefix>_requests_total{verb,resource,code}``: every request and its HTTP status
      (``code="error"`` when no answer came back);
    * ``<prefix>_errors_total{verb,resource}``: the failed ones (not counted: outcomes the
      bridge expects, like 409 on create or 404 on delete);
    * ``<prefix>_job_requests_total`` and ``<prefix>_jobs_total``: requests made on behalf
      of a gang (a Kubernetes Job: one Slurm job or array task) and how many gangs made
      them; requests per job = the first over the second (``requests_per_job()``). Gangs
      are remembered in a bounded LRU, so one evicted and seen again is counted twice;
    * ``<prefix>_watch_relists_total{resource}``: full lists (start, after a 410, resync);
    * ``<prefix>_watch_expired_total{resource}``: watches ended by 410 Gone.
    """

    def __init__(self, prefix: str = "slurm_k8s_bridge_api", max_tracked_jobs: int = 100_000) -> None:
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", prefix):
            raise ValueError(f"not a Prometheus metric name prefix: {prefix!r}")
        self.prefix = prefix
        self._max_jobs = max_tracked_jobs
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._relists: dict[str, int] = {}
        self._expired: dict[str, int] = {}
        self._jobs: OrderedDict[str, int] = OrderedDict()
        self._jobs_total = 0
        self._job_requests = 0

    def observe(self, verb: str, resource: str, code: int | str | None, *, error: bool = False,
                job: str | None = None) -> None:
        """Count one request; ``code`` None means no answer (connection error)."""
        key = (verb, resource, "error" if code is None else str(code))
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            if error:
                self._errors[(verb, resource)] = self._errors.get((verb, resource), 0) + 1
            if job is not None:
                self._job_requests += 1
                if job in self._jobs:
                    self._jobs.move_to_end(job)
                    self._jobs[job] += 1
                else:
                    self._jobs[job] = 1
                    self._jobs_total += 1
                    while len(self._jobs) > self._max_jobs:
                        self._jobs.popitem(last=False)

    def observe_error(self, verb: str, resource: str) -> None:
        """Count a failure that is not a request of its own (a watch stream that broke)."""
        with self._lock:
            self._errors[(verb, resource)] = self._errors.get((verb, resource), 0) + 1

    def observe_relist(self, resource: str) -> None:
        with self._lock:
            self._relists[resource] = self._relists.get(resource, 0) + 1

    def observe_expired(self, resource: str) -> None:
        with self._lock:
            self._expired[resource] = self._expired.get(resource, 0) + 1

    def requests_total(self, verb: str | None = None, resource: str | None = None,
                       code: int | str | None = None) -> int:
        """Requests matching every filter given."""
        with self._lock:
            return sum(n for (v, r, c), n in self._requests.items()
                       if (verb is None or v == verb) and (resource is None or r == resource)
                       and (code is None or c == str(code)))

    def errors_total(self, verb: str | None = None, resource: str | None = None) -> int:
        with self._lock:
            return sum(n for (v, r), n in self._errors.items()
                       if (verb is None or v == verb) and (resource is None or r == resource))

    def relists_total(self, resource: str | None = None) -> int:
        with self._lock:
            return sum(n for r, n in self._relists.items() if resource is None or r == resource)

    def expired_total(self, resource: str | None = None) -> int:
        with self._lock:
            return sum(n for r, n in self._expired.items() if resource is None or r == resource)

    def job_requests(self, job: str) -> int:
        """Requests made for one gang (``namespace/name``), while it is remembered."""
        with self._lock:
            return self._jobs.get(job, 0)

    def requests_per_job(self) -> float:
        with self._lock:
            return self._job_requests / self._jobs_total if self._jobs_total else 0.0

    def render_prometheus(self) -> str:
        """The counters in the Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            requests = sorted(self._requests.items())
            errors = sorted(self._errors.items())
            relists = sorted(self._relists.items())
            expired = sorted(self._expired.items())
            job_requests, jobs_total = self._job_requests, self._jobs_total
        p = self.prefix
        lines: list[str] = []

        def family(name: str, help_text: str, samples: list[tuple[dict[str, str], int]]) -> None:
            lines.append(f"# HELP {p}_{name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {p}_{name} counter")
            for labels, value in samples:
                lines.append(f"{p}_{name}{_format_labels(labels)} {value}")

        family("requests_total", "Kubernetes API requests made by slurm-k8s-bridge, by verb, resource "
               "and HTTP status code (error: no answer).",
               [({"verb": v, "resource": r, "code": c}, n) for (v, r, c), n in requests])
        family("errors_total", "Kubernetes API requests that failed (after the answer was read), by "
               "verb and resource.", [({"verb": v, "resource": r}, n) for (v, r), n in errors])
        family("job_requests_total", "Kubernetes API requests made on behalf of one gang (a Slurm job "
               "or array task).", [({}, job_requests)])
        family("jobs_total", "Gangs (Slurm jobs or array tasks) the bridge made Kubernetes API requests "
               "for; requests per job = job_requests_total / jobs_total.", [({}, jobs_total)])
        family("watch_relists_total", "Full lists of a watched resource (start, 410 Gone, resync).",
               [({"resource": r}, n) for r, n in relists])
        family("watch_expired_total", "Watches the API server ended with 410 Gone (resourceVersion too "
               "old), each followed by a relist.", [({"resource": r}, n) for r, n in expired])
        return "\n".join(lines) + "\n"


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in sorted(labels.items())) + "}"


# -- retries ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is retried (429, 5xx, no answer)."""

    attempts: int = 5
    initial_wait: float = 0.2
    max_wait: float = 10.0
    #: (connect, read) seconds for one request
    request_timeout: tuple[float, float] = (10.0, 60.0)

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before attempt ``attempt + 1``: full-jitter exponential, at least what
        the server asked for in Retry-After (both capped at ``max_wait``)."""
        ceiling = min(self.max_wait, self.initial_wait * (2 ** max(0, attempt - 1)))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_wait))
        return delay


RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


def is_retryable(exc: BaseException) -> bool:
    """429, 5xx and requests that got no answer; never any other 4xx (409 is handled by the
    caller as "already exists", not retried)."""
    if isinstance(exc, KubeApiError):
        return exc.status is None or exc.status == 429 or exc.status >= 500
    return False


# -- event names ------------------------------------------------------------------------

def event_name(obj: Mapping[str, Any], reason: str, message: str, type: str = "Normal") -> str:
    """``<object name>.<16 hex digits>``, the same for the same object (uid included when the
    object has one), type, reason and message: recording an Event twice creates it once."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    if not name:
        raise ValueError("the object has no metadata.name")
    parts = [str(obj.get("kind") or ""), str(meta.get("namespace") or ""), name, str(meta.get("uid") or ""),
             type, reason, _event_message(message)]
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:16]
    head = name[: _DNS_SUBDOMAIN_MAX - len(digest) - 1].rstrip(".-")
    return f"{head}.{digest}"


def _event_message(message: str) -> str:
    return message if len(message) <= EVENT_MESSAGE_LIMIT else message[: EVENT_MESSAGE_LIMIT - 3] + "..."


# -- RBAC -------------------------------------------------------------------------------

RBAC_LABELS: Mapping[str, str] = {"app.kubernetes.io/name": "slurm-k8s-bridge",
                                  "app.kubernetes.io/component": "daemon"}
NODES_CLUSTER_ROLE = "slurm-k8s-bridge-nodes"
#: read-only access to the pods of every namespace (``native_gpu_usage: true`` only)
POD_READER_CLUSTER_ROLE = "slurm-k8s-bridge-pod-reader"


def job_namespace_rules(volcano: bool = True) -> list[dict[str, Any]]:
    """What the daemon does in a job namespace, and nothing more."""
    rules: list[dict[str, Any]] = [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "list", "watch"]},
    ]
    if volcano:
        rules.append({"apiGroups": [VOLCANO_GROUP], "resources": ["podgroups"],
                      "verbs": ["create", "get", "delete"]})
    return rules


def native_gpu_usage_rbac(*, daemon_namespace: str = DAEMON_NAMESPACE,
                          service_account: str = SERVICE_ACCOUNT) -> list[dict[str, Any]]:
    """What ``native_gpu_usage: true`` adds: a ClusterRole that lists and watches pods in
    every namespace (nothing else: no get, no secrets, no writes), and its binding."""
    labels = dict(RBAC_LABELS)
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": daemon_namespace}
    return [{
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": POD_READER_CLUSTER_ROLE, "labels": dict(labels)},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}],
    }, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": POD_READER_CLUSTER_ROLE, "labels": dict(labels)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": POD_READER_CLUSTER_ROLE},
        "subjects": [subject],
    }]


def required_rbac(namespaces: Sequence[str], *, daemon_namespace: str = DAEMON_NAMESPACE,
                  service_account: str = SERVICE_ACCOUNT, volcano: bool = True,
                  native_gpu_usage: bool = False) -> list[dict[str, Any]]:
    """The RBAC objects of the daemon's least privilege: its ServiceAccount (in
    ``daemon_namespace``), a Role + RoleBinding in each job namespace, and a ClusterRole +
    ClusterRoleBinding for reading Nodes. ``volcano``: may create PodGroups.
    ``native_gpu_usage`` (the configuration key): also ``native_gpu_usage_rbac``."""
    if not namespaces:
        raise ValueError("at least one job namespace is needed")
    if len(set(namespaces)) != len(namespaces):
        raise ValueError(f"job namespaces repeat: {list(namespaces)}")
    labels = dict(RBAC_LABELS)
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": daemon_namespace}
    objects: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": service_account, "namespace": daemon_namespace, "labels": dict(labels)},
    }]
    for namespace in namespaces:
        objects.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": service_account, "namespace": namespace, "labels": dict(labels)},
            "rules": job_namespace_rules(volcano),
        })
        objects.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": service_account, "namespace": namespace, "labels": dict(labels)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": service_account},
            "subjects": [dict(subject)],
        })
    objects.append({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": NODES_CLUSTER_ROLE, "labels": dict(labels)},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}],
    })
    objects.append({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": NODES_CLUSTER_ROLE, "labels": dict(labels)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODES_CLUSTER_ROLE},
        "subjects": [dict(subject)],
    })
    if native_gpu_usage:
        objects += native_gpu_usage_rbac(daemon_namespace=daemon_namespace,
                                         service_account=service_account)
    return objects


RBAC_YAML_HEADER = """\
# RBAC of the slurm-k8s-bridge daemon: exactly what slurm_k8s_bridge/k8s_access.py uses.
# Generated from slurm_k8s_bridge.kube.access.required_rbac(["slurm-jobs"]); a unit test
# checks they agree. One more job namespace: copy its Role and RoleBinding.
# The daemon runs in namespace slurm-k8s-bridge as ServiceAccount slurm-k8s-bridge.
# With native_gpu_usage: true in the configuration, apply rbac-native-gpu-usage.yaml too.
"""

NATIVE_GPU_USAGE_RBAC_YAML_HEADER = """\
# Only for native_gpu_usage: true (slurm-k8s-bridge configuration), on top of rbac.yaml:
# the daemon lists and watches the pods of every namespace, to show in Slurm (the Comment
# of each mirrored k8s-<node>) the GPUs that Kubernetes-native pods hold on each node.
# Opt-in because it lets the daemon read every pod's spec cluster-wide (environment values
# and commands included); it grants no get, no secrets and no writes.
# Generated from slurm_k8s_bridge.kube.access.native_gpu_usage_rbac(); a unit test checks
# they agree.
"""


def render_rbac_yaml(namespaces: Sequence[str] = ("slurm-jobs",), **kwargs: Any) -> str:
    """``required_rbac`` as the multi-document YAML of deploy/rbac.yaml."""
    body = yaml.safe_dump_all(required_rbac(namespaces, **kwargs), sort_keys=False, explicit_start=True)
    return RBAC_YAML_HEADER + body


def render_native_gpu_usage_rbac_yaml(**kwargs: Any) -> str:
    """``native_gpu_usage_rbac`` as deploy/rbac-native-gpu-usage.yaml."""
    body = yaml.safe_dump_all(native_gpu_usage_rbac(**kwargs), sort_keys=False, explicit_start=True)
    return NATIVE_GPU_USAGE_RBAC_YAML_HEADER + body


# -- the raw REST layer -----------------------------------------------------------------

@dataclass(frozen=True)
class _Kind:
    kind: str
    resource: str
    api_version: str

    def collection(self, namespace: str | None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if namespace is None:
            return f"{base}/{self.resource}"
        return f"{base}/namespaces/{quote(namespace, safe='')}/{self.resource}"

    def item(self, namespace: str | None, name: str) -> str:
        return f"{self.collection(namespace)}/{quote(name, safe='')}"


SERVICE = _Kind("Service", "services", "v1")
JOB = _Kind("Job", "jobs", "batch/v1")
POD_GROUP = _Kind("PodGroup", "podgroups", f"{VOLCANO_GROUP}/{VOLCANO_VERSION}")
POD = _Kind("Pod", "pods", "v1")
NODE = _Kind("Node", "nodes", "v1")
EVENT = _Kind("Event", "events", "v1")
#: the kinds ``apply_gang`` creates, in the order ``translate.render`` lists them
GANG_KINDS: Mapping[str, _Kind] = {"Service": SERVICE, "PodGroup": POD_GROUP, "Job": JOB}


@dataclass(frozen=True)
class _Reply:
    status: int
    body: dict[str, Any]


class _Http:
    """JSON requests over an ApiClient's connection pool, with its credentials."""

    def __init__(self, api_client: Any) -> None:
        self.configuration = api_client.configuration
        self.pool = api_client.rest_client.pool_manager
        self.host = str(self.configuration.host).rstrip("/")

    def _headers(self, query: list[tuple[str, str]]) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        for setting in (self.configuration.auth_settings() or {}).values():
            if not setting.get("value"):
                continue
            if setting.get("in") == "header":
                headers[setting["key"]] = setting["value"]
            elif setting.get("in") == "query":
                query.append((setting["key"], setting["value"]))
        return headers

    def open(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
             body: Any = None, timeout: tuple[float, float]) -> Any:
        """Send one request; the urllib3 response, unread. Raises ``KubeApiError`` with the
        status for any non-2xx answer, with ``status`` None when no answer came."""
        params = [(k, _query_value(v)) for k, v in (query or {}).items() if v is not None]
        headers = self._headers(params)
        url = self.host + path + ("?" + urlencode(params) if params else "")
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode("utf-8")
        try:
            resp = self.pool.request(method, url, body=data, headers=headers, preload_content=False,
                                     timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
                                     retries=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeApiError(method, path, "", None, f"no answer ({type(exc).__name__}: {exc})") from exc
        if not 200 <= resp.status <= 299:
            try:
                raw = resp.data
            except (urllib3.exceptions.HTTPError, OSError):
                raw = b""
            finally:
                resp.release_conn()
            raise _status_error(method, path, resp.status, raw, resp.headers.get("Retry-After"))
        return resp

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                body: Any = None, timeout: tuple[float, float]) -> _Reply:
        resp = self.open(method, path, query=query, body=body, timeout=timeout)
        try:
            raw = resp.data
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeApiError(method, path, "", None, f"answer cut ({type(exc).__name__}: {exc})") from exc
        finally:
            resp.release_conn()
        return _Reply(resp.status, _json_object(raw))


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_object(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {"message": raw[:500].decode("utf-8", "replace")}
    return data if isinstance(data, dict) else {"items": data}


def _status_error(method: str, path: str, status: int, raw: bytes | None,
                  retry_after: str | None) -> KubeApiError:
    body = _json_object(raw)
    reason = str(body.get("message") or body.get("reason") or "")
    after = None
    if retry_after:
        try:
            after = float(retry_after)
        except ValueError:
            after = None
    return KubeApiError(method, path, "", status, reason, retry_after=after)


# -- the watch cache --------------------------------------------------------------------

class _Gone(Exception):
    """The watch's resourceVersion expired (410): relist."""


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop managedFields: large, and never read by the bridge."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = _meta(obj)
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _pod_job_name(pod: Mapping[str, Any]) -> str | None:
    labels = _meta(pod).get("labels") or {}
    for label in POD_JOB_NAME_LABELS:
        if labels.get(label):
            return str(labels[label])
    for ref in _meta(pod).get("ownerReferences") or ():
        if ref.get("kind") == "Job" and ref.get("controller"):
            return str(ref.get("name"))
    return None


class _Store:
    """Objects of one resource by (namespace, name), with pods also indexed by Job name."""

    def __init__(self, index: Callable[[Mapping[str, Any]], str | None] | None = None) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self._index_of = index
        self.index: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def _unindex(self, key: tuple[str, str], obj: Mapping[str, Any]) -> None:
        if self._index_of is None:
            return
        owner = self._index_of(obj)
        if owner is not None:
            group = self.index.get((key[0], owner))
            if group is not None:
                group.pop(key[1], None)
                if not group:
                    del self.index[(key[0], owner)]

    def upsert(self, obj: dict[str, Any]) -> bool:
        key = _key(obj)
        old = self.items.get(key)
        if old is not None and _meta(old).get("resourceVersion") == _meta(obj).get("resourceVersion"):
            return False
        if old is not None:
            self._unindex(key, old)
        self.items[key] = obj
        if self._index_of is not None:
            owner = self._index_of(obj)
            if owner is not None:
                self.index.setdefault((key[0], owner), {})[key[1]] = obj
        return True

    def remove(self, obj: Mapping[str, Any]) -> bool:
        key = _key(obj)
        old = self.items.pop(key, None)
        if old is None:
            return False
        self._unindex(key, old)
        return True

    def replace(self, namespace: str | None, objects: Sequence[dict[str, Any]]) -> bool:
        """Make the namespace's (or, for None, every) content exactly ``objects``."""
        fresh = {_key(o) for o in objects}
        changed = False
        for key in [k for k in self.items if (namespace is None or k[0] == namespace) and k not in fresh]:
            changed |= self.remove(self.items[key])
        for obj in objects:
            changed |= self.upsert(obj)
        return changed


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _parse_time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def event_time(event: Mapping[str, Any]) -> datetime:
    """When an Event (core/v1 or one written through events.k8s.io) last happened."""
    series = event.get("series") or {}
    for value in (series.get("lastObservedTime"), event.get("lastTimestamp"), event.get("eventTime"),
                  event.get("firstTimestamp"), _meta(event).get("creationTimestamp")):
        parsed = _parse_time(value)
        if parsed is not None:
            return parsed
    return _EPOCH


class _EventStore:
    """The latest Event per (namespace, kind, name, reason), at most ``limit`` of them (the
    least recently updated go first)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: OrderedDict[tuple[str, str, str, str], dict[str, Any]] = OrderedDict()

    @staticmethod
    def key(event: Mapping[str, Any]) -> tuple[str, str, str, str]:
        involved = event.get("involvedObject") or {}
        namespace = str(involved.get("namespace") or _meta(event).get("namespace") or "")
        return (namespace, str(involved.get("kind") or ""), str(involved.get("name") or ""),
                str(event.get("reason") or ""))

    def upsert(self, event: dict[str, Any]) -> bool:
        key = self.key(event)
        old = self.items.get(key)
        if old is not None:
            same = _meta(old).get("name") == _meta(event).get("name")
            if same and _meta(old).get("resourceVersion") == _meta(event).get("resourceVersion"):
                return False
            if not same and event_time(old) > event_time(event):
                return False
        self.items[key] = event
        self.items.move_to_end(key)
        while len(self.items) > self.limit:
            self.items.popitem(last=False)
        return True

    def remove(self, event: Mapping[str, Any]) -> bool:
        key = self.key(event)
        old = self.items.get(key)
        if old is not None and _meta(old).get("name") == _meta(event).get("name"):
            del self.items[key]
            return True
        return False

    def replace(self, namespace: str | None, events: Sequence[dict[str, Any]]) -> bool:
        fresh = {(self.key(e), _meta(e).get("name")) for e in events}
        changed = False
        for key in [k for k in self.items if namespace is None or k[0] == namespace]:
            if (key, _meta(self.items[key]).get("name")) not in fresh:
                del self.items[key]
                changed = True
        for event in sorted(events, key=event_time):
            changed |= self.upsert(event)
        return changed


class _GpuPodStore:
    """``GpuPod`` records of the pods that hold GPUs on a node, by (namespace, name); any
    other pod is dropped (a change that makes a kept pod uninteresting removes it)."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], GpuPod] = {}

    def upsert(self, pod: GpuPod) -> bool:
        if not pod.holds_gpus:
            return self.remove(pod)
        key = (pod.namespace, pod.name)
        if self.items.get(key) == pod:
            return False
        self.items[key] = pod
        return True

    def remove(self, pod: GpuPod) -> bool:
        return self.items.pop((pod.namespace, pod.name), None) is not None

    def replace(self, namespace: str | None, pods: Sequence[GpuPod]) -> bool:
        """Make the namespace's (or, for None, every) content exactly ``pods``."""
        fresh = {k: v for k, v in self.items.items() if namespace is not None and k[0] != namespace}
        fresh.update(((p.namespace, p.name), p) for p in pods if p.holds_gpus)
        if fresh == self.items:
            return False
        self.items = fresh
        return True


class _Reflector:
    """List then watch one resource in one namespace (or cluster-wide) into a sink.

    ``field_selector``: sent with the list and the watch; ``store``: the cache it fills
    (default: the resource's); ``shrink``: what is kept of each object (default: the
    object); ``optional``: not waited for by ``KubeAccess.synced``."""

    def __init__(self, access: KubeAccess, kind: _Kind, namespace: str | None,
                 label_selector: str | None, *, field_selector: str | None = None,
                 store: str | None = None, shrink: Callable[[dict[str, Any]], Any] | None = None,
                 optional: bool = False) -> None:
        self.access = access
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.store = store or kind.resource
        self.shrink = shrink
        self.optional = optional
        self.resource_version: str | None = None
        self.synced = False
        self.last_error: str | None = None
        #: HTTP status of the last failure (403: RBAC), None after a success
        self.last_status: int | None = None
        self._resp: Any = None
        self._resp_lock = threading.Lock()
        self._restart_from: str | None = None
        self._restart = False
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"k8s-watch-{kind.resource}-{namespace or 'cluster'}")

    @property
    def where(self) -> str:
        if self.namespace:
            return f"{self.kind.resource} in {self.namespace}"
        return f"{self.kind.resource} in all namespaces" if self.kind is POD else self.kind.resource

    def _query(self) -> dict[str, Any]:
        query = {"labelSelector": self.label_selector} if self.label_selector else {}
        if self.field_selector:
            query["fieldSelector"] = self.field_selector
        return query

    def _keep(self, obj: dict[str, Any]) -> Any:
        typed = self._typed(obj)
        return self.shrink(typed) if self.shrink is not None else typed

    def _run(self) -> None:
        stop = self.access._stop
        failures = 0
        while not stop.is_set():
            try:
                if self.resource_version is None:
                    self._relist()
                started = time.monotonic()
                self._watch()
                failures = 0 if time.monotonic() - started > 1.0 else failures + 1
                if failures > 3:      # the server keeps ending watches at once: slow down
                    stop.wait(_backoff(failures - 3))
            except _Gone as gone:
                log.info("watch of %s expired (%s): listing again", self.where, gone)
                self.access.metrics.observe_expired(self.kind.resource)
                self.resource_version = None
            except Exception as exc:  # noqa: BLE001 - a watch must survive anything
                if stop.is_set():
                    break
                if self._take_restart():
                    continue
                failures += 1
                self.last_error = str(exc)
                self.last_status = exc.status if isinstance(exc, KubeApiError) else None
                log.warning("watch of %s failed (%s); retrying", self.where, exc)
                stop.wait(_backoff(failures))
            self._take_restart()

    def _take_restart(self) -> bool:
        if not self._restart:
            return False
        self._restart = False
        self.resource_version = self._restart_from
        self._restart_from = None
        return True

    def _relist(self) -> None:
        objects: list[dict[str, Any]] = []
        query: dict[str, Any] = {**self._query(), "limit": self.access.list_page_size}
        version = None
        while True:
            page = dict(query)
            reply = self.access._call(
                "list", self.kind.resource,
                partial(self.access._request, "GET", self.kind.collection(self.namespace), query=page),
                what=self.namespace or "")
            meta = reply.body.get("metadata") or {}
            version = version or meta.get("resourceVersion")
            objects.extend(self._keep(o) for o in reply.body.get("items") or ())
            token = meta.get("continue")
            if not token:
                break
            query["continue"] = token
        self.access._replace(self.kind, self.namespace, objects, store=self.store)
        self.access.metrics.observe_relist(self.kind.resource)
        self.resource_version = version
        self.last_error = None
        self.last_status = None
        if not self.synced:
            self.synced = True
            self.access._notify()

    def _typed(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A list's items lack kind and apiVersion (watch events have them): add them."""
        obj.setdefault("apiVersion", self.kind.api_version)
        obj.setdefault("kind", self.kind.kind)
        return _strip(obj)

    def _watch(self) -> None:
        access = self.access
        seconds = int(access.watch_timeout_seconds * random.uniform(1.0, 1.5))
        query = {**self._query(), "watch": True, "resourceVersion": self.resource_version,
                 "allowWatchBookmarks": True, "timeoutSeconds": seconds}
        access._bucket.acquire()
        try:
            resp = access._watch_http.open("GET", self.kind.collection(self.namespace), query=query,
                                           timeout=(access.retry.request_timeout[0], seconds + 30))
        except KubeApiError as exc:
            access.metrics.observe("watch", self.kind.resource, exc.status, error=True)
            if exc.status == 410:
                raise _Gone(exc.reason) from exc
            raise
        access.metrics.observe("watch", self.kind.resource, resp.status)
        self.last_error = None
        self.last_status = None
        with self._resp_lock:
            self._resp = resp
        try:
            if access._stop.is_set() or self._restart:
                return
            for line in _lines(resp):
                event = json.loads(line)
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    code = obj.get("code")
                    if code == 410:
                        raise _Gone(obj.get("message") or "Expired")
                    access.metrics.observe_error("watch", self.kind.resource)
                    raise KubeAccessError(f"watch {self.where}: {code} {obj.get('message')}")
                version = _meta(obj).get("resourceVersion")
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    access._apply(self.kind, kind, self._keep(obj), store=self.store)
                if version:
                    self.resource_version = str(version)
                if access._stop.is_set():
                    return
        except (urllib3.exceptions.HTTPError, OSError):
            if not (access._stop.is_set() or self._restart):
                access.metrics.observe_error("watch", self.kind.resource)
            raise
        finally:
            with self._resp_lock:
                self._resp = None
            _close(resp)

    def interrupt(self, resource_version: str | None = None, *, restart: bool = False) -> None:
        """Break the current watch at once (stop, or ``restart`` from ``resource_version``;
        None relists)."""
        if restart:
            self._restart_from = resource_version
            self._restart = True
        with self._resp_lock:
            resp = self._resp
        if resp is not None:
            _shutdown(resp)


def _backoff(failures: int) -> float:
    return random.uniform(0.5, 1.0) * min(30.0, 0.5 * float(2 ** min(failures, 10)))


def _lines(resp: Any) -> Iterator[str]:
    """The non-empty lines of a streamed response (one watch event each)."""
    buffer = bytearray()
    for chunk in resp.stream(amt=None, decode_content=True):
        buffer.extend(chunk)
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buffer[start:end]).strip()
            start = end + 1
            if line:
                yield line.decode("utf-8", "replace")
        del buffer[:start]
    tail = bytes(buffer).strip()
    if tail:
        yield tail.decode("utf-8", "replace")


def _shutdown(resp: Any) -> None:
    """Unblock a thread reading ``resp`` (shut the socket down under it)."""
    try:
        conn = getattr(resp, "connection", None) or getattr(resp, "_connection", None)
        sock = getattr(conn, "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _close(resp: Any) -> None:
    for close in (resp.close, resp.release_conn):
        try:
            close()
        except Exception as exc:  # noqa: BLE001 - closing a broken stream may fail in many ways
            log.debug("closing a watch stream: %s", exc)


# -- KubeAccess -------------------------------------------------------------------------

class KubeAccess:
    """The daemon's single door to the Kubernetes API: watch cache, idempotent writes, metrics.

    ``api_client`` is a ``kubernetes.client.ApiClient`` (its configuration gives the server
    and the credentials: give it the daemon's ServiceAccount, see ``required_rbac``).
    ``namespaces``: the job namespaces; the bridge creates and watches objects only there.
    ``gpu_pods``: also watch the pods of every namespace (``watch_gpu_pods``).
    Snapshot methods return the cached objects themselves: treat them as read-only.
    """

    def __init__(self, api_client: Any, *, cluster_name: str, namespaces: Sequence[str],
                 qps: float = 20, burst: int = 40, metrics: ApiMetrics | None = None,
                 retry: RetryPolicy | None = None, watch_timeout_seconds: int = 60,
                 max_events: int = 5000, list_page_size: int = 500,
                 gpu_pods: bool = False) -> None:
        if not cluster_name:
            raise ValueError("cluster_name is required")
        if not namespaces:
            raise ValueError("at least one job namespace is required")
        self.api_client = api_client
        self.cluster_name = cluster_name
        self.namespaces: tuple[str, ...] = tuple(dict.fromkeys(namespaces))
        self.metrics = metrics if metrics is not None else ApiMetrics()
        self.retry = retry if retry is not None else RetryPolicy()
        self.watch_timeout_seconds = watch_timeout_seconds
        self.list_page_size = list_page_size
        self.label_selector = f"{MANAGED_BY_LABEL}={MANAGED_BY},{CLUSTER_LABEL}={cluster_name}"
        self._bucket = TokenBucket(qps, burst)
        self._http = _Http(api_client)
        self._watch_client: Any = None
        self._watch_http = self._http
        self._stop = threading.Event()
        self._lock = threading.Lock()
        #: set on every change of the cache (and when it becomes synced)
        self.changed = threading.Event()
        self._jobs = _Store()
        self._pods = _Store(index=_pod_job_name)
        self._nodes = _Store()
        self._events = _EventStore(max_events)
        self._gpu_pods = _GpuPodStore()
        self._watching_gpu_pods = False
        self._gpu_pod_reflector: _Reflector | None = None
        self._our_name = re.compile(rf"^{re.escape(cluster_name)}-[0-9]")
        self._reflectors: list[_Reflector] = []
        self._volcano: tuple[float, bool] | None = None
        self._started = False
        if gpu_pods:
            self.watch_gpu_pods()

    # -- lifecycle --

    def start(self) -> KubeAccess:
        """Start the watch threads (once)."""
        if self._started:
            return self
        self._started = True
        self._stop.clear()
        reflectors = []
        for namespace in self.namespaces:
            reflectors.append(_Reflector(self, JOB, namespace, self.label_selector))
            reflectors.append(_Reflector(self, POD, namespace, self.label_selector))
            reflectors.append(_Reflector(self, EVENT, namespace, None))
        reflectors.append(_Reflector(self, NODE, None, None))
        if self._watching_gpu_pods:
            self._gpu_pod_reflector = self._new_gpu_pod_reflector()
            reflectors.append(self._gpu_pod_reflector)
        self._reflectors = reflectors
        self._watch_client = self._make_watch_client(len(reflectors))
        if self._watch_client is not None:
            self._watch_http = _Http(self._watch_client)
        for reflector in reflectors:
            reflector.thread.start()
        return self

    def watch_gpu_pods(self) -> None:
        """Also watch the pods of every namespace that are not finished, keeping of each
        only its ``GpuPod``, and only while it holds GPUs on a node (``gpu_pods()``). Needs
        ``native_gpu_usage_rbac``; without it the watch keeps retrying and ``gpu_pods()``
        is None. Not waited for by ``synced()``. Idempotent; starts it now when the cache
        is running."""
        if self._watching_gpu_pods:
            return
        self._watching_gpu_pods = True
        if self._started:
            reflector = self._new_gpu_pod_reflector()
            self._gpu_pod_reflector = reflector
            self._reflectors.append(reflector)
            reflector.thread.start()

    def _new_gpu_pod_reflector(self) -> _Reflector:
        return _Reflector(self, POD, None, None, field_selector=UNFINISHED_PODS, store="gpu_pods",
                          shrink=partial(gpu_pod, cluster_name=self.cluster_name), optional=True)

    def _make_watch_client(self, watches: int) -> Any:
        """A second ApiClient, same credentials, whose pool holds one connection per watch
        (long-lived watches must not starve, or be discarded by, the writers' pool)."""
        try:
            from kubernetes import client as k8s_client

            configuration = copy.deepcopy(self.api_client.configuration)
            configuration.connection_pool_maxsize = max(int(configuration.connection_pool_maxsize or 1),
                                                        watches + 2)
            return k8s_client.ApiClient(configuration=configuration)
        except Exception as exc:  # noqa: BLE001 - fall back to the caller's client
            log.warning("watches share the caller's ApiClient (%s)", exc)
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every watch thread and wait for them (at most ``timeout`` seconds in all)."""
        self._stop.set()
        for reflector in self._reflectors:
            reflector.interrupt()
        deadline = time.monotonic() + timeout
        for reflector in self._reflectors:
            reflector.thread.join(max(0.0, deadline - time.monotonic()))
        alive = [r.thread.name for r in self._reflectors if r.thread.is_alive()]
        if alive:
            log.warning("watch threads still running after stop(): %s", ", ".join(alive))
        if self._watch_client is not None:
            try:
                self._watch_client.close()
            except Exception as exc:  # noqa: BLE001
                log.debug("closing the watch ApiClient: %s", exc)
            self._watch_client = None
            self._watch_http = self._http
        self._started = False

    def __enter__(self) -> KubeAccess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def synced(self) -> bool:
        """True once every watched resource has been listed (``watch_gpu_pods``' aside)."""
        return bool(self._reflectors) and all(r.synced for r in self._reflectors if not r.optional)

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.synced():
            if time.monotonic() >= deadline or self._stop.is_set():
                return False
            self._stop.wait(0.05)
        return True

    def sync_errors(self) -> dict[str, str]:
        """The last error of every watch that is failing now (e.g. RBAC), by what it watches."""
        return {r.where: r.last_error for r in self._reflectors if r.last_error}

    def wait_for_change(self, timeout: float | None = None) -> bool:
        """Wait until the cache changes; clears ``changed`` before returning, so read the
        snapshots after this returns."""
        fired = self.changed.wait(timeout)
        self.changed.clear()
        return fired

    def resync(self, resource_version: str | None = None) -> None:
        """Restart every watch: relist (``resource_version`` None), or watch again from
        ``resource_version`` (a very old one makes the server answer 410, then relist)."""
        for reflector in self._reflectors:
            reflector.interrupt(resource_version, restart=True)

    def _notify(self) -> None:
        self.changed.set()

    # -- snapshots --

    def jobs(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The bridge's Jobs of this cluster, by (namespace, name)."""
        with self._lock:
            return dict(self._jobs.items)

    def pods_of(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        """The pods of one Job, by name."""
        with self._lock:
            group = self._pods.index.get((namespace, job_name), {})
            return [group[name] for name in sorted(group)]

    def pods(self) -> dict[tuple[str, str], dict[str, Any]]:
        with self._lock:
            return dict(self._pods.items)

    def nodes(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: obj for (_, name), obj in self._nodes.items.items()}

    def gpu_pods(self) -> list[GpuPod] | None:
        """Every pod (of any namespace) that holds GPUs on a node, the bridge's own
        included (``GpuPod.bridge``). None when not known: not watched, not listed yet, or
        the API server refuses the watch (``gpu_pods_forbidden``)."""
        reflector = self._gpu_pod_reflector
        if reflector is None or not reflector.synced or self.gpu_pods_forbidden():
            return None
        with self._lock:
            return list(self._gpu_pods.items.values())

    def gpu_pods_forbidden(self) -> bool:
        """The API server refuses the bridge the pods of all namespaces (401/403: the RBAC
        of ``native_gpu_usage_rbac`` is missing)."""
        reflector = self._gpu_pod_reflector
        return reflector is not None and reflector.last_status in (401, 403)

    def events_for(self, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
        """The latest Event of each reason about one object, oldest first."""
        with self._lock:
            found = [e for (ns, k, n, _), e in self._events.items.items()
                     if ns == namespace and k == kind and n == name]
        return sorted(found, key=event_time)

    # -- cache updates (reflector threads) --

    def _is_ours(self, event: Mapping[str, Any]) -> bool:
        involved = event.get("involvedObject") or {}
        return (involved.get("kind") in ("Pod", "Job", "PodGroup")
                and bool(self._our_name.match(str(involved.get("name") or ""))))

    def _store(self, kind: _Kind, store: str | None = None) -> Any:
        return {"jobs": self._jobs, "pods": self._pods, "nodes": self._nodes, "events": self._events,
                "gpu_pods": self._gpu_pods}[store or kind.resource]

    def _replace(self, kind: _Kind, namespace: str | None, objects: list[Any],
                 store: str | None = None) -> None:
        if kind is EVENT:
            objects = [o for o in objects if self._is_ours(o)]
        with self._lock:
            changed = self._store(kind, store).replace(namespace, objects)
        if changed:
            self._notify()

    def _apply(self, kind: _Kind, change: str, obj: Any, store: str | None = None) -> None:
        if kind is EVENT and not self._is_ours(obj):
            return
        with self._lock:
            target = self._store(kind, store)
            changed = target.remove(obj) if change == "DELETED" else target.upsert(obj)
        if changed:
            self._notify()

    # -- requests --

    def _call(self, verb: str, resource: str, send: Callable[[], _Reply], *,
              ok: Collection[int] = (), job: str | None = None, what: str = "") -> _Reply:
        """One request through the rate limiter, retried on 429/5xx/no answer. A status in
        ``ok`` (an expected outcome, like 409 on create) is returned, not raised."""

        def attempt() -> _Reply:
            self._bucket.acquire()
            try:
                reply = send()
            except KubeApiError as exc:
                if exc.status is not None and exc.status in ok:
                    self.metrics.observe(verb, resource, exc.status, job=job)
                    return _Reply(exc.status, {"message": exc.reason})
                self.metrics.observe(verb, resource, exc.status, error=True, job=job)
                raise KubeApiError(verb, resource, what, exc.status, exc.reason, exc.retry_after) from exc
            self.metrics.observe(verb, resource, reply.status, job=job)
            return reply

        retrying = Retrying(
            stop=stop_after_attempt(self.retry.attempts) | stop_when_event_set(self._stop),
            wait=self._retry_wait,
            retry=retry_if_exception(is_retryable),
            reraise=True,
        )
        result: _Reply = retrying(attempt)
        return result

    def _retry_wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        after = exc.retry_after if isinstance(exc, KubeApiError) else None
        return self.retry.wait(state.attempt_number, after)

    def _request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                 body: Any = None) -> _Reply:
        return self._http.request(method, path, query=query, body=body, timeout=self.retry.request_timeout)

    # -- writes --

    def apply_gang(self, objects: Sequence[Mapping[str, Any]]) -> list[str]:
        """Create a job's objects in order (Service, [PodGroup], Job: ``translate.render``).

        Idempotent: an object that already exists and carries this Slurm job's labels is
        left as it is. Returns ``Kind/name`` of the objects this call created (one whose
        create succeeded unanswered, then got 409 on the retry, counts as existing).
        Raises ``ObjectOwnedElsewhere`` when a name is taken by another Slurm job or by
        something the bridge does not manage, ``GangStillTerminating`` when the existing
        object is being deleted, ``GangBackendMissing`` when a PodGroup is asked for and
        Volcano is not installed (before anything is created).
        """
        bodies = [self._gang_body(o) for o in objects]
        if any(b["kind"] == "PodGroup" for b in bodies) and not self.volcano_installed():
            raise GangBackendMissing(
                f"the job asks for Volcano gang scheduling but this cluster has no "
                f"{VOLCANO_GROUP}/{VOLCANO_VERSION} podgroups (Volcano is not installed); "
                "install Volcano or set the partition's gang to builtin")
        created: list[str] = []
        for body in bodies:
            if self._create_one(body):
                created.append(f"{body['kind']}/{body['metadata']['name']}")
        return created

    def _gang_body(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        body = self.api_client.sanitize_for_serialization(obj)
        if not isinstance(body, dict):
            raise TypeError(f"not a Kubernetes object: {obj!r}")
        kind = body.get("kind")
        if kind not in GANG_KINDS:
            raise ValueError(f"apply_gang creates Services, PodGroups and Jobs, not {kind}")
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace"), meta.get("name")
        if not name or not namespace:
            raise ValueError(f"{kind} needs metadata.name and metadata.namespace")
        if namespace not in self.namespaces:
            raise ValueError(f"{kind} {namespace}/{name}: namespace {namespace} is not one of the bridge's "
                             f"job namespaces ({', '.join(self.namespaces)})")
        labels = meta.get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or labels.get(CLUSTER_LABEL) != self.cluster_name:
            raise ValueError(f"{kind} {namespace}/{name} lacks the labels {self.label_selector}")
        if not labels.get(JOB_ID_LABEL):
            raise ValueError(f"{kind} {namespace}/{name} lacks the label {JOB_ID_LABEL}")
        return body

    def _create_one(self, body: dict[str, Any]) -> bool:
        kind = GANG_KINDS[body["kind"]]
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        what = f"{namespace}/{name}"
        job = _gang_key(namespace, body["metadata"].get("labels") or {}, self.cluster_name)
        for _ in range(3):
            reply = self._call("create", kind.resource,
                               lambda: self._request("POST", kind.collection(namespace), body=body),
                               ok=(409,), job=job, what=what)
            if reply.status != 409:
                return True
            existing = self._call("get", kind.resource,
                                  lambda: self._request("GET", kind.item(namespace, name)),
                                  ok=(404,), job=job, what=what)
            if existing.status == 404:      # deleted between our create and get: create again
                continue
            _check_same_job(body, existing.body)
            if _meta(existing.body).get("deletionTimestamp"):
                raise GangStillTerminating(
                    f"{kind.kind} {what} of {_describe_owner(existing.body)} is still being deleted; "
                    "it will be created again once it is gone")
            return False
        raise KubeAccessError(f"{kind.kind} {what} keeps disappearing between create and read")

    def delete_gang(self, namespace: str, name: str) -> list[str]:
        """Delete a job's Job (its pods in the background), Service and PodGroup by name.

        Idempotent: what is already gone is fine. Only objects carrying the bridge's labels
        for this cluster are deleted (``ObjectOwnedElsewhere`` otherwise); the delete is
        conditional on the uid that was checked. Returns ``Kind/name`` of what it deleted.
        """
        if namespace not in self.namespaces:
            raise ValueError(f"namespace {namespace} is not one of the bridge's job namespaces "
                             f"({', '.join(self.namespaces)})")
        kinds = [JOB, SERVICE] + ([POD_GROUP] if self.volcano_installed() else [])
        deleted = []
        for kind in kinds:
            if self._delete_one(kind, namespace, name):
                deleted.append(f"{kind.kind}/{name}")
        return deleted

    def _delete_one(self, kind: _Kind, namespace: str, name: str) -> bool:
        what = f"{namespace}/{name}"
        job = f"{namespace}/{name}"
        with self._lock:
            cached = self._jobs.items.get((namespace, name)) if kind is JOB else None
        for _ in range(3):
            if cached is not None:
                current: dict[str, Any] = cached
                cached = None
            else:
                reply = self._call("get", kind.resource, lambda: self._request("GET", kind.item(namespace, name)),
                                   ok=(404,), job=job, what=what)
                if reply.status == 404:
                    return False
                current = reply.body
            labels = _meta(current).get("labels") or {}
            if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or labels.get(CLUSTER_LABEL) != self.cluster_name:
                raise ObjectOwnedElsewhere(
                    f"{kind.kind} {what} is not managed by slurm-k8s-bridge for cluster {self.cluster_name}; "
                    "not deleting it")
            options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions",
                                       "propagationPolicy": "Background"}
            if _meta(current).get("uid"):
                options["preconditions"] = {"uid": _meta(current)["uid"]}
            reply = self._call("delete", kind.resource,
                               partial(self._request, "DELETE", kind.item(namespace, name), body=options),
                               ok=(404, 409), job=job, what=what)
            if reply.status == 404:
                return False
            if reply.status == 409:       # replaced since we read it (uid precondition): look again
                continue
            return True
        raise KubeAccessError(f"{kind.kind} {what} keeps being replaced while the bridge deletes it")

    def record_event(self, obj: Mapping[str, Any], reason: str, message: str, type: str = "Normal") -> str:
        """Record a core/v1 Event about ``obj`` (a Job, Pod, Service or PodGroup of the bridge,
        as a dict). The name is ``event_name(...)``: recording the same Event again is a
        no-op. Returns the Event's name."""
        if type not in EVENT_TYPES:
            raise ValueError(f"event type must be Normal or Warning, not {type!r}")
        if not reason:
            raise ValueError("an Event needs a reason")
        body_obj = self.api_client.sanitize_for_serialization(obj)
        meta = _meta(body_obj)
        if not body_obj.get("kind") or not meta.get("name"):
            raise ValueError("an Event needs an object with kind and metadata.name")
        namespace = str(meta.get("namespace") or "")
        if namespace not in self.namespaces:
            raise ValueError(f"events are recorded only in the bridge's job namespaces, not {namespace!r}")
        name = event_name(body_obj, reason, message, type)
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        involved = {"apiVersion": body_obj.get("apiVersion"), "kind": body_obj.get("kind"),
                    "namespace": namespace, "name": meta.get("name")}
        if meta.get("uid"):
            involved["uid"] = meta["uid"]
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {k: v for k, v in involved.items() if v},
            "reason": reason,
            "message": _event_message(message),
            "type": type,
            "source": {"component": REPORTING_CONTROLLER},
            "reportingComponent": REPORTING_CONTROLLER,
            "reportingInstance": _instance_name(),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        job = _gang_key(namespace, meta.get("labels") or {}, self.cluster_name)
        self._call("create", "events", lambda: self._request("POST", EVENT.collection(namespace), body=event),
                   ok=(409,), job=job, what=f"{namespace}/{name}")
        return name

    # -- discovery --

    def volcano_installed(self, max_age: float = 60.0) -> bool:
        """Whether the API server serves scheduling.volcano.sh/v1beta1 podgroups (cached)."""
        now = time.monotonic()
        if self._volcano is not None and now - self._volcano[0] < max_age:
            return self._volcano[1]
        reply = self._call("get", "discovery",
                           lambda: self._request("GET", f"/apis/{VOLCANO_GROUP}/{VOLCANO_VERSION}"),
                           ok=(404,), what=f"{VOLCANO_GROUP}/{VOLCANO_VERSION}")
        served = reply.status != 404 and any(r.get("name") == POD_GROUP.resource
                                             for r in reply.body.get("resources") or ())
        self._volcano = (now, served)
        return served


def _gang_key(namespace: str, labels: Mapping[str, Any], cluster: str) -> str | None:
    """``namespace/<cluster>-<job id>[-<array task>]``: the gang a request is made for."""
    job_id = labels.get(JOB_ID_LABEL)
    if not job_id:
        return None
    task = labels.get(ARRAY_TASK_LABEL)
    return f"{namespace}/{cluster}-{job_id}" + (f"-{task}" if task else "")


def _identity(labels: Mapping[str, Any]) -> tuple[Any, ...]:
    return (labels.get(MANAGED_BY_LABEL), labels.get(CLUSTER_LABEL), labels.get(JOB_ID_LABEL),
            labels.get(ARRAY_TASK_LABEL))


def _describe_owner(obj: Mapping[str, Any]) -> str:
    labels = _meta(obj).get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
        return "something not managed by slurm-k8s-bridge"
    job = f"Slurm job {labels.get(JOB_ID_LABEL)}"
    if labels.get(ARRAY_TASK_LABEL):
        job += f" (array task {labels.get(ARRAY_TASK_LABEL)})"
    return f"{job} of cluster {labels.get(CLUSTER_LABEL)}"


def _check_same_job(desired: Mapping[str, Any], existing: Mapping[str, Any]) -> None:
    want = _meta(desired).get("labels") or {}
    have = _meta(existing).get("labels") or {}
    if _identity(want) != _identity(have):
        meta = _meta(desired)
        raise ObjectOwnedElsewhere(
            f"{desired.get('kind')} {meta.get('namespace')}/{meta.get('name')} already exists and belongs to "
            f"{_describe_owner(existing)}, not to {_describe_owner(desired)}; slurm-k8s-bridge will not touch it")


_INSTANCE: list[str] = []


def _instance_name() -> str:
    if not _INSTANCE:
        _INSTANCE.append((socket.gethostname() or "slurm-k8s-bridge")[:128])
    return _INSTANCE[0]


__all__ = [
    "ApiMetrics",
    "GangBackendMissing",
    "GangStillTerminating",
    "KubeAccess",
    "KubeAccessError",
    "KubeApiError",
    "ObjectOwnedElsewhere",
    "RetryPolicy",
    "TokenBucket",
    "event_name",
    "event_time",
    "is_retryable",
    "native_gpu_usage_rbac",
    "render_native_gpu_usage_rbac_yaml",
    "render_rbac_yaml",
    "required_rbac",
]
