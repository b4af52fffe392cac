"""The daemon's watch cache: each resource listed once (paged), then watched from its
resourceVersion with bookmarks; ``410 Gone`` relists, any other failure backs off and watches
again from the last resourceVersion seen. Stores keep what the daemon reads: objects by
(namespace, name) with an index of pods by Job, the latest Event per object and reason, and
the ``GpuPod`` records of pods holding GPUs. ``KubeAccess`` (``kube.access``) owns them."""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any, Protocol
from urllib.parse import quote

import urllib3

from slurm_k8s_bridge.core.contract import POD_JOB_NAME_LABELS
from slurm_k8s_bridge.kube.errors import KubeAccessError, KubeApiError
from slurm_k8s_bridge.kube.gpu_pods import GpuPod
from slurm_k8s_bridge.kube.transport import _backoff



class CacheOwner(Protocol):
    """What a reflector needs of the one that owns it (``kube.access.KubeAccess``): where
    to send requests, how fast, what to fill, whom to wake."""

    _stop: threading.Event
    _bucket: Any
    _watch_http: Any
    metrics: Any
    retry: Any
    list_page_size: int
    watch_timeout_seconds: int

    def _call(self, verb: str, resource: str, send: Callable[[], Any], *, what: str = "") -> Any: ...
    def _request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None) -> Any: ...
    def _replace(self, kind: _Kind, namespace: str | None, objects: list[Any],
                 store: str | None = None) -> None: ...
    def _apply(self, kind: _Kind, change: str, obj: Any, store: str | None = None) -> None: ...
    def _notify(self) -> None: ...

log = logging.getLogger(__name__)


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


POD = _Kind("Pod", "pods", "v1")


NODE = _Kind("Node", "nodes", "v1")


EVENT = _Kind("Event", "events", "v1")


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

    def __init__(self, access: CacheOwner, kind: _Kind, namespace: str | None,
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
