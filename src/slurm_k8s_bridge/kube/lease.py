"""The coordination.k8s.io/v1 Lease that daemon replicas elect their leader with: read it,
create it, and update it only at the resourceVersion that was read (so of two candidates
that read the same version, exactly one update succeeds and the other gets 409).

Plain JSON through ``kube.transport`` (the official client's request pipeline and
credentials); no rate limiter and no retries: the elector (``daemon.leader``) tries again
every retry period itself, and a renewal must never wait behind the daemon's own writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slurm_k8s_bridge.kube.errors import KubeApiError

API = "/apis/coordination.k8s.io/v1"


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says about its holder (``spec``). Times are the holder's wall clock as
    written (MicroTime strings): candidates compare them for change, never with their own
    clock."""

    holder: str = ""
    lease_duration_seconds: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    def spec(self) -> dict[str, Any]:
        return {"holderIdentity": self.holder,
                "leaseDurationSeconds": self.lease_duration_seconds,
                "acquireTime": self.acquire_time, "renewTime": self.renew_time,
                "leaseTransitions": self.transitions}

    @classmethod
    def from_lease(cls, obj: dict[str, Any]) -> LeaseRecord:
        spec = obj.get("spec") or {}
        return cls(holder=str(spec.get("holderIdentity") or ""),
                   lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
                   acquire_time=spec.get("acquireTime"), renew_time=spec.get("renewTime"),
                   transitions=int(spec.get("leaseTransitions") or 0))


@dataclass(frozen=True)
class ReadLease:
    """A Lease as read: its record and the resourceVersion an update must name."""

    record: LeaseRecord
    resource_version: str


class LeaseConflict(Exception):
    """Someone else created or updated the Lease first (409): read it again."""


def micro_time(when: datetime | None = None) -> str:
    """A Kubernetes MicroTime: RFC 3339 in UTC with microseconds."""
    when = when or datetime.now(UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseClient:
    """One Lease ``namespace/name``. ``timeout``: (connect, read) seconds per request."""

    def __init__(self, api_client: Any, namespace: str, name: str, *,
                 timeout: tuple[float, float] = (2.0, 5.0)) -> None:
        # imported here: the plugins' venv (cffi, PyYAML only) imports this module with the
        # CLI's argument parser, and the transport needs urllib3
        from slurm_k8s_bridge.kube.transport import _Http
        self._http = _Http(api_client)
        self.namespace, self.name, self.timeout = namespace, name, timeout
        self._collection = f"{API}/namespaces/{namespace}/leases"

    def __repr__(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def get(self) -> ReadLease | None:
        """The Lease, or None when it does not exist."""
        try:
            reply = self._http.request("GET", f"{self._collection}/{self.name}",
                                       timeout=self.timeout)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise
        return _read(reply.body)

    def create(self, record: LeaseRecord) -> ReadLease:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/name": "slurm-k8s-bridge"}},
                "spec": record.spec()}
        return self._write("POST", self._collection, body)

    def update(self, record: LeaseRecord, resource_version: str) -> ReadLease:
        """Replace the spec, only if the Lease is still at ``resource_version``."""
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "resourceVersion": resource_version,
                             "labels": {"app.kubernetes.io/name": "slurm-k8s-bridge"}},
                "spec": record.spec()}
        return self._write("PUT", f"{self._collection}/{self.name}", body)

    def _write(self, method: str, path: str, body: dict[str, Any]) -> ReadLease:
        try:
            reply = self._http.request(method, path, body=body, timeout=self.timeout)
        except KubeApiError as exc:
            if exc.status == 409:
                raise LeaseConflict(str(exc)) from exc
            raise
        return _read(reply.body)


def _read(obj: dict[str, Any]) -> ReadLease:
    version = (obj.get("metadata") or {}).get("resourceVersion")
    if not version:
        raise KubeApiError("GET", "leases", "", None, f"not a Lease: {str(obj)[:200]}")
    return ReadLease(LeaseRecord.from_lease(obj), str(version))
