"""The local demo, driven by plain sbatch/srun/squeue/sinfo as an ordinary user.

    sudo .venv/bin/python -m slurm_k8s_devcluster.demo [--dir DIR] [--keep]
    sudo .venv/bin/python -m slurm_k8s_devcluster.demo --slurm-only

By default the whole bridge on this machine (``dev-cluster up --real-node``): slurmctld
with both plugins, a Kubernetes control plane, a real kubelet node running the worker
image, and the bridge daemon. It shows sinfo with the mirrored Kubernetes node, runs
``examples/mpi-hello.sbatch`` on two pods (``srun --mpi=pmix``) with squeue following
what Kubernetes does, an interactive ``srun -N2 hostname``, and a request no node shape can
serve refused at sbatch. ``--keep`` leaves it running (``source DIR/env.sh``; stop it with
``slurm-k8s-bridge dev-cluster down --dir DIR``).

``--slurm-only``: only slurmctld + two slurmd with the plugins: a GPU job held for
Kubernetes with the objects it will become, the refusal, and a job of the non-bridged
partition running to completion.
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

from slurm_k8s_devcluster.bridge import make_bridge_cluster, load_example_config

REPO = Path(__file__).resolve().parents[2]
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


def _run_as(cluster, cmd: list[str], cwd: Path, user: str = USER,  # type: ignore[no-untyped-def]
            timeout: float = 60) -> subprocess.CompletedProcess:
    print(f"{user}$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    proc = cluster.run(cmd, user=user, cwd=cwd, timeout=timeout)
    sys.stdout.write(proc.stdout)
    sys.stdout.write("".join(line + "\n" for line in proc.stderr.splitlines()
                             if "spank" not in line and "plugin_load" not in line))
    return proc


def real_demo(base: Path, keep: bool) -> int:
    """The whole bridge: jobs really run in worker pods on a real kubelet."""
    import time

    from slurm_k8s_devcluster.dev import DevCluster
    dev = DevCluster(base, kwok_nodes=0, real_node=True)
    _say(f"starting slurmctld, the Kubernetes control plane, a real kubelet node and the "
         f"bridge daemon under {base}")
    dev.up()
    stop = True
    try:
        cluster = dev._slurm_handle()
        work = dev.shared_dir / "demo"
        work.mkdir(exist_ok=True)
        import pwd
        owner = pwd.getpwnam(USER)
        os.chown(work, owner.pw_uid, owner.pw_gid)
        for name in ("mpi-hello.c", "mpi-hello.sbatch"):
            (work / name).write_text((REPO / "examples" / name).read_text())
        _say("sinfo: the Kubernetes node real-0 (8 nvidia.com/gpu) appears as k8s-real-0")
        _run_as(cluster, ["sinfo", "-N", "-n", "k8s-real-0", "-O",
                          "NodeList:12 ,StateLong:8 ,Gres:14 ,Comment:0"], work)
        _say("examples/mpi-hello.sbatch on 2 nodes x 1 GPU: two pods, one MPI rank each")
        proc = _run_as(cluster, ["sbatch", "-N2", "--gres=gpu:1", "-c1", "--mem=500",
                                 "mpi-hello.sbatch"], work)
        job = int(proc.stdout.split()[-1])
        seen = ""
        deadline = time.monotonic() + 300
        state = ""
        while time.monotonic() < deadline:  # bounded: squeue follows what Kubernetes does
            line = cluster.run(["squeue", "-j", str(job), "-h", "-t", "all", "-o",
                                "%i %T %R | %k"]).stdout.strip()
            state = line.split()[1] if len(line.split()) > 1 else ""
            if line and line != seen:
                print(f"  squeue: {line}", flush=True)
                seen = line
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
                break
            time.sleep(0.5)
        out = work / f"mpi-hello-{job}.out"
        print(f"job {job}: {state}; {out}:")
        print(out.read_text() if out.exists() else "(no output)", end="")
        _say("an interactive srun from the login side, on two fresh pods")
        _run_as(cluster, ["srun", "-N2", "--gres=gpu:1", "-c1", "--mem=500", "hostname"],
                work, timeout=240)
        _say("asking for more GPUs per node than any shape has: refused at sbatch")
        _run_as(cluster, ["sbatch", "-N2", "--gres=gpu:h100:16", "mpi-hello.sbatch"], work)
        if keep:
            stop = False
            _say(f"left running: `source {dev.env_sh}`, then sbatch/srun/squeue/sinfo/kubectl; "
                 f"stop it with: slurm-k8s-bridge dev-cluster down --dir {base}")
    finally:
        if stop:
            dev.down()
    if stop:
        _say("demo finished; everything it started is stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="slurm-k8s-bridge local demo")
    parser.add_argument("--dir", help="where the cluster lives (default: a new /tmp dir)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the cluster running")
    parser.add_argument("--slurm-only", action="store_true",
                        help="only Slurm with the plugins (no Kubernetes, no images)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo starts real Slurm daemons in network namespaces: run it as root",
              file=sys.stderr)
        return 1
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="skb-demo-", dir="/tmp"))
    if not args.slurm_only:
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        return real_demo(base, args.keep)
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
        proc = _show(cluster, ["sbatch", "--k8s-image=localhost/slurm-k8s-bridge-worker:bookworm",
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
