#!/usr/bin/env bash
# Set up this machine (Debian's Slurm, munge, a virtualenv) and run the local demo: real
# slurmctld and slurmd with slurm-k8s-bridge's plugins, driven by unchanged sbatch.
# Arguments go to the demo (--keep leaves the cluster running until Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
exec .venv/bin/python -m slurm_k8s_bridge.devcluster.demo "$@"
