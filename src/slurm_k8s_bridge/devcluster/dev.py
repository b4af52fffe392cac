"""``slurm-k8s-bridge dev-cluster up|status|down``: the whole bridge on this machine.

``up`` starts, under DIR: munged, slurmctld with both plugins and two slurmd (partition
``gpu`` bridged to the ``h100`` shape, partition ``cpu`` not bridged), a real Kubernetes
control plane with N KWOK GPU nodes of shape ``h100``, the daemon's namespace and RBAC,
and the bridge daemon running as its ServiceAccount. It returns when everything is ready
and writes ``DIR/env.sh``. Run again, it starts only what is not running. ``down`` stops
exactly what ``up`` started (by recorded pid) and nothing else.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..config import job_namespaces, parse_config
from ..k8s_access import required_rbac
from .bridge import BridgeCluster, load_example_config, make_bridge_cluster
from .k8s import LocalKubeCluster, free_ports
from .slurm import LocalSlurmCluster, _kill_pid, _proc_starttime, read_pid_record

#: subnet of the dev cluster's network namespaces (tests use 100-199)
DEV_SUBNET = 90
DAEMON_SA = ("slurm-k8s-bridge", "slurm-k8s-bridge")  # namespace, name


def dev_config() -> dict[str, Any]:
    """The example configuration, partition gpu bridged to the h100 shape only."""
    data = copy.deepcopy(load_example_config())
    data.setdefault("partitions", {}).setdefault("gpu", {})
    data["partitions"]["gpu"] = dict(data["partitions"]["gpu"] or {}, shapes=["h100"])
    return data


def _shape_nodes(config: dict[str, Any]) -> dict[str, Any]:
    h100 = config["shapes"]["h100"]
    return {"gpus": int(h100["gpus"]), "cpus": int(h100["cpus"]), "memory": str(h100["memory"]),
            "gpu_product": h100["gpu_product"]}


class DevCluster:
    def __init__(self, base_dir: Path, kwok_nodes: int = 4,
                 daemon_args: tuple[str, ...] = ()) -> None:
        self.base = Path(base_dir).absolute()
        self.kwok_nodes = kwok_nodes
        self.daemon_args = daemon_args
        self.config_data = dev_config()
        self.k8s_dir = self.base / "k8s"
        self.daemon_pid_file = self.base / "run" / "daemon.json"
        self.daemon_log = self.base / "log" / "daemon.log"
        self.sa_kubeconfig = self.base / "daemon.kubeconfig"
        self.env_sh = self.base / "env.sh"

    # -- components --------------------------------------------------------------------
    def _slurm(self) -> BridgeCluster:
        return make_bridge_cluster(self.base, "dev", config_data=self.config_data,
                                   subnet=DEV_SUBNET)

    def _kube(self) -> LocalKubeCluster:
        return LocalKubeCluster(self.k8s_dir, kwok_nodes=self.kwok_nodes,
                                node_shape=_shape_nodes(self.config_data))

    def _slurm_handle(self) -> LocalSlurmCluster:
        """The Slurm side as recorded on disk (for status and down: builds nothing)."""
        return LocalSlurmCluster(self.base, cluster_name="dev", subnet=DEV_SUBNET,
                                 install_packages=False)

    def components(self) -> dict[str, tuple[int, bool]]:
        """Every recorded component: name -> (pid, running)."""
        out = dict(self._slurm_handle().recorded_pids())
        out.update(self._kube().recorded_pids())
        out.update(read_pid_record(self.daemon_pid_file))
        return out

    @staticmethod
    def _all_alive(record: dict[str, tuple[int, bool]]) -> bool:
        return bool(record) and all(alive for _, alive in record.values())

    # -- up ----------------------------------------------------------------------------
    def up(self) -> None:
        if os.geteuid() != 0:
            raise SystemExit("dev-cluster needs root (network namespaces, Slurm daemons)")
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        (self.base / "log").mkdir(exist_ok=True)
        (self.base / "run").mkdir(exist_ok=True)
        if self._all_alive(self._slurm_handle().recorded_pids()):
            print("slurm: already running")
        else:
            bridge = self._slurm()
            bridge.cluster.start(timeout=120)
            bridge.cluster.detach()  # removes what a dead earlier run left
            bridge.cluster.ensure_user("bridgeuser")
            print("slurm: started (slurmctld with job_submit/k8s + spank_k8s, 2 slurmd)")
        kube = self._kube()
        if self._all_alive(kube.recorded_pids()):
            print("kubernetes: already running")
        else:
            kube.start(timeout=180)
            print(f"kubernetes: started ({self.kwok_nodes} KWOK h100 nodes)")
            self._apply_rbac(kube)
        if not self.sa_kubeconfig.exists():
            self._apply_rbac(kube)
        if self._all_alive(read_pid_record(self.daemon_pid_file)):
            print("bridge daemon: already running")
        else:
            self._start_daemon()
            print("bridge daemon: started")
        self._write_env(kube)
        print(f"ready: source {self.env_sh}")

    def _apply_rbac(self, kube: LocalKubeCluster) -> None:
        namespaces = job_namespaces(parse_config(self.config_data))
        for ns in (*namespaces, DAEMON_SA[0]):
            kube.ensure_namespace(ns)
        kube.apply_as_admin(required_rbac(namespaces, daemon_namespace=DAEMON_SA[0]))
        kube.kubeconfig_for_service_account(DAEMON_SA[0], DAEMON_SA[1], self.sa_kubeconfig)

    def _start_daemon(self) -> None:
        config_path = self.base / "k8s-bridge.yaml"
        port = free_ports(1)[0]
        env = dict(os.environ, SLURM_CONF=str(self.base / "etc" / "slurm.conf"))
        log = open(self.daemon_log, "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "slurm_k8s_bridge.cli", "run", "--config", str(config_path),
             "--kubeconfig", str(self.sa_kubeconfig), "--metrics-port", str(port),
             "--poll-interval", "1", *self.daemon_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
        self.daemon_pid_file.write_text(json.dumps(
            {"bridge-daemon": {"pid": proc.pid, "start": _proc_starttime(proc.pid),
                               "metrics_port": port}}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded: ready when /healthz answers
            if proc.poll() is not None:
                raise SystemExit(f"bridge daemon exited:\n{self.daemon_log.read_text()[-3000:]}")
            try:
                import urllib.request
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.3)
        raise SystemExit("bridge daemon did not become ready within 60 s")

    def metrics_port(self) -> int:
        return int(json.loads(self.daemon_pid_file.read_text())["bridge-daemon"]["metrics_port"])

    def daemon_pid(self) -> int:
        return int(json.loads(self.daemon_pid_file.read_text())["bridge-daemon"]["pid"])

    def _write_env(self, kube: LocalKubeCluster) -> None:
        bin_dir = kube.bin_dir or Path()
        self.env_sh.write_text("\n".join([
            "# slurm-k8s-bridge dev cluster: source me",
            f"export SLURM_CONF={self.base / 'etc' / 'slurm.conf'}",
            f"export KUBECONFIG={kube.kubeconfig}",
            f"export SLURM_K8S_BRIDGE_CONFIG={self.base / 'k8s-bridge.yaml'}",
            # squeue with the Kubernetes status of bridged jobs (their Comment)
            'export SQUEUE_FORMAT2="JobID:8 ,Partition:6 ,Name:14 ,UserName:10 ,State:9 ,'
            'TimeUsed:8 ,NumNodes:5 ,ReasonList:16 ,Comment:70"',
            f"export PATH={bin_dir}:{Path(sys.executable).parent}:$PATH",
            "",
        ]))

    # -- status / down -----------------------------------------------------------------
    def status(self) -> int:
        comps = self.components()
        if not comps:
            print(f"no dev cluster under {self.base}")
            return 1
        for name, (pid, alive) in sorted(comps.items()):
            print(f"{name:28} pid {pid:<8} {'running' if alive else 'NOT RUNNING'}")
        return 0 if all(alive for _, alive in comps.values()) else 1

    def down(self) -> None:
        for pid, alive in read_pid_record(self.daemon_pid_file).values():
            if alive:
                _kill_pid(pid, grace=10)
        self.daemon_pid_file.unlink(missing_ok=True)
        self._kube().stop_recorded()
        self._slurm_handle().stop_recorded()
        print("dev cluster stopped")
