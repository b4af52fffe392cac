"""Kubernetes side of the compose test cluster, run as the service ``k8s-setup`` (controller
image, the bridge's venv: the ``kubernetes`` client and ``slurm_k8s_bridge``).

Once the apiserver answers (as cluster admin, ``/state/k8s/admin.kubeconfig``):

1. the job namespaces of the bridge configuration and the daemon's namespace, the daemon's
   RBAC (``slurm_k8s_bridge.kube.access.required_rbac``, what ``deploy/rbac.yaml`` holds);
2. the Secret ``munge_key_secret`` (the cluster's munge key) in every job namespace;
3. ``SKB_KWOK_NODES`` KWOK nodes of the h100 shape (``gpu-0``...), labelled ``type=kwok``;
4. ``/state/run/daemon.kubeconfig``: a TokenRequest token of the daemon's ServiceAccount;

then, every 2 s for as long as it runs, every real (kubelet) node gets the GPU labels and
its ``nvidia.com/gpu`` capacity (``SKB_NODE_GPUS``), the way ``RealNode.advertise()`` does
it: a JSON patch of ``/status/capacity``. Writes ``/state/run/k8s-setup.ready`` when steps
1-4 are done and again (with the node names) whenever a real node was advertised.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from slurm_k8s_bridge.core.config import job_namespaces, parse_config
from slurm_k8s_bridge.kube.rbac import DAEMON_NAMESPACE, SERVICE_ACCOUNT, required_rbac

STATE = Path(os.environ.get("SKB_STATE", "/state"))
# the development harness is not part of the installed bridge: compose-cluster.sh prepare
# puts its package in the state directory
sys.path.insert(0, str(STATE / "lib"))
from slurm_k8s_devcluster.k8s import KWOK_NODE_ANNOTATION, gpu_node_labels  # noqa: E402
RUN = STATE / "run"
ADMIN = STATE / "k8s" / "admin.kubeconfig"
SERVER = "https://kube-apiserver:6443"
WAIT = float(os.environ.get("SKB_WAIT", "300"))


def say(message: str) -> None:
    print(f"k8s-setup: {message}", file=sys.stderr, flush=True)


def wait_apiserver(timeout: float) -> None:
    ctx = ssl.create_default_context(cafile=str(STATE / "pki" / "ca.crt"))
    ctx.load_cert_chain(str(STATE / "pki" / "admin.crt"), str(STATE / "pki" / "admin.key"))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{SERVER}/readyz", context=ctx, timeout=3) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # noqa: BLE001 - polling
            last = exc
        time.sleep(0.5)
    raise SystemExit(f"k8s-setup: error: kube-apiserver not ready within {timeout:.0f}s ({last!r})")


def write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)


def create(fn: Any, *args: Any) -> None:
    from kubernetes.client.exceptions import ApiException
    try:
        fn(*args)
    except ApiException as exc:
        if exc.status != 409:
            raise


def wait_for(what: str, predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polling
            last = exc
        time.sleep(0.3)
    raise SystemExit(f"k8s-setup: error: timed out after {timeout:.0f}s waiting for {what}"
                     f"{f' ({last!r})' if last else ''}")


def main() -> int:
    from kubernetes import client
    from kubernetes import config as kconfig

    t0 = time.monotonic()
    text = (STATE / "etc" / "k8s-bridge.yaml.in").read_text().replace("@SLURMCTLD_ADDR@", "0.0.0.0")
    data = yaml.safe_load(text)
    bridge = parse_config(data, "k8s-bridge.yaml")
    namespaces = job_namespaces(bridge)
    shape = bridge.shapes[os.environ.get("SKB_SHAPE", "h100")]
    wait_apiserver(WAIT)
    api = kconfig.new_client_from_config(config_file=str(ADMIN))
    core = client.CoreV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)

    # 1. namespaces (each with its default ServiceAccount) and the daemon's RBAC
    for ns in (*namespaces, DAEMON_NAMESPACE):
        create(core.create_namespace, {"metadata": {"name": ns}})
        wait_for(f"ServiceAccount {ns}/default",
                 lambda ns=ns: core.read_namespaced_service_account("default", ns), WAIT)
    for obj in required_rbac(namespaces, daemon_namespace=DAEMON_NAMESPACE,
                             native_gpu_usage=bridge.native_gpu_usage):
        ns = obj["metadata"].get("namespace")
        kind = obj["kind"]
        if kind == "ServiceAccount":
            create(core.create_namespaced_service_account, ns, obj)
        elif kind == "Role":
            create(rbac.create_namespaced_role, ns, obj)
        elif kind == "RoleBinding":
            create(rbac.create_namespaced_role_binding, ns, obj)
        elif kind == "ClusterRole":
            create(rbac.create_cluster_role, obj)
        elif kind == "ClusterRoleBinding":
            create(rbac.create_cluster_role_binding, obj)
        else:
            raise SystemExit(f"k8s-setup: error: unexpected RBAC object kind {kind}")

    # 2. the munge key, as the pods mount it
    if bridge.munge_key_secret:
        key = base64.b64encode((STATE / "munge" / "munge.key").read_bytes()).decode()
        for ns in namespaces:
            body: Any = {"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": bridge.munge_key_secret, "namespace": ns},
                    "data": {"munge.key": key}}
            try:
                core.create_namespaced_secret(ns, body)
            except client.exceptions.ApiException as exc:
                if exc.status != 409:
                    raise
                core.replace_namespaced_secret(bridge.munge_key_secret, ns, body)

    # 3. KWOK nodes of the shape (LocalKubeCluster.add_gpu_nodes, without its harness)
    resources = {"cpu": str(shape.cpus), "memory": f"{shape.memory_mb}Mi", "pods": "110",
                 "ephemeral-storage": "10Ti", "nvidia.com/gpu": str(shape.gpus)}
    kwok_names = [f"gpu-{i}" for i in range(int(os.environ.get("SKB_KWOK_NODES", "2")))]
    for name in kwok_names:
        labels = gpu_node_labels(name, gpus=shape.gpus, gpu_product=shape.gpu_product)
        create(core.create_node, {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1],
                                         "node.alpha.kubernetes.io/ttl": "0"}},
            "status": {"capacity": dict(resources), "allocatable": dict(resources)}})

    # 4. the daemon's identity: its ServiceAccount's token
    status = core.create_namespaced_service_account_token(
        SERVICE_ACCOUNT, DAEMON_NAMESPACE,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[], expiration_seconds=7 * 86400))).status
    if status is None or not status.token:
        raise SystemExit("k8s-setup: error: the TokenRequest for the daemon returned no token")
    token = status.token
    ca = base64.b64encode((STATE / "pki" / "ca.crt").read_bytes()).decode()
    user = f"system:serviceaccount:{DAEMON_NAMESPACE}:{SERVICE_ACCOUNT}"
    RUN.mkdir(parents=True, exist_ok=True)
    write_private(RUN / "daemon.kubeconfig", json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "skb", "cluster": {"server": SERVER,
                                                 "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "skb", "context": {"cluster": "skb", "user": user,
                                                 "namespace": DAEMON_NAMESPACE}}],
        "current-context": "skb"}, indent=2) + "\n")
    say(f"namespaces {namespaces}, RBAC, munge Secret, {len(kwok_names)} KWOK nodes and "
        f"the daemon's kubeconfig in {time.monotonic() - t0:.1f}s")
    (RUN / "k8s-setup.ready").write_text(json.dumps({"kwok_nodes": kwok_names,
                                                    "real_nodes": []}) + "\n")

    # then: advertise GPUs on every real node, now and whenever one (re)registers
    gpus = os.environ.get("SKB_NODE_GPUS", str(shape.gpus))
    advertised: set[str] = set()
    while True:
        try:
            for node in core.list_node().items:
                meta: Any = node.metadata
                if (meta.annotations or {}).get(KWOK_NODE_ANNOTATION[0]) == KWOK_NODE_ANNOTATION[1]:
                    continue
                cap = (node.status.capacity or {}) if node.status else {}
                labels = meta.labels or {}
                if cap.get("nvidia.com/gpu") == gpus and labels.get("type") == "real":
                    continue
                want = gpu_node_labels(meta.name, gpus=int(gpus), gpu_product=shape.gpu_product)
                want["type"] = "real"
                want["node.kubernetes.io/instance-type"] = \
                    f"real-{gpus}x-{shape.gpu_product}".lower()[:63]
                core.patch_node(meta.name, {"metadata": {"labels": want}})
                core.patch_node_status(meta.name, [
                    {"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": gpus}])
                advertised.add(meta.name)
                say(f"node {meta.name}: labels + nvidia.com/gpu={gpus} advertised")
                (RUN / "k8s-setup.ready").write_text(json.dumps(
                    {"kwok_nodes": kwok_names, "real_nodes": sorted(advertised)}) + "\n")
        except Exception as exc:  # noqa: BLE001 - keep advertising; say what failed
            say(f"warning: {exc!r}")
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
