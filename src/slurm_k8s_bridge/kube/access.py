"""``KubeAccess``: the daemon's single door to the Kubernetes API.

It owns the daemon's view of Kubernetes and every change it makes there:

* the **watch cache** (``kube.cache``) of the bridge's Jobs and Pods (selected by the
  contract's managed-by and cluster labels), the Events about them in each job namespace,
  every Node and, opt-in (``watch_gpu_pods``, config ``native_gpu_usage``), the pods of every
  namespace that hold GPUs (``kube.gpu_pods``). ``changed`` is set on every change, so the
  daemon's loop wakes up early; snapshots are plain dicts, exactly the API's JSON;
* **writes** that are idempotent (deterministic names; ``409 AlreadyExists`` on create means
  "already done" once the existing object is read back and proven to be the same Slurm
  job's; ``404`` on delete means "already gone"), through the one rate limiter and retry
  policy of ``kube.transport``; a gang backend's own kinds (``core.gang``) are created only
  when the API server serves them;
* ``ApiMetrics`` (``kube.metrics``) and the RBAC the code needs (``kube.rbac``).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timezone
from functools import partial
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
)

from slurm_k8s_bridge.core import gang
from slurm_k8s_bridge.core.contract import (
    ARRAY_TASK_LABEL,
    CLUSTER_LABEL,
    JOB_ID_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
)
from slurm_k8s_bridge.kube.cache import (
    EVENT,
    JOB,
    NODE,
    POD,
    SERVICE,
    _EventStore,
    _GpuPodStore,
    _Kind,
    _meta,
    _pod_job_name,
    _Reflector,
    _Store,
    event_time,
)
from slurm_k8s_bridge.kube.errors import (
    GangBackendMissing,
    GangStillTerminating,
    KubeAccessError,
    KubeApiError,
    ObjectOwnedElsewhere,
)
from slurm_k8s_bridge.kube.gpu_pods import UNFINISHED_PODS, GpuPod, gpu_pod
from slurm_k8s_bridge.kube.metrics import ApiMetrics
from slurm_k8s_bridge.kube.rbac import (
    native_gpu_usage_rbac,
    render_native_gpu_usage_rbac_yaml,
    render_rbac_yaml,
    required_rbac,
)
from slurm_k8s_bridge.kube.transport import (
    RetryPolicy,
    TokenBucket,
    _Http,
    _Reply,
    is_retryable,
)

log = logging.getLogger(__name__)

#: ``reportingComponent`` / ``source.component`` of the Events the bridge records
REPORTING_CONTROLLER = "slurm-k8s-bridge"
#: Event messages longer than this are cut (events.k8s.io refuses notes over 1 KiB)
EVENT_MESSAGE_LIMIT = 1024
EVENT_TYPES = ("Normal", "Warning")
_DNS_SUBDOMAIN_MAX = 253


# -- errors -----------------------------------------------------------------------------


# -- rate limiting ----------------------------------------------------------------------


# -- metrics ----------------------------------------------------------------------------


# -- retries ----------------------------------------------------------------------------


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


# -- the raw REST layer -----------------------------------------------------------------


#: the kinds ``apply_gang`` creates, in the order ``translate.render`` lists them
#: the gang backends' own kinds (``core.gang``: Volcano's PodGroup), as the cache names kinds
BACKEND_KINDS: Mapping[str, tuple[gang.ObjectKind, _Kind]] = {
    k.kind: (k, _Kind(k.kind, k.resource, k.api_version)) for k in gang.extra_kinds()}
GANG_KINDS: Mapping[str, _Kind] = {"Service": SERVICE, **{n: kv[1] for n, kv in BACKEND_KINDS.items()},
                                   "Job": JOB}
#: the kinds the gang backends read to say why a Job waits (Kueue's Workload and LocalQueue):
#: kind -> (the backend's kind, found by the Job controlling it, as the cache names it)
READ_KINDS: Mapping[str, tuple[gang.ObjectKind, bool, _Kind]] = {
    k.kind: (k, owned, _Kind(k.kind, k.resource, k.api_version)) for k, owned in gang.read_kinds()}


def _controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in _meta(obj).get("ownerReferences") or ():
        if ref.get("controller") and ref.get("uid"):
            return str(ref["uid"])
    return None


# -- the watch cache --------------------------------------------------------------------


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
        #: the backends' read kinds, by resource; owned ones indexed by controller uid
        self._related: dict[str, _Store] = {
            kind.resource: _Store(index=_controller_uid if owned else None)
            for _, owned, kind in READ_KINDS.values()}
        self._watching_gpu_pods = False
        self._gpu_pod_reflector: _Reflector | None = None
        self._our_name = re.compile(rf"^{re.escape(cluster_name)}-[0-9]")
        self._reflectors: list[_Reflector] = []
        self._served: dict[str, tuple[float, bool]] = {}   # kind -> (checked at, served)
        #: the last request the API server did not answer at all, while none has since
        self._unanswered: str | None = None
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
        for name, (_, _, kind) in READ_KINDS.items():
            if not self._served_quietly(name):
                continue   # the backend is not installed: nothing to read
            reflectors += [_Reflector(self, kind, namespace, None, optional=True)
                           for namespace in self.namespaces]
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
            configuration.retries = False   # a watch that breaks is the reflector's to restart
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

    def api_problem(self) -> str:
        """Why the API server cannot be used now, in words for squeue ("" while it answers):
        a watch that lost its connection, or the last request that got no answer at all
        (a refusal with an HTTP status is an answer, and not reported here)."""
        lost = sorted(str(r.last_error) for r in self._reflectors
                      if not r.optional and r.last_error and r.last_status is None)
        why = self._unanswered or (lost[0] if lost else "")
        if not why:
            return ""
        host = getattr(getattr(self.api_client, "configuration", None), "host", "") or "?"
        errno = re.search(r"\[Errno -?\d+\] ([^)\]'\"]+)", why)
        short = errno.group(1).strip() if errno else why.rsplit(": no answer", 1)[-1].strip(" ()")
        return f"Kubernetes API server {host} not answering: {short[:120]}"

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

    def related(self, job: Mapping[str, Any]) -> gang.Related:
        """What the cache holds, around one of the bridge's Jobs, of the kinds the gang
        backends read: the objects it controls (Kueue's Workload) and, by name, the others
        of its namespace (LocalQueues)."""
        meta = _meta(job)
        namespace, uid = str(meta.get("namespace") or ""), str(meta.get("uid") or "")
        owned: dict[str, list[dict[str, Any]]] = {}
        named: dict[tuple[str, str], dict[str, Any]] = {}
        with self._lock:
            for name, (_, by_owner, kind) in READ_KINDS.items():
                store = self._related[kind.resource]
                if by_owner:
                    group = store.index.get((namespace, uid), {}) if uid else {}
                    owned[name] = [group[n] for n in sorted(group)]
                else:
                    named.update({(name, n): obj for (ns, n), obj in store.items.items()
                                  if ns == namespace})
        return gang.Related(owned=owned, named=named)

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
        return (involved.get("kind") in ("Pod", "Job", *BACKEND_KINDS)
                and bool(self._our_name.match(str(involved.get("name") or ""))))

    def _store(self, kind: _Kind, store: str | None = None) -> Any:
        stores = {"jobs": self._jobs, "pods": self._pods, "nodes": self._nodes, "events": self._events,
                  "gpu_pods": self._gpu_pods}
        return stores.get(store or kind.resource) or self._related[store or kind.resource]

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
                self._unanswered = exc.reason if exc.status is None else None
                if exc.status is not None and exc.status in ok:
                    self.metrics.observe(verb, resource, exc.status, job=job)
                    return _Reply(exc.status, {"message": exc.reason})
                self.metrics.observe(verb, resource, exc.status, error=True, job=job)
                raise KubeApiError(verb, resource, what, exc.status, exc.reason, exc.retry_after) from exc
            self._unanswered = None
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
        object is being deleted, ``GangBackendMissing`` when a gang backend's own kind (a
        Volcano PodGroup) is asked for and the API server does not serve it (before anything
        is created).
        """
        bodies = [self._gang_body(o) for o in objects]
        for body in bodies:
            if body["kind"] in BACKEND_KINDS and not self.kind_served(body["kind"]):
                kind = BACKEND_KINDS[body["kind"]][0]
                owner = next(b for b in gang.BACKENDS.values() if kind in b.kinds)
                raise GangBackendMissing(
                    f"the job asks for {owner.name.capitalize()} gang scheduling but this cluster has "
                    f"no {kind.api_version} {kind.resource} ({owner.name.capitalize()} is not "
                    f"installed); {owner.install_hint}")
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
        kinds = [JOB, SERVICE] + [k for name, (_, k) in BACKEND_KINDS.items() if self.kind_served(name)]
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

    def kind_served(self, kind: str, max_age: float = 60.0) -> bool:
        """Whether the API server serves a gang backend's kind (``BACKEND_KINDS`` or
        ``READ_KINDS``), cached."""
        now = time.monotonic()
        cached = self._served.get(kind)
        if cached is not None and now - cached[0] < max_age:
            return cached[1]
        backend_kind = BACKEND_KINDS[kind][0] if kind in BACKEND_KINDS else READ_KINDS[kind][0]
        reply = self._call("get", "discovery",
                           lambda: self._request("GET", f"/apis/{backend_kind.api_version}"),
                           ok=(404,), what=backend_kind.api_version)
        served = reply.status != 404 and any(r.get("name") == backend_kind.resource
                                             for r in reply.body.get("resources") or ())
        self._served[kind] = (now, served)
        return served

    def _served_quietly(self, kind: str) -> bool:
        """``kind_served``, False when discovery itself fails (the watch is optional)."""
        try:
            return self.kind_served(kind)
        except KubeAccessError as exc:
            log.warning("cannot tell whether %s is served (%s); not watching it", kind, exc)
            return False


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
