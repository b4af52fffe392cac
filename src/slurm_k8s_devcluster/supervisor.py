"""Process supervision for the harness: every daemon a development cluster runs goes through here.

A ``Supervisor`` starts a process in its own session, stdin from /dev/null and stdout and
stderr appended to its log file, and lists it in a JSON pid record (pid and the kernel's
start time). ``wait_until`` is the one bounded wait for "ready". Stopping is by pid:
SIGTERM, a grace period, SIGKILL. A pid read back from a record is signalled only while
its start time still matches, so a pid the kernel has since given to another process is
never killed. ``tail``/``tail_logs`` quote the logs in errors.

Used by slurm.py (munged, slurmctld, slurmd, MariaDB, slurmdbd), k8s.py (etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, kwok), kubelet.py (containerd,
kubelet) and dev.py (the bridge daemon's record). Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from slurm_k8s_devcluster.errors import ClusterError

T = TypeVar("T")


# ----------------------------------------------------------------------------- one pid


def proc_starttime(pid: int) -> str | None:
    """The process's start time (``/proc/PID/stat`` field 22, clock ticks since boot), or
    None when there is no such process. With the pid it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
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


def kill_pid(pid: int, grace: float, proc: subprocess.Popen | None = None) -> None:
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
            elif not pid_alive(pid):
                return
            time.sleep(0.05)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)


# ----------------------------------------------------------------------------- pid records


def read_pid_record(path: Path) -> dict[str, tuple[int, bool]]:
    """A harness pid record: name -> (pid, the same process still running). Keys starting
    with ``_`` are the owner's notes, not processes."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, tuple[int, bool]] = {}
    for name, entry in entries.items():
        if name.startswith("_"):
            continue
        pid, start = int(entry["pid"]), entry.get("start")
        out[name] = (pid, bool(start) and proc_starttime(pid) == start and pid_alive(pid))
    return out


def kill_recorded(path: Path, *, owner: Path | None = None, grace: float = 5.0) -> None:
    """Kill the processes a pid record lists (a dead harness's daemons) that are still the
    same processes (start time); with ``owner``, only those whose command line names that
    directory. An unreadable record kills nothing; the record itself is left in place."""
    with contextlib.suppress(ValueError, OSError):
        for name, entry in json.loads(path.read_text()).items():
            if name.startswith("_"):
                continue
            pid, start = int(entry["pid"]), entry.get("start")
            if not start or proc_starttime(pid) != start:
                continue
            if owner is not None:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if str(owner).encode() not in cmdline:
                    continue
            kill_pid(pid, grace=grace)


# ----------------------------------------------------------------------------- logs and waits


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a (log) file; '' when it cannot be read."""
    try:
        data = path.read_bytes()[-200_000:].decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def tail_logs(log_dir: Path, lines: int = 40) -> str:
    """The tail of every log file in ``log_dir``, each under a ``==> name <==`` header."""
    chunks = []
    if log_dir.exists():
        for path in sorted(log_dir.iterdir()):
            text = tail(path, lines)
            if text.strip():
                chunks.append(f"==> {path.name} <==\n{text}")
    return "\n".join(chunks)


def wait_until(ready: Callable[[], T | None], timeout: float, *, interval: float,
               timed_out: Callable[[BaseException | None], BaseException],
               check: Callable[[], None] | None = None,
               retry_on: type[BaseException] | tuple[type[BaseException], ...] = ()) -> T:
    """Poll ``ready()`` every ``interval`` seconds until it returns something truthy, and
    return that. ``check()`` runs before every poll and may raise to give up early (a
    daemon died). Exceptions of the ``retry_on`` types count as "not yet"; others
    propagate. After ``timeout`` seconds raises ``timed_out(last retried exception)``.
    ``ready`` is polled at least once."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        if check is not None:
            check()
        try:
            value = ready()
        except retry_on as exc:
            last_exc = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            raise timed_out(last_exc)
        time.sleep(interval)


# ----------------------------------------------------------------------------- supervisor


class Supervisor:
    """The processes one harness object runs, by name.

    Each is started in a new session with its output appended to
    ``log_dir/<name><log_suffix>`` (``:`` in a name becomes ``-``); with ``header`` a line
    ``==== HH:MM:SS <command>`` goes first. The pid record ``record()`` (a callable: the
    path may depend on a subnet chosen later) is rewritten at every start and ``save()``,
    with ``record_notes()`` (keys starting with ``_``) added.
    """

    def __init__(self, log_dir: Path, record: Callable[[], Path], *, log_suffix: str = ".log",
                 header: bool = False,
                 record_notes: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.log_dir = log_dir
        self.record = record
        self.log_suffix = log_suffix
        self.header = header
        self.record_notes = record_notes
        self.procs: dict[str, subprocess.Popen] = {}

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name.replace(':', '-')}{self.log_suffix}"

    def start(self, name: str, cmd: list[str], **popen_kw: Any) -> subprocess.Popen:
        """Start ``cmd`` as ``name`` (``popen_kw``: env, cwd, user, ...) and record it."""
        with open(self.log_path(name), "ab") as out:
            if self.header:
                out.write(f"\n==== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
                out.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    close_fds=True, **popen_kw)
        self.procs[name] = proc
        self.save()
        return proc

    def save(self) -> None:
        """Write the pid record: name -> pid and start time, plus the notes."""
        rec: dict[str, Any] = {k: {"pid": p.pid, "start": proc_starttime(p.pid)}
                               for k, p in self.procs.items()}
        if self.record_notes is not None:
            rec.update(self.record_notes())
        self.record().write_text(json.dumps(rec))

    def recorded(self) -> dict[str, tuple[int, bool]]:
        """The pid record as a harness (maybe in another process) left it."""
        return read_pid_record(self.record())

    def stop(self, name: str, grace: float = 10.0) -> bool:
        """SIGTERM ``name``, SIGKILL after ``grace`` seconds; False when not started here."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return False
        kill_pid(proc.pid, grace=grace, proc=proc)
        return True

    def crash(self, name: str) -> bool:
        """SIGKILL ``name`` at once (a crash: no clean shutdown) and reap it."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return True

    def pids(self) -> dict[str, int]:
        """Running processes started here, by name."""
        return {k: p.pid for k, p in self.procs.items() if p.poll() is None}

    def running(self) -> bool:
        """Something was started and all of it still runs."""
        return bool(self.procs) and all(p.poll() is None for p in self.procs.values())

    def exited(self, names: Iterable[str] | None = None) -> tuple[str, int] | None:
        """The first of ``names`` (default: all) started here that has exited, with its
        exit status; None while all run."""
        for name in (self.procs if names is None else names):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                return name, proc.returncode
        return None

    def exit_check(self, name: str,
                   error: Callable[[int], BaseException]) -> Callable[[], None]:
        """A ``wait_until`` check: raises ``error(exit status)`` once ``name`` has exited."""
        def check() -> None:
            dead = self.exited([name])
            if dead is not None:
                raise error(dead[1])
        return check

    def check_alive(self, error: Callable[[str], BaseException] = ClusterError,
                    lines: int = 30) -> None:
        """Raise ``error`` quoting the log tail of the first process that has exited."""
        dead = self.exited()
        if dead is not None:
            name, rc = dead
            raise error(f"{name} exited rc={rc}\n==> {self.log_path(name).name} <==\n"
                        f"{tail(self.log_path(name), lines)}")


class Supervised:
    """``pids()``, ``running()`` and ``logs()`` of a harness object whose processes a
    ``Supervisor`` (``self._sup``) runs, with their logs in ``self.log_dir``."""

    _sup: Supervisor
    log_dir: Path

    @property
    def _procs(self) -> dict[str, subprocess.Popen]:
        """The processes started here, by name."""
        return self._sup.procs

    def pids(self) -> dict[str, int]:
        """Running processes started here, by name (``munged``, ``slurmctld``,
        ``slurmd:X``; ``etcd``, ``kube-apiserver``, ...; ``containerd``, ``kubelet``)."""
        return self._sup.pids()

    def running(self) -> bool:
        """Something was started here and all of it still runs."""
        return self._sup.running()

    def logs(self, lines: int = 40) -> str:
        """Tail of every log under ``log_dir``."""
        return tail_logs(self.log_dir, lines)


__all__ = [
    "Supervised",
    "Supervisor",
    "kill_pid",
    "kill_recorded",
    "pid_alive",
    "proc_starttime",
    "read_pid_record",
    "tail",
    "tail_logs",
    "wait_until",
]


def run_command(cmd: Sequence[str], *, error: type[Exception], timeout: float,
                check: bool = True, input_text: str | None = None,
                env: Mapping[str, str] | None = None,
                cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to its end, output captured, stdin closed unless ``input_text`` is given.
    A missing program, a timeout and (with ``check``) a non-zero exit raise ``error`` with
    the command line and the end of its output."""
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                             check=False, input=input_text, env=env, cwd=cwd,
                             stdin=None if input_text is not None else subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise error(f"{cmd[0]}: not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise error(f"timed out after {timeout:.0f}s: {shlex.join(cmd)}") from exc
    if check and res.returncode != 0:
        raise error(f"{shlex.join(cmd)} failed (rc={res.returncode}): "
                    f"{(res.stderr or res.stdout).strip()[-2000:]}")
    return res
