#!/usr/bin/env bash
# Build slurm-k8s-bridge's container images for one Debian suite, without a registry:
#   scripts/build-images.sh [--suite bookworm|trixie|all] [--engine podman|docker]
#                           [--install-deps] [--no-cache] [--only worker,controller,login]
# bookworm gives Slurm 22.05, trixie Slurm 24.11. Images:
#   localhost/slurm-k8s-bridge-base:SUITE        debootstrap minbase (containers/base/mkbase.sh)
#   localhost/slurm-k8s-bridge-worker:SUITE      munged + slurmd -Z (one dynamic node per pod)
#   localhost/slurm-k8s-bridge-controller:SUITE  slurmctld + job_submit_k8s.so + the daemon
#   localhost/slurm-k8s-bridge-login:SUITE       sbatch/srun/squeue/... + spank_k8s.so + mpicc
# The build context is the repository (the project is pip-installed into each image and its
# plugins compiled there against the image's Slurm). What is built is reused: the base is
# kept when present, and the engine's layer cache skips unchanged steps. Prints timings.
#
# Environment: BUILD_CA_BUNDLE=FILE, CA certificates pip trusts in the build (default: the
# host's bundle); DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR for the base (mkbase.sh).
#
# --install-deps installs the host's tools (debootstrap, podman, runc) from Debian and, when
# /etc/containers/containers.conf does not exist, writes the settings podman needs here
# (runc as the runtime, default ulimits within the host's hard limits). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

suites=(bookworm)
engine=
install_deps=0
cache_args=()
only=(worker controller login)
while [ "$#" -gt 0 ]; do
	case "$1" in
		--suite) suites=("$2"); shift 2 ;;
		--suite=*) suites=("${1#*=}"); shift ;;
		--engine) engine=$2; shift 2 ;;
		--engine=*) engine=${1#*=}; shift ;;
		--install-deps) install_deps=1; shift ;;
		--no-cache) cache_args=(--no-cache); shift ;;
		--only) IFS=, read -r -a only <<<"$2"; shift 2 ;;
		--only=*) IFS=, read -r -a only <<<"${1#*=}"; shift ;;
		-h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
		*) echo "build-images: unknown argument '$1' (--help)" >&2; exit 2 ;;
	esac
done
[ "${suites[0]}" = all ] && suites=(bookworm trixie)
for s in "${suites[@]}"; do
	case "$s" in bookworm|trixie) ;; *) echo "build-images: --suite must be bookworm, trixie or all" >&2; exit 2 ;; esac
done
for i in "${only[@]}"; do
	case "$i" in worker|controller|login) ;; *) echo "build-images: --only takes worker, controller, login" >&2; exit 2 ;; esac
done

CONTAINERS_CONF=/etc/containers/containers.conf
install_host_deps() {
	if [ "$(id -u)" -ne 0 ]; then
		echo "build-images: --install-deps needs root (apt-get)" >&2; exit 1
	fi
	local need=()
	command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
	if [ "${engine:-podman}" = podman ]; then
		command -v podman >/dev/null 2>&1 || need+=(podman)
		command -v runc >/dev/null 2>&1 || need+=(runc)
	fi
	if [ "${#need[@]}" -gt 0 ]; then
		echo "==> installing ${need[*]} (Debian)"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${need[@]}" debian-archive-keyring \
			ca-certificates >/dev/null
	fi
	if [ "${engine:-podman}" = podman ]; then
		if [ ! -e "$CONTAINERS_CONF" ]; then
			echo "==> writing $CONTAINERS_CONF (runc runtime, ulimits within the host's limits)"
			mkdir -p "$(dirname "$CONTAINERS_CONF")"
			cat >"$CONTAINERS_CONF" <<'CONF'
# written by slurm-k8s-bridge scripts/build-images.sh --install-deps
[containers]
# podman's default limits may exceed the host's hard limits, which it cannot raise
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
# crun fails on hosts with hybrid cgroups; runc works
runtime = "runc"
CONF
		elif ! grep -q '^[[:space:]]*runtime[[:space:]]*=' "$CONTAINERS_CONF"; then
			echo "build-images: note: $CONTAINERS_CONF sets no [engine] runtime; if containers" \
				"fail to start, add runtime = \"runc\" there" >&2
		fi
	fi
}

pick_engine() {
	if [ -n "$engine" ]; then
		case "$engine" in podman|docker) ;; *) echo "build-images: --engine podman|docker" >&2; exit 2 ;; esac
		return
	fi
	if command -v podman >/dev/null 2>&1; then engine=podman
	elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker
	else
		echo "build-images: no container engine: neither podman nor a running docker engine" \
			"(run with --install-deps to install podman)" >&2
		exit 1
	fi
}

[ "$install_deps" = 1 ] && install_host_deps
pick_engine
if [ "$engine" = docker ] && ! docker info >/dev/null 2>&1; then
	echo "build-images: docker is installed but no docker engine answers" >&2; exit 1
fi

# pip inside the build trusts what the host trusts (a TLS-intercepting proxy's CA): the
# host's CA bundle goes in as the build secret "cacert", used by pip and not kept.
secret_args=()
for ca in "${BUILD_CA_BUNDLE:-}" "${PIP_CERT:-}" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" \
		/etc/ssl/certs/ca-certificates.crt; do
	if [ -n "$ca" ] && [ -s "$ca" ]; then
		secret_args=(--secret "id=cacert,src=$ca")
		break
	fi
done

declare -a report=()
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
size_of() {
	"$engine" image inspect --format '{{.Size}}' "$1" 2>/dev/null |
		awk '{ printf "%.0f MB", $1 / 1000000 }'
}

total=$(now)
for suite in "${suites[@]}"; do
	t=$(now)
	bash containers/base/mkbase.sh "$suite" "$engine"
	report+=("$(printf '%-46s %8ss  %s' "localhost/slurm-k8s-bridge-base:$suite" "$(elapsed "$t")" \
		"$(size_of "localhost/slurm-k8s-bridge-base:$suite")")")
	for name in "${only[@]}"; do
		tag=localhost/slurm-k8s-bridge-$name:$suite
		echo "==> $engine build $tag"
		t=$(now)
		log=$(mktemp "${TMPDIR:-/tmp}/build-$name-$suite.XXXXXX.log")
		if ! "$engine" build "${cache_args[@]}" "${secret_args[@]}" --build-arg "SUITE=$suite" \
				-f containers/Containerfile --target "$name" -t "$tag" . >"$log" 2>&1; then
			tail -n 40 "$log" >&2
			echo "build-images: building $tag failed (full log: $log)" >&2
			exit 1
		fi
		rm -f "$log"
		report+=("$(printf '%-46s %8ss  %s' "$tag" "$(elapsed "$t")" "$(size_of "$tag")")")
		echo "    $tag: $(elapsed "$t") s"
	done
done
echo "==> built with $engine in $(elapsed "$total") s"
printf '    %-46s %9s  %s\n' image seconds size
for line in "${report[@]}"; do echo "    $line"; done
