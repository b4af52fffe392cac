"""The files a LocalSlurmCluster writes before any daemon starts.

slurm.conf (harness defaults, ``extra_conf`` lines replacing or adding to them, the static
nodes and partitions), gres.conf (fake GPUs: ``/dev/null``-like character devices under
``base_dir/dev``), plugstack.conf, cgroup.conf and, in accounting mode, slurmdbd.conf with
the ports and database password chosen here. ``NodeSpec`` describes one static node.
``SlurmConfFiles`` is a base of ``LocalSlurmCluster`` (slurm.py), which sets the
attributes declared here; nothing in this module runs a process.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from slurm_k8s_devcluster.slurm_netns import SlurmNetwork
from slurm_k8s_devcluster.slurm_packages import DEBIAN_PLUGIN_DIR
from slurm_k8s_devcluster.subnets import free_ports

# Keys of slurm.conf lines that may appear many times; every other key given in
# ``extra_conf`` replaces the harness default of the same key.
_REPEATABLE_KEYS = {"nodename", "partitionname", "nodeset", "downnodes", "frontendname",
                    "slurmctldhost", "include"}


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


class SlurmConfFiles(SlurmNetwork):
    """slurm.conf, gres.conf, slurmdbd.conf, ... of one cluster (a base of LocalSlurmCluster)."""

    # set by LocalSlurmCluster.__init__
    cluster_name: str
    node_specs: list[NodeSpec]
    node_names: list[str]
    partitions: list[str | Mapping[str, str]]
    extra_conf: list[str]
    gres_conf_lines: list[str]
    plugin_dirs: list[Path]
    plugstack_lines: list[str]
    slurmd_port: int
    fake_gpus: int
    debug: str
    accounting: bool
    accounting_enforce: str
    mysql_port: int
    slurmdbd_port: int
    _db_password: str
    etc_dir: Path
    conf_path: Path
    state_dir: Path
    spool_dir: Path
    log_dir: Path
    run_dir: Path
    munge_socket: Path
    dev_dir: Path
    jobs_dir: Path

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
            self.mysql_port, self.slurmdbd_port = free_ports(1)[0], free_ports(1)[0]
            while self.slurmdbd_port == self.mysql_port:
                self.slurmdbd_port = free_ports(1)[0]
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
