"""The harness's exceptions, in one module so that every part of it can raise them.

``ClusterError`` is the base of all: a local cluster could not be set up, or a command
against it failed. The Slurm side adds ``AccountingUnavailable``; the Kubernetes side
``KubeClusterError`` and, for real kubelet nodes, ``RealNodeError`` and
``RealNodeUnavailable`` (this machine cannot run one: tests skip on it). Each is also
importable from the module of its cluster (slurm.py, k8s.py, kubelet.py).
"""

from __future__ import annotations


class ClusterError(RuntimeError):
    """The local cluster could not be set up, or a command against it failed."""


class AccountingUnavailable(ClusterError):
    """The accounting mode's MariaDB or slurmdbd could not be installed or started here
    (the message says which, with its log)."""


class KubeClusterError(ClusterError):
    """The local Kubernetes cluster could not be built, started or driven."""


class RealNodeError(KubeClusterError):
    """The real node could not be set up, started or driven."""


class RealNodeUnavailable(RealNodeError):
    """This machine cannot run a real node (not root, packages missing, no cgroups...).

    Tests skip on it; the message says exactly what is missing.
    """


__all__ = [
    "AccountingUnavailable",
    "ClusterError",
    "KubeClusterError",
    "RealNodeError",
    "RealNodeUnavailable",
]
