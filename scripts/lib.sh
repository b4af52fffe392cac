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
