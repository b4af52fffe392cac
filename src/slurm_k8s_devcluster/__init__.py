"""Real, local development clusters for tests, benchmarks and ``dev-cluster up``.

``LocalSlurmCluster`` runs a private munged, a slurmctld and several slurmd (each in its
own network namespace) from Debian's Slurm packages; nothing is mocked.
"""

from slurm_k8s_devcluster.slurm import (
    DEBIAN_PLUGIN_DIR,
    ClusterError,
    LocalSlurmCluster,
    NodeSpec,
    ensure_slurm_packages,
)
from slurm_k8s_bridge.slurm.records import parse_key_values

__all__ = [
    "DEBIAN_PLUGIN_DIR",
    "ClusterError",
    "LocalSlurmCluster",
    "NodeSpec",
    "ensure_slurm_packages",
    "parse_key_values",
]
