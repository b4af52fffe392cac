"""The bridge daemon's decisions, as a pure function of what it observed.

``plan(world, config)`` looks at every bridged Slurm job, the Kubernetes objects the bridge
made for it, and the dynamic Slurm nodes its pods registered, and returns the actions that
bring both sides together. It performs no I/O: the daemon gathers ``World`` from squeue /
scontrol and its watch cache, then executes the actions (each one idempotent). Every rule is
in the user's words in ``docs/design-notes.md``.

Safety rules that the tests pin down:
* Kubernetes objects are deleted only on positive evidence: Slurm answered and says the
  job finished, is held, or no longer exists. An unreachable slurmctld deletes nothing.
* A Slurm job is released only when every pod of its gang runs and every pod's dynamic
  Slurm node has registered; it is pinned to exactly those nodes first.
* A running job whose pods fail gets the Slurm nodes of exactly those pods set down with
  the reason; Slurm then requeues it (or, if it may not be requeued, ends it NODE_FAIL).
  The surviving pods stay until Slurm has finished the requeue: their slurmd report the
  epilog, which is what lets Slurm 22.05 release the old allocation. Then the bridge holds
  the job again, removes the old gang and admits it afresh.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Union

from slurm_k8s_bridge.core.config import BridgeConfig
from slurm_k8s_bridge.core.contract import COMMENT_PREFIX
from slurm_k8s_bridge.core.request import BridgeRequest
from slurm_k8s_bridge.core.render import render

#: Slurm job states after which nothing of the job should remain in Kubernetes.
FINISHED = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED",
})
ACTIVE = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STAGE_OUT",
                    "SIGNALING", "RESIZING"})


@dataclass(frozen=True, order=True)
class GangKey:
    """One Kubernetes gang: a Slurm job, or one task of a Slurm job array."""

    job_id: int                       # the job id, or the array's job id
    array_task_id: int | None = None

    @property
    def slurm_id(self) -> str:
        """How scontrol names it: ``123`` or ``123_4``."""
        return str(self.job_id) if self.array_task_id is None \
            else f"{self.job_id}_{self.array_task_id}"


@dataclass(frozen=True)
class BridgedJob:
    """What Slurm says about one bridged job (or array task)."""

    key: GangKey
    state: str                        # PENDING, RUNNING, COMPLETED, ...
    held: bool                        # priority 0: waiting for the bridge
    eligible: bool                    # Slurm would start it, apart from our hold
    wait_reason: str = ""             # why not eligible (dependency, begin time, user hold)
    nodes: tuple[str, ...] = ()       # allocated nodes once running
    comment: str = ""
    order: tuple[str, int] = ("", 0)  # Slurm's start order among held jobs
    requeue: bool = True              # may Slurm requeue it after a node failure
    restarts: int = 0                 # Slurm's RestartCnt: requeues so far
    #: what to create for it, normalized under the current configuration (known for the
    #: held, eligible jobs without a gang: the candidates for admission)
    request: BridgeRequest | None = None
    #: why it cannot be admitted under the current configuration (then ``request`` is None)
    request_problem: str = ""
    #: a running job whose pod Kubernetes is taking away: its ``--signal`` as (number, to the
    #: batch shell only, seconds of grace); None without one (``BridgeRequest.preempt_*``)
    signal: tuple[int, bool, int] | None = None


@dataclass(frozen=True)
class PodInfo:
    name: str
    hostname: str                     # = the dynamic Slurm node name
    phase: str                        # Pending, Running, Succeeded, Failed, Unknown
    scheduled: bool = False
    node_name: str = ""
    problem: str = ""                 # Unschedulable / ImagePullBackOff / OOMKilled ... + message
    failed: bool = False              # evicted, OOM-killed, container exited, deleted
    terminating: bool = False
    started: datetime | None = None   # container start (else pod start), aware
    #: Kubernetes is taking the pod away (its DisruptionTarget condition: preemption,
    #: eviction, taint manager): why, in the bridge's words
    disrupted: str = ""


@dataclass(frozen=True)
class Gang:
    """The bridge's Kubernetes objects for one key, as the watch cache sees them."""

    key: GangKey
    namespace: str
    name: str
    pods: tuple[PodInfo, ...] = ()
    size: int = 0                     # completions: pods the gang needs
    waiting_admission: str = ""       # e.g. suspended by Kueue: "waiting for quota in ..."
    failed: str = ""                  # the Job itself failed (DeadlineExceeded, ...)
    failed_pods: int = 0              # status.failed: pods of the Job that failed or vanished
    failed_indexes: str = ""          # status.failedIndexes (backoffLimitPerIndex), e.g. "1,3"
    created: datetime | None = None   # the Job's creationTimestamp, aware


@dataclass(frozen=True)
class World:
    jobs: Sequence[BridgedJob]
    gangs: Mapping[GangKey, Gang]
    slurm_nodes: Mapping[str, str]    # dynamic node name -> state (e.g. IDLE, ALLOCATED, DOWN)
    lost_k8s_nodes: frozenset[str] = frozenset()   # Kubernetes nodes NotReady or gone
    slurmd_started: Mapping[str, datetime] = field(default_factory=dict)  # SlurmdStartTime
    finished_for: Mapping[GangKey, float] = field(default_factory=dict)  # seconds seen ended
    #: dynamic nodes slurmctld registered but will not use (drained, INVALID_REG): why
    node_problems: Mapping[str, str] = field(default_factory=dict)
    #: gangs of a pending job replaced because their pods failed before it started
    start_failures: Mapping[GangKey, int] = field(default_factory=dict)
    #: why the Kubernetes API server cannot be used now ("" while it answers): no gang is
    #: created meanwhile, and the jobs that wait for one say why
    api_problem: str = ""
    #: the time of this observation (aware; gang ages are measured against it)
    now: datetime | None = None
    #: running jobs being preempted (``preemption``): seconds since that was first seen
    preempting_for: Mapping[GangKey, float] = field(default_factory=dict)


# -- actions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateGang:
    """Create these objects, in order (``core.render``): the daemon executes, it decides nothing."""

    key: GangKey
    objects: tuple[Mapping[str, Any], ...] = ()
    pods: int = 0


@dataclass(frozen=True)
class DeleteGang:
    key: GangKey
    namespace: str
    name: str
    why: str
    failed_start: bool = False        # its pods failed before the job started (counted)


@dataclass(frozen=True)
class SetComment:
    key: GangKey
    text: str


@dataclass(frozen=True)
class PinAndRelease:
    key: GangKey
    nodes: tuple[str, ...]
    start_now: bool = False           # a requeued job: lift Slurm's requeue delay


@dataclass(frozen=True)
class HoldJob:
    """Put the bridge's hold back on a pending job Slurm would otherwise start by itself
    (requeued after a node failure, or released by someone other than the bridge)."""

    key: GangKey
    why: str


@dataclass(frozen=True)
class NodesDown:
    nodes: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class DeleteNodes:
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class SignalJob:
    """A preempted job's ``--signal``: ``scancel --signal`` to its steps, or to the batch
    shell only (``B:``)."""

    key: GangKey
    signal: int
    batch: bool
    why: str


@dataclass(frozen=True)
class RequeueJob:
    """``scontrol requeue``: Slurm stops every step of the job (SIGTERM, SIGKILL after
    KillWait) on all its nodes and queues it again; the bridge then replaces its gang."""

    key: GangKey
    why: str


@dataclass(frozen=True)
class FailJob:
    """End a job Slurm can no longer run correctly; ``why`` goes into its comment."""

    key: GangKey
    why: str


Action = Union[CreateGang, DeleteGang, SetComment, PinAndRelease, HoldJob, NodesDown,
               DeleteNodes, FailJob, SignalJob, RequeueJob]

#: Why a PENDING job that still has a NodeList, none of whose nodes can report, is ended.
STALE_REQUEUE = ("Slurm could not finish requeuing it: every pod of its previous run was lost, "
                 "so no slurmd was left to report the end of that run, and Slurm 22.05 would "
                 "start it again with its old allocation, where its steps fail")

@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    admitting: int = 0                # gangs created but not yet released (parked ones aside)
    #: gangs that wait for room with none of their pods placed (``_parked``): they hold
    #: nothing, so they take no admission slot; (Slurm order, key, seconds waiting)
    parked: list[tuple[tuple[str, int], GangKey, float]] = field(default_factory=list)

    def add(self, action: Action) -> None:
        self.actions.append(action)


def _comment(job: BridgedJob, plan: Plan, text: str) -> None:
    full = COMMENT_PREFIX + text
    if job.comment != full:
        plan.add(SetComment(job.key, full))


def _fresh(pod: PodInfo, slurmd_start: datetime | None) -> bool:
    """Was the node's slurmd started by this pod? A requeued job's new pods reuse the old
    hostnames, and the old run's slurmd (or its record) can still show the node IDLE for a
    while: releasing the job onto it fails ("Job credential revoked", or a dead address).
    Both times come from the pod's host clock (kubelet/containerd and slurmd), to the
    second; unknown times are taken as fresh."""
    if pod.started is None or slurmd_start is None:
        return True
    return slurmd_start >= pod.started.replace(microsecond=0)


def _gang_status(gang: Gang, slurm_nodes: Mapping[str, str],
                 slurmd_started: Mapping[str, datetime] | None = None,
                 node_problems: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """(ready to release, what we are waiting for) for a pending job's gang."""
    slurmd_started = slurmd_started or {}
    node_problems = node_problems or {}
    if gang.failed:
        return False, f"Kubernetes Job failed: {gang.failed}"
    if gang.waiting_admission:
        return False, gang.waiting_admission
    pods = [p for p in gang.pods if not p.terminating]
    if len(pods) < gang.size:
        return False, f"creating pods ({len(pods)}/{gang.size})"
    problems = [p.problem for p in pods if p.problem]
    scheduled = sum(1 for p in pods if p.scheduled)
    if scheduled < gang.size:
        detail = problems[0] if problems else "waiting for the scheduler"
        return False, f"{scheduled}/{gang.size} pods scheduled: {detail}"
    running = sum(1 for p in pods if p.phase == "Running")
    if running < gang.size:
        detail = problems[0] if problems else "containers starting"
        return False, f"{running}/{gang.size} pods running: {detail}"
    registered = [p.hostname for p in pods if _alive(slurm_nodes.get(p.hostname))
                  and _fresh(p, slurmd_started.get(p.hostname))]
    refused = [f"slurmctld refuses node {h}: {node_problems[h]}" for h in registered
               if h in node_problems]
    registered = [h for h in registered if h not in node_problems]
    if len(registered) < gang.size:
        detail = f": {refused[0]}" if refused else ""
        return False, f"{len(registered)}/{gang.size} Slurm nodes registered{detail}"
    return True, "all pods running and registered"


def _parked(gang: Gang) -> bool:
    """Every pod of the gang exists, none is placed, and the scheduler said why: the gang
    holds no GPUs and waits for room. It takes no admission slot (``plan``): a gang that
    does not fit now must not stop later jobs that do (Slurm's backfill)."""
    pods = [p for p in gang.pods if not p.terminating]
    return (not gang.waiting_admission and gang.size > 0 and len(pods) >= gang.size
            and not any(p.scheduled for p in pods)
            and any(p.problem.startswith("Unschedulable") for p in pods))


def _waited(gang: Gang, now: datetime | None) -> float:
    """Seconds since the gang's Job was created (0 when a time is unknown)."""
    if gang.created is None or now is None:
        return 0.0
    return max(0.0, (now - gang.created).total_seconds())


def _failed_pod(gang: Gang, lost: frozenset[str]) -> str:
    for pod in gang.pods:
        if pod.failed or pod.terminating:
            return f"pod {pod.name}: {pod.problem or 'deleted'}"
        if pod.node_name and pod.node_name in lost:
            return f"pod {pod.name}: Kubernetes node {pod.node_name} lost"
    if gang.failed:
        return f"Kubernetes Job failed: {gang.failed}"
    if gang.failed_pods:
        where = f" (index {gang.failed_indexes})" if gang.failed_indexes else ""
        return f"{gang.failed_pods} pod(s) of Kubernetes Job {gang.name} failed{where}"
    return ""


def _alive(state: str | None) -> bool:
    """A Slurm node that exists and whose slurmd may still report (not DOWN/FUTURE)."""
    return bool(state) and not str(state).startswith(("DOWN", "FUTURE"))


def _lost_hosts(job: BridgedJob, gang: Gang | None, world: World) -> tuple[tuple[str, ...], str]:
    """The job's Slurm nodes whose pods are gone or failing, and why (first reason)."""
    if gang is None:
        return job.nodes, "its Kubernetes Job was deleted"
    lost: dict[str, str] = {}
    by_host = {p.hostname: p for p in gang.pods}
    for name in job.nodes:
        pod = by_host.get(name)
        if pod is None:
            lost[name] = f"pod for {name} deleted"
        elif pod.failed or pod.terminating:
            lost[name] = f"pod {pod.name}: {pod.problem or 'deleted'}"
        elif pod.node_name and pod.node_name in world.lost_k8s_nodes:
            lost[name] = f"pod {pod.name}: Kubernetes node {pod.node_name} lost"
    if not lost:
        return (), ""
    hosts = tuple(sorted(lost))
    return hosts, lost[hosts[0]]


#: A pending job whose gang failed this many times before starting (bad image, a worker
#: that cannot reach slurmctld, ...) is ended with the last failure instead of retried.
MAX_START_FAILURES = 3

#: slurmctld writes its state at most every 5 s (22.05 SAVE_MAX_WAIT). A job that ended
#: less than this long ago can come back as RUNNING if slurmctld is killed now; its pods
#: and nodes are kept that long so that Slurm then finds them (and requeues or ends the
#: job itself) instead of a job whose nodes are gone. ``scancel`` does not wait.
FINISH_GRACE_S = 7.0

#: A parked gang that has waited this long reserves its turn: no job behind it in Slurm's
#: order gets a new gang until it is placed (so a large gang is not starved by small ones).
RESERVE_AFTER_S = 300.0


def plan(world: World, config: BridgeConfig, max_admitting: int = 8,
         finish_grace: float = FINISH_GRACE_S, reserve_after: float = RESERVE_AFTER_S) -> Plan:
    """Every action needed now; ``max_admitting`` caps gangs created but not yet released
    (it protects the API server: parked gangs, which hold nothing, do not count); a gang
    parked for ``reserve_after`` seconds (0: never) holds back the jobs after it in Slurm's
    order; a finished job's objects go once it has been seen finished ``finish_grace``
    seconds (at once when cancelled, or when ``world.finished_for`` does not know it). A
    gang to create is rendered here, from the job's normalized request and ``config``."""
    out = Plan()
    seen: set[GangKey] = set()
    pending_new: list[BridgedJob] = []
    for job in world.jobs:
        seen.add(job.key)
        gang = world.gangs.get(job.key)
        if job.state in FINISHED:
            if job.state != "CANCELLED" and \
                    world.finished_for.get(job.key, finish_grace) < finish_grace:
                continue
            if gang is not None:
                out.add(DeleteGang(job.key, gang.namespace, gang.name,
                                   f"Slurm job {job.key.slurm_id} {job.state}"))
            _forget_nodes(job, gang, world, out, config.cluster_name)
            continue
        if job.state in ACTIVE:
            _running(job, gang, world, out)
            continue
        # PENDING
        failure = _failed_pod(gang, world.lost_k8s_nodes) if gang is not None else ""
        if job.nodes:
            # A requeue Slurm has not finished: it keeps the job's allocation (NodeList,
            # GRES) until every node has reported the epilog (batch_requeue_fini). The
            # survivors' slurmd do that; a node set DOWN counts as done only if it was
            # DOWN when the requeue began. So when every node went down, 22.05 never
            # finishes: the job stays PENDING with its old NodeList, and a new run's steps
            # fail ("gres/gpu: _step_get_gres_cnt ... node offset invalid").
            if not job.held:
                out.add(HoldJob(job.key, "requeued by Slurm"))
            alive = [n for n in job.nodes if _alive(world.slurm_nodes.get(n))]
            if alive:
                _comment(job, out, f"requeuing: waiting for slurmd on {','.join(alive)} "
                                   "to end the previous run")
                continue
            if gang is not None:
                out.add(DeleteGang(job.key, gang.namespace, gang.name,
                                   f"Slurm job {job.key.slurm_id} cannot be requeued"))
            lost = job.comment[len(COMMENT_PREFIX + "requeuing: "):] \
                if job.comment.startswith(COMMENT_PREFIX + "requeuing: ") else ""
            out.add(FailJob(job.key, STALE_REQUEUE + (f" ({lost})" if lost else "")))
            continue
        if not job.held:
            if gang is not None and not failure:
                continue  # released by us, Slurm is starting it
            # Slurm requeued it after its nodes went down (it gave the job a priority
            # again), or someone released it: only the bridge may start a bridged job.
            out.add(HoldJob(job.key, failure or "released without Kubernetes pods"))
            continue
        if gang is None:
            if job.held and job.eligible:
                pending_new.append(job)
            elif job.held:
                _comment(job, out, f"waiting: {job.wait_reason}" if job.wait_reason
                         else "waiting")
            continue
        if not job.eligible:
            out.add(DeleteGang(job.key, gang.namespace, gang.name,
                               f"Slurm job {job.key.slurm_id} no longer eligible "
                               f"({job.wait_reason or 'held'})"))
            _comment(job, out, f"pods removed: {job.wait_reason or 'held'}")
            continue
        if failure:
            out.admitting += 1
            tries = world.start_failures.get(job.key, 0) + 1
            out.add(DeleteGang(job.key, gang.namespace, gang.name, failure,
                               failed_start=not (gang.waiting_admission or
                                                 any(p.disrupted for p in gang.pods))))
            # The new pods reuse the hostnames, with new addresses: the old dynamic nodes go
            # (Slurm is done with them: no NodeList), so that each new slurmd registers a
            # fresh node, not an old record that still points at the old pod.
            stale = _job_nodes(job, gang, world, config.cluster_name)
            if stale:
                out.add(DeleteNodes(stale))
            if tries >= MAX_START_FAILURES:
                out.add(FailJob(job.key, f"its pods failed {tries} times before it could start; "
                                         f"last: {failure}"))
            else:
                _comment(job, out, f"replacing failed pods: {failure}")
            continue
        ready, status = _gang_status(gang, world.slurm_nodes, world.slurmd_started,
                                     world.node_problems)
        if not ready and _parked(gang):
            out.parked.append((job.order, job.key, _waited(gang, world.now)))
        else:
            out.admitting += 1
        if ready:
            nodes = tuple(sorted(p.hostname for p in gang.pods if not p.terminating))
            out.add(PinAndRelease(job.key, nodes, start_now=job.restarts > 0))
            # Slurm refuses updates to a finished job, so what is set now stays: say
            # where it runs in words still true once it has ended (not "running")
            _comment(job, out, f"pods of Kubernetes Job {gang.namespace}/{gang.name}")
        else:
            _comment(job, out, status)

    starved = min((p for p in out.parked if reserve_after > 0 and p[2] >= reserve_after),
                  default=None)
    for job in sorted(pending_new, key=lambda j: j.order):
        if job.request is None:
            _comment(job, out, job.request_problem or "its partition is no longer bridged")
            continue
        if world.api_problem:
            _comment(job, out, f"waiting: {world.api_problem}")
            continue
        if starved is not None and job.order > starved[0]:
            _comment(job, out, f"queued: behind job {starved[1].slurm_id}, which has waited "
                               f"{starved[2]:.0f}s for room for its pods")
            continue
        if out.admitting >= max_admitting:
            _comment(job, out, f"queued: {max_admitting} jobs are already being admitted")
            continue
        out.admitting += 1
        objects = render(job.request, config, job.key.job_id, job.key.array_task_id)
        out.add(CreateGang(job.key, tuple(objects), job.request.nodes))
        _comment(job, out, "creating pods")

    for key, gang in world.gangs.items():
        if key not in seen:
            out.add(DeleteGang(key, gang.namespace, gang.name,
                               f"Slurm job {key.slurm_id} does not exist"))
    return out


def _running(job: BridgedJob, gang: Gang | None, world: World, out: Plan) -> None:
    """Pods lost under a running job: their Slurm nodes go down with the reason.

    Slurm then requeues the job (``--requeue``, the default with ``JobRequeue=1``) or ends
    it NODE_FAIL. The gang is *not* deleted here: the surviving pods' slurmd must report
    the end of the run first, or 22.05 keeps the old allocation (see ``plan``). Once the
    job is pending again the bridge holds it and replaces the gang; once it has ended, the
    FINISHED rule removes everything.
    """
    hosts, failure = _lost_hosts(job, gang, world)
    why = preemption(job, gang)
    if why and gang is not None:
        disrupted = {p.hostname for p in gang.pods if p.disrupted}
        if gang.waiting_admission or set(hosts) <= disrupted:
            _preempt(job, why, world, out)
            return
    if not hosts:
        return
    down = tuple(n for n in hosts if _alive(world.slurm_nodes.get(n)))
    if down:
        out.add(NodesDown(down, f"k8s: {failure}"))
    _comment(job, out, f"{'requeuing' if job.requeue else 'failed'}: {failure}")


def preemption(job: BridgedJob, gang: Gang | None) -> str:
    """Why Kubernetes is taking a running job's pods away, "" when it is not: a pod of the
    job's with a DisruptionTarget condition (kube-scheduler preemption, the Eviction API,
    the taint manager), or its Job suspended again by the gang backend (Kueue preemption)."""
    if gang is None or job.state not in ACTIVE:
        return ""
    if gang.waiting_admission:   # e.g. "kueue: evicted (Preempted): ..."
        return f"preempted by its gang scheduler, {gang.waiting_admission}"
    mine = set(job.nodes)
    return next((p.disrupted for p in gang.pods if p.disrupted and
                 (not mine or p.hostname in mine)), "")


def _preempt(job: BridgedJob, why: str, world: World, out: Plan) -> None:
    """What Slurm does to a job it preempts with a grace time, on behalf of Kubernetes: the
    job's ``--signal`` at once, its TIME to finish (a checkpoint), then the requeue (all its
    steps end on every node; no part of the gang goes on alone), or, for a ``--no-requeue``
    job, its nodes down (NODE_FAIL: a client cannot set Slurm's PREEMPTED state)."""
    if job.state == "COMPLETING":
        return          # the requeue (or the job's own end) is under way: nothing to signal
    marker = COMMENT_PREFIX + "preempting: "
    grace = job.signal[2] if job.signal else 0
    done = job.comment.startswith((marker, COMMENT_PREFIX + "requeuing: ",
                                   COMMENT_PREFIX + "failed: "))
    if job.signal and not done:
        out.add(SignalJob(job.key, job.signal[0], job.signal[1], why))
    if world.preempting_for.get(job.key, 0.0) < grace:
        target = "the batch shell" if job.signal and job.signal[1] else "its steps"
        name = _signal_name(job.signal[0]) if job.signal else ""
        _comment(job, out, f"preempting: {why}; {name} sent to {target}, {grace}s to finish")
        return
    if job.requeue:
        out.add(RequeueJob(job.key, why))
        _comment(job, out, f"requeuing: {why}")
        return
    down = tuple(n for n in job.nodes if _alive(world.slurm_nodes.get(n)))
    if down:
        out.add(NodesDown(down, f"k8s: {why}"))
    _comment(job, out, f"failed: {why}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _forget_nodes(job: BridgedJob, gang: Gang | None, world: World, out: Plan,
                  cluster_name: str) -> None:
    """The dynamic Slurm nodes of a finished job go: its allocation, its gang's pods, and
    any node named for it that registered late (a pod placed just as the job was cancelled
    registers after its gang was deleted, when nothing else names it)."""
    known = _job_nodes(job, gang, world, cluster_name)
    if known:
        out.add(DeleteNodes(known))


def _job_nodes(job: BridgedJob, gang: Gang | None, world: World,
               cluster_name: str) -> tuple[str, ...]:
    """The dynamic Slurm nodes of a job that exist: its allocation, its gang's pods, and
    every node named for it (``<cluster>-<job>[-<task>]-<index>``), whose pod may be gone."""
    names = set(job.nodes)
    if gang is not None:
        names |= {p.hostname for p in gang.pods}
    task = "" if job.key.array_task_id is None else f"-{job.key.array_task_id}"
    own = f"{cluster_name}-{job.key.job_id}{task}-"
    names |= {n for n in world.slurm_nodes
              if n.startswith(own) and n[len(own):].isdigit()}
    return tuple(sorted(n for n in names if n in world.slurm_nodes))
