#!/usr/bin/env python3
"""Submission cost of slurm-k8s-bridge's plugins, on real slurmctld, in one run.

    sudo .venv/bin/python bench/bench_submit.py [--jobs 300] [--parallel 4] [--runs 30]

Three slurmctld configurations, same machine, same script, same number of submissions:
  none  -- no job_submit plugin
  k8s   -- JobSubmitPlugins=k8s (this project), bridged partition, job held and stamped
  lua   -- JobSubmitPlugins=lua with a job_submit.lua that parses the GPU request, checks it
           against a node shape, holds the job and stamps it (comparable work, no Python)
It prints sbatch submissions per second (sequential and with --parallel concurrent
submitters) as ratios to "none", job_submit time per call inside the plugin (p50/p99,
measured in C around the Python call), and the latency the SPANK plugin adds to
``sbatch --wrap true`` and ``srun true``. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from tests.slurm.bridge_fixtures import make_bridge_cluster  # noqa: E402  (test config)
from tests.slurm.conftest import make_base_dir, remove_base_dir  # noqa: E402

SCRIPT = """#!/bin/bash
#SBATCH --job-name=bench
#SBATCH -N 2 --ntasks-per-node=8
#SBATCH --gres=gpu:h100:8 --time=02:00:00
srun --mpi=pmix python train.py
"""

JOB_SUBMIT_LUA = r"""
-- Comparable work to job_submit/k8s, in Lua: parse the GPU request, check it against
-- the largest node shape, hold the job and stamp it.
local MAX_GPUS, MAX_CPUS, MAX_MEM = 8, 224, 2048000
function slurm_job_submit(job_desc, part_list, submit_uid)
   if job_desc.partition == "cpu" then return slurm.SUCCESS end
   local tres = job_desc.tres_per_node or ""
   local gtype, count = string.match(tres, "gpu:([%w%.]+):(%d+)")
   if not count then count = string.match(tres, "gpu:(%d+)") end
   count = tonumber(count or "0")
   if count > MAX_GPUS then
      slurm.log_user("asks for %d GPUs per node, the largest shape has %d", count, MAX_GPUS)
      return slurm.ERROR
   end
   local nodes = job_desc.min_nodes
   if nodes == nil or nodes >= 4294967294 then nodes = 1 end
   local tpn = job_desc.ntasks_per_node
   if tpn == nil or tpn >= 65534 then tpn = 1 end
   local cpt = job_desc.cpus_per_task
   if cpt == nil or cpt >= 65534 then cpt = 1 end
   if tpn * cpt > MAX_CPUS then
      slurm.log_user("too many CPUs per node")
      return slurm.ERROR
   end
   job_desc.admin_comment = string.format(
      "lua1:nodes=%d,gpus=%d,type=%s,tpn=%d,cpt=%d,uid=%d,time=%s,name=%s",
      nodes, count, gtype or "any", tpn, cpt, submit_uid,
      tostring(job_desc.time_limit), tostring(job_desc.name))
   job_desc.priority = 0
   return slurm.SUCCESS
end
function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
   return slurm.SUCCESS
end
"""


def submit_many(cluster, script: Path, jobs: int, parallel: int) -> float:
    """Submit ``jobs`` copies of ``script``; return submissions per second."""
    def one(i: int) -> None:
        proc = cluster.run(["sbatch", "--parsable", f"--job-name=b{i}", str(script)])
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)

    start = time.perf_counter()
    if parallel <= 1:
        for i in range(jobs):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(one, range(jobs)))
    elapsed = time.perf_counter() - start
    cluster.run(["scancel", "-u", "root"])
    return jobs / elapsed


def command_latency(cluster, cmd: list[str], runs: int) -> tuple[float, float]:
    """Median and p90 wall time of ``cmd`` in ms (after one warm-up run)."""
    cluster.run(cmd)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = cluster.run(cmd)
        samples.append((time.perf_counter() - t0) * 1000)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd}: {proc.stderr}")
    samples.sort()
    return statistics.median(samples), samples[int(0.9 * (len(samples) - 1))]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_mode(mode: str, args: argparse.Namespace, results: dict) -> None:
    base = make_base_dir(f"bench-{mode}")
    extra = ["JobSubmitPlugins=lua"] if mode == "lua" else []
    bridge = make_bridge_cluster(base, f"b{mode}", with_plugins=(mode == "k8s"),
                                 extra_conf=extra)
    cluster = bridge.cluster
    try:
        if mode == "lua":
            cluster.etc_dir.mkdir(parents=True, exist_ok=True)
            (cluster.etc_dir / "job_submit.lua").write_text(JOB_SUBMIT_LUA)
        cluster.start()
        script = cluster.write_script(SCRIPT)
        # check the configuration holds jobs as intended before timing anything
        probe = cluster.run(["sbatch", "--parsable", str(script)], check=True)
        prio = cluster.show_job(int(probe.stdout.split(";")[0]))["Priority"]
        cluster.run(["scancel", "-u", "root"])
        if bridge.timings_path.exists():
            bridge.timings_path.write_text("")
        seq = submit_many(cluster, script, args.jobs, 1)
        par = submit_many(cluster, script, args.jobs, args.parallel)
        results[mode] = {"seq": seq, "par": par, "held": prio == "0"}
        if mode == "k8s":
            ns = [int(x) for x in bridge.timings_path.read_text().split()]
            results["k8s_call_us"] = [n / 1000 for n in ns]
            plug = cluster.etc_dir / "plugstack.conf"
            with_spank = plug.read_text()
            lat = {}
            for label, text in (("with", with_spank), ("without", "")):
                plug.write_text(text)
                lat[label] = {
                    "sbatch": command_latency(
                        cluster, ["sbatch", "-p", "cpu", "--mem=10", "--wrap", "true"],
                        args.runs),
                    "srun": command_latency(
                        cluster, ["srun", "-p", "cpu", "-N1", "--mem=10", "true"], args.runs),
                }
                cluster.run(["scancel", "-u", "root"])
            plug.write_text(with_spank)
            results["spank"] = lat
    finally:
        cluster.stop()
        remove_base_dir(cluster)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    results: dict = {}
    for mode in ("none", "k8s", "lua"):
        print(f"... {mode}", file=sys.stderr, flush=True)
        run_mode(mode, args, results)

    base_seq, base_par = results["none"]["seq"], results["none"]["par"]
    print(f"\nsbatch submissions per second ({args.jobs} jobs each; "
          f"parallel = {args.parallel} concurrent submitters)")
    print(f"{'job_submit':<12}{'held?':>7}{'seq/s':>10}{'x none':>9}{'par/s':>10}{'x none':>9}")
    for mode in ("none", "k8s", "lua"):
        r = results[mode]
        print(f"{mode:<12}{('yes' if r['held'] else 'no'):>7}{r['seq']:>10.1f}"
              f"{r['seq'] / base_seq:>9.2f}{r['par']:>10.1f}{r['par'] / base_par:>9.2f}")
    calls = results["k8s_call_us"]
    print(f"\njob_submit/k8s time per call inside slurmctld ({len(calls)} calls): "
          f"p50 {percentile(calls, 0.5):.0f} us, p99 {percentile(calls, 0.99):.0f} us, "
          f"max {max(calls):.0f} us")
    lat = results["spank"]
    print(f"\nSPANK plugin latency ({args.runs} runs each, ms)")
    print(f"{'command':<22}{'without p50':>12}{'with p50':>10}{'added':>8}"
          f"{'without p90':>13}{'with p90':>10}")
    for cmd, label in (("sbatch", "sbatch --wrap true"), ("srun", "srun true")):
        w, o = lat["with"][cmd], lat["without"][cmd]
        print(f"{label:<22}{o[0]:>12.1f}{w[0]:>10.1f}{w[0] - o[0]:>+8.1f}{o[1]:>13.1f}"
              f"{w[1]:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
