#!/usr/bin/env python3
"""The bridge daemon at scale on a real control plane: 100 KWOK GPU nodes, 500 queued jobs.

    sudo .venv/bin/python bench/bench_k8s.py [--nodes 100] [--jobs 500] [--qps 50]

Starts a dev cluster (real slurmctld with the plugins, real kube-apiserver/scheduler/
controller-manager, KWOK h100 nodes, the daemon as its ServiceAccount), then measures:
  * sbatch -> Kubernetes Job created (p50/p99), seen through a watch by an admin client;
  * cordon of a Kubernetes node -> sinfo shows the mirrored node drained (lag);
  * scancel -> the job's Kubernetes Job gone (p50/p99);
  * the daemon's CPU seconds and RSS, and Kubernetes API requests per job (its metrics).
Every job is `-N1 --gres=gpu:h100:8`: the first 100 fill the nodes, the rest stay
Unschedulable -- the Jobs exist either way. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from slurm_k8s_devcluster.dev import DevCluster  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def proc_cpu_rss(pid: int) -> tuple[float, int]:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(stat[11]) + int(stat[12])) / ticks
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return cpu, rss


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def main() -> int:
    parser = argparse.ArgumentParser(description="daemon at scale on a real control plane")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--qps", type=float, default=50)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    from kubernetes import client as kclient, watch as kwatch

    base = Path(tempfile.mkdtemp(prefix="skb-bench-k8s-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    dev = DevCluster(base, kwok_nodes=args.nodes,
                     daemon_args=("--max-admitting", str(args.jobs * 2), "--qps", str(args.qps),
                                  "--burst", str(int(args.qps * 2))))
    t0 = time.monotonic()
    dev.up()
    print(f"dev cluster up with {args.nodes} KWOK nodes: {time.monotonic() - t0:.1f} s",
          file=sys.stderr)
    env = dict(os.environ, SLURM_CONF=str(base / "etc" / "slurm.conf"))
    kube = dev._kube()
    api = kube.admin_client()
    batch = kclient.BatchV1Api(api)
    created: dict[int, float] = {}
    deleted: dict[int, float] = {}
    stop = threading.Event()

    def watch_jobs() -> None:
        w = kwatch.Watch()
        while not stop.is_set():  # bounded by stop, each stream by timeout_seconds
            for ev in w.stream(batch.list_namespaced_job, "slurm-jobs", timeout_seconds=5):
                jid = int(ev["object"].metadata.labels.get("slurm-k8s-bridge.io/job-id", 0))
                if ev["type"] == "ADDED":
                    created.setdefault(jid, time.monotonic())
                elif ev["type"] == "DELETED":
                    deleted.setdefault(jid, time.monotonic())
                if stop.is_set():
                    break

    watcher = threading.Thread(target=watch_jobs, daemon=True)
    watcher.start()
    pid = dev.daemon_pid()
    cpu0, _ = proc_cpu_rss(pid)
    metrics0 = urllib.request.urlopen(f"http://127.0.0.1:{dev.metrics_port()}/metrics").read().decode()
    script = base / "jobs" / "bench.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH -N1 --gres=gpu:h100:8 -c1 --mem=100\nsrun true\n")
    submitted: dict[int, float] = {}
    for _ in range(args.jobs):  # bounded: exactly --jobs submissions
        out = subprocess.run(["sbatch", "--parsable", str(script)], env=env, check=True,
                             capture_output=True, text=True, cwd=script.parent).stdout
        submitted[int(out.strip())] = time.monotonic()
    deadline = time.monotonic() + args.timeout
    while len(created.keys() & submitted.keys()) < len(submitted) and time.monotonic() < deadline:
        time.sleep(0.2)
    lat = [created[j] - submitted[j] for j in submitted if j in created]
    all_created = time.monotonic()

    # cordon -> sinfo drain
    node = "gpu-7"
    t_cordon = time.monotonic()
    kclient.CoreV1Api(api).patch_node(node, {"spec": {"unschedulable": True}})
    lag = None
    while time.monotonic() < t_cordon + 60:
        out = subprocess.run(["sinfo", "-h", "-N", "-n", f"k8s-{node}", "-o", "%t"], env=env,
                             capture_output=True, text=True).stdout
        if out.strip().startswith("drain"):
            lag = time.monotonic() - t_cordon
            break
        time.sleep(0.05)

    # scancel -> objects gone
    victims = sorted(submitted)[-100:]
    cancelled: dict[int, float] = {}
    for jid in victims:
        subprocess.run(["scancel", str(jid)], env=env, check=True)
        cancelled[jid] = time.monotonic()
    deadline = time.monotonic() + args.timeout
    while len(deleted.keys() & set(victims)) < len(victims) and time.monotonic() < deadline:
        time.sleep(0.2)
    gone = [deleted[j] - cancelled[j] for j in victims if j in deleted]

    cpu1, rss = proc_cpu_rss(pid)
    metrics1 = urllib.request.urlopen(f"http://127.0.0.1:{dev.metrics_port()}/metrics").read().decode()
    requests = (metric_sum(metrics1, "slurm_k8s_bridge_api_requests_total")
                - metric_sum(metrics0, "slurm_k8s_bridge_api_requests_total"))
    stop.set()
    dev.down()
    shutil.rmtree(base, ignore_errors=True)

    print(f"\nbridge daemon, {args.nodes} KWOK GPU nodes, {args.jobs} jobs "
          f"(API qps {args.qps:g}), one run")
    print(f"{'measure':<42}{'p50':>9}{'p99':>9}{'max':>9}  n")
    print(f"{'sbatch -> Kubernetes Job created (s)':<42}{pct(lat, .5):>9.2f}{pct(lat, .99):>9.2f}"
          f"{max(lat):>9.2f}  {len(lat)}/{args.jobs}")
    print(f"{'scancel -> Kubernetes Job deleted (s)':<42}{pct(gone, .5):>9.2f}"
          f"{pct(gone, .99):>9.2f}{max(gone):>9.2f}  {len(gone)}/{len(victims)}")
    print(f"{'cordon -> sinfo drain (s)':<42}{(lag if lag is not None else float('nan')):>9.2f}")
    print(f"daemon CPU {cpu1 - cpu0:.1f} s over {all_created - min(submitted.values()):.1f} s of "
          f"submissions+creation and the rest; RSS {rss / 1024:.0f} MiB")
    print(f"Kubernetes API requests by the daemon: {requests:.0f} "
          f"({requests / args.jobs:.1f} per job, watches excluded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
