#!/usr/bin/env bash
# Smoke test for the binaries from scripts/build-k8s-binaries.sh:
# etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on
# loopback (free ports, temp dir), one fake kwok node with nvidia.com/gpu: 8,
# then checks via the REST API (curl + bearer token) that
#   /version is the pinned v1.MINOR.PATCH, the node becomes Ready,
#   the controller-manager created the "default" ServiceAccount,
#   a pod requesting nvidia.com/gpu: 1 is scheduled onto the node and kwok runs it.
# Everything is torn down at exit (bounded waits, kill by pid).
#
#   bash scripts/smoke-k8s.sh            # exit 0 and "SMOKE OK" on success
#   KEEP_SMOKE_DIR=1 bash scripts/smoke-k8s.sh   # keep the temp dir (logs)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${K8S_BIN_DIR:-$(bash "${HERE}/build-k8s-binaries.sh" | tail -n 1)}"
STAMP="${BIN}/../.complete"
SHARE="${BIN}/../share"
EXPECTED_VERSION="$(sed -n 's/^k8s=\([^ ]*\).*/\1/p' "${STAMP}" 2>/dev/null || true)"
[[ -n "${EXPECTED_VERSION}" ]] || EXPECTED_VERSION="$("${BIN}/kube-apiserver" --version | awk '{print $2}')"
STARTUP_TIMEOUT="${SMOKE_TIMEOUT:-90}"   # seconds per wait step

log() { echo "[smoke-k8s] $*" >&2; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/smoke-k8s.XXXXXX")"
declare -a PIDS=() NAMES=()
RESULT=1

teardown() {
    local i pid n
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do   # reverse start order
        pid="${PIDS[$i]}"
        kill -0 "${pid}" 2>/dev/null || continue
        kill -TERM "${pid}" 2>/dev/null || true
        for ((n = 0; n < 50; n++)); do             # <= 10s grace per process
            kill -0 "${pid}" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "${pid}" 2>/dev/null; then
            log "${NAMES[$i]} (pid ${pid}) ignored SIGTERM, sending SIGKILL"
            kill -KILL "${pid}" 2>/dev/null || true
        fi
        wait "${pid}" 2>/dev/null || true
    done
    if [[ "${RESULT}" != 0 ]]; then
        for i in "${!NAMES[@]}"; do
            log "---- last lines of ${NAMES[$i]}.log ----"
            tail -n 25 "${TMP}/${NAMES[$i]}.log" >&2 || true
        done
    fi
    if [[ -n "${KEEP_SMOKE_DIR:-}" ]]; then
        log "kept ${TMP}"
    else
        rm -rf "${TMP}"
    fi
}
trap teardown EXIT
trap 'exit 130' INT TERM

start() {  # NAME CMD...   (background, logs to $TMP/NAME.log)
    local name="$1"; shift
    "$@" >"${TMP}/${name}.log" 2>&1 &
    PIDS+=("$!"); NAMES+=("${name}")
    log "started ${name} (pid $!)"
}

wait_for() {  # DESC CMD...   (retries CMD until success, bounded)
    local desc="$1" deadline=$((SECONDS + STARTUP_TIMEOUT)) i
    shift
    until "$@" >/dev/null 2>&1; do
        for i in "${!PIDS[@]}"; do
            kill -0 "${PIDS[$i]}" 2>/dev/null || { log "FAIL: ${NAMES[$i]} exited while waiting for ${desc}"; exit 1; }
        done
        ((SECONDS < deadline)) || { log "FAIL: timed out after ${STARTUP_TIMEOUT}s waiting for ${desc}"; exit 1; }
        sleep 0.5
    done
    log "ok: ${desc}"
}

# ---- ports (ask the kernel for free loopback ports) ---------------------------
read -r ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHED_PORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)

# ---- certs, keys, token, kubeconfig --------------------------------------------
PKI="${TMP}/pki"; mkdir -p "${PKI}"
openssl genrsa -out "${PKI}/sa.key" 2048 2>/dev/null
openssl rsa -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=kube-apiserver" \
    -keyout "${PKI}/apiserver.key" -out "${PKI}/apiserver.crt" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1" \
    2>/dev/null
TOKEN="$(openssl rand -hex 24)"
echo "${TOKEN},smoke-admin,smoke-admin,system:masters" >"${PKI}/tokens.csv"
chmod 600 "${PKI}"/*.key "${PKI}/tokens.csv"

KUBECONFIG_FILE="${TMP}/admin.kubeconfig"
cat >"${KUBECONFIG_FILE}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: smoke
  cluster:
    server: https://127.0.0.1:${API_PORT}
    certificate-authority: ${PKI}/apiserver.crt
users:
- name: smoke-admin
  user:
    token: ${TOKEN}
contexts:
- name: smoke
  context: {cluster: smoke, user: smoke-admin}
current-context: smoke
EOF

API="https://127.0.0.1:${API_PORT}"
kcurl() {  # PATH [curl args...]  -> body on stdout, fails on HTTP >= 400
    local path="$1"; shift
    curl -sS --fail --max-time 10 --cacert "${PKI}/apiserver.crt" \
        -H "Authorization: Bearer ${TOKEN}" "$@" "${API}${path}"
}
jget() {  # PYTHON_EXPR over `d` (parsed JSON from stdin)
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}

# ---- etcd -----------------------------------------------------------------------
start etcd "${BIN}/etcd" --name smoke --data-dir "${TMP}/etcd" \
    --listen-client-urls "http://127.0.0.1:${ETCD_PORT}" \
    --advertise-client-urls "http://127.0.0.1:${ETCD_PORT}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster "smoke=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --unsafe-no-fsync --log-level warn
wait_for "etcd /health" curl -sf --max-time 2 "http://127.0.0.1:${ETCD_PORT}/health"

# ---- kube-apiserver -------------------------------------------------------------
start kube-apiserver "${BIN}/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:${ETCD_PORT}" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "${API_PORT}" \
    --cert-dir "${TMP}/apiserver" \
    --tls-cert-file "${PKI}/apiserver.crt" --tls-private-key-file "${PKI}/apiserver.key" \
    --token-auth-file "${PKI}/tokens.csv" \
    --authorization-mode Node,RBAC \
    --service-cluster-ip-range 10.96.0.0/16 \
    --endpoint-reconciler-type none \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "${PKI}/sa.pub" \
    --service-account-signing-key-file "${PKI}/sa.key"
wait_for "kube-apiserver /readyz" kcurl /readyz

# ---- kube-controller-manager, kube-scheduler ------------------------------------
# --authentication-skip-lookup: delegated authn still does TokenReview through the
# kubeconfig, but does not try to read client-ca/requestheader CAs from
# configmap kube-system/extension-apiserver-authentication (absent/incomplete
# without --client-ca-file and --requestheader-* on the apiserver -> endless
# "Unhandled Error" log spam).
start kube-controller-manager "${BIN}/kube-controller-manager" \
    --kubeconfig "${KUBECONFIG_FILE}" \
    --authentication-kubeconfig "${KUBECONFIG_FILE}" --authorization-kubeconfig "${KUBECONFIG_FILE}" \
    --authentication-skip-lookup \
    --bind-address 127.0.0.1 --secure-port "${KCM_PORT}" --cert-dir "${TMP}/kcm" \
    --leader-elect=false \
    --flex-volume-plugin-dir "${TMP}/flexvolume" \
    --service-account-private-key-file "${PKI}/sa.key" --root-ca-file "${PKI}/apiserver.crt"
start kube-scheduler "${BIN}/kube-scheduler" \
    --kubeconfig "${KUBECONFIG_FILE}" \
    --authentication-kubeconfig "${KUBECONFIG_FILE}" --authorization-kubeconfig "${KUBECONFIG_FILE}" \
    --authentication-skip-lookup \
    --bind-address 127.0.0.1 --secure-port "${SCHED_PORT}" --cert-dir "${TMP}/scheduler" \
    --leader-elect=false
wait_for "kube-controller-manager /healthz" curl -skf --max-time 2 "https://127.0.0.1:${KCM_PORT}/healthz"
wait_for "kube-scheduler /healthz" curl -skf --max-time 2 "https://127.0.0.1:${SCHED_PORT}/healthz"

# ---- kwok -----------------------------------------------------------------------
start kwok "${BIN}/kwok" --kubeconfig "${KUBECONFIG_FILE}" \
    --config "${SHARE}/kwok/stages-fast.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds 40 --cidr 10.0.0.1/24 --node-ip 127.0.0.1

# ---- checks ---------------------------------------------------------------------
version_json="$(kcurl /version)"
git_version="$(jget 'd["gitVersion"]' <<<"${version_json}")"
major_minor="$(jget 'd["major"]+"."+d["minor"]' <<<"${version_json}")"
log "/version: gitVersion=${git_version} major.minor=${major_minor}"
[[ "${git_version}" == "${EXPECTED_VERSION}" ]] || { log "FAIL: /version ${git_version} != ${EXPECTED_VERSION}"; exit 1; }
[[ "v1.${major_minor#1.}" == "${EXPECTED_VERSION%.*}" ]] || { log "FAIL: major.minor ${major_minor} vs ${EXPECTED_VERSION}"; exit 1; }

NODE=kwok-gpu-0
kcurl /api/v1/nodes -X POST -H 'Content-Type: application/json' -o /dev/null -d @- <<EOF
{"apiVersion": "v1", "kind": "Node",
 "metadata": {"name": "${NODE}",
   "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
   "labels": {"type": "kwok", "kubernetes.io/hostname": "${NODE}",
              "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
 "status": {
   "capacity":    {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"},
   "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"}}}
EOF
log "created node ${NODE}"

node_ready() {
    kcurl "/api/v1/nodes/${NODE}" | jget \
        '[c["status"] for c in d["status"].get("conditions", []) if c["type"] == "Ready"] == ["True"] or sys.exit(1)'
}
wait_for "node ${NODE} Ready" node_ready
gpus="$(kcurl "/api/v1/nodes/${NODE}" | jget 'd["status"]["allocatable"].get("nvidia.com/gpu")')"
[[ "${gpus}" == 8 ]] || { log "FAIL: node allocatable nvidia.com/gpu=${gpus}"; exit 1; }
log "ok: node allocatable nvidia.com/gpu=${gpus}"

wait_for "ServiceAccount default/default (controller-manager)" kcurl /api/v1/namespaces/default/serviceaccounts/default

kcurl /api/v1/namespaces/default/pods -X POST -H 'Content-Type: application/json' -o /dev/null -d @- <<'EOF'
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "gpu-smoke", "namespace": "default"},
 "spec": {"containers": [{"name": "main", "image": "fake.invalid/none",
                          "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
EOF
pod_running() {
    kcurl /api/v1/namespaces/default/pods/gpu-smoke | jget \
        '(d["spec"].get("nodeName") == "'"${NODE}"'" and d["status"].get("phase") == "Running") or sys.exit(1)'
}
wait_for "pod gpu-smoke scheduled on ${NODE} and Running (scheduler + kwok)" pod_running

RESULT=0
log "binaries: ${BIN}"
echo "SMOKE OK: ${git_version}, node ${NODE} Ready with nvidia.com/gpu=8, GPU pod Running"
