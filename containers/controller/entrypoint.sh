#!/usr/bin/env bash
# Entrypoint of the controller image: start munged, then run the command.
#
#   controller-entrypoint                            slurmctld -D (the default command)
#   controller-entrypoint slurmctld -D -v            slurmctld with other options
#   controller-entrypoint slurm-k8s-bridge run ...   the bridge daemon (its own container)
#   controller-entrypoint CMD [ARGS...]              anything else, with munged running
#
# Mounts: slurm.conf (and plugstack.conf, gres.conf, ...) in /etc/slurm, the bridge
# configuration at /etc/slurm/k8s-bridge.yaml (or SLURM_K8S_BRIDGE_CONFIG), the munge key
# (SLURM_K8S_MUNGE_KEY_FILE, /etc/slurm-k8s-bridge/munge/munge.key or /etc/munge/munge.key).
set -euo pipefail
K8SB_WHO=controller-entrypoint
# shellcheck source=../common/munge.sh
. /usr/local/lib/slurm-k8s-bridge/munge.sh

[ "$#" -gt 0 ] || set -- slurmctld -D

# slurm.conf value of KEY (case-insensitive, last one wins), or DEFAULT
conf_value() {
	awk -v key="$(tr '[:upper:]' '[:lower:]' <<<"$1")" -F= '
		{ sub(/#.*/, "") }
		NF >= 2 { k = $1; gsub(/[ \t]/, "", k)
		          if (tolower(k) == key) { v = substr($0, index($0, "=") + 1); gsub(/^[ \t]+|[ \t]+$/, "", v); split(v, w, /[ \t]/); val = w[1] } }
		END { if (val != "") print val }' "$SLURM_CONF" || true
}

if [ "$(basename "$1")" = slurmctld ]; then
	export SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
	[ -r "$SLURM_CONF" ] || k8sb_die "$SLURM_CONF not found: mount the cluster's slurm.conf" \
		"(with SlurmctldParameters=enable_configless for the pods' configless slurmd)"
	config=${SLURM_K8S_BRIDGE_CONFIG:-/etc/slurm/k8s-bridge.yaml}
	[ -r "$config" ] || k8sb_log "warning: $config not found: job_submit/k8s refuses bridged" \
		"jobs until it exists (an example: /opt/slurm-k8s-bridge/etc/k8s-bridge.yaml)"
	user=$(conf_value SlurmUser); user=${user:-root}
	id "$user" >/dev/null 2>&1 || k8sb_die "SlurmUser=$user does not exist in this image"
	for key in StateSaveLocation SlurmctldLogFile SlurmctldPidFile; do
		value=$(conf_value "$key")
		[ -n "$value" ] || continue
		case "$key" in StateSaveLocation) dir=$value ;; *) dir=$(dirname "$value") ;; esac
		install -d -o "$user" -m 0755 "$dir"
	done
	[ -n "$(conf_value StateSaveLocation)" ] || install -d -o "$user" -m 0755 /var/spool/slurmctld
fi

start_munged "$(munge_key_path)"
exec "$@"
