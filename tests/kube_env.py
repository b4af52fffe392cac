"""The environment the Kubernetes tiers (tests/k8s, tests/e2e) share, as plain helpers.

The fixtures that use them are in ``tests/k8s/conftest.py`` and ``tests/e2e/conftest.py``:

* ``skip`` / ``require_root``: skips whose reason is printed (``-rs`` is not needed to see it);
* ``scratch_dir`` / ``remove_scratch_dir``: a fresh directory per environment, kept (and
  named) when SKB_KEEP_CLUSTER_DIR is set;
* ``k8s_bin_dir`` (a session fixture, imported by both tiers' conftest.py): the control
  plane's binaries via ``ensure_k8s_binaries()``, or every test that needs them skipped;
* ``DaemonRbac``: the namespaces and RBAC given to the daemon's ServiceAccount;
* ``DaemonProcess``: the bridge daemon (``python -m slurm_k8s_bridge.cli run``) as a
  subprocess logging to a file, started, killed and restarted by tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from slurm_k8s_devcluster.supervisor import wait_until

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
#: the ordinary user that bridge environments create and submit as
BRIDGE_USER = "bridgeuser"
#: what the daemon logs once it is up (counted to tell a restart from the previous start)
DAEMON_STARTED = '"msg": "started"'


T = TypeVar("T")


def skip(reason: str) -> NoReturn:
    print(f"SKIP: {reason}")
    pytest.skip(reason)


def require_root(reason: str) -> None:
    if os.geteuid() != 0:
        skip(reason)


def scratch_dir(prefix: str, *, parent: str = "/tmp", mode: int = 0o700) -> Path:
    """A fresh directory ``{parent}/skb-{prefix}-XXXX``; ``mode=0o755`` where munged and
    non-root job owners must reach it (a Slurm cluster's base directory)."""
    path = Path(tempfile.mkdtemp(prefix=f"skb-{prefix}-", dir=parent))
    os.chmod(path, mode)
    return path


def remove_scratch_dir(path: Path) -> None:
    if os.environ.get("SKB_KEEP_CLUSTER_DIR"):
        print(f"kept {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


def built_or_skip(what: str, ensure: Callable[[], Path],
                  errors: tuple[type[BaseException], ...]) -> Path:
    """``ensure()``'s folder of binaries (built once, then cached by version), or a skip
    that prints why ``what`` is unavailable."""
    try:
        return ensure()
    except (*errors, OSError) as exc:
        skip(f"{what} unavailable: {exc}")


def find_k8s_binaries() -> Path:
    """The control plane's binaries (built once, ~7 min cold, then cached), or a skip."""
    from slurm_k8s_devcluster.k8s import KubeClusterError, ensure_k8s_binaries
    return built_or_skip("Kubernetes binaries", ensure_k8s_binaries, (KubeClusterError,))


@pytest.fixture(scope="session")
def k8s_bin_dir() -> Path:
    return find_k8s_binaries()


@dataclass(frozen=True)
class DaemonRbac:
    """What the daemon's ServiceAccount (slurm-k8s-bridge/slurm-k8s-bridge) is given:
    ``required_rbac(job_namespaces, native_gpu_usage=...)``; ``other_namespaces`` are only
    created (the tests put other people's objects there)."""

    job_namespaces: tuple[str, ...]
    native_gpu_usage: bool = False
    other_namespaces: tuple[str, ...] = ()

    @classmethod
    def of_config(cls, config_path: Path, other_namespaces: Sequence[str] = ()) -> DaemonRbac:
        """As an administrator sets it up for a bridge configuration file."""
        from slurm_k8s_bridge.core.config import job_namespaces, load_config
        config = load_config(str(config_path))
        return cls(tuple(job_namespaces(config)), bool(config.native_gpu_usage),
                   tuple(other_namespaces))

    def apply(self, kube: Any, kubeconfig: Path) -> Path:
        """Namespaces, RBAC (as admin) and the ServiceAccount's kubeconfig at ``kubeconfig``."""
        from slurm_k8s_bridge.kube.rbac import (
            DAEMON_NAMESPACE,
            SERVICE_ACCOUNT,
            required_rbac,
        )
        for namespace in (*self.job_namespaces, DAEMON_NAMESPACE, *self.other_namespaces):
            kube.ensure_namespace(namespace)
        kube.apply_as_admin(required_rbac(list(self.job_namespaces),
                                          native_gpu_usage=self.native_gpu_usage))
        path: Path = kube.kubeconfig_for_service_account(DAEMON_NAMESPACE, SERVICE_ACCOUNT, kubeconfig)
        return path


class DaemonProcess:
    """``python -m slurm_k8s_bridge.cli run --config CONFIG --kubeconfig KUBECONFIG ARGS``
    in its own session, stdout and stderr appended to ``log`` (each start and end marked)."""

    def __init__(self, config_path: Path, kubeconfig: Path, *, env: Mapping[str, str], cwd: Path,
                 log: Path, args: Sequence[str] = ()) -> None:
        self.config_path, self.kubeconfig = Path(config_path), Path(kubeconfig)
        self.env, self.cwd, self.log, self.args = dict(env), Path(cwd), Path(log), list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def cmd(self) -> list[str]:
        return [str(PYTHON), "-m", "slurm_k8s_bridge.cli", "run", "--config", str(self.config_path),
                "--kubeconfig", str(self.kubeconfig), *self.args]

    def starts(self) -> int:
        """How many times the daemon has logged that it started."""
        return self.log.read_text(errors="replace").count(DAEMON_STARTED) if self.log.exists() else 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exited(self) -> int | None:
        """The return code once the last started daemon has exited, else None."""
        return None if self.proc is None else self.proc.poll()

    def tail(self, lines: int = 40) -> str:
        from slurm_k8s_devcluster.supervisor import tail
        return tail(self.log, lines)

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> None:
        """Start it; with ``wait``, return once it has logged that it started (or fail)."""
        assert not self.running(), "the daemon is already running"
        before = self.starts()
        with open(self.log, "ab") as out:
            out.write(f"==== {time.strftime('%H:%M:%S')} start {' '.join(self.cmd)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=self.env, cwd=str(self.cwd))
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while self.starts() <= before:
            if self.exited() is not None:
                pytest.fail(f"the daemon exited rc={self.exited()}\n--- daemon log (tail) ---\n"
                            f"{self.tail()}")
            if time.monotonic() >= deadline:
                pytest.fail(f"timed out after {timeout:.0f}s waiting for the daemon to start\n"
                            f"--- daemon log (tail) ---\n{self.tail()}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` and wait (SIGKILL after 15 s); nothing when it is not running."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        with open(self.log, "ab") as out:
            out.write(f"==== {time.strftime('%H:%M:%S')} daemon pid {proc.pid} ended by "
                      f"signal {sig}\n".encode())


def poll(check: Callable[[], T], *, timeout: float, what: str, interval: float,
         alive: Callable[[], None], diagnostics: Callable[[], str],
         transient: tuple[type[BaseException], ...]) -> T:
    """Call ``check`` until it returns something truthy and return that. Before each try
    ``alive()`` fails the test if what is under test died; a ``transient`` exception counts
    as not yet. After ``timeout`` seconds the test fails naming ``what``, the last answer and
    ``diagnostics()``."""
    last: list[Any] = [None]

    def ready() -> T:
        try:
            last[0] = check()
        except transient as exc:
            last[0] = exc
            raise
        return last[0]

    def timed_out(_: BaseException | None) -> BaseException:
        return pytest.fail.Exception(
            f"timed out after {timeout:.0f}s waiting for {what}; last: {last[0]!r}\n{diagnostics()}")

    return wait_until(ready, timeout, interval=interval, timed_out=timed_out, check=alive,
                      retry_on=transient)


def diagnostics_on_failure(request: pytest.FixtureRequest,
                           diagnostics: Callable[[], str]) -> Iterator[None]:
    """The body of an autouse fixture: when the test fails, ``diagnostics()`` (daemon log
    tail, squeue, ...) goes to the real stderr, past pytest's capture."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed and sys.__stderr__ is not None:
        sys.__stderr__.write(f"\n{diagnostics()}\n")


# -- preemption with --signal (tests/k8s/test_daemon.py, test_kueue.py) -------------------
#: a batch script that writes "checkpoint <epoch>" on SIGUSR1 and, run again after a requeue
#: (SLURM_RESTART_COUNT > 0), says "resumed" and ends at once; submit with --open-mode=append
CHECKPOINT_SCRIPT = ('if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then echo "resumed"; exit 0; fi; '
                     "trap 'echo \"checkpoint $(date +%s)\"' USR1; "
                     "srun sleep 120 & wait; wait")


def checkpoint_then_requeue(env: Any, job: int, out: Path, grace: int,
                            during_grace: Callable[[], None] = lambda: None) -> tuple[int, float]:
    """The job's checkpoint line (its USR1 trap ran), the job still RUNNING (and
    ``during_grace``'s checks) within its grace, then Restarts=1 no sooner than ``grace``
    seconds after the signal: (signal time, seconds from signal to requeue seen)."""
    line = env.wait(lambda: next((ln for ln in (out.read_text() if out.exists() else "")
                                  .splitlines() if ln.startswith("checkpoint ")), None),
                    30, f"the checkpoint line of job {job} (its USR1 trap)")
    signalled = int(line.split()[1])
    env.ensure(env.state(job) == "RUNNING", f"job {job} {env.state(job)} within its grace")
    during_grace()
    env.wait(lambda: env.cluster.show_job(job).get("Restarts") == "1", 60,
             f"job {job} requeued after its grace")
    waited = time.time() - signalled
    env.ensure(waited >= grace - 1, f"requeued {waited:.1f}s after the signal: the {grace} s "
               "grace was not given")
    return signalled, waited


@contextlib.contextmanager
def started_access(api_client: Any, namespaces: Sequence[str] = ("slurm-jobs",)) -> Iterator[Any]:
    """A started ``KubeAccess`` (the daemon's view) whose watch cache has synced; stopped after."""
    from slurm_k8s_bridge.kube.access import KubeAccess
    kube = KubeAccess(api_client, cluster_name="slurm", namespaces=list(namespaces),
                      watch_timeout_seconds=20)
    kube.start()
    try:
        assert kube.wait_synced(60), f"watch cache never synced: {kube.sync_errors()}"
        yield kube
    finally:
        kube.stop()
