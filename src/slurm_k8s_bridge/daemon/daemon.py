"""``slurm-k8s-bridge run``: the daemon that owns every side effect of the bridge.

One loop: observe Slurm (one ``scontrol show job`` and one ``scontrol show node`` per
round) and Kubernetes (the watch cache of ``kube.access.KubeAccess``), build a
``plan.World`` (``daemon.observe``; the candidates' requests normalized), ask ``plan.plan``
what to do, and do it (``execute``: the create action carries the objects, so acting
decides nothing) -- each action idempotent,
so a crash at any point is repaired by the next round, after a restart too. Kubernetes
changes wake the loop early; otherwise it polls Slurm every ``poll_interval`` seconds.

Nothing here decides policy: conversions from what Slurm and Kubernetes say into the
planner's types are pure functions (tested on literal objects), and the planner is pure.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Mapping

from slurm_k8s_bridge.core.config import BridgeConfig
from slurm_k8s_bridge.core.errors import BridgeRefusal
from slurm_k8s_bridge.daemon.plan import (
    RESERVE_AFTER_S,
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
    RequeueJob,
    SetComment,
    SignalJob,
    World,
    plan,
    preemption,
)
from slurm_k8s_bridge.core.limits import admit_in_order
from slurm_k8s_bridge.daemon.mirror import (
    NATIVE_USAGE_FORBIDDEN,
    apply_mirror,
    desired_mirror,
    plan_mirror,
)
from slurm_k8s_bridge.slurm.client import SlurmClient, SlurmCommandError
from slurm_k8s_bridge.slurm.records import SlurmJob, SlurmNode
from slurm_k8s_bridge.core.normalize import normalize, preemption_fields
from slurm_k8s_bridge.daemon.leader import LeaderElector
from slurm_k8s_bridge.daemon.metrics import DaemonMetrics
from slurm_k8s_bridge.daemon.observe import (
    _slurm_time,
    bridged_jobs_from_slurm,
    gang_from_k8s,
    lost_nodes,
)

LOG = logging.getLogger("slurm_k8s_bridge.daemon")


# -- logging ---------------------------------------------------------------------------


# -- from Slurm --------------------------------------------------------------------------


# -- from Kubernetes -------------------------------------------------------------------


# -- metrics -----------------------------------------------------------------------------


# -- the daemon ---------------------------------------------------------------------------
class BridgeDaemon:
    def __init__(self, config: BridgeConfig, slurm: SlurmClient, kube: Any, *,
                 max_admitting: int = 8, poll_interval: float = 2.0,
                 leader: LeaderElector | None = None,
                 reserve_after: float = RESERVE_AFTER_S) -> None:
        self.config = config
        self.leader = leader   # None: the only replica, always acting
        self.slurm = slurm
        self.kube = kube
        self.max_admitting = max_admitting
        self.reserve_after = reserve_after    # plan(): a parked gang's turn is kept after this
        self._finished_since: dict[GangKey, float] = {}   # monotonic time first seen ended
        self._preempting_since: dict[GangKey, float] = {}  # first seen being preempted
        self._start_failures: dict[GangKey, int] = {}     # gangs failed before the job ran
        self.poll_interval = poll_interval
        self.metrics = DaemonMetrics(leader_election=leader is not None)
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
            gang = gang_from_k8s(obj, self.kube.pods_of(ns, name), self.kube.related(obj),
                                 self.kube.events_for(ns, "Job", name))
            if gang is not None:
                gangs[gang.key] = gang
        self._gangs = gangs
        jobs = self._signals(self._requests(self._apply_limits(jobs, gangs), gangs), gangs)
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
        preempted = {job.key for job in jobs if preemption(job, gangs.get(job.key))}
        self._preempting_since = {k: self._preempting_since.get(k, now) for k in preempted}
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
                     preempting_for={k: now - t for k, t in self._preempting_since.items()},
                     lost_k8s_nodes=lost_nodes(self.kube.nodes()),
                     api_problem=self.kube.api_problem(),
                     now=datetime.now(timezone.utc))

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

    def _signals(self, jobs: list[BridgedJob], gangs: Mapping[GangKey, Gang]) -> list[BridgedJob]:
        """The ``--signal`` of each running job that Kubernetes is preempting: its stamped
        request's, capped by the current configuration (``preemption_fields``, what the
        pods' grace was rendered from; no full normalize, which a changed partition could
        refuse)."""
        out = []
        for job in jobs:
            record = self._records.get(job.key)
            if record is None or not preemption(job, gangs.get(job.key)):
                out.append(job)
                continue
            try:
                fields = preemption_fields(record.request(), self.config)
            except Exception as exc:  # noqa: BLE001 - no signal then; the requeue still comes
                LOG.warning("request not readable for the preemption signal",
                            extra={"job": job.key.slurm_id, "error": str(exc)})
                fields = {}
            if fields.get("preempt_signal"):
                job = replace(job, signal=(fields["preempt_signal"], fields["preempt_signal_batch"],
                                           fields["preempt_grace_seconds"]))
            out.append(job)
        return out

    def _requests(self, jobs: list[BridgedJob], gangs: Mapping[GangKey, Gang]) -> list[BridgedJob]:
        """Normalize, under the current configuration, what each candidate for admission
        (held, eligible, no gang yet) asks for: the world carries it, the plan renders it."""
        out = []
        for job in jobs:
            record = self._records.get(job.key)
            if (job.state != "PENDING" or not job.held or not job.eligible or job.key in gangs
                    or record is None):
                out.append(job)
                continue
            try:
                breq = normalize(record.request(), self.config)
            except BridgeRefusal as refusal:
                out.append(replace(job, request_problem="cannot run with the current bridge "
                                                        f"configuration: {refusal.message}"))
                continue
            except Exception as exc:  # a stamp that no longer reads: say so, decide nothing
                out.append(replace(job, request_problem=f"cannot read its request: {exc}"))
                continue
            if breq is None:
                out.append(replace(job, request_problem="its partition is no longer bridged"))
            else:
                out.append(replace(job, request=breq))
        return out

    # -- act --
    def execute(self, action: Action) -> None:
        kind = type(action).__name__
        with self.metrics.lock:
            self.metrics.actions[kind] = self.metrics.actions.get(kind, 0) + 1
        if isinstance(action, SetComment):
            self.slurm.set_comment(action.key.slurm_id, action.text)
        elif isinstance(action, CreateGang):
            self._create(action)
        elif isinstance(action, PinAndRelease):
            self.slurm.pin_and_release(action.key.slurm_id, list(action.nodes),
                                       start_now=action.start_now)
            self._event(action.key, "Released",
                        f"Slurm job {action.key.slurm_id} released onto {','.join(action.nodes)}")
        elif isinstance(action, HoldJob):
            self.slurm.hold(action.key.slurm_id)  # JobHeldUser: the bridge's own hold
            self._event(action.key, "Held", f"Slurm job {action.key.slurm_id} held for the "
                        f"bridge: {action.why}", "Warning")
        elif isinstance(action, SignalJob):
            self.slurm.signal_job(action.key.slurm_id, action.signal, action.batch)
            self._event(action.key, "Preempting", f"Slurm job {action.key.slurm_id}: signal "
                        f"{action.signal} sent{' to the batch shell' if action.batch else ''}: "
                        f"{action.why}", "Warning")
        elif isinstance(action, RequeueJob):
            self.slurm.requeue(action.key.slurm_id)
            self._event(action.key, "Requeued", f"Slurm job {action.key.slurm_id} requeued: "
                        f"{action.why}", "Warning")
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

    def _create(self, action: CreateGang) -> None:
        created = self.kube.apply_gang(action.objects)
        job_obj = next(o for o in action.objects if o["kind"] == "Job")
        if created:
            self.kube.record_event(job_obj, "Created", f"Slurm job {action.key.slurm_id}: "
                                                       f"{action.pods} pod(s) requested")

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
        actions = plan(world, self.config, self.max_admitting,
                       reserve_after=self.reserve_after).actions
        if not self._acting():
            return []
        self.mirror_inventory()
        for action in actions:
            if not self._acting():   # deposed mid-round: the new leader decides afresh
                LOG.warning("leadership lost mid-round; actions left undone",
                            extra={"left": len(actions) - actions.index(action)})
                break
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
                                   "max_admitting": self.max_admitting,
                                   "identity": self.leader.identity if self.leader else None})
        term = 0
        while not stop.is_set():
            if self.leader is not None:
                if not self._acting():
                    self.leader.wait_for_term(min(self.poll_interval, 1.0))
                    continue
                if self.leader.term != term:   # a new term starts from scratch, as at start
                    term = self.leader.term
                    self._finished_since, self._start_failures = {}, {}
                    with self.metrics.lock:
                        self.metrics.leader_transitions += 1
            self.reconcile_once()
            self.kube.wait_for_change(self.poll_interval)
        LOG.info("stopped")

    def _acting(self) -> bool:
        acting = self.leader is None or self.leader.acting()
        self.metrics.is_leader = acting
        return acting


def _detail(action: Action) -> str:
    fields = {k: v for k, v in vars(action).items() if k not in ("key", "objects")}
    return ", ".join(f"{k}={v}" for k, v in fields.items())
