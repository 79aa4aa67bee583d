"""The ``@periodic`` decorator and the leader's Scheduler, on every database."""

from __future__ import annotations

import itertools
import logging
import re
import signal
import statistics
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from assay import ConfigError, InvalidRequestError, JobStatus, job, periodic
from assay.db.engine import create_engine
from assay.db.tables import job_locks
from assay.jobs.backend import Backend
from assay.jobs.model import Job
from assay.jobs.periodic import parse_cron, parse_every
from assay.jobs.registry import Registry
from assay.jobs.services import Leadership, Scheduler, maintenance
from assay.jobs.store import Finish, JobStore, NewJob
from assay.jobs.worker import Worker
from support.jobs import running
from support.servers import Servers
from support.timing import scaled, wait_until

SECOND = 1000
T0 = 1_800_000_000_000  # a whole hour, in epoch milliseconds


class Clock:
    """An injected scheduler clock (epoch milliseconds) that a test moves by hand."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _jobs(store: JobStore, *names: str) -> list[Job]:
    """Jobs of these names, oldest first."""
    return list(reversed(store.jobs_search(names=list(names), limit=1000)))


def _next_run(store: JobStore, name: str) -> int | None:
    return store.schedules_next_run([name]).get(name)


def _locks(store: JobStore) -> dict[str, str]:
    with store.engine.connect() as conn:
        return {r.lock_key: r.job_id for r in conn.execute(job_locks.select())}


def _events(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(event)]


def _slot(millis: int) -> str:
    """A slot as the scheduler's log lines show it."""
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")


FIRED = re.compile(r"scheduler\.fired name=(\S+) job=(\S+) slot=(\S+)")


def _fired(text: str, name: str) -> list[tuple[str, datetime]]:
    """(job id, slot) of each ``scheduler.fired`` line of schedule ``name`` in a log."""
    return [
        (job_id, datetime.fromisoformat(slot))
        for found, job_id, slot in FIRED.findall(text)
        if found == name
    ]


def _worker(backend: Backend, registry: Registry) -> Worker:
    """A worker for ``registry``'s jobs (no leadership of its own), for :func:`running`."""
    settings = backend.settings.model_copy(update={"maintenance": False})
    return Worker(backend.store, settings, registry=registry, concurrency=4)


# -- schedule parsing and the decorator (no database) -------------------------------------------


@pytest.mark.parametrize(
    ("every", "millis"),
    [
        ("10s", 10_000),
        ("15m", 900_000),
        ("1h30m", 5_400_000),
        ("2d", 172_800_000),
        ("1.5s", 1_500),
        ("1500ms", 1_500),
        (" 1H ", 3_600_000),
        (timedelta(minutes=2), 120_000),
        (30, 30_000),
        (2.5, 2_500),
    ],
)
def test_parse_every(every: Any, millis: int) -> None:
    assert parse_every(every) == millis


@pytest.mark.parametrize(
    "every",
    ["", "10", "10x", "s", "-5s", "5s!", "1h 30", "500ms", 0, 0.5, -1, True, timedelta(0), [10]],
)
def test_parse_every_rejects(every: Any) -> None:
    with pytest.raises(InvalidRequestError, match="every"):
        parse_every(every)


def test_parse_cron() -> None:
    assert parse_cron("*/5 * * * *") == "*/5 * * * *"
    assert parse_cron("  0   3 * *  mon-fri ") == "0 3 * * mon-fri"
    assert parse_cron("@hourly") == "@hourly"
    for bad, match in [
        ("61 * * * *", "not a valid expression"),
        ("bogus * * * *", "not a valid expression"),
        ("0 0 31 2 *", "not a valid expression"),  # valid fields, but it never fires
        ("* * * *", "five fields"),
        ("* * * * * *", "five fields"),
        ("", "five fields"),
    ]:
        with pytest.raises(InvalidRequestError, match=match):
            parse_cron(bad)


def test_periodic_stacked_on_job_registers_a_schedule() -> None:
    registry = Registry()

    @periodic(cron="*/5  * * * *", params={"n": 3}, registry=registry)
    @job(name="p_cron", registry=registry)
    def p_cron(n: int) -> int:
        return n

    periodic(every=timedelta(seconds=10), params={"n": 0}, name="p_cron_often", registry=registry)(
        p_cron
    )
    assert p_cron(2) == 2, "the decorated function is returned as it was"
    by_name = {s.name: s for s in registry.schedules}
    assert set(by_name) == {"p_cron", "p_cron_often"}
    cron = by_name["p_cron"]
    assert (cron.job_name, cron.params, cron.cron, cron.every_ms) == (
        "p_cron",
        {"n": 3},
        "*/5 * * * *",
        None,
    )
    assert cron.describe() == "cron '*/5 * * * *'"
    assert cron.next_after(T0 - 1) == T0
    assert cron.next_after(T0) == T0 + 300 * SECOND, "a slot is strictly after now"
    often = by_name["p_cron_often"]
    assert (often.every_ms, often.params, often.describe()) == (10_000, {"n": 0}, "every 10s")
    assert often.next_after(T0) == T0 + 10 * SECOND
    assert often.next_after(T0 + 9_999) == T0 + 10 * SECOND
    assert often.next_after(T0 + 10_000) == T0 + 20 * SECOND


def test_periodic_on_a_plain_function_registers_the_job() -> None:
    registry = Registry()

    @periodic(every="1h", registry=registry)
    def p_plain() -> str:
        return "ok"

    assert "p_plain" in registry
    assert registry.get("p_plain").fn is p_plain
    assert [(s.name, s.job_name, s.every_ms) for s in registry.schedules] == [
        ("p_plain", "p_plain", 3_600_000)
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every": "10x"}, r"@periodic 'p_bad': every='10x' is not a duration"),
        ({"every": "200ms"}, "shorter than 1s"),
        ({"cron": "61 * * * *"}, r"cron='61 \* \* \* \*' is not a valid expression"),
        ({"cron": "0 0 31 2 *"}, "not a valid expression"),
        ({"cron": "* * * * * *"}, "five fields"),
        ({}, "exactly one of every= or cron="),
        ({"every": "1m", "cron": "* * * * *"}, "exactly one of every= or cron="),
        ({"every": "1m", "params": {"nope": 1}}, "invalid params for job 'p_bad'"),
        ({"every": "1m", "params": {"n": object()}}, "must be JSON"),
        ({"every": "1m", "params": [("n", 1)]}, "params must be a mapping"),
        ({"every": "1m", "name": ""}, "name must be 1 to 180 characters"),
        ({"every": "1m", "name": "x" * 181}, "name must be 1 to 180 characters"),
        ({"every": "1m", "name": "nightly "}, "whitespace"),
    ],
)
def test_periodic_mistakes_fail_at_decoration(kwargs: dict[str, Any], match: str) -> None:
    registry = Registry()

    @job(name="p_bad", registry=registry)
    def p_bad(n: int = 0) -> int:
        return n

    with pytest.raises(ConfigError, match=match):
        periodic(registry=registry, **kwargs)(p_bad)
    assert registry.schedules == []


def test_a_schedule_name_belongs_to_one_schedule() -> None:
    registry = Registry()

    def declare() -> None:
        @periodic(every="1m", name="nightly", registry=registry)
        @job(name="p_one", registry=registry)
        def p_one() -> None: ...

    declare()
    declare()  # the same declaration again (a module imported twice) is fine
    assert [s.name for s in registry.schedules] == ["nightly"]

    @job(name="p_two", registry=registry)
    def p_two() -> None: ...

    with pytest.raises(ConfigError, match="schedule name 'nightly' is registered twice"):
        periodic(every="5m", name="nightly", registry=registry)(p_two)
    # Names differing only in case would share one row on MySQL.
    with pytest.raises(ConfigError, match="schedule name 'Nightly' is registered twice"):
        periodic(every="5m", name="Nightly", registry=registry)(p_two)
    assert registry.schedules[0].job_name == "p_one"


# -- the Scheduler with an injected clock ------------------------------------------------------


def test_every_fires_once_per_slot(backend: Backend) -> None:
    registry = Registry()

    @periodic(every="10s", params={"tag": "a"}, registry=registry)
    @job(name="p_every", registry=registry)
    def p_every(tag: str) -> str:
        return tag

    store = backend.store
    clock = Clock(T0 + 3 * SECOND)
    scheduler = Scheduler(store, registry, default_timeout_s=60, clock=clock)
    scheduler.tick()
    assert _next_run(store, "p_every") == T0 + 10 * SECOND
    assert _jobs(store, "p_every") == [], "a new schedule waits for its first slot"

    clock.now = T0 + 10 * SECOND - 1
    scheduler.tick()
    assert _jobs(store, "p_every") == []
    assert scheduler.interval_s == pytest.approx(0.01), "it wakes up for the coming slot"

    clock.now = T0 + 10 * SECOND
    scheduler.tick()
    scheduler.tick()
    [first] = _jobs(store, "p_every")
    assert (first.status, first.params, first.timeout) == (JobStatus.PENDING, {"tag": "a"}, 60)
    assert _next_run(store, "p_every") == T0 + 20 * SECOND
    backend.cancel(first.id)  # frees the schedule's key: no coalescing in this test

    clock.now = T0 + 20 * SECOND + 500
    scheduler.tick()
    assert len(_jobs(store, "p_every")) == 2
    assert _next_run(store, "p_every") == T0 + 30 * SECOND
    backend.cancel(_jobs(store, "p_every")[-1].id)

    # Nobody ticked for five slots: one fire, not a burst of catch-up runs.
    clock.now = T0 + 75 * SECOND
    scheduler.tick()
    assert len(_jobs(store, "p_every")) == 3
    assert _next_run(store, "p_every") == T0 + 80 * SECOND
    assert scheduler.interval_s == 1.0, "it still ticks at least every second"
    clock.now = T0 + 79_700
    scheduler.tick()
    assert scheduler.interval_s == pytest.approx(0.3)
    assert len(_jobs(store, "p_every")) == 3


def test_cron_fires_on_its_slots(backend: Backend) -> None:
    registry = Registry()

    @periodic(cron="*/5 * * * *", registry=registry)
    @job(name="p_five", registry=registry)
    def p_five() -> None: ...

    store = backend.store
    clock = Clock(T0 + SECOND)
    scheduler = Scheduler(store, registry, default_timeout_s=60, clock=clock)
    scheduler.tick()
    assert _next_run(store, "p_five") == T0 + 300 * SECOND
    clock.now = T0 + 299 * SECOND
    scheduler.tick()
    assert _jobs(store, "p_five") == []
    clock.now = T0 + 300 * SECOND
    scheduler.tick()
    assert len(_jobs(store, "p_five")) == 1
    assert _next_run(store, "p_five") == T0 + 600 * SECOND


def test_a_tick_coalesces_behind_a_pending_or_running_job(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="assay.services")
    registry = Registry()
    release = threading.Event()

    @periodic(every="10s", registry=registry)
    @job(name="p_slow", registry=registry)
    def p_slow() -> str:
        assert release.wait(30)
        return "done"

    store = backend.store
    clock = Clock(T0)
    scheduler = Scheduler(store, registry, default_timeout_s=60, clock=clock)
    scheduler.tick()
    clock.now += 10 * SECOND
    scheduler.tick()
    [first] = _jobs(store, "p_slow")
    assert _events(caplog, "scheduler.fired") == [
        f"scheduler.fired name=p_slow job={first.id} slot={_slot(T0 + 10 * SECOND)}"
    ]

    clock.now += 10 * SECOND
    scheduler.tick()  # behind a PENDING job
    assert [j.id for j in _jobs(store, "p_slow")] == [first.id]
    with running(_worker(backend, registry)):
        wait_until(lambda: backend.get(first.id).status == JobStatus.RUNNING)
        for _ in range(3):  # behind a RUNNING job
            clock.now += 10 * SECOND
            scheduler.tick()
        assert [(j.id, j.status) for j in _jobs(store, "p_slow")] == [(first.id, JobStatus.RUNNING)]
        assert _events(caplog, "scheduler.coalesced") == [
            f"scheduler.coalesced name=p_slow holder={first.id} slot={_slot(T0 + n * SECOND)}"
            for n in (20, 30, 40, 50)
        ]
        assert _next_run(store, "p_slow") == clock.now + 10 * SECOND, "the slots still pass"

        release.set()
        wait_until(lambda: backend.get(first.id).status == JobStatus.SUCCEEDED)
        clock.now += 10 * SECOND
        scheduler.tick()
        second = _jobs(store, "p_slow")[-1]
        assert second.id != first.id
        wait_until(lambda: backend.get(second.id).status == JobStatus.SUCCEEDED)
    every = _jobs(store, "p_slow")
    assert [j.status for j in every] == [JobStatus.SUCCEEDED] * 2, "no CANCELED rows"
    assert _locks(store) == {}, "the key is freed when the job ends"


def test_a_retrying_job_keeps_the_schedule_coalesced(backend: Backend) -> None:
    registry = Registry()

    @periodic(every="10s", registry=registry)
    @job(name="p_retry", max_retries=2, registry=registry)
    def p_retry() -> None: ...

    store = backend.store
    clock = Clock(T0)
    scheduler = Scheduler(store, registry, default_timeout_s=60, clock=clock)
    scheduler.tick()
    clock.now += 10 * SECOND
    scheduler.tick()
    [first] = _jobs(store, "p_retry")
    [claimed] = store.jobs_claim("w1", limit=1, names=["p_retry"], lease_ttl_s=30)
    assert claimed.id == first.id
    retry = Finish(first.id, "w1", 1, JobStatus.PENDING, error="flaky", retry_delay_s=600)
    assert store.jobs_finish([retry]) == [True]
    assert backend.get(first.id).status == JobStatus.PENDING

    clock.now += 10 * SECOND
    scheduler.tick()
    assert [j.id for j in _jobs(store, "p_retry")] == [first.id]
    assert _locks(store) == {"schedule:p_retry": first.id}


def test_an_exclusive_job_coalesces_on_its_own_lock_key(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="assay.services")
    registry = Registry()

    @periodic(every="10s", params={"key": "k1"}, registry=registry)
    @job(name="p_excl", exclusive=["key"], registry=registry)
    def p_excl(key: str) -> str:
        return key

    spec = registry.get("p_excl")
    key = spec.lock_key({"key": "k1"})
    store = backend.store

    def manual() -> Job:
        new = NewJob(
            id=f"manual-{len(_jobs(store, 'p_excl'))}",
            name="p_excl",
            params={"key": "k1"},
            max_retries=0,
            timeout_s=60,
            lock_key=key,
            on_conflict=spec.on_conflict,
        )
        return store.jobs_insert([new])[0]

    clock = Clock(T0)
    scheduler = Scheduler(store, registry, default_timeout_s=60, clock=clock)
    scheduler.tick()
    clock.now += 10 * SECOND
    scheduler.tick()
    [scheduled] = _jobs(store, "p_excl")
    assert scheduled.lock_key == key, "the scheduled job takes the job's exclusivity key"
    assert manual().status == JobStatus.CANCELED, "a manual duplicate is skipped as usual"

    backend.cancel(scheduled.id)
    holder = manual()
    assert holder.status == JobStatus.PENDING
    clock.now += 10 * SECOND
    scheduler.tick()
    assert len(_jobs(store, "p_excl")) == 3, "the slot passed behind the manual job"
    assert _events(caplog, "scheduler.coalesced") == [
        f"scheduler.coalesced name=p_excl holder={holder.id} slot={_slot(T0 + 20 * SECOND)}"
    ]


def test_two_schedulers_never_fire_a_slot_twice(
    store_uri: str, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Two leaders (each its own engine, as two processes) tick at the same moment."""
    caplog.set_level(logging.INFO, logger="assay.services")
    registry = Registry()

    @job(name="p_race", registry=registry)
    def p_race(n: int) -> int:
        return n

    names = [f"race-{n}" for n in range(4)]
    for n, name in enumerate(names):
        periodic(every="10s", params={"n": n}, name=name, registry=registry)(p_race)

    engines = [create_engine(store_uri) for _ in range(2)]
    clock = Clock(T0)
    schedulers = [
        Scheduler(JobStore(engine), registry, default_timeout_s=60, clock=clock)
        for engine in engines
    ]
    rounds = 12
    try:
        for round_no in range(rounds):
            clock.now = T0 + round_no * 10 * SECOND + round_no * 37
            barrier = threading.Barrier(len(schedulers))
            errors: list[BaseException] = []

            def tick(
                scheduler: Scheduler,
                barrier: threading.Barrier = barrier,
                errors: list[BaseException] = errors,
            ) -> None:
                try:
                    barrier.wait(timeout=30)
                    scheduler.tick()
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=tick, args=(s,)) for s in schedulers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert errors == []
            # End this round's jobs, so that coalescing cannot hide a second fire.
            for pending in backend.store.jobs_search(statuses=[JobStatus.PENDING], limit=100):
                backend.cancel(pending.id)
    finally:
        for engine in engines:
            engine.dispose()

    fired = _jobs(backend.store, "p_race")
    assert sorted(j.params["n"] for j in fired) == sorted(list(range(4)) * (rounds - 1))
    assert _events(caplog, "scheduler.coalesced") == [], "a slot was claimed twice"
    assert len(_events(caplog, "scheduler.fired")) == 4 * (rounds - 1)
    for name in names:
        assert _next_run(backend.store, name) == T0 + rounds * 10 * SECOND


def test_a_new_scheduler_continues_the_schedule(backend: Backend) -> None:
    registry = Registry()

    @periodic(every="10s", registry=registry)
    @job(name="p_continue", registry=registry)
    def p_continue() -> None: ...

    store = backend.store
    clock = Clock(T0 + SECOND)
    old = Scheduler(store, registry, default_timeout_s=60, clock=clock)
    old.tick()
    clock.now = T0 + 10 * SECOND
    old.tick()
    [first] = _jobs(store, "p_continue")
    backend.cancel(first.id)

    # The old leader is gone; a new one takes over within the slot: no extra fire.
    clock.now = T0 + 12 * SECOND
    new = Scheduler(JobStore(store.engine), registry, default_timeout_s=60, clock=clock)
    new.tick()
    assert len(_jobs(store, "p_continue")) == 1
    assert _next_run(store, "p_continue") == T0 + 20 * SECOND
    clock.now = T0 + 20 * SECOND
    new.tick()
    old.tick()  # a late tick of the old leader finds the slot taken
    assert len(_jobs(store, "p_continue")) == 2
    assert _next_run(store, "p_continue") == T0 + 30 * SECOND


def test_a_sooner_definition_moves_the_stored_slot(backend: Backend) -> None:
    store = backend.store
    clock = Clock(T0 + SECOND)

    def scheduler(every: str) -> Scheduler:
        registry = Registry()

        @periodic(every=every, registry=registry)
        @job(name="p_change", registry=registry)
        def p_change() -> None: ...

        return Scheduler(store, registry, default_timeout_s=60, clock=clock)

    scheduler("1h").tick()
    assert _next_run(store, "p_change") == T0 + 3600 * SECOND
    clock.now = T0 + 2 * SECOND
    scheduler("10s").tick()  # deployed with a shorter period: no hour-long wait
    assert _next_run(store, "p_change") == T0 + 10 * SECOND
    assert _jobs(store, "p_change") == []
    clock.now = T0 + 10 * SECOND
    scheduler("1h").tick()  # a longer one keeps the stored slot, then moves on its own grid
    assert len(_jobs(store, "p_change")) == 1
    assert _next_run(store, "p_change") == T0 + 3600 * SECOND


def test_the_leader_sleeps_until_the_next_slot(backend: Backend) -> None:
    """Between ticks the leadership waits as long as the scheduler asks, so a slot fires when
    it comes: not at the next lease renewal, nor a whole scheduler interval later. Both clocks
    are injected (the scheduler's database clock, the leadership's monotonic one)."""
    registry = Registry()

    @periodic(every="10s", registry=registry)
    @job(name="p_wake", registry=registry)
    def p_wake() -> None: ...

    store = backend.store
    db_clock = Clock(T0 + 8 * SECOND)
    seconds = [100.0]
    scheduler = Scheduler(store, registry, default_timeout_s=60, clock=db_clock)
    leadership = Leadership(
        store, "wake-test", ttl_s=30, services=[scheduler], clock=lambda: seconds[0]
    )
    try:
        # Elected; the first slot is 2 s away: look again within the scheduler's 1 s at most.
        assert leadership.step() == pytest.approx(1.0)
        assert leadership.is_leader
        seconds[0] += 1.0
        db_clock.now = T0 + 9_700
        assert leadership.step() == pytest.approx(0.3), "it wakes up for the slot"
        assert _jobs(store, "p_wake") == []
        seconds[0] += 0.3
        db_clock.now = T0 + 10 * SECOND
        assert leadership.step() == pytest.approx(1.0)
        [fired] = _jobs(store, "p_wake")
        assert _next_run(store, "p_wake") == T0 + 20 * SECOND
        # A renewal due before the slot comes first (a 0.9 s lease is renewed every 0.3 s).
        leadership.ttl_s = 0.9
        seconds[0] += 1.0
        db_clock.now = T0 + 19_500
        assert leadership.step() == pytest.approx(0.3)
        assert [j.id for j in _jobs(store, "p_wake")] == [fired.id]
    finally:
        leadership.stop()


# -- in real time, on the database clock --------------------------------------------------------


def test_leadership_fires_each_slot_on_the_db_clock(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="assay.services")
    registry = Registry()

    @periodic(every="1s", registry=registry)
    @job(name="p_tick", registry=registry)
    def p_tick() -> None: ...

    store = backend.store
    leadership = maintenance(store, backend.settings, "scheduler-test", registry)
    assert any(isinstance(s, Scheduler) for s in leadership.services)

    def done() -> int:
        return sum(j.status == JobStatus.SUCCEEDED for j in _jobs(store, "p_tick"))

    with running(_worker(backend, registry)):
        leadership.start()
        try:
            wait_until(lambda: done() >= 4, timeout=30)
        finally:
            leadership.stop()
    ticks = {j.id: j for j in _jobs(store, "p_tick")}
    assert all(j.status == JobStatus.SUCCEEDED for j in ticks.values())
    fired = _fired(caplog.text, "p_tick")
    assert sorted(job_id for job_id, _ in fired) == sorted(ticks), "a job without its fire log"
    slots = [slot for _, slot in fired]
    assert len(set(slots)) == len(slots), f"a slot fired twice: {slots}"
    assert all(slot.microsecond == 0 for slot in slots), "slots are whole seconds"
    delays = [(ticks[job_id].created_at - slot).total_seconds() for job_id, slot in fired]
    assert min(delays) >= 0, f"fired before its slot on the database clock: {delays}"
    # How late is up to the machine (a thread's wake-up and a few database round trips, each
    # waiting for a core on a busy box): only a gross delay fails here. That the leader wakes
    # for each slot is exact in test_the_leader_sleeps_until_the_next_slot.
    assert statistics.median(delays) < scaled(0.5), f"fired late: {delays}"


# -- real servers --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_servers_fire_periodic_jobs_and_fail_over(
    store_uri: str, servers: Servers, backend: Backend
) -> None:
    store = backend.store
    modules = ["jobmods", "jobmods_periodic"]
    pair = [servers.start(store_uri, job_modules=modules) for _ in range(2)]

    def succeeded(name: str) -> int:
        return sum(j.status == JobStatus.SUCCEEDED for j in _jobs(store, name))

    wait_until(lambda: succeeded("t_periodic_tick") >= 3, timeout=60)
    leader = next(s for s in pair if "scheduler.fired" in s.logs())
    other = next(s for s in pair if s is not leader)
    assert "scheduler.fired" not in other.logs(), "two replicas ran the scheduler"

    leader.stop(signal.SIGKILL)
    before = len(_jobs(store, "t_periodic_tick"))
    wait_until(lambda: "scheduler.fired" in other.logs(), timeout=30)
    wait_until(lambda: succeeded("t_periodic_tick") >= before + 3, timeout=30)
    wait_until(lambda: succeeded("t_periodic_slow") >= 2, timeout=30)

    # Every stored tick was fired by one of the two, each for its own slot; after the failover
    # the missed slots were fired once, not as a burst.
    ticks = {j.id: j for j in _jobs(store, "t_periodic_tick")}
    fired = sorted(
        _fired(leader.logs(), "t_periodic_tick") + _fired(other.logs(), "t_periodic_tick"),
        key=lambda pair: pair[1],
    )
    assert {job_id for job_id, _ in fired} <= set(ticks)
    assert len(ticks) - len(fired) <= 1, "only a fire the kill cut off may lack its log line"
    slots = [slot for _, slot in fired]
    assert len(set(slots)) == len(slots), f"a slot fired twice: {slots}"
    for (before_id, _), (_, slot) in itertools.pairwise(fired):
        lag = (ticks[before_id].created_at - slot).total_seconds()
        assert lag < 0.5, f"slot {slot} fired in a catch-up burst, {lag}s after its successor"
    assert "scheduler.coalesced name=t_periodic_slow_every_1s" in leader.logs() + other.logs()
    every = _jobs(store, "t_periodic_tick", "t_periodic_slow")
    assert not [j for j in every if j.status == JobStatus.CANCELED], "coalescing stores nothing"
    slow = [j for j in _jobs(store, "t_periodic_slow") if j.status == JobStatus.SUCCEEDED]
    spans = sorted((j.started_at, j.finished_at) for j in slow)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end is not None
        assert start is not None
        assert end <= start, "slow jobs overlapped"
