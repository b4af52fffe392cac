#!/usr/bin/env bash
# Entrypoint of the login image: start munged, then run the command (default: bash).
#
# Slurm's commands find the cluster through /etc/slurm/slurm.conf (mounted) or SLURM_CONF;
# without either, on Slurm 24.11 (trixie) SLURM_K8S_CONF_SERVER=HOST[:PORT] starts sackd,
# which fetches the configuration from slurmctld (configless); Slurm 22.05's commands
# fall back to the DNS SRV record _slurmctld._tcp.
# The munge key: SLURM_K8S_MUNGE_KEY_FILE, /etc/slurm-k8s-bridge/munge/munge.key or
# /etc/munge/munge.key.
set -euo pipefail
K8SB_WHO=login-entrypoint
# shellcheck source=../common/munge.sh
. /usr/local/lib/slurm-k8s-bridge/munge.sh

[ "$#" -gt 0 ] || set -- bash
start_munged "$(munge_key_path)"
if [ -z "${SLURM_CONF:-}" ] && [ ! -e /etc/slurm/slurm.conf ] && [ -n "${SLURM_K8S_CONF_SERVER:-}" ]; then
	command -v sackd >/dev/null 2>&1 || k8sb_die "SLURM_K8S_CONF_SERVER is set but this Slurm" \
		"has no sackd (Slurm 22.05): mount slurm.conf at /etc/slurm/slurm.conf instead"
	mkdir -p /run/slurm
	sackd --conf-server "$SLURM_K8S_CONF_SERVER" || k8sb_die "sackd did not start"
	k8sb_log "sackd fetches the configuration from $SLURM_K8S_CONF_SERVER"
fi
exec "$@"
