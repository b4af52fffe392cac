"""The daemon's Kubernetes API metrics: requests, errors, relists and watch expiries, in the
Prometheus text format (``ApiMetrics.render_prometheus``)."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping


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
