#!/usr/bin/env bash
# Run slurm-k8s-bridge's tests: unit, slurm, k8s and e2e tiers by default (the slurm tier
# starts real slurmctld/slurmd/munged and needs root; the k8s tier builds the control plane
# and the kubelet from the Go module proxy once, ~10 min, cached; the e2e tier needs the
# worker image, built with podman from a debootstrap base once, ~5 min, kept in podman's
# store; the containers tier builds the other images, both suites, ~10 min once).
# Arguments replace the default selection:
#   sudo bash scripts/run-tests.sh tests/slurm -k refused
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
if [ "$#" -eq 0 ]; then
	# unit + slurm + k8s + e2e + containers tiers (k8s: the daemon end to end, ~5 min,
	# and the real kubelet node; e2e: jobs in worker pods on a real kubelet, ~5 min;
	# containers: the images of both suites and the compose cluster, ~5 min warm)
	set -- tests/unit tests/slurm tests/k8s tests/e2e tests/containers
	# What the real node and the e2e tier need; a failure here only makes those tests skip
	# (they print why).
	if [ "$(id -u)" -eq 0 ]; then
		bash scripts/build-kubelet.sh --install-deps >/dev/null \
			|| echo "warning: the kubelet could not be built; real-node tests will skip" >&2
		bash scripts/build-images.sh --install-deps --suite bookworm --only worker \
			|| echo "warning: the worker image could not be built; the e2e tier will skip" >&2
	fi
fi
echo "==> pytest $*"
exec .venv/bin/python -m pytest -ra "$@"
