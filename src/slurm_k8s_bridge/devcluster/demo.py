"""The local demo: real slurmctld + slurmd with the bridge's plugins, driven by plain sbatch.

    sudo .venv/bin/python -m slurm_k8s_bridge.devcluster.demo [--dir DIR] [--keep]

Shows, on this machine: a GPU job accepted and held for Kubernetes with the objects it
will become, a request no node shape can serve refused at sbatch, and a job in the
non-bridged partition running to completion. ``--keep`` keeps the cluster running until
Ctrl-C, with DIR/env.sh for sbatch/squeue/scontrol against it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .bridge import make_bridge_cluster, load_example_config

REPO = Path(__file__).resolve().parents[3]
USER = "bridgeuser"


def _say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def _show(cluster, cmd: list[str], user: str | None = None) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    who = f"{user}$ " if user else "# "
    print(who + " ".join(shlex.quote(c) for c in cmd), flush=True)
    proc = cluster.run(cmd, user=user)
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="slurm-k8s-bridge local demo")
    parser.add_argument("--dir", help="where the cluster lives (default: a new /tmp dir)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the cluster running until Ctrl-C")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo starts real Slurm daemons in network namespaces: run it as root",
              file=sys.stderr)
        return 1
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="skb-demo-", dir="/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    config = load_example_config()
    _say(f"building the plugins and starting slurmctld + 2 slurmd under {base}")
    bridge = make_bridge_cluster(base, "demo", config_data=config)
    cluster = bridge.cluster
    cluster.start()
    try:
        cluster.ensure_user(USER)
        for name in ("train-2x8.sbatch", "hello-cpu.sbatch"):
            (cluster.jobs_dir / name).write_text((REPO / "examples" / name).read_text())
        _say("sinfo: partition gpu is bridged (its nodes are the Kubernetes GPU node shapes)")
        _show(cluster, ["sinfo", "-o", "%P %a %D %t %G %f %N"])

        _say("a 2-node, 16-GPU training job: accepted, held for Kubernetes")
        proc = _show(cluster, ["sbatch", "--k8s-image=localhost/slurm-k8s-bridge/worker:22.05",
                               "train-2x8.sbatch"], user=USER)
        job = int(proc.stdout.split()[-1])
        _show(cluster, ["squeue", "-o", "%i %P %j %u %T %r %D %b"])
        _say(f"the Kubernetes objects job {job} becomes (read back from its stamp)")
        objects = subprocess.run(
            [sys.executable, "-m", "slurm_k8s_bridge.cli", "manifests", "--config",
             str(bridge.config_path), str(job)], capture_output=True, text=True,
            env=cluster.env(), timeout=60)
        print(objects.stdout if objects.returncode == 0 else objects.stderr)

        _say("asking for more GPUs per node than any shape has: refused at sbatch")
        _show(cluster, ["sbatch", "-N2", "--gres=gpu:h100:16", "train-2x8.sbatch"], user=USER)

        _say("the cpu partition is not bridged: a job runs on the real slurmd as usual")
        proc = _show(cluster, ["sbatch", "--parsable", "hello-cpu.sbatch"], user=USER)
        cpu_job = int(proc.stdout.strip())
        state = cluster.wait_job_state(cpu_job, ("COMPLETED", "FAILED", "CANCELLED"), timeout=90)
        print(f"job {cpu_job}: {state}")
        print(cluster.job_output(cpu_job), end="")

        env_sh = base / "env.sh"
        env_sh.write_text(f"export SLURM_CONF={cluster.conf_path}\n"
                          f"export SLURM_K8S_BRIDGE_CONFIG={bridge.config_path}\n")
        if args.keep:
            _say(f"cluster running: in another shell, `source {env_sh}` and use sbatch, "
                 "squeue, scontrol; press Ctrl-C here to stop it")
            try:
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
            except KeyboardInterrupt:
                pass
    finally:
        cluster.stop()
    _say("demo finished; everything it started is stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
