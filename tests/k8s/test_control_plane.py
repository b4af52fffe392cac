"""LocalKubeCluster: a real etcd/apiserver/controller-manager/scheduler with KWOK GPU nodes."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from slurm_k8s_devcluster.k8s import wait_for

from .conftest import GPU_NODES

pytestmark = pytest.mark.k8s

PRODUCT = "NVIDIA-H100-80GB-HBM3"


def _ready(node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def _gpu_pod(name: str, gpus: int, **meta) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, **meta},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "fake.invalid/worker:1",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
    }


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_server_version_is_the_pinned_release(admin):
    info = client.VersionApi(admin).get_code()
    assert info.git_version == "v1.34.10"
    assert (info.major, info.minor) == ("1", "34")


def test_kwok_gpu_nodes_are_ready_with_gpus(admin):
    nodes = client.CoreV1Api(admin).list_node(label_selector="type=kwok").items
    gpu_nodes = sorted(n.metadata.name for n in nodes if n.metadata.name.startswith("gpu-"))
    assert gpu_nodes == [f"gpu-{i}" for i in range(GPU_NODES)]
    for node in nodes:
        if node.metadata.name not in gpu_nodes:
            continue
        assert _ready(node), node.status.conditions
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
        assert node.status.capacity["nvidia.com/gpu"] == "8"
        labels = node.metadata.labels
        assert labels["nvidia.com/gpu.product"] == PRODUCT
        assert labels["nvidia.com/gpu.count"] == "8"
        assert labels["nvidia.com/gpu.memory"] == "81559"
        assert labels["feature.node.kubernetes.io/pci-10de.present"] == "true"
        assert node.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
        assert not any(t.key.startswith("node.kubernetes.io/") for t in node.spec.taints or [])


def test_mig_and_tainted_nodes_can_be_added_and_deleted(kube_cluster, admin):
    core = client.CoreV1Api(admin)
    names = kube_cluster.add_gpu_nodes(
        2, prefix="mig", gpus=0, gpu_product="NVIDIA-A100-SXM4-80GB", mig={"1g.10gb": 14},
        labels={"pool": "mig"}, taints=["dedicated=mig:NoSchedule"])
    assert names == ["mig-0", "mig-1"]
    node = core.read_node("mig-1")
    assert _ready(node)
    assert node.status.allocatable["nvidia.com/mig-1g.10gb"] == "14"
    assert node.metadata.labels["nvidia.com/mig.strategy"] == "mixed"
    assert node.metadata.labels["nvidia.com/mig-1g.10gb.count"] == "14"
    assert node.metadata.labels["pool"] == "mig"
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [
        ("dedicated", "mig", "NoSchedule")]
    kube_cluster.delete_nodes(names)
    left = {n.metadata.name for n in core.list_node().items}
    assert not left & set(names)
    assert {f"gpu-{i}" for i in range(GPU_NODES)} <= left


def test_indexed_job_runs_on_two_distinct_kwok_nodes(kube_cluster, admin):
    ns = "jobs"
    kube_cluster.ensure_namespace(ns)
    core, batch = client.CoreV1Api(admin), client.BatchV1Api(admin)
    name = _unique("train")
    pod_spec = _gpu_pod("unused", 8)["spec"]
    batch.create_namespaced_job(ns, {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {"completionMode": "Indexed", "completions": 2, "parallelism": 2,
                 "backoffLimit": 0, "template": {"spec": pod_spec}},
    })
    selector = f"batch.kubernetes.io/job-name={name}"

    def running_pods():
        pods = core.list_namespaced_pod(ns, label_selector=selector).items
        running = [p for p in pods if p.status.phase == "Running" and p.spec.node_name]
        return running if len(running) == 2 else None

    pods = wait_for(running_pods, 60, f"2 Running pods of Job {name}")
    nodes = {p.spec.node_name for p in pods}
    assert len(nodes) == 2, nodes
    assert nodes <= {f"gpu-{i}" for i in range(GPU_NODES)}
    indexes = {p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods}
    assert indexes == {"0", "1"}
    for p in pods:
        assert p.spec.containers[0].resources.requests["nvidia.com/gpu"] == "8"

    # Pods stay Running until told otherwise; the kwok completion stage then lets the
    # real Job controller finish the Job.
    time.sleep(1)
    assert all(p.status.phase == "Running"
               for p in core.list_namespaced_pod(ns, label_selector=selector).items)
    for p in pods:
        core.patch_namespaced_pod(p.metadata.name, ns, {"metadata": {"annotations": {
            "pod-complete.stage.kwok.x-k8s.io/delay": "0s"}}})

    def complete():
        job = batch.read_namespaced_job(name, ns)
        return any(c.type == "Complete" and c.status == "True"
                   for c in job.status.conditions or [])

    wait_for(complete, 60, f"Job {name} Complete")
    assert batch.read_namespaced_job(name, ns).status.succeeded == 2

    # Garbage collector removes the pods with their Job.
    batch.delete_namespaced_job(name, ns, propagation_policy="Foreground")
    wait_for(lambda: not core.list_namespaced_pod(ns, label_selector=selector).items, 60,
             f"pods of Job {name} garbage-collected")


def test_pod_needing_16_gpus_stays_pending_with_failed_scheduling(kube_cluster, admin):
    ns = "default"
    core = client.CoreV1Api(admin)
    name = _unique("too-big")
    core.create_namespaced_pod(ns, _gpu_pod(name, 16))

    def failed_scheduling():
        events = core.list_namespaced_event(
            ns, field_selector=f"involvedObject.name={name},reason=FailedScheduling").items
        return events[0] if events else None

    event = wait_for(failed_scheduling, 60, f"FailedScheduling event for {name}")
    assert "nvidia.com/gpu" in event.message, event.message
    assert event.involved_object.kind == "Pod"
    pod = core.read_namespaced_pod(name, ns)
    assert pod.status.phase == "Pending"
    assert not pod.spec.node_name
    cond = {c.type: c for c in pod.status.conditions or []}
    assert cond["PodScheduled"].status == "False"
    assert cond["PodScheduled"].reason == "Unschedulable"
    core.delete_namespaced_pod(name, ns, grace_period_seconds=0)


def test_service_account_kubeconfig_has_exactly_its_rbac(kube_cluster, admin, tmp_path):
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    for ns in ("a", "b"):
        kube_cluster.ensure_namespace(ns)
    core.create_namespaced_pod("a", _gpu_pod(_unique("visible"), 1))
    core.create_namespaced_service_account("a", {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role("a", {
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})
    rbac.create_namespaced_role_binding("a", {
        "metadata": {"name": "reader-reads-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "a"}]})

    path = kube_cluster.kubeconfig_for_service_account("a", "reader", tmp_path / "sa.kubeconfig")
    assert path.exists() and oct(path.stat().st_mode & 0o777) == "0o600"
    text = path.read_text()
    assert "client-key-data" not in text and "token" in text

    with kube_cluster.client_from_kubeconfig(path) as sa_client:
        review = client.AuthenticationV1Api(sa_client).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        assert review.status.user_info.username == "system:serviceaccount:a:reader"
        sa_core = client.CoreV1Api(sa_client)
        pods = wait_for(lambda: sa_core.list_namespaced_pod("a").items, 30,
                        "ServiceAccount a/reader can list pods in a")
        assert any(p.metadata.name.startswith("visible-") for p in pods)

        with pytest.raises(ApiException) as created:
            sa_core.create_namespaced_pod("a", _gpu_pod(_unique("denied"), 1))
        assert created.value.status == 403
        with pytest.raises(ApiException) as listed:
            sa_core.list_namespaced_pod("b")
        assert listed.value.status == 403
        assert "system:serviceaccount:a:reader" in listed.value.body


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (read-only scan of /proc)."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_stop_leaves_no_processes_behind(make_kube_cluster):
    cluster = make_kube_cluster("stop", kwok_nodes=1)
    with cluster:
        print(f"\nwarm LocalKubeCluster.start() with 1 KWOK node: {cluster.start_seconds:.1f}s")
        pids = cluster.pids()
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager",
                             "kube-scheduler", "kwok"}
        assert sorted(_processes_mentioning(str(cluster.base_dir))) == sorted(pids.values())
        api_port = cluster.ports["kube-apiserver"]
        with cluster.admin_client() as api_client:
            assert client.CoreV1Api(api_client).read_node("gpu-0")
    assert cluster.pids() == {}
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists(), pid
    assert _processes_mentioning(str(cluster.base_dir)) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", api_port), timeout=2).close()
    cluster.stop()   # idempotent
    assert not (cluster.base_dir / "run" / "pids.json").exists()
