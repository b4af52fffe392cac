"""``slurm-k8s-bridge dev-cluster up|status|down``: the development cluster as a command.

The bridge's own CLI hands ``dev-cluster`` over to ``python -m slurm_k8s_devcluster`` (this
module), so the product never imports its test harness.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from slurm_k8s_devcluster.dev import DevCluster


def build_parser() -> argparse.ArgumentParser:
    dc = argparse.ArgumentParser(prog="slurm-k8s-bridge dev-cluster",
                                 description="A whole local cluster: Slurm with the plugins, Kubernetes "
                                 "(KWOK GPU nodes, or a real kubelet) and the bridge daemon.")
    dc.add_argument("action", choices=("up", "status", "down"))
    dc.add_argument("--dir", default="/var/tmp/slurm-k8s-bridge-dev",
                    help="where it lives (default /var/tmp/slurm-k8s-bridge-dev)")
    dc.add_argument("--kwok-nodes", type=int, default=None,
                    help="simulated h100 GPU nodes (default 4; 0 with --real-node: pods placed "
                    "on a simulated node run nothing)")
    dc.add_argument("--real-node", action="store_true",
                    help="also start a real kubelet node (containerd, runc, CNI bridge) that "
                    "runs the worker image, so jobs really run (build it first: "
                    "scripts/build-images.sh)")
    dc.add_argument("--kueue", action="store_true",
                    help="also run a real Kueue (v0.17, built from the Go module proxy: "
                    "scripts/build-kueue.sh) and admit partition gpu's jobs through it")
    dc.add_argument("--worker-image", default="localhost/slurm-k8s-bridge-worker:bookworm",
                    help="worker image (in podman's store) for --real-node")
    return dc


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kwok = args.kwok_nodes if args.kwok_nodes is not None else (0 if args.real_node else 4)
    dev = DevCluster(Path(args.dir), kwok_nodes=kwok, real_node=args.real_node,
                     worker_image=args.worker_image, kueue=args.kueue)
    if args.action == "up":
        dev.up()
        return 0
    if args.action == "status":
        return dev.status()
    dev.down()
    return 0
