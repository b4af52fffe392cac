"""Kueue's reasons in the bridge's words: Workload conditions as Kueue v0.17 writes them
(messages copied from a real Kueue run against the dev cluster, tests/k8s/test_kueue.py)."""

from __future__ import annotations

from typing import Any

import pytest

from slurm_k8s_bridge.core import gang
from slurm_k8s_bridge.core.gang.kueue import QUEUE_LABEL, KueueGang, workload_reason

pytestmark = pytest.mark.unit

NO_FIT = ("couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor "
          "default-flavor, previously considered podsets requests (0) + current podset request (16) "
          "> maximum capacity (8)")
UNUSED = ("couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in "
          "flavor default-flavor, 8 more needed")


def _job(suspend: bool = True, uid: str = "u1") -> dict[str, Any]:
    return {"metadata": {"name": "c-5", "namespace": "jobs", "uid": uid,
                         "labels": {QUEUE_LABEL: "gpu-lq"}},
            "spec": {"suspend": suspend}}


def _workload(conditions: list[dict[str, Any]], gpus: str = "16") -> dict[str, Any]:
    return {"metadata": {"name": "job-c-5-abcde", "namespace": "jobs"},
            "status": {"conditions": conditions,
                       "resourceRequests": [{"name": "main", "resources": {"cpu": "2",
                                                                           "nvidia.com/gpu": gpus}}]}}


def _pending(message: str) -> dict[str, Any]:
    return {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": message}


def _related(workload: dict[str, Any] | None, cluster_queue: str | None = "gpu") -> gang.Related:
    named = {}
    if cluster_queue is not None:
        named[("LocalQueue", "gpu-lq")] = {"spec": {"clusterQueue": cluster_queue}}
    return gang.Related(owned={"Workload": [workload] if workload else []}, named=named)


def test_waiting_for_quota_names_the_cluster_queue_and_the_numbers() -> None:
    why = KueueGang().waiting(_job(), _related(_workload([_pending(UNUSED)])))
    assert why == "kueue: waiting for quota in ClusterQueue gpu: 16 nvidia.com/gpu requested, 8 free"


def test_never_fits_says_so_with_the_capacity() -> None:
    why = KueueGang().waiting(_job(), _related(_workload([_pending(NO_FIT)])))
    assert why == ("kueue: ClusterQueue gpu can never admit it: 16 nvidia.com/gpu requested, "
                   "at most 8")


def test_unused_quota_wins_over_a_flavor_that_never_fits() -> None:
    both = (UNUSED.replace("default-flavor", "h100") + ", "
            + NO_FIT.split(": ", 1)[1].replace("default-flavor", "a100"))
    why = workload_reason(_workload([_pending(both)]), "gpu-lq", "gpu")
    assert why == ("kueue: waiting for quota in ClusterQueue gpu: 16 nvidia.com/gpu requested, "
                   "8 free (flavor h100)")


def test_without_the_local_queue_the_queue_is_named() -> None:
    why = KueueGang().waiting(_job(), _related(_workload([_pending(UNUSED)]), cluster_queue=None))
    assert why.startswith("kueue: waiting for quota in the ClusterQueue of LocalQueue gpu-lq: ")


def test_other_messages_are_quoted() -> None:
    why = workload_reason(_workload([_pending("LocalQueue gpu-lq doesn't exist")]), "gpu-lq", "")
    assert why == "kueue: LocalQueue gpu-lq doesn't exist (the ClusterQueue of LocalQueue gpu-lq)"


def test_states_before_and_after_admission() -> None:
    assert KueueGang().waiting(_job(), _related(None)) == \
        "kueue: waiting for admission by Kueue (LocalQueue gpu-lq)"
    admitted = _workload([{"type": "QuotaReserved", "status": "True"},
                          {"type": "Admitted", "status": "True"}])
    assert KueueGang().waiting(_job(), _related(admitted)) == \
        "kueue: admitted in ClusterQueue gpu, waiting for Kueue to start the Job"
    assert KueueGang().waiting(_job(suspend=False), _related(admitted)) == ""
    reserved = _workload([{"type": "QuotaReserved", "status": "True"}])
    assert "waiting for admission checks" in KueueGang().waiting(_job(), _related(reserved))


def test_waiting_reason_passes_related_through_every_backend() -> None:
    why = gang.waiting_reason(_job(), _related(_workload([_pending(UNUSED)])))
    assert why.endswith("16 nvidia.com/gpu requested, 8 free")


def test_rbac_reads_workloads_and_local_queues_only() -> None:
    rules = KueueGang().rbac_rules()
    assert rules == [{"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads", "localqueues"],
                      "verbs": ["get", "list", "watch"]}]


def test_the_watch_cache_finds_a_jobs_workload_by_owner_and_its_queue_by_name() -> None:
    from kubernetes import client

    from slurm_k8s_bridge.kube.access import READ_KINDS, KubeAccess
    access = KubeAccess(client.ApiClient(), cluster_name="c", namespaces=["jobs"])
    workload_kind, local_queue_kind = READ_KINDS["Workload"][2], READ_KINDS["LocalQueue"][2]
    mine = {"metadata": {"name": "job-c-5-x", "namespace": "jobs", "resourceVersion": "1",
                         "ownerReferences": [{"kind": "Job", "name": "c-5", "uid": "u1",
                                              "controller": True}]}}
    other = {"metadata": {"name": "job-c-6-x", "namespace": "jobs", "resourceVersion": "1",
                          "ownerReferences": [{"kind": "Job", "name": "c-6", "uid": "u2",
                                               "controller": True}]}}
    queue = {"metadata": {"name": "gpu-lq", "namespace": "jobs", "resourceVersion": "1"},
             "spec": {"clusterQueue": "gpu"}}
    access._replace(workload_kind, "jobs", [mine, other])
    access._apply(local_queue_kind, "ADDED", queue)
    related = access.related(_job(uid="u1"))
    assert related.owned == {"Workload": [mine]}
    assert related.named == {("LocalQueue", "gpu-lq"): queue}
    access._apply(workload_kind, "DELETED", mine)
    assert access.related(_job(uid="u1")).owned == {"Workload": []}
