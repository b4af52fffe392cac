"""The daemon's decisions (daemon.plan), on literal observations."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_k8s_bridge.core.config import load_config
from slurm_k8s_bridge.core.normalize import normalize
from slurm_k8s_bridge.core.render import render
from slurm_k8s_bridge.core.request import SlurmJobRequest
from slurm_k8s_bridge.daemon import plan as planner
from slurm_k8s_bridge.daemon.plan import (
    BridgedJob,
    CreateGang,
    DeleteGang,
    DeleteNodes,
    Gang,
    GangKey,
    NodesDown,
    PinAndRelease,
    PodInfo,
    SetComment,
    World,
)

pytestmark = pytest.mark.unit

K1, K2, K3 = GangKey(101), GangKey(102), GangKey(103)
CONFIG = load_config(Path(__file__).resolve().parents[2] / "slurm_plugins" / "k8s-bridge.example.yaml")
REQUEST = normalize(SlurmJobRequest(partition="gpu", min_nodes=2, tres_per_node="gres:gpu:1",
                                    user_id=1000, group_id=1000), CONFIG)


def plan(world, **kw):
    return planner.plan(world, CONFIG, **kw)


def job(key, state="PENDING", held=True, eligible=True, **kw):
    kw.setdefault("request", REQUEST)
    return BridgedJob(key=key, state=state, held=held, eligible=eligible,
                      order=("2026-01-01T00:00:00", key.job_id), **kw)


def test_the_create_action_carries_the_rendered_objects():
    p = plan(World(jobs=[job(K1)], gangs={}, slurm_nodes={}))
    create = next(a for a in p.actions if isinstance(a, CreateGang))
    assert list(create.objects) == render(REQUEST, CONFIG, K1.job_id)
    assert create.pods == 2
    assert [o["kind"] for o in create.objects] == ["Service", "Job"]


def test_a_job_the_configuration_now_refuses_gets_the_reason_not_pods():
    refused = job(K1, request=None, request_problem="cannot run with the current bridge "
                                                    "configuration: too many GPUs")
    p = plan(World(jobs=[refused, job(K2)], gangs={}, slurm_nodes={}), max_admitting=1)
    assert [a.key for a in p.actions if isinstance(a, CreateGang)] == [K2]
    comment = [a.text for a in p.actions if isinstance(a, SetComment) and a.key == K1]
    assert comment == ["k8s: cannot run with the current bridge configuration: too many GPUs"]


def pod(i, phase="Running", scheduled=True, **kw):
    return PodInfo(name=f"slurm-101-{i}-x", hostname=f"slurm-101-{i}", phase=phase,
                   scheduled=scheduled, node_name=f"gpu-{i}", **kw)


def gang(key=K1, pods=(), size=2, **kw):
    return Gang(key=key, namespace="slurm-jobs", name=f"slurm-{key.job_id}", pods=tuple(pods),
                size=size, **kw)


def kinds(p):
    return [type(a).__name__ for a in p.actions]


def test_while_the_api_server_does_not_answer_jobs_wait_saying_so_and_get_nothing():
    down = "Kubernetes API server https://127.0.0.1:6443 not answering (no answer)"
    running_gang = Gang(key=K2, namespace="slurm-jobs", name="slurm-102", size=1,
                        pods=(PodInfo(name="p", hostname="slurm-102-0", phase="Running",
                                      scheduled=True),))
    world = World(jobs=[job(K1), job(K2, state="RUNNING", held=False, nodes=("slurm-102-0",))],
                  gangs={K2: running_gang}, slurm_nodes={"slurm-102-0": "ALLOCATED"},
                  api_problem=down)
    p = plan(world)
    assert not [a for a in p.actions if isinstance(a, (CreateGang, DeleteGang, NodesDown))]
    assert [(a.key, a.text) for a in p.actions if isinstance(a, SetComment)] == [
        (K1, f"k8s: waiting: {down}")]
    # once it answers again the waiting job gets its gang
    again = plan(World(jobs=[job(K1)], gangs={}, slurm_nodes={}))
    assert [a.key for a in again.actions if isinstance(a, CreateGang)] == [K1]


def test_eligible_held_jobs_get_gangs_in_slurm_order_up_to_the_cap():
    jobs = [job(K3), job(K1), job(K2)]
    p = plan(World(jobs=jobs, gangs={}, slurm_nodes={}), max_admitting=2)
    created = [a.key for a in p.actions if isinstance(a, CreateGang)]
    assert created == [K1, K2]
    queued = [a for a in p.actions if isinstance(a, SetComment) and a.key == K3]
    assert queued and "2 jobs are already being admitted" in queued[0].text


def test_ineligible_jobs_wait_with_the_reason_and_get_nothing():
    jobs = [job(K1, eligible=False, wait_reason="dependency afterok:7 not satisfied"),
            job(K2, eligible=False, wait_reason="begin time 2026-12-01T00:00:00")]
    p = plan(World(jobs=jobs, gangs={}, slurm_nodes={}))
    assert "CreateGang" not in kinds(p)
    texts = {a.key: a.text for a in p.actions if isinstance(a, SetComment)}
    assert texts[K1] == "k8s: waiting: dependency afterok:7 not satisfied"
    assert texts[K2].startswith("k8s: waiting: begin time")


def test_unschedulable_reason_reaches_the_comment_and_nothing_is_released():
    g = gang(pods=[pod(0, phase="Pending", scheduled=False,
                       problem="Unschedulable: 0/4 nodes are available: 4 node(s) were "
                               "unschedulable"),
                   pod(1, phase="Pending", scheduled=False)])
    p = plan(World(jobs=[job(K1)], gangs={K1: g}, slurm_nodes={}))
    assert kinds(p) == ["SetComment"]
    assert p.actions[0].text == ("k8s: 0/2 pods scheduled: Unschedulable: 0/4 nodes are "
                                 "available: 4 node(s) were unschedulable")


def test_release_only_when_every_pod_runs_and_every_node_registered():
    g = gang(pods=[pod(0), pod(1)])
    one = plan(World(jobs=[job(K1)], gangs={K1: g}, slurm_nodes={"slurm-101-0": "IDLE"}))
    assert "PinAndRelease" not in kinds(one)
    assert one.actions[-1].text == "k8s: 1/2 Slurm nodes registered"
    both = plan(World(jobs=[job(K1)], gangs={K1: g},
                      slurm_nodes={"slurm-101-0": "IDLE", "slurm-101-1": "IDLE"}))
    release = [a for a in both.actions if isinstance(a, PinAndRelease)]
    assert release == [PinAndRelease(K1, ("slurm-101-0", "slurm-101-1"))]
    # set as it starts, kept once it ended (Slurm refuses updates then): no "running"
    assert [a.text for a in both.actions if isinstance(a, SetComment)] == [
        "k8s: pods of Kubernetes Job slurm-jobs/slurm-101"]


def test_a_pod_failing_before_start_recreates_the_gang():
    g = gang(pods=[pod(0), pod(1, phase="Failed", failed=True, problem="Evicted: node pressure")])
    p = plan(World(jobs=[job(K1)], gangs={K1: g}, slurm_nodes={}))
    deletes = [a for a in p.actions if isinstance(a, DeleteGang)]
    assert deletes and "Evicted" in deletes[0].why
    assert "PinAndRelease" not in kinds(p)


UP = {"slurm-101-0": "ALLOCATED", "slurm-101-1": "ALLOCATED"}


def test_running_job_losing_a_pod_gets_only_that_node_down_and_keeps_the_survivors():
    g = gang(pods=[pod(0), pod(1, phase="Failed", failed=True, problem="OOMKilled")])
    running = job(K1, state="RUNNING", held=False, nodes=("slurm-101-0", "slurm-101-1"))
    p = plan(World(jobs=[running], gangs={K1: g}, slurm_nodes=UP))
    assert kinds(p) == ["NodesDown", "SetComment"]
    down = p.actions[0]
    assert isinstance(down, NodesDown) and down.nodes == ("slurm-101-1",)
    assert down.why == "k8s: pod slurm-101-1-x: OOMKilled"
    assert p.actions[1].text == "k8s: requeuing: pod slurm-101-1-x: OOMKilled"


def test_a_vanished_pod_counts_as_lost_and_a_node_already_down_is_not_set_again():
    g = gang(pods=[pod(0)], failed_pods=1, failed_indexes="1")
    running = job(K1, state="COMPLETING", held=False, nodes=("slurm-101-0", "slurm-101-1"))
    p = plan(World(jobs=[running], gangs={K1: g}, slurm_nodes=UP))
    assert [a.nodes for a in p.actions if isinstance(a, NodesDown)] == [("slurm-101-1",)]
    p = plan(World(jobs=[running], gangs={K1: g},
                   slurm_nodes={**UP, "slurm-101-1": "DOWN+DYNAMIC_NORM"}))
    assert "NodesDown" not in kinds(p) and "DeleteGang" not in kinds(p)


def test_running_job_that_may_not_requeue_only_gets_its_nodes_down():
    running = job(K1, state="RUNNING", held=False, nodes=("slurm-101-0",), requeue=False)
    p = plan(World(jobs=[running], gangs={}, slurm_nodes={"slurm-101-0": "ALLOCATED"}))
    assert kinds(p) == ["NodesDown", "SetComment"]
    assert p.actions[0].why == "k8s: its Kubernetes Job was deleted"
    assert p.actions[1].text == "k8s: failed: its Kubernetes Job was deleted"


def test_lost_kubernetes_node_counts_as_a_failed_pod():
    g = gang(pods=[pod(0), pod(1)])
    running = job(K1, state="RUNNING", held=False, nodes=("slurm-101-0", "slurm-101-1"))
    p = plan(World(jobs=[running], gangs={K1: g}, slurm_nodes=UP,
                   lost_k8s_nodes=frozenset({"gpu-1"})))
    assert kinds(p)[0] == "NodesDown" and p.actions[0].nodes == ("slurm-101-1",)
    assert "Kubernetes node gpu-1 lost" in p.actions[0].why


def test_requeue_in_progress_is_held_and_waits_for_the_survivors_slurmd():
    g = gang(pods=[pod(0)], failed_pods=1)
    requeuing = job(K1, held=False, nodes=("slurm-101-0", "slurm-101-1"), restarts=1,
                    comment="k8s: requeuing: pod for slurm-101-1 deleted")
    p = plan(World(jobs=[requeuing], gangs={K1: g},
                   slurm_nodes={"slurm-101-0": "IDLE+COMPLETING", "slurm-101-1": "DOWN"}))
    assert kinds(p) == ["HoldJob", "SetComment"]
    assert p.actions[1].text == ("k8s: requeuing: waiting for slurmd on slurm-101-0 to end "
                                 "the previous run")


def test_requeued_job_is_held_then_its_old_gang_replaced_and_released_at_once():
    g = gang(pods=[pod(0)], failed_pods=1, failed_indexes="1")
    requeued = job(K1, held=False, restarts=1)
    p = plan(World(jobs=[requeued], gangs={K1: g}, slurm_nodes={}))
    assert kinds(p) == ["HoldJob"]
    held = job(K1, restarts=1)
    p = plan(World(jobs=[held], gangs={K1: g}, slurm_nodes={}))
    assert kinds(p) == ["DeleteGang", "SetComment"]
    assert "1 pod(s) of Kubernetes Job slurm-101 failed (index 1)" in p.actions[0].why
    fresh = gang(pods=[pod(0), pod(1)])
    p = plan(World(jobs=[held], gangs={K1: fresh},
                   slurm_nodes={"slurm-101-0": "IDLE", "slurm-101-1": "IDLE"}))
    release = [a for a in p.actions if isinstance(a, PinAndRelease)]
    assert release and release[0].start_now


def test_a_job_released_by_someone_else_without_pods_is_held_again():
    p = plan(World(jobs=[job(K1, held=False)], gangs={}, slurm_nodes={}))
    assert kinds(p) == ["HoldJob"]
    assert p.actions[0].why == "released without Kubernetes pods"


def test_released_job_with_healthy_pods_is_left_to_slurm():
    g = gang(pods=[pod(0), pod(1)])
    p = plan(World(jobs=[job(K1, held=False)], gangs={K1: g},
                   slurm_nodes={"slurm-101-0": "IDLE", "slurm-101-1": "IDLE"}))
    assert p.actions == []
    first = [a for a in plan(World(jobs=[job(K1)], gangs={K1: g}, slurm_nodes={
        "slurm-101-0": "IDLE", "slurm-101-1": "IDLE"})).actions if isinstance(a, PinAndRelease)]
    assert first and not first[0].start_now


def test_finished_jobs_leave_nothing_behind():
    g = gang(pods=[pod(0), pod(1)])
    done = job(K1, state="COMPLETED", held=False, nodes=("slurm-101-0", "slurm-101-1"))
    p = plan(World(jobs=[done], gangs={K1: g},
                   slurm_nodes={"slurm-101-0": "IDLE", "slurm-101-1": "IDLE"}))
    assert [type(a) for a in p.actions] == [DeleteGang, DeleteNodes]
    assert p.actions[1].nodes == ("slurm-101-0", "slurm-101-1")


def test_held_again_removes_pods_but_keeps_the_job():
    g = gang(pods=[pod(0, phase="Pending", scheduled=False)])
    p = plan(World(jobs=[job(K1, eligible=False, wait_reason="held by its owner")],
                   gangs={K1: g}, slurm_nodes={}))
    assert kinds(p) == ["DeleteGang", "SetComment"]
    assert p.actions[1].text == "k8s: pods removed: held by its owner"


def test_orphans_are_deleted_only_for_jobs_slurm_does_not_know():
    g2 = gang(key=K2)
    p = plan(World(jobs=[job(K1)], gangs={K2: g2}, slurm_nodes={}))
    deletes = [a for a in p.actions if isinstance(a, DeleteGang)]
    assert [d.key for d in deletes] == [K2]
    assert deletes[0].why == "Slurm job 102 does not exist"


def test_array_tasks_are_separate_gangs():
    t0, t1 = GangKey(200, 0), GangKey(200, 1)
    assert t1.slurm_id == "200_1"
    array = normalize(SlurmJobRequest(partition="gpu", min_nodes=1, tres_per_node="gres:gpu:1",
                                      array_inx="0-1"), CONFIG)
    p = plan(World(jobs=[job(t0, request=array), job(t1, request=array)], gangs={}, slurm_nodes={}))
    creates = [a for a in p.actions if isinstance(a, CreateGang)]
    assert [a.key for a in creates] == [t0, t1]
    assert [a.objects[-1]["metadata"]["name"] for a in creates] == ["slurm-200-0", "slurm-200-1"]


def test_unchanged_comment_is_not_rewritten():
    p = plan(World(jobs=[job(K1, eligible=False, wait_reason="x", comment="k8s: waiting: x")],
                   gangs={}, slurm_nodes={}))
    assert p.actions == []


def test_pending_job_still_holding_its_old_allocation_is_ended_with_the_reason():
    """22.05 never finishes a requeue when every node went down: the job stays PENDING
    with its old NodeList and would fail on new pods; the bridge ends it, saying why."""
    from slurm_k8s_bridge.daemon.plan import FailJob

    g = gang(pods=[pod(0)])
    stale = job(K1, nodes=("slurm-101-0", "slurm-101-1"),
                comment="k8s: requeuing: its Kubernetes Job was deleted")
    p = plan(World(jobs=[stale], gangs={K1: g},
                   slurm_nodes={"slurm-101-0": "DOWN", "slurm-101-1": "DOWN+DYNAMIC_NORM"}))
    assert kinds(p) == ["DeleteGang", "FailJob"]
    fail = p.actions[1]
    assert isinstance(fail, FailJob) and fail.why.endswith("(its Kubernetes Job was deleted)")


def test_a_slurmd_older_than_its_pod_is_not_taken_as_registered():
    """A requeued job's new pods reuse the hostnames: the old run's slurmd still shows the
    node IDLE for a moment, and releasing onto it fails ("Job credential revoked")."""
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2026, 11, 23, 7, 56, 1, 500000, tzinfo=timezone.utc)
    g = gang(pods=[pod(0, started=t0), pod(1, started=t0)])
    nodes = {"slurm-101-0": "IDLE", "slurm-101-1": "IDLE"}
    stale = {"slurm-101-0": t0 + timedelta(seconds=1), "slurm-101-1": t0 - timedelta(seconds=9)}
    p = plan(World(jobs=[job(K1)], gangs={K1: g}, slurm_nodes=nodes, slurmd_started=stale))
    assert "PinAndRelease" not in kinds(p)
    assert p.actions[-1].text == "k8s: 1/2 Slurm nodes registered"
    same_second = {**stale, "slurm-101-1": t0.replace(microsecond=0)}
    p = plan(World(jobs=[job(K1)], gangs={K1: g}, slurm_nodes=nodes, slurmd_started=same_second))
    assert "PinAndRelease" in kinds(p)


def test_a_finished_job_keeps_its_pods_one_state_save_interval_unless_cancelled():
    g = gang(pods=[pod(0), pod(1)])
    nodes = {"slurm-101-0": "IDLE", "slurm-101-1": "IDLE"}
    done = job(K1, state="COMPLETED", held=False, nodes=("slurm-101-0", "slurm-101-1"))
    p = plan(World(jobs=[done], gangs={K1: g}, slurm_nodes=nodes, finished_for={K1: 2.0}))
    assert p.actions == []
    p = plan(World(jobs=[done], gangs={K1: g}, slurm_nodes=nodes, finished_for={K1: 7.5}))
    assert kinds(p) == ["DeleteGang", "DeleteNodes"]
    cancelled = job(K1, state="CANCELLED", held=False, nodes=("slurm-101-0", "slurm-101-1"))
    p = plan(World(jobs=[cancelled], gangs={K1: g}, slurm_nodes=nodes, finished_for={K1: 0.0}))
    assert kinds(p) == ["DeleteGang", "DeleteNodes"]


def test_a_node_slurmctld_refused_is_not_released_onto_and_says_why():
    g = gang(pods=[pod(0), pod(1)])
    nodes = {"slurm-101-0": "IDLE", "slurm-101-1": "IDLE"}
    why = "gres/gpu count reported lower than configured (0 < 1)"
    p = plan(World(jobs=[job(K1)], gangs={K1: g}, slurm_nodes=nodes,
                   node_problems={"slurm-101-1": why}))
    assert "PinAndRelease" not in kinds(p)
    assert p.actions[-1].text == f"k8s: 1/2 Slurm nodes registered: slurmctld refuses node slurm-101-1: {why}"


def test_pods_failing_before_start_are_retried_then_the_job_ends_with_the_reason():
    from slurm_k8s_bridge.daemon.plan import MAX_START_FAILURES, FailJob

    bad = "pod slurm-101-0-x: Error (exit code 1): slurmd: fatal: Unable to process configuration file"
    g = gang(pods=[pod(0, phase="Failed", failed=True,
                       problem="Error (exit code 1): slurmd: fatal: Unable to process configuration file"), pod(1)])
    p = plan(World(jobs=[job(K1)], gangs={K1: g}, slurm_nodes={}))
    assert kinds(p) == ["DeleteGang", "SetComment"] and p.actions[0].failed_start
    p = plan(World(jobs=[job(K1)], gangs={K1: g}, slurm_nodes={},
                   start_failures={K1: MAX_START_FAILURES - 1}))
    assert kinds(p) == ["DeleteGang", "FailJob"]
    fail = p.actions[1]
    assert isinstance(fail, FailJob) and fail.why == (
        f"its pods failed {MAX_START_FAILURES} times before it could start; last: {bad}")


UNSCHEDULABLE = "Unschedulable: 0/4 nodes are available: 4 Insufficient cpu."
T0 = __import__("datetime").datetime(2026, 12, 7, 10, 0, tzinfo=__import__("datetime").timezone.utc)


def parked(key, created=T0):
    return gang(key=key, created=created, pods=[
        PodInfo(name=f"slurm-{key.job_id}-{i}-x", hostname=f"slurm-{key.job_id}-{i}",
                phase="Pending", problem=UNSCHEDULABLE) for i in range(2)])


def test_gangs_waiting_for_room_take_no_admission_slot_so_later_jobs_that_fit_start():
    """Head-of-line: 8 gangs nobody can place now, then a job: it gets its gang."""
    stuck = [GangKey(200 + i) for i in range(8)]
    world = World(jobs=[job(k) for k in stuck] + [job(K1)],
                  gangs={k: parked(k) for k in stuck}, slurm_nodes={},
                  now=T0.replace(minute=1))
    p = plan(world, max_admitting=8)
    assert [a.key for a in p.actions if isinstance(a, CreateGang)] == [K1]
    assert len(p.parked) == 8 and p.admitting == 1
    # a gang with a pod placed holds GPUs: it keeps its slot, as does one still creating pods
    half = gang(key=stuck[0], pods=[pod(0), PodInfo(name="b", hostname="slurm-200-1",
                                                    phase="Pending", problem=UNSCHEDULABLE)])
    creating = gang(key=stuck[1], pods=[])
    p = plan(World(jobs=[job(stuck[0]), job(stuck[1]), job(K1)],
                   gangs={stuck[0]: half, stuck[1]: creating}, slurm_nodes={}), max_admitting=2)
    assert not [a for a in p.actions if isinstance(a, CreateGang)]
    assert any(isinstance(a, SetComment) and a.key == K1 and "already being admitted" in a.text
               for a in p.actions)


def test_a_gang_waiting_past_the_bound_keeps_its_turn():
    """Starvation: once a parked gang has waited reserve_after, jobs after it in Slurm's
    order wait behind it (saying so); jobs before it are not held back."""
    early = GangKey(50)
    world = World(jobs=[job(early), job(K2), job(K3)], gangs={K2: parked(K2)}, slurm_nodes={},
                  now=T0.replace(minute=6))
    p = plan(world, reserve_after=300)
    assert [a.key for a in p.actions if isinstance(a, CreateGang)] == [early]
    waits = [a.text for a in p.actions if isinstance(a, SetComment) and a.key == K3]
    assert waits == ["k8s: queued: behind job 102, which has waited 360s for room for its pods"]
    # before the bound, or with reservations off, the later job starts
    for now, bound in ((T0.replace(minute=4), 300), (T0.replace(minute=6), 0)):
        p = plan(World(jobs=[job(K2), job(K3)], gangs={K2: parked(K2)}, slurm_nodes={}, now=now),
                 reserve_after=bound)
        assert [a.key for a in p.actions if isinstance(a, CreateGang)] == [K3]


def test_a_node_that_registered_after_its_cancelled_jobs_gang_went_is_removed():
    """A pod placed just as its job was cancelled registers once the gang is gone."""
    world = World(jobs=[job(K1, state="CANCELLED", held=False),
                        job(GangKey(7, 1), state="CANCELLED", held=False)], gangs={},
                  slurm_nodes={"slurm-101-0": "IDLE", "slurm-1010-0": "IDLE",
                               "slurm-7-1-0": "IDLE", "slurm-7-10-0": "IDLE", "slurm-7-1-x": "IDLE"})
    p = plan(world)
    deleted = sorted(n for a in p.actions if isinstance(a, DeleteNodes) for n in a.nodes)
    assert deleted == ["slurm-101-0", "slurm-7-1-0"]
