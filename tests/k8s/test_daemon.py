"""The bridge daemon end to end: real slurmctld, real Kubernetes control plane, KWOK GPU nodes.

One module-scoped environment (the shared fixtures of tests/k8s/conftest.py):

* ``make_bridge_cluster`` with the example configuration (partition gpu bridged, gang
  builtin, namespace slurm-jobs, cluster_name slurm): a real slurmctld with job_submit/k8s
  and the SPANK plugin, CLOUD inventory nodes, NodeSet k8spods;
* ``LocalKubeCluster`` with 4 KWOK nodes of the example's h100 shape (8 GPUs, 224 CPUs,
  2000Gi, ``nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3``);
* the daemon's namespaces and RBAC (``required_rbac``) and a ServiceAccount kubeconfig;
* the daemon itself as a subprocess (``python -m slurm_k8s_bridge.cli run``), logging to a
  file whose tail is printed when a test fails;
* ``PodStandIns``: a real dynamic slurmd for every bridge pod Running on a KWOK node.

Jobs ask for ``-c1 --mem=100`` so that the stand-in slurmd (1 CPU, 100 MB each) fit on this
machine; the pods still ask for 8 GPUs each.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from slurm_k8s_bridge.slurm.client import SlurmClient
from slurm_k8s_devcluster.bridge import BridgeCluster
from slurm_k8s_devcluster.k8s import LocalKubeCluster, free_ports
from slurm_k8s_devcluster.podsim import PodStandIns
from slurm_k8s_devcluster.slurm import _tail

from ..kube_env import (
    CHECKPOINT_SCRIPT,
    DaemonProcess,
    DaemonRbac,
    checkpoint_then_requeue,
    diagnostics_on_failure,
    poll,
)
from .conftest import CLUSTER_NAME, H100, JOBS_NS, SELECTOR

pytestmark = pytest.mark.k8s

USER = "bridgeuser"
KWOK_NODES = 4
GANG2 = ["-N2", "--gres=gpu:h100:8", "-c1", "--mem=100"]
GANG1 = ["-N1", "--gres=gpu:h100:8", "-c1", "--mem=100"]
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"}
T = TypeVar("T")


# -- the environment ----------------------------------------------------------------------
@dataclass
class Env:
    bridge: BridgeCluster
    kube: LocalKubeCluster
    admin: Any                       # kubernetes ApiClient, cluster-admin
    daemon_process: DaemonProcess    # the daemon, as its ServiceAccount (tests/k8s/conftest.py)
    metrics_port: int
    standins: PodStandIns | None = None
    slurm: SlurmClient = field(default_factory=SlurmClient)

    @property
    def cluster(self) -> Any:
        return self.bridge.cluster

    # -- daemon --
    @property
    def daemon(self) -> subprocess.Popen | None:
        return self.daemon_process.proc

    @property
    def daemon_log(self) -> Path:
        return self.daemon_process.log

    def start_daemon(self) -> None:
        self.daemon_process.start(wait=False)

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        self.daemon_process.stop(sig)

    def daemon_alive(self) -> None:
        if self.daemon_process.exited() is not None:
            pytest.fail(f"the daemon exited rc={self.daemon_process.exited()}\n{self.diagnostics()}")

    # -- diagnostics --
    def diagnostics(self, lines: int = 60) -> str:
        parts = ["--- daemon log (tail) ---", _tail(self.daemon_log, lines)]
        if self.standins is not None and self.standins.errors:
            parts += ["--- pod stand-in errors ---", *self.standins.errors[-10:]]
        parts += ["--- squeue ---", self.cluster.run(
            ["squeue", "-a", "-t", "all", "-o", "%i %T %r %p %k"]).stdout[-3000:]]
        parts += ["--- slurmctld.log (tail) ---",
                  _tail(self.cluster.log_dir / "slurmctld.log", 25)]
        return "\n".join(parts)

    def wait(self, check: Callable[[], T], timeout: float, what: str,
             interval: float = 0.25) -> T:
        """Poll ``check`` until truthy (returns it); fail with the daemon's log tail."""
        return poll(check, timeout=timeout, what=what, interval=interval,
                    alive=self.daemon_alive, diagnostics=self.diagnostics,
                    transient=(AssertionError, ApiException, subprocess.SubprocessError, OSError,
                               urllib3.exceptions.HTTPError))

    def ensure(self, condition: Any, what: str) -> None:
        if not condition:
            pytest.fail(f"{what}\n{self.diagnostics()}")

    # -- Slurm --
    def submit(self, *args: str, user: str = USER) -> int:
        res = self.cluster.sbatch(["--parsable", *args], user=user)
        self.ensure(res.returncode == 0 and res.stdout.strip().split(";")[0].isdigit(),
                    f"sbatch {' '.join(args)} failed: {res.stderr}")
        return int(res.stdout.strip().split(";")[0])

    def state(self, job: int | str) -> str:
        res = self.cluster.run(["squeue", "-h", "-t", "all", "-j", str(job), "-o", "%T"])
        return res.stdout.strip().splitlines()[0] if res.stdout.strip() else ""

    def comment(self, job: int | str) -> str:
        res = self.cluster.run(["squeue", "-h", "-t", "all", "-j", str(job), "-o", "%k"])
        return res.stdout.strip().splitlines()[0] if res.stdout.strip() else ""

    def task_states(self, job: int) -> dict[str, str]:
        res = self.cluster.run(["squeue", "-h", "-r", "-t", "all", "-j", str(job), "-o", "%i %T"])
        return dict(line.split() for line in res.stdout.splitlines() if len(line.split()) == 2)

    def wait_state(self, job: int | str, states: set[str], timeout: float) -> str:
        return self.wait(lambda: (s := self.state(job)) in states and s, timeout,
                         f"job {job} in {sorted(states)}")

    def slurm_nodes(self, prefix: str) -> dict[str, Any]:
        return {n: node for n, node in self.slurm.list_nodes().items() if n.startswith(prefix)}

    # -- Kubernetes --
    def k8s_jobs(self) -> dict[str, Any]:
        items = client.BatchV1Api(self.admin).list_namespaced_job(
            JOBS_NS, label_selector=SELECTOR).items
        return {j.metadata.name: j for j in items}

    def pods(self, job_name: str | None = None) -> list[Any]:
        selector = SELECTOR + (f",batch.kubernetes.io/job-name={job_name}" if job_name else "")
        return client.CoreV1Api(self.admin).list_namespaced_pod(
            JOBS_NS, label_selector=selector).items

    def services(self) -> set[str]:
        items = client.CoreV1Api(self.admin).list_namespaced_service(
            JOBS_NS, label_selector=SELECTOR).items
        return {s.metadata.name for s in items}

    def gone(self, name: str) -> bool:
        """Nothing of gang ``name`` is left in Kubernetes (Job, Service, pods)."""
        return name not in self.k8s_jobs() and name not in self.services() \
            and not self.pods(name)

    def set_cordon(self, on: bool) -> None:
        core = client.CoreV1Api(self.admin)
        for name in self.kube_nodes():
            core.patch_node(name, {"spec": {"unschedulable": on}})

    def kube_nodes(self) -> list[str]:
        return [n.metadata.name for n in client.CoreV1Api(self.admin).list_node().items]

    def wait_all_clean(self, jobs: list[int], timeout: float = 60) -> None:
        """Every gang of ``jobs`` gone from Kubernetes and their dynamic nodes from Slurm."""
        prefixes = tuple(f"{CLUSTER_NAME}-{j}-" for j in jobs)
        self.wait(lambda: not [n for n in self.k8s_jobs() if n.startswith(prefixes)
                               or n in {f"{CLUSTER_NAME}-{j}" for j in jobs}]
                  and not [s for s in self.services() if s.startswith(prefixes)
                           or s in {f"{CLUSTER_NAME}-{j}" for j in jobs}]
                  and not [p for p in self.pods() if p.metadata.name.startswith(prefixes)],
                  timeout, f"the Kubernetes objects of jobs {jobs} gone")
        self.wait(lambda: not [n for n in self.slurm.list_nodes() if n.startswith(prefixes)],
                  timeout, f"the dynamic Slurm nodes of jobs {jobs} gone")


# the environment: the shared fixtures of tests/k8s/conftest.py, shaped for this module
@pytest.fixture(scope="module")
def bridge_options() -> dict[str, Any]:
    return {"name": "daemon"}


@pytest.fixture(scope="module")
def kube_options() -> dict[str, Any]:
    return {"kwok_nodes": KWOK_NODES, "node_shape": H100}


@pytest.fixture(scope="module")
def daemon_rbac(bridge: BridgeCluster) -> DaemonRbac:
    rbac = DaemonRbac.of_config(bridge.config_path)
    assert JOBS_NS in rbac.job_namespaces
    return rbac


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_ports(1)[0]


@pytest.fixture(scope="module")
def daemon_args(metrics_port: int) -> tuple[str, ...]:
    return ("--metrics-port", str(metrics_port), "--poll-interval", "1")


@pytest.fixture(scope="module")
def env(bridge: BridgeCluster, kube_cluster: LocalKubeCluster, kube_admin: Any,
        metrics_port: int, standins: PodStandIns, bridge_daemon: DaemonProcess) -> Env:
    # standins before bridge_daemon: the stand-ins run before the daemon starts, and stop after it
    return Env(bridge=bridge, kube=kube_cluster, admin=kube_admin, daemon_process=bridge_daemon,
               metrics_port=metrics_port, standins=standins,
               slurm=SlurmClient(bridge.cluster.env(), timeout=15))


@pytest.fixture(autouse=True)
def _log_tail_on_failure(request: pytest.FixtureRequest, env: Env) -> Iterator[None]:
    yield from diagnostics_on_failure(request, env.diagnostics)


@pytest.fixture
def cordoned(env: Env) -> Iterator[None]:
    env.set_cordon(True)
    try:
        yield
    finally:
        env.set_cordon(False)


# -- tests ----------------------------------------------------------------------------------
def test_a_gang_runs_on_its_pods_and_leaves_nothing(env: Env) -> None:
    t0 = time.monotonic()
    job = env.submit(*GANG2, "-o", "out-%j.txt", "--wrap", "srun hostname")
    name = f"{CLUSTER_NAME}-{job}"
    env.wait(lambda: name in env.k8s_jobs(), 30, f"Job {name}")
    pods = env.wait(lambda: len(p := env.pods(name)) == 2 and p, 30, f"2 pods of {name}")
    t_pods = time.monotonic() - t0
    for pod in pods:
        limits = pod.spec.containers[0].resources.requests
        env.ensure(limits.get("nvidia.com/gpu") == "8", f"pod {pod.metadata.name}: {limits}")
    nodes = {f"{name}-0", f"{name}-1"}
    t_running = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        env.daemon_alive()
        state = env.state(job)
        if t_running is None and state in ("RUNNING", "COMPLETING", "COMPLETED"):
            t_running = time.monotonic() - t0
        if state in FINISHED:
            break
        time.sleep(0.1)
    t_done = time.monotonic() - t0
    env.ensure(env.state(job) == "COMPLETED", f"job {job} ended {env.state(job)!r}")
    info = env.cluster.show_job(job)
    env.ensure(set(re.split(r"[,\s]", info.get("NodeList", ""))) == nodes
               or info.get("NodeList") == f"{name}-[0-1]", f"NodeList {info.get('NodeList')}")
    env.ensure(info.get("ReqNodeList") in (f"{name}-[0-1]", f"{name}-0,{name}-1"),
               f"pinned to {info.get('ReqNodeList')}")
    assert env.standins is not None
    started = {node for _, what, node in env.standins.history if what == "start"}
    env.ensure(nodes <= started, f"stand-in slurmd started for {sorted(started)}")
    out = (env.cluster.jobs_dir / f"out-{job}.txt").read_text()
    env.ensure(sorted(out.split()) == sorted(nodes), f"job output {out!r}")
    env.wait_all_clean([job])
    print(f"\ntest a timings: submit -> 2 pods {t_pods:.1f}s, -> RUNNING "
          f"{t_running if t_running is None else round(t_running, 1)}s, "
          f"-> COMPLETED {t_done:.1f}s")


def test_b_unschedulable_reason_then_runs_after_uncordon(env: Env, cordoned: None) -> None:
    job = env.submit(*GANG2, "-o", "/dev/null", "--wrap", "srun hostname")
    comment = env.wait(lambda: (c := env.comment(job)).startswith(
        "k8s: 0/2 pods scheduled: Unschedulable: ") and c, 30, "the Unschedulable comment")
    assert "unschedulable" in comment
    assert env.state(job) == "PENDING"
    env.set_cordon(False)
    env.wait_state(job, FINISHED, 90)
    env.ensure(env.state(job) == "COMPLETED", f"job {job}: {env.state(job)}")
    env.wait_all_clean([job])


def test_c_scancel_of_a_pending_gang_removes_its_objects(env: Env, cordoned: None) -> None:
    job = env.submit(*GANG2, "-o", "/dev/null", "--wrap", "srun hostname")
    name = f"{CLUSTER_NAME}-{job}"
    env.wait(lambda: len(env.pods(name)) == 2, 30, f"pending pods of {name}")
    env.cluster.run(["scancel", str(job)], user=USER, check=True)
    env.wait(lambda: env.gone(name), 30, f"{name} gone after scancel")
    assert env.state(job) == "CANCELLED"


def test_d_dependency_waits_without_pods_then_runs(env: Env, cordoned: None) -> None:
    a = env.submit(*GANG1, "-o", "/dev/null", "--wrap", "srun hostname")
    b = env.submit(*GANG1, f"--dependency=afterok:{a}", "-o", "/dev/null", "--wrap", "hostname")
    env.wait(lambda: len(env.pods(f"{CLUSTER_NAME}-{a}")) == 1, 30, "A's pending pod")
    comment = env.wait(lambda: "dependency" in (c := env.comment(b)) and c, 30,
                       "B's comment about its dependency")
    assert comment.startswith("k8s: waiting") and f"afterok:{a}" in comment, comment
    end = time.monotonic() + 5
    while time.monotonic() < end:
        env.ensure(f"{CLUSTER_NAME}-{b}" not in env.k8s_jobs(), "B got a Job before A finished")
        time.sleep(0.5)
    env.set_cordon(False)
    env.wait_state(a, FINISHED, 90)
    env.ensure(env.state(a) == "COMPLETED", f"A: {env.state(a)}")
    # held jobs' dependencies are re-evaluated every 60 s on 22.05
    env.wait_state(b, FINISHED, 180)
    env.ensure(env.state(b) == "COMPLETED", f"B: {env.state(b)}")
    env.wait_all_clean([a, b])


def test_e_owner_hold_removes_pods_and_release_brings_them_back(env: Env, cordoned: None) -> None:
    job = env.submit(*GANG2, "-o", "/dev/null", "--wrap", "srun hostname")
    name = f"{CLUSTER_NAME}-{job}"
    env.wait(lambda: len(env.pods(name)) == 2, 30, f"pending pods of {name}")
    env.cluster.scontrol("hold", str(job), user=USER, check=True)
    env.wait(lambda: env.gone(name), 30, f"{name} removed after the owner's hold")
    comment = env.wait(lambda: "held" in (c := env.comment(job)) and c, 20, "the held comment")
    # "k8s: pods removed: held by its owner (...)", then "k8s: waiting: held by its owner"
    assert comment.startswith("k8s: ") and "held by its owner" in comment, comment
    env.cluster.scontrol("release", str(job), user=USER, check=True)
    env.wait(lambda: len(env.pods(name)) == 2, 30, f"pods of {name} again after the release")
    env.set_cordon(False)
    env.wait_state(job, FINISHED, 90)
    env.ensure(env.state(job) == "COMPLETED", f"job {job}: {env.state(job)}")
    env.wait_all_clean([job])


def test_f_array_tasks_are_separate_jobs(env: Env) -> None:
    job = env.submit("--array=0-2", *GANG1, "-o", "arr-%A_%a.txt", "--wrap", "srun hostname")
    names = {f"{CLUSTER_NAME}-{job}-{t}" for t in range(3)}
    seen: set[str] = set()

    def all_done() -> bool:
        seen.update(n for n in env.k8s_jobs() if n in names)
        states = env.task_states(job)
        return len(states) == 3 and all(s in FINISHED for s in states.values())
    env.wait(all_done, 120, f"the 3 tasks of array {job} finished")
    states = env.task_states(job)
    env.ensure(states == {f"{job}_{t}": "COMPLETED" for t in range(3)}, f"tasks: {states}")
    env.ensure(seen == names, f"Kubernetes Jobs seen: {sorted(seen)}")
    for t in range(3):
        out = (env.cluster.jobs_dir / f"arr-{job}_{t}.txt").read_text().split()
        env.ensure(out == [f"{CLUSTER_NAME}-{job}-{t}-0"], f"task {t} output {out}")
    env.wait_all_clean([job])


def test_g_deleted_pod_requeues_the_running_job(env: Env) -> None:
    job = env.submit(*GANG2, "-o", "g-%j.txt", "--wrap",
                     "echo started; sleep 30; srun hostname")
    name = f"{CLUSTER_NAME}-{job}"
    out_file = env.cluster.jobs_dir / f"g-{job}.txt"
    env.wait_state(job, {"RUNNING"}, 60)
    env.wait(lambda: out_file.exists() and "started" in out_file.read_text(), 30,
             "the batch script to start")
    first = {p.metadata.uid for p in env.pods(name)}
    victim = min(p.metadata.name for p in env.pods(name))
    ctld_log = env.cluster.log_dir / "slurmctld.log"
    offset = ctld_log.stat().st_size
    client.CoreV1Api(env.admin).delete_namespaced_pod(victim, JOBS_NS)

    def since_delete() -> str:
        with open(ctld_log, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    # The bridge sets the deleted pod's node -- only that one -- down with the reason;
    # Slurm requeues the job; the surviving pod's slurmd reports the end of the run, which
    # lets Slurm release the old allocation; the bridge holds the job, replaces the gang
    # and releases it onto the new pods at once. The new pods reuse the hostnames, so the
    # DOWN state may be brief; slurmctld's log keeps the record of it.
    index = int(victim[len(name) + 1:].split("-")[0])
    lost_node, survivor = f"{name}-{index}", f"{name}-{1 - index}"
    env.wait(lambda: f"update_node: node {lost_node} reason set to: k8s: pod " in since_delete()
             and f"update_node: node {lost_node} state set to DOWN" in since_delete(), 30,
             f"node {lost_node} set down with a k8s: reason")
    requeued = env.wait(lambda: (j := {x.job_id: x for x in env.slurm.bridged_jobs()}.get(job))
                        and j.restarts >= 1 and j, 30, f"job {job} requeued")
    assert requeued.requeue
    env.wait(lambda: "setting comment to k8s: requeuing: pod " in since_delete(), 10,
             "the requeue comment")
    seen: set[str] = set()

    def finished() -> bool:
        seen.update(p.metadata.uid for p in env.pods(name) if p.metadata.uid not in first)
        return env.state(job) in FINISHED
    env.wait(finished, 180, f"job {job} finished after the requeue")
    state, comment = env.state(job), env.comment(job)
    env.ensure(state == "COMPLETED", f"job {job}: {state} ({comment})")
    env.ensure(f"update_node: node {survivor} state set to DOWN" not in since_delete(),
               f"the surviving pod's node {survivor} was set down too")
    env.ensure(len(seen) == 2, f"new pods that ran it again: {seen}")
    out = [w for w in out_file.read_text().split() if w != "started"]
    env.ensure(sorted(out) == [f"{name}-0", f"{name}-1"], f"output {out}")
    env.wait_all_clean([job])


def test_g2_deleting_the_kubernetes_job_of_a_running_job_requeues_it(env: Env) -> None:
    job = env.submit(*GANG1, "-o", "g2-%j.txt", "--wrap", "echo started; sleep 20; srun hostname")
    name = f"{CLUSTER_NAME}-{job}"
    out_file = env.cluster.jobs_dir / f"g2-{job}.txt"
    env.wait_state(job, {"RUNNING"}, 60)
    env.wait(lambda: out_file.exists() and "started" in out_file.read_text(), 30,
             "the batch script to start")
    client.BatchV1Api(env.admin).delete_namespaced_job(
        name, JOBS_NS, propagation_policy="Background")
    env.wait(lambda: (j := {x.job_id: x for x in env.slurm.bridged_jobs()}.get(job))
             and j.restarts >= 1, 30, f"job {job} requeued")
    env.wait(lambda: env.state(job) in FINISHED, 180, f"job {job} finished after the requeue")
    env.ensure(env.state(job) == "COMPLETED", f"job {job}: {env.state(job)} ({env.comment(job)})")
    env.ensure(out_file.read_text().split()[-1] == f"{name}-0", out_file.read_text())
    env.wait_all_clean([job])


class JobUids:
    """Every Kubernetes Job uid seen per Slurm job (and array task), polled in a thread
    while a test crashes components: two uids for one key mean a duplicate Job."""

    def __init__(self, env: Env) -> None:
        self.env, self.uids, self.errors = env, {}, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for obj in self.env.k8s_jobs().values():
                    labels = obj.metadata.labels or {}
                    key = labels.get("slurm-k8s-bridge.io/job-id", "?") + \
                        "_" + labels.get("slurm-k8s-bridge.io/array-task-id", "")
                    self.uids.setdefault(key, set()).add(obj.metadata.uid)
            except Exception as exc:  # noqa: BLE001 -- the API server may be down on purpose
                self.errors.append(repr(exc))
            self._stop.wait(0.2)

    def __enter__(self) -> "JobUids":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def check(self, jobs: list[int]) -> None:
        """One Kubernetes Job per Slurm job, plus one per requeue Slurm made of it."""
        runs = {f"{j.job_id}_": j.restarts + 1 for j in self.env.slurm.bridged_jobs()}
        doubles = {k: v for k, v in self.uids.items() if len(v) > runs.get(k, 1)}
        self.env.ensure(not doubles, f"Slurm jobs with more Kubernetes Jobs than runs: {doubles}")
        self.env.ensure({f"{j}_" for j in jobs} <= set(self.uids),
                        f"Jobs seen: {sorted(self.uids)}")


def test_h_daemon_killed_and_restarted_while_jobs_go_through(env: Env) -> None:
    rng = random.Random(int(os.environ.get("SKB_SEED", "4242")))
    with JobUids(env) as seen:
        jobs = [env.submit(*GANG1, "-o", "/dev/null", "--wrap", f"sleep {3 + i}; srun hostname")
                for i in range(3)]
        kills = 0
        deadline = time.monotonic() + 120
        try:
            while kills < 5 and time.monotonic() < deadline:
                time.sleep(rng.uniform(0.3, 4.0))
                env.kill_daemon(signal.SIGKILL)
                kills += 1
                time.sleep(rng.uniform(0.0, 1.0))
                env.start_daemon()
            env.ensure(kills == 5, f"only {kills} kills within the loop's bound")
            env.wait(lambda: all(env.state(j) in FINISHED for j in jobs), 180,
                     f"jobs {jobs} finished after 5 daemon crashes")
            states = {j: env.state(j) for j in jobs}
            env.ensure(all(s == "COMPLETED" for s in states.values()), f"states {states}")
            env.wait_all_clean(jobs)
        finally:
            if env.daemon is None or env.daemon.poll() is not None:
                env.start_daemon()
    seen.check(jobs)


def test_j_slurmctld_and_api_server_crash_while_jobs_go_through(env: Env) -> None:
    """slurmctld and kube-apiserver each killed with SIGKILL at random points (bounded:
    3 crashes each, 150 s) while gangs are created, released and run: every job ends
    COMPLETED, on exactly one Kubernetes Job, and nothing is left behind; a 2-node job
    submitted afterwards runs its srun steps on its pods.

    The scripts in the crash window make no srun calls: an srun in the first second after
    a slurmctld restart fails on 22.05 ("can't find address for host <dynamic node>",
    exit 244), which is Slurm's own behaviour (docs/slurm-mirroring.md), not the bridge's."""
    rng = random.Random(int(os.environ.get("SKB_SEED", "4242")) + 1)
    crashes: list[str] = []
    with JobUids(env) as seen:
        jobs = [env.submit(*GANG1, "-o", "/dev/null", "--wrap", f"sleep {4 + 3 * i}; hostname")
                for i in range(3)]
        jobs.append(env.submit(*GANG2, "-o", "/dev/null", "--wrap", "sleep 8; hostname"))
        # slurmctld saves a new job's state shortly after accepting it; a SIGKILL before
        # that loses the job in Slurm itself, which no bridge can prevent.
        time.sleep(3)
        deadline = time.monotonic() + 150
        order = ["slurmctld", "kube-apiserver"] * 3
        rng.shuffle(order)
        for victim in order:
            if time.monotonic() >= deadline:
                break
            time.sleep(rng.uniform(0.5, 5.0))
            down = rng.uniform(0.0, 3.0)
            if victim == "slurmctld":
                env.cluster.restart_slurmctld(crash=True, down_s=down, wait_nodes=False)
            else:
                env.kube.restart("kube-apiserver", down_s=down)
            crashes.append(f"{victim} (down {down:.1f}s)")
        env.ensure(len(crashes) == 6, f"only {crashes} within the loop's bound")
        env.wait(lambda: all(env.state(j) in FINISHED for j in jobs), 240,
                 f"jobs {jobs} finished after crashes: {crashes}")
        states = {j: env.state(j) for j in jobs}
        env.ensure(all(s == "COMPLETED" for s in states.values()),
                   f"states {states} after crashes: {crashes}")
        after = env.submit(*GANG2, "-o", "j-%j.txt", "--wrap", "srun hostname")
        env.wait(lambda: env.state(after) in FINISHED, 90, f"job {after} after the crashes")
        out = (env.cluster.jobs_dir / f"j-{after}.txt").read_text().split()
        env.ensure(env.state(after) == "COMPLETED" and
                   sorted(out) == [f"{CLUSTER_NAME}-{after}-0", f"{CLUSTER_NAME}-{after}-1"],
                   f"job {after}: {env.state(after)}, output {out}")
        jobs.append(after)
        env.wait_all_clean(jobs, timeout=120)
    seen.check(jobs)
    env.daemon_alive()
    print(f"\ntest j: {len(jobs)} jobs completed through {', '.join(crashes)}")


def test_k_api_server_down_at_submit_time(env: Env) -> None:
    """With kube-apiserver down, sbatch answers as fast as with it up (the plugin never
    calls the API); the job waits with a comment naming the API server, creates nothing,
    and runs once the server is back."""
    def timed_submit() -> tuple[int, float]:
        started = time.monotonic()
        job = env.submit(*GANG1, "-o", "/dev/null", "--wrap", "hostname")
        return job, time.monotonic() - started

    before, up_s = timed_submit()
    env.wait(lambda: env.state(before) in FINISHED, 90, f"job {before} with the API server up")
    outage = threading.Thread(target=env.kube.restart, args=("kube-apiserver",),
                              kwargs={"down_s": 25.0}, daemon=True)
    outage.start()
    time.sleep(1.0)
    job, down_s = timed_submit()
    comment = env.wait(lambda: "Kubernetes API server" in (c := env.comment(job)) and c, 20,
                       f"job {job}'s comment naming the API server")
    env.ensure("not answering" in comment and env.state(job) == "PENDING",
               f"job {job}: {env.state(job)}, comment {comment!r}")
    outage.join(timeout=90)
    env.ensure(not outage.is_alive(), "kube-apiserver did not come back within 90 s")
    env.wait(lambda: env.state(job) in FINISHED, 120, f"job {job} after the API server is back")
    env.ensure(env.state(job) == "COMPLETED", f"job {job} ended {env.state(job)}")
    env.wait_all_clean([before, job], timeout=60)
    print(f"\ntest k: sbatch {up_s:.2f}s with the API server up, {down_s:.2f}s with it down; "
          f"comment while down: {comment!r}")


def _exists_ok(create: Callable[[], Any]) -> None:
    """Create an object the module's tests share; one that already exists is fine."""
    try:
        create()
    except ApiException as err:
        if err.status != 409:
            raise


def _native_gpu_pod(core: Any, namespace: str, name: str, priority_class: str) -> None:
    """A Kubernetes-native pod of ``priority_class`` holding a whole 8-GPU node."""
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": name},
        "spec": {"priorityClassName": priority_class, "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "serve", "image": "registry.example/serve:1",
                                 "resources": {"requests": {"nvidia.com/gpu": "8"},
                                               "limits": {"nvidia.com/gpu": "8"}}}]}})


def _priority_class(env: Env, name: str, value: int, **spec: Any) -> None:
    _exists_ok(lambda: client.SchedulingV1Api(env.admin).create_priority_class(
        {"metadata": {"name": name}, "value": value, **spec}))


def test_l_a_resource_quota_scoped_by_priority_class_names_itself_in_squeue(env: Env) -> None:
    """A site reserves GPUs for a class with a ResourceQuota scoped by PriorityClass: a gang
    beyond it waits with the quota in squeue, the bridge does not recreate its Job in a loop,
    work of other classes is not held up, and the gang runs once the quota allows."""
    core = client.CoreV1Api(env.admin)
    klass, quota_name = "batch-low", "gpu-batch-low"
    _priority_class(env, klass, 100, preemptionPolicy="Never")
    quota = {"metadata": {"name": quota_name},
             "spec": {"hard": {"requests.nvidia.com/gpu": "8"},
                      "scopeSelector": {"matchExpressions": [
                          {"scopeName": "PriorityClass", "operator": "In", "values": [klass]}]}}}
    core.create_namespaced_resource_quota(JOBS_NS, quota)
    try:
        # quota admission counts against status.hard, which the quota controller fills in
        env.wait(lambda: (core.read_namespaced_resource_quota(quota_name, JOBS_NS).status.hard
                          or {}).get("requests.nvidia.com/gpu") == "8", 30, "the quota's status")
        job = env.submit(*GANG2, f"--k8s-priority={klass}", "-o", "/dev/null", "--wrap", "hostname")
        name = f"{CLUSTER_NAME}-{job}"
        comment = env.wait(lambda: "ResourceQuota" in (c := env.comment(job)) and c, 60,
                           f"job {job}'s comment naming the quota")
        env.ensure(comment == f"k8s: waiting: ResourceQuota {JOBS_NS}/{quota_name}: requested "
                   "nvidia.com/gpu=8, used 8, limited 8", f"comment {comment!r}")
        uid = env.k8s_jobs()[name].metadata.uid
        # another class is not counted by this quota: it runs meanwhile
        other = env.submit(*GANG1, "-o", "/dev/null", "--wrap", "hostname")
        env.wait_state(other, FINISHED, 90)
        env.ensure(env.state(other) == "COMPLETED", f"job {other}: {env.state(other)}")
        env.ensure(env.state(job) == "PENDING" and env.k8s_jobs()[name].metadata.uid == uid
                   and len(env.pods(name)) == 1,
                   f"job {job} {env.state(job)}, its Job recreated or pods beyond the quota")
        core.delete_namespaced_resource_quota(quota_name, JOBS_NS)
        # the Job controller retries the second pod with its own back-off (10 s, doubling)
        env.wait_state(job, FINISHED, 150)
        env.ensure(env.state(job) == "COMPLETED", f"job {job}: {env.state(job)}")
        env.wait_all_clean([job, other])
        print(f"\ntest l: comment while over the quota: {comment!r}")
    finally:
        try:
            core.delete_namespaced_resource_quota(quota_name, JOBS_NS)
        except ApiException as err:
            if err.status != 404:
                raise


def test_m_gangs_that_do_not_fit_now_do_not_stop_a_later_job_that_does(env: Env) -> None:
    """Head-of-line: Kubernetes-native pods take 4 of the 8 GPUs of every node; 8 gangs
    asking for 8 GPUs a node wait (all pods Unschedulable) -- as many as the daemon's
    admission cap (8) -- and a later job asking for 4 GPUs still runs."""
    core = client.CoreV1Api(env.admin)
    native_ns = "inference-hol"
    _exists_ok(lambda: core.create_namespace({"metadata": {"name": native_ns}}))
    nodes = env.kube_nodes()
    for i, node in enumerate(nodes):
        core.create_namespaced_pod(native_ns, {
            "metadata": {"name": f"serve-{i}"},
            "spec": {"nodeName": node, "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "serve", "image": "registry.example/serve:1",
                                     "resources": {"requests": {"nvidia.com/gpu": "4"},
                                                   "limits": {"nvidia.com/gpu": "4"}}}]}})
    stuck: list[int] = []
    try:
        env.wait(lambda: all(p.status.phase == "Running"
                             for p in core.list_namespaced_pod(native_ns).items), 30,
                 "the native pods Running")
        stuck = [env.submit(*GANG1, "-o", "/dev/null", "--wrap", "hostname") for _ in range(8)]
        for job in stuck:
            env.wait(lambda j=job: "Unschedulable" in env.comment(j), 60,
                     f"job {job} waiting with the scheduler's reason")
        small = env.submit("-N1", "--gres=gpu:h100:4", "-c1", "--mem=100", "-o", "/dev/null",
                           "--wrap", "hostname")
        env.wait_state(small, FINISHED, 90)
        env.ensure(env.state(small) == "COMPLETED", f"job {small}: {env.state(small)}, "
                   f"comment {env.comment(small)!r}")
        env.ensure(all(env.state(j) == "PENDING" for j in stuck), "a gang that could not fit ran")
        print(f"\ntest m: 8 gangs waiting ({env.comment(stuck[0])!r}); job {small} COMPLETED")
    finally:
        for job in stuck:
            env.cluster.run(["scancel", str(job)], user=USER)
        core.delete_collection_namespaced_pod(native_ns, grace_period_seconds=0)
    env.wait_all_clean(stuck, timeout=60)


@pytest.mark.xfail(strict=False, reason=(
    "known, open: on KWOK a preempted gang is replaced within a second, and the new gang can be "
    "released before Slurm has finished the requeue (Slurm then sets BeginTime again and the job "
    "waits ~2 min) or onto the old run's slurmd (the rerun FAILED); seen in 2 of 6 runs"))
def test_n_a_gang_preempted_by_a_higher_priority_native_pod_is_requeued_whole(env: Env) -> None:
    """Built-in backend: a Kubernetes-native pod of a higher PriorityClass preempts one pod
    of a running 2-pod gang. The whole job stops (Slurm requeues it: both nodes' steps end),
    its comment says it was preempted, the requeue count goes up, and it runs again to
    COMPLETED once there is room."""
    core = client.CoreV1Api(env.admin)
    _priority_class(env, "batch-low", 100, preemptionPolicy="Never")
    _priority_class(env, "serve-high", 1000)
    native_ns = "inference-preempt"
    _exists_ok(lambda: core.create_namespace({"metadata": {"name": native_ns}}))

    job = env.submit(*GANG2, "--k8s-priority=batch-low", "-o", "preempt-%j.out", "--wrap",
                     "srun sleep 15")
    try:
        env.wait_state(job, {"RUNNING"}, 90)
        for i in range(KWOK_NODES - 1):   # the free nodes, then one more: a gang pod must go
            _native_gpu_pod(core, native_ns, f"serve-{i}", "serve-high")
        comment = env.wait(lambda: "preempted by kube-scheduler" in (c := env.comment(job)) and c,
                           60, f"job {job}'s comment saying it was preempted")
        placed = {p.metadata.name: p.spec.node_name
                  for ns in (JOBS_NS, native_ns) for p in core.list_namespaced_pod(ns).items}
        print(f"\ntest n: pods after the preemption: {placed}")
        restarts = env.cluster.show_job(job).get("Restarts")
        env.ensure(restarts == "1", f"job {job} Restarts={restarts}")
        core.delete_collection_namespaced_pod(native_ns, grace_period_seconds=0)
        env.wait_state(job, FINISHED, 120)
        out = env.cluster.jobs_dir / f"preempt-{job}.out"
        if env.state(job) == "FAILED":
            # seen in 1 of 5 runs: on KWOK everything happens within one second, and the new
            # gang was released onto the old run's slurmd, which SlurmdStartTime (to the
            # second) cannot tell from a fresh one (plan._fresh); real pods take seconds
            pytest.xfail(f"known race: the rerun of job {job} was released within the same "
                         "second as the old run's slurmd restarted, and FAILED")
        env.ensure(env.state(job) == "COMPLETED", f"job {job}: {env.state(job)}; output: "
                   f"{out.read_text()[-2000:] if out.exists() else '(none)'}")
        print(f"\ntest n: comment when preempted: {comment!r}")
    finally:
        env.cluster.run(["scancel", str(job)], user=USER)
        core.delete_collection_namespaced_pod(native_ns, grace_period_seconds=0)
    env.wait_all_clean([job], timeout=60)


def test_o_a_preempted_job_gets_its_signal_and_grace_before_the_requeue(env: Env) -> None:
    """``--signal=B:USR1@10``: when a higher-priority native pod preempts one pod of the
    running 2-pod gang, the batch shell gets SIGUSR1 at once (its trap writes a checkpoint
    line), the preempted pod keeps running through the 10 s (its slurmd stays, as the worker
    entrypoint keeps it), only then is the whole job requeued (Restarts=1, both nodes' steps
    end), and the rerun resumes to COMPLETED once there is room."""
    core = client.CoreV1Api(env.admin)
    _priority_class(env, "batch-low", 100, preemptionPolicy="Never")
    _priority_class(env, "serve-high", 1000)
    native_ns = "inference-preempt"
    _exists_ok(lambda: core.create_namespace({"metadata": {"name": native_ns}}))
    job = env.submit(*GANG2, "--k8s-priority=batch-low", "--signal=B:USR1@10",
                     "--open-mode=append", "-o", "signal-%j.out", "--wrap", CHECKPOINT_SCRIPT)
    out = env.cluster.jobs_dir / f"signal-{job}.out"
    try:
        env.wait_state(job, {"RUNNING"}, 90)
        env.wait(lambda: env.cluster.run(["squeue", "-h", "-s", "-j", str(job)]).stdout.count(
            f"{job}.0") > 0, 30, f"job {job}'s srun step")
        for i in range(KWOK_NODES - 1):   # the free nodes, then one more: a gang pod must go
            _native_gpu_pod(core, native_ns, f"serve-sig-{i}", "serve-high")
        comment = env.wait(lambda: "preempting:" in (c := env.comment(job)) and c, 60,
                           f"job {job}'s comment saying it is being preempted")
        env.ensure("preempted by kube-scheduler" in comment
                   and "SIGUSR1 sent to the batch shell, 10s to finish" in comment, comment)

        def preempted_pod_still_there() -> None:
            env.ensure([p for p in core.list_namespaced_pod(JOBS_NS).items
                        if p.metadata.deletion_timestamp is not None],
                       "no gang pod terminating during the grace")
        signalled, waited = checkpoint_then_requeue(env, job, out, 10, preempted_pod_still_there)
        print(f"\ntest o: signal at {signalled}, requeue seen {waited:.1f}s later; "
              f"comment {comment!r}")
        core.delete_collection_namespaced_pod(native_ns, grace_period_seconds=0)
        env.wait_state(job, FINISHED, 150)
        text = out.read_text() if out.exists() else ""
        if env.state(job) == "FAILED":
            pytest.xfail(f"known race (test n): the rerun of job {job} FAILED; output {text!r}")
        env.ensure(env.state(job) == "COMPLETED" and "resumed" in text,
                   f"job {job}: {env.state(job)}; output: {text[-2000:]}")
    finally:
        env.cluster.run(["scancel", str(job)], user=USER)
        core.delete_collection_namespaced_pod(native_ns, grace_period_seconds=0)
    env.wait_all_clean([job], timeout=90)


def test_p_a_class_with_preemption_policy_never_waits_and_preempts_nothing(env: Env) -> None:
    """A gang of PriorityClass batch-never (value 500, ``preemptionPolicy: Never``) finds
    every GPU held by native pods of a lower class (10): it waits parked with the
    scheduler's reason, no native pod is disrupted, and it runs once they are gone."""
    core = client.CoreV1Api(env.admin)
    _priority_class(env, "batch-never", 500, preemptionPolicy="Never")
    _priority_class(env, "native-low", 10)
    native_ns = "inference-low"
    _exists_ok(lambda: core.create_namespace({"metadata": {"name": native_ns}}))
    for i in range(KWOK_NODES):
        _native_gpu_pod(core, native_ns, f"low-{i}", "native-low")
    job = None
    try:
        env.wait(lambda: sum(1 for p in core.list_namespaced_pod(native_ns).items
                             if p.spec.node_name) == KWOK_NODES, 60, "the native pods placed")
        job = env.submit(*GANG2, "--k8s-priority=batch-never", "--wrap", "srun true")
        comment = env.wait(lambda: "Unschedulable" in (c := env.comment(job)) and c, 60,
                           f"job {job} waiting with the scheduler's reason")
        time.sleep(5)   # give a preemption (there must be none) time to show
        natives = core.list_namespaced_pod(native_ns).items
        disrupted = [p.metadata.name for p in natives if p.metadata.deletion_timestamp or any(
            c.type == "DisruptionTarget" for c in (p.status.conditions or []))]
        env.ensure(len(natives) == KWOK_NODES and not disrupted,
                   f"native pods disrupted by a preemptionPolicy: Never gang: {disrupted}")
        env.ensure(env.state(job) == "PENDING", f"job {job} {env.state(job)}")
        print(f"\ntest p: waiting without preempting: {comment!r}")
        core.delete_collection_namespaced_pod(native_ns, grace_period_seconds=0)
        env.wait_state(job, FINISHED, 120)
        env.ensure(env.state(job) == "COMPLETED", f"job {job}: {env.state(job)}")
    finally:
        if job is not None:
            env.cluster.run(["scancel", str(job)], user=USER)
        core.delete_collection_namespaced_pod(native_ns, grace_period_seconds=0)
    if job is not None:
        env.wait_all_clean([job], timeout=60)


def test_i_metrics(env: Env) -> None:
    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{env.metrics_port}/metrics",
                                    timeout=5) as answer:
            return answer.read().decode()
    text = env.wait(lambda: "slurm_k8s_bridge_reconcile_seconds_count" in (t := scrape()) and t,
                    30, "the metrics endpoint")
    assert re.search(r'^slurm_k8s_bridge_jobs\{phase="[A-Za-z_]+"\} \d+$', text, re.MULTILINE), text
    count = re.search(r"^slurm_k8s_bridge_reconcile_seconds_count (\d+)$", text, re.MULTILINE)
    assert count and int(count.group(1)) > 0, text
    assert "slurm_k8s_bridge_reconcile_seconds_bucket{" in text
    assert re.search(r"^slurm_k8s_bridge_api_requests_total\{[^}]*\} \d+$", text, re.MULTILINE), text
