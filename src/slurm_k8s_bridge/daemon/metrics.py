"""What the daemon tells operators: JSON-lines logs, its metrics (jobs by phase, reconcile
rounds, actions, errors) in the Prometheus text format, and the small HTTP server that serves
``/metrics`` and ``/healthz``."""

from __future__ import annotations

import json
import logging
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class JsonLines(logging.Formatter):
    """One JSON object per line: ts, level, msg and any ``extra`` fields."""

    _STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.utcfromtimestamp(record.created).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
            + "Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(line, default=str)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger("slurm_k8s_bridge")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


@dataclass
class DaemonMetrics:
    reconciles: int = 0
    reconcile_seconds_sum: float = 0.0
    reconcile_seconds_max: float = 0.0
    reconcile_errors: int = 0
    slurm_errors: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    jobs_by_phase: dict[str, int] = field(default_factory=dict)
    #: leader election on: is_leader (acting now) and the terms this replica has led
    leader_election: bool = False
    is_leader: bool = False
    leader_transitions: int = 0
    buckets: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
    bucket_counts: list[int] = field(default_factory=lambda: [0] * 9)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, seconds: float) -> None:
        with self.lock:
            self.reconciles += 1
            self.reconcile_seconds_sum += seconds
            self.reconcile_seconds_max = max(self.reconcile_seconds_max, seconds)
            for i, bound in enumerate(self.buckets):
                if seconds <= bound:
                    self.bucket_counts[i] += 1

    def render(self) -> str:
        p = "slurm_k8s_bridge"
        with self.lock:
            lines = [f"# HELP {p}_jobs Bridged Slurm jobs by phase.", f"# TYPE {p}_jobs gauge"]
            lines += [f'{p}_jobs{{phase="{k}"}} {v}' for k, v in sorted(self.jobs_by_phase.items())]
            lines += [f"# HELP {p}_reconcile_seconds Duration of one reconcile round.",
                      f"# TYPE {p}_reconcile_seconds histogram"]
            for bound, count in zip(self.buckets, self.bucket_counts):
                lines.append(f'{p}_reconcile_seconds_bucket{{le="{bound}"}} {count}')
            lines += [f'{p}_reconcile_seconds_bucket{{le="+Inf"}} {self.reconciles}',
                      f"{p}_reconcile_seconds_sum {self.reconcile_seconds_sum:.6f}",
                      f"{p}_reconcile_seconds_count {self.reconciles}",
                      f"# HELP {p}_reconcile_errors_total Failed actions and rounds.",
                      f"# TYPE {p}_reconcile_errors_total counter",
                      f"{p}_reconcile_errors_total {self.reconcile_errors}",
                      f"# HELP {p}_slurm_errors_total Slurm commands that failed.",
                      f"# TYPE {p}_slurm_errors_total counter",
                      f"{p}_slurm_errors_total {self.slurm_errors}",
                      f"# HELP {p}_actions_total Actions taken, by kind.",
                      f"# TYPE {p}_actions_total counter"]
            lines += [f'{p}_actions_total{{action="{k}"}} {v}' for k, v in sorted(self.actions.items())]
            if self.leader_election:
                lines += [f"# HELP {p}_leader 1 while this replica is the acting leader.",
                          f"# TYPE {p}_leader gauge", f"{p}_leader {int(self.is_leader)}",
                          f"# HELP {p}_leader_transitions_total Terms this replica led.",
                          f"# TYPE {p}_leader_transitions_total counter",
                          f"{p}_leader_transitions_total {self.leader_transitions}"]
        return "\n".join(lines) + "\n"


def serve_metrics(port: int, render_fns: list[Callable[[], str]], host: str = "127.0.0.1"
                  ) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            if self.path not in ("/metrics", "/healthz"):
                self.send_error(404)
                return
            body = ("ok\n" if self.path == "/healthz"
                    else "".join(fn() for fn in render_fns)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
