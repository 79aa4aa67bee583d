"""Leader lease and leader-only services, on every database."""

from __future__ import annotations

import random
import threading
import time

import sqlalchemy as sa

from assay.db.tables import leader_leases
from assay.jobs.services import LEADER_LEASE, Leadership, Service
from assay.jobs.store import JobStore
from support.timing import wait_until


def _holder(store: JobStore, name: str) -> tuple[str, int] | None:
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(leader_leases.c.holder, leader_leases.c.expires_at_ms).where(
                leader_leases.c.name == name
            )
        ).first()
    return (row.holder, row.expires_at_ms) if row else None


class _Clock:
    """An injected database clock (epoch milliseconds) that a test moves by hand."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_leader_lease_one_holder_at_a_time(backend):
    clock = _Clock(1_800_000_000_000)
    store = JobStore(backend.engine, clock_ms=clock)  # the lease runs out when the test says
    ttl = 30.0
    assert store.leader_try_acquire("lease", "a", ttl), "a free lease was not granted"
    assert _holder(store, "lease") == ("a", clock.now + 30_000)
    assert not store.leader_try_acquire("lease", "b", ttl), "a held lease was granted to b"
    clock.now += 10_000
    assert store.leader_try_acquire("lease", "a", ttl), "the holder could not renew"
    assert _holder(store, "lease") == ("a", clock.now + 30_000)
    assert store.leader_try_acquire("other", "b", ttl), "leases of other names are independent"

    # a stops renewing: b takes over once a's lease has expired, not before.
    clock.now += 30_000
    assert not store.leader_try_acquire("lease", "b", ttl), "taken at the very end of a's lease"
    clock.now += 1
    assert store.leader_try_acquire("lease", "b", ttl)
    assert _holder(store, "lease")[0] == "b"
    assert not store.leader_try_acquire("lease", "a", ttl)

    # Release only by the holder; after it, the lease is free at once.
    store.leader_release("lease", "a")
    assert _holder(store, "lease")[0] == "b"
    assert not store.leader_try_acquire("lease", "a", ttl)
    store.leader_release("lease", "b")
    assert _holder(store, "lease") is None
    assert store.leader_try_acquire("lease", "a", ttl), "a released lease was not granted"
    # On the database's own clock (years before the injected one), a's lease is far from over.
    assert not backend.store.leader_try_acquire("lease", "b", ttl)


def test_leader_lease_race_has_one_winner(backend):
    store = backend.store
    competitors = 6
    for round_no in range(4):
        barrier = threading.Barrier(competitors)
        results: dict[str, bool] = {}

        def compete(
            holder: str,
            barrier: threading.Barrier = barrier,
            results: dict[str, bool] = results,
        ) -> None:
            barrier.wait(timeout=30)
            results[holder] = store.leader_try_acquire("race", holder, 30)

        threads = [
            threading.Thread(target=compete, args=(f"r{round_no}-{i}",)) for i in range(competitors)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        winners = [h for h, won in results.items() if won]
        assert len(results) == competitors
        assert len(winners) == 1, f"round {round_no}: winners {winners}"
        assert _holder(store, "race")[0] == winners[0]
        store.leader_release("race", winners[0])


# -- Leadership start/stop stress ----------------------------------------------------------------


class _Tracker:
    """Sees every change of every competitor's ``is_leader`` in the order they happen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.leaders: set[str] = set()
        self.max_leaders = 0
        self.active_ticks = 0
        self.max_active_ticks = 0
        self.violations: list[str] = []


class _Tracked(Leadership):
    tracker: _Tracker

    @property  # type: ignore[override]
    def is_leader(self) -> bool:
        return getattr(self, "_is_leader", False)

    @is_leader.setter
    def is_leader(self, value: bool) -> None:
        with self.tracker.lock:
            if value:
                self.tracker.leaders.add(self.holder)
                self.tracker.max_leaders = max(self.tracker.max_leaders, len(self.tracker.leaders))
            else:
                self.tracker.leaders.discard(self.holder)
            self._is_leader = value


class _Probe(Service):
    """Checks, on every tick, that its Leadership is the leader and holds the lease row."""

    name = "probe"

    def __init__(self, store: JobStore, tracker: _Tracker, owner: list[Leadership]) -> None:
        super().__init__(interval_s=0.02)
        self.store = store
        self.tracker = tracker
        self.owner = owner
        self.ticks = 0

    def tick(self) -> None:
        leadership = self.owner[0]
        with self.tracker.lock:
            self.tracker.active_ticks += 1
            self.tracker.max_active_ticks = max(
                self.tracker.max_active_ticks, self.tracker.active_ticks
            )
        try:
            row = _holder(self.store, LEADER_LEASE)
            now = self.store.now_ms()
            if not leadership.is_leader:
                self.tracker.violations.append(f"{leadership.holder} ticked as a non-leader")
            if row is None or row[0] != leadership.holder or row[1] <= now:
                self.tracker.violations.append(f"{leadership.holder} ticked; lease is {row}")
            time.sleep(0.002)
            self.ticks += 1
        finally:
            with self.tracker.lock:
                self.tracker.active_ticks -= 1


def test_leadership_start_stop_stress(backend):
    store = backend.store
    tracker = _Tracker()
    _Tracked.tracker = tracker
    rng = random.Random(7)
    ttl = 1.5
    elections = 0

    def make(name: str) -> tuple[Leadership, _Probe]:
        owner: list[Leadership] = []
        probe = _Probe(store, tracker, owner)
        leadership = _Tracked(store, name, ttl_s=ttl, services=[probe])
        owner.append(leadership)
        return leadership, probe

    def leader_of(group: list[tuple[Leadership, _Probe]]) -> tuple[Leadership, _Probe] | None:
        found = [(lead, probe) for lead, probe in group if lead.is_leader and probe.ticks >= 2]
        return found[0] if len(found) == 1 else None

    def stop_all(group: list[tuple[Leadership, _Probe]]) -> None:
        threads = [threading.Thread(target=lead.stop) for lead, _ in group]
        rng.shuffle(threads)
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive(), "Leadership.stop() hung"

    for cycle in range(20):
        group = [make(f"c{cycle}-{i}") for i in range(3)]
        for lead, _ in group:
            lead.start()
        try:
            current = wait_until(lambda g=group: leader_of(g), timeout=20)
            elections += 1
            if cycle % 4 == 3:
                # The leader steps down; another running competitor takes over.
                current[0].stop()
                rest = [pair for pair in group if pair is not current]
                wait_until(lambda g=rest: leader_of(g), timeout=20)
                elections += 1
        finally:
            stop_all(group)
        assert not any(lead.is_leader for lead, _ in group)
        assert tracker.violations == [], tracker.violations[:5]

    assert tracker.max_leaders == 1, f"{tracker.max_leaders} leaders at once"
    assert tracker.max_active_ticks == 1, "services ticked on two processes at once"
    assert elections == 25
    assert _holder(store, LEADER_LEASE) is None, "a stopped Leadership left its lease behind"


class _StallableProbe(Service):
    """Counts ticks; while ``stall`` is set a tick blocks (the leader stops renewing)."""

    name = "stallable"

    def __init__(self) -> None:
        super().__init__(interval_s=0.02)
        self.ticks = 0
        self.stall = threading.Event()
        self.stalled = threading.Event()
        self.resume = threading.Event()

    def tick(self) -> None:
        self.ticks += 1
        if self.stall.is_set():
            self.stall.clear()
            self.stalled.set()
            self.resume.wait(timeout=30)


def test_stalled_leader_is_replaced_and_steps_down(backend):
    store = backend.store
    ttl = 0.9
    probe_a, probe_b = _StallableProbe(), _StallableProbe()
    a = Leadership(store, "stall-a", ttl_s=ttl, services=[probe_a])
    b = Leadership(store, "stall-b", ttl_s=ttl, services=[probe_b])
    a.start()
    try:
        wait_until(lambda: a.is_leader and probe_a.ticks >= 2, timeout=20)
        b.start()
        # b competes but cannot take a lease that a keeps renewing.
        wait_until(lambda: _holder(store, LEADER_LEASE) is not None, timeout=5)
        probe_a.stall.set()
        wait_until(probe_a.stalled.is_set, timeout=20)
        assert not b.is_leader
        stalled_at = time.monotonic()
        # a's lease runs out; b takes over, then runs its services.
        wait_until(lambda: b.is_leader and probe_b.ticks >= 2, timeout=20)
        assert time.monotonic() - stalled_at >= ttl / 2  # not before the lease ran out
        assert _holder(store, LEADER_LEASE)[0] == "stall-b"
        ticks_a = probe_a.ticks
        probe_a.resume.set()
        # a notices at its next step that it lost the lease: it steps down and ticks no more.
        wait_until(lambda: not a.is_leader, timeout=20)
        wait_until(lambda: probe_b.ticks >= 5, timeout=20)
        assert probe_a.ticks == ticks_a
        assert b.is_leader
    finally:
        probe_a.resume.set()
        a.stop()
        b.stop()
    assert _holder(store, LEADER_LEASE) is None


class _Ticking(Service):
    """Counts its ticks; with ``bug``, every tick then raises something that is not an
    AssayError (a registered service is user code)."""

    def __init__(self, name: str, *, bug: bool = False) -> None:
        super().__init__(interval_s=0.02)
        self.name = name
        self.bug = bug
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1
        if self.bug:
            raise RuntimeError("a bug in a registered service")


def test_a_service_that_raises_neither_ends_the_leadership_nor_stops_the_others(backend):
    broken, counter = _Ticking("broken", bug=True), _Ticking("counter")
    leadership = Leadership(backend.store, "buggy", ttl_s=0.9, services=[broken, counter])
    leadership.start()
    try:
        # Both services keep ticking, and the lease is renewed after the bug has struck.
        wait_until(lambda: broken.ticks >= 5 and counter.ticks >= 5, timeout=20)
        renewed = _holder(backend.store, LEADER_LEASE)
        wait_until(lambda: _holder(backend.store, LEADER_LEASE) != renewed, timeout=20)
        assert leadership.is_leader
    finally:
        leadership.stop()
