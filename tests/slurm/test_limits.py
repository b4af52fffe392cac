"""QOS and association limits against real slurmctld + slurmdbd + MariaDB.

The harness's accounting mode (``LocalSlurmCluster.enable_accounting``) runs a private
MariaDB and slurmdbd under the cluster's directory; slurm.conf gets
``AccountingStorageEnforce=associations,limits,qos``. Bridged jobs sit held
(``JobHeldUser``), so slurmctld never evaluates their limits: ``limits.check_limits``
does, from ``SlurmClient.limits()`` (``scontrol show assoc_mgr``). Where a held job cannot
show what Slurm would decide, a root ``scontrol release`` of an over-limit job (Slurm
then shows its own reason, and cannot start it) or a non-bridged job in partition cpu
shows it.

Skips, printing why, when not root or when MariaDB/slurmdbd cannot be installed or
started here (the harness's ``AccountingUnavailable`` message says which step failed).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from slurm_k8s_devcluster.slurm import LocalSlurmCluster
from slurm_k8s_bridge.core.limits import Usage, admit_in_order, check_limits
from slurm_k8s_bridge.slurm.client import SlurmClient

from .bridge_fixtures import started_bridge_cluster, wait_for

pytestmark = pytest.mark.slurm

USER = "bridgeuser"
SLEEP = "#!/bin/bash\nsleep 300\n"


@dataclass
class Env:
    cluster: LocalSlurmCluster
    client: SlurmClient
    uid: int


@pytest.fixture(scope="module")
def env():
    with started_bridge_cluster("limits", USER, accounting=True) as (bridge, uid):
        cluster = bridge.cluster
        # research (GPU budget 16) > team-a > bridgeuser; QOS gpu1: 1 running job per
        # user, 8 GPUs in all; QOS gpu6: only a group GPU limit.
        cluster.sacctmgr("add", "account", "research", "parent=root", "GrpTRES=gres/gpu=16")
        cluster.sacctmgr("add", "account", "team-a", "parent=research", "GrpJobs=20")
        cluster.sacctmgr("add", "qos", "gpu1", "MaxJobsPerUser=1", "GrpTRES=gres/gpu=8")
        cluster.sacctmgr("add", "qos", "gpu6", "GrpTRES=gres/gpu=6")
        cluster.sacctmgr("add", "user", USER, "account=team-a", "qos=normal,gpu1,gpu6")
        yield Env(cluster, SlurmClient(cluster.env(), timeout=15), uid)


def submit(env: Env, *args: str) -> int:
    return env.cluster.submit(["-o", "/dev/null", *args], script=SLEEP, user=USER)


def squeue_reason(env: Env, job: int) -> str:
    return env.cluster.run(["squeue", "-h", "-j", str(job), "-o", "%r"]).stdout.strip()



def test_max_jobs_per_user_for_held_bridged_jobs(env):
    first = submit(env, "-p", "gpu", "--qos=gpu1", "--gres=gpu:h100:4", "-c", "2")
    second = submit(env, "-p", "gpu", "--qos=gpu1", "--gres=gpu:h100:4", "-c", "2")
    try:
        assert squeue_reason(env, first) == squeue_reason(env, second) == "JobHeldUser"
        limits = env.client.limits()
        assert limits.enforced
        gpu1 = limits.qos["gpu1"]
        assert gpu1.grp_tres["gres/gpu"] == Usage(8, 0)
        assert gpu1.users[env.uid].max_jobs == Usage(1, 0)   # record made by the submission
        demands = env.client.job_demands()
        d1, d2 = demands[str(first)][1], demands[str(second)][1]
        assert (d1.account, d1.qos, d1.partition, d1.user_id) == \
            ("team-a", "gpu1", "gpu", env.uid)
        assert d1.tres["gres/gpu"] == 4 and d1.tres["cpu"] == 2
        # in start order, the first is admitted and counts against the second
        decided = admit_in_order([(first, d1), (second, d2)], limits)
        assert decided[0] == (first, True, "")
        assert decided[1][0] == second and not decided[1][1]
        assert decided[1][2].startswith("QOSMaxJobsPerUserLimit (QOS gpu1: MaxJobsPerUser=1")

        # a running job of the user in gpu1 (partition cpu, not bridged): usage read back
        running = submit(env, "-p", "cpu", "--qos=gpu1", "--gres=gpu:2", "-c", "1",
                         "--mem=100")
        env.cluster.wait_job_state(running, "RUNNING", timeout=30)
        limits = env.client.limits()
        gpu1 = limits.qos["gpu1"]
        assert gpu1.grp_jobs.used == 1
        assert gpu1.grp_tres["gres/gpu"] == Usage(8, 2)
        assert gpu1.users[env.uid].max_jobs == Usage(1, 1)
        assoc = limits.association_for(env.uid, "team-a", "gpu")
        assert assoc is not None
        by_account = {a.account: a for a in limits.lineage(assoc) if not a.user}
        assert by_account["research"].grp_tres["gres/gpu"] == Usage(16, 2)   # parent
        assert by_account["team-a"].grp_jobs == Usage(20, 1)
        ok, why = check_limits(d1, limits)
        assert not ok and why.split(" ", 1)[0] == "QOSMaxJobsPerUserLimit"

        # Slurm agrees: released by root, the first shows the same reason and stays
        # pending (it cannot start: the limit holds it)
        env.cluster.scontrol("release", str(first), check=True)
        try:
            reason = wait_for(lambda: (r := squeue_reason(env, first)) not in
                              ("JobHeldUser", "None", "") and r, 20,
                              "a reason from the scheduler")  # "None" until it ran
            assert reason == "QOSMaxJobsPerUserLimit"
        finally:
            env.cluster.scontrol("uhold", str(first), check=True)
        env.cluster.run(["scancel", str(running)], check=True)
        env.cluster.wait_job_state(running, ("CANCELLED", "COMPLETED"), timeout=30)
        wait_for(lambda: env.client.limits().qos["gpu1"].users[env.uid].max_jobs.used == 0,
                 20, "usage back to 0")
        assert check_limits(d1, env.client.limits()) == (True, "")
    finally:
        env.cluster.run(["scancel", str(first), str(second)])


def test_group_gpu_limit_counts_admitting_gangs_and_matches_slurm(env):
    """QOS gpu6: GrpTRES=gres/gpu=6. A running cpu-partition job holds 2 GPUs."""
    running = submit(env, "-p", "cpu", "--qos=gpu6", "--gres=gpu:2", "-c", "1", "--mem=100")
    held = [submit(env, "-p", "gpu", "--qos=gpu6", "--gres=gpu:h100:2") for _ in range(3)]
    jobs = [running, *held]
    try:
        env.cluster.wait_job_state(running, "RUNNING", timeout=30)
        limits = env.client.limits()
        assert limits.qos["gpu6"].grp_tres["gres/gpu"] == Usage(6, 2)
        demands = env.client.job_demands()
        decided = admit_in_order([(j, demands[str(j)][1]) for j in held], limits)
        assert [ok for _, ok, _ in decided] == [True, True, False]      # 2 + 2 + 2 > 6
        assert decided[2][2].startswith("QOSGrpGRES (QOS gpu6: GrpTRES=gres/gpu=6, 6 in use")

        # Slurm's own reason for a job over the same limit (not held: partition cpu)
        env.cluster.run(["scancel", *map(str, held)], check=True)
        fits = submit(env, "-p", "cpu", "--qos=gpu6", "--gres=gpu:4", "-c", "1", "--mem=100")
        jobs.append(fits)
        env.cluster.wait_job_state(fits, "RUNNING", timeout=30)
        over = submit(env, "-p", "cpu", "--qos=gpu6", "--gres=gpu:1", "-c", "1", "--mem=100")
        jobs.append(over)
        reason = wait_for(lambda: (r := squeue_reason(env, over)) not in ("None", "")
                          and r, 20, "a reason from the scheduler")
        ok, why = check_limits(env.client.job_demands()[str(over)][1], env.client.limits())
        assert (ok, why.split(" ", 1)[0]) == (False, reason) == (False, "QOSGrpGRES")
    finally:
        env.cluster.run(["scancel", *map(str, jobs)])


def test_without_accounting_there_are_no_limits(make_slurm_cluster):
    cluster = make_slurm_cluster("nolimits", node_count=1)
    cluster.start()
    client = SlurmClient(cluster.env(), timeout=15)
    assert client.accounting_config() == ("accounting_storage/none", frozenset())
    calls: list[list[str]] = []
    run = client.run

    def counting_run(args, check=True):  # type: ignore[no-untyped-def]
        calls.append(list(args))
        return run(args, check=check)

    client.run = counting_run  # type: ignore[method-assign]
    limits = client.limits()
    assert not limits.enforced and limits.qos == {}
    assert calls == []                                 # answered from the cached config
    out = cluster.run(["scontrol", "-o", "show", "assoc_mgr", "flags=assoc,qos"]).stdout
    assert "No associations currently cached" in out
