#!/usr/bin/env bash
# Build a real Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) plus KWOK from the Go module proxy
# only (no GitHub, no container registries), and cache the binaries by version.
#
#   bash scripts/build-k8s-binaries.sh      # prints the bin dir as last stdout line
#
# Cache layout (root = ${XDG_CACHE_HOME:-$HOME/.cache}/slurm-k8s-bridge/k8s):
#   <root>/<k8s>-etcd<etcd>-kwok<kwok>/bin/{etcd,kube-apiserver,...}
#   <root>/<k8s>-etcd<etcd>-kwok<kwok>/share/kwok/stages-fast.yaml (kwok --config)
#   <root>/<k8s>-etcd<etcd>-kwok<kwok>/.complete   (written last; warm path key)
#   <root>/gopath, <root>/gopath/pkg/mod          (GOPATH / GOMODCACHE, reused)
# The Go build cache (GOCACHE) is left at Go's default (os.UserCacheDir()/go-build,
# i.e. it also follows XDG_CACHE_HOME) unless GOCACHE is set.
#
# See docs/k8s-control-plane.md for the approach and pitfalls.
set -euo pipefail

# ---- pinned versions (override via env) ------------------------------------
K8S_VERSION="${K8S_VERSION:-v1.34.10}"
ETCD_VERSION="${ETCD_VERSION:-v3.5.35}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"

# ---- build knobs ------------------------------------------------------------
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
BUILD_JOBS="${K8S_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"  # go build -p
BUILD_NICE="${K8S_BUILD_NICE:-19}"

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/slurm-k8s-bridge/k8s"
# -r2: kubectl joined the set (a cache built without it is rebuilt, not reused)
OUT_DIR="${CACHE_ROOT}/${K8S_VERSION}-etcd${ETCD_VERSION}-kwok${KWOK_VERSION}-r2"
BIN_DIR="${OUT_DIR}/bin"
STAMP="${OUT_DIR}/.complete"

log() { echo "[build-k8s-binaries] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---- warm path ----------------------------------------------------------------
if [[ -f "${STAMP}" ]]; then
    echo "${BIN_DIR}"
    exit 0
fi

parse_k8s_version   # scripts/lib.sh: K8S_MINOR, K8S_PATCH, STAGING_VERSION

mkdir -p "${OUT_DIR}"
# Serialise concurrent builds of the same version set.
exec 9>"${OUT_DIR}/.lock"
flock 9
if [[ -f "${STAMP}" ]]; then  # somebody else finished while we waited
    echo "${BIN_DIR}"
    exit 0
fi

# ---- Go environment: everything from the module proxy, cached under CACHE_ROOT --
export GOPATH="${CACHE_ROOT}/gopath"
export GOMODCACHE="${GOPATH}/pkg/mod"
export GOTOOLCHAIN=local          # never try to download another toolchain
export GO111MODULE=on
export GOFLAGS="-mod=mod -buildvcs=false -p=${BUILD_JOBS}"
export CGO_ENABLED=0              # upstream builds these as static binaries
unset GOWORK GOOS GOARCH 2>/dev/null || true
export GOWORK=off

gocmd() { nice -n "${BUILD_NICE}" "${GO}" "$@"; }

WORK="$(mktemp -d "${OUT_DIR}/.work.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT
STAGE_BIN="${WORK}/bin"
mkdir -p "${STAGE_BIN}"

log "go: $("${GO}" version)"
log "versions: kubernetes ${K8S_VERSION} (staging ${STAGING_VERSION}), etcd ${ETCD_VERSION}, kwok ${KWOK_VERSION}"
log "output: ${BIN_DIR}"

# new_wrapper DIR GOVERSION: an empty main module in DIR whose only job is to
# require the upstream module (without inheriting its replace directives).
new_wrapper() {
    local dir="$1" gover="$2"
    mkdir -p "${dir}"
    printf 'module local.invalid/%s\n\ngo %s\n' "$(basename "${dir}")" "${gover}" >"${dir}/go.mod"
}

build_date="$(date -u ${SOURCE_DATE_EPOCH:+--date=@${SOURCE_DATE_EPOCH}} +%Y-%m-%dT%H:%M:%SZ)"

# ---- etcd ---------------------------------------------------------------------
# go.etcd.io/etcd/server/v3 is the etcd main package in 3.5.x, but its go.mod has
# local `replace ../api` directives, so `go install ...@v3.5.x` is refused. Its
# require block pins the sibling modules at the same version, so a wrapper
# module without replaces resolves the exact upstream dependency set.
build_etcd() {
    local w="${WORK}/etcd"
    new_wrapper "${w}" 1.24
    log "etcd: resolving go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
    (cd "${w}" && gocmd get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}")
    log "etcd: building"
    (cd "${w}" && gocmd build -trimpath \
        -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=goproxy-${ETCD_VERSION}" \
        -o "${STAGE_BIN}/etcd" go.etcd.io/etcd/server/v3)
}

# ---- kubernetes ---------------------------------------------------------------
# k8s.io/kubernetes requires its staging repos at v0.0.0 and replaces them with
# ./staging/src/k8s.io/<name>. Replicate that with replaces to the published
# k8s.io/<name> ${STAGING_VERSION} modules, generated from the upstream go.mod.
build_kubernetes() {
    local w="${WORK}/kubernetes" gomod
    new_wrapper "${w}" 1.24.0
    log "kubernetes: fetching k8s.io/kubernetes@${K8S_VERSION} from the proxy"
    gomod="$(cd "${w}" && gocmd mod download -json "k8s.io/kubernetes@${K8S_VERSION}" \
        | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
    [[ -f "${gomod}" ]] || die "could not download k8s.io/kubernetes@${K8S_VERSION}"

    # Staging modules = those with a `=> ./staging/src/...` replace that the
    # kubernetes module also requires at v0.0.0.
    local -a staging
    mapfile -t staging < <(awk '
        /^require[[:space:]]*\(/ {inreq=1; next}
        /^replace[[:space:]]*\(/ {inrep=1; next}
        /^\)/ {inreq=0; inrep=0; next}
        inreq && $2 == "v0.0.0" {req[$1]=1}
        inrep && $2 == "=>" && $3 ~ /^\.\/staging\// {rep[$1]=1}
        END {for (m in rep) if (m in req) print m}
    ' "${gomod}" | sort)
    (( ${#staging[@]} > 10 )) || die "unexpectedly few staging modules parsed from ${gomod}"
    log "kubernetes: ${#staging[@]} staging modules -> ${STAGING_VERSION}"
    {
        printf '\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "${K8S_VERSION}"
        local m
        for m in "${staging[@]}"; do printf '\t%s => %s %s\n' "$m" "$m" "${STAGING_VERSION}"; done
        printf ')\n'
    } >>"${w}/go.mod"

    local -a cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl) pkgs=()
    local c
    for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/${c}"); done

    log "kubernetes: resolving dependencies"
    (cd "${w}" && gocmd get "${pkgs[@]/%/@${K8S_VERSION}}")

    # Same -X variables as hack/lib/version.sh (kube::version::ldflags).
    local ldflags="-s -w" pkg
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
        ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${K8S_MINOR}"
        ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.gitCommit=0000000000000000000000000000000000000000"
        ldflags+=" -X ${pkg}.buildDate=${build_date}"
    done
    for c in "${cmds[@]}"; do
        log "kubernetes: building ${c}"
        # Tags as in hack/lib/golang.sh (selinux,notest,grpcnotrace).
        (cd "${w}" && gocmd build -trimpath -tags=selinux,notest,grpcnotrace \
            -ldflags "${ldflags}" -o "${STAGE_BIN}/${c}" "k8s.io/kubernetes/cmd/${c}")
    done
}

# ---- kwok ---------------------------------------------------------------------
build_kwok() {
    local w="${WORK}/kwok"
    new_wrapper "${w}" 1.24
    log "kwok: resolving sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
    (cd "${w}" && gocmd get "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}")
    log "kwok: building"
    (cd "${w}" && gocmd build -trimpath \
        -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
        -o "${STAGE_BIN}/kwok" sigs.k8s.io/kwok/cmd/kwok)

    # The kwok binary has no built-in stages (it exits with "no stages found"),
    # kwokctl normally supplies them. Ship upstream's "fast" stage set
    # (kustomize/stage/fast = node/fast + node/heartbeat-with-lease + pod/fast)
    # from the module zip as a ready-to-use `kwok --config` file.
    local dir f
    dir="$(cd "${w}" && "${GO}" list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
    mkdir -p "${WORK}/share/kwok"
    {
        echo "# kwok ${KWOK_VERSION} kustomize/stage/fast, generated by build-k8s-binaries.sh"
        echo "# use with: kwok --config=<this file> --node-lease-duration-seconds=40 ..."
        for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
                 pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
            [[ -f "${dir}/kustomize/stage/${f}" ]] || die "kwok stage ${f} not found in ${dir}"
            echo "---"
            cat "${dir}/kustomize/stage/${f}"
        done
    } >"${WORK}/share/kwok/stages-fast.yaml"
}

SECONDS=0
build_etcd
build_kubernetes
build_kwok

# ---- verify -------------------------------------------------------------------
check_version() {  # BIN EXPECTED_SUBSTRING
    local out
    out="$("${STAGE_BIN}/$1" --version 2>&1)" || die "$1 --version failed: ${out}"
    [[ "${out}" == *"$2"* ]] || die "$1 --version: expected '$2', got: ${out}"
    log "verified: $1 -> $(head -n1 <<<"${out}")"
}
check_version etcd "etcd Version: ${ETCD_VERSION#v}"
check_version kube-apiserver "Kubernetes ${K8S_VERSION}"
check_version kube-controller-manager "Kubernetes ${K8S_VERSION}"
check_version kube-scheduler "Kubernetes ${K8S_VERSION}"
kubectl_out="$("${STAGE_BIN}/kubectl" version --client 2>&1)" || die "kubectl version failed: ${kubectl_out}"
[[ "${kubectl_out}" == *"${K8S_VERSION}"* ]] || die "kubectl version: expected ${K8S_VERSION}, got: ${kubectl_out}"
log "verified: kubectl -> $(head -n1 <<<"${kubectl_out}")"
check_version kwok "${KWOK_VERSION#v}"

# ---- publish ------------------------------------------------------------------
rm -rf "${BIN_DIR}" "${OUT_DIR}/share"
mv "${STAGE_BIN}" "${BIN_DIR}"
mv "${WORK}/share" "${OUT_DIR}/share"
{
    echo "k8s=${K8S_VERSION} etcd=${ETCD_VERSION} kwok=${KWOK_VERSION}"
    echo "go=$("${GO}" env GOVERSION) built=${build_date} seconds=${SECONDS}"
} >"${STAMP}.tmp"
mv "${STAMP}.tmp" "${STAMP}"
log "done in ${SECONDS}s"
echo "${BIN_DIR}"
