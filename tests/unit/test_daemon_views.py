"""How the daemon reads Slurm and Kubernetes objects into the planner's view."""

from __future__ import annotations

from datetime import datetime

import pytest

from slurm_k8s_bridge.daemon.metrics import DaemonMetrics
from slurm_k8s_bridge.daemon.observe import (
    _expand_hostlist,
    bridged_jobs_from_slurm,
    gang_from_k8s,
    lost_nodes,
    pod_info,
    quota_refusal,
)
from slurm_k8s_bridge.daemon.plan import GangKey
from slurm_k8s_bridge.slurm.records import SlurmJob
from slurm_k8s_bridge.core.request import SlurmJobRequest

pytestmark = pytest.mark.unit

STAMP = SlurmJobRequest(partition="gpu", min_nodes=2, tres_per_node="gres:gpu:8").stamp()
HELD = SlurmJobRequest(partition="gpu", user_hold=True).stamp()


def slurm_job(job_id, **kw):
    base = dict(job_id=job_id, array_job_id=None, array_task_id=None, name="j", user_id=1001,
                state="PENDING", reason="JobHeldUser", priority=0, dependency=None,
                begin_time=None, partition="gpu", nodelist="", req_nodelist="", comment="",
                stamp=STAMP, submit_time="2026-11-23T06:00:00", time_limit="1:00:00",
                exit_code="0:0", requeue=True, restarts=0)
    base.update(kw)
    return SlurmJob(**base)


def test_held_pending_job_is_eligible_and_keyed_by_job_id():
    jobs, records = bridged_jobs_from_slurm([slurm_job(7)], now=datetime(2026, 11, 23, 7))
    assert [j.key for j in jobs] == [GangKey(7)]
    assert jobs[0].held and jobs[0].eligible
    assert records[GangKey(7)].job_id == 7


def test_dependency_owner_hold_and_admin_hold_are_not_eligible():
    jobs, _ = bridged_jobs_from_slurm([
        slurm_job(1, dependency="afterok:9(unfulfilled)"),
        slurm_job(2, stamp=HELD),
        slurm_job(3, reason="JobHeldAdmin"),
    ])
    assert [j.eligible for j in jobs] == [False, False, False]
    assert "afterok:9" in jobs[0].wait_reason
    assert "owner" in jobs[1].wait_reason
    assert "administrator" in jobs[2].wait_reason


def test_pending_array_record_stands_for_each_task():
    meta = slurm_job(20, array_job_id=20, pending_array_tasks=(0, 1, 2))
    split = slurm_job(23, array_job_id=20, array_task_id=3, state="RUNNING", priority=1,
                      nodelist="slurm-20-3-[0-1]")
    jobs, _ = bridged_jobs_from_slurm([meta, split])
    assert [j.key for j in jobs] == [GangKey(20, 0), GangKey(20, 1), GangKey(20, 2),
                                     GangKey(20, 3)]
    assert jobs[3].nodes == ("slurm-20-3-0", "slurm-20-3-1")
    assert jobs[3].key.slurm_id == "20_3"


def test_hostlist_expansion():
    assert _expand_hostlist(("slurm-5-[0-2]",)) == ("slurm-5-0", "slurm-5-1", "slurm-5-2")
    assert _expand_hostlist(("a-[0,3],b",)) == ("a-0", "a-3", "b")


def _pod(i, **status):
    return {"metadata": {"name": f"slurm-5-{i}-abc", "labels": {}},
            "spec": {"hostname": f"slurm-5-{i}", "nodeName": status.pop("node", "")},
            "status": status}


def test_pod_info_reads_the_scheduler_message():
    p = pod_info(_pod(0, phase="Pending", conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/4 nodes are available: 4 node(s) were unschedulable."}]))
    assert not p.scheduled and p.hostname == "slurm-5-0"
    assert p.problem == "Unschedulable: 0/4 nodes are available: 4 node(s) were unschedulable."


def test_pod_info_image_pull_oom_and_eviction():
    pull = pod_info(_pod(0, phase="Pending", node="gpu-1", containerStatuses=[
        {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "back-off pulling"}}}]))
    assert pull.scheduled and pull.problem == "ImagePullBackOff: back-off pulling"
    assert not pull.failed
    oom = pod_info(_pod(1, phase="Running", node="gpu-1", containerStatuses=[
        {"state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]))
    assert oom.failed and oom.problem == "OOMKilled (exit code 137)"
    ev = pod_info(_pod(2, phase="Failed", reason="Evicted", message="node pressure"))
    assert ev.failed and ev.problem == "Evicted: node pressure"


def test_gang_from_job_and_pods():
    job = {"metadata": {"name": "slurm-5", "namespace": "slurm-jobs",
                        "labels": {"slurm-k8s-bridge.io/job-id": "5",
                                   "kueue.x-k8s.io/queue-name": "gpu-jobs"}},
           "spec": {"completions": 2, "suspend": True}, "status": {}}
    gang = gang_from_k8s(job, [_pod(1, phase="Pending"), _pod(0, phase="Pending")])
    assert gang is not None and gang.key == GangKey(5) and gang.size == 2
    assert [p.hostname for p in gang.pods] == ["slurm-5-0", "slurm-5-1"]
    assert gang.waiting_admission == "kueue: waiting for admission by Kueue (LocalQueue gpu-jobs)"
    assert gang_from_k8s({"metadata": {"labels": {}}}, []) is None


def test_lost_nodes_are_the_not_ready_ones():
    nodes = {"a": {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
             "b": {"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}}
    assert lost_nodes(nodes) == frozenset({"b"})


def test_metrics_text_format():
    m = DaemonMetrics()
    m.observe(0.03)
    m.jobs_by_phase = {"waiting": 2}
    text = m.render()
    assert 'slurm_k8s_bridge_jobs{phase="waiting"} 2' in text
    assert 'slurm_k8s_bridge_reconcile_seconds_bucket{le="0.05"} 1' in text
    assert "slurm_k8s_bridge_reconcile_seconds_count 1" in text


def test_a_requeued_gang_ignores_the_old_jobs_terminating_pods():
    job = {"metadata": {"name": "slurm-5", "namespace": "slurm-jobs", "uid": "new",
                        "labels": {"slurm-k8s-bridge.io/job-id": "5"}},
           "spec": {"completions": 1}, "status": {}}
    old = _pod(0, phase="Running")
    old["metadata"]["ownerReferences"] = [{"kind": "Job", "controller": True, "uid": "old"}]
    new = _pod(0, phase="Pending")
    new["metadata"]["ownerReferences"] = [{"kind": "Job", "controller": True, "uid": "new"}]
    gang = gang_from_k8s(job, [old, new])
    assert gang is not None and [p.phase for p in gang.pods] == ["Pending"]


def _quota_event(reason, message, when, uid="u1"):
    return {"metadata": {"name": f"slurm-6.{when}", "namespace": "slurm-jobs"},
            "involvedObject": {"kind": "Job", "name": "slurm-6", "namespace": "slurm-jobs", "uid": uid},
            "reason": reason, "message": message, "lastTimestamp": f"2026-12-07T10:00:{when:02d}Z"}


#: the Job controller's Event, as kube-controller-manager 1.34 writes it
EXCEEDED = ('Error creating: pods "slurm-6-1-x7k2q" is forbidden: exceeded quota: gpu-low, '
            "requested: requests.nvidia.com/gpu=8, used: requests.nvidia.com/gpu=8, "
            "limited: requests.nvidia.com/gpu=8")
QUOTA_JOB = {"metadata": {"name": "slurm-6", "namespace": "slurm-jobs", "uid": "u1",
                          "labels": {"slurm-k8s-bridge.io/job-id": "6"}},
             "spec": {"completions": 2, "parallelism": 2}, "status": {"active": 1}}


def test_a_resource_quota_refusal_is_the_gangs_reason():
    events = [_quota_event("SuccessfulCreate", "Created pod: slurm-6-0-abcde", 1),
              _quota_event("FailedCreate", EXCEEDED, 2)]
    assert quota_refusal(QUOTA_JOB, events) == (
        "waiting: ResourceQuota slurm-jobs/gpu-low: requested nvidia.com/gpu=8, used 8, limited 8")
    gang = gang_from_k8s(QUOTA_JOB, [_pod(0, phase="Running", node="gpu-1")], events=events)
    assert gang is not None and gang.waiting_admission.startswith("waiting: ResourceQuota")


def test_several_resources_name_only_the_limited_ones():
    message = ('Error creating: pods "p" is forbidden: exceeded quota: team, requested: '
               "requests.cpu=2,requests.nvidia.com/gpu=8, used: requests.cpu=10,"
               "requests.nvidia.com/gpu=16, limited: requests.nvidia.com/gpu=16")
    assert quota_refusal(QUOTA_JOB, [_quota_event("FailedCreate", message, 3)]) == (
        "waiting: ResourceQuota slurm-jobs/team: requested nvidia.com/gpu=8, used 16, limited 16")


def test_no_quota_reason_once_pods_were_created_or_for_other_failures():
    later = [_quota_event("FailedCreate", EXCEEDED, 2), _quota_event("SuccessfulCreate", "Created", 5)]
    assert quota_refusal(QUOTA_JOB, later) == ""
    other = [_quota_event("FailedCreate", 'Error creating: pods "p" is forbidden: '
                          "violates PodSecurity", 2)]
    assert quota_refusal(QUOTA_JOB, other) == ""
    # the refusal was about an older Job of the same name (before a requeue)
    assert quota_refusal(QUOTA_JOB, [_quota_event("FailedCreate", EXCEEDED, 2, uid="old")]) == ""
    # every pod exists: whatever an old Event says, the gang does not wait for the quota
    both = [_pod(0, phase="Running", node="gpu-1"), _pod(1, phase="Pending")]
    gang = gang_from_k8s(QUOTA_JOB, both, events=[_quota_event("FailedCreate", EXCEEDED, 2)])
    assert gang is not None and gang.waiting_admission == ""


def test_a_preempted_or_evicted_pod_says_who_took_it():
    victim = _pod(0, phase="Running", node="gpu-1", conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
         "message": "default-scheduler: preempting to accommodate a higher priority pod"}])
    victim["spec"]["priority"] = 100
    info = pod_info(victim)
    assert info.failed and info.problem == (
        "preempted by kube-scheduler for a higher-priority pod (the pod's priority 100): "
        "default-scheduler: preempting to accommodate a higher priority pod")
    evicted = pod_info(_pod(1, phase="Running", node="gpu-1", conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
         "message": "Eviction API: evicting"}]))
    assert evicted.failed and evicted.problem == "evicted through the Eviction API: Eviction API: evicting"
    # a condition that is no longer true is not a disruption
    calm = pod_info(_pod(2, phase="Running", node="gpu-1", conditions=[
        {"type": "DisruptionTarget", "status": "False", "reason": "PreemptionByScheduler"}]))
    assert not calm.failed and calm.problem == ""
