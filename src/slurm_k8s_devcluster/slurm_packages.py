"""The Debian packages the Slurm harness runs from, and installing them when missing.

``ensure_slurm_packages``: slurmctld, slurmd, the client commands, munge, slurm.h (for
the plugins) and the tools the namespaces need. ``ensure_accounting_packages``: slurmdbd
and MariaDB for ``LocalSlurmCluster(accounting=True)``. Both run ``apt-get install`` only
when something is missing (and ``apt-get update`` once when that fails).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from slurm_k8s_devcluster.errors import ClusterError

DEBIAN_PLUGIN_DIR = Path("/usr/lib/x86_64-linux-gnu/slurm-wlm")
SLURM_PACKAGES = [
    "slurmctld",
    "slurmd",
    "slurm-client",
    "libslurm-dev",
    "munge",
    "libpmix-dev",
    "slurm-wlm-basic-plugins",
    "iproute2",
    "lua5.3",
]
REQUIRED_PROGRAMS = ["slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo",
                     "munged", "munge", "unmunge", "ip", "nsenter", "unshare", "runuser"]
SLURM_HEADER = Path("/usr/include/slurm/slurm.h")
#: What the optional accounting mode needs (``LocalSlurmCluster(accounting=True)``): Debian's
#: slurmdbd with its MySQL plugin, and MariaDB's server and client binaries without the
#: service packaging (no system-wide database is created or started).
ACCOUNTING_PACKAGES = ["slurmdbd", "slurm-wlm-mysql-plugin", "mariadb-server-core",
                       "mariadb-client-core"]
ACCOUNTING_PROGRAMS = ["slurmdbd", "sacctmgr", "mariadbd", "mariadb-install-db", "mariadb"]


def _missing_programs(programs: Sequence[str]) -> list[str]:
    return [p for p in programs if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def _missing_prerequisites() -> list[str]:
    missing = _missing_programs(REQUIRED_PROGRAMS)
    if not SLURM_HEADER.exists():
        missing.append(str(SLURM_HEADER))
    return missing


def _missing_accounting() -> list[str]:
    missing = _missing_programs(ACCOUNTING_PROGRAMS)
    if not (DEBIAN_PLUGIN_DIR / "accounting_storage_mysql.so").exists():
        missing.append(str(DEBIAN_PLUGIN_DIR / "accounting_storage_mysql.so"))
    return missing


def _apt_install(packages: Sequence[str], missing_now: Callable[[], list[str]],
                 timeout: float) -> None:
    """``apt-get install packages`` when ``missing_now()`` names something; raise
    ``ClusterError`` when that is not possible or something is still missing after."""
    missing = missing_now()
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterError(f"missing {', '.join(missing)} and not root: cannot apt-get install")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    res = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        subprocess.run(["apt-get", "update"], check=False, env=env, capture_output=True,
                       text=True, timeout=timeout)
        res = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True,
                             timeout=timeout)
    missing = missing_now()
    if res.returncode != 0 or missing:
        raise ClusterError(
            f"apt-get install {' '.join(packages)} failed (rc={res.returncode}); "
            f"still missing: {', '.join(missing) or 'nothing'}\n{res.stderr[-2000:]}")


def ensure_slurm_packages(timeout: float = 900) -> None:
    """Install Debian's Slurm/munge packages when a program or slurm.h is missing."""
    _apt_install(SLURM_PACKAGES, _missing_prerequisites, timeout)


def ensure_accounting_packages(timeout: float = 900) -> None:
    """Install slurmdbd and MariaDB (``ACCOUNTING_PACKAGES``) when something is missing.

    Only the binaries are needed: the harness runs its own mariadbd and slurmdbd under
    the cluster's ``base_dir``. A package's own service start (slurmdbd's) is left to the
    machine's policy (``policy-rc.d``); nothing of it is used.
    """
    _apt_install(ACCOUNTING_PACKAGES, _missing_accounting, timeout)


__all__ = [
    "ACCOUNTING_PACKAGES",
    "ACCOUNTING_PROGRAMS",
    "DEBIAN_PLUGIN_DIR",
    "REQUIRED_PROGRAMS",
    "SLURM_HEADER",
    "SLURM_PACKAGES",
    "ensure_accounting_packages",
    "ensure_slurm_packages",
]
