"""Where the time goes for a 2-node job on a real kubelet node.

    sudo .venv/bin/python bench/bench_real_job.py [--jobs 5] [--dir DIR]

Starts ``DevCluster(real_node=True)`` (the worker image must be built:
``bash scripts/build-images.sh --suite bookworm --only worker``), then submits, one after
another, ``sbatch -N2 --gres=gpu:1 -c1 --mem=500 --wrap 'srun hostname'`` as an ordinary
user and observes, polling every 50 ms, when each step is first seen:

  gang created      the Kubernetes Job exists
  pods scheduled    both pods bound to the node
  containers up     both containers running (kubelet, containerd, image already present)
  slurmd registered both pods' dynamic Slurm nodes idle in slurmctld
  released          the job's hold lifted (priority > 0) by the daemon
  RUNNING           Slurm started it
  COMPLETED         the batch script and its srun step ended

Prints each job's timeline (seconds after sbatch returned) and the median of each step.
Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import os
import pwd
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client

from slurm_k8s_devcluster.dev import DevCluster

STEPS = ("gang created", "pods scheduled", "containers up", "slurmd registered",
         "released", "RUNNING", "COMPLETED")


def observe(dev: DevCluster, api: client.ApiClient, work: Path, timeout: float = 240) -> dict[str, float]:
    slurm = dev._slurm_handle()
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    res = slurm.run(["sbatch", "--parsable", "-N2", "--gres=gpu:1", "-c1", "--mem=500",
                     "-o", "/dev/null", "--wrap", "srun hostname"], user="bridgeuser", cwd=work)
    t0 = time.monotonic()
    if res.returncode != 0:
        raise SystemExit(f"sbatch failed: {res.stderr}")
    job = res.stdout.strip().split(";")[0]
    name = f"slurm-{job}"
    seen: dict[str, float] = {}

    def mark(step: str, cond: bool) -> None:
        if cond and step not in seen:
            seen[step] = time.monotonic() - t0

    while len(seen) < len(STEPS) and time.monotonic() - t0 < timeout:
        if "gang created" not in seen:
            mark("gang created", bool(batch.list_namespaced_job(
                "slurm-jobs", field_selector=f"metadata.name={name}").items))
        if "containers up" not in seen:
            pods = [p for p in core.list_namespaced_pod("slurm-jobs").items
                    if p.metadata.name.startswith(name + "-")]
            mark("pods scheduled", len(pods) == 2 and all(p.spec.node_name for p in pods))
            mark("containers up", len(pods) == 2 and all(
                p.status.container_statuses and p.status.container_statuses[0].state.running
                for p in pods))
        if "slurmd registered" not in seen and "containers up" in seen:
            out = slurm.run(["sinfo", "-h", "-N", "-n", f"{name}-[0-1]", "-o", "%N %t"]).stdout
            states = [line.split()[1] for line in out.splitlines() if len(line.split()) == 2]
            mark("slurmd registered", len(states) == 2 and all(
                s.startswith(("idle", "alloc", "mix")) for s in states))
        line = slurm.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T %p"]).stdout.split()
        if len(line) == 2:
            mark("released", float(line[1]) > 0 or line[0] != "PENDING")
            mark("RUNNING", line[0] in ("RUNNING", "COMPLETING", "COMPLETED"))
            mark("COMPLETED", line[0] == "COMPLETED")
            if line[0] in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
                raise SystemExit(f"job {job} ended {line[0]}")
        time.sleep(0.05)
    # wait until its pods are gone before the next job (the node has 2 CPUs)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and [p for p in core.list_namespaced_pod("slurm-jobs").items
                                           if p.metadata.name.startswith(name + "-")]:
        time.sleep(0.2)
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--dir", help="cluster directory (default: a new /tmp dir)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (Slurm daemons, a kubelet)", file=sys.stderr)
        return 1
    base = Path(args.dir or tempfile.mkdtemp(prefix="skb-bench-real-", dir="/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    dev = DevCluster(base, kwok_nodes=0, real_node=True, subnet=92)
    t = time.monotonic()
    dev.up()
    print(f"dev-cluster up --real-node: {time.monotonic() - t:.1f} s")
    try:
        user = pwd.getpwnam("bridgeuser")
        work = dev.shared_dir / "bench"
        work.mkdir(exist_ok=True)
        os.chown(work, user.pw_uid, user.pw_gid)
        results = []
        with dev._kube().admin_client() as api:
            for i in range(args.jobs):
                results.append(observe(dev, api, work))
                print(f"job {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in results[-1].items()),
                      flush=True)
        print("\n| step (s after sbatch) | " + " | ".join(f"job {i + 1}" for i in range(len(results)))
              + " | median |")
        print("|---" * (len(results) + 2) + "|")
        for step in STEPS:
            values = [r.get(step) for r in results]
            known = [v for v in values if v is not None]
            cells = [f"{v:.2f}" if v is not None else "-" for v in values]
            median = f"{statistics.median(known):.2f}" if known else "-"
            print(f"| {step} | " + " | ".join(cells) + f" | {median} |")
    finally:
        dev.down()
        subprocess.run(["rm", "-rf", str(base)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
