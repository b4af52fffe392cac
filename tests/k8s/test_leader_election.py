"""Leader election against a real kube-apiserver (daemon/leader.py, kube/lease.py).

(a) Electors in this process, each with its own ApiClient as the daemon's ServiceAccount
    (given ``required_rbac(..., leader_election=True)``): exactly one leads; a leader that
    stops renewing is taken over no sooner than the lease duration after its last renewal
    and no later than lease duration + (1 + 2 x jitter) retry periods + 1 s from its death;
    a leader cut off from the API server (its connections go through a TCP proxy on
    loopback that this test blackholes) stops acting before the other starts -- the acting
    intervals, sampled every 10 ms, never overlap. Figures are printed.
(b) Two real daemon processes (``slurm-k8s-bridge run --leader-elect``) against one real
    slurmctld and the same API server with KWOK GPU nodes and stand-in slurmd: a stream of
    SKB_LEADER_JOBS jobs (default 50), the leader SIGKILLed mid-stream: the takeover time is
    printed; every job completes, each on exactly one Kubernetes Job, no pod is left.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import pytest
import yaml
from kubernetes import client

from slurm_k8s_bridge.core.config import LeaderElection
from slurm_k8s_bridge.daemon.leader import JITTER, LeaderElector, elector_for
from slurm_k8s_bridge.kube.errors import KubeApiError
from slurm_k8s_bridge.kube.lease import LeaseClient
from slurm_k8s_bridge.kube.rbac import DAEMON_NAMESPACE, leader_election_rbac
from slurm_k8s_devcluster.k8s import LocalKubeCluster

from .conftest import H100, JOBS_NS, SELECTOR

pytestmark = pytest.mark.k8s

LEASE_NAME = "slurm-k8s-bridge"
# short timings keep the test short; the deployment uses 15 / 10 / 2
D, RD, RP = 4.0, 3.0, 0.5
SETTINGS = LeaderElection(enabled=True, lease_name=LEASE_NAME, namespace=DAEMON_NAMESPACE,
                          lease_duration=D, renew_deadline=RD, retry_period=RP)
#: the latest a taker can start after the holder's last renewal: it saw the renewal at its
#: next try (one jittered retry period) and takes over at its first try D after that
TAKEOVER_BOUND = D + 2 * (1 + JITTER) * RP + 1.0
KWOK_NODES = 4


@pytest.fixture(scope="module")
def kube_options() -> dict[str, Any]:
    return {"kwok_nodes": KWOK_NODES, "node_shape": H100}


@pytest.fixture(scope="module")
def lease_rbac(kube_cluster: LocalKubeCluster, sa_kubeconfig: Path) -> Path:
    """The daemon's ServiceAccount, also given the leader-election Role."""
    kube_cluster.apply_as_admin(leader_election_rbac())
    return sa_kubeconfig


@pytest.fixture
def fresh_lease(kube_admin: Any) -> Iterator[str]:
    """No Lease before the test and none after it."""
    api = client.CoordinationV1Api(kube_admin)

    def delete() -> None:
        try:
            api.delete_namespaced_lease(LEASE_NAME, DAEMON_NAMESPACE)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
    delete()
    yield LEASE_NAME
    delete()


# -- a network path this test can cut ----------------------------------------------------
class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of the API server. ``cut()`` blackholes it: live
    connections stop carrying bytes and new ones are accepted but never answered, as a
    partitioned network looks to a client (its requests time out). ``heal()`` undoes it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_now = threading.Event()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                down, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._socks.append(down)
            if self.cut_now.is_set():
                continue          # accepted, never answered
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                down.close()
                continue
            with self._lock:
                self._socks.append(up)
            threading.Thread(target=self._pump, args=(down, up), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                if self.cut_now.is_set():   # hold the bytes: the other side hears nothing
                    time.sleep(0.05)
                    continue
                ready, _, _ = select.select([a, b], [], [], 0.2)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    (b if src is a else a).sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                s.close()

    def cut(self) -> None:
        self.cut_now.set()

    def heal(self) -> None:
        self.cut_now.clear()
        with self._lock:          # connections held during the cut are dead to the client
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._socks.clear()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self.heal()


def kubeconfig_through(kubeconfig: Path, port: int, out: Path) -> Path:
    data = yaml.safe_load(kubeconfig.read_text())
    for entry in data["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{port}"
    out.write_text(yaml.safe_dump(data))
    return out


# -- electors in this process ---------------------------------------------------------------
@dataclass
class Candidate:
    """An elector with its own ApiClient and thread, and a sampler that records the
    intervals (monotonic start, end) during which ``acting()`` was true."""

    elector: LeaderElector
    api_client: Any
    stop: threading.Event = field(default_factory=threading.Event)
    intervals: list[list[float]] = field(default_factory=list)
    _sampler_stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Candidate:
        self.thread = self.elector.start(self.stop)
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def _sample(self) -> None:
        was = False
        while not self._sampler_stop.is_set():
            now, acting = time.monotonic(), self.elector.acting()
            if acting and not was:
                self.intervals.append([now, now])
            elif acting:
                self.intervals[-1][1] = now
            was = acting
            time.sleep(0.01)

    @property
    def name(self) -> str:
        return self.elector.identity

    def acting_since(self) -> float | None:
        return self.intervals[-1][0] if self.intervals and self.elector.acting() else None

    def kill(self) -> None:
        """Stop renewing without releasing (as SIGKILL would)."""
        self.stop.set()
        self.thread.join(10)

    def close(self) -> None:
        self.stop.set()
        self._sampler_stop.set()
        self.api_client.close()


@pytest.fixture
def candidates(kube_cluster: LocalKubeCluster, lease_rbac: Path, fresh_lease: str
               ) -> Iterator[Any]:
    made: list[Candidate] = []

    def make(name: str, kubeconfig: Path | None = None) -> Candidate:
        api_client = kube_cluster.client_from_kubeconfig(kubeconfig or lease_rbac)
        elector = elector_for(replace(SETTINGS, identity=name), api_client)
        assert elector is not None
        made.append(Candidate(elector, api_client))
        return made[-1]

    yield make
    for c in made:
        c.close()


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.01)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def overlaps(a: list[list[float]], b: list[list[float]]) -> list[tuple[list[float], list[float]]]:
    return [(x, y) for x in a for y in b if x[0] <= y[1] and y[0] <= x[1]]


def lease_holder(admin: Any) -> str:
    lease = client.CoordinationV1Api(admin).read_namespaced_lease(LEASE_NAME, DAEMON_NAMESPACE)
    return str(lease.spec.holder_identity or "")


# -- (a) --------------------------------------------------------------------------------------
def test_exactly_one_of_two_leads(candidates: Any, kube_admin: Any) -> None:
    a, b = candidates("a").start(), candidates("b").start()
    leader = wait_for(lambda: next((c for c in (a, b) if c.elector.acting()), None), 10,
                      "a leader")
    time.sleep(3 * D)                                # many renewals
    assert not overlaps(a.intervals, b.intervals)
    assert len(leader.intervals) == 1 and leader.elector.acting(), leader.intervals
    other = b if leader is a else a
    assert not other.intervals and other.elector.holder == leader.name
    assert lease_holder(kube_admin) == leader.name


def test_a_dead_leader_is_taken_over_after_the_lease_duration(candidates: Any) -> None:
    a = candidates("a").start()
    wait_for(a.elector.acting, 10, "a leading")
    b = candidates("b").start()
    time.sleep(2 * D)
    assert not b.intervals
    a.kill()
    killed = time.monotonic()
    last_renewal = a.elector._renewed_at
    taken = wait_for(b.acting_since, TAKEOVER_BOUND + 2, "b to take over")
    print(f"\ntakeover (in-process electors, lease {D:.0f}s, renew deadline {RD:.0f}s, "
          f"retry {RP}s): {taken - killed:.2f}s after the kill, "
          f"{taken - last_renewal:.2f}s after the last renewal was sent")
    assert taken - last_renewal >= D
    assert taken - killed <= TAKEOVER_BOUND
    assert not overlaps(a.intervals, b.intervals)


def test_a_partitioned_leader_stops_acting_before_the_other_starts(
        candidates: Any, kube_cluster: LocalKubeCluster, lease_rbac: Path,
        tmp_path: Path) -> None:
    proxy = CuttableProxy(kube_cluster.ports["kube-apiserver"])
    try:
        a = candidates("a", kubeconfig_through(lease_rbac, proxy.port,
                                               tmp_path / "via-proxy.kubeconfig")).start()
        wait_for(a.elector.acting, 10, "a leading through the proxy")
        b = candidates("b").start()
        time.sleep(D)
        proxy.cut()
        cut = time.monotonic()
        last_renewal = a.elector._renewed_at
        taken = wait_for(b.acting_since, TAKEOVER_BOUND + RD + 2, "b to take over")
        a_end = a.intervals[-1][1]
        print(f"\npartition: a stopped acting {a_end - cut:.2f}s after the cut, b started "
              f"{taken - cut:.2f}s after it; gap {taken - a_end:.2f}s "
              f"(lease {D:.0f}s, renew deadline {RD:.0f}s)")
        assert not a.elector.acting() and a.elector.lost == 1
        assert a_end < taken, (a.intervals, b.intervals)
        # the safety bound: a stopped before the lease could expire (the renew deadline is
        # when it stops deciding; the 10 ms sampler thread may lag that under CI load)
        assert a_end < last_renewal + D, (a_end - last_renewal, RD, D)
        assert not overlaps(a.intervals, b.intervals)
        proxy.heal()                                   # back: a sees b and keeps out
        time.sleep(2 * D)
        assert b.elector.acting() and not a.elector.acting() and len(a.intervals) == 1
        assert a.elector.holder == "b"
    finally:
        proxy.close()


def test_release_on_a_clean_stop_hands_over_at_once(candidates: Any) -> None:
    a = candidates("a").start()
    wait_for(a.elector.acting, 10, "a leading")
    b = candidates("b").start()
    time.sleep(1)
    a.stop.set()
    a.thread.join(5)
    released = time.monotonic()
    a.elector.release()
    taken = wait_for(b.acting_since, D, "b to take over a released lease")
    print(f"\nhand-over after release: {taken - released:.2f}s")
    assert taken - released < D
    assert not overlaps(a.intervals, b.intervals)


def test_the_service_account_may_touch_only_its_lease(lease_rbac: Path,
                                                      kube_cluster: LocalKubeCluster) -> None:
    api_client = kube_cluster.client_from_kubeconfig(lease_rbac)
    try:
        with pytest.raises(KubeApiError) as denied:
            LeaseClient(api_client, DAEMON_NAMESPACE, "someone-elses").get()
        assert denied.value.status == 403
        with pytest.raises(KubeApiError) as elsewhere:
            LeaseClient(api_client, "default", LEASE_NAME).get()
        assert elsewhere.value.status == 403
    finally:
        api_client.close()


# -- (b) two real daemon processes, one real slurmctld ------------------------------------------
USER = "bridgeuser"
GANG = ["-N1", "--gres=gpu:h100:4", "-c1", "--mem=100"]
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"}
DAEMON_LEASE = (6.0, 4.0, 1.0)     # lease duration, renew deadline, retry period


@pytest.fixture(scope="module")
def bridge_options() -> dict[str, Any]:
    return {"name": "leader"}


@dataclass
class Pair:
    """Two daemon replicas (``replica-a``, ``replica-b``) of one bridge, leader-elected."""

    bridge: Any
    admin: Any
    replicas: dict[str, Any]
    metrics_ports: dict[str, int]

    def holder(self) -> str:
        try:
            return lease_holder(self.admin)
        except client.ApiException:
            return ""

    def log(self, name: str) -> str:
        return str(self.replicas[name].log.read_text(errors="replace"))

    def diagnostics(self) -> str:
        parts = []
        for name, replica in self.replicas.items():
            parts += [f"--- {name} log (tail) ---", replica.tail(30)]
        parts += ["--- squeue ---", self.bridge.cluster.run(
            ["squeue", "-a", "-t", "all", "-o", "%i %T %r %k"]).stdout[-3000:]]
        return "\n".join(parts)

    def state(self, job: int) -> str:
        out = self.bridge.cluster.run(["squeue", "-h", "-t", "all", "-j", str(job), "-o", "%T"]).stdout
        return out.strip().splitlines()[0] if out.strip() else ""

    def states(self, jobs: list[int]) -> dict[int, str]:
        out = self.bridge.cluster.run(["squeue", "-h", "-t", "all", "-o", "%i %T"]).stdout
        got = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
        return {j: got.get(str(j), "") for j in jobs}

    def submit(self, *args: str) -> int:
        res = self.bridge.cluster.sbatch(["--parsable", *args], user=USER)
        if res.returncode != 0:
            pytest.fail(f"sbatch failed: {res.stderr}\n{self.diagnostics()}")
        return int(res.stdout.strip().split(";")[0])

    def bridge_objects(self) -> dict[str, list[str]]:
        batch, core = client.BatchV1Api(self.admin), client.CoreV1Api(self.admin)
        return {"jobs": [j.metadata.name for j in batch.list_namespaced_job(
                    JOBS_NS, label_selector=SELECTOR).items],
                "pods": [p.metadata.name for p in core.list_namespaced_pod(
                    JOBS_NS, label_selector=SELECTOR).items],
                "services": [s.metadata.name for s in core.list_namespaced_service(
                    JOBS_NS, label_selector=SELECTOR).items]}


class JobUidWatch:
    """Every Kubernetes Job uid seen per Slurm job id, polled in a thread."""

    def __init__(self, admin: Any) -> None:
        self.admin, self.uids, self.errors = admin, {}, []
        self.uids: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for obj in client.BatchV1Api(self.admin).list_namespaced_job(
                        JOBS_NS, label_selector=SELECTOR).items:
                    key = (obj.metadata.labels or {}).get("slurm-k8s-bridge.io/job-id", "?")
                    self.uids.setdefault(key, set()).add(obj.metadata.uid)
            except Exception as exc:  # noqa: BLE001 -- keep watching
                self.errors.append(repr(exc))
            self._stop.wait(0.2)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _daemon_args(name: str, port: int) -> list[str]:
    d, rd, rp = DAEMON_LEASE
    return ["--poll-interval", "1", "--metrics-port", str(port), "--leader-elect",
            "--leader-elect-identity", name, "--leader-elect-lease-duration", str(d),
            "--leader-elect-renew-deadline", str(rd), "--leader-elect-retry-period", str(rp)]


@pytest.fixture
def make_pair(bridge: Any, kube_cluster: LocalKubeCluster, kube_admin: Any, lease_rbac: Path,
              standins: Any, fresh_lease: str, tmp_path: Path) -> Iterator[Any]:
    """``make_pair(kubeconfig_a)``: replica-a started (through ``kubeconfig_a`` if given)
    and leading, then replica-b started as its standby."""
    from slurm_k8s_bridge.core.config import job_namespaces, load_config
    from slurm_k8s_bridge.kube.rbac import required_rbac
    from slurm_k8s_devcluster.k8s import free_ports

    from ..kube_env import DaemonProcess

    namespaces = job_namespaces(load_config(str(bridge.config_path)))
    for namespace in namespaces:
        kube_cluster.ensure_namespace(namespace)
    kube_cluster.apply_as_admin(required_rbac(namespaces, leader_election=True))
    made: list[Pair] = []

    def make(kubeconfig_a: Path | None = None) -> Pair:
        base = bridge.cluster.base_dir
        ports = dict(zip(("replica-a", "replica-b"), free_ports(2)))
        kubeconfigs = {"replica-a": kubeconfig_a or lease_rbac, "replica-b": lease_rbac}
        replicas = {name: DaemonProcess(bridge.config_path, kubeconfigs[name],
                                        env=bridge.cluster.env(), cwd=base,
                                        log=tmp_path / f"{name}.log",
                                        args=_daemon_args(name, port))
                    for name, port in ports.items()}
        pair = Pair(bridge, kube_admin, replicas, ports)
        made.append(pair)
        replicas["replica-a"].start()
        wait_for(lambda: pair.holder() == "replica-a", 30, "replica-a leading")
        replicas["replica-b"].start()
        return pair

    try:
        yield make
    finally:
        for pair in made:
            for replica in pair.replicas.values():
                replica.stop()


def _scrape(port: int) -> str:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def _log_lines(log: str) -> list[dict[str, Any]]:
    import json
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _stream(pair: Pair, n: int, disrupt: Any, what: str) -> None:
    """Submit ``n`` jobs (0.2 s apart); after a third of them ``disrupt()`` the leader
    (replica-a); then every job must complete on exactly one Kubernetes Job, the standby
    must have taken over in time and acted only after it led, and nothing may be left."""
    leader, standby = "replica-a", "replica-b"
    wait_for(lambda: "slurm_k8s_bridge_leader 1" in _scrape(pair.metrics_ports[leader]), 10,
             "the leader's metric")
    assert "slurm_k8s_bridge_leader 0" in _scrape(pair.metrics_ports[standby])
    jobs: list[int] = []
    disrupted = taken = 0.0
    with JobUidWatch(pair.admin) as seen:
        for i in range(n):
            jobs.append(pair.submit(*GANG, "-o", "/dev/null", "--wrap",
                                    f"sleep {1 + i % 3}; hostname"))
            if i == n // 3:   # mid-stream: jobs done, running, admitting, more to come
                disrupt()
                disrupted = time.monotonic()
            if disrupted and not taken and pair.holder() == standby:
                taken = time.monotonic()
            time.sleep(0.2)
        if not taken:
            taken = wait_for(lambda: pair.holder() == standby and time.monotonic(),
                             3 * DAEMON_LEASE[0], f"{standby} to take the Lease")
        first_action = wait_for(
            lambda: '"msg": "action"' in pair.log(standby).split('"msg": "leading"', 1)[-1]
            and time.monotonic(), 60, f"{standby} acting")
        deadline = time.monotonic() + 120 + 6 * n
        states: dict[int, str] = {}
        while time.monotonic() < deadline:
            states = pair.states(jobs)
            if all(s in FINISHED for s in states.values()):
                break
            if pair.replicas[standby].exited() is not None:
                pytest.fail(f"{standby} exited\n{pair.diagnostics()}")
            time.sleep(1)
        left: dict[str, list[str]] = {}
        end = time.monotonic() + 60
        while time.monotonic() < end:
            left = {k: v for k, v in pair.bridge_objects().items() if v}
            if not left:
                break
            time.sleep(0.5)
    duplicates = {k: v for k, v in seen.uids.items() if len(v) > 1}
    not_done = {j: s for j, s in states.items() if s != "COMPLETED"}
    never = [j for j in jobs if str(j) not in seen.uids]
    print(f"\ntwo daemons, {n} jobs, leader {leader} {what} after job {n // 3 + 1}: "
          f"{standby} took the Lease {taken - disrupted:.2f}s later (lease "
          f"{DAEMON_LEASE[0]:.0f}s, renew deadline {DAEMON_LEASE[1]:.0f}s), first action "
          f"{first_action - disrupted:.2f}s later; duplicate Jobs {len(duplicates)}, "
          f"not completed {len(not_done)}, left behind {sum(map(len, left.values()))}")
    b_lines = _log_lines(pair.log(standby))
    b_leading = [x["ts"] for x in b_lines if x.get("msg") == "leading"]
    assert len(b_leading) == 1, b_leading
    assert not [x for x in b_lines if x.get("msg") == "action" and x["ts"] < b_leading[0]], \
        "the standby acted before it led"
    a_actions = [x["ts"] for x in _log_lines(pair.log(leader)) if x.get("msg") == "action"]
    assert a_actions and max(a_actions) < b_leading[0], \
        f"{leader} acted at {max(a_actions)}, after {standby} led at {b_leading[0]}"
    assert not duplicates, f"Slurm jobs with two Kubernetes Jobs: {duplicates}\n{pair.diagnostics()}"
    assert not not_done, f"jobs not completed: {not_done}\n{pair.diagnostics()}"
    assert not never, f"jobs that never had a Kubernetes Job: {never}"
    assert not left, f"left behind: {left}\n{pair.diagnostics()}"
    assert taken - disrupted <= DAEMON_LEASE[0] + 2 * (1 + JITTER) * DAEMON_LEASE[2] + 1


def test_two_daemons_leader_sigkilled_mid_stream(make_pair: Any) -> None:
    pair = make_pair()
    _stream(pair, int(os.environ.get("SKB_LEADER_JOBS", "50")),
            lambda: pair.replicas["replica-a"].stop(signal.SIGKILL), "SIGKILLed")


def test_two_daemons_leader_cut_off_from_the_api_server_mid_stream(
        make_pair: Any, kube_cluster: LocalKubeCluster, lease_rbac: Path, tmp_path: Path) -> None:
    proxy = CuttableProxy(kube_cluster.ports["kube-apiserver"])
    try:
        pair = make_pair(kubeconfig_through(lease_rbac, proxy.port, tmp_path / "a.kubeconfig"))
        _stream(pair, int(os.environ.get("SKB_LEADER_CUT_JOBS", "20")), proxy.cut, "cut off")
        a_lines = _log_lines(pair.log("replica-a"))
        assert [x for x in a_lines if x.get("msg") == "stopped leading"], "no 'stopped leading'"
        proxy.heal()     # back on the network: it stays the standby
        wait_for(lambda: "slurm_k8s_bridge_leader 0" in _scrape(pair.metrics_ports["replica-a"]),
                 10, "replica-a standing by")
        time.sleep(2 * DAEMON_LEASE[0])
        assert pair.holder() == "replica-b"
        assert "slurm_k8s_bridge_leader 0" in _scrape(pair.metrics_ports["replica-a"])
        assert pair.replicas["replica-a"].exited() is None
    finally:
        proxy.close()
