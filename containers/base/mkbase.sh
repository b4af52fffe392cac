#!/usr/bin/env bash
# Build the Debian base image of slurm-k8s-bridge's containers without a registry:
#   containers/base/mkbase.sh SUITE [ENGINE]
# debootstraps a minbase SUITE (bookworm: Slurm 22.05, trixie: Slurm 24.11) from the Debian
# mirror and imports it as localhost/slurm-k8s-bridge-base:SUITE. An image already there is
# kept (delete it, or set REBUILD=1, to make a new one). Needs root and debootstrap; the
# host's tools come from `scripts/build-images.sh --install-deps`, never from here.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian),
#              DEBIAN_SECURITY_MIRROR (default http://deb.debian.org/debian-security),
#              REBUILD=1 to replace an existing image.
set -euo pipefail

usage() { echo "usage: $0 SUITE [podman|docker]" >&2; exit 2; }
[ "$#" -ge 1 ] && [ "$#" -le 2 ] || usage
suite=$1
case "$suite" in
	bookworm|trixie|forky|sid) ;;
	*) echo "mkbase: unknown suite '$suite' (bookworm, trixie, forky or sid)" >&2; exit 2 ;;
esac

engine=${2:-}
if [ -z "$engine" ]; then
	if command -v podman >/dev/null 2>&1; then engine=podman
	elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker
	else echo "mkbase: neither podman nor a running docker engine found" \
		"(scripts/build-images.sh --install-deps installs podman)" >&2; exit 1
	fi
fi
case "$engine" in podman|docker) ;; *) usage ;; esac

image=localhost/slurm-k8s-bridge-base:$suite
if [ "${REBUILD:-0}" != 1 ] && "$engine" image inspect "$image" >/dev/null 2>&1; then
	echo "mkbase: $image exists, kept (REBUILD=1 to replace it)"
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "mkbase: debootstrap needs root" >&2; exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
	echo "mkbase: debootstrap not found (scripts/build-images.sh --install-deps installs it)" >&2
	exit 1
fi

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
root=$(mktemp -d "${TMPDIR:-/var/tmp}/slurm-k8s-bridge-base-$suite.XXXXXX")
trap 'rm -rf "$root"' EXIT

start=$(date +%s)
echo "mkbase: debootstrap --variant=minbase $suite from $mirror"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.log" 2>&1 || {
	tail -n 30 "$root.log" >&2; rm -f "$root.log"
	echo "mkbase: debootstrap of $suite failed" >&2; exit 1
}
rm -f "$root.log"

# Package sources: the suite plus its updates and security pockets (sid has neither).
{
	echo "deb $mirror $suite main"
	if [ "$suite" != sid ]; then
		echo "deb $mirror $suite-updates main"
		echo "deb $security $suite-security main"
	fi
} >"$root/etc/apt/sources.list"
# Images stay small and builds non-interactive: no recommends, no docs, no apt caches.
cat >"$root/etc/apt/apt.conf.d/90slurm-k8s-bridge" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
APT
cat >"$root/etc/dpkg/dpkg.cfg.d/90slurm-k8s-bridge" <<'DPKG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
DPKG
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/*/[!c]* \
	"$root"/usr/share/man/* "$root"/usr/share/info/*
# No daemon may start while packages are installed in a build.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
: >"$root/etc/hostname"

echo "mkbase: importing as $image"
tar --numeric-owner -C "$root" -c . | "$engine" import \
	--change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "mkbase: $image ready in $(( $(date +%s) - start )) s"
