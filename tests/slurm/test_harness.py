"""The LocalSlurmCluster harness against real Debian slurmctld/slurmd/munged daemons."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from slurm_k8s_bridge.slurm.records import parse_key_values

pytestmark = pytest.mark.slurm


def test_munge_round_trip_uses_private_socket(harness_cluster):
    sock = str(harness_cluster.munge_socket)
    enc = subprocess.run(["munge", "-n", f"--socket={sock}"], check=False, capture_output=True, timeout=10)
    dec = subprocess.run(["unmunge", f"--socket={sock}"], check=False, input=enc.stdout,
                         capture_output=True, timeout=10)
    assert dec.returncode == 0 and b"Success" in dec.stdout
    assert f"AuthInfo=socket={sock}" in harness_cluster.conf_path.read_text()


def test_nodes_live_in_their_own_network_namespaces(harness_cluster):
    assert harness_cluster.node_states() == {"node1": "idle", "node2": "idle"}
    for i, name in enumerate(harness_cluster.node_names, start=1):
        node = harness_cluster.show_node(name)
        assert node["NodeAddr"] == harness_cluster.node_addr(i)
        assert "gpu:4" in node["Gres"]
        pid = harness_cluster.pids()[f"slurmd:{name}"]
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "slurmd"
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")


def test_gpu_job_gets_cuda_visible_devices(harness_cluster):
    job = harness_cluster.submit(
        ["--gres=gpu:2", "-N1", "-n1", "--mem=100", "-o", "gpu-%j.out",
         "--wrap", "hostname; echo CVD=$CUDA_VISIBLE_DEVICES"])
    assert harness_cluster.wait_job_state(job, ("COMPLETED", "FAILED"), timeout=60) == "COMPLETED"
    info = harness_cluster.show_job(job)
    assert info["ExitCode"] == "0:0"
    assert info["NodeList"] in harness_cluster.node_names
    out = harness_cluster.job_output(job)
    assert info["NodeList"] in out
    assert "CVD=0,1" in out


def test_two_node_job_runs_srun_on_two_distinct_nodes(harness_cluster):
    job = harness_cluster.submit(
        ["-N2", "--ntasks-per-node=1", "--mem=100", "-o", "two-%j.out",
         "--wrap", "srun -N2 hostname; srun -N2 printenv SLURMD_NODENAME"])
    assert harness_cluster.wait_job_state(job, ("COMPLETED", "FAILED"), timeout=60) == "COMPLETED"
    out = harness_cluster.job_output(job).split()
    names = {w for w in out if w in harness_cluster.node_names}
    assert names == {"node1", "node2"}, out


def test_job_runs_as_the_submitting_user(harness_cluster):
    uid, gid = harness_cluster.ensure_user("bridgeuser")
    assert uid != 0
    job = harness_cluster.submit(["--mem=100", "-o", "user-%j.out", "--wrap", "id -u; id -g"],
                                 user="bridgeuser")
    assert harness_cluster.wait_job_state(job, ("COMPLETED", "FAILED"), timeout=60) == "COMPLETED"
    info = harness_cluster.show_job(job)
    assert info["UserId"].startswith(f"bridgeuser({uid})")
    out = harness_cluster.job_output(job).split()
    assert out[:2] == [str(uid), str(gid)]
    assert Path(info["StdOut"]).stat().st_uid == uid


def test_sbatch_errors_come_back_to_the_caller(harness_cluster):
    res = harness_cluster.sbatch(["--gres=gpu:9", "--wrap", "true"])
    assert res.returncode != 0
    assert "sbatch: error:" in res.stderr


def test_show_job_parses_values_with_spaces(harness_cluster):
    job = harness_cluster.submit(["-H", "--comment", "waiting for k8s: Unschedulable now",
                                  "--wrap", "true"])
    harness_cluster.scontrol("update", f"jobid={job}",
                             "AdminComment=pods 0/2 ready x=1", check=True)
    info = harness_cluster.show_job(job)
    assert info["JobState"] == "PENDING"
    assert info["Comment"] == "waiting for k8s: Unschedulable now"
    assert info["AdminComment"] == "pods 0/2 ready x=1"
    assert info["Priority"] == "0"
    assert info["Partition"] == "debug"
    harness_cluster.run(["scancel", str(job)], check=True)
    assert harness_cluster.wait_job_state(job, "CANCELLED", timeout=30) == "CANCELLED"


def test_restart_slurmctld_keeps_jobs(harness_cluster):
    job = harness_cluster.submit(["-H", "--wrap", "true"])
    old_pid = harness_cluster.slurmctld_pid()
    assert harness_cluster.slurmctld_rss_kib() > 0
    new_pid = harness_cluster.restart_slurmctld(timeout=60)
    assert new_pid != old_pid
    assert harness_cluster.show_job(job)["JobState"] == "PENDING"
    harness_cluster.scontrol("release", str(job), check=True)
    assert harness_cluster.wait_job_state(job, ("COMPLETED", "FAILED"), timeout=60) == "COMPLETED"


def test_dynamic_node_registers_and_runs_a_job(make_slurm_cluster):
    cluster = make_slurm_cluster("dyn", node_count=1, extra_conf=["MaxNodeCount=8"],
                                 partitions=["PartitionName=debug Nodes=ALL Default=YES State=UP"])
    with cluster:
        cluster.start_dynamic_slurmd(
            "dyn1", "Sockets=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=1000 "
            "Gres=gpu:8 Feature=dyntoken", netns_index=5)
        node = cluster.show_node("dyn1")
        assert node["NodeAddr"] == cluster.node_addr(5)
        assert "gpu:8" in node["Gres"]
        job = cluster.submit(["--constraint=dyntoken", "--gres=gpu:8", "--mem=100",
                              "-o", "dyn-%j.out", "--wrap",
                              "echo NODE=$SLURMD_NODENAME CVD=$CUDA_VISIBLE_DEVICES"])
        assert cluster.wait_job_state(job, ("COMPLETED", "FAILED"), timeout=60) == "COMPLETED"
        assert "NODE=dyn1 CVD=0,1,2,3,4,5,6,7" in cluster.job_output(job)
        cluster.stop_slurmd("dyn1", delete_node=True)
        assert "dyn1" not in cluster.node_states()


def test_stop_leaves_nothing_behind(make_slurm_cluster):
    cluster = make_slurm_cluster("stop")
    cluster.start(timeout=60)
    job = cluster.submit(["--wrap", "sleep 300"])
    cluster.wait_job_state(job, "RUNNING", timeout=30)
    pids = list(cluster.pids().values())
    netns = cluster.netns_names()
    bridge = cluster.bridge
    assert len(pids) == 4 and len(netns) == 2
    cluster.stop()
    cluster.stop()  # idempotent
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    listed = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in netns)
    assert not Path(f"/sys/class/net/{bridge}").exists()
    ps = subprocess.run(["ps", "-eo", "args"], check=False, capture_output=True, text=True).stdout
    assert str(cluster.base_dir) not in ps
    assert "sleep 300" not in ps


def test_two_clusters_coexist(make_slurm_cluster):
    a, b = make_slurm_cluster("coa", node_count=1), make_slurm_cluster("cob", node_count=1)
    with a, b:
        assert a.subnet != b.subnet and a.slurmctld_port != b.slurmctld_port
        ja = a.submit(["--wrap", "true"])
        jb = b.submit(["--wrap", "true"])
        assert a.wait_job_state(ja, "COMPLETED", timeout=60) == "COMPLETED"
        assert b.wait_job_state(jb, "COMPLETED", timeout=60) == "COMPLETED"
        assert a.show_job(ja)["NodeList"] == "node1"


def test_parse_key_values_unit():
    # scontrol 22.05 prints the free-text fields followed by two spaces.
    line = ("JobId=5 JobName=wrap Priority=0 Reason=JobHeldUser Dependency=(null) "
            "ExitCode=0:0 NodeList=(null) AdminComment=x y  Comment=a b=c StdErr=d  "
            "StdErr=/tmp/o StdIn=/dev/null Power= \n")
    d = parse_key_values(line)
    assert d["Comment"] == "a b=c StdErr=d" and d["AdminComment"] == "x y"
    assert d["ExitCode"] == "0:0" and d["Reason"] == "JobHeldUser"
    assert d["StdErr"] == "/tmp/o" and d["Power"] == "" and d["NodeList"] == "(null)"


def test_start_failure_cleans_up_and_shows_logs(make_slurm_cluster):
    cluster = make_slurm_cluster("bad", extra_conf=["SelectType=select/doesnotexist"])
    with pytest.raises(Exception) as err:
        cluster.start(timeout=20)
    assert "slurmctld" in str(err.value)
    assert cluster.pids() == {} and cluster.netns_names() == []
