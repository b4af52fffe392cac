#!/bin/sh
# Steps the worker, controller and login targets of containers/Containerfile share, run at
# build time (the runtime stage installs this file):
#   image-setup packages PKG...  apt-get install PKG... ; a Slurm package (slurm*, sackd) is
#                                pinned to the Slurm the plugins were built against
#                                (/opt/slurm-k8s-bridge/build-info), "libslurm" is that Slurm's
#                                library package, "libpython" the libpython the plugins embed;
#                                "?PKG" installs PKG only where the suite has it
#   image-setup plugins GLOB     copy the built plugins matching GLOB to where Slurm loads
#                                plugins, and put the bridge's command on PATH
set -eu
. /opt/slurm-k8s-bridge/build-info
case "${1:-}" in
packages)
	shift
	apt-get update
	pkgs=
	for p in "$@"; do
		case "$p" in
		\?*)
			p=${p#\?}
			apt-cache show "$p" >/dev/null 2>&1 || { echo "image-setup: $p: not in this suite"; continue; }
			;;
		esac
		case "$p" in
		slurm*|sackd) p="$p=$SLURM_DEB_VERSION" ;;
		libslurm) p="$LIBSLURM_PACKAGE=$SLURM_DEB_VERSION" ;;
		libpython) p="libpython$PYTHON_VERSION" ;;
		esac
		pkgs="$pkgs $p"
	done
	# shellcheck disable=SC2086 # one word per package
	apt-get install -y $pkgs
	rm -rf /var/lib/apt/lists/*
	;;
plugins)
	plugindir=$(dirname "$(dpkg -L slurm-wlm-basic-plugins | grep '/gres_gpu\.so$')")
	# shellcheck disable=SC2086 # the glob expands here
	cp /opt/slurm-k8s-bridge/plugins/$2 "$plugindir/"
	ln -sf /opt/slurm-k8s-bridge/venv/bin/slurm-k8s-bridge /usr/local/bin/slurm-k8s-bridge
	;;
*)
	echo "usage: image-setup packages PKG... | image-setup plugins GLOB" >&2
	exit 2
	;;
esac
