"""A running job whose pod Kubernetes takes away (preemption, eviction): ``--signal`` parsed as
sbatch does, carried to the pods' grace period, and the daemon's decisions (signal, grace,
requeue; never half a gang), on literal observations."""

from __future__ import annotations

import signal

import pytest

from slurm_k8s_bridge.core.config import load_config
from slurm_k8s_bridge.core.errors import BridgeRefusal
from slurm_k8s_bridge.core.normalize import normalize
from slurm_k8s_bridge.core.render import render
from slurm_k8s_bridge.core.request import KILL_JOB_BATCH, KILL_JOB_RESV, SlurmJobRequest
from slurm_k8s_bridge.daemon import plan as planner
from slurm_k8s_bridge.daemon.plan import (
    BridgedJob,
    DeleteGang,
    DeleteNodes,
    Gang,
    GangKey,
    NodesDown,
    PodInfo,
    RequeueJob,
    SetComment,
    SignalJob,
    World,
    preemption,
)
from slurm_k8s_bridge.slurm.sbatch import BAD_SIGNAL, parse_signal, request_from_sbatch

from ..paths import EXAMPLE_CONFIG

pytestmark = pytest.mark.unit

CONFIG = load_config(EXAMPLE_CONFIG)
KEY = GangKey(301)
HOSTS = ("slurm-301-0", "slurm-301-1")
WHY = "preempted by kube-scheduler for a higher-priority pod (the pod's priority 100)"


@pytest.mark.parametrize("text, expected", [
    ("USR1", (signal.SIGUSR1, 60, 0)),
    ("B:USR1@30", (signal.SIGUSR1, 30, KILL_JOB_BATCH)),
    ("b:sigusr2@0", (signal.SIGUSR2, 0, KILL_JOB_BATCH)),
    ("10@5", (10, 5, 0)),
    ("RB:TERM", (signal.SIGTERM, 60, KILL_JOB_BATCH | KILL_JOB_RESV)),
])
def test_signal_is_read_as_sbatch_reads_it(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_signal(text) == expected


@pytest.mark.parametrize("text", ["", "USR3", "B:", "B:USR1@", "B:USR1@x", "USR1@-5", "0",
                                  "USR1@70000", "70000", "USR1@5s"])
def test_a_bad_signal_is_refused_in_sbatchs_words(text: str) -> None:
    with pytest.raises(BridgeRefusal) as refused:
        parse_signal(text)
    assert refused.value.message == BAD_SIGNAL


def _bridged(*options: str):
    request = request_from_sbatch("#!/bin/bash\nsrun true\n",
                                  ["-p", "gpu", "-N", "2", "--gres=gpu:1", *options], 1000, 1000)
    breq = normalize(request, CONFIG)
    assert breq is not None
    return request, breq


def test_the_signal_reaches_the_pods_grace_period() -> None:
    request, breq = _bridged("--signal=B:USR1@45")
    assert request.signal == (10, 45, KILL_JOB_BATCH)
    # the stamp carries it to the daemon
    assert SlurmJobRequest.from_stamp(request.stamp()).signal == (10, 45, KILL_JOB_BATCH)
    assert (breq.preempt_signal, breq.preempt_signal_batch, breq.preempt_grace_seconds) == (10, True, 45)
    job = next(o for o in render(breq, CONFIG, 301) if o["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 45 + CONFIG.kill_wait_seconds


def test_without_signal_the_pods_get_killwait_and_a_long_time_is_capped() -> None:
    _, plain = _bridged()
    assert plain.preempt_signal is None and plain.preempt_grace_seconds == 0
    assert plain.termination_grace_seconds == CONFIG.kill_wait_seconds
    _, long = _bridged("--signal=USR2@3600")
    assert long.preempt_grace_seconds == CONFIG.max_preempt_grace_seconds
    assert not long.preempt_signal_batch


def _pod(i: int, **kw) -> PodInfo:
    return PodInfo(name=f"{HOSTS[i]}-x", hostname=HOSTS[i], phase="Running", scheduled=True,
                   node_name=f"gpu-{i}", **kw)


def _world(*, disrupted: bool = True, state: str = "RUNNING", signal_: tuple | None = None,
           comment: str = "", requeue: bool = True, waited: float | None = None,
           lost_other: bool = False) -> World:
    victim = _pod(1, disrupted=WHY, problem=WHY, failed=True, terminating=True) if disrupted \
        else _pod(1, problem="deleted", failed=True, terminating=True)
    pods = (_pod(0), victim)
    if lost_other:
        pods = (victim,)            # the other pod is gone altogether
    job = BridgedJob(key=KEY, state=state, held=False, eligible=False, nodes=HOSTS,
                     comment=comment, requeue=requeue, signal=signal_)
    gang = Gang(key=KEY, namespace="slurm-jobs", name="slurm-301", pods=pods, size=2)
    return World(jobs=[job], gangs={KEY: gang},
                 slurm_nodes={h: "ALLOCATED" for h in HOSTS},
                 preempting_for={} if waited is None else {KEY: waited})


def _actions(world: World) -> list:
    return planner.plan(world, CONFIG).actions


def test_a_preempted_job_gets_its_signal_then_its_grace_then_is_requeued_whole() -> None:
    sig = (int(signal.SIGUSR1), True, 45)
    first = _actions(_world(signal_=sig, waited=0.0))
    assert SignalJob(KEY, 10, True, WHY) in first
    assert not any(isinstance(a, (RequeueJob, NodesDown)) for a in first)
    comment = next(a.text for a in first if isinstance(a, SetComment))
    assert comment == f"k8s: preempting: {WHY}; SIGUSR1 sent to the batch shell, 45s to finish"
    # later rounds inside the grace: no second signal, nothing stopped
    during = _actions(_world(signal_=sig, comment=comment, waited=30.0))
    assert during == []
    # the grace is over: Slurm requeues the whole job (its steps end on every node)
    after = _actions(_world(signal_=sig, comment=comment, waited=45.0))
    assert RequeueJob(KEY, WHY) in after
    assert not any(isinstance(a, (NodesDown, DeleteGang, SignalJob)) for a in after)
    assert SetComment(KEY, f"k8s: requeuing: {WHY}") in after


def test_without_signal_the_requeue_comes_at_once_and_not_twice_while_completing() -> None:
    actions = _actions(_world(waited=0.0))
    assert RequeueJob(KEY, WHY) in actions
    assert not any(isinstance(a, SignalJob) for a in actions)
    assert not any(isinstance(a, RequeueJob) for a in _actions(_world(state="COMPLETING",
                                                                      waited=5.0)))


def test_a_no_requeue_job_ends_with_its_nodes_down_and_the_reason() -> None:
    actions = _actions(_world(requeue=False, waited=0.0))
    assert NodesDown(HOSTS, f"k8s: {WHY}") in actions
    assert SetComment(KEY, f"k8s: failed: {WHY}") in actions
    assert not any(isinstance(a, RequeueJob) for a in actions)


def test_a_pod_lost_otherwise_still_sets_its_node_down() -> None:
    # deleted without a DisruptionTarget: a node failure, as before
    assert NodesDown((HOSTS[1],), "k8s: pod slurm-301-1-x: deleted") in _actions(_world(disrupted=False))
    # a preempted pod and a pod gone altogether: the gone one is a node failure too
    actions = _actions(_world(lost_other=True, waited=0.0))
    assert any(isinstance(a, NodesDown) for a in actions)


def test_preemption_is_seen_only_for_running_jobs_and_kueue_suspension_counts() -> None:
    world = _world()
    job, gang = world.jobs[0], world.gangs[KEY]
    assert preemption(job, gang) == WHY
    pending = BridgedJob(key=KEY, state="PENDING", held=True, eligible=True)
    assert preemption(pending, gang) == ""
    suspended = Gang(key=KEY, namespace="n", name="slurm-301", pods=(_pod(0), _pod(1)), size=2,
                     waiting_admission="kueue: Preempted to accommodate a higher priority workload")
    assert preemption(job, suspended).startswith("preempted by its gang scheduler, kueue:")
    assert RequeueJob(KEY, preemption(job, suspended)) in _actions(
        World(jobs=[job], gangs={KEY: suspended}, slurm_nodes={h: "ALLOCATED" for h in HOSTS}))


def test_the_preempted_gang_replaced_after_the_requeue_is_not_a_failed_start() -> None:
    job = BridgedJob(key=KEY, state="PENDING", held=True, eligible=True, restarts=1)
    # the preempted pod of slurm-301-1 is gone already: its node goes all the same
    gang = Gang(key=KEY, namespace="slurm-jobs", name="slurm-301", size=2,
                pods=(_pod(0, disrupted=WHY, problem=WHY, failed=True, terminating=True),))
    actions = _actions(World(jobs=[job], gangs={KEY: gang},
                             slurm_nodes={HOSTS[0]: "IDLE", HOSTS[1]: "IDLE", "other-0": "IDLE"}))
    delete = next(a for a in actions if isinstance(a, DeleteGang))
    assert not delete.failed_start
    # the old dynamic nodes go, so the new pods' slurmd register afresh (new addresses)
    assert DeleteNodes(HOSTS) in actions


def test_qos_maps_to_a_workload_priority_class_on_kueue_partitions_only() -> None:
    import copy

    import yaml

    from slurm_k8s_bridge.core.config import parse_config
    from slurm_k8s_bridge.core.gang.kueue import PRIORITY_LABEL

    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data["qos_workload_priority_classes"] = {"high": "train-high"}
    data["partitions"]["kq"] = {"gang": "kueue", "queue": "gpu"}
    config = parse_config(copy.deepcopy(data), "test")

    def job_labels(partition: str, qos: str) -> dict:
        request = request_from_sbatch("#!/bin/bash\nsrun true\n",
                                      ["-p", partition, "-N1", "--gres=gpu:1", f"--qos={qos}"],
                                      1000, 1000)
        breq = normalize(request, config)
        job = next(o for o in render(breq, config, 7) if o["kind"] == "Job")
        return job["metadata"]["labels"]

    assert job_labels("kq", "high")[PRIORITY_LABEL] == "train-high"
    assert PRIORITY_LABEL not in job_labels("kq", "normal")     # no entry: the pods' class
    assert PRIORITY_LABEL not in job_labels("gpu", "high")      # built-in backend
    data["qos_workload_priority_classes"] = {"high": "Not_A_Name"}
    with pytest.raises(Exception, match="qos_workload_priority_classes"):
        parse_config(data, "test")


def test_no_second_signal_once_the_requeue_has_begun() -> None:
    sig = (int(signal.SIGUSR1), True, 45)
    for state, comment in (("COMPLETING", f"k8s: requeuing: {WHY}"),
                           ("RUNNING", f"k8s: requeuing: {WHY}"),
                           ("COMPLETING", "k8s: pods of Kubernetes Job slurm-jobs/slurm-301")):
        actions = _actions(_world(signal_=sig, comment=comment, state=state, waited=50.0))
        assert not any(isinstance(a, SignalJob) for a in actions), (state, comment, actions)
