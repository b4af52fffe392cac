#!/usr/bin/env python3
"""Gang admission latency: the built-in gang backend beside the real Kueue, one run.

    sudo .venv/bin/python bench/bench_admission.py [--gangs 8] [--nodes 2]

For each backend in turn, on the same machine with the same setup: a real control plane
with 4 KWOK h100 nodes (8 GPUs each), Kueue's manager (its backend only; ClusterQueue gpu
with every GPU), a real slurmctld with the plugins, a real dynamic slurmd per pod
(``PodStandIns``) and the daemon as its ServiceAccount (``--poll-interval 1``). Then
``--gangs`` jobs of ``--nodes`` pods x 8 GPUs, one after another (each ends before the
next is submitted: admission latency, not queueing), each timed from sbatch to
  * the Kubernetes Job created,
  * the Job unsuspended (Kueue admitted it; the built-in backend never suspends),
  * every pod Running,
  * Slurm RUNNING.
Figures, not assertions: a table of p50 / max per backend.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from slurm_k8s_devcluster.bridge import load_example_config, make_bridge_cluster  # noqa: E402
from slurm_k8s_devcluster.k8s import LocalKubeCluster  # noqa: E402
from slurm_k8s_devcluster.k8s_binaries import ensure_k8s_binaries  # noqa: E402
from slurm_k8s_devcluster.kueue import LocalKueue, ensure_kueue, gpu_queues  # noqa: E402
from slurm_k8s_devcluster.podsim import PodStandIns  # noqa: E402
from tests.kube_env import (  # noqa: E402
    BRIDGE_USER,
    DaemonProcess,
    DaemonRbac,
    remove_scratch_dir,
    scratch_dir,
)

JOBS_NS = "slurm-jobs"
H100 = {"gpus": 8, "gpu_product": "NVIDIA-H100-80GB-HBM3", "cpus": 224, "memory": "2000Gi"}
NODES = 4
STEPS = ("Job created", "Job unsuspended", "pods Running", "Slurm RUNNING")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def until(check: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded by timeout
        try:
            value = check()
        except Exception:  # noqa: BLE001 - the object is not there yet
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_backend(backend: str, gangs: int, nodes: int) -> list[dict[str, float]]:
    from kubernetes import client

    base = scratch_dir(f"bench-admission-{backend}", mode=0o755)
    kube = LocalKubeCluster(base / "k8s", bin_dir=ensure_k8s_binaries(), kwok_nodes=NODES,
                            node_shape=H100)
    started: list[Any] = []
    try:
        kube.start(timeout=180)
        started.append(kube)
        if backend == "kueue":
            kueue = LocalKueue(kube, bin_dir=ensure_kueue())
            kueue.start()
            started.append(kueue)
            kube.ensure_namespace(JOBS_NS)
            kueue.apply_queues(gpu_queues(JOBS_NS, gpus=NODES * H100["gpus"]))
        data = copy.deepcopy(load_example_config())
        data["native_gpu_usage"] = False
        data["partitions"]["gpu"] = {"gang": "kueue", "queue": "gpu"} if backend == "kueue" else {}
        slurm_base = base / "slurm"
        slurm_base.mkdir(mode=0o755)
        slurm_base.chmod(0o755)     # slurmd and the job's user must traverse it
        bridge = make_bridge_cluster(slurm_base, f"adm{backend[:3]}", config_data=data)
        bridge.cluster.start(timeout=120)
        started.append(bridge.cluster)
        bridge.cluster.ensure_user(BRIDGE_USER)
        kubeconfig = DaemonRbac.of_config(bridge.config_path).apply(kube, base / "sa.kubeconfig")
        with kube.admin_client() as admin:
            standins = PodStandIns(admin, bridge.cluster, JOBS_NS, "slurm").start()
            started.append(standins)
            daemon = DaemonProcess(bridge.config_path, kubeconfig, env=bridge.cluster.env(),
                                   cwd=bridge.cluster.base_dir, log=base / "daemon.log",
                                   args=("--poll-interval", "1"))
            daemon.start()
            started.append(daemon)
            batch, core = client.BatchV1Api(admin), client.CoreV1Api(admin)
            rows = []
            for _ in range(gangs):   # bounded: exactly --gangs jobs
                rows.append(one_gang(bridge.cluster, batch, core, nodes))
            return rows
    finally:
        for thing in reversed(started):
            try:
                thing.stop()
            except Exception as exc:  # noqa: BLE001 - stop the rest
                print(f"stopping {type(thing).__name__}: {exc}", file=sys.stderr)
        remove_scratch_dir(base)


def one_gang(cluster: Any, batch: Any, core: Any, nodes: int) -> dict[str, float]:
    t0 = time.monotonic()
    res = cluster.sbatch(["--parsable", f"-N{nodes}", "--gres=gpu:h100:8", "-c1", "--mem=100",
                          "--wrap", "srun true"], user=BRIDGE_USER)
    if res.returncode != 0:
        raise RuntimeError(f"sbatch failed: {res.stderr}")
    job = int(res.stdout.strip().split(";")[0])
    name = f"slurm-{job}"
    row: dict[str, float] = {}
    until(lambda: batch.read_namespaced_job(name, JOBS_NS), 60, f"Job {name}")
    row["Job created"] = time.monotonic() - t0
    until(lambda: not batch.read_namespaced_job(name, JOBS_NS).spec.suspend, 120,
          f"Job {name} unsuspended")
    row["Job unsuspended"] = time.monotonic() - t0

    def pods_running() -> bool:
        pods = core.list_namespaced_pod(JOBS_NS, label_selector=f"job-name={name}").items
        return sum(1 for p in pods if p.status.phase == "Running"
                   and not p.metadata.deletion_timestamp) >= nodes
    until(pods_running, 120, f"the pods of {name} Running")
    row["pods Running"] = time.monotonic() - t0

    def state() -> str:
        out = cluster.run(["squeue", "-h", "-t", "all", "-j", str(job), "-o", "%T"]).stdout.strip()
        return out.splitlines()[0] if out else ""
    until(lambda: state() in ("RUNNING", "COMPLETING", "COMPLETED"), 120, f"job {job} RUNNING")
    row["Slurm RUNNING"] = time.monotonic() - t0
    until(lambda: state() == "COMPLETED", 120, f"job {job} COMPLETED", interval=0.2)

    def gone() -> bool:
        try:
            batch.read_namespaced_job(name, JOBS_NS)
        except Exception:  # noqa: BLE001 - 404: gone
            return True
        return False
    until(gone, 120, f"Job {name} deleted", interval=0.2)
    until(lambda: not core.list_namespaced_pod(JOBS_NS, label_selector=f"job-name={name}").items,
          120, f"the pods of {name} gone", interval=0.2)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description="gang admission latency, built-in vs Kueue")
    parser.add_argument("--gangs", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=2, help="pods per gang (8 GPUs each)")
    args = parser.parse_args()
    if not 1 <= args.nodes <= NODES:
        parser.error(f"--nodes must be 1..{NODES}")
    results = {backend: run_backend(backend, args.gangs, args.nodes)
               for backend in ("builtin", "kueue")}
    print(f"\ngang admission, {args.gangs} gangs of {args.nodes} pods x 8 GPUs, one at a time, "
          f"{NODES} KWOK h100 nodes, same run (seconds from sbatch)")
    print(f"{'backend':<10}" + "".join(f"{s + ' p50':>22}{'max':>7}" for s in STEPS))
    for backend, rows in results.items():
        line = f"{backend:<10}"
        for step in STEPS:
            values = [r[step] for r in rows]
            line += f"{pct(values, .5):>22.2f}{max(values):>7.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
