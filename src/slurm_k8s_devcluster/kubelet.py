"""A real kubelet node for ``LocalKubeCluster``: containerd + runc + a CNI bridge, all private.

``RealNode`` joins one real node to a running ``LocalKubeCluster``: kubelet v1.34 (built from
the Go module proxy by ``scripts/build-kubelet.sh``), Debian's containerd 1.6 and runc, and
Debian's CNI plugins. Pods scheduled there run for real, as containers, from images imported
locally (no registry is involved): ``import_image()`` takes an image tarball or the name of
an image podman built.

Everything the node owns lives under ``base_dir`` (PKI, kubeconfig, kubelet root dir, pod
logs, containerd root/state/socket, CNI config and IPAM state, logs, pid record). What
cannot live there is named after the node's subnet number ``N`` and removed by ``stop()``:

* a Linux bridge ``skbn<N>`` holding ``10.244.<N>.1/24``: the node's InternalIP (the
  apiserver reaches the kubelet there) and the pods' gateway; pod IPs ``10.244.<N>.10-254``
  are reachable from the host (and from slurmctld running on it);
* cgroups ``/skb-node<N>`` in every cgroup v1 hierarchy (the kubelet's ``cgroupRoot``; its
  ``kubepods`` tree sits below, so two nodes on one host never see each other's pods);
* a lock ``/run/slurm-k8s-bridge-devcluster/realnode-subnet-<N>.lock`` held while running.

The node advertises ``nvidia.com/gpu`` without GPUs the way the Kubernetes docs describe for
extended resources (a JSON patch of ``/status/capacity/nvidia.com~1gpu``) and carries the
GPU-feature-discovery labels of ``gpu_node_labels``. The kubelet zeroes such a capacity when
it registers again without a device-manager checkpoint; ``start()`` and
``restart_kubelet()`` therefore advertise again after every (re)start.

Host side effects that cannot be avoided (see docs/real-node.md): the kubelet sets the
kernel tunables it wants (``vm.overcommit_memory=1``, ``kernel.panic=10``,
``kernel.panic_on_oops=1``, ...), the CNI bridge plugin turns on ``net.ipv4.ip_forward``,
the kubelet keeps symlinks of container logs in ``/var/log/containers`` and containerd's
shims put their sockets in ``/run/containerd/s``.

Requires root, cgroup v1 or v2 mounted writable, and the Debian packages of
``scripts/build-kubelet.sh --print-deps`` (``ensure_node_prerequisites`` installs them).

The pieces: kubelet_host.py (bridge, cgroups, mounts, tunables), kubelet_config.py (the
node's certificates and configuration files), k8s_binaries.py (the kubelet binary and the
node images); containerd and the kubelet run through supervisor.py, the subnet lock
through subnets.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from slurm_k8s_devcluster.errors import KubeClusterError, RealNodeError, RealNodeUnavailable
from slurm_k8s_devcluster.k8s import LocalKubeCluster, wait_for
from slurm_k8s_devcluster.k8s_binaries import (
    BUSYBOX_IMAGE,
    KUBELET_BUILD_SCRIPT,
    PAUSE_IMAGE,
    _source_root,
    ensure_kubelet_binary,
    ensure_node_images,
    run_build_script,
)
from slurm_k8s_devcluster.k8s_nodes import _node_schedulable, _parse_taint, gpu_node_labels
from slurm_k8s_devcluster.kubelet_config import NodeConfigFiles
from slurm_k8s_devcluster.kubelet_host import (
    _CONTAINER_LOG_LINKS,
    _restore_sysctls_if_last,
    _save_sysctls,
    _sh,
    missing_prerequisites,
)
from slurm_k8s_devcluster.subnets import SubnetLock, free_ports
from slurm_k8s_devcluster.supervisor import Supervised, Supervisor, kill_pid, kill_recorded

# Moved to k8s_binaries.py and kubelet_host.py; still importable from here.
from slurm_k8s_devcluster.k8s_binaries import KUBELET_BIN_ENV  # noqa: F401
from slurm_k8s_devcluster.kubelet_host import (  # noqa: F401
    CNI_BIN_DIR,
    CNI_PLUGINS,
    REQUIRED_PROGRAMS,
)

AUTO_SUBNETS = range(200, 250)
#: the longest unix socket the node makes under base_dir (the kubelet's pod-resources
#: socket: kubelet/pod-resources/<10 digits>) must fit sun_path (107 bytes + NUL)
_SOCKET_MAX = 107
_LONGEST_SOCKET = Path("kubelet") / "pod-resources" / "1234567890"


def ensure_node_prerequisites(timeout: float = 900.0) -> None:
    """Install the Debian packages a node needs (``build-kubelet.sh --install-deps``) when
    something is missing and we are root; raise ``RealNodeUnavailable`` if still missing."""
    missing = missing_prerequisites()
    if not missing:
        return
    root = _source_root(KUBELET_BUILD_SCRIPT)
    if os.geteuid() == 0 and root is not None and shutil.which("apt-get"):
        run_build_script(root / KUBELET_BUILD_SCRIPT, ["--install-deps"], timeout,
                         error=RealNodeUnavailable, cwd=root)
        missing = missing_prerequisites()
    if missing:
        raise RealNodeUnavailable("cannot run a real kubelet node here: missing "
                                  + "; ".join(missing))


# ----------------------------------------------------------------------------- node


class RealNode(NodeConfigFiles, Supervised):
    """A real kubelet + containerd node joined to a running ``LocalKubeCluster``.

    ``gpus``/``gpu_product``/``mig``: the ``nvidia.com/gpu`` (and ``nvidia.com/mig-*``)
    capacity advertised without hardware, and the GPU labels of ``gpu_node_labels`` (the
    h100 shape of the example configuration by default). ``labels``/``taints`` are added.
    ``subnet`` N gives pod network ``10.244.N.0/24`` (default: the first free one in
    200-249, locked). ``images``: tarballs imported at start (default: the pause and busybox
    images of ``containers/pause/build.sh``; the pause image is containerd's sandbox image).
    """

    def __init__(
        self,
        cluster: LocalKubeCluster,
        name: str = "real-0",
        base_dir: Path | None = None,
        *,
        gpus: int = 8,
        gpu_product: str = "NVIDIA-H100-80GB-HBM3",
        gpu_memory_mib: int | None = None,
        mig: Mapping[str, int] | None = None,
        labels: Mapping[str, str] | None = None,
        taints: Iterable[str | Mapping[str, str]] | None = None,
        subnet: int | None = None,
        kubelet_bin: Path | None = None,
        images: Mapping[str, Path] | None = None,
        kubelet_args: Sequence[str] = (),
        kubelet_config: Mapping[str, Any] | None = None,
        verbosity: int = 2,
    ) -> None:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
            raise ValueError(f"node name {name!r} is not a DNS label")
        self.cluster = cluster
        self.name = name
        self.base_dir = Path(base_dir if base_dir is not None
                             else cluster.base_dir / "nodes" / name).absolute()
        self.gpus = gpus
        self.gpu_product = gpu_product
        self.gpu_memory_mib = gpu_memory_mib
        self.mig = dict(mig or {})
        self.extra_labels = dict(labels or {})
        self.taints = [_parse_taint(t) for t in (taints or [])]
        self._requested_subnet = subnet
        self.subnet: int | None = subnet
        self.kubelet_bin = Path(kubelet_bin).absolute() if kubelet_bin else None
        self.images = dict(images) if images is not None else None
        self.kubelet_args = list(kubelet_args)
        self.kubelet_config_overrides = dict(kubelet_config or {})
        self.verbosity = verbosity

        self.pki_dir = self.base_dir / "pki"
        self.log_dir = self.base_dir / "log"
        self.run_dir = self.base_dir / "run"
        self.kubelet_root = self.base_dir / "kubelet"
        self.pod_logs_dir = self.base_dir / "pod-logs"
        self.containerd_dir = self.base_dir / "containerd"
        self.cni_dir = self.base_dir / "cni"
        self.kubeconfig = self.base_dir / "kubelet.kubeconfig"
        self.kubelet_config_file = self.base_dir / "kubelet-config.yaml"
        self.ports: dict[str, int] = {}
        self.start_seconds: float | None = None
        self.timings: dict[str, float] = {}
        self._sup = Supervisor(self.log_dir, self._pid_record, header=True,
                               record_notes=lambda: {"_subnet": self.subnet,
                                                     "_socket": str(self.containerd_socket)})
        self._lock = SubnetLock("realnode-subnet-", auto=AUTO_SUBNETS, bridge_prefix="skbn",
                                network="10.244", owner="RealNode", kind="real-node",
                                error=RealNodeError, note=str(self.base_dir))
        self._kubelet_started = 0.0   # wall clock, for "status written by this kubelet"

    def _pid_record(self) -> Path:
        return self.run_dir / "pids.json"

    # ------------------------------------------------------------------ subnet lock

    def _acquire_subnet(self) -> None:
        # same base_dir as before: same bridge, IPs and cgroups
        self.subnet = self._lock.acquire(self._requested_subnet, prefer=self._recorded_subnet())

    def _release_lock(self) -> None:
        self._lock.release()

    def _recorded_subnet(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return int(json.loads(self._pid_record().read_text())["_subnet"])
        return None

    # ------------------------------------------------------------------ pids

    def recorded_pids(self) -> dict[str, tuple[int, bool]]:
        """name -> (pid, still running), as recorded by a harness on this base_dir."""
        return self._sup.recorded()

    def stop_recorded(self) -> None:
        """Stop what a harness in another process started on this base_dir: kubelet,
        containerd, shims and containers, mounts, cgroups and the bridge."""
        subnet = self._recorded_subnet()
        if subnet is None and self._requested_subnet is None:
            return
        self._requested_subnet = subnet if subnet is not None else self._requested_subnet
        self._acquire_subnet()
        try:
            self._cleanup_stale()
        finally:
            self._release_lock()
            _restore_sysctls_if_last()

    # ------------------------------------------------------------------ processes

    def _popen(self, name: str, cmd: list[str]) -> subprocess.Popen:
        return self._sup.start(name, cmd, cwd=self.run_dir)

    def _check_alive(self) -> None:
        self._sup.check_alive(RealNodeError, lines=40)

    def _ctr(self, *args: str, timeout: float = 120.0, check: bool = True,
             input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        return _sh(["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io",
                    *args], timeout=timeout, check=check, input_text=input_text)

    def _start_containerd(self, timeout: float) -> None:
        config = self._write_containerd_config()
        self.containerd_socket.unlink(missing_ok=True)
        self._popen("containerd", ["containerd", "--config", str(config)])
        wait_for(lambda: self._ctr("version", timeout=5).returncode == 0, timeout,
                 f"containerd on {self.containerd_socket}", check=self._check_alive,
                 interval=0.2)

    def _probe_runtime(self) -> None:
        """Run one container through containerd + runc, outside the kubelet. When that fails
        this host cannot run containers at all: an environment limit, not a node bug."""
        cid = f"skb-probe-{secrets.token_hex(4)}"
        res = self._ctr("run", "--rm", "--snapshotter", self._snapshotter(),
                        "--runc-binary", self._runc(), "--runc-root",
                        str(self.containerd_dir / "state" / "runc"),
                        "--cgroup", f"{self.cgroup_root}/{cid}", PAUSE_IMAGE, cid,
                        "/pause", "--version", timeout=60, check=False)
        if res.returncode != 0 or "pause" not in res.stdout:
            self._ctr("containers", "rm", cid, timeout=20, check=False)
            raise RealNodeUnavailable(
                f"containerd + runc cannot start a container on this host (ctr run "
                f"{PAUSE_IMAGE}: rc={res.returncode}): {(res.stderr or res.stdout).strip()[-1500:]}")

    def _healthz(self) -> bool:
        url = f"http://127.0.0.1:{self.ports['kubelet-healthz']}/healthz"
        with urllib.request.urlopen(url, timeout=3) as resp:
            return bool(resp.status == 200)

    def _start_kubelet(self, timeout: float) -> None:
        kubelet = self.kubelet_bin
        assert kubelet is not None
        self.ports = dict(zip(("kubelet", "kubelet-healthz"), free_ports(2)))
        self._kubelet_started = time.time()
        self._write_kubeconfig()
        self._write_kubelet_config()
        self._popen("kubelet", [
            str(kubelet),
            "--config", str(self.kubelet_config_file),
            "--kubeconfig", str(self.kubeconfig),
            "--root-dir", str(self.kubelet_root),
            "--cert-dir", str(self.pki_dir),
            "--hostname-override", self.name,
            "--node-ip", self.node_ip,
            f"--v={self.verbosity}",
            *self.kubelet_args,
        ])
        wait_for(self._healthz, timeout, "kubelet /healthz", check=self._check_alive,
                 interval=0.25)

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 180.0) -> RealNode:
        """Start containerd and the kubelet; return when the node is Ready, schedulable and
        advertises its GPUs. Raises ``RealNodeUnavailable`` when this machine cannot run a
        node at all, ``RealNodeError`` (with log tails) when the node failed to come up."""
        if self._procs:
            raise RealNodeError(f"node {self.name} already started")
        t0 = time.monotonic()
        deadline = t0 + timeout

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        missing = missing_prerequisites()
        if missing:
            raise RealNodeUnavailable("cannot run a real kubelet node here: missing "
                                      + "; ".join(missing))
        longest = len(str(self.base_dir / _LONGEST_SOCKET))
        if longest > _SOCKET_MAX:
            raise RealNodeError(
                f"base_dir {self.base_dir} is too long ({len(str(self.base_dir))} characters): "
                f"the kubelet's unix sockets under it need at most "
                f"{_SOCKET_MAX - longest + len(str(self.base_dir))}")
        if not self.cluster.running():
            raise RealNodeError("the LocalKubeCluster is not running: start() it first")
        if self.kubelet_bin is None:
            self.kubelet_bin = ensure_kubelet_binary()
        if self.images is None:
            self.images = ensure_node_images()
        for d in (self.base_dir, self.log_dir, self.run_dir, self.kubelet_root,
                  self.pod_logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._acquire_subnet()
        try:
            self._cleanup_stale()
            _save_sysctls()
            self._ensure_cgroups()
            self._ensure_bridge()
            self._ensure_pki()
            self._write_cni_config()
            mark = time.monotonic()
            self._start_containerd(left())
            for path in self.images.values():
                self.import_image(path)
            self._probe_runtime()
            self.timings["containerd+images"] = time.monotonic() - mark
            mark = time.monotonic()
            self._start_kubelet(left())
            self.timings["kubelet healthz"] = time.monotonic() - mark
            self._wait_registered(left())
            self.advertise()
            self.wait_ready(left())
            self.timings["kubelet start to Ready"] = time.monotonic() - mark
        except BaseException as exc:
            logs = self.logs(40)
            self.stop(drain=False)
            if isinstance(exc, RealNodeError):
                raise type(exc)(f"{exc}\n--- node logs ---\n{logs}") from exc
            if isinstance(exc, KubeClusterError):
                raise RealNodeError(f"{exc}\n--- node logs ---\n{logs}") from exc
            if isinstance(exc, Exception):
                raise RealNodeError(f"node {self.name} start failed: {exc!r}\n"
                                    f"--- node logs ---\n{logs}") from exc
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def restart_kubelet(self, timeout: float = 120.0, *, readvertise: bool = True) -> None:
        """Stop the kubelet and start it again on the same root dir (pods keep running in
        containerd); advertise the GPUs again unless ``readvertise`` is false."""
        self._sup.stop("kubelet", grace=10)
        self._start_kubelet(timeout)
        self._wait_registered(timeout)
        if readvertise:
            self.advertise()
        self.wait_ready(timeout, require_gpus=readvertise)

    def stop(self, grace: float = 10.0, *, drain: bool = True, delete_node: bool = False,
             drain_timeout: float = 60.0) -> None:
        """Stop the node and remove what it put on the host. Idempotent.

        ``drain``: first delete the node's pods through the API and let the kubelet tear
        them down (CNI DEL, unmounts); whatever is left afterwards is killed by cgroup.
        ``delete_node``: also delete the Node object (else it turns NotReady).
        """
        if drain and {"kubelet", "containerd"} <= set(self.pids()) and self.cluster.running():
            with contextlib.suppress(Exception):
                self._drain(drain_timeout)
        self._sup.stop("kubelet", grace=grace)
        if delete_node and self.cluster.running():
            with contextlib.suppress(Exception), self.cluster.admin_client() as api:
                from kubernetes import client
                client.CoreV1Api(api).delete_node(self.name)
        if self.subnet is not None:
            self._teardown(grace)
        with contextlib.suppress(OSError):
            self._pid_record().unlink(missing_ok=True)
        self._release_lock()
        _restore_sysctls_if_last()

    def _teardown(self, grace: float) -> None:
        """Everything below the kubelet: containers, shims, containerd, mounts, cgroups,
        CNI state, bridge. Also used on what a dead harness left behind."""
        self._kill_cgroup_procs()
        socket = str(self.containerd_socket)
        rec_socket = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            rec_socket = json.loads(self._pid_record().read_text()).get("_socket")
        self._sup.stop("containerd", grace=grace)
        for sock in {socket, rec_socket or socket}:
            for pid in self._shim_pids(sock):
                kill_pid(pid, grace=2)
        self._unmount_all()
        self._remove_cgroups()
        shutil.rmtree(self.cni_dir / "ipam", ignore_errors=True)  # every pod is gone
        for link in _CONTAINER_LOG_LINKS.glob("*.log"):
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(f"{self.pod_logs_dir}/"):
                    link.unlink()
        self._delete_bridge()

    def _cleanup_stale(self) -> None:
        """Kill a kubelet/containerd a crashed earlier harness left running on this
        base_dir (pid record, matched by start time and command line), then tear down."""
        rec_path = self._pid_record()
        if rec_path.exists():
            kill_recorded(rec_path, owner=self.base_dir)
            self._teardown(grace=5)
            rec_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ API side

    def _wait_registered(self, timeout: float) -> None:
        from kubernetes import client
        with self.cluster.admin_client() as api:
            core = client.CoreV1Api(api)
            wait_for(lambda: core.read_node(self.name), timeout,
                     f"kubelet to register node {self.name}", check=self._check_alive,
                     interval=0.25)

    def node_labels(self) -> dict[str, str]:
        labels = gpu_node_labels(self.name, gpus=self.gpus, gpu_product=self.gpu_product,
                                 gpu_memory_mib=self.gpu_memory_mib, mig=self.mig)
        labels["type"] = "real"   # KWOK nodes carry type=kwok
        labels["node.kubernetes.io/instance-type"] = \
            f"real-{self.gpus}x-{self.gpu_product}".lower()[:63]
        labels.update(self.extra_labels)
        return labels

    def extended_resources(self) -> dict[str, str]:
        res = {"nvidia.com/gpu": str(self.gpus)}
        for profile, n in self.mig.items():
            res[f"nvidia.com/mig-{profile}"] = str(n)
        return res

    def advertise(self) -> None:
        """Label the node and set its extended resources (GPUs without GPUs): a JSON patch
        of ``/status/capacity/<name>`` as the Kubernetes docs do it; the kubelet copies
        capacity into allocatable on its next status update."""
        from kubernetes import client
        with self.cluster.admin_client() as api:
            core = client.CoreV1Api(api)
            core.patch_node(self.name, {"metadata": {"labels": self.node_labels()}})
            # A list body is sent as application/json-patch+json.
            core.patch_node_status(self.name, [
                {"op": "add", "path": f"/status/capacity/{k.replace('/', '~1')}", "value": v}
                for k, v in self.extended_resources().items()])

    def _fresh_ready(self, node: Any) -> bool:
        """Ready=True as reported by the kubelet we started (a Node object keeps the last
        kubelet's Ready for ~40 s after it died): our serving port, a new heartbeat."""
        status = node.status
        port = getattr(getattr(getattr(status, "daemon_endpoints", None), "kubelet_endpoint",
                               None), "port", None)
        if port != self.ports.get("kubelet"):
            return False
        for cond in status.conditions or []:
            if cond.type == "Ready":
                beat = cond.last_heartbeat_time
                return bool(cond.status == "True" and beat is not None
                            and beat.timestamp() >= self._kubelet_started - 1.0)
        return False

    def _advertised(self, node: Any) -> bool:
        alloc = (node.status.allocatable or {}) if node.status else {}
        cap = (node.status.capacity or {}) if node.status else {}
        want = self.extended_resources()
        return all(cap.get(k) == v and alloc.get(k) == v for k, v in want.items())

    def wait_ready(self, timeout: float = 120.0, *, require_gpus: bool = True) -> None:
        """Wait until the node is Ready, free of not-ready taints, and (``require_gpus``) its
        allocatable shows the advertised GPUs. On timeout the error quotes conditions and
        log tails."""
        from kubernetes import client
        last: dict[str, Any] = {}

        def poll(core: Any) -> bool:
            node = core.read_node(self.name)
            last["node"] = node
            return (bool(_node_schedulable(node)) and self._fresh_ready(node)
                    and (not require_gpus or self._advertised(node)))

        with self.cluster.admin_client() as api:
            core = client.CoreV1Api(api)
            try:
                wait_for(lambda: poll(core), timeout, f"node {self.name} Ready with "
                         f"{self.extended_resources()}", check=self._check_alive,
                         interval=0.5)
            except KubeClusterError as exc:
                node = last.get("node")
                detail = ""
                if node is not None:
                    conds = [f"{c.type}={c.status} ({c.reason}: {c.message})"
                             for c in node.status.conditions or []]
                    taints = [t.key for t in node.spec.taints or []]
                    detail = (f"\nconditions: {conds}\ntaints: {taints}\nallocatable: "
                              f"{node.status.allocatable}")
                raise RealNodeError(f"{exc}{detail}\n--- node logs ---\n{self.logs(30)}") \
                    from exc

    def pod_ip(self, namespace: str, name: str, timeout: float = 60.0) -> str:
        """The pod's IP once the kubelet reports it (a 10.244.<N>.x address)."""
        from kubernetes import client
        with self.cluster.admin_client() as api:
            core = client.CoreV1Api(api)
            ip = wait_for(lambda: getattr(core.read_namespaced_pod(name, namespace).status,
                                          "pod_ip", None),
                          timeout, f"pod {namespace}/{name} IP")
        return str(ip)

    def _drain(self, timeout: float) -> None:
        """Cordon, delete every pod bound here and wait until the kubelet stopped all
        sandboxes (so CNI released their addresses and unmounted their volumes)."""
        from kubernetes import client
        with self.cluster.admin_client() as api:
            core = client.CoreV1Api(api)
            core.patch_node(self.name, {"spec": {"unschedulable": True}})
            pods = core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.name}").items
            for pod in pods:
                meta: Any = pod.metadata
                with contextlib.suppress(Exception):
                    core.delete_namespaced_pod(meta.name, meta.namespace, grace_period_seconds=1)

            def drained() -> bool:
                left = core.list_pod_for_all_namespaces(
                    field_selector=f"spec.nodeName={self.name}").items
                tasks = self._ctr("tasks", "ls", "-q", timeout=5).stdout.split()
                return not left and not tasks

            with contextlib.suppress(KubeClusterError):
                wait_for(drained, timeout, f"pods on {self.name} to stop", interval=0.5)
            core.patch_node(self.name, {"spec": {"unschedulable": False}})

    # ------------------------------------------------------------------ images

    def import_image(self, tar_or_podman_name: str | os.PathLike[str]) -> list[str]:
        """Import an image into the node's containerd (namespace ``k8s.io``) and return the
        names it got. Takes a ``docker save``/``podman save``/OCI tarball path, or the name
        of an image in podman's local store (``podman save NAME | ctr images import -``).
        Pods then use it by that name with ``imagePullPolicy: Never`` or ``IfNotPresent``."""
        if not self.containerd_socket.exists():
            raise RealNodeError("containerd is not running: start() the node first")
        src = str(tar_or_podman_name)
        if os.path.isfile(src):
            res = self._ctr("images", "import", "--snapshotter", self._snapshotter(), src,
                            timeout=600)
        else:
            if shutil.which("podman") is None:
                raise RealNodeError(f"{src}: no such file, and podman is not installed to "
                                    f"save an image of that name")
            podman = subprocess.Popen(["podman", "save", "--format", "docker-archive", src],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL)
            assert podman.stdout is not None
            ctr = subprocess.run(["ctr", "--address", str(self.containerd_socket),
                                  "--namespace", "k8s.io", "images", "import",
                                  "--snapshotter", self._snapshotter(), "-"],
                                 stdin=podman.stdout, capture_output=True, text=True,
                                 timeout=900, check=False)
            podman.stdout.close()
            perr = podman.stderr.read().decode(errors="replace") if podman.stderr else ""
            prc = podman.wait(timeout=60)
            if prc != 0:
                raise RealNodeError(f"podman save {src} failed (rc={prc}): {perr.strip()}")
            if ctr.returncode != 0:
                raise RealNodeError(f"ctr images import (from podman save {src}) failed: "
                                    f"{(ctr.stderr or ctr.stdout).strip()}")
            res = ctr
        names = re.findall(r"unpacking (\S+) \(sha256:", res.stdout)
        if not names:
            raise RealNodeError(f"ctr images import {src}: no image imported: "
                                f"{(res.stdout + res.stderr).strip()[-500:]}")
        return names

    def images_present(self) -> list[str]:
        out = self._ctr("images", "ls", "-q", timeout=20).stdout.split()
        return [r for r in out if not r.startswith("sha256:")]



__all__ = [
    "BUSYBOX_IMAGE",
    "PAUSE_IMAGE",
    "RealNode",
    "RealNodeError",
    "RealNodeUnavailable",
    "ensure_kubelet_binary",
    "ensure_node_images",
    "ensure_node_prerequisites",
    "missing_prerequisites",
]
