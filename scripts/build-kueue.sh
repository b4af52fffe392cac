#!/usr/bin/env bash
# Build the Kueue controller manager from the Go module proxy (no GitHub, no container
# registries) and keep it with the CRDs and webhook manifests of the same module, cached by
# version.
#
#   bash scripts/build-kueue.sh      # prints the bin dir as last stdout line
#
# Cache layout (root = ${XDG_CACHE_HOME:-$HOME/.cache}/slurm-k8s-bridge/k8s, shared with the
# control plane's module cache):
#   <root>/kueue-<version>/bin/kueue                      the controller manager
#   <root>/kueue-<version>/share/kueue/crd/*.yaml        config/components/crd/bases, as is
#   <root>/kueue-<version>/share/kueue/webhook/manifests.yaml  config/components/webhook
#   <root>/kueue-<version>/share/kueue/rbac/{role,manager_secrets_role,metrics_auth_role}.yaml
#   <root>/kueue-<version>/.complete                     (written last; warm path key)
#
# The CRD files need no kustomize: the bases are plain CustomResourceDefinitions. The
# kustomization only adds a conversion webhook to some of them (a Service inside the
# cluster); the development cluster applies the bases and sets that webhook itself, with a
# url, because its Kueue runs outside the cluster (src/slurm_k8s_devcluster/kueue.py).
set -euo pipefail

KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"

log() { echo "[build-kueue] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build_cache "kueue-${KUEUE_VERSION}"   # scripts/lib.sh: GO, OUT_DIR, BIN_DIR, STAMP

[[ "${KUEUE_VERSION}" =~ ^v0\.[0-9]+\.[0-9]+$ ]] \
	|| die "KUEUE_VERSION must look like v0.MINOR.PATCH, got ${KUEUE_VERSION}"
[[ -x "${GO}" ]] || die "go not found (set GO=/path/to/go)"

cache_or_lock "${BIN_DIR}/kueue"   # scripts/lib.sh: exits here when this version is built
go_build_env                       # scripts/lib.sh: GOPATH under CACHE_ROOT, static, gocmd, WORK

STAGE_BIN="${WORK}/bin"
mkdir -p "${STAGE_BIN}"
log "go: $("${GO}" version)"
log "kueue ${KUEUE_VERSION} -> ${BIN_DIR}"

SECONDS=0
# sigs.k8s.io/kueue has no replace directives, so a wrapper module resolves exactly the
# dependency set its go.mod pins; the -X variables are those of its Makefile (LD_FLAGS).
go_get_build kueue sigs.k8s.io/kueue/cmd/kueue "${KUEUE_VERSION}" "${STAGE_BIN}/kueue" \
	"-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=${KUEUE_VERSION} -X sigs.k8s.io/kueue/pkg/version.GitCommit=goproxy-${KUEUE_VERSION} -X sigs.k8s.io/kueue/pkg/version.BuildDate=${build_date}"

# ---- the manifests of the same module ------------------------------------------------
mod_dir="$(cd "${WORK}/kueue" && "${GO}" list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"
[[ -d "${mod_dir}/config/components/crd/bases" ]] \
	|| die "config/components/crd/bases not found in ${mod_dir}"
mkdir -p "${WORK}/share/kueue/crd" "${WORK}/share/kueue/webhook" "${WORK}/share/kueue/rbac"
cp "${mod_dir}"/config/components/crd/bases/*.yaml "${WORK}/share/kueue/crd/"
cp "${mod_dir}/config/components/webhook/manifests.yaml" "${WORK}/share/kueue/webhook/"
for f in role.yaml manager_secrets_role.yaml metrics_auth_role.yaml; do
	[[ -f "${mod_dir}/config/components/rbac/${f}" ]] || die "config/components/rbac/${f} not found in ${mod_dir}"
	cp "${mod_dir}/config/components/rbac/${f}" "${WORK}/share/kueue/rbac/"
done
chmod -R u+w "${WORK}/share"   # the module cache is read-only
n_crd="$(find "${WORK}/share/kueue/crd" -name '*.yaml' | wc -l)"
(( n_crd >= 5 )) || die "only ${n_crd} CRD files in ${mod_dir}/config/components/crd/bases"
log "${n_crd} CRDs, webhook manifests"

# ---- verify -------------------------------------------------------------------
# The manager has no --version flag; its startup log line carries the -X values, and an
# unknown flag makes it print its flag set (Go's flag package: "-config string") and exit,
# which proves the binary runs here.
out="$("${STAGE_BIN}/kueue" --no-such-flag 2>&1 || true)"
[[ "${out}" == *"-config string"* ]] || die "kueue does not run here: $(tail -n 5 <<<"${out}")"
log "verified: kueue runs (it knows -config)"

rm -rf "${OUT_DIR}/share"
mv "${WORK}/share" "${OUT_DIR}/share"
cache_publish "${STAGE_BIN}" "kueue=${KUEUE_VERSION}"
echo "${BIN_DIR}"
