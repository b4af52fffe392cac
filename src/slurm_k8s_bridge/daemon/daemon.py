"""``slurm-k8s-bridge run``: the daemon that owns every side effect of the bridge.

One loop: observe Slurm (one ``scontrol show job`` and one ``scontrol show node`` per
round) and Kubernetes (the watch cache of ``k8s_access.KubeAccess``), build a
``reconcile.World``, ask ``reconcile.plan`` what to do, and do it -- each action idempotent,
so a crash at any point is repaired by the next round, after a restart too. Kubernetes
changes wake the loop early; otherwise it polls Slurm every ``poll_interval`` seconds.

Nothing here decides policy: conversions from what Slurm and Kubernetes say into the
planner's types are pure functions (tested on literal objects), and the planner is pure.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Mapping

from slurm_k8s_bridge.core.config import BridgeConfig
from slurm_k8s_bridge.core.errors import BridgeRefusal
from slurm_k8s_bridge.daemon.plan import (
    FINISHED,
    Action,
    BridgedJob,
    CreateGang,
    DeleteGang,
    DeleteNodes,
    FailJob,
    Gang,
    GangKey,
    HoldJob,
    NodesDown,
    PinAndRelease,
    PodInfo,
    SetComment,
    World,
    plan,
)
from slurm_k8s_bridge.core.limits import admit_in_order
from slurm_k8s_bridge.daemon.mirror import (
    NATIVE_USAGE_FORBIDDEN,
    apply_mirror,
    desired_mirror,
    plan_mirror,
)
from slurm_k8s_bridge.slurm.client import SlurmClient, SlurmCommandError
from slurm_k8s_bridge.slurm.records import SlurmJob, SlurmNode, eligible
from slurm_k8s_bridge.core.normalize import normalize
from slurm_k8s_bridge.core.render import render

LOG = logging.getLogger("slurm_k8s_bridge.daemon")
ARRAY_TASK_LABEL = "slurm-k8s-bridge.io/array-task-id"
JOB_ID_LABEL = "slurm-k8s-bridge.io/job-id"
#: container waiting/terminated reasons that mean the pod will not run as it is
_BAD_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
                "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


# -- logging ---------------------------------------------------------------------------
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


# -- from Slurm --------------------------------------------------------------------------
def bridged_jobs_from_slurm(jobs: Iterable[SlurmJob], now: datetime | None = None
                            ) -> tuple[list[BridgedJob], dict[GangKey, SlurmJob]]:
    """Planner view of every bridged job; a pending array record stands for its tasks."""
    out: list[BridgedJob] = []
    records: dict[GangKey, SlurmJob] = {}
    for job in jobs:
        ok, why = eligible(job, now) if job.state == "PENDING" else (False, job.state)
        common = dict(state=job.state, held=job.priority == 0, eligible=ok,
                      wait_reason="" if ok else why, comment=job.comment,
                      order=(job.submit_time, job.job_id), requeue=job.requeue,
                      restarts=job.restarts)
        if job.is_array_meta:
            assert job.array_job_id is not None
            for task in job.pending_array_tasks:
                key = GangKey(job.array_job_id, task)
                out.append(BridgedJob(key=key, **common))  # type: ignore[arg-type]
                records[key] = job
            continue
        if job.array_task_id is not None and job.array_job_id is not None:
            key = GangKey(job.array_job_id, job.array_task_id)
        else:
            key = GangKey(job.job_id)
        nodes = tuple(n for n in job.nodelist.split(",") if n) if job.nodelist else ()
        out.append(BridgedJob(key=key, nodes=_expand_hostlist(nodes), **common))  # type: ignore[arg-type]
        records[key] = job
    return out, records


_RANGE = re.compile(r"^(?P<prefix>.*)\[(?P<body>[0-9,\-]+)\](?P<suffix>.*)$")


def _expand_hostlist(parts: tuple[str, ...]) -> tuple[str, ...]:
    """``a-[0-1]`` -> ``a-0, a-1`` (the forms scontrol prints for our node names)."""
    names: list[str] = []
    joined = ",".join(parts)
    # split on commas outside brackets
    depth, current = 0, ""
    for ch in joined:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += ch
    if current:
        names.append(current)
    out: list[str] = []
    for name in names:
        m = _RANGE.match(name)
        if not m:
            out.append(name)
            continue
        for piece in m["body"].split(","):
            lo, _, hi = piece.partition("-")
            width = len(lo)
            for i in range(int(lo), int(hi or lo) + 1):
                out.append(f"{m['prefix']}{i:0{width}d}{m['suffix']}")
    return tuple(out)


# -- from Kubernetes -------------------------------------------------------------------
def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    sched = conditions.get("PodScheduled") or {}
    scheduled = sched.get("status") == "True" or bool(spec.get("nodeName"))
    problem = ""
    failed = phase == "Failed"
    if not scheduled and sched.get("reason"):
        problem = f"{sched.get('reason')}: {sched.get('message', '')}".strip(": ")
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        terminated = state.get("terminated") or {}
        if waiting.get("reason") in _BAD_WAITING:
            problem = f"{waiting['reason']}: {waiting.get('message', '')}".strip(": ")
        if terminated:
            problem = (f"{terminated.get('reason', 'Terminated')} "
                       f"(exit code {terminated.get('exitCode')})")
            last = [ln for ln in str(terminated.get("message") or "").splitlines() if ln.strip()]
            if last:  # the container's last words (terminationMessagePolicy)
                problem += f": {last[-1].strip()[:160]}"
            failed = True
    if status.get("reason") in ("Evicted", "Preempting", "DeadlineExceeded", "NodeLost"):
        problem = f"{status['reason']}: {status.get('message', '')}".strip(": ")
        failed = True
    if phase == "Succeeded":
        failed, problem = True, problem or "pod exited (Succeeded) while the job was running"
    hostname = spec.get("hostname") or meta.get("name", "")
    started = status.get("startTime")
    for cs in status.get("containerStatuses") or []:
        started = ((cs.get("state") or {}).get("running") or {}).get("startedAt") or started
        break
    return PodInfo(name=meta.get("name", ""), hostname=hostname, phase=phase,
                   scheduled=scheduled, node_name=spec.get("nodeName") or "",
                   problem=problem, failed=failed,
                   terminating=bool(meta.get("deletionTimestamp")),
                   started=_k8s_time(started))


def _k8s_time(value: Any) -> datetime | None:
    """An RFC 3339 time from the API (``...Z``) as an aware datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _slurm_time(value: str) -> datetime | None:
    """A time scontrol prints (local time, no zone) as an aware datetime."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).astimezone()
    except ValueError:
        return None


def gang_key_of(obj: Mapping[str, Any]) -> GangKey | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    try:
        job_id = int(labels[JOB_ID_LABEL])
    except (KeyError, ValueError):
        return None
    task = labels.get(ARRAY_TASK_LABEL)
    return GangKey(job_id, int(task) if task not in (None, "") else None)


def gang_from_k8s(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> Gang | None:
    key = gang_key_of(job)
    if key is None:
        return None
    meta = job.get("metadata") or {}
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    failed = ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            failed = f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
    waiting = ""
    if spec.get("suspend"):
        queue = (meta.get("labels") or {}).get("kueue.x-k8s.io/queue-name", "")
        waiting = f"waiting for admission by Kueue (queue {queue})" if queue \
            else "suspended"
    # A requeued job's new Job has the old one's name: the old Job's pods, still
    # terminating, are not this gang's (they would read as failed pods of the new gang).
    uid = meta.get("uid")
    pods = [p for p in pods if not uid or _controller_uid(p) in (None, uid)]
    return Gang(key=key, namespace=meta.get("namespace", ""), name=meta.get("name", ""),
                pods=tuple(sorted((pod_info(p) for p in pods), key=lambda p: p.hostname)),
                size=int(spec.get("completions") or spec.get("parallelism") or 0),
                waiting_admission=waiting, failed=failed,
                failed_pods=int(status.get("failed") or 0),
                failed_indexes=str(status.get("failedIndexes") or ""))


def _controller_uid(pod: Mapping[str, Any]) -> str | None:
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("kind") == "Job" and ref.get("controller") and ref.get("uid"):
            return str(ref["uid"])
    return None


def lost_nodes(nodes: Mapping[str, Mapping[str, Any]]) -> frozenset[str]:
    """Kubernetes nodes whose Ready condition is not True."""
    lost = set()
    for name, node in nodes.items():
        ready = [c for c in (node.get("status") or {}).get("conditions") or []
                 if c.get("type") == "Ready"]
        if ready and ready[0].get("status") != "True":
            lost.add(name)
    return frozenset(lost)


# -- metrics -----------------------------------------------------------------------------
@dataclass
class DaemonMetrics:
    reconciles: int = 0
    reconcile_seconds_sum: float = 0.0
    reconcile_seconds_max: float = 0.0
    reconcile_errors: int = 0
    slurm_errors: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    jobs_by_phase: dict[str, int] = field(default_factory=dict)
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


# -- the daemon ---------------------------------------------------------------------------
class BridgeDaemon:
    def __init__(self, config: BridgeConfig, slurm: SlurmClient, kube: Any, *,
                 max_admitting: int = 8, poll_interval: float = 2.0) -> None:
        self.config = config
        self.slurm = slurm
        self.kube = kube
        self.max_admitting = max_admitting
        self._finished_since: dict[GangKey, float] = {}   # monotonic time first seen ended
        self._start_failures: dict[GangKey, int] = {}     # gangs failed before the job ran
        self.poll_interval = poll_interval
        self.metrics = DaemonMetrics()
        self._records: dict[GangKey, SlurmJob] = {}
        self._gangs: dict[GangKey, Gang] = {}
        self._slurm_nodes: dict[str, SlurmNode] = {}
        self._node_pattern = re.compile(rf"^{re.escape(config.cluster_name)}-[0-9]+(-[0-9]+)?-[0-9]+$")
        if config.native_gpu_usage:
            kube.watch_gpu_pods()   # the pods of every namespace, for mirror_inventory

    # -- observe --
    def observe(self) -> World:
        jobs, self._records = bridged_jobs_from_slurm(self.slurm.bridged_jobs())
        self._slurm_nodes = self.slurm.list_nodes()
        nodes = {name: node.base_state for name, node in self._slurm_nodes.items()
                 if self._node_pattern.match(name)}
        gangs: dict[GangKey, Gang] = {}
        for (ns, name), obj in self.kube.jobs().items():
            gang = gang_from_k8s(obj, self.kube.pods_of(ns, name))
            if gang is not None:
                gangs[gang.key] = gang
        self._gangs = gangs
        jobs = self._apply_limits(jobs, gangs)
        # every phase always present: stable series for dashboards and alerts
        phases = {"waiting": 0, "admitting": 0, "running": 0, "finished": 0}
        for job in jobs:
            if job.state == "PENDING":
                phase = "admitting" if job.key in gangs else "waiting"
            else:
                phase = "finished" if job.state in FINISHED else "running"
            phases[phase] += 1
        self.metrics.jobs_by_phase = phases
        now = time.monotonic()
        ended = {job.key for job in jobs if job.state in FINISHED}
        self._finished_since = {key: self._finished_since.get(key, now) for key in ended}
        started = {name: t for name in nodes
                   if (t := _slurm_time(self._slurm_nodes[name].slurmd_start)) is not None}
        problems = {name: self._slurm_nodes[name].reason or "drained"
                    for name in nodes
                    if {"DRAIN", "INVALID_REG"} & self._slurm_nodes[name].flags}
        return World(jobs=jobs, gangs=gangs, slurm_nodes=nodes, slurmd_started=started,
                     node_problems=problems,
                     start_failures={k: n for k, n in self._start_failures.items()
                                     if k in {job.key for job in jobs}},
                     finished_for={k: now - t for k, t in self._finished_since.items()},
                     lost_k8s_nodes=lost_nodes(self.kube.nodes()))

    def _apply_limits(self, jobs: list[BridgedJob], gangs: Mapping[GangKey, Gang]
                      ) -> list[BridgedJob]:
        """QOS and association limits, which slurmctld never evaluates for held jobs:
        a held, otherwise eligible job without pods that would exceed one is not eligible,
        with Slurm's reason name. Gangs being admitted count as running (limits.py)."""
        limits = self.slurm.limits()
        if not limits.enforced:
            return jobs
        demands = self.slurm.job_demands(("PENDING",))
        admitting = [demands[j.key.slurm_id][1] for j in jobs
                     if j.state == "PENDING" and j.key in gangs and j.key.slurm_id in demands]
        candidates = sorted((j for j in jobs if j.state == "PENDING" and j.held and j.eligible
                             and j.key not in gangs and j.key.slurm_id in demands),
                            key=lambda j: j.order)
        verdicts = {key: (ok, why) for key, ok, why in admit_in_order(
            [(j.key, demands[j.key.slurm_id][1]) for j in candidates], limits, admitting)}
        out = []
        for job in jobs:
            ok, why = verdicts.get(job.key, (True, ""))
            out.append(job if ok else replace(job, eligible=False, wait_reason=why))
        return out

    # -- act --
    def execute(self, action: Action) -> None:
        kind = type(action).__name__
        with self.metrics.lock:
            self.metrics.actions[kind] = self.metrics.actions.get(kind, 0) + 1
        if isinstance(action, SetComment):
            self.slurm.set_comment(action.key.slurm_id, action.text)
        elif isinstance(action, CreateGang):
            self._create(action.key)
        elif isinstance(action, PinAndRelease):
            self.slurm.pin_and_release(action.key.slurm_id, list(action.nodes),
                                       start_now=action.start_now)
            self._event(action.key, "Released",
                        f"Slurm job {action.key.slurm_id} released onto {','.join(action.nodes)}")
        elif isinstance(action, HoldJob):
            self.slurm.hold(action.key.slurm_id)  # JobHeldUser: the bridge's own hold
            self._event(action.key, "Held", f"Slurm job {action.key.slurm_id} held for the "
                        f"bridge: {action.why}", "Warning")
        elif isinstance(action, NodesDown):
            self.slurm.node_down(list(action.nodes), action.why[:200])
        elif isinstance(action, DeleteGang):
            if action.failed_start:
                self._start_failures[action.key] = self._start_failures.get(action.key, 0) + 1
            self._event(action.key, "Deleting", action.why)
            self.kube.delete_gang(action.namespace, action.name)
        elif isinstance(action, FailJob):
            self.slurm.cancel(action.key.slurm_id, f"k8s: failed: {action.why}")
            self._event(action.key, "Failed", action.why, "Warning")
        elif isinstance(action, DeleteNodes):
            for name in action.nodes:
                try:
                    self.slurm.delete_node(name)
                except SlurmCommandError as exc:  # still busy: next round
                    LOG.info("node not deleted yet", extra={"node": name, "error": str(exc)})
        LOG.info("action", extra={"action": kind, "job": getattr(getattr(action, "key", None),
                                                                  "slurm_id", None),
                                  "detail": _detail(action)})

    def mirror_inventory(self) -> None:
        """sinfo shows every Kubernetes GPU node: type, count, cordoned/NotReady and, with
        native_gpu_usage, the GPUs Kubernetes-native pods hold there (node Comment)."""
        try:
            gpu_pods, unknown = None, ""
            if self.config.native_gpu_usage:
                gpu_pods = self.kube.gpu_pods()
                if gpu_pods is None and self.kube.gpu_pods_forbidden():
                    unknown = NATIVE_USAGE_FORBIDDEN
            actions = plan_mirror(desired_mirror(self.kube.nodes(), self.config, gpu_pods,
                                                 unknown), self._slurm_nodes)
            apply_mirror(self.slurm, actions)
        except Exception as exc:
            self.metrics.reconcile_errors += 1
            LOG.error("node mirroring failed", extra={"error": str(exc)})
            return
        for action in actions:
            spec = action.spec
            LOG.info("mirror", extra={"verb": action.verb, "node": action.node,
                                      "state": spec.state if spec else None,
                                      **({"comment": spec.comment}
                                         if spec and action.verb == "comment" else {})})

    def _create(self, key: GangKey) -> None:
        record = self._records.get(key)
        if record is None:
            return
        try:
            breq = normalize(record.request(), self.config)
        except BridgeRefusal as refusal:
            self.slurm.set_comment(key.slurm_id,
                                   f"k8s: cannot run with the current bridge configuration: "
                                   f"{refusal.message}")
            return
        if breq is None:
            self.slurm.set_comment(key.slurm_id, "k8s: its partition is no longer bridged")
            return
        objects = render(breq, self.config, key.job_id, key.array_task_id)
        created = self.kube.apply_gang(objects)
        job_obj = next(o for o in objects if o["kind"] == "Job")
        if created:
            self.kube.record_event(job_obj, "Created",
                                   f"Slurm job {key.slurm_id}: {breq.nodes} pod(s) requested")

    def _event(self, key: GangKey, reason: str, message: str, type: str = "Normal") -> None:
        gang = self._gangs.get(key)
        if gang is None:
            return
        obj = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"namespace": gang.namespace, "name": gang.name}}
        try:
            self.kube.record_event(obj, reason, message, type)
        except Exception as exc:  # events are best effort
            LOG.warning("event not recorded", extra={"error": str(exc)})

    # -- loop --
    def reconcile_once(self) -> list[Action]:
        start = time.monotonic()
        try:
            world = self.observe()
        except SlurmCommandError as exc:
            # Slurm did not answer: decide nothing (an unreachable slurmctld must never
            # look like "every job is gone").
            self.metrics.slurm_errors += 1
            LOG.warning("slurm not answering; nothing decided this round",
                        extra={"error": str(exc)})
            return []
        actions = plan(world, self.max_admitting).actions
        self.mirror_inventory()
        for action in actions:
            try:
                self.execute(action)
            except Exception as exc:
                self.metrics.reconcile_errors += 1
                LOG.error("action failed", extra={"action": type(action).__name__,
                                                  "detail": _detail(action), "error": str(exc)})
        self.metrics.observe(time.monotonic() - start)
        return actions

    def run(self, stop: threading.Event, sync_timeout: float = 60.0) -> None:
        if not self.kube.wait_synced(sync_timeout):
            raise RuntimeError(f"Kubernetes watch cache not synced within {sync_timeout}s: "
                               f"{self.kube.sync_errors()}")
        LOG.info("started", extra={"cluster": self.config.cluster_name,
                                   "max_admitting": self.max_admitting})
        while not stop.is_set():
            self.reconcile_once()
            self.kube.wait_for_change(self.poll_interval)
        LOG.info("stopped")


def _detail(action: Action) -> str:
    fields = {k: v for k, v in vars(action).items() if k != "key"}
    return ", ".join(f"{k}={v}" for k, v in fields.items())
