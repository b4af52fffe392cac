"""Leader election among daemon replicas: one acts, the others wait, with client-go's
leaderelection semantics on a coordination.k8s.io Lease (``kube.lease``).

* A candidate takes the Lease when it does not exist, when its holder is empty (released),
  or when the holder's record has not changed for the record's ``leaseDurationSeconds``,
  timed from when *this candidate* last saw it change, on its own monotonic clock (wall
  clocks of different machines are never compared).
* Every write is conditional on the resourceVersion just read: of two candidates, exactly
  one wins; the other gets 409 and reads again.
* The leader renews every ``retry_period``. It *acts* only while its last successful
  renewal was sent less than ``renew_deadline`` ago (its own monotonic clock; the send time,
  which is before the API server wrote the record). A taker saw that record after it was
  written and waits ``lease_duration`` > ``renew_deadline`` from then, so a deposed or
  partitioned leader has stopped acting before another can start -- provided each single
  action it started while acting ends within ``lease_duration - renew_deadline``.
* On a clean stop the leader stops acting, then releases the Lease (empty holder) so that
  another replica takes it at once.

``LeaderElector.step`` is one try (acquire or renew) with an injectable clock, so the
timing decisions are tested without sleeping (tests/unit/test_leader.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from slurm_k8s_bridge.core.config import LeaderElection
from slurm_k8s_bridge.kube.lease import (
    LeaseConflict,
    LeaseRecord,
    ReadLease,
    micro_time,
)

LOG = logging.getLogger("slurm_k8s_bridge.daemon.leader")

#: client-go's JitterFactor: a candidate waits retry_period * [1, 1 + 1.2) between tries
JITTER = 1.2


class LeaseApi(Protocol):
    def get(self) -> ReadLease | None: ...
    def create(self, record: LeaseRecord) -> ReadLease: ...
    def update(self, record: LeaseRecord, resource_version: str) -> ReadLease: ...


def default_identity() -> str:
    """hostname_pid: unique per process, readable in ``kubectl get lease``."""
    return f"{socket.gethostname()}_{os.getpid()}"


class LeaderElector:
    """One candidate. ``run(stop)`` campaigns and renews until ``stop``; ``acting()`` says,
    at any instant, whether this replica may act. ``clock``: monotonic seconds; ``wall``:
    the time written into the Lease (informational only)."""

    def __init__(self, settings: LeaderElection, lease: LeaseApi, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if (problem := settings.problem()) is not None:
            raise ValueError(f"leader_election.{problem[0]}: {problem[1]}")
        self.settings = settings
        self.identity = settings.identity or default_identity()
        self.lease = lease
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0          # monotonic time the observed record last changed
        self._leading = False
        self._renewed_at = 0.0           # send time of the last successful write
        self._gained = threading.Event()  # set when a term starts
        #: terms this replica has led (a new term: the daemon starts from scratch)
        self.term = 0
        #: terms ended (renewal failed for renew_deadline, or released)
        self.lost = 0
        self.last_error = ""
        self._released = False

    # -- what the daemon asks --
    def acting(self) -> bool:
        """True while leading and the last renewal was sent less than renew_deadline ago."""
        with self._lock:
            return self._leading and self._clock() - self._renewed_at < self.settings.renew_deadline

    def wait_for_term(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a term to start; True when acting now."""
        self._gained.wait(timeout)
        self._gained.clear()
        return self.acting()

    @property
    def holder(self) -> str:
        """The holder as last seen in the Lease ("" when none)."""
        return self._observed.holder if self._observed else ""

    # -- one try --
    def step(self) -> bool:
        """One try to acquire or renew the Lease; True when this replica holds it now.
        Ends the term (``acting`` False) when the renewal is overdue."""
        sent = self._clock()
        try:
            got = self._try(sent)
        except LeaseConflict as exc:
            got, self.last_error = False, f"conflict: {exc}"
        except Exception as exc:  # noqa: BLE001 -- no answer, or refused: try again
            got, self.last_error = False, str(exc)
        with self._lock:
            if got and self._released:   # release() raced this try: it hands it back
                got = False
            if got:
                self._renewed_at = sent
                if not self._leading:
                    self._leading = True
                    self.term += 1
                    self._gained.set()
                    LOG.info("leading", extra={"identity": self.identity, "term": self.term,
                                               "lease": str(self.lease)})
            elif self._leading and self._clock() - self._renewed_at >= self.settings.renew_deadline:
                self._end_term("renewal overdue: " + self.last_error)
        return got

    def _try(self, now: float) -> bool:
        read = self.lease.get()
        stamp = micro_time(self._wall())
        duration = max(1, round(self.settings.lease_duration))
        if read is None:
            mine = LeaseRecord(self.identity, duration, stamp, stamp, 0)
            self._observe(self.lease.create(mine).record)
            return True
        record = read.record
        self._observe(record)
        if record.holder != self.identity:
            if record.holder and not self._expired():
                return False
            mine = LeaseRecord(self.identity, duration, stamp, stamp, record.transitions + 1)
        else:
            mine = LeaseRecord(self.identity, duration, record.acquire_time or stamp, stamp,
                               record.transitions)
        self._observe(self.lease.update(mine, read.resource_version).record)
        return True

    def _observe(self, record: LeaseRecord) -> None:
        with self._lock:
            if record != self._observed:
                self._observed, self._observed_at = record, self._clock()

    def _expired(self) -> bool:
        with self._lock:
            assert self._observed is not None
            duration = self._observed.lease_duration_seconds or self.settings.lease_duration
            return self._clock() - self._observed_at >= duration

    def _end_term(self, why: str) -> None:  # with self._lock held
        self._leading = False
        self.lost += 1
        LOG.warning("stopped leading", extra={"identity": self.identity, "term": self.term,
                                              "why": why})

    # -- the loop --
    def run(self, stop: threading.Event) -> None:
        """Campaign, then renew, until ``stop``; every wait bounded by the retry period."""
        LOG.info("campaigning", extra={"identity": self.identity, "lease": str(self.lease)})
        while not stop.is_set():
            if self.step():   # renew retry_period after the last renewal was sent
                wait = max(0.0, self._renewed_at + self.settings.retry_period - self._clock())
            elif self._leading:   # renewal failed: try again until the deadline
                wait = self.settings.retry_period
            else:
                wait = self.settings.retry_period * (1 + random.random() * JITTER)
            stop.wait(wait)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="leader-election",
                                  daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Stop acting (for good), then hand the Lease back (empty holder, duration 1 s) if
        it names this replica, so that another takes it at once."""
        with self._lock:
            self._released = True
            was_leading = self._leading
            if was_leading:
                self._end_term("released")
        try:
            read = self.lease.get()
            if read is not None and read.record.holder == self.identity:
                stamp = micro_time(self._wall())
                self.lease.update(LeaseRecord("", 1, stamp, stamp, read.record.transitions),
                                  read.resource_version)
                LOG.info("lease released", extra={"identity": self.identity})
        except Exception as exc:  # noqa: BLE001 -- the next leader waits the lease duration
            LOG.warning("lease not released", extra={"error": str(exc)})


# -- the command line (slurm-k8s-bridge run) ---------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``run``'s leader-election flags; each overrides the configuration's
    ``leader_election`` key of the same name."""
    group = parser.add_argument_group("leader election (several replicas, one acting)")
    group.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=None,
                       help="elect a leader with a Lease (default: leader_election.enabled)")
    group.add_argument("--leader-elect-lease-name", metavar="NAME")
    group.add_argument("--leader-elect-namespace", metavar="NS")
    group.add_argument("--leader-elect-lease-duration", type=float, metavar="S")
    group.add_argument("--leader-elect-renew-deadline", type=float, metavar="S")
    group.add_argument("--leader-elect-retry-period", type=float, metavar="S")
    group.add_argument("--leader-elect-identity", metavar="ID",
                       help="this replica's name in the Lease (default hostname_pid)")


def settings_from_args(args: argparse.Namespace, base: LeaderElection) -> LeaderElection:
    """``base`` (the configuration's) with the flags given on the command line."""
    flags = {"enabled": args.leader_elect, "lease_name": args.leader_elect_lease_name,
             "namespace": args.leader_elect_namespace,
             "lease_duration": args.leader_elect_lease_duration,
             "renew_deadline": args.leader_elect_renew_deadline,
             "retry_period": args.leader_elect_retry_period,
             "identity": args.leader_elect_identity}
    return replace(base, **{k: v for k, v in flags.items() if v is not None})


def elector_for(settings: LeaderElection, api_client: Any) -> LeaderElector | None:
    """The elector of ``settings`` on the daemon's ApiClient, or None when it is off.
    Raises ValueError (the message names the setting) for timings that cannot work."""
    from slurm_k8s_bridge.kube.lease import LeaseClient

    if not settings.enabled:
        return None
    timeout = (settings.retry_period, max(settings.retry_period, settings.renew_deadline / 2))
    lease = LeaseClient(api_client, settings.namespace, settings.lease_name, timeout=timeout)
    return LeaderElector(settings, lease)
