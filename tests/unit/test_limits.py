"""limits: parsing slurmctld 22.05's limit data, and deciding as slurmctld would.

The fixtures under ``data/`` were captured from Debian's Slurm 22.05.8 (slurmctld +
slurmdbd + MariaDB, the devcluster harness in accounting mode, job_submit/k8s loaded):

* ``slurm-22.05-assoc_mgr.txt``: ``scontrol -o show assoc_mgr flags=assoc,qos``;
* ``slurm-22.05-partitions.txt``: ``scontrol -a show partition -o`` (gpu has QoS=gpupart);
* ``slurm-22.05-job-demands.txt``: ``squeue -r -h -a -t all -O DEMAND_FORMAT``;
* ``slurm-22.05-config-accounting.txt`` / ``-config-none.txt``: ``scontrol show config``
  with slurmdbd (Enforce=associations,limits,qos) and without accounting.

What the cluster held then:

* accounts root > research (GrpJobs=10, GrpTRES=gres/gpu=16) > team-a (GrpTRES=cpu=64,
  MaxJobs=5) and team-b (GrpJobs=2); bridgeuser (uid 1001) in team-a (MaxJobs=3,
  GrpTRES=node=4) plus a partition-gpu association (MaxJobs=2); skblim2 (1002) in team-b;
* QOS gpu1: GrpJobs=5, GrpTRES=gres/gpu=8,mem=16G, MaxJobsPerUser=1,
  MaxTRESPerUser=cpu=32,gres/gpu=8, MaxTRESPerJob=gres/gpu=8; QOS gpupart (partition gpu's
  QOS): GrpTRES=gres/gpu=24, MaxJobsPerUser=4; QOS normal: no limits;
* running, partition cpu, QOS gpu1: job 9 (bridgeuser, 2 CPUs, 500 MB, 2 GPUs), job 10
  (skblim2, 1 CPU, 200 MB, 1 GPU); held bridged jobs in partition gpu, QOS gpu1: 11 and 12
  (bridgeuser, 8 CPUs, 8 GB, 4 GPUs each), 13 (skblim2, 8 GPUs).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from slurm_k8s_bridge.core.limits import (
    Association,
    JobDemand,
    QosLimits,
    QosShare,
    SlurmLimits,
    Usage,
    admit_in_order,
    check_limits,
    parse_accounting_config,
    parse_assoc_mgr,
    parse_job_demands,
    parse_partition_qos,
    parse_time_limit,
    parse_tres,
    parse_usage,
    reason_name,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data"
ASSOC_MGR = (DATA / "slurm-22.05-assoc_mgr.txt").read_text()
PARTITIONS = (DATA / "slurm-22.05-partitions.txt").read_text()
DEMANDS = (DATA / "slurm-22.05-job-demands.txt").read_text()
CONFIG_ACCT = (DATA / "slurm-22.05-config-accounting.txt").read_text()
CONFIG_NONE = (DATA / "slurm-22.05-config-none.txt").read_text()

#: what a cluster without accounting prints (Slurm 22.05.8, accounting_storage/none)
ASSOC_MGR_NONE = ("Current Association Manager state\nNo associations currently cached in "
                  "Slurm.\nNo QOS currently cached in Slurm.\n")

ENFORCE = ("associations", "limits", "qos")


def limits(partition_qos: bool = True) -> SlurmLimits:
    _kind, enforce = parse_accounting_config(CONFIG_ACCT)
    return parse_assoc_mgr(ASSOC_MGR, enforce,
                           parse_partition_qos(PARTITIONS) if partition_qos else {})


def demands() -> dict[str, JobDemand]:
    return {k: d for k, (_state, d) in parse_job_demands(DEMANDS).items()}


def demand(uid: int = 1001, account: str = "team-a", qos: str = "gpu1",
           partition: str = "gpu", gpus: int = 0, cpus: int = 1, mem: int = 100,
           nodes: int = 1, **kw) -> JobDemand:  # type: ignore[no-untyped-def]
    tres = {"cpu": cpus, "mem": mem, "node": nodes, "billing": cpus}
    if gpus:
        tres["gres/gpu"] = gpus
    return JobDemand(user_id=uid, account=account, qos=qos, partition=partition, tres=tres,
                     **kw)


# -- parsing -------------------------------------------------------------------------


def test_usage_and_tres_values():
    assert parse_usage("4(1)") == Usage(4, 1)
    assert parse_usage("N(0)") == Usage(None, 0)
    assert parse_usage("N(0.00)") == Usage(None, 0)
    assert parse_usage("") == Usage(None, 0)
    assert parse_tres("cpu=8,mem=8G,node=1,billing=8,gres/gpu=4") == \
        {"cpu": 8, "mem": 8192, "node": 1, "billing": 8, "gres/gpu": 4}
    assert parse_tres("cpu=2,mem=500M,node=1") == {"cpu": 2, "mem": 500, "node": 1}
    assert parse_tres("mem=1.50T") == {"mem": 1572864}
    assert parse_tres("(null)") == {} and parse_tres("") == {}
    assert parse_time_limit("UNLIMITED") is None
    assert parse_time_limit("30:00") == 30
    assert parse_time_limit("1:00:00") == 60
    assert parse_time_limit("1-02:00:00") == 26 * 60
    assert parse_time_limit("0:30") == 1        # seconds round up to a minute


def test_qos_records_with_usage_and_per_user_and_per_account_records():
    lim = limits()
    assert sorted(lim.qos) == ["gpu1", "gpupart", "noflags", "normal"]
    gpu1 = lim.qos["gpu1"]
    assert gpu1.id == 2
    assert gpu1.grp_jobs == Usage(5, 2)                          # jobs 9 and 10 run
    assert gpu1.grp_tres["gres/gpu"] == Usage(8, 3)
    assert gpu1.grp_tres["mem"] == Usage(16384, 700)             # MB
    assert gpu1.grp_tres["cpu"] == Usage(None, 3)
    assert gpu1.max_tres_pj == {"gres/gpu": 8} and gpu1.max_tres_pn == {}
    assert gpu1.max_wall_pj is None
    assert sorted(gpu1.users) == [1001, 1002]
    assert gpu1.users[1001].max_jobs == Usage(1, 1)
    assert gpu1.users[1001].max_tres["gres/gpu"] == Usage(8, 2)
    assert gpu1.users[1001].max_tres["cpu"] == Usage(32, 2)
    assert gpu1.accounts["team-b"].max_jobs == Usage(None, 1)
    # a user with no record in the QOS yet: the QOS's per-user limit, no usage
    assert gpu1.user_share(4242).max_jobs == Usage(1, 0)
    assert gpu1.user_share(4242).max_tres["gres/gpu"] == Usage(8, 0)
    assert lim.qos["gpupart"].users[1001].max_jobs == Usage(4, 0)
    assert lim.qos["normal"].users == {} and lim.qos["normal"].user_share(1001) == QosShare()


def test_association_tree_and_lookup():
    lim = limits()
    assert sorted(lim.associations) == [1, 2, 3, 4, 5, 6, 7, 8]
    team_a = lim.associations[4]
    assert (team_a.account, team_a.user, team_a.parent_id) == ("team-a", "", 3)
    assert team_a.grp_tres["cpu"] == Usage(64, 2) and team_a.max_jobs == Usage(5, 1)
    research = lim.associations[3]
    assert research.grp_jobs == Usage(10, 2) and research.grp_tres["gres/gpu"] == Usage(16, 3)
    user = lim.associations[5]
    assert (user.user, user.uid, user.partition) == ("bridgeuser", 1001, "")
    assert user.max_jobs == Usage(3, 1) and user.grp_tres["node"] == Usage(4, 1)
    # (user, account, partition) first, else (user, account)
    assert lim.association_for(1001, "team-a", "gpu").id == 8       # type: ignore[union-attr]
    assert lim.association_for(1001, "team-a", "cpu").id == 5       # type: ignore[union-attr]
    assert lim.association_for(1001, "team-b", "cpu") is None
    assert [a.id for a in lim.lineage(lim.associations[8])] == [8, 4, 3, 1]
    assert [a.id for a in lim.lineage(lim.associations[7])] == [7, 6, 3, 1]


def test_config_partitions_and_demands():
    assert parse_accounting_config(CONFIG_ACCT) == (
        "accounting_storage/slurmdbd", frozenset({"associations", "limits", "qos"}))
    assert parse_accounting_config(CONFIG_NONE) == ("accounting_storage/none", frozenset())
    assert parse_partition_qos(PARTITIONS) == {"gpu": "gpupart"}
    rows = parse_job_demands(DEMANDS)
    assert {k for k, (state, _) in rows.items() if state == "PENDING"} == {"11", "12", "13"}
    assert rows["9"][0] == "RUNNING"
    eleven = rows["11"][1]
    assert (eleven.user_id, eleven.user_name, eleven.account, eleven.qos, eleven.partition) \
        == (1001, "bridgeuser", "team-a", "gpu1", "gpu")
    assert eleven.tres == {"cpu": 8, "mem": 8192, "node": 1, "billing": 8, "gres/gpu": 4}
    assert eleven.time_limit_min is None and rows["4"][1].time_limit_min == 60
    # array tasks are named as scontrol names them (the same columns, an array row)
    row = "7|7|2|1001|bridgeuser|PENDING|team-a|gpu1|gpu|10:00|cpu=1,mem=100M,node=1"
    assert list(parse_job_demands(row)) == ["7_2"]


def test_no_accounting_means_no_limits():
    _kind, enforce = parse_accounting_config(CONFIG_NONE)
    lim = parse_assoc_mgr(ASSOC_MGR_NONE, enforce)
    assert not lim.enforced and lim.qos == {} and lim.associations == {}
    assert check_limits(demand(gpus=64), lim) == (True, "")
    assert check_limits(demand(gpus=64), SlurmLimits.none()) == (True, "")
    # accounting, but AccountingStorageEnforce without limits: slurmctld enforces none
    assert not parse_assoc_mgr(ASSOC_MGR, ["associations", "qos"]).enforced
    assert check_limits(demands()["13"], parse_assoc_mgr(ASSOC_MGR, ["associations"])) \
        == (True, "")


def test_reason_names_are_slurms():
    assert reason_name("qos_pu", "gres/gpu") == "QOSMaxGRESPerUser"
    assert reason_name("qos_grp", "gres/gpu") == "QOSGrpGRES"
    assert reason_name("qos_grp", "cpu") == "QOSGrpCpuLimit"
    assert reason_name("assoc_grp", "gres/gpu") == "AssocGrpGRES"
    assert reason_name("assoc_grp", "mem") == "AssocGrpMemLimit"
    assert reason_name("qos_pa", "gres/gpu") == "MaxGRESPerAccount"
    assert reason_name("qos_pj", "gres/gpu:h100") == "QOSMaxGRESPerJob"
    assert reason_name("qos_grp", "license/x") == "QOSGrpUnknown"


# -- decisions on the captured state ---------------------------------------------------


def test_captured_jobs_with_the_partition_qos():
    """gpupart (partition gpu's QOS) sets MaxJobsPerUser=4 and GrpTRES=gres/gpu=24: those
    hide gpu1's MaxJobsPerUser=1 and GrpTRES=gres/gpu=8 (seen on 22.05: with QoS=gpupart
    on a partition, a second job of a user in gpu1 ran)."""
    lim, jobs = limits(), demands()
    assert check_limits(jobs["12"], lim) == (True, "")
    ok, why = check_limits(jobs["11"], lim, admitting=[jobs["12"]])
    assert not ok and why.startswith("QOSGrpMemLimit ")                # 700+8192+8192 > 16384
    assert "QOS gpu1" in why and "GrpTRES=mem=16384" in why
    ok, why = check_limits(jobs["13"], lim)
    assert not ok and why.split(" ", 1)[0] == "QOSMaxGRESPerUser"       # 1 running + 8 > 8
    assert "user skblim2 has 1" in why


def test_max_jobs_per_user_counts_running_and_admitting():
    lim = limits(partition_qos=False)
    jobs = demands()
    ok, why = check_limits(jobs["12"], lim)                # job 9 of bridgeuser runs in gpu1
    assert not ok and why.startswith("QOSMaxJobsPerUserLimit (QOS gpu1: MaxJobsPerUser=1")
    # a user with nothing running: the first fits, the second waits for the first
    first = demand(uid=4242, account="team-b", qos="gpu1", partition="cpu", gpus=1)
    assert check_limits(first, lim) == (True, "")
    ok, why = check_limits(replace(first), lim, admitting=[first])
    assert not ok and why.split(" ", 1)[0] == "QOSMaxJobsPerUserLimit"
    # another user's admitting gang does not count against this user
    other = demand(uid=4343, account="team-b", qos="gpu1", partition="cpu", gpus=1)
    assert check_limits(first, lim, admitting=[other]) == (True, "")


@pytest.mark.parametrize("first, second, refusal", [
    # QOS gpu1: GrpTRES=gres/gpu=8 with 3 in use: 3 + 4 fits, 3 + 4 + 4 does not
    (dict(uid=4242, account="team-b", qos="gpu1", gpus=4),
     dict(uid=4343, account="team-b", qos="gpu1", gpus=4),
     "QOSGrpGRES (QOS gpu1: GrpTRES=gres/gpu=8, 7 in use"),
    # research (GrpTRES=gres/gpu=16, 3 in use) is the parent of team-a and team-b: a gang
    # admitted for team-b counts against a team-a job (QOS normal sets no GPU limit)
    (dict(uid=1002, account="team-b", qos="normal", gpus=8),
     dict(uid=1001, account="team-a", qos="normal", gpus=8),
     "AssocGrpGRES (account research: GrpTRES=gres/gpu=16"),
    # team-b's own GrpJobs=2 (1 running): one more fits, a second does not
    (dict(uid=1002, account="team-b", qos="normal"), dict(uid=1002, account="team-b", qos="normal"),
     "AssocGrpJobsLimit (account team-b: GrpJobs=2"),
], ids=["qos-grp-gres", "parent-account-gres", "account-grp-jobs"])
def test_admitting_gangs_count_against_group_limits(first, second, refusal):
    lim = limits(partition_qos=False)
    a, b = (demand(partition="cpu", **first), demand(partition="cpu", **second))
    assert check_limits(a, lim) == (True, "") and check_limits(b, lim) == (True, "")
    ok, why = check_limits(b, lim, admitting=[a])
    assert not ok and why.startswith(refusal), why
    assert admit_in_order([("a", a), ("b", b)], lim) == [("a", True, ""), ("b", False, why)]


def test_qos_limit_hides_the_association_limit_of_the_same_kind():
    """gpu1 sets GrpTRES gres/gpu, so research's GrpTRES gres/gpu is not looked at (22.05
    acct_policy: the association check skips TRES a QOS limits); the QOS's own applies."""
    full = limits(partition_qos=False)
    # without gpu1's per-user records (bridgeuser's job 9 would hit MaxJobsPerUser=1)
    lim = replace(full, qos={**full.qos, "gpu1": replace(full.qos["gpu1"], users={})})
    theirs = demand(uid=1002, account="team-b", qos="normal", partition="cpu", gpus=12)
    mine = demand(uid=1001, account="team-a", qos="gpu1", partition="cpu", gpus=4)
    assert [a.id for a in lim.lineage(lim.association_for(1001, "team-a", "cpu"))] == \
        [5, 4, 3, 1]                                                    # type: ignore[arg-type]
    assert check_limits(mine, lim, admitting=[theirs]) == (True, "")   # research: 3+12+4
    ok, why = check_limits(replace(mine, qos="normal"), lim, admitting=[theirs])
    assert not ok and why.startswith("AssocGrpGRES (account research:")


def test_association_max_jobs_of_a_partition_association():
    """bridgeuser's association for partition gpu has MaxJobs=2 (none running)."""
    lim = limits(partition_qos=False)
    job = demand(uid=1001, account="team-a", qos="normal", partition="gpu")
    assert check_limits(job, lim, admitting=[job]) == (True, "")
    ok, why = check_limits(job, lim, admitting=[job, job])
    assert not ok and why.startswith(
        "AssocMaxJobsLimit (user bridgeuser in account team-a (partition gpu): MaxJobs=2")
    # the same user in partition cpu is charged to the other association (MaxJobs=3,
    # 1 running, GrpTRES=node=4 with 1 in use)
    cpu_job = replace(job, partition="cpu")
    assert check_limits(cpu_job, lim, admitting=[cpu_job]) == (True, "")
    ok, why = check_limits(replace(cpu_job, tres={"node": 4}), lim)
    assert not ok and why.startswith("AssocGrpNodeLimit (user bridgeuser in account team-a:")


def test_per_job_limits_never_fit():
    lim = limits()
    big = replace(demands()["12"], tres={"cpu": 2, "node": 2, "gres/gpu": 16})
    ok, why = check_limits(big, lim)
    assert not ok and why.startswith("QOSMaxGRESPerJob (QOS gpu1: MaxTRESPerJob=gres/gpu=8, "
                                     "job asks 16; never fits)")
    ok, why = check_limits(replace(big, tres={"gres/gpu": 32}), lim)
    assert not ok and why.startswith("QOSGrpGRES (QOS gpupart: GrpTRES=gres/gpu=24, job asks "
                                     "32; never fits)")


def test_partition_and_job_qos_order_and_wall_time():
    gpu1 = QosLimits("gpu1", 2, max_wall_pj=60, users={7: QosShare(Usage(1, 1))})
    part = QosLimits("part", 3, users={7: QosShare(Usage(2, 1))})
    lim = SlurmLimits(frozenset({"limits"}), {"gpu1": gpu1, "part": part},
                      {1: Association(1, "root")}, {"gpu": "part"})
    job = JobDemand(7, "root", "gpu1", "gpu", {"cpu": 1}, time_limit_min=30)
    assert check_limits(job, lim) == (True, "")                # part's MaxJobsPU=2 wins
    ok, why = check_limits(replace(job, job_qos_first=True), lim)   # OverPartQOS
    assert not ok and why.startswith("QOSMaxJobsPerUserLimit (QOS gpu1:")
    ok, why = check_limits(replace(job, time_limit_min=90), lim)
    assert not ok and why.startswith("QOSMaxWallDurationPerJobLimit (QOS gpu1: MaxWall=60")
