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
* A running job whose pods fail is requeued held (so Slurm cannot start it on the
  inventory nodes) -- or, if it may not be requeued, its nodes go down with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

#: Slurm job states after which nothing of the job should remain in Kubernetes.
FINISHED = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED",
})
ACTIVE = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STAGE_OUT",
                    "SIGNALING", "RESIZING"})
COMMENT_PREFIX = "k8s: "


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


@dataclass(frozen=True)
class World:
    jobs: Sequence[BridgedJob]
    gangs: Mapping[GangKey, Gang]
    slurm_nodes: Mapping[str, str]    # dynamic node name -> state (e.g. IDLE, ALLOCATED, DOWN)
    lost_k8s_nodes: frozenset[str] = frozenset()   # Kubernetes nodes NotReady or gone


# -- actions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateGang:
    key: GangKey


@dataclass(frozen=True)
class DeleteGang:
    key: GangKey
    namespace: str
    name: str
    why: str


@dataclass(frozen=True)
class SetComment:
    key: GangKey
    text: str


@dataclass(frozen=True)
class PinAndRelease:
    key: GangKey
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class RequeueHeld:
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
class FailJob:
    """End a job Slurm can no longer run correctly; ``why`` goes into its comment."""

    key: GangKey
    why: str


Action = Union[CreateGang, DeleteGang, SetComment, PinAndRelease, RequeueHeld, NodesDown,
               DeleteNodes, FailJob]

#: Why a PENDING job that still has a NodeList is ended (see ``plan``).
STALE_REQUEUE = ("Slurm did not finish requeuing it after its pods were lost (their slurmd "
                 "were gone); Slurm 22.05 would start it again with its old GPU allocation "
                 "and its steps would fail")


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    admitting: int = 0                # gangs created but not yet released

    def add(self, action: Action) -> None:
        self.actions.append(action)


def _comment(job: BridgedJob, plan: Plan, text: str) -> None:
    full = COMMENT_PREFIX + text
    if job.comment != full:
        plan.add(SetComment(job.key, full))


def _gang_status(gang: Gang, slurm_nodes: Mapping[str, str]) -> tuple[bool, str]:
    """(ready to release, what we are waiting for) for a pending job's gang."""
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
    registered = [p.hostname for p in pods if p.hostname in slurm_nodes
                  and not slurm_nodes[p.hostname].startswith(("DOWN", "FUTURE"))]
    if len(registered) < gang.size:
        return False, f"{len(registered)}/{gang.size} Slurm nodes registered"
    return True, "all pods running and registered"


def _failed_pod(gang: Gang, lost: frozenset[str]) -> str:
    for pod in gang.pods:
        if pod.failed or pod.terminating:
            return f"pod {pod.name}: {pod.problem or 'deleted'}"
        if pod.node_name and pod.node_name in lost:
            return f"pod {pod.name}: Kubernetes node {pod.node_name} lost"
    if gang.failed:
        return f"Kubernetes Job failed: {gang.failed}"
    return ""


def plan(world: World, max_admitting: int = 8) -> Plan:
    """Every action needed now; ``max_admitting`` caps gangs created but not yet released."""
    out = Plan()
    seen: set[GangKey] = set()
    pending_new: list[BridgedJob] = []
    for job in world.jobs:
        seen.add(job.key)
        gang = world.gangs.get(job.key)
        if job.state in FINISHED:
            if gang is not None:
                out.add(DeleteGang(job.key, gang.namespace, gang.name,
                                   f"Slurm job {job.key.slurm_id} {job.state}"))
            _forget_nodes(job, gang, world, out)
            continue
        if job.state in ACTIVE:
            _running(job, gang, world, out)
            continue
        # PENDING
        if job.nodes:
            # slurmctld keeps a requeued job's allocation (NodeList, GRES) until every node
            # has reported its epilog (batch_requeue_fini). When the nodes went down instead
            # -- the pods and their slurmd were gone -- 22.05 never finishes the requeue:
            # the job stays PENDING with its old NodeList, and a new run's steps fail
            # ("gres/gpu: _step_get_gres_cnt ... node offset invalid"). End it, saying why.
            if gang is not None:
                out.add(DeleteGang(job.key, gang.namespace, gang.name,
                                   f"Slurm job {job.key.slurm_id} cannot be requeued"))
            lost = job.comment[len(COMMENT_PREFIX + "requeued: "):] \
                if job.comment.startswith(COMMENT_PREFIX + "requeued: ") else ""
            out.add(FailJob(job.key, STALE_REQUEUE + (f" ({lost})" if lost else "")))
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
        if not job.held:
            continue  # released by us, Slurm is starting it
        out.admitting += 1
        failure = _failed_pod(gang, world.lost_k8s_nodes)
        if failure:
            out.add(DeleteGang(job.key, gang.namespace, gang.name, failure))
            _comment(job, out, f"pods failed before start, retrying: {failure}")
            continue
        ready, status = _gang_status(gang, world.slurm_nodes)
        if ready:
            nodes = tuple(sorted(p.hostname for p in gang.pods if not p.terminating))
            out.add(PinAndRelease(job.key, nodes))
            _comment(job, out, f"running on pods of {gang.namespace}/{gang.name}")
        else:
            _comment(job, out, status)

    for job in sorted(pending_new, key=lambda j: j.order):
        if out.admitting >= max_admitting:
            _comment(job, out, f"queued: {max_admitting} jobs are already being admitted")
            continue
        out.admitting += 1
        out.add(CreateGang(job.key))
        _comment(job, out, "creating pods")

    for key, gang in world.gangs.items():
        if key not in seen:
            out.add(DeleteGang(key, gang.namespace, gang.name,
                               f"Slurm job {key.slurm_id} does not exist"))
    return out


def _running(job: BridgedJob, gang: Gang | None, world: World, out: Plan) -> None:
    failure = "its Kubernetes Job was deleted" if gang is None \
        else _failed_pod(gang, world.lost_k8s_nodes)
    if not failure:
        return
    if job.requeue:
        out.add(RequeueHeld(job.key, failure))
    if job.nodes:
        out.add(NodesDown(job.nodes, f"k8s: {failure}"))
    if gang is not None:
        out.add(DeleteGang(job.key, gang.namespace, gang.name, failure))
    _comment(job, out, f"{'requeued' if job.requeue else 'failed'}: {failure}")


def _forget_nodes(job: BridgedJob, gang: Gang | None, world: World, out: Plan) -> None:
    names = set(job.nodes)
    if gang is not None:
        names |= {p.hostname for p in gang.pods}
    known = tuple(sorted(n for n in names if n in world.slurm_nodes))
    if known:
        out.add(DeleteNodes(known))
