"""slurm_client against real slurmctld/slurmd (its parsers against captured Slurm 22.05
output, without daemons: tests/unit/test_slurm_records.py).

The tests run one real bridge cluster (job_submit/k8s loaded, partition gpu bridged) for
the whole module; partition gpu also takes every node with feature ``k8s-pod`` (dynamic
slurmd, i.e. pods) or ``k8s-node`` (CLOUD nodes mirroring Kubernetes GPU nodes) through
NodeSets.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta

import pytest

from slurm_k8s_bridge.slurm.records import parse_key_values
from slurm_k8s_bridge.slurm.records import (
    REQUEUE_DELAY_MAX_S,
    SlurmJob,
    eligible,
    pending_order,
)
from slurm_k8s_bridge.slurm.client import SlurmClient, SlurmCommandError
from slurm_k8s_bridge.core.request import is_stamp

from .bridge_fixtures import started_bridge_cluster, wait_for

pytestmark = pytest.mark.slurm

USER = "bridgeuser"


# -- real daemons --------------------------------------------------------------------------
@dataclasses.dataclass
class Env:
    bridge: object
    cluster: object
    client: SlurmClient
    uid: int


@pytest.fixture(scope="module")
def env():
    with started_bridge_cluster("client", USER, extra_conf=["MaxNodeCount=64"]) as (bridge, uid):
        yield Env(bridge, bridge.cluster, SlurmClient(bridge.cluster.env(), timeout=15), uid)


GPU_SCRIPT = "#!/bin/bash\n#SBATCH -N1 --gres=gpu:h100:2 --time=5\nhostname\n"


def submit(env, *args, script=GPU_SCRIPT, user=USER) -> int:
    return env.cluster.submit(["-o", "/dev/null", *args], script=script, user=user)


def by_id(env) -> dict[str, SlurmJob]:
    return {j.slurm_id: j for j in env.client.bridged_jobs()}


def scancel(env, *jobs) -> None:
    env.cluster.run(["scancel", *[str(j) for j in jobs]], check=True)



def test_bridged_jobs_lists_stamped_jobs_only(env):
    a = submit(env, "-J", "first")
    b = submit(env, "-J", "second", "--comment", "user words")
    arr = submit(env, "-J", "arr", "--array=0-2")
    stamp_a = env.cluster.show_job(a)["AdminComment"]
    # a job of the non-bridged partition forging job a's stamp two ways
    forged_name = (f"f\nJobId={a} JobName=evil UserId=root(0) JobState=RUNNING "
                   f"AdminComment={stamp_a}  Comment=pwned ")
    forged = env.cluster.submit(
        ["-p", "cpu", "-H", "-o", "/dev/null", "--comment", f"x  AdminComment={stamp_a}",
         "-J", forged_name, "--wrap", "true"], user=USER)
    assert is_stamp(parse_key_values(
        env.cluster.run(["scontrol", "show", "job", "-o", str(forged)]).stdout)["AdminComment"])

    jobs = by_id(env)
    assert str(forged) not in jobs
    ja, jb = jobs[str(a)], jobs[str(b)]
    assert ja.stamp == stamp_a and jb.stamp == env.cluster.show_job(b)["AdminComment"]
    for job in (ja, jb):
        assert (job.user_id, job.state, job.priority, job.reason, job.partition) == \
            (env.uid, "PENDING", 0, "JobHeldUser", "gpu")
        assert job.request().user_id == env.uid and job.request().tres_per_node == \
            "gres:gpu:h100:2"
    assert ja.name in ("first", "")                      # "" when a forged line matches
    assert (jb.name, jb.comment) == ("second", "user words")
    meta = jobs[str(arr)]
    assert meta.pending_array_tasks == (0, 1, 2) and meta.array_task_id is None
    assert meta.task_refs() == [f"{arr}_0", f"{arr}_1", f"{arr}_2"]

    # updating one task splits it out of the pending array
    env.client.set_comment(f"{arr}_1", "task one")
    jobs = by_id(env)
    assert jobs[str(arr)].pending_array_tasks == (0, 2)
    task = jobs[f"{arr}_1"]
    assert (task.array_job_id, task.array_task_id, task.comment) == (arr, 1, "task one")
    assert task.job_id != arr
    order = [j.slurm_id for j in pending_order(jobs.values())
             if j.job_id in (a, b, arr, task.job_id)]
    assert order == [str(a), str(b), str(arr), f"{arr}_1"]
    scancel(env, a, b, arr, forged)


def test_set_comment_shows_in_squeue(env):
    job = submit(env)
    text = "k8s: waiting for pods 0/2 \"Unschedulable\": it's 0/3 nodes x=y"
    env.client.set_comment(job, text)
    out = env.cluster.run(["squeue", "-h", "-j", str(job), "-o", "%k"], check=True).stdout
    assert out.rstrip("\n") == text
    assert by_id(env)[str(job)].comment == text
    scancel(env, job)


def test_eligibility_on_real_jobs(env):
    first = submit(env)
    after_pending = submit(env, f"--dependency=afterok:{first}")
    later = submit(env, "--begin=now+1hour")
    gate = env.cluster.submit(["-p", "cpu", "-H", "-o", "/dev/null", "--wrap", "true"])
    will_run = submit(env, f"--dependency=afterok:{gate}")
    never = submit(env, f"--dependency=afternotok:{gate}")
    jobs = by_id(env)
    assert eligible(jobs[str(first)]) == (True, "eligible")
    ok, why = eligible(jobs[str(after_pending)])
    assert not ok and why == f"waiting for dependency afterok:{first}(unfulfilled)"
    ok, why = eligible(jobs[str(later)])
    assert not ok and why.startswith("begin time ") and why.endswith(" not reached")
    assert jobs[str(later)].reason == "JobHeldUser" and jobs[str(later)].begin_time

    # the owner's hold (recorded in the stamp by job_modify) and an administrator's hold
    assert env.cluster.scontrol("hold", str(first), user=USER).returncode == 0
    assert eligible(by_id(env)[str(first)])[1].startswith("held by its owner")
    assert env.cluster.scontrol("release", str(first), user=USER).returncode == 0
    assert eligible(by_id(env)[str(first)]) == (True, "eligible")
    env.cluster.scontrol("hold", str(first), check=True)
    held = by_id(env)[str(first)]
    assert held.reason == "JobHeldAdmin"
    assert eligible(held) == (False, "held by an administrator (scontrol hold)")
    env.client.hold(first)      # the bridge's own hold: what job_submit set
    held = by_id(env)[str(first)]
    assert (held.reason, held.priority) == ("JobHeldUser", 0)
    assert eligible(held) == (True, "eligible")

    # slurmctld re-evaluates the dependencies of held jobs within a scheduling cycle
    env.cluster.scontrol("release", str(gate), check=True)
    assert env.cluster.wait_job_state(gate, "COMPLETED", timeout=60) == "COMPLETED"

    def settled():
        jobs = by_id(env)
        a, b = jobs[str(will_run)], jobs[str(never)]
        return (a, b) if a.dependency is None and b.dependency and "(failed)" in b.dependency \
            else None
    a, b = wait_for(settled, 150, "dependencies re-evaluated", interval=2)
    assert eligible(a) == (True, "eligible")
    assert eligible(b) == (False, f"dependency can never be satisfied: afternotok:{gate}(failed)")
    assert b.reason == "JobHeldAdmin"   # 22.05 turns a held job's failed dependency into this
    scancel(env, first, after_pending, later, will_run, never)


POD_CONF = ("Sockets=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=2000 Gres=gpu:h100:2 "
            "Feature=k8s-pod,h100")


def test_pin_and_release_runs_on_a_pod_node_and_requeue_paths(env):
    env.cluster.start_dynamic_slurmd("pod-1", POD_CONF, netns_index=10, timeout=60)
    try:
        node = env.client.list_nodes()["pod-1"]
        assert node.partitions == ("gpu",) and node.gres == "gpu:h100:2"
        out = env.cluster.jobs_dir / "pinned.out"
        job = env.cluster.submit(
            ["-o", str(out)], user=USER,
            script="#!/bin/bash\n#SBATCH -N1 --gres=gpu:h100:2 --time=5\n"
                   "echo HOST=$(hostname) CVD=$CUDA_VISIBLE_DEVICES\n")
        env.client.set_comment(job, "k8s: pods running, releasing")
        env.client.pin_and_release(job, ["pod-1"])
        assert env.cluster.wait_job_state(job, ("COMPLETED", "FAILED", "CANCELLED"),
                                          timeout=60) == "COMPLETED"
        done = by_id(env)[str(job)]
        assert (done.nodelist, done.req_nodelist, done.exit_code) == ("pod-1", "pod-1", "0:0")
        assert out.read_text().split() == ["HOST=pod-1", "CVD=0,1"]

        # requeue paths on a running job
        job = submit(env, script="#!/bin/bash\n#SBATCH -N1 --gres=gpu:h100:1 --time=5\n"
                                 "sleep 120\n")
        env.client.pin_and_release(job, ["pod-1"])
        env.cluster.wait_job_state(job, "RUNNING", timeout=60)
        env.client.requeue_hold(job)
        env.cluster.wait_job_state(job, "PENDING", timeout=60)
        j = by_id(env)[str(job)]
        assert (j.priority, j.reason, j.req_nodelist, j.restarts) == \
            (0, "job requeued in held state", "", 1)
        # slurmctld delays a requeued job (EligibleTime = now + the credential lifetime);
        # the bridge starts it on fresh pods at once, so that delay does not count
        assert j.begin_time and eligible(j) == (True, "eligible")
        begin = datetime.strptime(j.begin_time, "%Y-%m-%dT%H:%M:%S")
        assert not eligible(j, now=begin - timedelta(seconds=REQUEUE_DELAY_MAX_S + 60))[0]
        # the same slurmd refuses a credential created in the second it revoked the old
        # one ("Job credential revoked": the job FAILS); new pods have new slurmd
        time.sleep(2)
        env.client.pin_and_release(job, ["pod-1"], start_now=True)
        env.cluster.wait_job_state(job, "RUNNING", timeout=60)
        env.client.requeue(job)     # plain requeue: pending again but *not* held
        env.cluster.wait_job_state(job, "PENDING", timeout=60)
        j = by_id(env)[str(job)]
        assert j.priority > 0 and j.restarts == 2 and j.req_nodelist == "pod-1"
        env.client.hold(job)
        j = by_id(env)[str(job)]
        assert (j.priority, j.reason) == (0, "JobHeldUser")
        env.client.fail_job(job, "pods lost: node gpu-7 NotReady")
        j = by_id(env)[str(job)]
        assert j.state == "CANCELLED"
        assert j.comment == "k8s-bridge: failed: pods lost: node gpu-7 NotReady"
    finally:
        env.cluster.stop_slurmd("pod-1", delete_node=True)
    assert "pod-1" not in env.client.list_nodes()


def sinfo(env) -> dict[str, list[str]]:
    out = env.cluster.run(["sinfo", "-N", "-h", "-o", "%N|%t|%E|%G|%P"], check=True).stdout
    return {l.split("|")[0]: l.split("|")[1:] for l in out.splitlines()}


def test_cloud_node_mirroring(env):
    c = env.client
    name = "k8s-gpu-worker-7"
    node = c.create_cloud_node(name, 64, 500000, "gpu:h100:8", ["k8s-node", "h100"])
    assert node.partitions == ("gpu",) and {"CLOUD", "POWERED_DOWN"} <= node.flags
    assert sinfo(env)[name] == ["idle~", "none", "gpu:h100:8", "gpu*"]
    with pytest.raises(SlurmCommandError, match="already exists"):
        c.create_cloud_node(name, 64, 500000, "gpu:h100:8", ["k8s-node"])

    c.node_drain(name, "Kubernetes: cordoned (kubectl cordon gpu-worker-7)")
    assert sinfo(env)[name][:2] == ["drain~", "Kubernetes: cordoned (kubectl cordon gpu-worker-7)"]
    why = "Kubernetes: NotReady (KubeletNotReady: PLEG is not healthy)"
    c.node_down(name, why)
    assert sinfo(env)[name][:2] == ["drain~", why]   # DOWN+DRAIN shows as drain
    c.set_node_state(name, "idle")
    assert sinfo(env)[name][:2] == ["idle~", "none"]
    c.node_down(name, "Kubernetes: NotReady")
    n = c.list_nodes()[name]
    assert n.down and not n.drained and n.reason == "Kubernetes: NotReady"
    assert sinfo(env)[name][:2] == ["down~", "Kubernetes: NotReady"]
    c.node_resume(name)
    assert sinfo(env)[name][:2] == ["idle~", "none"]
    c.node_resume(name)                     # already idle: no error

    # the GPU count cannot be updated; delete and create again
    with pytest.raises(SlurmCommandError, match="Invalid generic resource"):
        c.scontrol("update", f"nodename={name}", "gres=gpu:h100:4")
    c.recreate_cloud_node(name, 64, 500000, "gpu:h100:4", ["k8s-node", "h100"])
    assert sinfo(env)[name] == ["idle~", "none", "gpu:h100:4", "gpu*"]

    # it survives a slurmctld restart (state file), drained with its reason
    c.node_drain(name, "Kubernetes: cordoned")
    env.cluster.restart_slurmctld()
    n = c.list_nodes()[name]
    assert n.drained and n.reason == "Kubernetes: cordoned" and n.gres == "gpu:h100:4"
    assert sinfo(env)[name] == ["drain~", "Kubernetes: cordoned", "gpu:h100:4", "gpu*"]

    c.delete_node(name)
    assert name not in c.list_nodes() and name not in sinfo(env)
    assert c.node(name) is None


def test_create_reports_a_full_node_table(env):
    """22.05's scontrol create answers rc 0 when slurmctld had no room (MaxNodeCount)."""
    c = env.client
    free = 64 - len(c.list_nodes())
    assert free > 0
    names = [f"k8s-fill-{i}" for i in range(free)]
    try:
        for name in names:
            c.create_cloud_node(name, 1, 100, "", [])
        with pytest.raises(SlurmCommandError, match="MaxNodeCount"):
            c.create_cloud_node("k8s-one-too-many", 1, 100, "", [])
    finally:
        present = [n for n in names if n in c.list_nodes()]
        if present:
            c.delete_node(f"k8s-fill-[0-{free - 1}]")
    assert not [n for n in c.list_nodes() if n.startswith("k8s-fill-")]
    c.create_cloud_node("k8s-after-delete", 1, 100, "", [])   # deleted slots are reused
    c.delete_node("k8s-after-delete")


def test_errors_name_the_command(env):
    with pytest.raises(SlurmCommandError) as exc:
        env.client.set_comment(999999, "x")
    assert exc.value.rc != 0 and "Invalid job id" in exc.value.stderr
    assert exc.value.cmd[:3] == ["scontrol", "update", "jobid=999999"]
    with pytest.raises(ValueError):
        env.client.node_drain("k8s-x", "")
