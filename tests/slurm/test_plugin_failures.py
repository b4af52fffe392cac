"""When the bridge cannot work, jobs are refused with a reason and slurmctld keeps running.

A cffi entry point whose Python is missing returns 0, which for job_submit would mean
"accepted" -- these tests prove the C side fails closed instead.
"""

from __future__ import annotations

import pytest

from .bridge_fixtures import make_bridge_cluster
from .conftest import make_base_dir, remove_base_dir, require_root

pytestmark = pytest.mark.slurm

SCRIPT = "#!/bin/bash\n#SBATCH -N1 --gres=gpu:h100:2\nsrun hostname\n"


def _alive(cluster) -> bool:
    return cluster.run(["scontrol", "ping"]).returncode == 0


def test_python_that_cannot_start_refuses_jobs_and_slurmctld_lives():
    require_root()
    base = make_base_dir("nopython")
    # the plugins' compiled-in sys.path has no standard library: the interpreter cannot
    # start (as after a Python upgrade removed the environment the plugins were built for)
    bridge = make_bridge_cluster(base, "nopy", python_path=[str(base / "missing-stdlib")])
    (base / "missing-stdlib").mkdir()
    try:
        bridge.cluster.start()
        for partition in ("gpu", "cpu"):
            proc = bridge.cluster.sbatch(["-p", partition], script=SCRIPT)
            assert proc.returncode != 0
            first = [l for l in proc.stderr.splitlines() if l.startswith("sbatch: error:")][0]
            assert first.startswith("sbatch: error: k8s-bridge: job submission is unavailable: "
                                    "the bridge could not start (Python failed to start (")
            assert first.endswith("); ask your administrator")
        assert bridge.cluster.run(["squeue", "-h"]).stdout.strip() == ""
        assert _alive(bridge.cluster)
        log = (bridge.cluster.log_dir / "slurmctld.log").read_text()
        assert "job_submit/k8s: bridge unavailable" in log
    finally:
        bridge.cluster.stop()
        remove_base_dir(bridge.cluster)


def test_missing_config_then_fixed_config_with_hostile_python_environment():
    """slurmctld started with PYTHONHOME/PYTHONPATH pointing nowhere (isolated interpreter
    ignores them) and no configuration file: jobs are refused naming the file; once the
    file appears, the next submission is accepted without restarting slurmctld."""
    require_root()
    base = make_base_dir("noconfig")
    bridge = make_bridge_cluster(base, "nocfg")
    bridge.cluster.slurmctld_env.update({"PYTHONHOME": "/nonexistent",
                                         "PYTHONPATH": "/nonexistent:/also-missing",
                                         "PYTHONNOUSERSITE": "", "PYTHONSAFEPATH": "1"})
    good = bridge.config_path.read_text()
    bridge.config_path.unlink()
    try:
        bridge.cluster.start()
        proc = bridge.cluster.sbatch([], script=SCRIPT)
        assert proc.returncode != 0
        first = [l for l in proc.stderr.splitlines() if l.startswith("sbatch: error:")][0]
        assert first.startswith("sbatch: error: k8s-bridge: the bridge configuration is "
                                "unusable (")
        assert str(bridge.config_path) in first
        assert _alive(bridge.cluster)
        bridge.config_path.write_text(good)
        proc = bridge.cluster.sbatch(["--parsable"], script=SCRIPT)
        assert proc.returncode == 0, proc.stderr
        job = int(proc.stdout.strip())
        info = bridge.cluster.show_job(job)
        assert info["Priority"] == "0" and info["AdminComment"].startswith("k8sb1:")
        # an invalid edit keeps the last good configuration in force
        bridge.config_path.write_text(good.replace("gpus: 8", "gpus: eight", 1))
        proc = bridge.cluster.sbatch(["--parsable"], script=SCRIPT)
        assert proc.returncode == 0, proc.stderr
    finally:
        bridge.cluster.stop()
        remove_base_dir(bridge.cluster)
