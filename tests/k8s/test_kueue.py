"""Kueue as the gang backend, end to end: a real Kueue controller manager admits the bridge's
Jobs; real slurmctld, real control plane, KWOK GPU nodes.

One module-scoped environment (the shared fixtures of tests/k8s/conftest.py):

* ``LocalKubeCluster`` with 3 KWOK nodes of the example's h100 shape (24 GPUs in all, so
  that Kueue's quota, not the nodes, is what limits) and ``kueue``: Kueue v0.17 with its
  webhooks and its own cert management (``slurm_k8s_devcluster/kueue.py``);
* a ResourceFlavor, ClusterQueue ``gpu`` with 16 ``nvidia.com/gpu`` of quota, LocalQueue
  ``gpu`` in the bridge's namespace slurm-jobs and LocalQueue ``infer`` in namespace infer,
  both feeding ClusterQueue ``gpu``;
* ``make_bridge_cluster`` with the example configuration, partition gpu set to
  ``gang: kueue, queue: gpu``; the daemon with ``DaemonRbac.of_config`` (deploy/rbac.yaml:
  it reads Workloads and LocalQueues, nothing else of Kueue's) and ``PodStandIns``: a real
  dynamic slurmd for every bridge pod Running on a KWOK node.

Kubernetes-native Jobs go to LocalQueue ``infer``: same ClusterQueue, so they and Slurm jobs
compete for the same 16 GPUs.
"""

from __future__ import annotations

import copy
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import urllib3
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from slurm_k8s_devcluster.bridge import BridgeCluster, load_example_config
from slurm_k8s_devcluster.kueue import API_GROUP, API_VERSION, LocalKueue, gpu_queues
from slurm_k8s_devcluster.podsim import PodStandIns
from slurm_k8s_devcluster.slurm import _tail

from ..kube_env import CHECKPOINT_SCRIPT, checkpoint_then_requeue
from ..kube_env import DaemonProcess, DaemonRbac, diagnostics_on_failure, poll
from .conftest import CLUSTER_NAME, H100, JOBS_NS

pytestmark = pytest.mark.k8s

NATIVE_NS = "infer"
USER = "bridgeuser"
QUOTA = 16
KWOK_COMPLETE = "pod-complete.stage.kwok.x-k8s.io/delay"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"}
T = TypeVar("T")


def gang(nodes: int) -> list[str]:
    return [f"-N{nodes}", "--gres=gpu:h100:8", "-c1", "--mem=100"]


@dataclass
class Env:
    bridge: BridgeCluster
    admin: Any
    daemon: DaemonProcess
    kueue: LocalKueue
    standins: PodStandIns

    @property
    def cluster(self) -> Any:
        return self.bridge.cluster

    def diagnostics(self) -> str:
        parts = ["--- daemon log (tail) ---", self.daemon.tail(40),
                 "--- kueue log (tail) ---", self.kueue.logs(15)[-4000:],
                 "--- squeue ---", self.cluster.run(
                     ["squeue", "-a", "-t", "all", "-o", "%i %T %r %k"]).stdout[-2000:],
                 "--- workloads ---", *(f"{w['metadata']['namespace']}/{w['metadata']['name']}: "
                                        f"{_conditions(w)}" for w in self.workloads())]
        if self.standins.errors:
            parts += ["--- pod stand-in errors ---", *self.standins.errors[-5:]]
        parts += ["--- slurmctld.log (tail) ---", _tail(self.cluster.log_dir / "slurmctld.log", 15)]
        return "\n".join(parts)

    def wait(self, check: Callable[[], T], timeout: float, what: str) -> T:
        return poll(check, timeout=timeout, what=what, interval=0.25, alive=self.alive,
                    diagnostics=self.diagnostics,
                    transient=(AssertionError, ApiException, subprocess.SubprocessError, OSError,
                               urllib3.exceptions.HTTPError, KeyError))

    def alive(self) -> None:
        if self.daemon.exited() is not None:
            pytest.fail(f"the daemon exited rc={self.daemon.exited()}\n{self.diagnostics()}")
        if self.kueue.exited_with() is not None:
            pytest.fail(f"Kueue exited rc={self.kueue.exited_with()}\n{self.diagnostics()}")

    def ensure(self, condition: Any, what: str) -> None:
        if not condition:
            pytest.fail(f"{what}\n{self.diagnostics()}")

    # -- Slurm --
    def submit(self, *args: str) -> int:
        res = self.cluster.sbatch(["--parsable", *args], user=USER)
        self.ensure(res.returncode == 0 and res.stdout.strip().split(";")[0].isdigit(),
                    f"sbatch {' '.join(args)} failed: {res.stderr}")
        return int(res.stdout.strip().split(";")[0])

    def squeue(self, job: int, field: str) -> str:
        res = self.cluster.run(["squeue", "-h", "-t", "all", "-j", str(job), "-o", field])
        return res.stdout.strip().splitlines()[0] if res.stdout.strip() else ""

    def state(self, job: int) -> str:
        return self.squeue(job, "%T")

    def comment(self, job: int) -> str:
        return self.squeue(job, "%k")

    def wait_state(self, job: int, states: set[str], timeout: float) -> str:
        return self.wait(lambda: (s := self.state(job)) in states and s, timeout,
                         f"job {job} in {sorted(states)}")

    # -- Kubernetes --
    def job(self, namespace: str, name: str) -> Any:
        return client.BatchV1Api(self.admin).read_namespaced_job(name, namespace)

    def workloads(self, namespace: str | None = None) -> list[dict[str, Any]]:
        api = client.CustomObjectsApi(self.admin)
        namespaces = [namespace] if namespace else [JOBS_NS, NATIVE_NS]
        return [w for ns in namespaces for w in api.list_namespaced_custom_object(
            API_GROUP, API_VERSION, ns, "workloads")["items"]]

    def workload_of(self, namespace: str, job_name: str) -> dict[str, Any] | None:
        for w in self.workloads(namespace):
            refs = w["metadata"].get("ownerReferences") or []
            if any(r.get("kind") == "Job" and r.get("name") == job_name for r in refs):
                return w
        return None

    def admitted(self, namespace: str, job_name: str) -> bool:
        w = self.workload_of(namespace, job_name)
        return w is not None and _condition(w, "Admitted") == "True"

    def native_job(self, name: str, gpus: int = 8, complete_after: str = "12s",
                   priority_class: str | None = None) -> str:
        """A Kubernetes-native Job (no bridge labels) in LocalQueue infer: one pod holding
        ``gpus`` GPUs, which KWOK completes ``complete_after`` after it starts; with
        ``priority_class``, of that WorkloadPriorityClass."""
        labels = {QUEUE_LABEL: "infer"}
        if priority_class:
            labels["kueue.x-k8s.io/priority-class"] = priority_class
        body = {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": NATIVE_NS, "labels": labels},
                "spec": {"suspend": True, "backoffLimit": 0, "template": {
                    "metadata": {"annotations": {KWOK_COMPLETE: complete_after}},
                    "spec": {"restartPolicy": "Never", "containers": [{
                        "name": "serve", "image": "registry.invalid/llm:1",
                        "resources": {"requests": {"cpu": "1", "memory": "1Gi",
                                                   "nvidia.com/gpu": str(gpus)},
                                      "limits": {"nvidia.com/gpu": str(gpus)}}}]}}}}
        client.BatchV1Api(self.admin).create_namespaced_job(NATIVE_NS, body)
        return name

    def native_done(self, name: str) -> bool:
        status = self.job(NATIVE_NS, name).status
        return bool(status.succeeded)


def _condition(workload: dict[str, Any], kind: str) -> str:
    for c in (workload.get("status") or {}).get("conditions") or ():
        if c.get("type") == kind:
            return str(c.get("status"))
    return ""


def _conditions(workload: dict[str, Any]) -> str:
    return "; ".join(f"{c.get('type')}={c.get('status')} {c.get('message', '')}"
                     for c in (workload.get("status") or {}).get("conditions") or ())


# -- the environment: the shared fixtures of tests/k8s/conftest.py, shaped for this module ------
@pytest.fixture(scope="module")
def kube_options() -> dict[str, Any]:
    return {"kwok_nodes": 3, "node_shape": H100}


@pytest.fixture(scope="module")
def bridge_options() -> dict[str, Any]:
    data = copy.deepcopy(load_example_config())
    data["native_gpu_usage"] = False
    data["partitions"]["gpu"] = {"gang": "kueue", "queue": "gpu"}
    return {"name": "kueue", "config_data": data}


@pytest.fixture(scope="module")
def queues(kueue: LocalKueue) -> LocalKueue:
    """ClusterQueue gpu (QUOTA GPUs), LocalQueues gpu (slurm-jobs) and infer (infer)."""
    for ns in (JOBS_NS, NATIVE_NS):
        kueue.kube.ensure_namespace(ns)
    objects = gpu_queues(JOBS_NS, gpus=QUOTA)
    # within the ClusterQueue, a Workload of a higher WorkloadPriorityClass preempts
    objects[1]["spec"]["preemption"] = {"withinClusterQueue": "LowerPriority"}
    infer = copy.deepcopy(objects[-1])
    infer["metadata"] = {"name": "infer", "namespace": NATIVE_NS}
    high = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "WorkloadPriorityClass",
            "metadata": {"name": "serve-high"}, "value": 1000,
            "description": "inference that may preempt batch"}
    kueue.apply_queues([*objects, infer, high])
    return kueue


@pytest.fixture(scope="module")
def daemon_rbac(bridge: BridgeCluster, queues: LocalKueue) -> DaemonRbac:
    # Kueue and its queues first: the daemon watches Workloads only where they are served
    return DaemonRbac.of_config(bridge.config_path, other_namespaces=(NATIVE_NS,))


@pytest.fixture(scope="module")
def env(bridge: BridgeCluster, kube_admin: Any, queues: LocalKueue, standins: PodStandIns,
        bridge_daemon: DaemonProcess) -> Env:
    return Env(bridge=bridge, admin=kube_admin, daemon=bridge_daemon, kueue=queues,
               standins=standins)


@pytest.fixture(autouse=True)
def _diagnostics_on_failure(request: pytest.FixtureRequest, env: Env) -> Iterator[None]:
    yield from diagnostics_on_failure(request, env.diagnostics)


# -- tests ----------------------------------------------------------------------------------
def test_kueue_admits_a_bridged_gang_which_then_runs(env: Env) -> None:
    t0 = time.monotonic()
    job = env.submit(*gang(2), "--wrap", "sleep 2")
    name = f"{CLUSTER_NAME}-{job}"
    k8s_job = env.wait(lambda: env.job(JOBS_NS, name), 30, f"Job {name}")
    env.ensure(k8s_job.metadata.labels.get(QUEUE_LABEL) == "gpu",
               f"Job {name} labels {k8s_job.metadata.labels}")
    env.wait(lambda: env.admitted(JOBS_NS, name), 30, f"Kueue admits the Workload of {name}")
    t_admitted = time.monotonic() - t0
    workload = env.workload_of(JOBS_NS, name)
    assert workload is not None
    env.ensure(workload["status"]["admission"]["clusterQueue"] == "gpu", f"{workload['status']}")
    usage = workload["status"]["admission"]["podSetAssignments"][0]["resourceUsage"]
    env.ensure(usage.get("nvidia.com/gpu") == "16", f"Kueue counts the gang's 16 GPUs: {usage}")
    env.wait(lambda: not env.job(JOBS_NS, name).spec.suspend, 30, f"Kueue unsuspends {name}")
    t_unsuspended = time.monotonic() - t0
    env.wait_state(job, {"RUNNING", "COMPLETING", "COMPLETED"}, 90)
    t_running = time.monotonic() - t0
    env.wait_state(job, FINISHED, 60)
    env.ensure(env.state(job) == "COMPLETED", f"job {job} ended {env.state(job)}")
    print(f"\nKueue gang, 2 pods x 8 GPUs: sbatch -> admitted {t_admitted:.1f}s, "
          f"-> unsuspended {t_unsuspended:.1f}s, -> RUNNING {t_running:.1f}s")


def test_a_gang_beyond_the_whole_quota_waits_saying_so(env: Env) -> None:
    job = env.submit(*gang(3), "--wrap", "true")
    want = (f"k8s: kueue: ClusterQueue gpu can never admit it: 24 nvidia.com/gpu requested, "
            f"at most {QUOTA}")
    env.wait(lambda: env.comment(job) == want, 30, f"squeue comment {want!r}")
    env.ensure(env.state(job) == "PENDING", f"job {job} is {env.state(job)}")
    env.ensure(env.job(JOBS_NS, f"{CLUSTER_NAME}-{job}").spec.suspend, "the Job stays suspended")
    env.cluster.run(["scancel", str(job)], check=True)
    env.wait_state(job, {"CANCELLED"}, 30)


def test_native_and_slurm_jobs_compete_for_one_cluster_queue(env: Env) -> None:
    # 1. a Slurm gang takes the whole quota; a native Job in the same ClusterQueue waits
    first = env.submit(*gang(2), "--wrap", "sleep 8")
    first_name = f"{CLUSTER_NAME}-{first}"
    env.wait_state(first, {"RUNNING"}, 90)
    native = env.native_job("llm-a")
    env.wait(lambda: (w := env.workload_of(NATIVE_NS, native)) is not None
             and _condition(w, "QuotaReserved") == "False", 30, "the native Workload pending")
    env.ensure(env.job(NATIVE_NS, native).spec.suspend, "the native Job waits suspended")
    # 2. the Slurm job ends, its gang goes: Kueue admits the native Job
    env.wait_state(first, FINISHED, 60)
    env.ensure(env.state(first) == "COMPLETED", f"job {first} ended {env.state(first)}")
    env.wait(lambda: env.admitted(NATIVE_NS, native), 60, "Kueue admits the native Job")
    env.wait(lambda: env.workload_of(JOBS_NS, first_name) is None, 30,
             f"the Workload of {first_name} gone with its Job")
    # 3. a Slurm gang of 16 GPUs now waits for the 8 the native Job holds, saying so
    second = env.submit(*gang(2), "--wrap", "true")
    want = "k8s: kueue: waiting for quota in ClusterQueue gpu: 16 nvidia.com/gpu requested, 8 free"
    env.wait(lambda: env.comment(second) == want, 30, f"squeue comment {want!r}")
    env.ensure(env.state(second) == "PENDING", f"job {second} is {env.state(second)}")
    env.ensure(env.job(JOBS_NS, f"{CLUSTER_NAME}-{second}").spec.suspend,
               "the second gang's Job stays suspended")
    # 4. the native Job completes (KWOK): the Slurm gang is admitted and runs
    env.wait(lambda: env.native_done(native), 60, "the native Job completes")
    env.wait(lambda: env.admitted(JOBS_NS, f"{CLUSTER_NAME}-{second}"), 60,
             "Kueue admits the second gang")
    env.wait_state(second, {"RUNNING", "COMPLETING", "COMPLETED"}, 90)
    env.wait_state(second, FINISHED, 60)
    env.ensure(env.state(second) == "COMPLETED", f"job {second} ended {env.state(second)}")


def test_kueue_preemption_gives_the_slurm_job_its_signal_then_requeues_it_whole(env: Env) -> None:
    """A native Job of WorkloadPriorityClass serve-high needs 8 GPUs of a ClusterQueue a
    running Slurm gang (priority 0) fills: Kueue evicts the gang's Workload and suspends its
    Job. The batch shell gets ``--signal=B:USR1@8`` at once (its trap writes a checkpoint
    line), the job runs on for its 8 s, then Slurm requeues the whole job (Restarts=1); the
    native Job runs, and the Slurm job is admitted again and resumes to COMPLETED."""
    job = env.submit(*gang(2), "--signal=B:USR1@8", "--open-mode=append", "-o",
                     "kueue-signal-%j.out", "--wrap", CHECKPOINT_SCRIPT)
    out = env.cluster.jobs_dir / f"kueue-signal-{job}.out"
    try:
        env.wait_state(job, {"RUNNING"}, 90)
        env.wait(lambda: f"{job}.0" in env.cluster.run(["squeue", "-h", "-s", "-j", str(job)]).stdout,
                 30, f"job {job}'s srun step")
        native = env.native_job("llm-urgent", priority_class="serve-high")
        comment = env.wait(lambda: "preempting:" in (c := env.comment(job)) and c, 60,
                           f"job {job}'s comment saying Kueue preempts it")
        env.ensure("kueue: evicted" in comment and "SIGUSR1 sent to the batch shell, 8s to finish"
                   in comment, comment)
        signalled, waited = checkpoint_then_requeue(env, job, out, 8)
        print(f"\nKueue preemption: signal at {signalled}, requeue seen {waited:.1f}s later; "
              f"comment {comment!r}")
        env.wait(lambda: env.admitted(NATIVE_NS, native), 90, "Kueue admits the native Job")
        env.wait(lambda: env.native_done(native), 90, "the native Job completes")
        env.wait_state(job, FINISHED, 150)
        text = out.read_text() if out.exists() else ""
        env.ensure(env.state(job) == "COMPLETED" and "resumed" in text,
                   f"job {job}: {env.state(job)}; output: {text[-2000:]}")
    finally:
        env.cluster.run(["scancel", str(job)])


def test_the_documented_site_example_is_accepted_by_kueue(env: Env) -> None:
    """docs/kueue.md's worked example, applied as a dry run through Kueue's webhooks and the
    CRDs' schemas, unknown fields refused (nothing is kept)."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "kueue.md").read_text()
    block = re.search(r"<!-- site-example:.*?-->\n```yaml\n(.*?)```", doc, re.DOTALL)
    assert block, "docs/kueue.md has no site-example block"
    objects = [o for o in yaml.safe_load_all(block.group(1)) if o]
    assert {o["kind"] for o in objects} == {"ResourceFlavor", "ClusterQueue", "LocalQueue"}
    api = client.CustomObjectsApi(env.admin)
    plural = {"ResourceFlavor": "resourceflavors", "ClusterQueue": "clusterqueues",
              "LocalQueue": "localqueues"}
    for obj in objects:
        obj = dict(obj, metadata=dict(obj["metadata"], name=f"doc-{obj['metadata']['name']}"))
        ns = obj["metadata"].get("namespace")
        if ns:
            api.create_namespaced_custom_object(API_GROUP, API_VERSION, ns, plural[obj["kind"]], obj,
                                                dry_run="All", field_validation="Strict")
        else:
            api.create_cluster_custom_object(API_GROUP, API_VERSION, plural[obj["kind"]], obj,
                                             dry_run="All", field_validation="Strict")
