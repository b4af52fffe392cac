#!/usr/bin/env bash
# Run slurm-k8s-bridge's tests: unit, slurm and k8s tiers by default (the slurm tier starts
# real slurmctld/slurmd/munged and needs root; the k8s tier builds the control plane from
# the Go module proxy once, ~7 min, cached). Arguments replace the default selection:
#   sudo bash scripts/run-tests.sh tests/slurm -k refused
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
if [ "$#" -eq 0 ]; then
	# unit + slurm + k8s tiers (the k8s tier includes the daemon end to end, ~5 min, and
	# the real kubelet node)
	set -- tests/unit tests/slurm tests/k8s
fi
echo "==> pytest $*"
exec .venv/bin/python -m pytest -ra "$@"
