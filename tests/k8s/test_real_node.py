"""RealNode: a real kubelet + containerd node in the local control plane runs pods for real.

The module's ``kube_cluster`` (tests/k8s/conftest.py, no KWOK nodes) gets one ``RealNode`` that
advertises 2 ``nvidia.com/gpu`` without GPUs. When this machine cannot run a node (not
root, packages missing and not installable, no cgroups, the kubelet cannot be built) every
test is skipped with the reason printed. Set SKB_KEEP_CLUSTER_DIR=1 to keep the logs.
"""

from __future__ import annotations

import http.server
import ipaddress
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

from slurm_k8s_devcluster.k8s import KubeClusterError, wait_for
from slurm_k8s_devcluster.kubelet import (
    BUSYBOX_IMAGE,
    RealNode,
    RealNodeUnavailable,
    ensure_kubelet_binary,
    ensure_node_images,
    ensure_node_prerequisites,
)

from ..kube_env import remove_scratch_dir, scratch_dir
from ..kube_env import skip as _skip

pytestmark = pytest.mark.k8s

NODE = "real-0"
GPUS = 2
NS = "real-node"


@pytest.fixture(scope="module")
def kube_options():
    """The control plane of tests/k8s/conftest.py, without KWOK nodes."""
    return {"kwok_nodes": 0}


@pytest.fixture(scope="module")
def node_parts(k8s_bin_dir):
    """Prerequisites, kubelet binary and images, or a skip saying what is missing."""
    try:
        ensure_node_prerequisites()
        kubelet = ensure_kubelet_binary()
        images = ensure_node_images()
    except RealNodeUnavailable as exc:
        _skip(f"real kubelet node unavailable: {exc}")
    return kubelet, images


@pytest.fixture(scope="module")
def real_node(node_parts, kube_cluster):
    # node_parts first: a machine that cannot run a node skips before the control plane starts
    kubelet, images = node_parts
    base = scratch_dir("k8s-realnode")
    node = RealNode(kube_cluster, NODE, base / "node", gpus=GPUS, kubelet_bin=kubelet, images=images)
    try:
        try:
            node.start(timeout=180)
        except RealNodeUnavailable as exc:
            _skip(f"real kubelet node unavailable: {exc}")
        print(f"\nRealNode {NODE} Ready in {node.start_seconds:.1f}s "
              f"({', '.join(f'{k} {v:.1f}s' for k, v in node.timings.items())}); "
              f"node IP {node.node_ip}, pods {node.pod_cidr}")
        kube_cluster.ensure_namespace(NS)
        yield node
    finally:
        node.stop()
        remove_scratch_dir(base)


@pytest.fixture
def core(real_node):
    with real_node.cluster.admin_client() as api:
        yield client.CoreV1Api(api)


def _pod(name: str, command: str, gpus: int | None = None, image: str = BUSYBOX_IMAGE,
         restart: str = "Never") -> dict:
    container = {"name": "main", "image": image, "imagePullPolicy": "Never",
                 "command": ["sh", "-c", command]}
    if gpus is not None:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 1,
                     "dnsPolicy": "Default", "containers": [container]}}


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _phase(core, name: str) -> str:
    return core.read_namespaced_pod(name, NS).status.phase


def _wait_phase(core, name: str, phases: set[str], timeout: float = 90.0) -> str:
    try:
        return wait_for(lambda: _phase(core, name) in phases and _phase(core, name), timeout,
                        f"pod {name} in {sorted(phases)}", interval=0.25)
    except KubeClusterError as exc:
        pod = core.read_namespaced_pod(name, NS)
        events = core.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}")
        raise AssertionError(f"{exc}\nstatus: {pod.status}\nevents: "
                             f"{[(e.reason, e.message) for e in events.items]}") from exc


def test_node_is_ready_with_gpus_labels_and_real_runtime(real_node, core):
    node = core.read_node(NODE)
    assert node.status.capacity["nvidia.com/gpu"] == str(GPUS)
    assert node.status.allocatable["nvidia.com/gpu"] == str(GPUS)
    labels = node.metadata.labels
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.count"] == str(GPUS)
    assert labels["nvidia.com/gpu.present"] == "true"
    assert labels["type"] == "real"
    info = node.status.node_info
    assert info.kubelet_version == "v1.34.10"
    assert info.container_runtime_version.startswith("containerd://")
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == real_node.node_ip
    assert set(real_node.pids()) == {"containerd", "kubelet"}
    assert all(alive for _, alive in real_node.recorded_pids().values())


def test_gpu_pod_runs_to_completion_and_its_logs_are_readable(real_node, core):
    name = _unique("gpu-hello")
    t0 = time.monotonic()
    core.create_namespaced_pod(NS, _pod(
        name, "echo hello from $(hostname) on a real kubelet > /tmp/out; cat /tmp/out; exit 0",
        gpus=1))
    assert _wait_phase(core, name, {"Succeeded", "Failed"}) == "Succeeded"
    print(f"\n1-GPU pod created -> Succeeded in {time.monotonic() - t0:.1f}s")
    pod = core.read_namespaced_pod(name, NS)
    assert pod.spec.node_name == NODE
    state = pod.status.container_statuses[0].state.terminated
    assert state.exit_code == 0 and state.reason == "Completed"
    log = core.read_namespaced_pod_log(name, NS)   # apiserver -> kubelet :port/containerLogs
    assert log.strip() == f"hello from {name} on a real kubelet"


def test_pod_ip_is_reachable_from_the_host(real_node, core):
    name = _unique("web")
    t0 = time.monotonic()
    core.create_namespaced_pod(NS, _pod(
        name, "mkdir -p /www && echo ok-$(hostname) > /www/index.html && "
              "exec httpd -f -p 8080 -h /www", restart="Always"))
    _wait_phase(core, name, {"Running"})
    ip = real_node.pod_ip(NS, name)
    print(f"\npod created -> Running in {time.monotonic() - t0:.1f}s, IP {ip}")
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(real_node.pod_cidr)

    def fetch() -> str:
        with urllib.request.urlopen(f"http://{ip}:8080/index.html", timeout=3) as resp:
            return resp.read().decode()

    assert wait_for(fetch, 30, f"HTTP from pod {name} at {ip}").strip() == f"ok-{name}"
    # exec: apiserver -> kubelet -> containerd's streaming server
    out = stream(core.connect_get_namespaced_pod_exec, name, NS,
                 command=["cat", "/www/index.html"], stderr=True, stdin=False, stdout=True,
                 tty=False)
    assert out.strip() == f"ok-{name}"
    core.delete_namespaced_pod(name, NS, grace_period_seconds=1)


def test_pods_reach_services_on_the_host(real_node, core):
    """What slurmd in a pod needs: connect to slurmctld on the host (here an HTTP server on
    the node IP, the pods' gateway)."""
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"host-says-hi\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((real_node.node_ip, 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        name = _unique("to-host")
        # busybox-static's wget segfaults (static glibc); nc speaks enough HTTP
        host, port = real_node.node_ip, server.server_address[1]
        core.create_namespaced_pod(NS, _pod(
            name, f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port} | tail -n 1"))
        assert _wait_phase(core, name, {"Succeeded", "Failed"}) == "Succeeded", \
            core.read_namespaced_pod_log(name, NS)
        assert core.read_namespaced_pod_log(name, NS).strip() == "host-says-hi"
    finally:
        server.shutdown()
        server.server_close()


def test_more_gpus_than_advertised_stay_pending_unschedulable(real_node, core):
    name = _unique("too-many")
    core.create_namespaced_pod(NS, _pod(name, "true", gpus=GPUS + 1))

    def unschedulable():
        conds = core.read_namespaced_pod(name, NS).status.conditions or []
        return next((c for c in conds if c.type == "PodScheduled" and c.status == "False"
                     and c.reason == "Unschedulable"), None)

    cond = wait_for(unschedulable, 30, f"pod {name} Unschedulable")
    assert "Insufficient nvidia.com/gpu" in cond.message
    time.sleep(3)
    pod = core.read_namespaced_pod(name, NS)
    assert pod.status.phase == "Pending" and not pod.spec.node_name
    core.delete_namespaced_pod(name, NS, grace_period_seconds=0)


def test_image_saved_by_podman_runs_on_the_node(real_node, core, node_parts):
    if shutil.which("podman") is None:
        _skip("podman is not installed (scripts/build-kubelet.sh --install-deps installs it)")
    _, images = node_parts
    ref = "localhost/skb-realnode-podman-test:1"
    load = subprocess.run(["podman", "load", "-i", str(images[BUSYBOX_IMAGE])],
                          capture_output=True, text=True, check=False)
    if load.returncode != 0:
        _skip(f"podman cannot load images here: {load.stderr.strip()[-500:]}")
    subprocess.run(["podman", "tag", BUSYBOX_IMAGE, ref], check=True, capture_output=True)
    try:
        assert ref in real_node.import_image(ref)   # podman save | ctr images import -
    finally:
        subprocess.run(["podman", "rmi", ref], check=False, capture_output=True)
    name = _unique("podman-img")
    core.create_namespaced_pod(NS, _pod(name, "echo from podman image", image=ref))
    assert _wait_phase(core, name, {"Succeeded", "Failed"}) == "Succeeded"
    assert core.read_namespaced_pod_log(name, NS).strip() == "from podman image"


def test_gpus_are_advertised_again_after_a_kubelet_restart(real_node, core):
    before = core.read_node(NODE).metadata.resource_version
    real_node.restart_kubelet(readvertise=False)
    time.sleep(2)
    kept = core.read_node(NODE).status.capacity.get("nvidia.com/gpu")
    print(f"\nnvidia.com/gpu capacity after a bare kubelet restart: {kept!r} (was {GPUS})")
    real_node.advertise()
    real_node.wait_ready(60)
    node = core.read_node(NODE)
    assert node.metadata.resource_version != before
    assert node.status.allocatable["nvidia.com/gpu"] == str(GPUS)
    name = _unique("after-restart")
    core.create_namespaced_pod(NS, _pod(name, "echo again", gpus=GPUS))
    assert _wait_phase(core, name, {"Succeeded", "Failed"}) == "Succeeded"


def test_stop_removes_host_state_and_start_resumes(real_node, core):
    bridge, cgroup = real_node.bridge, real_node.cgroup_root
    real_node.stop()
    assert not Path(f"/sys/class/net/{bridge}").exists()
    assert not any(Path(root, cgroup.lstrip("/")).exists()
                   for root in Path("/sys/fs/cgroup").iterdir() if root.is_dir())
    assert not real_node.pids()
    with open("/proc/self/mountinfo") as fh:
        assert str(real_node.base_dir) not in fh.read()
    try:
        core.read_node(NODE)
    except ApiException as exc:  # pragma: no cover - the Node object is kept
        raise AssertionError(f"node object deleted by stop(): {exc}") from exc
    real_node.start(timeout=120)   # same base_dir: images kept, same subnet
    assert core.read_node(NODE).status.allocatable["nvidia.com/gpu"] == str(GPUS)
