"""job_submit/k8s and spank_k8s loaded into real slurmctld / sbatch / slurmstepd.

Every test here talks to real Debian Slurm 22.05 daemons started by the harness, with the
plugins compiled fresh from csrc/ by ``plugin_build.build_plugins``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_k8s_bridge.core.config import parse_config
from slurm_k8s_bridge.slurm.sbatch import request_from_sbatch
from slurm_k8s_bridge.core.request import SlurmJobRequest, is_stamp
from slurm_k8s_bridge.core.normalize import normalize
from slurm_k8s_bridge.core.render import render_all

from .bridge_fixtures import TASK_ENV, bridge_config_data, make_bridge_cluster
from .conftest import make_base_dir, remove_base_dir, require_root

pytestmark = pytest.mark.slurm

USER = "bridgeuser"
SAMPLES = Path(__file__).resolve().parents[1] / "unit" / "data" / "sbatch-directives-sample.json"
TRAIN_SCRIPT = """#!/bin/bash
#SBATCH --job-name=llm-train
#SBATCH -N 2 --ntasks-per-node=8
#SBATCH --gres=gpu:h100:8 --time=02:00:00
srun --mpi=pmix python train.py
"""


@pytest.fixture(scope="module")
def bc():
    require_root()
    base = make_base_dir("bridge")
    bridge = make_bridge_cluster(
        base, slurmd_env={"SLURM_K8S_JOB_ID": "1", "SLURM_K8S_CLUSTER": "test",
                          "POD_NAME": "test-1-0"})
    bridge.cluster.start()
    bridge.cluster.ensure_user(USER)
    try:
        yield bridge
    finally:
        bridge.cluster.stop()
        remove_base_dir(bridge.cluster)


def sbatch(bc, args, script=TRAIN_SCRIPT, user=USER):
    return bc.cluster.sbatch(["--parsable", *args], script=script, user=user)


def error_lines(proc) -> list[str]:
    return [l for l in proc.stderr.splitlines() if l.startswith("sbatch: error:")]


def job_count(bc) -> int:
    out = bc.cluster.run(["squeue", "-h", "-o", "%i"], check=True).stdout
    return len(out.split())


# -- accepted and held ------------------------------------------------------------------
def test_bridged_job_is_accepted_held_and_stamped(bc):
    uid, gid = bc.cluster.ensure_user(USER)
    proc = sbatch(bc, ["--k8s-image=registry.local/ml/train:2.1", "--k8s-queue=team-a"])
    job = bc.submit_id(proc)
    info = bc.cluster.show_job(job)
    assert info["JobState"] == "PENDING"
    # Slurm files a priority-0 hold set at submission as a user hold ...
    assert info["Reason"] == "JobHeldUser"
    assert info["Priority"] == "0"
    assert is_stamp(info["AdminComment"])
    req = SlurmJobRequest.from_stamp(info["AdminComment"])
    assert (req.user_id, req.group_id) == (uid, gid)
    assert req.partition is None or req.partition == "gpu"
    assert req.min_nodes == 2 and req.ntasks_per_node == 8
    assert req.tres_per_node == "gres:gpu:h100:8"
    assert req.time_limit == 120
    assert req.name == "llm-train"
    assert dict(req.spank_options) == {"k8s-image": "registry.local/ml/train:2.1",
                                       "k8s-queue": "team-a"}
    # it runs nowhere while the bridge has not released it
    time.sleep(3)
    info = bc.cluster.show_job(job)
    assert info["JobState"] == "PENDING" and info.get("NodeList") in (None, "", "(null)")
    # ... but job_modify refuses the owner's release: only the bridge releases it
    rel = bc.cluster.scontrol("release", str(job), user=USER)
    assert rel.returncode != 0
    assert "Access/permission denied" in rel.stderr
    assert bc.cluster.show_job(job)["Priority"] == "0"
    log = (bc.cluster.log_dir / "slurmctld.log").read_text()
    assert "update refused: this job is held until its Kubernetes pods are ready" in log
    bc.cluster.run(["scancel", str(job)], check=True)


def test_stamp_survives_slurmctld_restart(bc):
    job = bc.submit_id(sbatch(bc, ["--k8s-priority=research-high"]))
    before = bc.cluster.show_job(job)["AdminComment"]
    bc.cluster.restart_slurmctld()
    after = bc.cluster.show_job(job)
    assert after["AdminComment"] == before
    assert after["JobState"] == "PENDING" and after["Priority"] == "0"
    assert SlurmJobRequest.from_stamp(before).spank_options["k8s-priority"] == "research-high"
    bc.cluster.run(["scancel", str(job)], check=True)


# -- the SPANK plugin in sbatch -----------------------------------------------------------
def test_spank_options_show_in_sbatch_help(bc):
    out = bc.cluster.run(["sbatch", "--help"], check=True).stdout
    for option in ("--k8s-image=IMAGE", "--k8s-queue=QUEUE", "--k8s-priority=CLASS"):
        assert option in out


def test_spank_refuses_a_bad_image_in_sbatch_itself(bc):
    before = job_count(bc)
    proc = sbatch(bc, ["--k8s-image=not an image!"])
    assert proc.returncode != 0
    assert "--k8s-image: invalid image reference 'not an image!'" in proc.stderr
    assert job_count(bc) == before


def test_user_python_environment_cannot_break_sbatch(bc):
    """SPANK runs in the user's sbatch: a hostile PYTHONHOME/PYTHONPATH changes nothing."""
    env = {"PYTHONHOME": "/nonexistent", "PYTHONPATH": "/nonexistent", "PYTHONSTARTUP": "/x"}
    script = bc.cluster.write_script(TRAIN_SCRIPT)
    proc = bc.cluster.run(["env", *[f"{k}={v}" for k, v in env.items()],
                           "sbatch", "--parsable", "--k8s-image=registry.local/a:b", str(script)],
                          user=USER)
    job = bc.submit_id(proc)
    assert bc.cluster.show_job(job)["Priority"] == "0"
    bc.cluster.run(["scancel", str(job)], check=True)


# -- pass-through ------------------------------------------------------------------------
def test_non_bridged_partition_runs_to_completion_untouched(bc):
    script = "#!/bin/bash\n#SBATCH -p cpu -N2 --ntasks-per-node=1 --mem=100\nsrun hostname\nid -u\n"
    job = bc.submit_id(sbatch(bc, ["-o", "cpu-%j.out"], script=script))
    info = bc.cluster.show_job(job)
    assert not is_stamp(info.get("AdminComment"))
    assert bc.cluster.wait_job_state(job, ("COMPLETED", "FAILED", "CANCELLED"),
                                     timeout=90) == "COMPLETED"
    out = bc.cluster.job_output(job).split()
    assert {"node1", "node2"} <= set(out)
    uid, _ = bc.cluster.ensure_user(USER)
    assert str(uid) in out


def test_spank_task_environment_inside_a_pod_with_forked_tasks(bc):
    """In a (simulated) bridged pod, slurmstepd starts the plugin's Python half before it
    forks the tasks; four tasks on two nodes all get the configured environment."""
    script = ("#!/bin/bash\n#SBATCH -p cpu -N2 --ntasks-per-node=2 --mem=100\n"
              "srun bash -c 'echo TASK $SLURM_PROCID $SKB_TEST_MARKER $NCCL_SOCKET_IFNAME "
              "$SLURM_K8S_POD_NAME $SLURM_K8S_JOB_ID'\n")
    job = bc.submit_id(sbatch(bc, ["-o", "env-%j.out"], script=script))
    assert bc.cluster.wait_job_state(job, ("COMPLETED", "FAILED", "CANCELLED"),
                                     timeout=90) == "COMPLETED", bc.cluster.logs()
    lines = [l.split() for l in bc.cluster.job_output(job).splitlines() if l.startswith("TASK")]
    assert sorted(int(l[1]) for l in lines) == [0, 1, 2, 3]
    for line in lines:
        assert line[2:] == [TASK_ENV["SKB_TEST_MARKER"], TASK_ENV["NCCL_SOCKET_IFNAME"],
                            "test-1-0", str(job)]


# -- job_modify --------------------------------------------------------------------------
def test_update_of_a_pending_bridged_job_is_revalidated(bc):
    job = bc.submit_id(sbatch(bc, []))
    stamp0 = bc.cluster.show_job(job)["AdminComment"]
    # a valid change is accepted and the stamp follows it
    ok = bc.cluster.scontrol("update", f"jobid={job}", "TimeLimit=30")
    assert ok.returncode == 0, ok.stderr
    stamp1 = bc.cluster.show_job(job)["AdminComment"]
    assert SlurmJobRequest.from_stamp(stamp1).time_limit == 30
    assert SlurmJobRequest.from_stamp(stamp0).time_limit == 120
    # more GPUs per node than any shape: refused, stamp unchanged
    bad = bc.cluster.scontrol("update", f"jobid={job}", "Gres=gpu:h100:16")
    assert bad.returncode != 0
    info = bc.cluster.show_job(job)
    assert info["AdminComment"] == stamp1
    assert "gpu:h100:8" in info.get("TresPerNode", "")
    # moving it to a partition the bridge does not serve: refused
    move = bc.cluster.scontrol("update", f"jobid={job}", "Partition=cpu")
    assert move.returncode != 0
    assert bc.cluster.show_job(job)["Partition"] == "gpu"
    # the bridge's own updates (what the daemon does) pass through job_modify untouched
    ok = bc.cluster.scontrol("update", f"jobid={job}", "Comment=k8s:pending")
    assert ok.returncode == 0, ok.stderr
    assert bc.cluster.show_job(job)["AdminComment"] == stamp1
    log = (bc.cluster.log_dir / "slurmctld.log").read_text()
    assert "update refused: --gres" in log or "update refused:" in log
    bc.cluster.run(["scancel", str(job)], check=True)


# -- the CLI and the plugin agree ----------------------------------------------------------
def _sample_scripts():
    cases = json.loads(SAMPLES.read_text())
    for case in cases:
        lines = ["#!/bin/bash"] + [f"#SBATCH {d}" for d in case["directive_lines"]]
        lines.append("srun hostname")
        yield case["id"], "\n".join(lines) + "\n"


@pytest.mark.parametrize("case_id,script", list(_sample_scripts()))
def test_cli_translate_matches_the_plugin(bc, case_id, script):
    """Real sbatch through job_submit/k8s and ``slurm-k8s-bridge translate`` give the
    same Kubernetes objects (or the same refusal) for the same script and options."""
    uid, gid = bc.cluster.ensure_user(USER)
    config = parse_config(bridge_config_data(), str(bc.config_path))
    # the site's partitions and QOS are not ours: submit every sample to the bridged one
    options = ["-p", "gpu", "--qos=normal"]
    path = bc.cluster.write_script(script)
    proc = bc.cluster.run(["sbatch", "--parsable", *options, str(path)], user=USER,
                          cwd=path.parent)

    def cli_translate(job_id: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "slurm_k8s_bridge.cli", "translate", "--config",
             str(bc.config_path), "--uid", str(uid), "--gid", str(gid),
             "--job-id", str(job_id), str(path), *options],
            capture_output=True, text=True, timeout=60, cwd=path.parent)

    if proc.returncode != 0:
        plugin_errors = [l for l in error_lines(proc) if "k8s-bridge:" in l]
        if not plugin_errors:
            # slurmctld itself refused after job_submit accepted, for something only the
            # submitting site has (e.g. --reservation=hug): the bridge saw no problem
            assert "Requested reservation is invalid" in proc.stderr, proc.stderr
            assert cli_translate(1).returncode == 0
            return
        cli = cli_translate(1)
        assert cli.returncode == 1
        assert cli.stderr.strip() == plugin_errors[0]
        return
    job = bc.submit_id(proc)
    stamped = SlurmJobRequest.from_stamp(bc.cluster.show_job(job)["AdminComment"])
    from_cli = request_from_sbatch(script, options, uid, gid, script_name=path.name)
    ignore = {"submit_line", "work_dir"}
    assert {k: v for k, v in stamped.to_dict().items() if k not in ignore} == \
        {k: v for k, v in from_cli.to_dict().items() if k not in ignore}
    plugin_objects = render_all(normalize(stamped, config), config, job)
    cli = cli_translate(job)
    assert cli.returncode == 0, cli.stderr
    assert list(yaml.safe_load_all(cli.stdout)) == plugin_objects
    assert [o["kind"] for o in plugin_objects][:2] == ["Service", "Job"]
    # and the ``manifests`` command reads the same objects back from the live job
    shown = subprocess.run(
        [sys.executable, "-m", "slurm_k8s_bridge.cli", "manifests", "--config",
         str(bc.config_path), str(job)], capture_output=True, text=True, timeout=60,
        env=bc.cluster.env())
    assert shown.returncode == 0, shown.stderr
    assert list(yaml.safe_load_all(shown.stdout)) == plugin_objects
    bc.cluster.run(["scancel", str(job)], check=True)


@pytest.mark.parametrize("given, expected", [("B:USR1@45", (10, 45, 1)), ("USR2", (12, 60, 0)),
                                             ("R:15@0", (15, 0, 0x100))])
def test_signal_reaches_the_stamp_as_sbatch_sends_it(bc, given, expected):
    """``--signal`` as real sbatch encodes it (job_desc's warn_signal, warn_time, warn_flags)
    is what the plugin stamps and what ``translate`` reads; the pods' grace covers it."""
    uid, gid = bc.cluster.ensure_user(USER)
    options = ["-p", "gpu", "--qos=normal", "-N1", "--gres=gpu:1", f"--signal={given}"]
    proc = sbatch(bc, options)
    job = bc.submit_id(proc)
    try:
        stamped = SlurmJobRequest.from_stamp(bc.cluster.show_job(job)["AdminComment"])
        assert stamped.signal == expected
        from_cli = request_from_sbatch(TRAIN_SCRIPT, options, uid, gid)
        assert from_cli.signal == expected
        config = parse_config(bridge_config_data(), str(bc.config_path))
        breq = normalize(stamped, config)
        assert breq.preempt_signal == expected[0]
        assert breq.termination_grace_seconds == expected[1] + config.kill_wait_seconds
    finally:
        bc.cluster.run(["scancel", str(job)], check=True)


def test_overcommit_reaches_the_stamp_and_the_pod_asks_one_cpu(bc):
    """``-O``: real sbatch sets job_desc->overcommit; the plugin accepts 400 tasks on one
    224-CPU node shape and stamps it, and ``translate`` reads the same."""
    uid, gid = bc.cluster.ensure_user(USER)
    options = ["-p", "gpu", "--qos=normal", "-N1", "-n400", "--gres=gpu:1", "-O"]
    plain = "#!/bin/bash\nsrun true\n"
    job = bc.submit_id(sbatch(bc, options, script=plain))
    try:
        stamped = SlurmJobRequest.from_stamp(bc.cluster.show_job(job)["AdminComment"])
        assert stamped.overcommit and request_from_sbatch(plain, options, uid, gid).overcommit
        config = parse_config(bridge_config_data(), str(bc.config_path))
        assert normalize(stamped, config).cpus_per_node == 1
    finally:
        bc.cluster.run(["scancel", str(job)], check=True)
    refused = sbatch(bc, options[:-1], script=plain)
    assert refused.returncode != 0 and "asks for 400 CPUs per node" in refused.stderr


def test_a_bad_signal_gets_sbatchs_own_refusal_and_translate_says_the_same(bc):
    from slurm_k8s_bridge.slurm.sbatch import BAD_SIGNAL
    before = job_count(bc)
    proc = sbatch(bc, ["-p", "gpu", "--signal=B:USR1@soon"])
    assert proc.returncode != 0
    assert f"sbatch: error: {BAD_SIGNAL}" in proc.stderr.splitlines()
    assert job_count(bc) == before


# -- load --------------------------------------------------------------------------------
def test_slurmctld_survives_1000_bridged_submissions(bc):
    script = bc.cluster.write_script(TRAIN_SCRIPT)
    rss_before = bc.cluster.slurmctld_rss_kib()
    pid = bc.cluster.slurmctld_pid()
    ids: list[int] = []
    batch = 1000
    for i in range(batch):  # bounded: exactly 1000 submissions
        proc = bc.cluster.run(["sbatch", "--parsable", f"--job-name=load-{i}", str(script)])
        assert proc.returncode == 0, proc.stderr
        ids.append(int(proc.stdout.split(";")[0]))
    rss_after = bc.cluster.slurmctld_rss_kib()
    assert bc.cluster.slurmctld_pid() == pid
    print(f"\nslurmctld RSS before {rss_before} KiB, after 1000 bridged submissions "
          f"{rss_after} KiB (+{rss_after - rss_before} KiB)")
    held = bc.cluster.run(["squeue", "-h", "-t", "PD", "-o", "%i %r %Q"], check=True).stdout
    rows = [r.split() for r in held.splitlines()]
    ours = {int(r[0]): r for r in rows if int(r[0]) in set(ids)}
    assert len(ours) == batch
    assert all(r[1] == "JobHeldUser" and r[2] == "0" for r in ours.values())
    bc.cluster.run(["scancel", "-u", "root", "-p", "gpu"], check=True)


# -- refusals at submit ------------------------------------------------------------------
REFUSALS = [
    (["--gres=gpu:16"],
     "--gres=gpu:16 asks for 16 GPUs per node, but the largest GPU node shape in partition "
     "gpu (h100) has 8", "Invalid generic resource (gres) specification"),
    (["--gres=gpu:v100:2"],
     "--gres=gpu:v100:2 asks for GPU type v100, but partition gpu has h100, a100 "
     "(MIG profiles: 1g.10gb, 3g.40gb, 7g.80gb)", None),
    (["-C", "foo", "--gres=gpu:1"],
     "--constraint=foo names feature foo, which no node of partition gpu has "
     "(features: a100, ampere, h100, hopper, ib)", "Invalid feature specification"),
    (["--gpus=10", "-N4"], "--gpus=10 cannot be spread evenly over 4 nodes (-N 4)", None),
    (["--gpus-per-task=4", "--ntasks-per-node=4", "-N1"],
     "--gpus-per-task=4 with 4 tasks per node asks for 16 GPUs per node, but the largest GPU "
     "node shape in partition gpu (h100) has 8", None),
    (["--gres=gpu:1g.10gb:57"],
     "--gres=gpu:1g.10gb:57 asks for 57 MIG 1g.10gb instances per node, but the largest node "
     "shape offering 1g.10gb in partition gpu (a100) has 56 (7 per GPU x 8 GPUs)", None),
    (["--gres=gpu:2g.20gb:1"],
     "--gres=gpu:2g.20gb:1 asks for GPU type 2g.20gb, but partition gpu has h100, a100 "
     "(MIG profiles: 1g.10gb, 3g.40gb, 7g.80gb)", None),
    (["--mem=3000G", "--gres=gpu:1"],
     "--mem=3000G asks for 3072000 MB per node, but the largest node shape in partition gpu "
     "(h100) has 2048000 MB", None),
    (["-c", "300", "--gres=gpu:1"],
     "-c 300 with 1 task per node asks for 300 CPUs per node, but the largest node shape in "
     "partition gpu (h100) has 224", None),
    (["--ntasks-per-gpu=2", "-n4", "--gpus=2"],
     "--ntasks-per-gpu is not supported by slurm-k8s-bridge yet; use --ntasks-per-node with "
     "--gpus-per-node", None),
    (["--k8s-priority=system-node-critical"],
     "--k8s-priority=system-node-critical is reserved for Kubernetes system components", None),
]


@pytest.mark.parametrize("options,message,code_text", REFUSALS,
                         ids=[" ".join(r[0]) for r in REFUSALS])
def test_refused_at_submit_with_the_exact_message(bc, options, message, code_text):
    before = job_count(bc)
    proc = sbatch(bc, options, script="#!/bin/bash\nsrun hostname\n")
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert lines[0] == f"sbatch: error: k8s-bridge: {message}"
    # a specific ESLURM code, never "Unspecified error"
    assert lines[1].startswith("sbatch: error: Batch job submission failed: ")
    assert "Unspecified error" not in lines[1]
    if code_text:
        assert lines[1].endswith(code_text)
    assert job_count(bc) == before  # nothing was created


def test_heterogeneous_job_is_refused_whole(bc):
    before = job_count(bc)
    script = ("#!/bin/bash\n#SBATCH -N1 --gres=gpu:h100:8\n#SBATCH hetjob\n"
              "#SBATCH -N1 --gres=gpu:h100:1\nsrun hostname\n")
    proc = sbatch(bc, [], script=script)
    assert proc.returncode != 0
    # slurmctld prefixes the message with the refused component's index
    assert error_lines(proc)[0] == ("sbatch: error: 0: k8s-bridge: heterogeneous jobs are not "
                                    "supported by slurm-k8s-bridge yet")
    assert job_count(bc) == before


def test_owner_hold_and_release_are_recorded_and_the_job_stays_held_for_the_bridge(bc):
    job = bc.submit_id(sbatch(bc, []))

    def stamp():
        info = bc.cluster.show_job(job)
        return info, SlurmJobRequest.from_stamp(info["AdminComment"])

    assert stamp()[1].user_hold is False
    held = bc.cluster.scontrol("hold", str(job), user=USER)
    assert held.returncode == 0, held.stderr
    info, req = stamp()
    assert req.user_hold is True and info["Priority"] == "0"
    # the owner's release ends the owner's hold; the job stays held for the bridge
    rel = bc.cluster.scontrol("release", str(job), user=USER)
    assert rel.returncode == 0, rel.stderr
    info, req = stamp()
    assert req.user_hold is False
    assert info["Priority"] == "0" and info["JobState"] == "PENDING"
    # a second release has no hold of the owner's to end: refused
    again = bc.cluster.scontrol("release", str(job), user=USER)
    assert again.returncode != 0
    assert stamp()[0]["Priority"] == "0"
    bc.cluster.run(["scancel", str(job)], check=True)


def test_sbatch_hold_flag_is_the_owners_hold(bc):
    job = bc.submit_id(sbatch(bc, ["-H"]))
    info = bc.cluster.show_job(job)
    assert SlurmJobRequest.from_stamp(info["AdminComment"]).user_hold is True
    rel = bc.cluster.scontrol("release", str(job), user=USER)
    assert rel.returncode == 0, rel.stderr
    info = bc.cluster.show_job(job)
    assert SlurmJobRequest.from_stamp(info["AdminComment"]).user_hold is False
    assert info["Priority"] == "0"
    bc.cluster.run(["scancel", str(job)], check=True)
