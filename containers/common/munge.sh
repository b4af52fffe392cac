# Shared by the images' entrypoints (sourced, bash): start munged from a mounted key.
#
#   start_munged KEYFILE   copy KEYFILE to /etc/munge/munge.key (owner munge, 0400), start
#                          munged as the munge user, and check that a credential round-trips.
# Every failure is one line on stderr starting with "$K8SB_WHO: " and exit 1.

: "${K8SB_WHO:=slurm-k8s-bridge}"
MUNGE_SOCKET=/run/munge/munge.socket.2
MUNGE_MIN_KEY_BYTES=32

k8sb_die() { echo "$K8SB_WHO: error: $*" >&2; exit 1; }
k8sb_log() { echo "$K8SB_WHO: $*" >&2; }

start_munged() {
	local key=$1 size i
	[ -e "$key" ] || k8sb_die "munge key $key does not exist: mount the cluster's munge key" \
		"there (Kubernetes: the Secret named by munge_key_secret) or set SLURM_K8S_MUNGE_KEY_FILE"
	[ -f "$key" ] && [ -r "$key" ] || k8sb_die "munge key $key is not a readable file"
	size=$(stat -L -c %s "$key")
	[ "$size" -ge "$MUNGE_MIN_KEY_BYTES" ] || k8sb_die "munge key $key has $size bytes;" \
		"munged needs at least $MUNGE_MIN_KEY_BYTES (the cluster's key is usually 1024)"
	install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
	install -d -o munge -g munge -m 0755 /run/munge
	if [ "$(readlink -f "$key")" != /etc/munge/munge.key ]; then
		install -o munge -g munge -m 0400 "$key" /etc/munge/munge.key
	else
		chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
	fi
	if [ -S "$MUNGE_SOCKET" ] && munge -n </dev/null >/dev/null 2>&1; then
		k8sb_log "munged already running"
		return 0
	fi
	# setpriv, not su/runuser: no PAM, works with only SETUID/SETGID
	setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged \
		|| k8sb_die "munged did not start (see /var/log/munge/munged.log)"
	for i in $(seq 1 50); do
		[ -S "$MUNGE_SOCKET" ] && break
		sleep 0.1
	done
	[ -S "$MUNGE_SOCKET" ] || k8sb_die "munged started but $MUNGE_SOCKET did not appear"
	munge -n </dev/null | unmunge >/dev/null 2>&1 \
		|| k8sb_die "munged runs but a credential does not decode (munge -n | unmunge)"
	k8sb_log "munged running with key $key"
}

# The key to use: SLURM_K8S_MUNGE_KEY_FILE if set, else the bridge's mount point
# (translate.MUNGE_KEY_DIR), else a key built into the image at /etc/munge/munge.key.
munge_key_path() {
	if [ -n "${SLURM_K8S_MUNGE_KEY_FILE:-}" ]; then
		echo "$SLURM_K8S_MUNGE_KEY_FILE"
	elif [ -e /etc/slurm-k8s-bridge/munge/munge.key ]; then
		echo /etc/slurm-k8s-bridge/munge/munge.key
	elif [ -e /etc/munge/munge.key ]; then
		echo /etc/munge/munge.key
	else
		k8sb_die "no munge key: set SLURM_K8S_MUNGE_KEY_FILE or mount the cluster's key at" \
			"/etc/slurm-k8s-bridge/munge/munge.key (munge_key_secret in the bridge configuration)"
	fi
}
