"""The bridge's own gang admission: no admission layer in Kubernetes.

The Indexed Job is created at once; the daemon releases the Slurm job only when every pod
runs and its slurmd registered, so a gang runs whole or not at all (``daemon.plan``).
"""

from __future__ import annotations

from slurm_k8s_bridge.core.gang.base import GangBackend


class BuiltinGang(GangBackend):
    name = "builtin"
