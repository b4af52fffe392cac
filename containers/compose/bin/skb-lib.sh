# shellcheck shell=bash
# Sourced (bash) by the entrypoints of the compose test cluster (containers/compose/bin).
#
# Addresses: no compose implementation gives every engine both DNS by service name and
# fixed addresses (podman-compose 1.0.3 with podman's CNI backend gives neither), so the
# services publish their own address in a small registry on the state volume and read the
# ones they need from it:
#   /state/run/hosts/NAME           the address of service NAME (written by NAME at start)
#   /state/run/nodes/NAME           "NODE_ADDRESS POD_CIDR" of a kubelet node
# scripts/compose-cluster.sh empties /state/run before every `up`.
# Every wait is bounded; every failure is one line "WHO: error: ..." and exit 1.

: "${SKB_WHO:=skb}"
SKB_STATE=${SKB_STATE:-/state}
SKB_RUN=$SKB_STATE/run
SKB_WAIT=${SKB_WAIT:-300}      # seconds any service waits for another one

skb_log() { echo "$SKB_WHO: $*" >&2; }
skb_die() { echo "$SKB_WHO: error: $*" >&2; exit 1; }

# The container's address on the compose network: the source address of its default route
# (read from the kernel, no iproute2 needed; the first of `hostname -I` as a fallback).
skb_own_addr() {
	local addr
	addr=$(python3 - 2>/dev/null <<'PY' || true
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("192.0.2.1", 9))   # no packet is sent: this only picks the route's source
print(s.getsockname()[0])
PY
)
	if [ -z "$addr" ]; then
		addr=$(hostname -I 2>/dev/null | awk '{print $1}')
	fi
	[[ "$addr" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || skb_die "cannot tell this container's address"
	echo "$addr"
}

# skb_publish NAME ADDRESS: write NAME's address into the registry (atomically)
skb_publish() {
	mkdir -p "$SKB_RUN/hosts"
	printf '%s\n' "$2" >"$SKB_RUN/hosts/.$1.$$"
	mv -f "$SKB_RUN/hosts/.$1.$$" "$SKB_RUN/hosts/$1"
	skb_log "published $1 = $2"
}

# skb_lookup NAME [TIMEOUT]: print NAME's address, waiting for it to be published
skb_lookup() {
	local name=$1 timeout=${2:-$SKB_WAIT} waited=0 file=$SKB_RUN/hosts/$1
	until [ -s "$file" ]; do
		[ "$waited" -lt $((timeout * 5)) ] \
			|| skb_die "service $name did not publish its address within ${timeout}s ($file)"
		sleep 0.2
		waited=$((waited + 1))
	done
	cat "$file"
}

# skb_hosts NAME...: wait for each NAME and put "ADDRESS NAME" into /etc/hosts (replacing
# an older line for NAME). /etc/hosts is a bind mount: rewritten in place, never renamed.
skb_hosts() {
	local name addr tmp
	for name in "$@"; do
		addr=$(skb_lookup "$name")
		tmp=$(mktemp)
		awk -v n="$name" '{ keep = 1; for (i = 2; i <= NF; i++) if ($i == n) keep = 0 } keep' \
			/etc/hosts >"$tmp"
		printf '%s\t%s\n' "$addr" "$name" >>"$tmp"
		cat "$tmp" >/etc/hosts
		rm -f "$tmp"
	done
}

# skb_wait_file PATH [TIMEOUT]: wait until PATH exists and is not empty
skb_wait_file() {
	local path=$1 timeout=${2:-$SKB_WAIT} waited=0
	until [ -s "$path" ]; do
		[ "$waited" -lt $((timeout * 5)) ] || skb_die "$path did not appear within ${timeout}s"
		sleep 0.2
		waited=$((waited + 1))
	done
}

# skb_route_pods [OWN_CIDR]: keep a route to every kubelet node's pod network (but
# OWN_CIDR), via that node's address. Run in the background by the Slurm containers and
# the kubelet nodes (pods of one node reach those of another); needs CAP_NET_ADMIN. Nodes
# may start later or come back with another address: the registry is read every 2 s.
skb_route_pods() {
	local own=${1:-} file node_addr cidr seen=""
	while :; do
		for file in "$SKB_RUN"/nodes/*; do
			[ -s "$file" ] || continue
			read -r node_addr cidr <"$file" || continue
			[ -n "$node_addr" ] && [ -n "$cidr" ] && [ "$cidr" != "$own" ] || continue
			case " $seen " in *" $cidr=$node_addr "*) continue ;; esac
			if skb_route_replace "$cidr" "$node_addr"; then
				skb_log "route $cidr via $node_addr (${file##*/})"
				seen="$(echo " $seen " | sed "s# $cidr=[^ ]*##g") $cidr=$node_addr"
			fi
		done
		sleep 2
	done
}

# skb_route_replace CIDR GATEWAY: iproute2 where the image has it, else rtnetlink from Python
skb_route_replace() {
	if command -v ip >/dev/null 2>&1; then
		ip route replace "$1" via "$2"
	else
		python3 /compose/bin/netroute.py replace "$1" "$2"
	fi
}

# skb_users: create the cluster's users (SKB_USERS="name:uid,..."), homes under
# SKB_SHARED_DIR/home (the filesystem the login node and the pods share) when it is set
skb_users() {
	local entry name uid home
	IFS=, read -r -a entries <<<"${SKB_USERS:-}"
	for entry in "${entries[@]}"; do
		[ -n "$entry" ] || continue
		name=${entry%%:*}
		uid=${entry#*:}
		[[ "$name" =~ ^[a-z_][a-z0-9_-]*$ && "$uid" =~ ^[0-9]+$ ]] \
			|| skb_die "SKB_USERS entry '$entry' is not NAME:UID"
		id "$name" >/dev/null 2>&1 && continue
		home=/home/$name
		[ -n "${SKB_SHARED_DIR:-}" ] && home=$SKB_SHARED_DIR/home/$name
		getent group "$name" >/dev/null 2>&1 || groupadd --gid "$uid" "$name"
		useradd --uid "$uid" --gid "$uid" --home-dir "$home" --no-create-home \
			--shell /bin/bash "$name"
		if [ "${1:-}" = --homes ]; then
			mkdir -p "$home"
			chown "$uid:$uid" "$home"
			chmod 0755 "$home"
		fi
	done
}
