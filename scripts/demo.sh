#!/usr/bin/env bash
# Set up this machine and run the local demo on the whole bridge: slurmctld with the
# plugins, a Kubernetes control plane and a real kubelet node built from the package
# registries (cached after the first run), the worker image, and the bridge daemon; then
# an MPI job on two pods, an interactive srun and a refusal, all as an ordinary user.
#   sudo bash scripts/demo.sh [--keep] [--dir DIR]     # --slurm-only: Slurm side only
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
if [[ " $* " != *" --slurm-only "* ]]; then
	bash scripts/build-k8s-binaries.sh >/dev/null
	bash scripts/build-kubelet.sh --install-deps >/dev/null
	bash scripts/build-images.sh --install-deps --suite bookworm --only worker
fi
exec .venv/bin/python -m slurm_k8s_devcluster.demo "$@"
