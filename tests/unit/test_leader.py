"""Leader election's timing decisions (daemon/leader.py) on a fake clock and an in-memory
Lease that keeps the API server's one rule: an update names the resourceVersion it read.

What must hold (client-go's leaderelection semantics):
* a taker waits the full lease duration from when *it* last saw the holder's record change,
  whatever the timestamps in the record say;
* a holder acts only while its last successful renewal was *sent* less than renew_deadline
  ago, so it stops before any taker can start;
* of two candidates that read the same version, exactly one wins.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from typing import Any

import pytest

from slurm_k8s_bridge.core.config import LeaderElection, parse_config
from slurm_k8s_bridge.core.errors import ConfigError
from slurm_k8s_bridge.daemon import daemon as daemon_module
from slurm_k8s_bridge.daemon.daemon import BridgeDaemon
from slurm_k8s_bridge.daemon.leader import (
    LeaderElector,
    add_arguments,
    elector_for,
    settings_from_args,
)
from slurm_k8s_bridge.daemon.metrics import DaemonMetrics
from slurm_k8s_bridge.kube.errors import KubeApiError
from slurm_k8s_bridge.kube.lease import LeaseConflict, LeaseRecord, ReadLease
from slurm_k8s_bridge.kube.rbac import LEADER_ELECTION_ROLE, required_rbac

from .conftest import EXAMPLE_CONFIG

pytestmark = pytest.mark.unit

D, RD, RP = 15.0, 10.0, 2.0
SETTINGS = LeaderElection(enabled=True, lease_duration=D, renew_deadline=RD, retry_period=RP)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeLease:
    """One Lease as the API server keeps it: a record and a resourceVersion; create fails
    with 409 when it exists, update when the version named is not the current one.
    ``down``: every call fails as if the API server were unreachable (a partition);
    ``latency``: seconds the clock moves during each call."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.version = clock, 0
        self.record: LeaseRecord | None = None
        self.down: set[str] = set()     # identities cut off from the API server
        self.latency = 0.0
        self.writes: list[tuple[float, LeaseRecord]] = []

    def client(self, identity: str) -> Any:
        lease = self

        class Client:
            def get(self) -> ReadLease | None:
                lease._call(identity)
                return None if lease.record is None else ReadLease(lease.record, str(lease.version))

            def create(self, record: LeaseRecord) -> ReadLease:
                lease._call(identity)
                if lease.record is not None:
                    raise LeaseConflict("exists")
                return lease._write(record)

            def update(self, record: LeaseRecord, resource_version: str) -> ReadLease:
                lease._call(identity)
                if resource_version != str(lease.version):
                    raise LeaseConflict(f"version {resource_version} is not {lease.version}")
                return lease._write(record)

            def __str__(self) -> str:
                return "fake lease"
        return Client()

    def _call(self, identity: str) -> None:
        self.clock.advance(self.latency)
        if identity in self.down:
            raise KubeApiError("GET", "leases", "", None, "no answer (connection refused)")

    def _write(self, record: LeaseRecord) -> ReadLease:
        self.version += 1
        self.record = record
        self.writes.append((self.clock(), record))
        return ReadLease(record, str(self.version))


def elector(lease: FakeLease, clock: Clock, identity: str,
            settings: LeaderElection = SETTINGS) -> LeaderElector:
    from dataclasses import replace
    return LeaderElector(replace(settings, identity=identity), lease.client(identity), clock=clock)


def run_until(clock: Clock, electors: list[LeaderElector], seconds: float, step: float,
              on_tick: Callable[[], None] = lambda: None) -> None:
    """Every ``step`` seconds each elector tries once (bounded by ``seconds``)."""
    end = clock.t + seconds
    while clock.t < end:
        for e in electors:
            e.step()
        on_tick()
        clock.advance(step)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lease(clock: Clock) -> FakeLease:
    return FakeLease(clock)


def test_first_candidate_leads_the_second_waits(clock: Clock, lease: FakeLease) -> None:
    a, b = elector(lease, clock, "a"), elector(lease, clock, "b")
    assert a.step() and a.acting() and a.term == 1
    assert not b.step() and not b.acting() and b.holder == "a"
    for _ in range(20):                      # a renews every retry period: b never gets it
        clock.advance(RP)
        assert a.step() and not b.step()
    assert a.acting() and not b.acting() and a.term == 1
    assert lease.record is not None and lease.record.holder == "a" and lease.record.transitions == 0
    assert lease.record.lease_duration_seconds == 15


def test_taker_waits_the_lease_duration_from_the_last_change_it_saw(clock: Clock,
                                                                     lease: FakeLease) -> None:
    a, b = elector(lease, clock, "a"), elector(lease, clock, "b")
    a.step()
    b.step()
    clock.advance(RP)
    a.step()                                  # a's last renewal
    b.step()
    seen = clock.t                            # b saw it change here
    clock.advance(0.5)                        # a dies: no more renewals
    while clock.t < seen + D - 0.01:
        assert not b.step(), f"b took over {clock.t - seen:.2f}s after the last change it saw"
        clock.advance(0.25)
    clock.t = seen + D
    assert b.step() and b.acting() and lease.record is not None
    assert lease.record.holder == "b" and lease.record.transitions == 1


def test_a_new_candidate_does_not_trust_old_timestamps(clock: Clock, lease: FakeLease) -> None:
    lease.record = LeaseRecord("ghost", 15, "2020-01-01T00:00:00.000000Z",
                               "2020-01-01T00:00:00.000000Z", 3)
    b = elector(lease, clock, "b")
    assert not b.step()                      # first sight: the holder may be alive
    clock.advance(D - 0.1)
    assert not b.step()
    clock.advance(0.1)
    assert b.step() and lease.record is not None and lease.record.transitions == 4


def test_record_duration_rules_the_wait(clock: Clock, lease: FakeLease) -> None:
    lease.record = LeaseRecord("long", 60, None, "x", 0)
    b = elector(lease, clock, "b")
    b.step()
    clock.advance(D)
    assert not b.step()                      # the holder promised 60 s, not b's 15
    clock.advance(60 - D)
    assert b.step()


def test_partitioned_leader_stops_before_the_taker_starts(clock: Clock, lease: FakeLease) -> None:
    a, b = elector(lease, clock, "a"), elector(lease, clock, "b")
    a_acting: list[float] = []
    b_acting: list[float] = []

    def record() -> None:
        if a.acting():
            a_acting.append(clock.t)
        if b.acting():
            b_acting.append(clock.t)
    run_until(clock, [a, b], 6, 0.5, record)
    last_renewal_sent = a._renewed_at
    lease.down.add("a")                       # a's calls all fail from now on
    run_until(clock, [a, b], 40, 0.5, record)
    assert a_acting and b_acting
    assert max(a_acting) < min(b_acting), (max(a_acting), min(b_acting))
    assert max(a_acting) < last_renewal_sent + RD
    assert min(b_acting) >= last_renewal_sent + D
    assert a.lost == 1 and not a.acting() and "no answer" in a.last_error
    # healed: a sees b's lease and stays out
    lease.down.clear()
    run_until(clock, [a, b], 20, 0.5)
    assert b.acting() and not a.acting() and b.term == 1 and a.term == 1


def test_renewal_is_timed_from_when_it_was_sent(clock: Clock, lease: FakeLease) -> None:
    a = elector(lease, clock, "a")
    lease.latency = 3.0                       # get + update: 6 s of a slow API server
    sent = clock.t
    assert a.step()
    assert a._renewed_at == sent and clock.t == sent + 6
    clock.t = sent + RD - 0.01
    assert a.acting()
    clock.t = sent + RD
    assert not a.acting()                     # the deadline counts from the send


def test_overdue_renewal_ends_the_term_and_a_later_success_starts_a_new_one(
        clock: Clock, lease: FakeLease) -> None:
    a = elector(lease, clock, "a")
    a.step()
    lease.down.add("a")
    clock.advance(RD)
    assert not a.step() and a.lost == 1 and a.term == 1
    lease.down.clear()
    assert a.step() and a.term == 2 and a.acting()   # still named in the Lease: renews it


def test_two_candidates_reading_the_same_version_one_wins(clock: Clock, lease: FakeLease) -> None:
    lease.record = LeaseRecord("", 1, None, None, 0)  # released: anyone may take it
    a, b = elector(lease, clock, "a"), elector(lease, clock, "b")
    read = lease.client("x").get()
    assert read is not None
    # both decided on the same version; the API server takes only the first update
    a_client, b_client = lease.client("a"), lease.client("b")
    a_client.update(LeaseRecord("a", 15, "t", "t", 1), read.resource_version)
    with pytest.raises(LeaseConflict):
        b_client.update(LeaseRecord("b", 15, "t", "t", 1), read.resource_version)
    # and through the electors: whoever tries second loses
    lease.record, lease.version = LeaseRecord("", 1, None, None, 0), 100
    results = {}
    real_get = lease.client("b").get

    class Racing:
        """b reads, then a writes before b's update lands."""
        def get(self) -> ReadLease | None:
            got = real_get()
            assert a.step()
            results["a"] = True
            return got

        def create(self, record: LeaseRecord) -> ReadLease:
            raise AssertionError("the Lease exists")

        def update(self, record: LeaseRecord, resource_version: str) -> ReadLease:
            return lease.client("b").update(record, resource_version)
    b.lease = Racing()
    assert not b.step() and "conflict" in b.last_error
    assert results["a"] and a.acting() and not b.acting()
    assert lease.record is not None and lease.record.holder == "a"


def test_release_hands_over_at_once(clock: Clock, lease: FakeLease) -> None:
    a, b = elector(lease, clock, "a"), elector(lease, clock, "b")
    a.step()
    b.step()
    a.release()
    assert not a.acting() and lease.record is not None and lease.record.holder == ""
    assert b.step() and b.acting()
    assert not a.step() and not a.acting()   # released for good
    b.release()
    assert lease.record.holder == "" and lease.record.lease_duration_seconds == 1


def test_release_of_a_lease_someone_else_holds_changes_nothing(clock: Clock,
                                                               lease: FakeLease) -> None:
    a, b = elector(lease, clock, "a"), elector(lease, clock, "b")
    a.step()
    b.release()
    assert lease.record is not None and lease.record.holder == "a" and a.acting()


def test_run_loop_is_bounded_and_stops() -> None:
    settings = LeaderElection(enabled=True, lease_duration=3, renew_deadline=2, retry_period=0.05)
    store = FakeLease(Clock())
    import time
    e = LeaderElector(settings, store.client("a"), clock=time.monotonic)
    stop = threading.Event()
    thread = e.start(stop)
    assert e.wait_for_term(5) and e.acting()
    time.sleep(0.3)
    stop.set()
    thread.join(2)
    assert not thread.is_alive()
    renewals = len(store.writes)
    assert 3 <= renewals <= 12, renewals     # every retry period, not in a busy loop


@pytest.mark.parametrize("settings, message", [
    (LeaderElection(lease_duration=10, renew_deadline=10), "renew_deadline_seconds: must be less"),
    (LeaderElection(renew_deadline=2, retry_period=2), "retry_period_seconds: must be less"),
])
def test_timings_that_cannot_work_are_refused(settings: LeaderElection, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LeaderElector(settings, FakeLease(Clock()).client("a"))


def _example(**leader: Any) -> dict[str, Any]:
    import yaml
    data: dict[str, Any] = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data["leader_election"] = leader
    return data


def test_configuration_section() -> None:
    config = parse_config(_example(enabled=True, lease_name="bridge", namespace="ops",
                                   lease_duration_seconds=30, renew_deadline_seconds=20,
                                   retry_period_seconds=4, identity="me"))
    assert config.leader_election == LeaderElection(True, "bridge", "ops", 30.0, 20.0, 4.0, "me")
    assert parse_config(_example()).leader_election == LeaderElection()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"renew_deadline_seconds": 20}, "leader_election.renew_deadline_seconds"),
        ({"lease_duration_seconds": 0}, "leader_election.lease_duration_seconds"),
        ({"namespace": "Not_A_Label"}, "leader_election.namespace"),
        ({"lease_name": "x", "bogus": 1}, "leader_election.bogus")]
    for bad, key in cases:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_config(_example(**bad))


def test_flags_override_the_configuration() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = LeaderElection(lease_name="from-config")
    assert settings_from_args(parser.parse_args([]), base) == base
    got = settings_from_args(parser.parse_args(
        ["--leader-elect", "--leader-elect-lease-duration", "8", "--leader-elect-renew-deadline",
         "6", "--leader-elect-retry-period", "1", "--leader-elect-identity", "pod-0"]), base)
    assert got == LeaderElection(True, "from-config", "slurm-k8s-bridge", 8, 6, 1, "pod-0")
    assert not settings_from_args(parser.parse_args(["--no-leader-elect"]),
                                  LeaderElection(enabled=True)).enabled
    assert elector_for(base, api_client=None) is None            # off: no elector at all


def test_lease_rbac_only_with_leader_election() -> None:
    plain = required_rbac(["slurm-jobs"])
    assert not [o for o in plain if "lease" in str(o).lower()]
    with_le = required_rbac(["slurm-jobs"], leader_election=True)
    extra = with_le[len(plain):]
    assert with_le[:len(plain)] == plain
    assert [(o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]) for o in extra] == [
        ("Role", LEADER_ELECTION_ROLE, "slurm-k8s-bridge"),
        ("RoleBinding", LEADER_ELECTION_ROLE, "slurm-k8s-bridge")]
    assert extra[0]["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["slurm-k8s-bridge"], "verbs": ["get", "update"]}]
    other = required_rbac(["slurm-jobs"], leader_election=True, lease_namespace="ops",
                          lease_name="mine")
    assert other[-2]["metadata"]["namespace"] == "ops"
    assert other[-2]["rules"][1]["resourceNames"] == ["mine"]
    assert other[-1]["subjects"][0]["namespace"] == "slurm-k8s-bridge"


def test_metrics_show_leadership_only_when_elected() -> None:
    assert "slurm_k8s_bridge_leader" not in DaemonMetrics().render()
    m = DaemonMetrics(leader_election=True, is_leader=True, leader_transitions=2)
    text = m.render()
    assert "\nslurm_k8s_bridge_leader 1\n" in text
    assert "\nslurm_k8s_bridge_leader_transitions_total 2\n" in text


class _Leader:
    def __init__(self, acting_for: int) -> None:
        self.calls, self.acting_for, self.term, self.identity = 0, acting_for, 1, "me"

    def acting(self) -> bool:
        self.calls += 1
        return self.calls <= self.acting_for


def test_the_daemon_drops_the_rest_of_a_round_when_deposed(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from slurm_k8s_bridge.core.config import load_config

    class Kube:
        def nodes(self) -> dict[str, Any]:
            return {}

        def watch_gpu_pods(self) -> None:
            pass
    done: list[int] = []
    leader = _Leader(acting_for=3)            # the check before the mirror, then 2 actions
    daemon = BridgeDaemon(load_config(EXAMPLE_CONFIG), None, Kube(), leader=leader)  # type: ignore
    monkeypatch.setattr(daemon, "observe", lambda: None)
    monkeypatch.setattr(daemon, "mirror_inventory", lambda: done.append(-1))
    monkeypatch.setattr(daemon, "execute", lambda action: done.append(action))
    monkeypatch.setattr(daemon_module, "plan", lambda *a, **kw: SimpleNamespace(actions=[1, 2, 3, 4]))
    daemon.reconcile_once()
    assert done == [-1, 1, 2]
    assert daemon.metrics.is_leader is False
    done.clear()
    daemon.reconcile_once()                   # not acting: not even the mirror
    assert done == []
