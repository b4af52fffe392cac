"""A real Slurm cluster on one Linux machine: private munged, slurmctld, several slurmd.

Every slurmd runs in its own network namespace (veth pair to a Linux bridge that carries
the controller's address) and its own mount namespace with a private ``/tmp``, so several
"nodes" coexist on one host exactly like separate machines as far as Slurm can tell.
Nothing is mocked: these are Debian's Slurm 22.05 daemons and client commands.

Everything the cluster owns lives under ``base_dir`` (configuration, state, spool, logs,
munge key and socket, fake GPU device nodes). Every wait is bounded and every process is
tracked by pid, so ``stop()`` removes exactly what ``start()`` created.

This module runs the daemons and the client commands (``LocalSlurmCluster``); the rest of
the cluster is in slurm_conf.py (the configuration files), slurm_netns.py (names,
addresses, namespaces), slurm_accounting.py (MariaDB, slurmdbd), slurm_packages.py (the
Debian packages); processes go through supervisor.py, the subnet lock through subnets.py.

Requires root (namespaces, bridges, mknod). Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from slurm_k8s_bridge.slurm.records import parse_key_values
from slurm_k8s_devcluster.errors import AccountingUnavailable, ClusterError
from slurm_k8s_devcluster.slurm_accounting import SlurmAccounting
from slurm_k8s_devcluster.slurm_conf import NodeSpec, SlurmConfFiles, _gres_gpu
from slurm_k8s_devcluster.slurm_netns import _sh
from slurm_k8s_devcluster.slurm_packages import (
    ACCOUNTING_PACKAGES,
    DEBIAN_PLUGIN_DIR,
    _missing_accounting,
    _missing_prerequisites,
    ensure_accounting_packages,
    ensure_slurm_packages,
)
from slurm_k8s_devcluster.subnets import LOCK_DIR, SubnetLock
from slurm_k8s_devcluster.supervisor import (
    Supervised,
    Supervisor,
    kill_recorded,
    run_command,
    wait_until,
)

# Moved to slurm_packages.py and supervisor.py; still importable from here.
from slurm_k8s_devcluster.slurm_packages import (  # noqa: F401
    ACCOUNTING_PROGRAMS,
    REQUIRED_PROGRAMS,
    SLURM_HEADER,
    SLURM_PACKAGES,
)
from slurm_k8s_devcluster.supervisor import (  # noqa: F401
    kill_pid as _kill_pid,
    pid_alive as _pid_alive,
    proc_starttime as _proc_starttime,
    read_pid_record,
    tail as _tail,
    tail_logs,
)

AUTO_SUBNETS = range(100, 200)

_TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED"}


# ----------------------------------------------------------------------------- cluster


class LocalSlurmCluster(SlurmConfFiles, SlurmAccounting, Supervised):
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

        self._sup = Supervisor(self.log_dir, self._pid_record, log_suffix=".out")
        self._netns: dict[int, str] = {}          # index -> netns name
        self._dynamic: dict[str, int] = {}        # dynamic node name -> netns index
        self._lock = SubnetLock("subnet-", auto=AUTO_SUBNETS, bridge_prefix="skbr",
                                network="10.77", owner="LocalSlurmCluster", kind="devcluster",
                                error=ClusterError)
        self._script_seq = 0
        self._bridge_created = False

    # ------------------------------------------------------------------ lock / stale state

    def _acquire_subnet(self) -> None:
        self.subnet = self._lock.acquire(self._requested_subnet)

    def _release_lock(self) -> None:
        if self._lock.held:
            self._lock.release()
            self.subnet = self._requested_subnet

    def _pid_record(self) -> Path:
        return LOCK_DIR / f"subnet-{self.subnet}.pids.json"

    def recorded_pids(self) -> dict[str, tuple[int, bool]]:
        """Processes a harness (maybe in another, finished process) recorded for this
        cluster's subnet: name -> (pid, still running). Needs an explicit ``subnet``."""
        return self._sup.recorded()

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

    def _cleanup_stale(self) -> None:
        """We hold the subnet lock, so anything left under our names is from a dead harness."""
        rec_path = self._pid_record()
        if rec_path.exists():
            kill_recorded(rec_path)
            rec_path.unlink(missing_ok=True)
        self._remove_stale_network()

    # ------------------------------------------------------------------ processes

    def _popen(self, key: str, cmd: list[str], env: Mapping[str, str] | None = None,
               **kw) -> subprocess.Popen:
        return self._sup.start(key, cmd, env=dict(env or self._daemon_env()), **kw)

    def _daemon_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "PYTEST_"))}
        env["SLURM_CONF"] = str(self.conf_path)
        env.update(extra or {})
        return env

    def _stop_proc(self, key: str, grace: float = 10.0) -> None:
        if self._sup.stop(key, grace=grace) and self._lock.held:
            self._sup.save()

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
        self._popen("munged", cmd, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        wait_until(self.munge_socket.exists, timeout, interval=0.05,
                   check=self._sup.exit_check(
                       "munged", lambda rc: ClusterError(f"munged exited rc={rc}")),
                   timed_out=lambda _: ClusterError("munged socket did not appear"))
        enc = subprocess.run(["munge", "-n", f"--socket={self.munge_socket}"], check=False,
                             capture_output=True, timeout=10)
        dec = subprocess.run(["unmunge", f"--socket={self.munge_socket}"], check=False, input=enc.stdout,
                             capture_output=True, timeout=10)
        if enc.returncode or dec.returncode or b"Success" not in dec.stdout:
            raise ClusterError(f"munge round trip failed: {enc.stderr!r} {dec.stderr!r}")

    # ------------------------------------------------------------------ daemons

    def _start_slurmctld(self, timeout: float) -> None:
        self._popen("slurmctld", ["slurmctld", "-D", "-f", str(self.conf_path)],
                    env=self._daemon_env(self.slurmctld_env))
        last = ""

        def pings() -> bool:
            nonlocal last
            res = self.run(["scontrol", "ping"], timeout=10)
            last = res.stdout + res.stderr
            return res.returncode == 0 and "UP" in res.stdout

        wait_until(pings, timeout, interval=0.2,
                   check=self._sup.exit_check(
                       "slurmctld", lambda rc: ClusterError(f"slurmctld exited rc={rc}")),
                   timed_out=lambda _: ClusterError(
                       f"slurmctld did not answer ping within {timeout}s: {last.strip()}"))

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
        current: dict[str, str] = {}

        def slurmd_alive() -> None:
            dead = self._sup.exited([k for k in self._sup.procs
                                     if k.startswith("slurmd:") and k[7:] in names])
            if dead is not None:
                raise ClusterError(f"{dead[0]} exited rc={dead[1]}\n" + self.logs(30))

        def reached() -> bool:
            nonlocal current
            current = self.node_states()
            return all(current.get(n) in want for n in names)

        wait_until(reached, timeout, interval=0.25, check=slurmd_alive,
                   timed_out=lambda _: ClusterError(
                       f"nodes not {sorted(want)} within {timeout}s: {current}\n"
                       + self.logs(30)))
        return current

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
        if self._bridge_created or (self.subnet is not None and self._lock.held
                                    and Path(f"/sys/class/net/{self.bridge}").exists()):
            _sh(["ip", "link", "del", self.bridge], check=False)
            self._bridge_created = False
        if self._lock.held:
            self._pid_record().unlink(missing_ok=True)
        self._release_lock()

    def restart_slurmctld(self, timeout: float = 60.0, wait_nodes: bool = True,
                          crash: bool = False, down_s: float = 0.0) -> int:
        """Stop and start slurmctld only (state in StateSaveLocation is kept). ``crash``
        kills it with SIGKILL (no state save on the way out); ``down_s`` keeps it down
        that long before the new start."""
        if crash:
            if self._sup.crash("slurmctld"):
                self._sup.save()
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
        return run_command(cmd, error=ClusterError, timeout=timeout or self.command_timeout,
                           check=check, input_text=input, env=self.env(env),
                           cwd=self._cwd(cwd))

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
