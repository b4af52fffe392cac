"""slurm-k8s-bridge: run unchanged Slurm jobs as Kubernetes Jobs on shared GPU nodes."""

__version__ = "0.1.0"
