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
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
BUILD_JOBS="${K8S_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
BUILD_NICE="${K8S_BUILD_NICE:-19}"

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/slurm-k8s-bridge/k8s"
OUT_DIR="${CACHE_ROOT}/kubelet-${K8S_VERSION}-r1"
BIN_DIR="${OUT_DIR}/bin"
STAMP="${OUT_DIR}/.complete"

if [[ -f "${STAMP}" && -x "${BIN_DIR}/kubelet" ]]; then
    echo "${BIN_DIR}"
    exit 0
fi

parse_k8s_version   # scripts/lib.sh: K8S_MINOR, K8S_PATCH, STAGING_VERSION

mkdir -p "${OUT_DIR}"
exec 9>"${OUT_DIR}/.lock"
flock 9
if [[ -f "${STAMP}" && -x "${BIN_DIR}/kubelet" ]]; then
    echo "${BIN_DIR}"
    exit 0
fi

# Same Go environment as scripts/build-k8s-binaries.sh, so the module cache is shared.
export GOPATH="${CACHE_ROOT}/gopath"
export GOMODCACHE="${GOPATH}/pkg/mod"
export GOTOOLCHAIN=local
export GO111MODULE=on
export GOFLAGS="-mod=mod -buildvcs=false -p=${BUILD_JOBS}"
# Upstream builds the kubelet with cgo when a compiler is there; nothing it needs on Linux
# requires cgo (cadvisor's optional cgo parts are behind build tags), so it is built static
# like the control plane.
export CGO_ENABLED=0
unset GOOS GOARCH 2>/dev/null || true
export GOWORK=off

gocmd() { nice -n "${BUILD_NICE}" "${GO}" "$@"; }

WORK="$(mktemp -d "${OUT_DIR}/.work.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT
w="${WORK}/kubelet"
mkdir -p "${w}" "${WORK}/bin"
printf 'module local.invalid/kubelet\n\ngo 1.24.0\n' >"${w}/go.mod"

log "go: $("${GO}" version)"
log "kubelet ${K8S_VERSION} (staging ${STAGING_VERSION}) -> ${BIN_DIR}"
SECONDS=0

gomod="$(cd "${w}" && gocmd mod download -json "k8s.io/kubernetes@${K8S_VERSION}" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
[[ -f "${gomod}" ]] || die "could not download k8s.io/kubernetes@${K8S_VERSION}"
# k8s.io/kubernetes requires its staging repos at v0.0.0 and replaces them with
# ./staging/src/...: point each at the published v0.MINOR.PATCH module instead.
mapfile -t staging < <(awk '
    /^require[[:space:]]*\(/ {inreq=1; next}
    /^replace[[:space:]]*\(/ {inrep=1; next}
    /^\)/ {inreq=0; inrep=0; next}
    inreq && $2 == "v0.0.0" {req[$1]=1}
    inrep && $2 == "=>" && $3 ~ /^\.\/staging\// {rep[$1]=1}
    END {for (m in rep) if (m in req) print m}
' "${gomod}" | sort)
(( ${#staging[@]} > 10 )) || die "unexpectedly few staging modules parsed from ${gomod}"
{
    printf '\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "${K8S_VERSION}"
    for m in "${staging[@]}"; do printf '\t%s => %s %s\n' "$m" "$m" "${STAGING_VERSION}"; done
    printf ')\n'
} >>"${w}/go.mod"

log "resolving k8s.io/kubernetes/cmd/kubelet@${K8S_VERSION}"
(cd "${w}" && gocmd get "k8s.io/kubernetes/cmd/kubelet@${K8S_VERSION}")

build_date="$(date -u ${SOURCE_DATE_EPOCH:+--date=@${SOURCE_DATE_EPOCH}} +%Y-%m-%dT%H:%M:%SZ)"
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
    ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${K8S_MINOR}"
    ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.gitCommit=0000000000000000000000000000000000000000"
    ldflags+=" -X ${pkg}.buildDate=${build_date}"
done
log "building kubelet"
(cd "${w}" && gocmd build -trimpath -tags=selinux,notest,grpcnotrace \
    -ldflags "${ldflags}" -o "${WORK}/bin/kubelet" k8s.io/kubernetes/cmd/kubelet)

out="$("${WORK}/bin/kubelet" --version 2>&1)" || die "kubelet --version failed: ${out}"
[[ "${out}" == *"Kubernetes ${K8S_VERSION}"* ]] || die "kubelet --version: got ${out}"
log "verified: ${out}"

rm -rf "${BIN_DIR}"
mv "${WORK}/bin" "${BIN_DIR}"
{
    echo "kubelet=${K8S_VERSION}"
    echo "go=$("${GO}" env GOVERSION) built=${build_date} seconds=${SECONDS}"
} >"${STAMP}.tmp"
mv "${STAMP}.tmp" "${STAMP}"
log "done in ${SECONDS}s"
echo "${BIN_DIR}"
