"""End to end on a real kubelet: unchanged scripts, submitted as an ordinary user, run in
worker pods (munged + ``slurmd -Z``) on a real node.

One module-scoped ``DevCluster(real_node=True)`` (``dev_cluster``, tests/e2e/conftest.py): slurmctld with both plugins on this
machine, the control plane, a real kubelet node (containerd, runc, a CNI bridge) that
advertises 8 ``nvidia.com/gpu`` without GPUs, the worker image imported into its
containerd, and the bridge daemon. The user's directory is the cluster's shared directory
(``SLURM_K8S_SHARED_DIR``), mounted in every pod at the same path, so output files written
in the pods appear here.

The node has this machine's 2 CPUs: jobs ask ``-c1 --mem=500`` per node and run one after
another. Skipped, with the reason printed, without root, or when the worker image cannot be
built (``bash scripts/build-images.sh --suite bookworm --only worker``) or the kubelet
cannot run here.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client

from slurm_k8s_devcluster.dev import DevCluster
from slurm_k8s_devcluster.slurm import LocalSlurmCluster, _tail

from ..paths import REPO

pytestmark = pytest.mark.e2e

USER = "bridgeuser"
JOBS_NS = "slurm-jobs"
ONE = ["-c1", "--mem=500"]
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
T = TypeVar("T")


class E2E:
    def __init__(self, dev: DevCluster) -> None:
        self.dev = dev
        self.slurm: LocalSlurmCluster = dev._slurm_handle()
        self.shared = dev.shared_dir
        self.kube = dev._kube()
        self.user = pwd.getpwnam(USER)

    def workdir(self, name: str) -> Path:
        """A directory of the user's under the shared directory."""
        path = self.shared / name
        path.mkdir(exist_ok=True)
        os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path

    def run(self, cmd: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.slurm.run(cmd, user=USER, cwd=cwd, timeout=timeout)

    def sbatch(self, args: list[str], cwd: Path) -> int:
        res = self.run(["sbatch", "--parsable", *args], cwd)
        m = re.search(r"^(\d+)", res.stdout.strip())
        assert res.returncode == 0 and m, f"sbatch {args}: {res.stderr}"
        return int(m.group(1))

    def show(self, job: int | str) -> dict[str, str]:
        res = self.slurm.run(["scontrol", "show", "job", "-o", str(job)])
        return dict(re.findall(r"(\w+)=(\S*)", res.stdout))

    def state(self, job: int | str) -> str:
        res = self.slurm.run(["squeue", "-h", "-t", "all", "-j", str(job), "-o", "%T"])
        return res.stdout.split()[0] if res.stdout.split() else ""

    def wait(self, check: Callable[[], T], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except (subprocess.SubprocessError, OSError, AssertionError) as exc:
                last = exc
            if last:
                return last
            time.sleep(0.5)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}\n"
                    f"{self.diagnostics()}")

    def wait_state(self, job: int | str, states: set[str], timeout: float) -> str:
        return self.wait(lambda: (s := self.state(job)) in states and s, timeout,
                         f"job {job} in {sorted(states)}")

    def pods(self, prefix: str) -> list[Any]:
        with self.kube.admin_client() as api:
            return [p for p in client.CoreV1Api(api).list_namespaced_pod(JOBS_NS).items
                    if p.metadata.name.startswith(prefix)]

    def wait_pods_gone(self, job: int | str, timeout: float = 60) -> None:
        self.wait(lambda: not self.pods(f"slurm-{job}-"), timeout, f"the pods of job {job} gone")

    def diagnostics(self) -> str:
        parts = ["--- squeue ---", self.slurm.run(
            ["squeue", "-a", "-t", "all", "-o", "%i %T %r %k"]).stdout[-2500:],
            "--- daemon log ---", _tail(self.dev.daemon_log, 25),
            "--- slurmctld.log ---", _tail(self.slurm.log_dir / "slurmctld.log", 20)]
        return "\n".join(parts)


@pytest.fixture(scope="module")
def e2e(dev_cluster: DevCluster) -> E2E:
    """The e2e environment of tests/e2e/conftest.py (``dev_cluster``), with this module's helpers."""
    return E2E(dev_cluster)


def _timeline(e2e: E2E, job: int) -> dict[str, float]:
    """Seconds from submission to each step, from the job record and the pods."""
    info = e2e.show(job)

    def ts(value: str) -> float:
        return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))

    out = {"start": ts(info["StartTime"]) - ts(info["SubmitTime"]),
           "end": ts(info["EndTime"]) - ts(info["SubmitTime"])}
    return out


def test_mpi_hello_two_ranks_on_two_pods(e2e: E2E) -> None:
    work = e2e.workdir("mpi")
    for name in ("mpi-hello.c", "mpi-hello.sbatch"):
        shutil.copy(REPO / "examples" / name, work / name)
        os.chmod(work / name, 0o644)
    t0 = time.monotonic()
    job = e2e.sbatch(["-N2", "--gres=gpu:1", *ONE, "mpi-hello.sbatch"], work)
    e2e.wait_state(job, {"RUNNING", *FINISHED}, 180)
    running = time.monotonic() - t0
    state = e2e.wait_state(job, FINISHED, 240)
    done = time.monotonic() - t0
    out = (work / f"mpi-hello-{job}.out").read_text()
    assert state == "COMPLETED", f"{state}: {out}\n{e2e.diagnostics()}"
    ranks = sorted(re.findall(r"^rank (\d+) of (\d+) on (\S+)$", out, re.MULTILINE))
    assert [(r, s) for r, s, _ in ranks] == [("0", "2"), ("1", "2")], out
    assert {h for _, _, h in ranks} == {f"slurm-{job}-0", f"slurm-{job}-1"}, out
    assert e2e.show(job)["ExitCode"] == "0:0"
    e2e.wait_pods_gone(job)
    print(f"\nmpi-hello job {job}: sbatch -> RUNNING {running:.1f}s, -> COMPLETED {done:.1f}s; "
          f"{_timeline(e2e, job)}")


def test_failing_script_ends_failed_with_its_exit_code(e2e: E2E) -> None:
    work = e2e.workdir("fail")
    job = e2e.sbatch(["-N1", "--gres=gpu:1", *ONE, "-o", "fail-%j.out", "--wrap",
                      "echo about to fail; exit 3"], work)
    assert e2e.wait_state(job, FINISHED, 240) == "FAILED"
    assert e2e.show(job)["ExitCode"] == "3:0"
    assert "about to fail" in (work / f"fail-{job}.out").read_text()
    e2e.wait_pods_gone(job)


def test_tasks_run_as_the_submitting_user_in_unprivileged_pods(e2e: E2E) -> None:
    work = e2e.workdir("ids")
    job = e2e.sbatch(["-N1", "--gres=gpu:1", *ONE, "-o", "ids-%j.out", "--wrap",
                      "sleep 5; id -u; id -g; srun id -u"], work)
    e2e.wait_state(job, {"RUNNING"}, 180)
    pods = e2e.pods(f"slurm-{job}-")
    assert pods, "no pod for a running job"
    for pod in pods:
        sc = pod.spec.containers[0].security_context
        assert sc.privileged is False and sc.allow_privilege_escalation is False
        assert "ALL" in sc.capabilities.drop
        assert set(sc.capabilities.add) <= {"SETUID", "SETGID", "CHOWN", "DAC_OVERRIDE",
                                             "FOWNER", "KILL"}
    assert e2e.wait_state(job, FINISHED, 120) == "COMPLETED"
    lines = (work / f"ids-{job}.out").read_text().split()
    uid, gid = str(e2e.user.pw_uid), str(e2e.user.pw_gid)
    assert lines == [uid, gid, uid], lines
    assert uid != "0"


def test_srun_from_the_login_side_runs_on_two_pods(e2e: E2E) -> None:
    work = e2e.workdir("srun")
    res = e2e.run(["srun", "-N2", "--gres=gpu:1", *ONE, "hostname"], work, timeout=240)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{e2e.diagnostics()}"
    hosts = sorted(res.stdout.split())
    assert len(hosts) == 2 and all(re.fullmatch(r"slurm-\d+-[01]", h) for h in hosts), hosts


def test_scancel_of_a_running_job_and_the_time_limit_remove_its_pods(e2e: E2E) -> None:
    work = e2e.workdir("cancel")
    job = e2e.sbatch(["-N1", "--gres=gpu:1", *ONE, "-o", "/dev/null", "--wrap",
                      "sleep 300"], work)
    e2e.wait_state(job, {"RUNNING"}, 180)
    assert e2e.pods(f"slurm-{job}-")
    assert e2e.run(["scancel", str(job)], work).returncode == 0
    assert e2e.wait_state(job, FINISHED, 60) == "CANCELLED"
    e2e.wait_pods_gone(job)
    job = e2e.sbatch(["-N1", "--gres=gpu:1", *ONE, "--time=1", "-o", "/dev/null", "--wrap",
                      "sleep 300"], work)
    e2e.wait_state(job, {"RUNNING"}, 180)
    assert e2e.wait_state(job, FINISHED, 200) == "TIMEOUT"
    e2e.wait_pods_gone(job)


def test_array_and_afterok_chain(e2e: E2E) -> None:
    work = e2e.workdir("array")
    array = e2e.sbatch(["-N1", "--gres=gpu:1", *ONE, "--array=0-2", "-o", "a-%A_%a.out",
                        "--wrap", "echo task $SLURM_ARRAY_TASK_ID on $(hostname)"], work)
    first = e2e.sbatch(["-N1", "--gres=gpu:1", *ONE, "-o", "c1-%j.out", "--wrap",
                        "echo one > chain.txt"], work)
    second = e2e.sbatch(["-N1", "--gres=gpu:1", *ONE, f"--dependency=afterok:{first}",
                         "-o", "c2-%j.out", "--wrap", "cat chain.txt; echo two"], work)
    for task in range(3):
        assert e2e.wait_state(f"{array}_{task}", FINISHED, 300) == "COMPLETED"
        text = (work / f"a-{array}_{task}.out").read_text()
        assert text.strip() == f"task {task} on slurm-{array}-{task}-0", text
    assert e2e.wait_state(second, FINISHED, 300) == "COMPLETED"
    assert e2e.state(first) == "COMPLETED"
    assert (work / f"c2-{second}.out").read_text().split() == ["one", "two"]
