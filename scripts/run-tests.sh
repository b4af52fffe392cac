#!/usr/bin/env bash
# Run slurm-k8s-bridge's tests: unit and slurm tiers by default (the slurm tier starts real
# slurmctld/slurmd/munged and needs root). Extra arguments go to pytest, e.g.
#   sudo bash scripts/run-tests.sh -k refused
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
tiers=(tests/unit tests/slurm)
echo "==> pytest ${tiers[*]} $*"
exec .venv/bin/python -m pytest -ra "${tiers[@]}" "$@"
