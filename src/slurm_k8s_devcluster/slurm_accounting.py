"""The accounting mode of a LocalSlurmCluster: a private MariaDB and slurmdbd, and sacctmgr.

``LocalSlurmCluster(accounting=True)`` (or ``enable_accounting()`` before ``start``) runs
mariadbd (datadir ``base_dir/db``, its socket in ``base_dir/run``, a free port on
127.0.0.1) and slurmdbd before slurmctld, and adds the cluster with sacctmgr. No
system-wide database is touched. ``SlurmAccounting`` is a base of ``LocalSlurmCluster``
(slurm.py), which sets the attributes declared here; slurmdbd.conf is written with the
other files (slurm_conf.py), the packages come from slurm_packages.py.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slurm_k8s_devcluster.errors import AccountingUnavailable, ClusterError
from slurm_k8s_devcluster.supervisor import Supervisor, tail, wait_until


class SlurmAccounting:
    """MariaDB + slurmdbd of one cluster (a base of LocalSlurmCluster)."""

    # set by LocalSlurmCluster.__init__
    cluster_name: str
    accounting: bool
    accounting_enforce: str
    db_dir: Path
    mysql_socket: Path
    mysql_port: int
    _db_password: str
    log_dir: Path
    run_dir: Path
    timings: dict[str, float]
    _sup: Supervisor

    if TYPE_CHECKING:
        def _popen(self, key: str, cmd: list[str], env: Mapping[str, str] | None = None,
                   **kw: Any) -> subprocess.Popen: ...

        def run(self, cmd: Sequence[str], user: str | None = None, check: bool = False,
                input: str | None = None, timeout: float | None = None,
                cwd: Path | None = None, env: Mapping[str, str] | None = None
                ) -> subprocess.CompletedProcess: ...

    def enable_accounting(self, enforce: str = "associations,limits,qos") -> None:
        """Turn the accounting mode on before ``start`` (for clusters built by a factory
        such as ``make_bridge_cluster``): a private MariaDB (datadir ``base_dir/db``,
        socket in ``base_dir/run``, a free port on 127.0.0.1) and slurmdbd (a free port),
        ``AccountingStorageType=accounting_storage/slurmdbd``,
        ``AccountingStorageEnforce=<enforce>`` and ``AccountingStorageTRES=gres/gpu``
        in slurm.conf, and the cluster added with sacctmgr before slurmctld starts. Users
        other than root need an association (``sacctmgr add user ...``) to submit."""
        if self._sup.procs:
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
        self._popen("mariadbd", [
            "mariadbd", "--no-defaults", f"--datadir={self.db_dir}",
            f"--socket={self.mysql_socket}", f"--port={self.mysql_port}",
            "--bind-address=127.0.0.1", "--skip-name-resolve", "--user=root",
            f"--pid-file={self.run_dir / 'mariadbd.pid'}",
            f"--log-error={self.log_dir / 'mariadbd.log'}",
            "--innodb-buffer-pool-size=128M", "--innodb-lock-wait-timeout=900",
            "--innodb-flush-log-at-trx-commit=0",
            "--skip-log-bin", "--max-connections=50"])
        last = ""

        def answers() -> bool:
            nonlocal last
            if not self.mysql_socket.exists():
                return False
            res = self._mariadb("SELECT 1")
            last = res.stderr.strip()
            return res.returncode == 0

        died = self._sup.exit_check("mariadbd", lambda rc: AccountingUnavailable(
            f"mariadbd exited rc={rc}:\n" + tail(self.log_dir / "mariadbd.log", 20)))
        wait_until(answers, timeout, interval=0.1, check=died, timed_out=lambda _: (
            AccountingUnavailable(f"mariadbd did not answer within {timeout:g}s: {last}\n"
                                  + tail(self.log_dir / "mariadbd.log", 20))))
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
        self._popen("slurmdbd", ["slurmdbd", "-D"])
        last = ""

        def answers() -> subprocess.CompletedProcess | None:
            nonlocal last
            res = self.run(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"],
                           timeout=10)
            last = (res.stderr or res.stdout).strip()
            return res if res.returncode == 0 else None

        died = self._sup.exit_check("slurmdbd", lambda rc: AccountingUnavailable(
            f"slurmdbd exited rc={rc}:\n" + tail(self.log_dir / "slurmdbd.log", 20) + "\n"
            + tail(self.log_dir / "slurmdbd.out", 10)))
        res = wait_until(answers, timeout, interval=0.2, check=died, timed_out=lambda _: (
            AccountingUnavailable(f"slurmdbd did not answer within {timeout:g}s: {last}\n"
                                  + tail(self.log_dir / "slurmdbd.log", 20))))
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
