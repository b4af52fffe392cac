#!/usr/bin/env bash
# Build the images the real test node (slurm_k8s_devcluster/kubelet.py) needs, with no registry:
#
#   localhost/skb-pause:1      the pod sandbox image: pause.c, static, nothing else
#   localhost/skb-busybox:1    Debian's busybox-static (sh, nc, httpd, ...) for test pods
#
#   containers/pause/build.sh OUT_DIR     # writes OUT_DIR/{pause,busybox}.tar, prints OUT_DIR
#
# Needs gcc + libc6-dev (static libc) and apt-get (downloads busybox-static's .deb without
# installing it). Each tarball is rebuilt only when missing or older than its inputs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: $0 OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
PAUSE_REF="${PAUSE_REF:-localhost/skb-pause:1}"
BUSYBOX_REF="${BUSYBOX_REF:-localhost/skb-busybox:1}"
log() { echo "[pause/build] $*" >&2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [[ ! -s "$out/pause.tar" || "$here/pause.c" -nt "$out/pause.tar" \
      || "$here/make-image.sh" -nt "$out/pause.tar" ]]; then
    command -v gcc >/dev/null || { log "gcc missing (apt-get install gcc libc6-dev)"; exit 1; }
    mkdir -p "$work/pause-root"
    gcc -static -Os -s -Wall -Wextra -o "$work/pause-root/pause" "$here/pause.c"
    "$work/pause-root/pause" --version >/dev/null
    bash "$here/make-image.sh" "$work/pause-root" "$PAUSE_REF" "$out/pause.tar" /pause >/dev/null
    log "built $PAUSE_REF -> $out/pause.tar"
fi

if [[ ! -s "$out/busybox.tar" || "$here/make-image.sh" -nt "$out/busybox.tar" ]]; then
    (cd "$work" && apt-get download -q busybox-static >/dev/null 2>&1) || {
        apt-get update -qq >/dev/null 2>&1 || true
        (cd "$work" && apt-get download -q busybox-static >/dev/null) \
            || { log "apt-get download busybox-static failed"; exit 1; }
    }
    mkdir -p "$work/deb" "$work/bb-root"/{bin,tmp,etc,root,proc,sys,dev}
    dpkg-deb -x "$work"/busybox-static_*.deb "$work/deb"
    cp "$work/deb/bin/busybox" "$work/bb-root/bin/busybox"
    for applet in $("$work/bb-root/bin/busybox" --list); do
        [[ "$applet" == busybox || -e "$work/bb-root/bin/$applet" ]] \
            || ln -s busybox "$work/bb-root/bin/$applet"
    done
    chmod 1777 "$work/bb-root/tmp"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' \
        >"$work/bb-root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$work/bb-root/etc/group"
    bash "$here/make-image.sh" "$work/bb-root" "$BUSYBOX_REF" "$out/busybox.tar" /bin/sh >/dev/null
    log "built $BUSYBOX_REF ($(dpkg-deb -f "$work"/busybox-static_*.deb Version)) -> $out/busybox.tar"
fi
echo "$out"
