#!/usr/bin/env bash
# The whole slurm-k8s-bridge test cluster in containers (containers/compose/compose.yaml,
# docs/compose.md): slurmctld, login, the bridge daemon, etcd and the Kubernetes control
# plane, KWOK nodes and a real kubelet node that runs the worker pods.
#
#   scripts/compose-cluster.sh prepare   build what the stack needs (incremental, idempotent)
#   scripts/compose-cluster.sh up        prepare, start the stack, wait until it is ready
#   scripts/compose-cluster.sh status    one line per component
#   scripts/compose-cluster.sh down      stop and remove the containers, network and volumes
#   scripts/compose-cluster.sh env       the variables compose.yaml reads (for plain compose)
#   scripts/compose-cluster.sh compose ARGS...   run the compose tool on the stack (ps, logs ...)
#   scripts/compose-cluster.sh shell [USER]      a shell on the login node (default: first user)
#
# Options (or environment):
#   --state DIR        SKB_STATE_DIR   state directory (default /var/tmp/slurm-k8s-bridge-compose)
#   --shared DIR       SKB_SHARED_DIR  the shared filesystem (default STATE/shared)
#   --suite S          SKB_SUITE       image suite: bookworm (Slurm 22.05) or trixie (24.11)
#   --engine E         SKB_ENGINE      podman or docker (default: podman if installed)
#   --compose TOOL     SKB_COMPOSE     "docker compose", docker-compose or podman-compose
#                                      (default: the first that works with the engine)
#   --project NAME     SKB_PROJECT     compose project and container name prefix (default skb)
#   --timeout S        SKB_UP_TIMEOUT  seconds `up` waits for readiness (default 600)
#   --nodes N          SKB_REAL_NODES  real kubelet nodes: 1 (real-0) or 2 (+ real-1,
#                                      containers/compose/compose.real-1.yaml)
#   --install-deps     install podman, runc, podman-compose, debootstrap, openssl, gcc from
#                      Debian (root), and podman's /etc/containers/containers.conf if missing
#   SKB_USERS (alice:5000), SKB_KWOK_NODES (2)
#
# prepare: the worker/controller/login images (scripts/build-images.sh when missing), the
# Kubernetes binaries (scripts/build-k8s-binaries.sh, scripts/build-kubelet.sh, cached),
# the pause image (containers/pause/build.sh), a staging directory with them, the images
# localhost/slurm-k8s-bridge-{k8s,node}:SUITE, the worker image as a tarball the node
# imports, the cluster's PKI and kubeconfigs, the munge key, the Slurm configuration
# templates. Needs root (images are built with podman as root; cgroups, privileged node).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
COMPOSE_DIR=$REPO/containers/compose
COMPOSE_FILE=$COMPOSE_DIR/compose.yaml

SKB_STATE_DIR=${SKB_STATE_DIR:-/var/tmp/slurm-k8s-bridge-compose}
SKB_SHARED_DIR=${SKB_SHARED_DIR:-}
SKB_SUITE=${SKB_SUITE:-bookworm}
SKB_ENGINE=${SKB_ENGINE:-}
SKB_COMPOSE=${SKB_COMPOSE:-}
SKB_PROJECT=${SKB_PROJECT:-skb}
SKB_UP_TIMEOUT=${SKB_UP_TIMEOUT:-600}
SKB_USERS=${SKB_USERS:-alice:5000}
SKB_KWOK_NODES=${SKB_KWOK_NODES:-2}
SKB_REAL_NODES=${SKB_REAL_NODES:-}
PODMAN_SOCKET=/run/podman/podman.sock
install_deps=0

usage() { sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
log() { echo "compose-cluster: $*" >&2; }
die() { echo "compose-cluster: error: $*" >&2; exit 1; }
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

action=
args=()
while [ "$#" -gt 0 ]; do
	case "$1" in
		--state) SKB_STATE_DIR=$2; shift 2 ;;
		--shared) SKB_SHARED_DIR=$2; shift 2 ;;
		--suite) SKB_SUITE=$2; shift 2 ;;
		--engine) SKB_ENGINE=$2; shift 2 ;;
		--compose) SKB_COMPOSE=$2; shift 2 ;;
		--project) SKB_PROJECT=$2; shift 2 ;;
		--timeout) SKB_UP_TIMEOUT=$2; shift 2 ;;
		--nodes) SKB_REAL_NODES=$2; shift 2 ;;
		--install-deps) install_deps=1; shift ;;
		-h|--help) usage ;;
		*)
			if [ -z "$action" ]; then action=$1; else args+=("$1"); fi
			shift ;;
	esac
done
[ -n "$action" ] || usage 2
case "$SKB_SUITE" in bookworm|trixie) ;; *) die "--suite must be bookworm or trixie" ;; esac
[[ "$SKB_PROJECT" =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "--project must be lowercase letters, digits, - and _"
mkdir -p "$SKB_STATE_DIR"
SKB_STATE_DIR=$(cd "$SKB_STATE_DIR" && pwd)
SKB_SHARED_DIR=${SKB_SHARED_DIR:-$SKB_STATE_DIR/shared}
export SKB_STATE_DIR SKB_SHARED_DIR SKB_SUITE SKB_PROJECT SKB_USERS SKB_KWOK_NODES
STATE=$SKB_STATE_DIR
# the real nodes: as asked, else as the last `up` on this state directory had them
if [ -z "$SKB_REAL_NODES" ]; then
	SKB_REAL_NODES=$(cat "$STATE/real-nodes" 2>/dev/null || echo 1)
fi
case "$SKB_REAL_NODES" in
	1) SKB_NODES=real-0; COMPOSE_FILES=("$COMPOSE_FILE") ;;
	2) SKB_NODES=real-0,real-1; COMPOSE_FILES=("$COMPOSE_FILE" "$COMPOSE_DIR/compose.real-1.yaml") ;;
	*) die "--nodes must be 1 or 2" ;;
esac

# --------------------------------------------------------------------------- host tools

install_host_deps() {
	[ "$(id -u)" -eq 0 ] || die "--install-deps needs root (apt-get)"
	local need=() p
	for p in podman runc podman-compose debootstrap openssl gcc; do
		command -v "$p" >/dev/null 2>&1 || need+=("$p")
	done
	[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/aarch64-linux-gnu/libc.a ] || need+=(libc6-dev)
	if [ "${#need[@]}" -gt 0 ]; then
		log "installing ${need[*]} (Debian)"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${need[@]}" ca-certificates >/dev/null
	fi
	ensure_podman_conf "scripts/compose-cluster.sh --install-deps"
}

pick_engine() {
	if [ -n "$SKB_ENGINE" ]; then
		case "$SKB_ENGINE" in podman|docker) ;; *) die "--engine must be podman or docker" ;; esac
	elif command -v podman >/dev/null 2>&1; then
		SKB_ENGINE=podman
	elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
		SKB_ENGINE=docker
	else
		die "no container engine: neither podman nor a running docker engine (--install-deps installs podman)"
	fi
	command -v "$SKB_ENGINE" >/dev/null 2>&1 || die "$SKB_ENGINE is not installed"
}

# podman's Docker-compatible API (for docker-compose 1.x and the docker Python package)
ensure_podman_socket() {
	if [ -S "$PODMAN_SOCKET" ] && curl_socket >/dev/null 2>&1; then return 0; fi
	mkdir -p "$(dirname "$PODMAN_SOCKET")"
	log "starting podman system service on unix://$PODMAN_SOCKET"
	setsid podman system service --time=0 "unix://$PODMAN_SOCKET" \
		>"$STATE/podman-service.log" 2>&1 </dev/null &
	echo "$! $(awk '{print $22}' "/proc/$!/stat")" >"$STATE/podman-service.pid"
	local i
	for i in $(seq 1 100); do [ -S "$PODMAN_SOCKET" ] && return 0; sleep 0.1; done
	die "podman system service did not create $PODMAN_SOCKET"
}
# the API service `up` started (recorded with its start time), and nothing else
stop_podman_socket() {
	local pid start
	[ -s "$STATE/podman-service.pid" ] || return 0
	read -r pid start <"$STATE/podman-service.pid" || true
	rm -f "$STATE/podman-service.pid"
	[ -n "$pid" ] && [ "$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null)" = "$start" ] || return 0
	kill "$pid" 2>/dev/null || true
}
curl_socket() {
	python3 - "$PODMAN_SOCKET" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(3); s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n"); sys.exit(0 if b"OK" in s.recv(4096) else 1)
PY
}

COMPOSE_CMD=()
compose_file_args() { local f; for f in "${COMPOSE_FILES[@]}"; do printf '%s\n' -f "$f"; done; }
pick_compose() {
	local tool=$SKB_COMPOSE
	if [ -z "$tool" ]; then
		if [ "$SKB_ENGINE" = docker ] && docker compose version >/dev/null 2>&1; then tool="docker compose"
		elif [ "$SKB_ENGINE" = docker ] && command -v docker-compose >/dev/null 2>&1; then tool=docker-compose
		elif [ "$SKB_ENGINE" = podman ] && command -v podman-compose >/dev/null 2>&1; then tool=podman-compose
		elif [ "$SKB_ENGINE" = podman ] && command -v docker-compose >/dev/null 2>&1; then tool=docker-compose
		else
			die "no compose tool for $SKB_ENGINE: install podman-compose (--install-deps) or docker compose"
		fi
	fi
	case "$tool" in
		"docker compose")
			COMPOSE_CMD=(docker compose -p "$SKB_PROJECT") ;;
		docker-compose)
			command -v docker-compose >/dev/null 2>&1 || die "docker-compose is not installed"
			COMPOSE_CMD=(docker-compose -p "$SKB_PROJECT") ;;
		podman-compose)
			command -v podman-compose >/dev/null 2>&1 || die "podman-compose is not installed (--install-deps)"
			[ "$SKB_ENGINE" = podman ] || die "podman-compose needs --engine podman"
			COMPOSE_CMD=(podman-compose -p "$SKB_PROJECT") ;;
		*) die "--compose must be \"docker compose\", docker-compose or podman-compose" ;;
	esac
	mapfile -t -O "${#COMPOSE_CMD[@]}" COMPOSE_CMD < <(compose_file_args)
	if [ "$SKB_ENGINE" = podman ] && [ "$tool" != podman-compose ]; then
		ensure_podman_socket
		export DOCKER_HOST=unix://$PODMAN_SOCKET
	fi
	SKB_COMPOSE=$tool
}

compose() { "${COMPOSE_CMD[@]}" "$@"; }
cname() { echo "$SKB_PROJECT-$1"; }
in_ctr() { "$SKB_ENGINE" exec "$(cname "$1")" "${@:2}"; }

# --------------------------------------------------------------------------- prepare

declare -a timings=()
step() {  # NAME COMMAND...: run and record the time
	local name=$1 t
	shift
	t=$(now)
	"$@"
	timings+=("$(printf '%-38s %7ss' "$name" "$(since "$t")")")
}

slurm_images() {
	local missing=() i
	for i in worker controller login; do
		"$SKB_ENGINE" image inspect "localhost/slurm-k8s-bridge-$i:$SKB_SUITE" >/dev/null 2>&1 \
			|| missing+=("$i")
	done
	if [ "${#missing[@]}" -gt 0 ]; then
		log "building localhost/slurm-k8s-bridge-{$(IFS=,; echo "${missing[*]}")}:$SKB_SUITE (scripts/build-images.sh)"
		bash scripts/build-images.sh --suite "$SKB_SUITE" --engine "$SKB_ENGINE" \
			--only "$(IFS=,; echo "${missing[*]}")" >&2
	fi
}

link_or_copy() {  # SRC DEST: a hard link when possible (the staging dir is a build context)
	rm -f "$2"
	ln "$1" "$2" 2>/dev/null || cp -p "$1" "$2"
}

K8S_BIN='' KUBELET_BIN='' NODE_IMAGES=''
k8s_binaries() {
	K8S_BIN=$(bash scripts/build-k8s-binaries.sh | tail -n1)
	KUBELET_BIN=$(bash scripts/build-kubelet.sh | tail -n1)
	NODE_IMAGES=$(bash containers/pause/build.sh "${XDG_CACHE_HOME:-$HOME/.cache}/slurm-k8s-bridge/k8s/node-images" | tail -n1)
	[ -x "$K8S_BIN/kube-apiserver" ] && [ -x "$KUBELET_BIN/kubelet" ] && [ -s "$NODE_IMAGES/pause.tar" ] \
		|| die "Kubernetes binaries or the pause image missing ($K8S_BIN, $KUBELET_BIN, $NODE_IMAGES)"
}

stage_and_build() {
	local k8s=$STATE/build/k8s node=$STATE/build/node b
	mkdir -p "$k8s/bin" "$k8s/share/kwok" "$node/images"
	for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl; do
		link_or_copy "$K8S_BIN/$b" "$k8s/bin/$b"
	done
	link_or_copy "$K8S_BIN/../share/kwok/stages-fast.yaml" "$k8s/share/kwok/stages-fast.yaml"
	link_or_copy "$KUBELET_BIN/kubelet" "$node/kubelet"
	link_or_copy "$K8S_BIN/kubectl" "$node/kubectl"
	link_or_copy "$NODE_IMAGES/pause.tar" "$node/images/pause.tar"
	link_or_copy "$NODE_IMAGES/busybox.tar" "$node/images/busybox.tar"
	for b in k8s node; do
		local tag=localhost/slurm-k8s-bridge-$b:$SKB_SUITE log=$STATE/log/build-$b.log
		if ! "$SKB_ENGINE" build --build-arg "SUITE=$SKB_SUITE" -f "$COMPOSE_DIR/Containerfile.$b" \
				-t "$tag" "$STATE/build/$b" >"$log" 2>&1; then
			tail -n 30 "$log" >&2
			die "building $tag failed (log: $log)"
		fi
	done
}

worker_tarball() {
	local image=localhost/slurm-k8s-bridge-worker:$SKB_SUITE id
	id=$("$SKB_ENGINE" image inspect --format '{{.Id}}' "$image")
	mkdir -p "$STATE/images"
	if [ "$(cat "$STATE/images/worker.id" 2>/dev/null)" = "$id" ] && [ -s "$STATE/images/worker.tar" ]; then
		return 0
	fi
	rm -f "$STATE/images/worker.tar.tmp"
	if [ "$SKB_ENGINE" = podman ]; then
		podman save -q --format docker-archive -o "$STATE/images/worker.tar.tmp" "$image" >/dev/null
	else
		docker save -o "$STATE/images/worker.tar.tmp" "$image"
	fi
	mv -f "$STATE/images/worker.tar.tmp" "$STATE/images/worker.tar"
	echo "$id" >"$STATE/images/worker.id"
}

# --- PKI: the cluster CA and every identity (kept across runs; remade when SKB_NODES grows)
ssl() { openssl "$@" 2>/dev/null; }
leaf() {  # NAME SUBJECT [EXT]: key + certificate signed by the CA
	local p=$STATE/pki name=$1 subject=$2 ext=${3:-client}
	ssl ecparam -name prime256v1 -genkey -noout -out "$p/$name.key"
	ssl req -new -config "$p/openssl.cnf" -key "$p/$name.key" -subj "$subject" -out "$p/$name.csr"
	ssl x509 -req -in "$p/$name.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" \
		-set_serial "0x$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" -days 825 -sha256 \
		-extfile "$p/openssl.cnf" -extensions "$ext" -out "$p/$name.crt"
	rm -f "$p/$name.csr"
	chmod 0600 "$p/$name.key"
}
pki() {
	command -v openssl >/dev/null 2>&1 || die "openssl is needed (--install-deps)"
	local p=$STATE/pki node
	if [ ! -e "$p/.complete" ]; then
		rm -rf "$p"
		mkdir -p "$p"
		chmod 0700 "$p"
		cat >"$p/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
EOF
		ssl ecparam -name prime256v1 -genkey -noout -out "$p/ca.key"
		ssl req -x509 -new -config "$p/openssl.cnf" -key "$p/ca.key" \
			-subj /CN=slurm-k8s-bridge-compose-ca -days 3650 -sha256 -extensions v3_ca -out "$p/ca.crt"
		leaf admin /O=system:masters/CN=kubernetes-admin
		leaf kwok /O=system:masters/CN=kwok-controller
		leaf controller-manager /CN=system:kube-controller-manager
		leaf scheduler /CN=system:kube-scheduler
		leaf apiserver-kubelet-client /O=system:masters/CN=kube-apiserver-kubelet-client
		ssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$p/sa.key"
		ssl pkey -in "$p/sa.key" -pubout -out "$p/sa.pub"
		chmod 0600 "$p/ca.key" "$p/sa.key"
		touch "$p/.complete"
	fi
	for node in ${SKB_NODES//,/ }; do
		[[ "$node" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die "SKB_NODES: '$node' is not a DNS label"
		[ -s "$p/node-$node.crt" ] || leaf "node-$node" "/O=system:nodes/CN=system:node:$node"
	done
}

kubeconfig() {  # OUT USER CERT_NAME
	local p=$STATE/pki
	umask 077
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: skb
  cluster:
    server: https://kube-apiserver:6443
    certificate-authority-data: $(base64 -w0 "$p/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$p/$3.crt")
    client-key-data: $(base64 -w0 "$p/$3.key")
contexts:
- name: skb
  context: {cluster: skb, user: $2}
current-context: skb
EOF
	umask 022
}

k8s_files() {
	local k=$STATE/k8s node
	mkdir -p "$k/nodes"
	kubeconfig "$k/admin.kubeconfig" kubernetes-admin admin
	kubeconfig "$k/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
	kubeconfig "$k/scheduler.kubeconfig" system:kube-scheduler scheduler
	kubeconfig "$k/kwok.kubeconfig" kwok-controller kwok
	for node in ${SKB_NODES//,/ }; do
		kubeconfig "$k/nodes/$node.kubeconfig" "system:node:$node" "node-$node"
	done
	# kwok's shipped stages without "pod-complete": pods on KWOK nodes stay Running
	awk 'BEGIN { RS = "\n---\n"; ORS = "" }
	     !/\nmetadata:\n  name: pod-complete\n/ { if (n++) print "\n---\n"; print }' \
		"$STATE/build/k8s/share/kwok/stages-fast.yaml" >"$k/kwok-stages.yaml"
	grep -q 'name: pod-ready' "$k/kwok-stages.yaml" || die "unexpected kwok stages file"
	if grep -q 'name: pod-complete' "$k/kwok-stages.yaml"; then die "could not drop kwok's pod-complete stage"; fi
}

munge_key() {
	mkdir -p "$STATE/munge"
	chmod 0700 "$STATE/munge"
	if [ ! -s "$STATE/munge/munge.key" ]; then
		head -c 1024 /dev/urandom >"$STATE/munge/munge.key.tmp"
		chmod 0400 "$STATE/munge/munge.key.tmp"
		mv "$STATE/munge/munge.key.tmp" "$STATE/munge/munge.key"
	fi
}

slurm_files() {
	local etc=$STATE/etc tmp out nodes
	mkdir -p "$etc"
	sed -e "s#@SUITE@#$SKB_SUITE#g" -e "s#@SHARED_DIR@#$SKB_SHARED_DIR#g" \
		"$COMPOSE_DIR/k8s-bridge.yaml" >"$etc/k8s-bridge.yaml.in"
	tmp=$(mktemp -d)
	sed 's/@SLURMCTLD_ADDR@/127.0.0.1/g' "$etc/k8s-bridge.yaml.in" >"$tmp/k8s-bridge.yaml"
	chmod 0755 "$tmp"; chmod 0644 "$tmp/k8s-bridge.yaml"
	# the lines the bridge needs, from the bridge itself, in the controller image (its paths)
	out=$("$SKB_ENGINE" run --rm --network none -v "$tmp:/cfg:ro" --entrypoint slurm-k8s-bridge \
		"localhost/slurm-k8s-bridge-controller:$SKB_SUITE" slurm-conf --config /cfg/k8s-bridge.yaml \
		--nodes-per-shape 4) || die "slurm-k8s-bridge slurm-conf failed in the controller image"
	"$SKB_ENGINE" run --rm --network none -v "$tmp:/cfg:ro" --entrypoint slurm-k8s-bridge \
		"localhost/slurm-k8s-bridge-controller:$SKB_SUITE" config check /cfg/k8s-bridge.yaml >/dev/null \
		|| die "the bridge configuration ($etc/k8s-bridge.yaml.in) is invalid"
	rm -rf "$tmp"
	section() { awk -v s="$1" '/^# --- / { on = index($0, s) > 0; next } on' <<<"$out"; }
	nodes=$(section slurm.conf | sed -n 's/^# e\.g\. PartitionName=[^ ]* Nodes=\([^ ]*\) .*/\1/p')
	[ -n "$nodes" ] || die "slurm-k8s-bridge slurm-conf printed no partition example"
	{
		cat "$COMPOSE_DIR/slurm.conf"
		echo "# --- from slurm-k8s-bridge slurm-conf ---"
		# no partition of real (non-bridged) nodes here: nothing to exclude from power saving
		section slurm.conf | grep -v -e '^SuspendExcParts=' -e '^# e\.g\. ' | sed '/^$/d'
		echo "PartitionName=gpu Nodes=$nodes Default=YES State=UP"
		echo "PartitionName=sim Nodes=$nodes State=UP"
	} >"$etc/slurm.conf.in"
	{
		echo "# generated by scripts/compose-cluster.sh prepare"
		section gres.conf | sed '/^$/d'
		echo "# the GPUs of each pod, written by the worker in the pod (containers/worker)"
		echo "Include /etc/slurm-k8s-bridge/pod-gres.conf"
	} >"$etc/gres.conf"
	{
		echo "# generated by scripts/compose-cluster.sh prepare"
		section plugstack.conf | sed '/^$/d'
	} >"$etc/plugstack.conf"
	chmod 0644 "$etc"/*
	mkdir -p "$SKB_SHARED_DIR/home"
	chmod 0755 "$SKB_SHARED_DIR" "$SKB_SHARED_DIR/home"
}

harness_files() {  # k8s-setup labels the KWOK nodes as the harness does: its package, read-only
	rm -rf "$STATE/lib"
	mkdir -p "$STATE/lib"
	cp -r "$REPO/src/slurm_k8s_devcluster" "$STATE/lib/"
	find "$STATE/lib" -name __pycache__ -prune -exec rm -rf {} +
}

write_env() {
	cat >"$STATE/compose.env" <<EOF
SKB_STATE_DIR=$SKB_STATE_DIR
SKB_SHARED_DIR=$SKB_SHARED_DIR
SKB_SUITE=$SKB_SUITE
SKB_PROJECT=$SKB_PROJECT
SKB_USERS=$SKB_USERS
SKB_KWOK_NODES=$SKB_KWOK_NODES
EOF
}

prepare() {
	[ "$(id -u)" -eq 0 ] || die "prepare needs root (images built with $SKB_ENGINE as root, cgroups)"
	mkdir -p "$STATE/log"
	local t0
	t0=$(now)
	step "slurm images (worker, controller, login)" slurm_images
	step "kubernetes binaries + pause image" k8s_binaries
	step "images k8s + node" stage_and_build
	step "worker image tarball" worker_tarball
	step "PKI" pki
	step "kubeconfigs, kwok stages" k8s_files
	step "munge key" munge_key
	step "slurm configuration" slurm_files
	step "development harness for k8s-setup" harness_files
	write_env
	log "prepared $STATE in $(since "$t0") s:"
	printf '    %s\n' "${timings[@]}" >&2
}

# --------------------------------------------------------------------------- checks

check_slurmctld() { in_ctr slurmctld scontrol ping 2>/dev/null | grep -q 'is UP'; }
check_login() {  # sinfo on the login node lists every kubelet node, as the daemon mirrors it
	local out node
	out=$(in_ctr login sinfo -h -N -o %N 2>/dev/null) || return 1
	for node in ${SKB_NODES//,/ }; do
		grep -qx "k8s-$node" <<<"$out" || return 1
	done
}
check_daemon() {
	in_ctr bridge python3 -c 'import urllib.request,sys; sys.exit(0 if urllib.request.urlopen("http://127.0.0.1:9090/healthz", timeout=3).status == 200 else 1)' \
		>/dev/null 2>&1
}
kubectl_() { in_ctr kube-apiserver kubectl --kubeconfig /state/k8s/admin.kubeconfig "$@"; }
check_nodes() {  # every kubelet node Ready with GPUs, every KWOK node Ready
	local want out node
	out=$(kubectl_ get nodes --no-headers \
		-o 'custom-columns=N:.metadata.name,R:.status.conditions[?(@.type=="Ready")].status,G:.status.allocatable.nvidia\.com/gpu,T:.metadata.labels.type' \
		2>/dev/null) || return 1
	for node in ${SKB_NODES//,/ }; do
		echo "$out" | awk -v n="$node" '$1 == n && $2 == "True" && $3 ~ /^[0-9]+$/ && $3 > 0 && $4 == "real" { ok = 1 } END { exit !ok }' \
			|| return 1
	done
	want=$SKB_KWOK_NODES
	[ "$(echo "$out" | awk '$4 == "kwok" && $2 == "True"' | wc -l)" -ge "$want" ]
}

status() {
	local rc=0 name state
	for name in $(services); do
		state=$("$SKB_ENGINE" inspect -f '{{.State.Status}}' "$(cname "$name")" 2>/dev/null || echo absent)
		printf '%-26s %s\n' "$(cname "$name")" "$state"
		[ "$state" = running ] || rc=1
	done
	local check
	for check in slurmctld login daemon nodes; do
		if "check_$check"; then printf '%-26s ok\n' "check $check"; else printf '%-26s FAILED\n' "check $check"; rc=1; fi
	done
	return "$rc"
}

services() { echo etcd kube-apiserver kube-controller-manager kube-scheduler kwok k8s-setup slurmctld bridge login ${SKB_NODES//,/ }; }

exited() {  # the first service whose container is not running (every service keeps running)
	local name state
	for name in $(services); do
		state=$("$SKB_ENGINE" inspect -f '{{.State.Status}}' "$(cname "$name")" 2>/dev/null || echo absent)
		[ "$state" = running ] || { echo "$name ($state)"; return 0; }
	done
	return 1
}

wait_ready() {
	local deadline=$((SECONDS + SKB_UP_TIMEOUT)) check t dead
	for check in slurmctld nodes daemon login; do
		t=$(now)
		until "check_$check"; do
			dead=$(exited || true)
			if [ -n "$dead" ] || [ "$SECONDS" -ge "$deadline" ]; then
				if [ -n "$dead" ]; then
					log "service $dead stopped while waiting for check $check; status and logs:"
				else
					log "not ready after ${SKB_UP_TIMEOUT}s: check $check failed; status and logs:"
				fi
				status >&2 || true
				local name
				for name in slurmctld bridge k8s-setup ${SKB_NODES//,/ } kube-apiserver; do
					echo "--- $(cname "$name") (last lines)" >&2
					"$SKB_ENGINE" logs --tail 25 "$(cname "$name")" >&2 2>&1 || true
				done
				return 1
			fi
			sleep 1
		done
		timings+=("$(printf '%-38s %7ss' "ready: $check" "$(since "$t")")")
	done
}

up() {
	[ "$(id -u)" -eq 0 ] || die "up needs root"
	prepare
	timings=()
	local t0 t
	t0=$(now)
	rm -rf "$STATE/run"
	mkdir -p "$STATE/run"
	echo "$SKB_REAL_NODES" >"$STATE/real-nodes"
	t=$(now)
	compose up -d >"$STATE/log/compose-up.log" 2>&1 || {
		tail -n 40 "$STATE/log/compose-up.log" >&2
		die "$SKB_COMPOSE up failed (log: $STATE/log/compose-up.log)"
	}
	timings+=("$(printf '%-38s %7ss' "$SKB_COMPOSE up -d" "$(since "$t")")")
	wait_ready || die "the stack did not become ready (scripts/compose-cluster.sh down to remove it)"
	log "stack up in $(since "$t0") s ($SKB_ENGINE, $SKB_COMPOSE):"
	printf '    %s\n' "${timings[@]}" >&2
	log "shell on the login node: scripts/compose-cluster.sh shell; status: scripts/compose-cluster.sh status"
}

down() {
	local t0
	t0=$(now)
	# the node stops its pods and removes their cgroups on SIGTERM: give it time
	compose down -v -t 60 >"$STATE/log/compose-down.log" 2>&1 || {
		tail -n 30 "$STATE/log/compose-down.log" >&2
		die "$SKB_COMPOSE down failed (log: $STATE/log/compose-down.log)"
	}
	# podman-compose 1.0 leaves the network behind
	"$SKB_ENGINE" network rm "${SKB_PROJECT}_cluster" >/dev/null 2>&1 || true
	rm -rf "$STATE/run"
	stop_podman_socket
	log "stack removed in $(since "$t0") s"
}

shell() {
	local user=${args[0]:-${SKB_USERS%%:*}}
	if [ "$user" = root ]; then
		exec "$SKB_ENGINE" exec -it "$(cname login)" bash
	fi
	exec "$SKB_ENGINE" exec -it -w "$SKB_SHARED_DIR/home/$user" "$(cname login)" su - "$user"
}

[ "$install_deps" = 1 ] && install_host_deps
pick_engine
case "$action" in
	prepare) prepare ;;
	up) pick_compose; up ;;
	down) pick_compose; down ;;
	status) status ;;
	env) write_env; cat "$STATE/compose.env" ;;
	compose) pick_compose; compose "${args[@]}" ;;
	shell) shell ;;
	*) usage 2 ;;
esac
