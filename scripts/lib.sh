# Shell functions the build and cluster scripts share (sourced, never run):
#   source "$(dirname "$0")/lib.sh"
# Each caller defines log() and die() first.

# podman on this host family needs runc (crun fails on hybrid cgroup v1) and default
# ulimits within the host's hard limits, which it may not raise (see docs/containers.md).
# Written only when /etc/containers/containers.conf is absent, and only as root.
ensure_podman_conf() {
	local who="$1"
	[ "$(id -u)" -eq 0 ] || return 0
	[ -e /etc/containers/containers.conf ] && return 0
	mkdir -p /etc/containers
	cat >/etc/containers/containers.conf <<CONF
# written by slurm-k8s-bridge ${who}
[containers]
# podman's default limits may exceed the host's hard limits, which it cannot raise
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
# crun fails on hosts with hybrid cgroups; runc works
runtime = "runc"
CONF
	log "wrote /etc/containers/containers.conf (runc, ulimits within the host's limits)"
}

# K8S_VERSION (v1.MINOR.PATCH) -> K8S_MINOR, K8S_PATCH and STAGING_VERSION (the
# k8s.io/<staging> module tag matching it: v0.MINOR.PATCH); checks that go is there.
parse_k8s_version() {
	[[ -x "${GO}" ]] || die "go not found (set GO=/path/to/go)"
	[[ "${K8S_VERSION}" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] \
		|| die "K8S_VERSION must look like v1.MINOR.PATCH, got ${K8S_VERSION}"
	K8S_MINOR="${BASH_REMATCH[1]}"
	K8S_PATCH="${BASH_REMATCH[2]}"
	STAGING_VERSION="v0.${K8S_MINOR}.${K8S_PATCH}"
}

# build_cache NAME: the Go build knobs (GO, BUILD_JOBS = go build -p, BUILD_NICE; env
# K8S_BUILD_JOBS, K8S_BUILD_NICE) and the cache of one build: OUT_DIR = CACHE_ROOT/NAME
# (CACHE_ROOT under the user's cache folder), its BIN_DIR and its STAMP.
build_cache() {
	GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
	BUILD_JOBS="${K8S_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
	BUILD_NICE="${K8S_BUILD_NICE:-19}"
	CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/slurm-k8s-bridge/k8s"
	OUT_DIR="${CACHE_ROOT}/$1"
	BIN_DIR="${OUT_DIR}/bin"
	STAMP="${OUT_DIR}/.complete"
}

# cache_or_lock [FILE]: the build cached in OUT_DIR (complete when STAMP, and FILE if given,
# exist) prints BIN_DIR and exits the script; otherwise takes OUT_DIR's lock (fd 9, held until
# the script ends), so concurrent builds of one version wait for each other, and looks again.
cache_ready() { [[ -f "${STAMP}" ]] && { [[ -z "${1:-}" ]] || [[ -x "$1" ]]; }; }
cache_or_lock() {
	if cache_ready "$@"; then echo "${BIN_DIR}"; exit 0; fi
	mkdir -p "${OUT_DIR}"
	exec 9>"${OUT_DIR}/.lock"
	flock 9
	if cache_ready "$@"; then echo "${BIN_DIR}"; exit 0; fi   # finished while we waited
}

# go_build_env: everything from the module proxy, cached under CACHE_ROOT (one module cache
# for every build), static binaries (CGO_ENABLED=0) as upstream ships them, never another
# toolchain; gocmd runs go at BUILD_NICE; WORK is a scratch folder in OUT_DIR, removed at exit.
go_build_env() {
	export GOPATH="${CACHE_ROOT}/gopath"
	export GOMODCACHE="${GOPATH}/pkg/mod"
	export GOTOOLCHAIN=local
	export GO111MODULE=on
	export GOFLAGS="-mod=mod -buildvcs=false -p=${BUILD_JOBS}"
	export CGO_ENABLED=0
	unset GOOS GOARCH 2>/dev/null || true
	export GOWORK=off
	build_date="$(date -u ${SOURCE_DATE_EPOCH:+--date=@${SOURCE_DATE_EPOCH}} +%Y-%m-%dT%H:%M:%SZ)"
	WORK="$(mktemp -d "${OUT_DIR}/.work.XXXXXX")"
	# shellcheck disable=SC2064 # WORK is fixed now
	trap "rm -rf '${WORK}'" EXIT
}
gocmd() { nice -n "${BUILD_NICE}" "${GO}" "$@"; }

# cache_publish STAGED_BIN LINE: the built binaries become BIN_DIR and the stamp (LINE, then
# the Go version, build date and seconds) marks OUT_DIR complete; the stamp is written last.
cache_publish() {
	rm -rf "${BIN_DIR}"
	mv "$1" "${BIN_DIR}"
	{
		echo "$2"
		echo "go=$("${GO}" env GOVERSION) built=${build_date} seconds=${SECONDS}"
	} >"${STAMP}.tmp"
	mv "${STAMP}.tmp" "${STAMP}"
	log "done in ${SECONDS}s"
}

# go_wrapper DIR GOVERSION: an empty main module in DIR whose only job is to require the
# upstream module (without inheriting its replace directives).
go_wrapper() {
	mkdir -p "$1"
	printf 'module local.invalid/%s\n\ngo %s\n' "$(basename "$1")" "$2" >"$1/go.mod"
}

# k8s_wrapper DIR: a wrapper module requiring k8s.io/kubernetes@K8S_VERSION. That module
# requires its staging repos at v0.0.0 and replaces them with ./staging/src/k8s.io/<name>;
# the wrapper replaces each with the published k8s.io/<name> STAGING_VERSION module instead,
# the list generated from the upstream go.mod (those with a `=> ./staging/src/...` replace
# that the module also requires at v0.0.0).
k8s_wrapper() {
	local w="$1" gomod m
	go_wrapper "$w" 1.24.0
	log "fetching k8s.io/kubernetes@${K8S_VERSION} from the proxy"
	gomod="$(cd "$w" && gocmd mod download -json "k8s.io/kubernetes@${K8S_VERSION}" \
		| sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
	[[ -f "${gomod}" ]] || die "could not download k8s.io/kubernetes@${K8S_VERSION}"
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
	log "${#staging[@]} staging modules -> ${STAGING_VERSION}"
	{
		printf '\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "${K8S_VERSION}"
		for m in "${staging[@]}"; do printf '\t%s => %s %s\n' "$m" "$m" "${STAGING_VERSION}"; done
		printf ')\n'
	} >>"$w/go.mod"
}

# k8s_build DIR OUT CMD: builds k8s.io/kubernetes/cmd/CMD in the wrapper DIR into OUT, with
# the -X version variables of hack/lib/version.sh (kube::version::ldflags) and the tags of
# hack/lib/golang.sh (selinux,notest,grpcnotrace).
k8s_build() {
	local ldflags="-s -w" pkg
	for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
		ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
		ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${K8S_MINOR}"
		ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.gitCommit=0000000000000000000000000000000000000000"
		ldflags+=" -X ${pkg}.buildDate=${build_date}"
	done
	log "building $3"
	(cd "$1" && gocmd build -trimpath -tags=selinux,notest,grpcnotrace \
		-ldflags "${ldflags}" -o "$2" "k8s.io/kubernetes/cmd/$3")
}

# go_get_build NAME PKG VERSION OUT LDFLAGS: PKG@VERSION resolved in its own wrapper module
# (WORK/NAME) and built into OUT with LDFLAGS, for main packages whose module cannot be
# `go install`ed directly (local replace directives).
go_get_build() {
	local w="${WORK}/$1"
	go_wrapper "$w" 1.24
	log "$1: resolving $2@$3"
	(cd "$w" && gocmd get "$2@$3")
	log "$1: building"
	(cd "$w" && gocmd build -trimpath -ldflags "$5" -o "$4" "$2")
}
