"""``slurm-k8s-bridge dev-cluster up|status|down``: the whole bridge on this machine.

``up`` starts, under DIR: munged, slurmctld with both plugins and two slurmd (partition
``gpu`` bridged to the ``h100`` shape, partition ``cpu`` not bridged), a real Kubernetes
control plane with N KWOK GPU nodes of shape ``h100``, the daemon's namespace and RBAC,
and the bridge daemon running as its ServiceAccount. It returns when everything is ready
and writes ``DIR/env.sh``. Run again, it starts only what is not running. ``down`` stops
exactly what ``up`` started (by recorded pid) and nothing else.

With ``real_node`` (``--real-node``) it also starts a real kubelet node (containerd, runc,
a CNI bridge; ``slurm_k8s_devcluster/kubelet.py``) that advertises the h100 shape's ``nvidia.com/gpu``
and runs the worker image (``containers/``, built with podman and imported), so bridged
jobs really run: each pod runs munged and ``slurmd -Z`` against this slurmctld
(configless, ``conf_server``), with the cluster's munge key from a Secret and the shared
directory ``DIR/shared`` (``SLURM_K8S_SHARED_DIR``) mounted at the same path.

With ``kueue`` (``--kueue``) it also runs a real Kueue controller manager
(``slurm_k8s_devcluster/kueue.py``) with a ClusterQueue ``gpu`` holding every KWOK GPU as
quota and a LocalQueue ``gpu`` in the job namespaces, and partition ``gpu`` uses
``gang: kueue``: Kueue admits its jobs.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from slurm_k8s_bridge.core.config import job_namespaces, parse_config
from slurm_k8s_bridge.kube.rbac import required_rbac
from slurm_k8s_devcluster.bridge import BridgeCluster, load_example_config, make_bridge_cluster
from slurm_k8s_devcluster.k8s import LocalKubeCluster, free_ports
from slurm_k8s_devcluster.kueue import LocalKueue, gpu_queues
from slurm_k8s_devcluster.slurm import LocalSlurmCluster
from slurm_k8s_devcluster.supervisor import kill_pid, proc_starttime, read_pid_record

#: subnet of the dev cluster's network namespaces (tests use 100-199)
DEV_SUBNET = 90
DAEMON_SA = ("slurm-k8s-bridge", "slurm-k8s-bridge")  # namespace, name
#: the worker image a real node runs (scripts/build-images.sh)
WORKER_IMAGE = "localhost/slurm-k8s-bridge-worker:bookworm"
MUNGE_SECRET = "slurm-munge-key"
REAL_NODE = "real-0"
#: the worker writes its GPUs there (File= lines, or Count= without device files); the
#: cluster's gres.conf includes it, so the host needs the file too (empty)
POD_GRES_CONF = Path("/etc/slurm-k8s-bridge/pod-gres.conf")
#: where the worker image has the SPANK plugin and its configuration (containers/worker)
IMAGE_SPANK = ("/opt/slurm-k8s-bridge/plugins/spank_k8s.so", "/etc/slurm/k8s-bridge.yaml")


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
                 daemon_args: tuple[str, ...] = (), real_node: bool = False,
                 worker_image: str = WORKER_IMAGE, subnet: int = DEV_SUBNET,
                 kueue: bool = False) -> None:
        self.base = Path(base_dir).absolute()
        self.kwok_nodes = kwok_nodes
        self.daemon_args = daemon_args
        self.real_node = real_node
        self.worker_image = worker_image
        self.subnet = subnet
        self.shared_dir = self.base / "shared"
        self._real: Any = None      # the RealNode this process started
        self.config_data = dev_config()
        self.kueue = kueue
        if kueue:
            self.config_data["partitions"]["gpu"].update(gang="kueue", queue="gpu")
        if real_node:
            handle = self._slurm_handle()
            self.config_data.update(
                worker_image=worker_image,
                conf_server=f"{handle.controller_addr}:{handle.slurmctld_port}",
                munge_key_secret=MUNGE_SECRET,
                # the shared directory, and the directories the host's slurm.conf names
                # for slurmd (munge socket, spool, logs, pid files): a site keeps these
                # paths alike on every node; here the pods see the host's
                # (PluginDir must exist there too: an empty one, the image has its own)
                shared_mounts=[{"host_path": str(self.shared_dir)},
                               *({"host_path": str(self.base / d)}
                                 for d in ("munge", "spool", "log", "run")),
                               {"host_path": str(self.base / "pod-plugins"),
                                "path": str(self.base / "plugins"), "read_only": True}],
                allowed_images=sorted({*(self.config_data.get("allowed_images") or []),
                                       worker_image.rsplit(":", 1)[0]}))
        self.k8s_dir = self.base / "k8s"
        self.daemon_pid_file = self.base / "run" / "daemon.json"
        self.daemon_log = self.base / "log" / "daemon.log"
        self.sa_kubeconfig = self.base / "daemon.kubeconfig"
        self.env_sh = self.base / "env.sh"

    # -- components --------------------------------------------------------------------
    def _slurm(self) -> BridgeCluster:
        return make_bridge_cluster(self.base, "dev", config_data=self.config_data,
                                   subnet=self.subnet,
                                   image_spank=IMAGE_SPANK if self.real_node else None,
                                   extra_gres_lines=[f"Include {POD_GRES_CONF}"]
                                   if self.real_node else None)

    def _kube(self) -> LocalKubeCluster:
        return LocalKubeCluster(self.k8s_dir, kwok_nodes=self.kwok_nodes,
                                node_shape=_shape_nodes(self.config_data))

    def _slurm_handle(self) -> LocalSlurmCluster:
        """The Slurm side as recorded on disk (for status and down: builds nothing)."""
        return LocalSlurmCluster(self.base, cluster_name="dev", subnet=self.subnet,
                                 install_packages=False)

    def _node(self, kube: LocalKubeCluster) -> Any:
        from slurm_k8s_devcluster.kubelet import RealNode
        shape = _shape_nodes(self.config_data)
        return RealNode(kube, REAL_NODE, gpus=shape["gpus"], gpu_product=shape["gpu_product"])

    def components(self) -> dict[str, tuple[int, bool]]:
        """Every recorded component: name -> (pid, running)."""
        out = dict(self._slurm_handle().recorded_pids())
        kube = self._kube()
        out.update(kube.recorded_pids())
        out.update({f"kueue/{k}": v for k, v in LocalKueue(kube).recorded_pids().items()})
        if self.real_node or (kube.base_dir / "nodes" / REAL_NODE).exists():
            out.update({f"{REAL_NODE}/{k}": v for k, v in self._node(kube).recorded_pids().items()})
        out.update(read_pid_record(self.daemon_pid_file))
        return out

    def _slurm_here(self) -> bool:
        """The Slurm daemons recorded for this subnet are alive *and* are this directory's
        (the record is kept per subnet, so another directory's cluster may hold it)."""
        record = self._slurm_handle().recorded_pids()
        if not self._all_alive(record):
            return False
        marker = str(self.base).encode()
        for pid, _ in record.values():
            try:
                if marker not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return False
            except OSError:
                return False
        return True

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
        if self._slurm_here():
            print("slurm: already running")
        else:
            bridge = self._slurm()
            if self.real_node and not POD_GRES_CONF.exists():
                POD_GRES_CONF.parent.mkdir(parents=True, exist_ok=True)
                POD_GRES_CONF.write_text("# GPUs of a bridged pod (written in each worker pod; "
                                         "empty on other hosts)\n")
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
        if self.real_node:
            self._up_real_node(kube)
        if self.kueue:
            self._up_kueue(kube)
        if self._all_alive(read_pid_record(self.daemon_pid_file)):
            print("bridge daemon: already running")
        else:
            self._start_daemon()
            print("bridge daemon: started")
        self._write_env(kube)
        print(f"ready: source {self.env_sh}")

    def _up_real_node(self, kube: LocalKubeCluster) -> None:
        """The kubelet node, the worker image in its containerd, the munge key Secret and
        the shared directory (world-writable with the sticky bit, like /tmp)."""
        self.shared_dir.mkdir(exist_ok=True)
        (self.base / "pod-plugins").mkdir(exist_ok=True)
        os.chmod(self.shared_dir, 0o1777)
        node = self._node(kube)
        self._real = node   # holds the node's subnet lock while this process lives
        if self._all_alive(node.recorded_pids()):
            print(f"real node {REAL_NODE}: already running")
        else:
            node.start()
            print(f"real node {REAL_NODE}: started (kubelet + containerd, "
                  f"{node.gpus} nvidia.com/gpu advertised)")
        node.import_image(self.worker_image)
        key = base64.b64encode((self._slurm_handle().munge_dir / "munge.key").read_bytes())
        from kubernetes import client as kclient
        from kubernetes.client.exceptions import ApiException
        with kube.admin_client() as api_client:
            core = kclient.CoreV1Api(api_client)
            for ns in job_namespaces(parse_config(self.config_data)):
                body = {"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": MUNGE_SECRET, "namespace": ns},
                        "data": {"munge.key": key.decode()}}
                try:
                    core.create_namespaced_secret(ns, body)
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    core.replace_namespaced_secret(MUNGE_SECRET, ns, body)

    def _up_kueue(self, kube: LocalKubeCluster) -> None:
        """Kueue's manager (before the daemon: it watches Workloads only where served),
        ClusterQueue gpu with every GPU of the KWOK nodes, LocalQueue gpu per job namespace."""
        kueue = LocalKueue(kube)
        if self._all_alive(kueue.recorded_pids()):
            print("kueue: already running")
            return
        kueue.start()
        gpus = max(1, self.kwok_nodes) * _shape_nodes(self.config_data)["gpus"]
        objects = []
        for ns in job_namespaces(parse_config(self.config_data)):
            for obj in gpu_queues(ns, gpus=gpus):
                if obj not in objects:
                    objects.append(obj)
        kueue.apply_queues(objects)
        print(f"kueue: started in {kueue.start_seconds:.1f}s (ClusterQueue gpu: {gpus} nvidia.com/gpu)")

    def _apply_rbac(self, kube: LocalKubeCluster) -> None:
        config = parse_config(self.config_data)
        namespaces = job_namespaces(config)
        for ns in (*namespaces, DAEMON_SA[0]):
            kube.ensure_namespace(ns)
        kube.apply_as_admin(required_rbac(namespaces, daemon_namespace=DAEMON_SA[0],
                                          native_gpu_usage=config.native_gpu_usage))
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
            {"bridge-daemon": {"pid": proc.pid, "start": proc_starttime(proc.pid),
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
        shared = [f"export SLURM_K8S_SHARED_DIR={self.shared_dir}"] if self.real_node else []
        self.env_sh.write_text("\n".join([
            "# slurm-k8s-bridge dev cluster: source me",
            *shared,
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
                kill_pid(pid, grace=10)
        self.daemon_pid_file.unlink(missing_ok=True)
        kube = self._kube()
        if self._real is not None:
            self._real.stop()
            self._real = None
        elif (kube.base_dir / "nodes" / REAL_NODE).exists():
            self._node(kube).stop_recorded()
        LocalKueue(kube).stop_recorded()
        kube.stop_recorded()
        self._slurm_handle().stop_recorded()
        print("dev cluster stopped")
