"""A real Slurm cluster on one Linux machine: private munged, slurmctld, several slurmd.

Every slurmd runs in its own network namespace (veth pair to a Linux bridge that carries
the controller's address) and its own mount namespace with a private ``/tmp``, so several
"nodes" coexist on one host exactly like separate machines as far as Slurm can tell.
Nothing is mocked: these are Debian's Slurm 22.05 daemons and client commands.

Everything the cluster owns lives under ``base_dir`` (configuration, state, spool, logs,
munge key and socket, fake GPU device nodes). Every wait is bounded and every process is
tracked by pid, so ``stop()`` removes exactly what ``start()`` created.

Requires root (namespaces, bridges, mknod). Standard library only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from slurm_k8s_bridge.slurm.records import parse_key_values

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
LOCK_DIR = Path("/run/slurm-k8s-bridge-devcluster")
AUTO_SUBNETS = range(100, 200)

# Keys of slurm.conf lines that may appear many times; every other key given in
# ``extra_conf`` replaces the harness default of the same key.
_REPEATABLE_KEYS = {"nodename", "partitionname", "nodeset", "downnodes", "frontendname",
                    "slurmctldhost", "include"}
_TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED"}


class ClusterError(RuntimeError):
    """The local cluster could not be set up, or a command against it failed."""


class AccountingUnavailable(ClusterError):
    """The accounting mode's MariaDB or slurmdbd could not be installed or started here
    (the message says which, with its log)."""


# ----------------------------------------------------------------------------- helpers


def _missing_prerequisites() -> list[str]:
    missing = [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None
               and not Path("/usr/sbin", p).exists()]
    if not SLURM_HEADER.exists():
        missing.append(str(SLURM_HEADER))
    return missing


def ensure_slurm_packages(timeout: float = 900) -> None:
    """Install Debian's Slurm/munge packages when a program or slurm.h is missing."""
    missing = _missing_prerequisites()
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterError(f"missing {', '.join(missing)} and not root: cannot apt-get install")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *SLURM_PACKAGES]
    res = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        subprocess.run(["apt-get", "update"], check=False, env=env, capture_output=True, text=True,
                       timeout=timeout)
        res = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout)
    missing = _missing_prerequisites()
    if res.returncode != 0 or missing:
        raise ClusterError(
            f"apt-get install {' '.join(SLURM_PACKAGES)} failed (rc={res.returncode}); "
            f"still missing: {', '.join(missing) or 'nothing'}\n{res.stderr[-2000:]}")


def _missing_accounting() -> list[str]:
    missing = [p for p in ACCOUNTING_PROGRAMS if shutil.which(p) is None
               and not Path("/usr/sbin", p).exists()]
    if not (DEBIAN_PLUGIN_DIR / "accounting_storage_mysql.so").exists():
        missing.append(str(DEBIAN_PLUGIN_DIR / "accounting_storage_mysql.so"))
    return missing


def ensure_accounting_packages(timeout: float = 900) -> None:
    """Install slurmdbd and MariaDB (``ACCOUNTING_PACKAGES``) when something is missing.

    Only the binaries are needed: the harness runs its own mariadbd and slurmdbd under
    the cluster's ``base_dir``. A package's own service start (slurmdbd's) is left to the
    machine's policy (``policy-rc.d``); nothing of it is used.
    """
    missing = _missing_accounting()
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterError(f"missing {', '.join(missing)} and not root: cannot apt-get install")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *ACCOUNTING_PACKAGES]
    res = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        subprocess.run(["apt-get", "update"], check=False, env=env, capture_output=True,
                       text=True, timeout=timeout)
        res = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True,
                             timeout=timeout)
    missing = _missing_accounting()
    if res.returncode != 0 or missing:
        raise ClusterError(
            f"apt-get install {' '.join(ACCOUNTING_PACKAGES)} failed (rc={res.returncode}); "
            f"still missing: {', '.join(missing) or 'nothing'}\n{res.stderr[-2000:]}")


def _free_tcp_port() -> int:
    """A port nothing listens on now (the kernel's pick on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_starttime(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = ""
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def _kill_pid(pid: int, grace: float, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL (and reap when we are parent)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    return
            elif not _pid_alive(pid):
                return
            time.sleep(0.05)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)


def read_pid_record(path: Path) -> dict[str, tuple[int, bool]]:
    """A harness pid record: name -> (pid, the same process still running)."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, tuple[int, bool]] = {}
    for name, entry in entries.items():
        pid, start = int(entry["pid"]), entry.get("start")
        out[name] = (pid, bool(start) and _proc_starttime(pid) == start and _pid_alive(pid))
    return out


def _tail(path: Path, lines: int) -> str:
    try:
        data = path.read_bytes()[-200_000:].decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _tmp_tops(paths: Iterable[Path]) -> list[Path]:
    """The distinct /tmp/<entry> directories holding ``paths`` (at most 7: fds 3-9)."""
    tops: list[Path] = []
    for path in paths:
        parts = Path(os.path.abspath(path)).parts
        if len(parts) > 2 and parts[1] == "tmp":
            top = Path("/tmp", parts[2])
            if top.is_dir() and top not in tops:
                tops.append(top)
    if len(tops) > 7:
        raise ClusterError(f"too many directories under /tmp to keep visible: {tops}")
    return tops


def tail_logs(log_dir: Path, lines: int = 40) -> str:
    """The tail of every log file in ``log_dir``, each under a ``==> name <==`` header."""
    chunks = []
    if log_dir.exists():
        for path in sorted(log_dir.iterdir()):
            text = _tail(path, lines)
            if text.strip():
                chunks.append(f"==> {path.name} <==\n{text}")
    return "\n".join(chunks)


def _sh(cmd: Sequence[str], check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise ClusterError(f"{shlex.join(cmd)} failed (rc={res.returncode}): "
                           f"{res.stderr.strip() or res.stdout.strip()}")
    return res


def _gres_gpu(gres: str | None) -> tuple[str | None, int]:
    """``gpu:4`` -> (None, 4); ``gpu:a100:8`` -> ("a100", 8); others -> (None, 0)."""
    if not gres:
        return None, 0
    for item in gres.split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        if len(parts) == 2 and parts[1].isdigit():
            return None, int(parts[1])
        if len(parts) == 3 and parts[2].isdigit():
            return parts[1], int(parts[2])
        if len(parts) == 1:
            return None, 1
    return None, 0


@dataclasses.dataclass
class NodeSpec:
    """One static slurmd node. ``cpus`` becomes Sockets=1 CoresPerSocket=cpus."""

    cpus: int = 4
    real_memory: int = 4000
    gres: str | None = "gpu:4"
    features: str | None = None
    extra: str = ""

    def conf_fields(self) -> str:
        parts = [f"CPUs={self.cpus}", "Sockets=1", f"CoresPerSocket={self.cpus}",
                 "ThreadsPerCore=1", f"RealMemory={self.real_memory}"]
        if self.gres:
            parts.append(f"Gres={self.gres}")
        if self.features:
            parts.append(f"Feature={self.features}")
        if self.extra:
            parts.append(self.extra)
        return " ".join(parts)


# ----------------------------------------------------------------------------- cluster


class LocalSlurmCluster:
    """A real slurmctld + N slurmd (one network/mount namespace each) + private munged."""

    def __init__(
        self,
        base_dir: Path,
        cluster_name: str = "devcluster",
        node_count: int = 2,
        *,
        nodes: Sequence[NodeSpec] | None = None,
        node_prefix: str = "node",
        cpus: int = 4,
        real_memory: int = 4000,
        gres: str | None = "gpu:4",
        features: str | None = None,
        partitions: Sequence[str | Mapping[str, str]] | None = None,
        extra_conf: Sequence[str] = (),
        gres_conf_lines: Sequence[str] = (),
        plugin_dirs: Sequence[Path] = (),
        plugstack_lines: Sequence[str] = (),
        slurmctld_env: Mapping[str, str] | None = None,
        slurmd_env: Mapping[str, str] | None = None,
        subnet: int | None = None,
        slurmctld_port: int | None = None,
        slurmd_port: int = 6818,
        fake_gpus: int = 8,
        debug: str = "info",
        command_timeout: float = 30.0,
        install_packages: bool = True,
        accounting: bool = False,
        accounting_enforce: str = "associations,limits,qos",
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.cluster_name = cluster_name
        if nodes is None:
            nodes = [NodeSpec(cpus=cpus, real_memory=real_memory, gres=gres,
                              features=features) for _ in range(node_count)]
        self.node_specs = list(nodes)
        if len(self.node_specs) > 200:
            raise ValueError("at most 200 static nodes")
        self.node_prefix = node_prefix
        self.node_names = [f"{node_prefix}{i}" for i in range(1, len(self.node_specs) + 1)]
        self.partitions = list(partitions) if partitions is not None else [
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"]
        self.extra_conf = list(extra_conf)
        self.gres_conf_lines = list(gres_conf_lines)
        self.plugin_dirs = [Path(p).absolute() for p in plugin_dirs]
        self.plugstack_lines = list(plugstack_lines)
        self.slurmctld_env = dict(slurmctld_env or {})
        self.slurmd_env = dict(slurmd_env or {})
        self._requested_subnet = subnet
        self.subnet: int | None = subnet
        self._requested_ctld_port = slurmctld_port
        self.slurmd_port = slurmd_port
        max_gpus = max([_gres_gpu(s.gres)[1] for s in self.node_specs] + [0])
        self.fake_gpus = max(fake_gpus, max_gpus)
        self.debug = debug
        self.command_timeout = command_timeout
        self.install_packages = install_packages
        #: Accounting mode: a private MariaDB and slurmdbd (see ``enable_accounting``).
        self.accounting = accounting
        self.accounting_enforce = accounting_enforce
        self.db_dir = self.base_dir / "db"
        self.mysql_socket = self.base_dir / "run" / "mariadbd.sock"
        self.mysql_port = 0
        self.slurmdbd_port = 0
        self._db_password = ""
        #: Seconds each accounting step took in ``start`` (``mariadb``, ``slurmdbd``, ...).
        self.timings: dict[str, float] = {}

        # layout
        self.etc_dir = self.base_dir / "etc"
        self.conf_path = self.etc_dir / "slurm.conf"
        self.state_dir = self.base_dir / "state"
        self.spool_dir = self.base_dir / "spool"
        self.log_dir = self.base_dir / "log"
        self.run_dir = self.base_dir / "run"
        self.munge_dir = self.base_dir / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.dev_dir = self.base_dir / "dev"
        self.jobs_dir = self.base_dir / "jobs"

        self._procs: dict[str, subprocess.Popen] = {}
        self._netns: dict[int, str] = {}          # index -> netns name
        self._dynamic: dict[str, int] = {}        # dynamic node name -> netns index
        self._lock_fd: int | None = None
        self._script_seq = 0
        self._bridge_created = False

    # ------------------------------------------------------------------ naming

    @property
    def bridge(self) -> str:
        return f"skbr{self.subnet}"

    @property
    def controller_addr(self) -> str:
        return f"10.77.{self.subnet}.1"

    @property
    def slurmctld_port(self) -> int:
        if self._requested_ctld_port:
            return self._requested_ctld_port
        return 17000 + int(self.subnet or 0)

    def node_addr(self, index: int) -> str:
        return f"10.77.{self.subnet}.{10 + index}"

    def netns_name(self, index: int) -> str:
        return f"skb{self.subnet}-n{index}"

    def _veth(self, index: int) -> str:
        return f"skbv{self.subnet}x{index}"

    @property
    def controller_host(self) -> str:
        return socket.gethostname().split(".")[0]

    def gpu_files(self, count: int) -> str:
        """gres.conf ``File=`` value for the first ``count`` fake GPUs."""
        if count <= 0:
            raise ValueError("count must be positive")
        if count > self.fake_gpus:
            raise ValueError(f"only {self.fake_gpus} fake GPU devices (fake_gpus=)")
        rng = "0" if count == 1 else f"0-{count - 1}"
        return f"{self.dev_dir}/nvidia[{rng}]"

    # ------------------------------------------------------------------ config

    def slurm_conf_text(self) -> str:
        plugin_dir = ":".join([str(p) for p in self.plugin_dirs] + [str(DEBIAN_PLUGIN_DIR)])
        defaults: list[tuple[str, str]] = [
            ("ClusterName", self.cluster_name),
            ("SlurmctldHost", f"{self.controller_host}({self.controller_addr})"),
            ("SlurmctldPort", str(self.slurmctld_port)),
            ("SlurmdPort", str(self.slurmd_port)),
            ("SlurmUser", "root"),
            ("SlurmdUser", "root"),
            ("AuthType", "auth/munge"),
            ("CredType", "cred/munge"),
            ("AuthInfo", f"socket={self.munge_socket}"),
            ("PluginDir", plugin_dir),
            ("PlugStackConfig", str(self.etc_dir / "plugstack.conf")),
            ("StateSaveLocation", str(self.state_dir)),
            ("SlurmdSpoolDir", f"{self.spool_dir}/%n"),
            ("SlurmctldPidFile", str(self.run_dir / "slurmctld.pid")),
            ("SlurmdPidFile", f"{self.run_dir}/slurmd-%n.pid"),
            ("SlurmctldLogFile", str(self.log_dir / "slurmctld.log")),
            ("SlurmdLogFile", f"{self.log_dir}/slurmd-%n.log"),
            ("SlurmctldDebug", self.debug),
            ("SlurmdDebug", self.debug),
            ("ProctrackType", "proctrack/linuxproc"),
            ("TaskPlugin", "task/none"),
            ("JobAcctGatherType", "jobacct_gather/none"),
            ("AccountingStorageType", "accounting_storage/none"),
            ("JobCompType", "jobcomp/none"),
            ("SelectType", "select/cons_tres"),
            ("SelectTypeParameters", "CR_Core_Memory"),
            ("GresTypes", "gpu"),
            ("MpiDefault", "none"),
            ("SwitchType", "switch/none"),
            ("ReturnToService", "2"),
            ("SlurmdParameters", "config_overrides"),
            ("MessageTimeout", "5"),
            ("TCPTimeout", "2"),
            ("SlurmctldTimeout", "30"),
            ("SlurmdTimeout", "30"),
            ("KillWait", "5"),
            ("InactiveLimit", "0"),
            ("MinJobAge", "300"),
            ("Waittime", "0"),
            ("MailProg", "/bin/true"),
            ("DefMemPerCPU", "100"),
            # batch jobs start ~2 s sooner (default delay 3 s); replaced wholesale by an
            # extra_conf SchedulerParameters= line.
            ("SchedulerParameters", "batch_sched_delay=0"),
        ]
        if self.accounting:
            defaults = [kv for kv in defaults if kv[0] != "AccountingStorageType"] + [
                ("AccountingStorageType", "accounting_storage/slurmdbd"),
                ("AccountingStorageHost", "127.0.0.1"),
                ("AccountingStoragePort", str(self.slurmdbd_port)),
                # the munge socket for slurmdbd connections: clients ignore AuthInfo there
                ("AccountingStoragePass", str(self.munge_socket)),
                ("AccountingStorageEnforce", self.accounting_enforce),
                ("AccountingStorageTRES", "gres/gpu"),
            ]
        overrides: dict[str, str] = {}
        repeated: list[str] = []
        for line in self.extra_conf:
            key = line.split("=", 1)[0].strip()
            if key.lower() in _REPEATABLE_KEYS or "=" not in line:
                repeated.append(line)
            else:
                overrides[key.lower()] = line.strip()
        lines = ["# generated by slurm_k8s_devcluster; do not edit"]
        seen = set()
        for key, value in defaults:
            seen.add(key.lower())
            lines.append(overrides.get(key.lower(), f"{key}={value}"))
        lines += [v for k, v in overrides.items() if k not in seen]
        lines.append("")
        for i, (name, spec) in enumerate(zip(self.node_names, self.node_specs), start=1):
            lines.append(f"NodeName={name} NodeAddr={self.node_addr(i)} "
                         f"NodeHostname={name} {spec.conf_fields()} State=UNKNOWN")
        lines += repeated
        lines.append("")
        for p in self.partitions:
            if isinstance(p, Mapping):
                p = " ".join(f"{k}={v}" for k, v in p.items())
                if not p.startswith("PartitionName="):
                    raise ValueError(f"partition mapping must start with PartitionName: {p}")
            lines.append(str(p))
        return "\n".join(lines) + "\n"

    def gres_conf_text(self) -> str:
        lines = ["# generated by slurm_k8s_devcluster"]
        for name, spec in zip(self.node_names, self.node_specs):
            gtype, count = _gres_gpu(spec.gres)
            if count:
                t = f" Type={gtype}" if gtype else ""
                lines.append(f"NodeName={name} Name=gpu{t} File={self.gpu_files(count)}")
        lines += self.gres_conf_lines
        return "\n".join(lines) + "\n"

    def slurmdbd_conf_text(self) -> str:
        """slurmdbd.conf of the accounting mode: MariaDB on 127.0.0.1, munge of the cluster."""
        plugin_dir = ":".join([str(p) for p in self.plugin_dirs] + [str(DEBIAN_PLUGIN_DIR)])
        return "\n".join([
            "# generated by slurm_k8s_devcluster; do not edit",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"DbdHost={self.controller_host}",
            "DbdAddr=127.0.0.1",
            f"DbdPort={self.slurmdbd_port}",
            "SlurmUser=root",
            f"PluginDir={plugin_dir}",
            f"PidFile={self.run_dir / 'slurmdbd.pid'}",
            f"LogFile={self.log_dir / 'slurmdbd.log'}",
            f"DebugLevel={self.debug}",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={self.mysql_port}",
            "StorageUser=slurm",
            f"StoragePass={self._db_password}",
            "StorageLoc=slurm_acct_db",
        ]) + "\n"

    def _write_files(self) -> None:
        for d in (self.etc_dir, self.state_dir, self.spool_dir, self.log_dir,
                  self.run_dir, self.dev_dir):
            d.mkdir(parents=True, exist_ok=True)
        for name in self.node_names:
            (self.spool_dir / name).mkdir(exist_ok=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.jobs_dir, 0o1777)
        (self.jobs_dir / "scripts").mkdir(exist_ok=True)
        os.chmod(self.jobs_dir / "scripts", 0o755)
        if self.accounting and not self.slurmdbd_port:
            self.mysql_port, self.slurmdbd_port = _free_tcp_port(), _free_tcp_port()
            while self.slurmdbd_port == self.mysql_port:
                self.slurmdbd_port = _free_tcp_port()
            self._db_password = os.urandom(12).hex()
        self.conf_path.write_text(self.slurm_conf_text())
        if self.accounting:
            dbd_conf = self.etc_dir / "slurmdbd.conf"
            fd = os.open(dbd_conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.slurmdbd_conf_text())
            os.chmod(dbd_conf, 0o600)  # slurmdbd refuses a readable one (it holds a password)
        (self.etc_dir / "gres.conf").write_text(self.gres_conf_text())
        (self.etc_dir / "plugstack.conf").write_text(
            "\n".join(["# generated by slurm_k8s_devcluster", *self.plugstack_lines]) + "\n")
        (self.etc_dir / "cgroup.conf").write_text(
            "# generated by slurm_k8s_devcluster\nCgroupPlugin=cgroup/v1\n"
            "CgroupAutomount=no\n")
        for k in range(self.fake_gpus):
            dev = self.dev_dir / f"nvidia{k}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
            os.chmod(dev, 0o666)

    # ------------------------------------------------------------------ lock / stale state

    def _lock_path(self, subnet: int) -> Path:
        return LOCK_DIR / f"subnet-{subnet}.lock"

    def _try_lock(self, subnet: int) -> bool:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path(subnet), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        self.subnet = subnet
        return True

    def _acquire_subnet(self) -> None:
        if self._lock_fd is not None:
            return
        if self._requested_subnet is not None:
            if not 1 <= self._requested_subnet <= 254:
                raise ValueError("subnet must be in 1..254")
            if not self._try_lock(self._requested_subnet):
                raise ClusterError(f"subnet 10.77.{self._requested_subnet}.0/24 is held by "
                                   f"another live LocalSlurmCluster ({self._lock_path(self._requested_subnet)})")
            return
        for n in AUTO_SUBNETS:
            if not Path(f"/sys/class/net/skbr{n}").exists() and self._try_lock(n):
                return
        for n in AUTO_SUBNETS:
            if self._try_lock(n):
                return
        raise ClusterError("no free devcluster subnet in 10.77.100-199")

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None
            self.subnet = self._requested_subnet

    def _pid_record(self) -> Path:
        return LOCK_DIR / f"subnet-{self.subnet}.pids.json"

    def recorded_pids(self) -> dict[str, tuple[int, bool]]:
        """Processes a harness (maybe in another, finished process) recorded for this
        cluster's subnet: name -> (pid, still running). Needs an explicit ``subnet``."""
        return read_pid_record(self._pid_record())

    def detach(self) -> None:
        """Leave the daemons running beyond this object (``dev-cluster up``): release the
        subnet lock; ``stop_recorded`` from any process stops them later."""
        self._release_lock()

    def stop_recorded(self) -> None:
        """Stop what a harness in another process started on this cluster's subnet (as
        recorded) and remove its namespaces and bridge. Needs an explicit ``subnet``."""
        self._acquire_subnet()
        try:
            self._cleanup_stale()
        finally:
            self._release_lock()

    def _save_pids(self) -> None:
        rec = {k: {"pid": p.pid, "start": _proc_starttime(p.pid)} for k, p in self._procs.items()}
        self._pid_record().write_text(json.dumps(rec))

    def _cleanup_stale(self) -> None:
        """We hold the subnet lock, so anything left under our names is from a dead harness."""
        rec_path = self._pid_record()
        if rec_path.exists():
            with contextlib.suppress(ValueError, OSError):
                for entry in json.loads(rec_path.read_text()).values():
                    pid, start = int(entry["pid"]), entry.get("start")
                    if start and _proc_starttime(pid) == start:
                        _kill_pid(pid, grace=5)
            rec_path.unlink(missing_ok=True)
        prefix = f"skb{self.subnet}-n"
        res = _sh(["ip", "netns", "list"], check=False)
        for line in res.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(prefix):
                self._delete_netns(name)
        for veth in Path("/sys/class/net").glob(f"skbv{self.subnet}x*"):
            _sh(["ip", "link", "del", veth.name], check=False)
        if Path(f"/sys/class/net/{self.bridge}").exists():
            _sh(["ip", "link", "del", self.bridge], check=False)

    # ------------------------------------------------------------------ processes

    def _popen(self, key: str, cmd: list[str], env: Mapping[str, str] | None = None,
               **kw) -> subprocess.Popen:
        out = open(self.log_dir / f"{key.replace(':', '-')}.out", "ab")
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=dict(env or self._daemon_env()),
                                    start_new_session=True, close_fds=True, **kw)
        finally:
            out.close()
        self._procs[key] = proc
        self._save_pids()
        return proc

    def _daemon_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "PYTEST_"))}
        env["SLURM_CONF"] = str(self.conf_path)
        env.update(extra or {})
        return env

    def _stop_proc(self, key: str, grace: float = 10.0) -> None:
        proc = self._procs.pop(key, None)
        if proc is not None:
            _kill_pid(proc.pid, grace=grace, proc=proc)
            if self._lock_fd is not None:
                self._save_pids()

    # ------------------------------------------------------------------ munge

    def _start_munged(self, timeout: float) -> None:
        import pwd
        try:
            pw = pwd.getpwnam("munge")
        except KeyError as exc:
            raise ClusterError("no 'munge' user: is the munge package installed?") from exc
        self.munge_dir.mkdir(parents=True, exist_ok=True)
        # munged refuses a socket dir that is not a+x, and files not owned by its user.
        os.chown(self.munge_dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.munge_dir, 0o755)
        key = self.munge_dir / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(1024))
        os.chown(key, pw.pw_uid, pw.pw_gid)
        os.chmod(key, 0o400)
        self.munge_socket.unlink(missing_ok=True)
        cmd = ["munged", "--foreground", f"--key-file={key}", f"--socket={self.munge_socket}",
               f"--pid-file={self.munge_dir / 'munged.pid'}",
               f"--log-file={self.log_dir / 'munged.log'}",
               f"--seed-file={self.munge_dir / 'munged.seed'}", "--num-threads=4"]
        proc = self._popen("munged", cmd, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(f"munged exited rc={proc.returncode}")
            if self.munge_socket.exists():
                break
            time.sleep(0.05)
        else:
            raise ClusterError("munged socket did not appear")
        enc = subprocess.run(["munge", "-n", f"--socket={self.munge_socket}"], check=False,
                             capture_output=True, timeout=10)
        dec = subprocess.run(["unmunge", f"--socket={self.munge_socket}"], check=False, input=enc.stdout,
                             capture_output=True, timeout=10)
        if enc.returncode or dec.returncode or b"Success" not in dec.stdout:
            raise ClusterError(f"munge round trip failed: {enc.stderr!r} {dec.stderr!r}")

    # ------------------------------------------------------------------ accounting

    def enable_accounting(self, enforce: str = "associations,limits,qos") -> None:
        """Turn the accounting mode on before ``start`` (for clusters built by a factory
        such as ``make_bridge_cluster``): a private MariaDB (datadir ``base_dir/db``,
        socket in ``base_dir/run``, a free port on 127.0.0.1) and slurmdbd (a free port),
        ``AccountingStorageType=accounting_storage/slurmdbd``,
        ``AccountingStorageEnforce=<enforce>`` and ``AccountingStorageTRES=gres/gpu``
        in slurm.conf, and the cluster added with sacctmgr before slurmctld starts. Users
        other than root need an association (``sacctmgr add user ...``) to submit."""
        if self._procs:
            raise ClusterError("enable_accounting() must come before start()")
        self.accounting = True
        self.accounting_enforce = enforce

    def _mariadb(self, sql: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return subprocess.run(["mariadb", "--no-defaults", f"--socket={self.mysql_socket}",
                               "-u", "root", "-e", sql], check=False, capture_output=True,
                              text=True, timeout=timeout)

    def _start_mariadb(self, timeout: float) -> None:
        started = time.monotonic()
        if not (self.db_dir / "mysql").is_dir():
            self.db_dir.mkdir(parents=True, exist_ok=True)
            res = subprocess.run(
                ["mariadb-install-db", "--no-defaults", f"--datadir={self.db_dir}",
                 "--user=root", "--auth-root-authentication-method=socket", "--skip-test-db"],
                check=False, capture_output=True, text=True, timeout=max(30, timeout))
            (self.log_dir / "mariadb-install-db.log").write_text(res.stdout + res.stderr)
            if res.returncode != 0:
                raise AccountingUnavailable(
                    f"mariadb-install-db --datadir={self.db_dir} failed (rc={res.returncode}):"
                    f" {(res.stderr or res.stdout).strip()[-1500:]}")
        self.timings["mariadb_install_db"] = time.monotonic() - started
        self.mysql_socket.unlink(missing_ok=True)
        # Only what a test database needs: loopback TCP on its own port, its own socket,
        # small buffers, no binary log, no fsync per commit (nothing here must survive a
        # machine crash).
        proc = self._popen("mariadbd", [
            "mariadbd", "--no-defaults", f"--datadir={self.db_dir}",
            f"--socket={self.mysql_socket}", f"--port={self.mysql_port}",
            "--bind-address=127.0.0.1", "--skip-name-resolve", "--user=root",
            f"--pid-file={self.run_dir / 'mariadbd.pid'}",
            f"--log-error={self.log_dir / 'mariadbd.log'}",
            "--innodb-buffer-pool-size=128M", "--innodb-lock-wait-timeout=900",
            "--innodb-flush-log-at-trx-commit=0",
            "--skip-log-bin", "--max-connections=50"])
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AccountingUnavailable(
                    f"mariadbd exited rc={proc.returncode}:\n"
                    + _tail(self.log_dir / "mariadbd.log", 20))
            if self.mysql_socket.exists():
                res = self._mariadb("SELECT 1")
                if res.returncode == 0:
                    break
                last = res.stderr.strip()
            time.sleep(0.1)
        else:
            raise AccountingUnavailable(f"mariadbd did not answer within {timeout:g}s: {last}\n"
                                        + _tail(self.log_dir / "mariadbd.log", 20))
        pw = self._db_password
        res = self._mariadb(
            f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{pw}'; "
            f"ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{pw}'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")
        if res.returncode != 0:
            raise AccountingUnavailable(f"creating the database user failed: {res.stderr.strip()}")
        self.timings["mariadb"] = time.monotonic() - started

    def _start_slurmdbd(self, timeout: float) -> None:
        started = time.monotonic()
        proc = self._popen("slurmdbd", ["slurmdbd", "-D"])
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AccountingUnavailable(
                    f"slurmdbd exited rc={proc.returncode}:\n"
                    + _tail(self.log_dir / "slurmdbd.log", 20) + "\n"
                    + _tail(self.log_dir / "slurmdbd.out", 10))
            res = self.run(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"],
                           timeout=10)
            last = (res.stderr or res.stdout).strip()
            if res.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise AccountingUnavailable(f"slurmdbd did not answer within {timeout:g}s: {last}\n"
                                        + _tail(self.log_dir / "slurmdbd.log", 20))
        self.timings["slurmdbd"] = time.monotonic() - started
        if self.cluster_name not in res.stdout.split():
            self.sacctmgr("add", "cluster", self.cluster_name)
        self.timings["add_cluster"] = time.monotonic() - started - self.timings["slurmdbd"]

    def sacctmgr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``sacctmgr -i ARGS`` (no confirmation prompt) against this cluster's slurmdbd,
        e.g. ``sacctmgr("add", "qos", "gpu1", "MaxJobsPerUser=1")``."""
        res = self.run(["sacctmgr", "-i", *args])
        if check and res.returncode != 0:
            raise ClusterError(f"sacctmgr {shlex.join(args)} failed rc={res.returncode}: "
                               f"{(res.stderr or res.stdout).strip()}")
        return res

    # ------------------------------------------------------------------ network

    def _create_bridge(self) -> None:
        _sh(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._bridge_created = True
        _sh(["ip", "addr", "add", f"{self.controller_addr}/24", "dev", self.bridge])
        _sh(["ip", "link", "set", self.bridge, "up"])

    def _create_netns(self, index: int) -> str:
        if not 1 <= index <= 240:
            raise ValueError("netns index must be in 1..240")
        if index in self._netns:
            raise ClusterError(f"netns index {index} already in use ({self._netns[index]})")
        ns, veth, peer = self.netns_name(index), self._veth(index), f"skbp{self.subnet}x{index}"
        _sh(["ip", "netns", "add", ns])
        self._netns[index] = ns
        _sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer])
        _sh(["ip", "link", "set", peer, "netns", ns])
        _sh(["ip", "link", "set", veth, "master", self.bridge])
        _sh(["ip", "link", "set", veth, "up"])
        _sh(["ip", "-n", ns, "link", "set", peer, "name", "eth0"])
        _sh(["ip", "-n", ns, "addr", "add", f"{self.node_addr(index)}/24", "dev", "eth0"])
        _sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        _sh(["ip", "-n", ns, "route", "add", "default", "via", self.controller_addr])
        return ns

    def _netns_pids(self, ns: str) -> list[int]:
        res = _sh(["ip", "netns", "pids", ns], check=False)
        return [int(x) for x in res.stdout.split() if x.isdigit()]

    def _delete_netns(self, ns: str) -> None:
        # Processes in a namespace named by us were started by our slurmd (slurmstepd,
        # job tasks): they are ours to end.
        for _ in range(3):
            pids = self._netns_pids(ns)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
                time.sleep(0.05)
        _sh(["ip", "netns", "del", ns], check=False)

    def _remove_netns_index(self, index: int) -> None:
        ns = self._netns.pop(index, None)
        if ns is not None:
            self._delete_netns(ns)
        _sh(["ip", "link", "del", self._veth(index)], check=False)

    # ------------------------------------------------------------------ daemons

    def _slurmd_cmd(self, index: int, node_name: str, slurmd_args: list[str]) -> list[str]:
        ns_path = f"/var/run/netns/{self.netns_name(index)}"
        # Own UTS namespace too: `hostname` in a job prints the node name, as on a cluster.
        # A private /tmp per node (PMIx needs it); what lives under /tmp and the node must
        # still see (base_dir, and the Python environment the plugins embed, e.g. a clone
        # in /tmp) is bind-mounted back at the same path: a directory fd opened before the
        # tmpfs mount keeps the original, and /proc/self/fd/N is bound without
        # canonicalising (mount(8) would otherwise resolve it to the new empty directory).
        keep = _tmp_tops([self.base_dir, Path(sys.prefix), *map(Path, sys.path)])
        opens = "".join(f"exec {3 + i}<{shlex.quote(str(p))}; " for i, p in enumerate(keep))
        binds = "".join(f"mkdir -p {shlex.quote(str(p))}; "
                        f"mount --no-canonicalize --bind /proc/self/fd/{3 + i} "
                        f"{shlex.quote(str(p))}; " for i, p in enumerate(keep))
        script = (
            "set -e; echo " + shlex.quote(node_name) + " > /proc/sys/kernel/hostname; "
            + opens + "mount -t tmpfs -o mode=1777 tmpfs /tmp; " + binds +
            "cd /; exec " + shlex.join(slurmd_args))
        return ["nsenter", f"--net={ns_path}", "unshare", "--mount", "--uts", "--propagation",
                "private", "--", "/bin/sh", "-c", script]

    def _start_slurmctld(self, timeout: float) -> None:
        self._popen("slurmctld", ["slurmctld", "-D", "-f", str(self.conf_path)],
                    env=self._daemon_env(self.slurmctld_env))
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = self._procs["slurmctld"]
            if proc.poll() is not None:
                raise ClusterError(f"slurmctld exited rc={proc.returncode}")
            res = self.run(["scontrol", "ping"], timeout=10)
            last = res.stdout + res.stderr
            if res.returncode == 0 and "UP" in res.stdout:
                return
            time.sleep(0.2)
        raise ClusterError(f"slurmctld did not answer ping within {timeout}s: {last.strip()}")

    def start_slurmd(self, name: str) -> int:
        """(Re)start the slurmd of static node ``name``; returns its pid."""
        index = self.node_names.index(name) + 1
        if index not in self._netns:
            self._create_netns(index)
        key = f"slurmd:{name}"
        if key in self._procs and self._procs[key].poll() is None:
            raise ClusterError(f"slurmd {name} already running")
        args = ["slurmd", "-D", "-N", name, "-f", str(self.conf_path)]
        proc = self._popen(key, self._slurmd_cmd(index, name, args),
                           env=self._daemon_env(self.slurmd_env))
        return proc.pid

    def start_dynamic_slurmd(self, name: str, conf_line: str, netns_index: int,
                             wait: bool = True, timeout: float = 30.0) -> int:
        """Start ``slurmd -Z`` (a dynamic node, needs ``MaxNodeCount``) in its own netns.

        A ``Gres=gpu:K`` in ``conf_line`` gets a gres.conf line with K fake GPU devices.
        Returns the slurmd pid; with ``wait`` returns once the node is registered.
        """
        if netns_index <= len(self.node_names):
            raise ValueError(f"netns_index {netns_index} is used by a static node; "
                             f"use > {len(self.node_names)}")
        if name in self.node_names or name in self._dynamic:
            raise ClusterError(f"node {name} already exists in this harness")
        m = re.search(r"(?:^|\s)Gres=(\S+)", conf_line)
        gtype, count = _gres_gpu(m.group(1) if m else None)
        if count:
            gres_conf = self.etc_dir / "gres.conf"
            line = (f"NodeName={name} Name=gpu{' Type=' + gtype if gtype else ''} "
                    f"File={self.gpu_files(count)}")
            if line not in gres_conf.read_text().splitlines():
                with gres_conf.open("a") as fh:
                    fh.write(line + "\n")
        (self.spool_dir / name).mkdir(parents=True, exist_ok=True)
        self._create_netns(netns_index)
        self._dynamic[name] = netns_index
        args = ["slurmd", "-D", "-Z", "-N", name, "--conf", conf_line, "-f", str(self.conf_path)]
        proc = self._popen(f"slurmd:{name}", self._slurmd_cmd(netns_index, name, args),
                           env=self._daemon_env(self.slurmd_env))
        if wait:
            self.wait_nodes([name], timeout=timeout)
        return proc.pid

    def stop_slurmd(self, name: str, grace: float = 10.0, delete_node: bool = False) -> None:
        """Stop one slurmd (and its job processes); a dynamic node also loses its netns."""
        self._stop_proc(f"slurmd:{name}", grace=grace)
        if name in self._dynamic:
            self._remove_netns_index(self._dynamic.pop(name))
            if delete_node:
                self.scontrol("delete", f"nodename={name}")
        elif name in self.node_names:
            index = self.node_names.index(name) + 1
            ns = self._netns.get(index)
            if ns:
                for pid in self._netns_pids(ns):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    def node_states(self) -> dict[str, str]:
        res = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], timeout=10)
        out: dict[str, str] = {}
        for line in res.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                out[parts[0]] = parts[1]
        return out

    def wait_nodes(self, names: Sequence[str] | None = None, states: Iterable[str] = ("idle",),
                   timeout: float = 60.0) -> dict[str, str]:
        names = list(self.node_names if names is None else names)
        want = set(states)
        deadline = time.monotonic() + timeout
        current: dict[str, str] = {}
        while time.monotonic() < deadline:
            for key, proc in self._procs.items():
                if key.startswith("slurmd:") and key[7:] in names and proc.poll() is not None:
                    raise ClusterError(f"{key} exited rc={proc.returncode}\n" + self.logs(30))
            current = self.node_states()
            if all(current.get(n) in want for n in names):
                return current
            time.sleep(0.25)
        raise ClusterError(f"nodes not {sorted(want)} within {timeout}s: {current}\n"
                           + self.logs(30))

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0, keep_on_failure: bool = False) -> LocalSlurmCluster:
        """Start munged, slurmctld and every static slurmd; return when all nodes are idle."""
        if os.geteuid() != 0:
            raise ClusterError("LocalSlurmCluster needs root (netns, bridge, mknod)")
        if self._procs:
            raise ClusterError("cluster already started")
        if self.install_packages:
            ensure_slurm_packages()
        elif _missing_prerequisites():
            raise ClusterError(f"missing: {', '.join(_missing_prerequisites())}")
        if self.accounting:
            if self.install_packages:
                try:
                    ensure_accounting_packages()
                except ClusterError as exc:
                    raise AccountingUnavailable(str(exc)) from exc
            elif _missing_accounting():
                raise AccountingUnavailable(f"missing: {', '.join(_missing_accounting())}")
        self._check_base_dir_access()
        deadline = time.monotonic() + timeout
        try:
            self._acquire_subnet()
            self._cleanup_stale()
            self._write_files()
            self._start_munged(timeout=min(15, timeout))
            if self.accounting:
                self._start_mariadb(timeout=max(5, min(60, deadline - time.monotonic())))
                self._start_slurmdbd(timeout=max(5, min(60, deadline - time.monotonic())))
            self._create_bridge()
            for i in range(1, len(self.node_names) + 1):
                self._create_netns(i)
            self._start_slurmctld(timeout=max(5, deadline - time.monotonic()))
            for name in self.node_names:
                self.start_slurmd(name)
            if self.node_names:
                self.wait_nodes(timeout=max(5, deadline - time.monotonic()))
        except BaseException as exc:
            logs = self.logs(40)
            if not keep_on_failure:
                self.stop()
            if isinstance(exc, AccountingUnavailable):
                raise
            if isinstance(exc, ClusterError):
                raise ClusterError(f"{exc}\n--- logs ---\n{logs}") from exc
            if isinstance(exc, Exception):
                raise ClusterError(f"cluster start failed: {exc!r}\n--- logs ---\n{logs}") from exc
            raise
        return self

    def _check_base_dir_access(self) -> None:
        """munged (user munge) and job owners must traverse to base_dir."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        for parent in self.base_dir.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                raise ClusterError(
                    f"{parent} is not world-traversable (mode {oct(mode & 0o777)}): munged "
                    f"and non-root job owners could not reach {self.base_dir}; choose a "
                    f"base_dir such as /tmp/<name> or /var/tmp/<name>")

    def stop(self, grace: float = 10.0) -> None:
        """Stop everything started here (by pid) and remove netns, veths and the bridge."""
        for key in [k for k in self._procs if k.startswith("slurmd:")]:
            self._stop_proc(key, grace=grace)
        self._dynamic.clear()
        for index in list(self._netns):
            self._remove_netns_index(index)
        self._stop_proc("slurmctld", grace=grace)
        self._stop_proc("slurmdbd", grace=grace)   # before its database
        self._stop_proc("mariadbd", grace=grace)
        for key in list(self._procs):
            self._stop_proc(key, grace=grace)
        if self._bridge_created or (self.subnet is not None and self._lock_fd is not None
                                    and Path(f"/sys/class/net/{self.bridge}").exists()):
            _sh(["ip", "link", "del", self.bridge], check=False)
            self._bridge_created = False
        if self._lock_fd is not None:
            self._pid_record().unlink(missing_ok=True)
        self._release_lock()

    def restart_slurmctld(self, timeout: float = 60.0, wait_nodes: bool = True,
                          crash: bool = False, down_s: float = 0.0) -> int:
        """Stop and start slurmctld only (state in StateSaveLocation is kept). ``crash``
        kills it with SIGKILL (no state save on the way out); ``down_s`` keeps it down
        that long before the new start."""
        if crash:
            proc = self._procs.pop("slurmctld", None)
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                self._save_pids()
        else:
            self._stop_proc("slurmctld")
        time.sleep(down_s)
        self._start_slurmctld(timeout=timeout)
        if wait_nodes and self.node_names:
            self.wait_nodes(states=("idle", "mix", "alloc", "drain", "drng"), timeout=timeout)
        return self.slurmctld_pid()

    def __enter__(self) -> LocalSlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def slurmctld_pid(self) -> int:
        proc = self._procs.get("slurmctld")
        if proc is None or proc.poll() is not None:
            raise ClusterError("slurmctld is not running")
        return proc.pid

    def slurmctld_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.slurmctld_pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise ClusterError("no VmRSS in /proc status")

    def pids(self) -> dict[str, int]:
        """Processes started by the harness, by role (``munged``, ``slurmctld``, ``slurmd:X``)."""
        return {k: p.pid for k, p in self._procs.items() if p.poll() is None}

    def netns_names(self) -> list[str]:
        return list(self._netns.values())

    # ------------------------------------------------------------------ clients

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for client commands (SLURM_CONF set, outer SLURM_* removed)."""
        return self._daemon_env(extra)

    def run(self, cmd: Sequence[str], user: str | None = None, check: bool = False,
            input: str | None = None, timeout: float | None = None,
            cwd: Path | None = None, env: Mapping[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        cmd = list(cmd)
        if user is not None:
            extra = [f"{k}={v}" for k, v in (env or {}).items()]
            cmd = ["runuser", "-u", user, "--", "env", f"SLURM_CONF={self.conf_path}",
                   *extra, *cmd]
        try:
            res = subprocess.run(cmd, check=False, capture_output=True, text=True, input=input,
                                 env=self.env(env), cwd=self._cwd(cwd),
                                 timeout=timeout or self.command_timeout)
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"timed out after {exc.timeout}s: {shlex.join(cmd)}") from exc
        if check and res.returncode != 0:
            raise ClusterError(f"{shlex.join(cmd)} failed rc={res.returncode}: "
                               f"{res.stderr.strip()}")
        return res

    def _cwd(self, cwd: Path | None) -> str | None:
        if cwd is not None:
            return str(cwd)
        return str(self.jobs_dir) if self.jobs_dir.is_dir() else None

    def write_script(self, script: str) -> Path:
        self._script_seq += 1
        path = self.jobs_dir / "scripts" / f"job-{os.getpid()}-{self._script_seq}.sh"
        if not script.startswith("#!"):
            script = "#!/bin/bash\n" + script
        path.write_text(script)
        os.chmod(path, 0o755)
        return path

    def sbatch(self, args: Sequence[str] = (), script: str | None = None,
               user: str | None = None, **kw) -> subprocess.CompletedProcess:
        cmd = ["sbatch", *args]
        if script is not None:
            cmd.append(str(self.write_script(script)))
        return self.run(cmd, user=user, **kw)

    def submit(self, args: Sequence[str] = (), script: str | None = None,
               user: str | None = None, **kw) -> int:
        """sbatch --parsable; returns the job id, raises ClusterError with sbatch's stderr."""
        res = self.sbatch(["--parsable", *args], script=script, user=user, **kw)
        first = res.stdout.strip().split(";")[0]
        if res.returncode != 0 or not first.isdigit():
            raise ClusterError(f"sbatch failed rc={res.returncode}: {res.stderr.strip()}")
        return int(first)

    def scontrol(self, *args: str, check: bool = False, user: str | None = None
                 ) -> subprocess.CompletedProcess:
        return self.run(["scontrol", *args], check=check, user=user)

    def show_job(self, job_id: int) -> dict[str, str]:
        res = self.run(["scontrol", "show", "job", "-o", str(job_id)])
        line = res.stdout.strip().splitlines()[0] if res.stdout.strip() else ""
        if res.returncode != 0 or not line:
            raise ClusterError(f"scontrol show job {job_id}: {res.stderr.strip()}")
        return parse_key_values(line)

    def show_node(self, name: str) -> dict[str, str]:
        res = self.run(["scontrol", "show", "node", "-o", name])
        if res.returncode != 0 or not res.stdout.strip():
            raise ClusterError(f"scontrol show node {name}: {res.stderr.strip()}")
        return parse_key_values(res.stdout.strip().splitlines()[0])

    def wait_job_state(self, job_id: int, states: str | Iterable[str] = tuple(_TERMINAL_STATES),
                       timeout: float = 60.0, interval: float = 0.2) -> str:
        """Poll until JobState is one of ``states``; return it. Raises on timeout."""
        want = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.show_job(job_id)
            state = info.get("JobState", "")
            if state in want:
                return state
            time.sleep(interval)
        raise ClusterError(f"job {job_id} not in {sorted(want)} within {timeout}s: "
                           f"JobState={info.get('JobState')} Reason={info.get('Reason')}\n"
                           + self.logs(20))

    def job_output(self, job_id: int) -> str:
        """Contents of the job's StdOut file ('' when not there yet)."""
        path = self.show_job(job_id).get("StdOut", "")
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    def ensure_user(self, name: str = "bridgeuser", uid: int | None = None) -> tuple[int, int]:
        import pwd
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            cmd = ["useradd", "--no-create-home", "--user-group", "--shell", "/bin/bash"]
            if uid is not None:
                cmd += ["--uid", str(uid)]
            _sh([*cmd, name])
            pw = pwd.getpwnam(name)
        return pw.pw_uid, pw.pw_gid

    def logs(self, lines: int = 40) -> str:
        """Tail of every log under base_dir/log."""
        return tail_logs(self.log_dir, lines)


__all__ = [
    "ACCOUNTING_PACKAGES",
    "DEBIAN_PLUGIN_DIR",
    "AccountingUnavailable",
    "ClusterError",
    "LocalSlurmCluster",
    "NodeSpec",
    "ensure_accounting_packages",
    "ensure_slurm_packages",
    "parse_key_values",
]
