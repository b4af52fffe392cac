"""The compose test cluster (containers/compose, scripts/compose-cluster.sh), driven from
here with the ``docker`` Python package, which talks to a docker engine or to podman's
Docker-compatible API socket (``podman system service``, started here when needed).

One stack per module: ``scripts/compose-cluster.sh up`` (prepare, compose up, wait until
slurmctld, the kubelet node with its GPUs, the KWOK nodes, the bridge daemon and the login
node answer). Then, from the login container as the non-root user ``alice``:
``sbatch -N2 --gres=gpu:1`` of a script running ``srun hostname`` runs on two real pods of
the kubelet node and COMPLETES, with both pods' hostnames in the output file on the shared
path (read here, on the host, at the same path); an interactive ``srun`` from the login
container reaches the pods and is reached back; the pods are unprivileged; everything is on
the network the stack created. ``down`` leaves no container, network or volume behind.

Skipped, with the reason printed, when the stack cannot start here (not root, no engine,
no compose tool, the images or binaries cannot be built, a nested container runtime cannot
run). ``SLURM_K8S_COMPOSE_REQUIRED=1`` turns that into a failure.

Environment:
  SLURM_K8S_COMPOSE_STATE     state directory (default /var/tmp/slurm-k8s-bridge-compose-test)
  SLURM_K8S_COMPOSE_PROJECT   compose project / container prefix (default skbtest)
  SLURM_K8S_COMPOSE_TOOL      "docker compose", docker-compose or podman-compose
  SLURM_K8S_COMPOSE_KEEP=1    leave the stack running afterwards (scripts/compose-cluster.sh down)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from slurm_k8s_bridge.core.contract import JOB_ID_LABEL

from ..paths import REPO

pytestmark = pytest.mark.containers

SCRIPT = REPO / "scripts" / "compose-cluster.sh"
STATE = Path(os.environ.get("SLURM_K8S_COMPOSE_STATE", "/var/tmp/slurm-k8s-bridge-compose-test"))
PROJECT = os.environ.get("SLURM_K8S_COMPOSE_PROJECT", "skbtest")
PODMAN_SOCKET = Path("/run/podman/podman.sock")
USER = "alice"
UP_TIMEOUT = 3600      # a cold prepare builds images and Kubernetes binaries
JOB_TIMEOUT = 180
SERVICES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
            "k8s-setup", "slurmctld", "bridge", "login", "real-0")


def say(message: str) -> None:
    print(f"\n[compose] {message}", file=sys.stderr, flush=True)


def skip_or_fail(reason: str) -> None:
    say(f"SKIP: {reason}")
    if os.environ.get("SLURM_K8S_COMPOSE_REQUIRED") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@dataclass
class Stack:
    client: Any                          # docker.DockerClient
    engine: str
    env: dict[str, str]
    shared: Path
    timings: dict[str, float] = field(default_factory=dict)

    def container(self, service: str) -> Any:
        return self.client.containers.get(f"{PROJECT}-{service}")

    def exec(self, service: str, cmd: list[str] | str, *, user: str = "", workdir: str | None = None,
             timeout: float = 120, check: bool = True) -> tuple[int, str]:
        """Run ``cmd`` in a service's container through the API; (exit code, output)."""
        if isinstance(cmd, str):
            cmd = ["bash", "-c", cmd]
        cmd = ["timeout", str(int(timeout)), *cmd]
        res = self.container(service).exec_run(cmd, user=user, workdir=workdir, demux=False)
        out = (res.output or b"").decode(errors="replace")
        if check and res.exit_code != 0:
            raise AssertionError(f"{service}: {cmd} -> rc={res.exit_code}\n{out}")
        return res.exit_code, out

    def kubectl(self, *args: str, timeout: float = 60) -> str:
        return self.exec("kube-apiserver", ["kubectl", "--kubeconfig", "/state/k8s/admin.kubeconfig",
                                            *args], timeout=timeout)[1]

    def as_user(self, command: str, timeout: float = 120, check: bool = True) -> tuple[int, str]:
        return self.exec("login", ["bash", "-lc", command], user=USER,
                         workdir=str(self.home), timeout=timeout, check=check)

    @property
    def home(self) -> Path:
        return self.shared / "home" / USER

    def logs(self, service: str, tail: int = 40) -> str:
        try:
            return self.container(service).logs(tail=tail).decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            return f"(no logs: {exc!r})"


def _script(action: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), action], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def _docker_client(engine: str) -> tuple[Any, subprocess.Popen[bytes] | None]:
    """A docker.DockerClient for the engine, and the podman API service started for it."""
    docker = pytest.importorskip("docker", reason="the docker Python package is not installed")
    if engine == "docker":
        return docker.from_env(), None
    url = f"unix://{PODMAN_SOCKET}"
    if PODMAN_SOCKET.is_socket():
        try:
            client = docker.DockerClient(base_url=url, timeout=120)
            client.ping()
            return client, None
        except Exception as exc:  # noqa: BLE001 - a dead service's socket: start one
            say(f"{url} does not answer ({exc!r}): starting podman system service")
    PODMAN_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    started = subprocess.Popen(["podman", "system", "service", "--time=0", url],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client = docker.DockerClient(base_url=url, timeout=120)
            client.ping()
            return client, started
        except Exception as exc:  # noqa: BLE001 - polling
            last = exc
            time.sleep(0.3)
    started.terminate()
    skip_or_fail(f"podman's API socket {url} did not answer within 30 s ({last!r})")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if os.geteuid() != 0:
        skip_or_fail("the compose stack needs root (images built and run with podman as root, "
                     "a privileged kubelet node)")
    engine = "podman" if shutil.which("podman") else "docker" if shutil.which("docker") else None
    if engine is None:
        skip_or_fail("no container engine (podman or docker); scripts/compose-cluster.sh "
                     "--install-deps installs podman and podman-compose")
    assert engine is not None
    env = dict(os.environ, SKB_STATE_DIR=str(STATE), SKB_PROJECT=PROJECT, SKB_ENGINE=engine)
    if os.environ.get("SLURM_K8S_COMPOSE_TOOL"):
        env["SKB_COMPOSE"] = os.environ["SLURM_K8S_COMPOSE_TOOL"]
    client, service = _docker_client(engine)
    _script("down", env, 300)          # whatever an earlier run left
    say(f"scripts/compose-cluster.sh up (state {STATE}, project {PROJECT}; "
        "a cold prepare builds images, ~10 min)")
    t0 = time.monotonic()
    try:
        res = _script("up", env, UP_TIMEOUT)
    except subprocess.TimeoutExpired:
        _script("down", env, 300)
        skip_or_fail(f"scripts/compose-cluster.sh up did not finish within {UP_TIMEOUT} s")
        raise
    up_seconds = time.monotonic() - t0
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-60:])
        if os.environ.get("SLURM_K8S_COMPOSE_KEEP") != "1":
            _script("down", env, 300)
        skip_or_fail(f"the compose stack could not start here (scripts/compose-cluster.sh up, "
                     f"rc={res.returncode}):\n{tail}")
    say("\n".join(line for line in res.stderr.splitlines() if "compose-cluster:" in line
                  or line.startswith("    ")))
    shared = Path(_script("env", env, 60).stdout.split("SKB_SHARED_DIR=", 1)[1].split()[0])
    st = Stack(client=client, engine=engine, env=env, shared=shared,
               timings={"scripts/compose-cluster.sh up": up_seconds})
    try:
        yield st
    finally:
        say("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in st.timings.items()))
        if os.environ.get("SLURM_K8S_COMPOSE_KEEP") == "1":
            say(f"left running (SLURM_K8S_COMPOSE_KEEP=1): SKB_STATE_DIR={STATE} "
                f"SKB_PROJECT={PROJECT} scripts/compose-cluster.sh down")
        else:
            _script("down", env, 300)
        client.close()
        if service is not None:
            service.terminate()
            service.wait(timeout=30)


def _network_name() -> str:
    return f"{PROJECT}_cluster"


# -- the stack --------------------------------------------------------------------------

def test_every_service_runs_on_the_network_the_stack_created(stack: Stack) -> None:
    net = stack.client.networks.get(_network_name())
    assert net.attrs.get("Internal") is True, net.attrs   # nothing routed out, no masquerading
    for service in SERVICES:
        container = stack.container(service)
        assert container.status == "running", (service, container.status, stack.logs(service))
        networks = container.attrs["NetworkSettings"]["Networks"]
        assert list(networks) == [_network_name()], (service, list(networks))


def test_the_kubelet_node_is_real_and_advertises_gpus(stack: Stack) -> None:
    node = json.loads(stack.kubectl("get", "node", "real-0", "-o", "json"))
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True", conditions
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.34.10", info
    assert info["containerRuntimeVersion"].startswith("containerd://"), info
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8", node["status"]["allocatable"]
    assert node["metadata"]["labels"]["type"] == "real"
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    node_ip = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    net = stack.container("real-0").attrs["NetworkSettings"]["Networks"][_network_name()]
    assert node_ip == net["IPAddress"], (node_ip, net)
    assert stack.container("real-0").attrs["HostConfig"]["Privileged"] is True
    # KWOK simulates the others
    kwok = json.loads(stack.kubectl("get", "nodes", "-l", "type=kwok", "-o", "json"))["items"]
    assert len(kwok) >= 1
    for item in kwok:
        ready = [c["status"] for c in item["status"]["conditions"] if c["type"] == "Ready"]
        assert ready == ["True"], item["metadata"]["name"]


def test_slurm_sees_the_kubernetes_nodes(stack: Stack) -> None:
    _, out = stack.exec("login", "sinfo -h -N -o '%N %P %t'")
    assert re.search(r"^k8s-real-0 gpu\*? ", out, re.MULTILINE), out      # mirrored by the daemon
    assert re.search(r"^k8s-gpu-0 ", out, re.MULTILINE), out
    _, ping = stack.exec("slurmctld", "scontrol ping")
    assert "is UP" in ping, ping


def test_batch_job_runs_on_two_real_pods_from_the_login_node(stack: Stack) -> None:
    script = "#!/bin/bash\n#SBATCH -N2\n#SBATCH --gres=gpu:1\n#SBATCH -o slurm-%j.out\nsrun hostname\n"
    _, _ = stack.as_user(f"cat > job.sh <<'EOF'\n{script}EOF")
    t0 = time.monotonic()
    _, out = stack.as_user("sbatch --parsable job.sh")
    job = int(out.strip().split(";")[0])
    running = completed = None
    state = ""
    deadline = t0 + JOB_TIMEOUT
    while time.monotonic() < deadline:
        _, show = stack.exec("slurmctld", f"scontrol show job {job}", check=False)
        m = re.search(r"JobState=(\S+)", show)
        state = m.group(1) if m else "?"
        if state == "RUNNING" and running is None:
            running = time.monotonic() - t0
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            completed = time.monotonic() - t0
            break
        time.sleep(0.25)
    diag = f"\n{show}\n--- bridge:\n{stack.logs('bridge')}\n--- slurmctld:\n{stack.logs('slurmctld')}"
    assert state == "COMPLETED", f"job {job} ended {state}{diag}"
    stack.timings["2-node job sbatch->RUNNING"] = running if running is not None else completed or 0
    stack.timings["2-node job sbatch->COMPLETED"] = completed or 0
    # the output file, on the host, at the path the login node and the pods share
    output = stack.home / f"slurm-{job}.out"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (output.exists() and output.read_text().strip()):
        time.sleep(0.25)
    lines = sorted(output.read_text().split())
    assert lines == [f"slurm-{job}-0", f"slurm-{job}-1"], (lines, diag)
    assert output.stat().st_uid == 5000                      # written by alice, in a pod
    _, show = stack.exec("slurmctld", f"scontrol show job {job}")
    assert f"NodeList=slurm-{job}-[0-1]" in show, show
    say(f"job {job}: RUNNING after {stack.timings['2-node job sbatch->RUNNING']:.1f}s, "
        f"COMPLETED after {completed:.1f}s; {output}: {' '.join(lines)}")


def test_srun_from_the_login_node_reaches_the_pods_and_back(stack: Stack) -> None:
    """The login node reaches the pods' slurmd, their slurmstepd call srun back: both by
    real addresses, through the kubelet node's address on the compose network."""
    t0 = time.monotonic()
    _, out = stack.as_user("srun -N2 --gres=gpu:1 bash -c 'echo $(hostname) $(id -un) "
                           "$(hostname -I) CUDA=$CUDA_VISIBLE_DEVICES'", timeout=150)
    stack.timings["srun -N2 from login"] = time.monotonic() - t0
    rows = sorted(line.split() for line in out.splitlines() if line.startswith("slurm-"))
    assert len(rows) == 2, out
    job = rows[0][0].rsplit("-", 2)[1]
    assert [r[0] for r in rows] == [f"slurm-{job}-0", f"slurm-{job}-1"], out
    assert all(r[1] == USER and r[3] == "CUDA=0" for r in rows), out
    _, route = stack.exec("login", "cat /proc/net/route")
    pod_net = rows[0][2].rsplit(".", 1)[0]                 # 10.246.0.x -> 10.246.0
    assert all(r[2].startswith(pod_net + ".") for r in rows), out
    assert "0000F60A" in route, route                     # 10.246.0.0/24, via the node


def test_worker_pods_are_not_privileged(stack: Stack) -> None:
    _, out = stack.as_user("sbatch --parsable -N1 --gres=gpu:1 --wrap 'sleep 60'")
    job = int(out.strip().split(";")[0])
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        pods: list[Any] = []
        while time.monotonic() < deadline:
            pods = json.loads(stack.kubectl("get", "pods", "-n", "slurm-jobs", "-l",
                                            f"{JOB_ID_LABEL}={job}", "-o", "json"))["items"]
            if pods and pods[0]["status"].get("phase") == "Running":
                break
            time.sleep(0.5)
        assert pods and pods[0]["status"]["phase"] == "Running", pods
        pod = pods[0]
        assert pod["spec"]["nodeName"] == "real-0"
        ctx = pod["spec"]["containers"][0]["securityContext"]
        assert ctx["privileged"] is False and ctx["allowPrivilegeEscalation"] is False, ctx
        status = stack.kubectl("exec", "-n", "slurm-jobs", pod["metadata"]["name"], "--",
                               "grep", "^CapEff", "/proc/1/status")
        cap_eff = int(status.split()[1], 16)
        _, node_status = stack.exec("real-0", "grep ^CapEff /proc/1/status")
        assert cap_eff < int(node_status.split()[1], 16), (status, node_status)
    finally:
        stack.exec("login", f"scancel {job}", check=False)


def test_down_removes_the_stack(stack: Stack) -> None:
    if os.environ.get("SLURM_K8S_COMPOSE_KEEP") == "1":
        pytest.skip("SLURM_K8S_COMPOSE_KEEP=1")
    node = stack.container("real-0")
    pid = node.attrs["State"]["Pid"]
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    cpu_path = next((line.split(":", 2)[2] for line in cgroup.splitlines()
                     if line.split(":")[1] in ("cpu", "cpu,cpuacct", "")), "")
    t0 = time.monotonic()
    res = _script("down", stack.env, 300)
    stack.timings["scripts/compose-cluster.sh down"] = time.monotonic() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    left = [c.name for c in stack.client.containers.list(all=True) if c.name.startswith(f"{PROJECT}-")]
    assert left == [], left
    assert [n.name for n in stack.client.networks.list(names=[_network_name()])] == []
    assert [v.name for v in stack.client.volumes.list() if v.name.startswith(f"{PROJECT}_")] == []
    # the pods' cgroups went with the node (it removes them on SIGTERM)
    for hierarchy in ("cpu", "memory", "pids"):
        assert not (Path("/sys/fs/cgroup") / hierarchy / cpu_path.lstrip("/")).exists(), cpu_path
