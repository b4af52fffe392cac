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
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from slurm_k8s_devcluster.k8s import (
    K8S_VERSION,
    KubeClusterError,
    LocalKubeCluster,
    _cache_root,
    _kubeconfig_text,
    _parse_taint,
    _write_private,
    free_ports,
    gpu_node_labels,
    wait_for,
)
from slurm_k8s_devcluster.slurm import (
    LOCK_DIR,
    _kill_pid,
    _pid_alive,
    _proc_starttime,
    _tail,
    tail_logs,
)

KUBELET_BIN_ENV = "SLURM_K8S_BRIDGE_KUBELET_BIN"
BUILD_SCRIPT = Path("scripts") / "build-kubelet.sh"
IMAGES_SCRIPT = Path("containers") / "pause" / "build.sh"
PAUSE_IMAGE = "localhost/skb-pause:1"
BUSYBOX_IMAGE = "localhost/skb-busybox:1"
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
#: programs the node runs or the kubelet shells out to
REQUIRED_PROGRAMS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip",
                     "mount", "umount", "nsenter")
AUTO_SUBNETS = range(200, 250)
_CGROUP_ROOT_FS = Path("/sys/fs/cgroup")
#: kernel tunables the kubelet sets at start (pkg/kubelet/cm: setupKernelTunables); put back
#: when the last real node on this host stops
_KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                    "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
                    "kernel/keys/root_maxbytes")
_SYSCTL_RECORD = LOCK_DIR / "realnode-sysctls-before.json"
#: where the kubelet links container logs, whatever its root dir (hardcoded upstream)
_CONTAINER_LOG_LINKS = Path("/var/log/containers")
#: the longest unix socket the node makes under base_dir (the kubelet's pod-resources
#: socket: kubelet/pod-resources/<10 digits>) must fit sun_path (107 bytes + NUL)
_SOCKET_MAX = 107
_LONGEST_SOCKET = Path("kubelet") / "pod-resources" / "1234567890"


class RealNodeError(KubeClusterError):
    """The real node could not be set up, started or driven."""


class RealNodeUnavailable(RealNodeError):
    """This machine cannot run a real node (not root, packages missing, no cgroups...).

    Tests skip on it; the message says exactly what is missing.
    """


# ----------------------------------------------------------------------------- helpers


def _source_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / BUILD_SCRIPT).is_file() else None


def _sh(cmd: Sequence[str], *, timeout: float = 60.0, check: bool = True,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                             check=False, input=input_text,
                             stdin=None if input_text is not None else subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise RealNodeError(f"{cmd[0]}: not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise RealNodeError(f"{' '.join(cmd)} did not finish within {timeout:.0f}s") from exc
    if check and res.returncode != 0:
        raise RealNodeError(f"{' '.join(cmd)} failed (rc={res.returncode}): "
                            f"{(res.stderr or res.stdout).strip()[-2000:]}")
    return res


def _run_script(script: Path, args: Sequence[str], timeout: float) -> Path:
    """Run a build script that prints a directory as its last stdout line; return it."""
    try:
        res = subprocess.run(["bash", str(script), *args], cwd=_source_root() or script.parent, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raw = exc.stderr or b""
        out = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        raise RealNodeUnavailable(f"{script} did not finish within {timeout:.0f}s:\n"
                                  + "\n".join(out.splitlines()[-30:])) from exc
    lines = res.stdout.strip().splitlines()
    tail = "\n".join((res.stderr + res.stdout).strip().splitlines()[-30:])
    if res.returncode != 0 or not lines:
        raise RealNodeUnavailable(f"{script} {' '.join(args)} failed (rc={res.returncode}):\n"
                                  f"{tail}")
    return Path(lines[-1].strip())


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


def ensure_node_prerequisites(timeout: float = 900.0) -> None:
    """Install the Debian packages a node needs (``build-kubelet.sh --install-deps``) when
    something is missing and we are root; raise ``RealNodeUnavailable`` if still missing."""
    missing = missing_prerequisites()
    if not missing:
        return
    root = _source_root()
    if os.geteuid() == 0 and root is not None and shutil.which("apt-get"):
        _run_script(root / BUILD_SCRIPT, ["--install-deps"], timeout)
        missing = missing_prerequisites()
    if missing:
        raise RealNodeUnavailable("cannot run a real kubelet node here: missing "
                                  + "; ".join(missing))


def ensure_kubelet_binary(timeout: float = 3600.0) -> Path:
    """Path of the kubelet binary, building it first when needed.

    Order: ``$SLURM_K8S_BRIDGE_KUBELET_BIN`` (a kubelet binary or a directory holding one),
    ``scripts/build-kubelet.sh`` of the source checkout (instant when cached, ~2 min when the
    control plane's Go caches are warm), the pinned version's cache directory.
    """
    env = os.environ.get(KUBELET_BIN_ENV)
    if env:
        path = Path(env).expanduser().absolute()
        path = path / "kubelet" if path.is_dir() else path
        if not os.access(path, os.X_OK):
            raise RealNodeUnavailable(f"${KUBELET_BIN_ENV}={env}: no executable kubelet")
        return path
    cached = _cache_root() / f"kubelet-{K8S_VERSION}-r1"
    root = _source_root()
    if root is None:
        if (cached / ".complete").is_file() and os.access(cached / "bin" / "kubelet", os.X_OK):
            return cached / "bin" / "kubelet"
        raise RealNodeUnavailable(f"no {BUILD_SCRIPT} (not a source checkout) and no cached "
                                  f"kubelet under {cached}; set ${KUBELET_BIN_ENV}")
    bin_dir = _run_script(root / BUILD_SCRIPT, [], timeout)
    if not os.access(bin_dir / "kubelet", os.X_OK):
        raise RealNodeUnavailable(f"{root / BUILD_SCRIPT} printed {bin_dir}, which has no kubelet")
    return bin_dir / "kubelet"


def ensure_node_images(out_dir: Path | None = None, timeout: float = 300.0) -> dict[str, Path]:
    """Image tarballs every node imports: ``{PAUSE_IMAGE: pause.tar, BUSYBOX_IMAGE: ...}``,
    built by ``containers/pause/build.sh`` (seconds; cached in ``out_dir``)."""
    root = _source_root()
    if root is None:
        raise RealNodeUnavailable(f"no {IMAGES_SCRIPT}: not a source checkout")
    out = Path(out_dir) if out_dir else _cache_root() / "node-images"
    d = _run_script(root / IMAGES_SCRIPT, [str(out)], timeout)
    images = {PAUSE_IMAGE: d / "pause.tar", BUSYBOX_IMAGE: d / "busybox.tar"}
    for ref, path in images.items():
        if not path.is_file():
            raise RealNodeUnavailable(f"{IMAGES_SCRIPT} did not write {path} ({ref})")
    return images


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
    for lock in LOCK_DIR.glob("realnode-subnet-*.lock"):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return   # another live node
        finally:
            os.close(fd)
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


# ----------------------------------------------------------------------------- node


class RealNode:
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
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock_fd: int | None = None
        self._kubelet_started = 0.0   # wall clock, for "status written by this kubelet"

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

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    def _subnet(self) -> int:
        if self.subnet is None:
            raise RealNodeError("no subnet yet: start() the node first (or pass subnet=)")
        return self.subnet

    def _pid_record(self) -> Path:
        return self.run_dir / "pids.json"

    def _lock_path(self, subnet: int) -> Path:
        return LOCK_DIR / f"realnode-subnet-{subnet}.lock"

    # ------------------------------------------------------------------ subnet lock

    def _try_lock(self, subnet: int) -> bool:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path(subnet), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.base_dir}\n".encode())
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
                raise RealNodeError(
                    f"subnet 10.244.{self._requested_subnet}.0/24 is held by another live "
                    f"RealNode ({self._lock_path(self._requested_subnet)})")
            return
        recorded = self._recorded_subnet()
        if recorded is not None and self._try_lock(recorded):
            return   # same base_dir as before: same bridge, IPs and cgroups
        used = {int(m.group(1)) for p in Path("/sys/class/net").glob("skbn*")
                if (m := re.fullmatch(r"skbn(\d+)", p.name))}
        for n in AUTO_SUBNETS:
            if n not in used and self._try_lock(n):
                return
        for n in AUTO_SUBNETS:
            if self._try_lock(n):
                return
        raise RealNodeError("no free real-node subnet in 10.244.200-249")

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _recorded_subnet(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return int(json.loads(self._pid_record().read_text())["_subnet"])
        return None

    # ------------------------------------------------------------------ pids

    def _save_pids(self) -> None:
        rec: dict[str, Any] = {k: {"pid": p.pid, "start": _proc_starttime(p.pid)}
                               for k, p in self._procs.items()}
        rec["_subnet"] = self.subnet
        rec["_socket"] = str(self.containerd_socket)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._pid_record().write_text(json.dumps(rec))

    def recorded_pids(self) -> dict[str, tuple[int, bool]]:
        """name -> (pid, still running), as recorded by a harness on this base_dir."""
        try:
            raw = json.loads(self._pid_record().read_text())
        except (OSError, ValueError):
            return {}
        out: dict[str, tuple[int, bool]] = {}
        for name, entry in raw.items():
            if name.startswith("_"):
                continue
            pid, start = int(entry["pid"]), entry.get("start")
            out[name] = (pid, bool(start) and _proc_starttime(pid) == start and _pid_alive(pid))
        return out

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

    def pids(self) -> dict[str, int]:
        """Running processes started here (kubelet, containerd), by name."""
        return {k: p.pid for k, p in self._procs.items() if p.poll() is None}

    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs.values())

    def logs(self, lines: int = 40) -> str:
        return tail_logs(self.log_dir, lines)

    # ------------------------------------------------------------------ files

    def _sign(self, name: str, subject: str, ext: str) -> None:
        p = self.pki_dir
        cnf = p / "openssl.cnf"
        cnf.write_text(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n"
            "[client]\nbasicConstraints = CA:FALSE\n"
            "keyUsage = critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage = clientAuth\n"
            "[server]\nbasicConstraints = CA:FALSE\n"
            "keyUsage = critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage = serverAuth\n"
            f"subjectAltName = IP:{self.node_ip},DNS:{self.name}\n")
        _sh(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
             "-out", str(p / f"{name}.key")])
        _sh(["openssl", "req", "-new", "-config", str(cnf), "-key", str(p / f"{name}.key"),
             "-subj", subject, "-out", str(p / f"{name}.csr")])
        _sh(["openssl", "x509", "-req", "-in", str(p / f"{name}.csr"),
             "-CA", str(self.cluster.ca_file), "-CAkey", str(self.cluster.ca_key_file),
             "-set_serial", "0x" + secrets.token_hex(16), "-days", "825", "-sha256",
             "-extfile", str(cnf), "-extensions", ext, "-out", str(p / f"{name}.crt")])
        (p / f"{name}.csr").unlink(missing_ok=True)
        os.chmod(p / f"{name}.key", 0o600)

    def _ensure_pki(self) -> None:
        """Client cert system:node:<name> (group system:nodes) and a serving cert for the
        node IP, both signed by the cluster CA; remade when the CA or the IP changed."""
        p = self.pki_dir
        p.mkdir(parents=True, exist_ok=True)
        os.chmod(p, 0o700)
        stamp = p / "stamp"
        want = f"{hashlib.sha256(self.cluster.ca_file.read_bytes()).hexdigest()} {self.node_ip}"
        if stamp.exists() and stamp.read_text().strip() == want:
            return
        self._sign("kubelet-client", f"/O=system:nodes/CN=system:node:{self.name}", "client")
        self._sign("kubelet-serving", f"/CN={self.name}", "server")
        stamp.write_text(want + "\n")

    def _write_kubeconfig(self) -> None:
        p = self.pki_dir
        _write_private(self.kubeconfig, _kubeconfig_text(
            self.cluster.server, self.cluster.ca_file, f"system:node:{self.name}",
            cert=p / "kubelet-client.crt", key=p / "kubelet-client.key"))

    def _write_containerd_config(self) -> Path:
        c = self.containerd_dir
        for d in (c / "root", c / "state", c / "opt", self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        sock = self.containerd_socket
        # Plugins that cannot work here (and only log errors) are disabled.
        text = f"""# generated by slurm_k8s_devcluster.kubelet for node {self.name}
version = 2
root = "{c / 'root'}"
state = "{c / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{c / 'opt'}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  enable_selinux = false
  # Never ask for an oom_score_adj below containerd's own: root here may lack
  # CAP_SYS_RESOURCE (runc then dies with "failed to update /proc/self/oom_score_adj").
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{self._snapshotter()}"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{self._runc()}"
        Root = "{c / 'state' / 'runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self.cni_dir / 'net.d'}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
"""
        path = c / "config.toml"
        path.write_text(text)
        return path

    @staticmethod
    def _snapshotter() -> str:
        with contextlib.suppress(OSError):
            if re.search(r"\boverlay$", Path("/proc/filesystems").read_text(), re.MULTILINE):
                return "overlayfs"
        return "native"

    def _write_cni_config(self) -> None:
        n = self._subnet()
        net_d = self.cni_dir / "net.d"
        net_d.mkdir(parents=True, exist_ok=True)
        conf = {
            "cniVersion": "1.0.0",
            "name": f"skb-node{n}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.pod_cidr, "gateway": self.node_ip,
                                     "rangeStart": f"10.244.{n}.10",
                                     "rangeEnd": f"10.244.{n}.254"}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.cni_dir / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (net_d / "10-skb-bridge.conflist").write_text(json.dumps(conf, indent=2) + "\n")

    def _write_kubelet_config(self) -> None:
        cfg: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.node_ip,
            "port": self.ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.ports["kubelet-healthz"],
            "tlsCertFile": str(self.pki_dir / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(self.pki_dir / "kubelet-serving.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.cluster.ca_file)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": True,
            "cgroupRoot": self.cgroup_root,
            "failSwapOn": False,
            "failCgroupV1": False,
            "podLogsDir": str(self.pod_logs_dir),
            "volumePluginDir": str(self.base_dir / "volume-plugins"),
            "makeIPTablesUtilChains": False,
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
            # Imported images must never be garbage-collected: no registry to pull them back.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "mergeDefaultEvictionSettings": False,
            "maxPods": 110,
            # Status is computed this often but only sent when it changed (or every
            # nodeStatusReportFrequency): a short period makes Ready show up quickly.
            "nodeStatusUpdateFrequency": "2s",
            "nodeStatusReportFrequency": "1m",
            "shutdownGracePeriod": "0s",
            "shutdownGracePeriodCriticalPods": "0s",
            "registerNode": True,
            "registerWithTaints": self.taints,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "runtimeRequestTimeout": "2m",
            "syncFrequency": "10s",
            "fileCheckFrequency": "20s",
            "staticPodPath": str(self.base_dir / "manifests"),
        }
        cfg.update(self.kubelet_config_overrides)
        (self.base_dir / "manifests").mkdir(parents=True, exist_ok=True)
        self.kubelet_config_file.write_text(json.dumps(cfg, indent=2) + "\n")

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

    # ------------------------------------------------------------------ processes

    def _popen(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            out.write(f"\n==== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    close_fds=True, cwd=self.run_dir)
        self._procs[name] = proc
        self._save_pids()
        return proc

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise RealNodeError(
                    f"{name} exited rc={proc.returncode}\n==> {name}.log <==\n"
                    f"{_tail(self.log_dir / f'{name}.log', 40)}")

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

    @staticmethod
    def _runc() -> str:
        return shutil.which("runc", path="/usr/sbin:/usr/bin:/sbin:/bin") or "runc"

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
        proc = self._procs.pop("kubelet", None)
        if proc is not None:
            _kill_pid(proc.pid, grace=10, proc=proc)
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
        proc = self._procs.pop("kubelet", None)
        if proc is not None:
            _kill_pid(proc.pid, grace=grace, proc=proc)
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
        proc = self._procs.pop("containerd", None)
        if proc is not None:
            _kill_pid(proc.pid, grace=grace, proc=proc)
        for sock in {socket, rec_socket or socket}:
            for pid in self._shim_pids(sock):
                _kill_pid(pid, grace=2)
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
            with contextlib.suppress(ValueError, OSError):
                for key, entry in json.loads(rec_path.read_text()).items():
                    if key.startswith("_"):
                        continue
                    pid, start = int(entry["pid"]), entry.get("start")
                    if not start or _proc_starttime(pid) != start:
                        continue
                    try:
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        continue
                    if str(self.base_dir).encode() in cmdline:
                        _kill_pid(pid, grace=5)
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

        from slurm_k8s_devcluster.k8s import _node_schedulable
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
