#!/usr/bin/env bash
# Build a real kubelet from the Go module proxy (no GitHub, no container registry) and the
# node's pause image, for the real-node test tier (docs/real-node.md).
#
#   bash scripts/build-kubelet.sh                 # prints the bin dir as last stdout line
#   sudo bash scripts/build-kubelet.sh --install-deps   # first: Debian packages the node needs
#   bash scripts/build-kubelet.sh --print-deps    # the Debian packages, one per line
#
# Cache layout (root = ${XDG_CACHE_HOME:-$HOME/.cache}/slurm-k8s-bridge/k8s), next to and
# independent of scripts/build-k8s-binaries.sh's control-plane directory:
#   <root>/kubelet-<k8s>-r1/bin/kubelet
#   <root>/kubelet-<k8s>-r1/.complete          (written last; warm path key)
#   <root>/gopath, <root>/gopath/pkg/mod      (GOPATH / GOMODCACHE, shared with the
#                                              control-plane build)
# The pause image is not cached here: containers/pause/build.sh builds it in seconds.
set -euo pipefail

# Debian packages a real node needs: container runtime (containerd 1.6 + runc), CNI plugins
# (bridge, host-local, loopback, portmap), what the kubelet and the plugins shell out to
# (iptables, ip, mount/umount/nsenter), openssl for the node's certificates, gcc + static
# libc for the pause program, podman to hand images built with it to the node.
# Keep in sync with docs/real-node.md and slurm_k8s_devcluster/kubelet.py (REQUIRED_PROGRAMS).
NODE_PACKAGES=(containerd runc containernetworking-plugins iptables iproute2 util-linux
               mount openssl gcc libc6-dev podman)

log() { echo "[build-kubelet] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

install_deps() {
    local missing=() p
    for p in "${NODE_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "Debian packages present: ${NODE_PACKAGES[*]}"
    else
        [[ "$(id -u)" -eq 0 ]] || die "missing Debian packages (${missing[*]}) and not root"
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    ensure_podman_conf scripts/build-kubelet.sh
    # The Debian containerd package starts a system containerd; the test node runs its own
    # (private root, state and socket) and never talks to it.
}

case "${1:-}" in
    --print-deps) printf '%s\n' "${NODE_PACKAGES[@]}"; exit 0 ;;
    --install-deps) install_deps; shift ;;
    "") ;;
    *) die "unknown argument $1 (use --install-deps or --print-deps)" ;;
esac

# ---- pinned version (override via env; must match the control plane) ---------------------
K8S_VERSION="${K8S_VERSION:-v1.34.10}"
build_cache "kubelet-${K8S_VERSION}-r1"   # scripts/lib.sh: GO, OUT_DIR, BIN_DIR, STAMP

cache_or_lock "${BIN_DIR}/kubelet"   # scripts/lib.sh: exits here when built
parse_k8s_version   # scripts/lib.sh: K8S_MINOR, K8S_PATCH, STAGING_VERSION
# The control plane's Go environment (scripts/lib.sh), so the module cache is shared. Upstream
# builds the kubelet with cgo when a compiler is there; nothing it needs on Linux requires cgo
# (cadvisor's optional cgo parts are behind build tags), so it is built static like the rest.
go_build_env

w="${WORK}/kubelet"
mkdir -p "${WORK}/bin"
log "go: $("${GO}" version)"
log "kubelet ${K8S_VERSION} (staging ${STAGING_VERSION}) -> ${BIN_DIR}"
SECONDS=0
k8s_wrapper "${w}"     # scripts/lib.sh
log "resolving k8s.io/kubernetes/cmd/kubelet@${K8S_VERSION}"
(cd "${w}" && gocmd get "k8s.io/kubernetes/cmd/kubelet@${K8S_VERSION}")
k8s_build "${w}" "${WORK}/bin/kubelet" kubelet

out="$("${WORK}/bin/kubelet" --version 2>&1)" || die "kubelet --version failed: ${out}"
[[ "${out}" == *"Kubernetes ${K8S_VERSION}"* ]] || die "kubelet --version: got ${out}"
log "verified: ${out}"

cache_publish "${WORK}/bin" "kubelet=${K8S_VERSION}"
echo "${BIN_DIR}"
