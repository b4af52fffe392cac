"""Where the harness's Kubernetes programs come from: build scripts, caches, versions.

``ensure_k8s_binaries``: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kwok and kubectl (``scripts/build-k8s-binaries.sh``). ``ensure_kubelet_binary``: the
kubelet of a real node (``scripts/build-kubelet.sh``). ``ensure_node_images``: the pause
and busybox image tarballs every real node imports (``containers/pause/build.sh``). All
are built from the Go module proxy into ``~/.cache/slurm-k8s-bridge/k8s`` the first time
(instant afterwards); an environment variable may name ready ones instead.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from slurm_k8s_devcluster.errors import KubeClusterError, RealNodeUnavailable

K8S_VERSION = "v1.34.10"
ETCD_VERSION = "v3.5.35"
KWOK_VERSION = "v0.8.0"
BIN_ENV = "SLURM_K8S_BRIDGE_K8S_BIN"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
#: built with them, for people using a dev cluster (not started)
TOOLS = ("kubectl",)
BUILD_SCRIPT = Path("scripts") / "build-k8s-binaries.sh"
KUBELET_BIN_ENV = "SLURM_K8S_BRIDGE_KUBELET_BIN"
KUBELET_BUILD_SCRIPT = Path("scripts") / "build-kubelet.sh"
IMAGES_SCRIPT = Path("containers") / "pause" / "build.sh"
PAUSE_IMAGE = "localhost/skb-pause:1"
BUSYBOX_IMAGE = "localhost/skb-busybox:1"


def _source_root(script: Path = BUILD_SCRIPT) -> Path | None:
    """The source checkout holding this package (``src/slurm_k8s_devcluster``), when it
    has ``script``."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / script).is_file() else None


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slurm-k8s-bridge" / "k8s"


def _missing_binaries(bin_dir: Path) -> list[str]:
    return [c for c in (*COMPONENTS, *TOOLS) if not os.access(bin_dir / c, os.X_OK)]


def run_build_script(script: Path, args: Sequence[str], timeout: float, *,
                     error: type[Exception], cwd: Path) -> tuple[Path, str]:
    """Run a build script that prints a directory as its last stdout line; return that
    directory and the tail of the script's output. Failures raise ``error``."""
    try:
        res = subprocess.run(["bash", str(script), *args], cwd=cwd, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raw = exc.stderr or b""
        out = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        raise error(f"{script} did not finish within {timeout:.0f}s:\n"
                    + "\n".join(out.splitlines()[-30:])) from exc
    lines = res.stdout.strip().splitlines()
    tail = "\n".join((res.stderr + res.stdout).strip().splitlines()[-30:])
    if res.returncode != 0 or not lines:
        raise error(f"{' '.join([str(script), *args])} failed (rc={res.returncode}):\n{tail}")
    return Path(lines[-1].strip()), tail


def ensure_k8s_binaries(timeout: float = 3600.0) -> Path:
    """Return a directory holding etcd, kube-apiserver, kube-controller-manager,
    kube-scheduler and kwok, building them first when needed.

    Order: ``$SLURM_K8S_BRIDGE_K8S_BIN`` (a ready bin dir, used as is);
    ``scripts/build-k8s-binaries.sh`` of the source checkout (instant when cached, ~7 min
    cold on 2 cores); the pinned version's cache directory when there is no checkout.
    """
    env_dir = os.environ.get(BIN_ENV)
    if env_dir:
        bin_dir = Path(env_dir).expanduser().absolute()
        missing = _missing_binaries(bin_dir)
        if missing:
            raise KubeClusterError(f"${BIN_ENV}={env_dir}: missing or not executable: "
                                   f"{', '.join(missing)}")
        return bin_dir
    root = _source_root()
    if root is None:
        cached = _cache_root() / f"{K8S_VERSION}-etcd{ETCD_VERSION}-kwok{KWOK_VERSION}-r2"
        if (cached / ".complete").is_file() and not _missing_binaries(cached / "bin"):
            return cached / "bin"
        raise KubeClusterError(
            f"no {BUILD_SCRIPT} next to {__file__} (not a source checkout) and no cached "
            f"binaries under {cached}; set ${BIN_ENV} to a directory holding "
            f"{', '.join(COMPONENTS)}")
    script = root / BUILD_SCRIPT
    bin_dir, tail = run_build_script(script, [], timeout, error=KubeClusterError, cwd=root)
    missing = _missing_binaries(bin_dir)
    if missing:
        raise KubeClusterError(f"{script} printed {bin_dir}, but it lacks "
                               f"{', '.join(missing)}:\n{tail}")
    return bin_dir


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
    root = _source_root(KUBELET_BUILD_SCRIPT)
    if root is None:
        if (cached / ".complete").is_file() and os.access(cached / "bin" / "kubelet", os.X_OK):
            return cached / "bin" / "kubelet"
        raise RealNodeUnavailable(f"no {KUBELET_BUILD_SCRIPT} (not a source checkout) and no cached "
                                  f"kubelet under {cached}; set ${KUBELET_BIN_ENV}")
    bin_dir, _ = run_build_script(root / KUBELET_BUILD_SCRIPT, [], timeout,
                                  error=RealNodeUnavailable, cwd=root)
    if not os.access(bin_dir / "kubelet", os.X_OK):
        raise RealNodeUnavailable(f"{root / KUBELET_BUILD_SCRIPT} printed {bin_dir}, "
                                  f"which has no kubelet")
    return bin_dir / "kubelet"


def ensure_node_images(out_dir: Path | None = None, timeout: float = 300.0) -> dict[str, Path]:
    """Image tarballs every node imports: ``{PAUSE_IMAGE: pause.tar, BUSYBOX_IMAGE: ...}``,
    built by ``containers/pause/build.sh`` (seconds; cached in ``out_dir``)."""
    root = _source_root(KUBELET_BUILD_SCRIPT)
    if root is None:
        raise RealNodeUnavailable(f"no {IMAGES_SCRIPT}: not a source checkout")
    out = Path(out_dir) if out_dir else _cache_root() / "node-images"
    d, _ = run_build_script(root / IMAGES_SCRIPT, [str(out)], timeout,
                            error=RealNodeUnavailable, cwd=root)
    images = {PAUSE_IMAGE: d / "pause.tar", BUSYBOX_IMAGE: d / "busybox.tar"}
    for ref, path in images.items():
        if not path.is_file():
            raise RealNodeUnavailable(f"{IMAGES_SCRIPT} did not write {path} ({ref})")
    return images
