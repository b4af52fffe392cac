#!/usr/bin/env bash
# Entrypoint of the worker image: one bridged pod = one dynamic Slurm node.
#
#   worker-entrypoint                 start munged, then slurmd -D -Z (configless); on SIGTERM
#                                     slurmd stays until no job step runs here
#   worker-entrypoint --dry-run       check everything and print the slurmd command, start nothing
#   worker-entrypoint -v ...          options starting with '-' are added to slurmd's
#   worker-entrypoint CMD [ARGS...]   start munged, then exec CMD instead of slurmd
#
# It reads what slurm_k8s_bridge.core.normalize renders into the pod (and what
# slurm_k8s_devcluster/podsim.py gives its stand-in slurmd):
#   SLURM_K8S_NODE_CPUS, SLURM_K8S_NODE_MEMORY_MB   -> Sockets=1 CoresPerSocket=N
#                                                      ThreadsPerCore=1 RealMemory=MB
#   SLURM_K8S_NODE_GRES (gpu:TYPE:N, gpu:N or empty)  -> Gres=...
#   SLURM_K8S_NODE_FEATURES (k8s-pod,...)             -> Feature=...
#   SLURM_K8S_CONF_SERVER (HOST[:PORT])               -> --conf-server; without it the
#                                                      DNS SRV record _slurmctld._tcp must exist
#   SLURM_K8S_MUNGE_KEY_FILE                          -> the cluster's munge key (mounted)
# The node name is the pod's hostname (the Indexed Job's <job>-<index>), or
# SLURM_K8S_NODE_NAME. The pod's GPU device files (/dev/nvidia<N>, or the comma-separated
# SLURM_K8S_GPU_DEVICES) go into /etc/slurm-k8s-bridge/pod-gres.conf, which the
# cluster's gres.conf includes (docs/containers.md).
set -euo pipefail
K8SB_WHO=worker-entrypoint
# shellcheck source=../common/munge.sh
. /usr/local/lib/slurm-k8s-bridge/munge.sh

POD_GRES_CONF=/etc/slurm-k8s-bridge/pod-gres.conf
POD_NODE_FEATURE=k8s-pod

dry_run=0
slurmd_extra=()
command=()
if [ "$#" -gt 0 ]; then
	if [ "$1" = --dry-run ]; then
		dry_run=1; shift
	fi
	if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
		command=("$@")
	else
		slurmd_extra=("$@")
	fi
fi

positive_int() {  # NAME VALUE
	[[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -gt 0 ] 2>/dev/null \
		|| k8sb_die "$1=${2:-<unset>} must be a positive integer (the pod's share, set by the bridge)"
}

# --- the node: what podsim.slurmd_conf_line builds for a stand-in slurmd -----------------
node_conf_line() {
	local cpus=${SLURM_K8S_NODE_CPUS:-} memory=${SLURM_K8S_NODE_MEMORY_MB:-}
	local gres=${SLURM_K8S_NODE_GRES:-} features=${SLURM_K8S_NODE_FEATURES:-}
	positive_int SLURM_K8S_NODE_CPUS "$cpus"
	positive_int SLURM_K8S_NODE_MEMORY_MB "$memory"
	[ "${features%%,*}" = "$POD_NODE_FEATURE" ] || k8sb_die "SLURM_K8S_NODE_FEATURES='$features'" \
		"does not start with $POD_NODE_FEATURE (the feature that puts the node in the bridged partition)"
	[[ "$features" =~ ^[A-Za-z0-9._,-]+$ ]] || k8sb_die "SLURM_K8S_NODE_FEATURES='$features' has characters Slurm refuses"
	local line="Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$memory"
	if [ -n "$gres" ]; then
		[[ "$gres" =~ ^[A-Za-z0-9._:,-]+$ ]] || k8sb_die "SLURM_K8S_NODE_GRES='$gres' is not a Slurm gres"
		line+=" Gres=$gres"
	fi
	echo "$line Feature=$features"
}

node_name() {
	local name=${SLURM_K8S_NODE_NAME:-}
	if [ -z "$name" ]; then
		name=$(uname -n)
		name=${name%%.*}
	fi
	[[ "$name" =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] || k8sb_die "node name '$name' is not a" \
		"hostname of at most 63 characters (the pod's hostname is the Slurm node name)"
	echo "$name"
}

srv_record_exists() {
	python3 - <<'PY'
import ctypes, sys
fn = None
for lib in ("libresolv.so.2", "libc.so.6"):
    try:
        handle = ctypes.CDLL(lib)
    except OSError:
        continue
    fn = getattr(handle, "res_search", None) or getattr(handle, "__res_search", None)
    if fn:
        break
if fn is None:
    sys.exit(1)
buf = ctypes.create_string_buffer(4096)
sys.exit(0 if fn(b"_slurmctld._tcp", 1, 33, buf, len(buf)) > 0 else 1)  # C_IN, T_SRV
PY
}

conf_server_args() {
	local server=${SLURM_K8S_CONF_SERVER:-}
	if [ -n "$server" ]; then
		local host_re='^[][A-Za-z0-9.:_-]+(,[][A-Za-z0-9.:_-]+)*$'  # HOST[:PORT], IPv6 in []
		[[ "$server" =~ $host_re ]] \
			|| k8sb_die "SLURM_K8S_CONF_SERVER='$server' is not HOST[:PORT]"
		echo "--conf-server"
		echo "$server"
	elif srv_record_exists; then
		k8sb_log "no SLURM_K8S_CONF_SERVER: slurmd finds slurmctld through DNS SRV _slurmctld._tcp"
	else
		k8sb_die "no conf server: set SLURM_K8S_CONF_SERVER=HOST[:PORT] (conf_server in the" \
			"bridge configuration) or publish the DNS SRV record _slurmctld._tcp; slurmd runs" \
			"configless and has no other way to find slurmctld"
	fi
}

# --- GPUs: the pod's device files for gres.conf ------------------------------------------
gpu_devices() {
	local dev
	if [ -n "${SLURM_K8S_GPU_DEVICES:-}" ]; then
		tr ',' '\n' <<<"$SLURM_K8S_GPU_DEVICES"
		return
	fi
	for dev in /dev/nvidia[0-9]*; do
		[ -c "$dev" ] && echo "$dev"
	done | sort -V
}

pod_gres_lines() {  # prints the pod-gres.conf content (may be empty)
	local gres=${SLURM_K8S_NODE_GRES:-} name type count devices n
	[ -n "$gres" ] || return 0
	IFS=: read -r name type count <<<"$gres"
	if [ -z "$count" ]; then count=$type; type=; fi
	[ "$name" = gpu ] || return 0
	positive_int "count in SLURM_K8S_NODE_GRES" "$count"
	if [[ "$type" == *.* ]]; then
		k8sb_log "MIG gres $gres: no File= lines (devices come from the MIG device plugin)"
		return 0
	fi
	mapfile -t devices < <(gpu_devices)
	n=${#devices[@]}
	if [ "$n" -eq 0 ]; then
		# No device files: a node that advertises nvidia.com/gpu as an extended resource
		# without GPUs (a test cluster). slurmd needs File= entries (a count-only line is
		# refused when the cluster's gres.conf has File= lines, and reports 0 GPUs
		# otherwise): placeholders that point at /dev/null, one per GPU of the pod.
		local dir=/run/slurm-k8s-bridge/gpus i
		mkdir -p "$dir"
		for ((i = 0; i < count; i++)); do ln -sfn /dev/null "$dir/nvidia$i"; done
		k8sb_log "SLURM_K8S_NODE_GRES=$gres but the pod has no /dev/nvidia<N>:" \
			"$count placeholder device(s) under $dir"
		echo "NodeName=$(node_name) Name=gpu${type:+ Type=$type} File=$dir/nvidia[0-$((count - 1))]"
		return 0
	fi
	for dev in "${devices[@]}"; do
		[ -c "$dev" ] || k8sb_die "GPU device $dev is not a character device"
	done
	[ "$n" -eq "$count" ] || k8sb_die "the pod has $n GPU device files (${devices[*]})" \
		"but SLURM_K8S_NODE_GRES=$gres asks for $count"
	local files
	files=$(IFS=,; echo "${devices[*]}")
	echo "Name=gpu${type:+ Type=$type} File=$files"
}

# Kubernetes makes emptyDir volumes world-writable without the sticky bit (0777): munged
# refuses a socket under such a /run, and a /tmp that tasks share needs the sticky bit.
writable_dir_modes() {
	[ "$(stat -c %a /run)" != 777 ] || chmod 0755 /run
	[ "$(stat -c %a /tmp)" != 777 ] || chmod 1777 /tmp
}

# --- main ----------------------------------------------------------------------------------
key=$(munge_key_path)
[ "$dry_run" = 1 ] || writable_dir_modes
if [ "${#command[@]}" -gt 0 ]; then
	[ "$dry_run" = 1 ] && { printf '%q ' "${command[@]}"; echo; exit 0; }
	start_munged "$key"
	exec "${command[@]}"
fi

node=$(node_name)
conf=$(node_conf_line)
server_text=$(conf_server_args)
server=()
[ -z "$server_text" ] || mapfile -t server <<<"$server_text"
gres_lines=$(pod_gres_lines)
config=${SLURM_K8S_BRIDGE_CONFIG:-/etc/slurm/k8s-bridge.yaml}
[ -r "$config" ] || k8sb_log "warning: $config missing: the SPANK plugin cannot set the task environment"

cmd=(slurmd -D -Z -N "$node" "${server[@]}" --conf "$conf" "${slurmd_extra[@]}")
if [ "$dry_run" = 1 ]; then
	[ -r "$key" ] || k8sb_die "munge key $key is not readable"
	printf '%q ' "${cmd[@]}"; echo
	[ -z "$gres_lines" ] || echo "$POD_GRES_CONF: $gres_lines"
	exit 0
fi

start_munged "$key"
mkdir -p /var/spool/slurmd /run/slurm /var/log/slurm "$(dirname "$POD_GRES_CONF")"
printf '%s\n' "${gres_lines:-# no GPU device files in this pod}" >"$POD_GRES_CONF"
# nss_slurm asks the node's slurmstepd for the job owner (LaunchParameters=enable_nss_slurm).
# Its defaults (the short hostname, /var/spool/slurmd) are the pod's: /etc/nss_slurm.conf is
# written only when they differ, so that the root filesystem can stay read-only (docs/security.md)
spool=${SLURMD_SPOOL_DIR:-/var/spool/slurmd}
host=$(uname -n)
if [ "$node" != "${host%%.*}" ] || [ "$spool" != /var/spool/slurmd ]; then
	printf 'NodeName=%s\nSlurmdSpoolDir=%s\n' "$node" "$spool" 2>/dev/null >/etc/nss_slurm.conf \
		|| k8sb_die "cannot write /etc/nss_slurm.conf (node $node, spool $spool differ from" \
			"nss_slurm's defaults) on a read-only root filesystem: keep the pod's hostname as" \
			"the node name and /var/spool/slurmd as SlurmdSpoolDir"
fi
k8sb_log "node $node: ${cmd[*]}"

# The pod is deleted (a preemption, an eviction, the job's end): the kubelet sends SIGTERM,
# then SIGKILL after terminationGracePeriodSeconds. slurmd stays while this node runs job
# steps, so that a preempted job gets its --signal TIME and Slurm's requeue ends its steps
# here as on its other nodes (never half a gang); then slurmd stops and the pod ends.
steps_running() { grep -qsx slurmstepd /proc/[0-9]*/comm; }
on_term() {
	k8sb_log "SIGTERM: the pod is being deleted; slurmd stays while job steps run"
	while steps_running; do sleep 1; done
	kill -TERM "$slurmd_pid" 2>/dev/null || true
}
trap on_term TERM
"${cmd[@]}" &
slurmd_pid=$!
while :; do   # wait returns early when the trap runs: wait for slurmd itself
	rc=0
	wait "$slurmd_pid" || rc=$?
	kill -0 "$slurmd_pid" 2>/dev/null || exit "$rc"
done
