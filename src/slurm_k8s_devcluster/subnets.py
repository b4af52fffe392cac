"""What a harness claims on this host's network: a subnet number, held by a lock, and free ports.

Two harnesses (two test runs, a test run and ``dev-cluster up``) must never build bridges,
namespaces or cgroups under the same name. Each kind of owner numbers them by a subnet
``N`` and holds ``LOCK_DIR/<prefix>N.lock`` with an exclusive ``flock`` while it owns
``N``; the kernel drops the lock when the process dies, so a crashed harness never keeps
a subnet. ``SubnetLock`` takes and releases one such lock; ``any_locked`` tells whether any
lock of a kind is held. ``free_ports`` picks loopback ports nothing listens on.

Used by slurm.py (``LocalSlurmCluster``: ``subnet-N``, bridge ``skbrN``, 10.77.N.0/24) and
kubelet.py (``RealNode``: ``realnode-subnet-N``, bridge ``skbnN``, 10.244.N.0/24).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

LOCK_DIR = Path("/run/slurm-k8s-bridge-devcluster")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports the kernel reports free on ``host`` right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def any_locked(prefix: str) -> bool:
    """Whether some process holds one of the ``LOCK_DIR/<prefix>*.lock`` locks (this
    process included: a flock belongs to an open file, not to a process)."""
    for lock in LOCK_DIR.glob(f"{prefix}*.lock"):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
    return False


@dataclass(eq=False)
class SubnetLock:
    """Ownership of one subnet number ``N`` of a kind of owner: ``LOCK_DIR/<prefix>N.lock``.

    ``auto``: the numbers ``acquire()`` picks from when none is requested, first those
    without a bridge ``<bridge_prefix>N`` on the host. Errors are ``error`` instances
    naming the ``owner`` class and the ``network`` (``"10.77"``: 10.77.N.0/24). With
    ``note``, the lock file holds ``<pid> <note>`` while locked (who holds it).
    """

    prefix: str
    _: KW_ONLY
    auto: Sequence[int]
    bridge_prefix: str
    network: str
    owner: str
    kind: str
    error: type[Exception]
    note: str | None = None
    fd: int | None = field(default=None, init=False)
    subnet: int | None = field(default=None, init=False)

    @property
    def held(self) -> bool:
        return self.fd is not None

    def path(self, subnet: int) -> Path:
        return LOCK_DIR / f"{self.prefix}{subnet}.lock"

    def try_lock(self, subnet: int) -> bool:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path(subnet), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        if self.note is not None:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.note}\n".encode())
        self.fd = fd
        self.subnet = subnet
        return True

    def acquire(self, requested: int | None, *, prefer: int | None = None) -> int:
        """Lock ``requested`` (an error when another live owner holds it) or, without one,
        ``prefer`` when free, else the first free number of ``auto``. Returns the number;
        a no-op while held."""
        if self.subnet is not None:   # held
            return self.subnet
        if requested is not None:
            if not 1 <= requested <= 254:
                raise ValueError("subnet must be in 1..254")
            if not self.try_lock(requested):
                raise self.error(f"subnet {self.network}.{requested}.0/24 is held by another "
                                 f"live {self.owner} ({self.path(requested)})")
            return requested
        if prefer is not None and self.try_lock(prefer):
            return prefer
        for n in self.auto:
            if not Path(f"/sys/class/net/{self.bridge_prefix}{n}").exists() and self.try_lock(n):
                return n
        for n in self.auto:
            if self.try_lock(n):
                return n
        raise self.error(f"no free {self.kind} subnet in "
                         f"{self.network}.{self.auto[0]}-{self.auto[-1]}")

    def release(self) -> None:
        """Give the subnet up (idempotent)."""
        if self.fd is None:
            return
        if self.note is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
        self.fd = None
        self.subnet = None


__all__ = ["LOCK_DIR", "SubnetLock", "any_locked", "free_ports"]
