"""What a real kubelet node puts on this host, and takes back: bridge, cgroups, mounts, tunables.

``missing_prerequisites`` says what the host lacks to run a node at all. ``NodeHost`` (a
base of ``RealNode``, kubelet.py) names the node's host resources after its subnet ``N``
(bridge ``skbnN`` holding ``10.244.N.1``, cgroups ``/skb-nodeN``) and creates and removes
them: the bridge, the cgroups in every hierarchy (killing what is left in them), the
containerd shims serving the node, the mounts under ``base_dir``. ``_save_sysctls`` and
``_restore_sysctls_if_last`` put back the kernel tunables the kubelet changes once the
last node on this host stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from slurm_k8s_devcluster.errors import RealNodeError, RealNodeUnavailable
from slurm_k8s_devcluster.subnets import LOCK_DIR, any_locked
from slurm_k8s_devcluster.supervisor import run_command

CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
#: programs the node runs or the kubelet shells out to
REQUIRED_PROGRAMS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip",
                     "mount", "umount", "nsenter")
_CGROUP_ROOT_FS = Path("/sys/fs/cgroup")
#: kernel tunables the kubelet sets at start (pkg/kubelet/cm: setupKernelTunables); put back
#: when the last real node on this host stops
_KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                    "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
                    "kernel/keys/root_maxbytes")
_SYSCTL_RECORD = LOCK_DIR / "realnode-sysctls-before.json"
#: where the kubelet links container logs, whatever its root dir (hardcoded upstream)
_CONTAINER_LOG_LINKS = Path("/var/log/containers")


def _sh(cmd: Sequence[str], *, timeout: float = 60.0, check: bool = True,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_command(cmd, error=RealNodeError, timeout=timeout, check=check,
                       input_text=input_text)


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run a real node, in words (empty: nothing)."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("root (the kubelet and containerd run as root)")
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing += [f"program {p}" for p in REQUIRED_PROGRAMS if shutil.which(p, path=search) is None]
    missing += [f"CNI plugin {CNI_BIN_DIR / p}" for p in CNI_PLUGINS
                if not os.access(CNI_BIN_DIR / p, os.X_OK)]
    if not _cgroup_hierarchies() and not _cgroup_v2_only():
        missing.append("a mounted cgroup filesystem under /sys/fs/cgroup")
    return missing


def _cgroup_hierarchies() -> dict[str, Path]:
    """cgroup hierarchies mounted on this host: name (``cpu``, ``name=systemd``, ``unified``
    for the cgroup2 mount of a hybrid host) -> mount point."""
    out: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            pre, _, post = line.partition(" - ")
            fields, extra = pre.split(), post.split()
            if len(extra) >= 1 and extra[0] == "cgroup2":
                out["unified"] = Path(fields[4])
                continue
            if len(extra) < 3 or extra[0] != "cgroup":
                continue
            opts = [o for o in extra[2].split(",") if o not in ("rw", "ro")]
            names = [o for o in opts if not o.startswith(("relatime", "noatime", "nosuid",
                                                          "nodev", "noexec", "release_agent",
                                                          "clone_children", "xattr"))]
            out[",".join(names) or fields[4]] = Path(fields[4])
    return out


def _cgroup_v2_only() -> bool:
    return (_CGROUP_ROOT_FS / "cgroup.controllers").exists()


def _save_sysctls() -> None:
    """Record the kernel tunables the kubelet is about to change (once per host)."""
    if _SYSCTL_RECORD.exists():
        return
    values = {}
    for key in _KUBELET_SYSCTLS:
        with contextlib.suppress(OSError):
            values[key] = Path("/proc/sys", key).read_text().strip()
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    tmp = _SYSCTL_RECORD.with_suffix(".tmp")
    tmp.write_text(json.dumps(values))
    tmp.replace(_SYSCTL_RECORD)


def _restore_sysctls_if_last() -> None:
    """Put the recorded tunables back when no real node on this host holds its lock."""
    if not _SYSCTL_RECORD.exists():
        return
    if any_locked("realnode-subnet-"):
        return   # another live node
    with contextlib.suppress(OSError, ValueError):
        for key, value in json.loads(_SYSCTL_RECORD.read_text()).items():
            with contextlib.suppress(OSError):
                Path("/proc/sys", key).write_text(f"{value}\n")
    _SYSCTL_RECORD.unlink(missing_ok=True)


def _mounts_under(prefixes: Iterable[Path]) -> list[str]:
    """Mount points at or below any of ``prefixes``, deepest first."""
    pre = [str(p).rstrip("/") for p in prefixes]
    points: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point == p or point.startswith(p + "/") for p in pre):
                points.append(point)
    return sorted(set(points), key=lambda s: (-s.count("/"), s))


class NodeHost:
    """The host side of one real node (a base of RealNode)."""

    # set by RealNode.__init__
    subnet: int | None
    base_dir: Path

    # ------------------------------------------------------------------ naming

    @property
    def node_ip(self) -> str:
        """The node's InternalIP: the bridge's address, the pods' gateway."""
        return f"10.244.{self._subnet()}.1"

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self._subnet()}.0/24"

    @property
    def bridge(self) -> str:
        return f"skbn{self._subnet()}"

    @property
    def cgroup_root(self) -> str:
        return f"/skb-node{self._subnet()}"

    def _subnet(self) -> int:
        if self.subnet is None:
            raise RealNodeError("no subnet yet: start() the node first (or pass subnet=)")
        return self.subnet

    # ------------------------------------------------------------------ host resources

    def _ensure_bridge(self) -> None:
        """The bridge exists before the kubelet starts: its address is the node IP the
        kubelet validates and serves on. The CNI bridge plugin then reuses it."""
        if not Path(f"/sys/class/net/{self.bridge}").exists():
            _sh(["ip", "link", "add", self.bridge, "type", "bridge"])
        res = _sh(["ip", "-4", "-o", "addr", "show", "dev", self.bridge])
        if f" {self.node_ip}/24 " not in res.stdout:
            _sh(["ip", "addr", "add", f"{self.node_ip}/24", "dev", self.bridge])
        _sh(["ip", "link", "set", self.bridge, "up"])

    def _delete_bridge(self) -> None:
        if self.subnet is not None and Path(f"/sys/class/net/{self.bridge}").exists():
            _sh(["ip", "link", "del", self.bridge], check=False)

    def _cgroup_dirs(self) -> list[Path]:
        rel = self.cgroup_root.lstrip("/")
        if _cgroup_v2_only():
            return [_CGROUP_ROOT_FS / rel]
        return [root / rel for root in _cgroup_hierarchies().values()]

    def _ensure_cgroups(self) -> None:
        """``cgroupRoot`` must exist in every hierarchy before the kubelet starts."""
        for d in self._cgroup_dirs():
            try:
                d.mkdir(exist_ok=True)
            except OSError as exc:
                raise RealNodeUnavailable(f"cannot create cgroup {d}: {exc}") from exc
            cpus, mems = d / "cpuset.cpus", d / "cpuset.mems"
            for f in (cpus, mems):   # cgroup v1 cpuset: empty until copied from the parent
                if f.exists() and not f.read_text().strip():
                    f.write_text((d.parent / f.name).read_text())

    def _cgroup_procs(self) -> set[int]:
        pids: set[int] = set()
        for d in self._cgroup_dirs():
            if not d.exists():
                continue
            for procs in d.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(x) for x in procs.read_text().split())
        return pids

    def _kill_cgroup_procs(self) -> None:
        for _ in range(20):
            pids = self._cgroup_procs()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _remove_cgroups(self) -> None:
        for d in self._cgroup_dirs():
            if not d.exists():
                continue
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()),
                              key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                d.rmdir()

    def _shim_pids(self, socket: str) -> list[int]:
        """containerd-shim-runc-v2 processes serving our containerd (by ``-address``)."""
        out = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and socket.encode() in argv:
                out.append(int(proc.name))
        return out

    def _unmount_all(self) -> None:
        for point in _mounts_under([self.base_dir]):
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
