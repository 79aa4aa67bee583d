"""Leader-only services: the rescuer, the pruner and the scheduler.

Every process that may run maintenance starts a :class:`Leadership`; exactly one of them holds
the ``maintenance`` lease row at a time and runs the services' ticks. When it dies its lease
expires after ``leader_ttl_s`` and another process takes over. All services share one shape:
``interval_s`` and ``tick()``; time comes from an injected clock.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from assay.config import Settings
from assay.errors import AssayError
from assay.jobs.periodic import Schedule
from assay.jobs.registry import Registry
from assay.jobs.store import COALESCE, JobStore, NewJob

__all__ = [
    "LEADER_LEASE",
    "SCHEDULER_INTERVAL_S",
    "Leadership",
    "Pruner",
    "Rescuer",
    "Scheduler",
    "Service",
    "maintenance",
]

log = logging.getLogger("assay.services")

LEADER_LEASE = "maintenance"
SCHEDULER_INTERVAL_S = 1.0
"""The scheduler ticks at least this often; sooner when a slot is due before."""


class Service(abc.ABC):
    """A periodic task that only the leader runs."""

    name: str = "service"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s

    @abc.abstractmethod
    def tick(self) -> None: ...


class Rescuer(Service):
    """Puts RUNNING jobs whose lease expired (their worker died) back to PENDING, or FAILED
    once their attempts are spent."""

    name = "rescuer"

    def __init__(self, store: JobStore, interval_s: float, min_attempts: int) -> None:
        super().__init__(interval_s)
        self.store = store
        self.min_attempts = min_attempts

    def tick(self) -> None:
        result = self.store.jobs_rescue_expired(min_attempts=self.min_attempts)
        self.store.metrics.rescued(result)
        for job_id in result.requeued:
            log.warning("job.rescued id=%s", job_id)
        for job_id in result.failed:
            log.warning("job.rescue_failed id=%s", job_id)


class Pruner(Service):
    """Deletes finished jobs older than the retention period."""

    name = "pruner"

    def __init__(self, store: JobStore, interval_s: float, retention_s: float) -> None:
        super().__init__(interval_s)
        self.store = store
        self.retention_s = retention_s

    def tick(self) -> None:
        deleted = self.store.jobs_prune(self.retention_s)
        if deleted:
            log.info("jobs.pruned count=%s", deleted)


class Scheduler(Service):
    """Submits the jobs of the registry's ``@periodic`` schedules when their slots come.

    - One row per schedule holds its next slot (``schedules.next_run_at_ms``). A due slot is
      claimed with a guarded UPDATE in the same transaction as the submit, so a slot fires at
      most once even when two leaders overlap, and a new leader continues the schedule.
    - Time is ``clock()`` in epoch milliseconds, by default the database clock, so replicas
      with skewed clocks agree.
    - A schedule that missed several slots (no leader for a while) fires once, not once per
      missed slot; its next slot is the first one after now.
    - Coalescing: the fired job holds a lock key (its own, if the job is exclusive, else one per
      schedule) from submit until it ends; a slot that comes while it is held passes without
      storing anything.
    - A new schedule's first slot is the first one after it is first seen; when a schedule's
      definition changes to come sooner, its stored slot is moved forward.
    """

    name = "scheduler"

    def __init__(
        self,
        store: JobStore,
        registry: Registry,
        *,
        default_timeout_s: float,
        interval_s: float = SCHEDULER_INTERVAL_S,
        clock: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(interval_s)
        self.store = store
        self.registry = registry
        self.default_timeout_s = default_timeout_s
        self.max_interval_s = interval_s
        self.clock = clock or store.now_ms

    def tick(self) -> None:
        schedules = self.registry.schedules
        if not schedules:
            return
        now = self.clock()
        stored = self.store.schedules_next_run([s.name for s in schedules])
        upcoming: list[int] = []
        for schedule in schedules:
            try:
                upcoming.append(self._step(schedule, stored.get(schedule.name), now))
            except AssayError:
                log.warning("scheduler.failed name=%s", schedule.name, exc_info=True)
        # Wake up for the soonest slot (the Leadership reads interval_s after each tick).
        wait_s = (min(upcoming) - now) / 1000 if upcoming else self.max_interval_s
        self.interval_s = min(self.max_interval_s, max(wait_s, 0.01))

    def _step(self, schedule: Schedule, due: int | None, now: int) -> int:
        """Fire ``schedule`` if its slot is due; return its next slot."""
        following = schedule.next_after(now)
        if due is None:
            self.store.schedule_create(schedule.name, following)
            return following
        if due > following:  # the definition changed to come sooner
            self.store.schedule_move(schedule.name, due, following)
            return following
        if due > now:
            return due
        fired = self.store.schedule_fire(schedule.name, due, following, self._new_job(schedule))
        slot = datetime.fromtimestamp(due / 1000, UTC).isoformat(timespec="milliseconds")
        if fired.job is not None:
            log.info("scheduler.fired name=%s job=%s slot=%s", schedule.name, fired.job.id, slot)
        elif fired.claimed:
            log.info(
                "scheduler.coalesced name=%s holder=%s slot=%s", schedule.name, fired.holder, slot
            )
        return following

    def _new_job(self, schedule: Schedule) -> NewJob:
        spec = self.registry.get(schedule.job_name)
        params = spec.bind(schedule.params)
        return NewJob(
            id=str(uuid.uuid4()),
            name=spec.name,
            params=params,
            max_retries=spec.max_retries,
            timeout_s=spec.timeout or self.default_timeout_s,
            lock_key=spec.lock_key(params) or schedule.lock_key,
            on_conflict=COALESCE,
        )


class Leadership:
    """Competes for the leader lease and runs the services while it holds it."""

    def __init__(
        self,
        store: JobStore,
        holder: str,
        *,
        ttl_s: float,
        services: Sequence[Service],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.holder = holder
        self.ttl_s = ttl_s
        self.services = list(services)
        self.clock = clock
        self.is_leader = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_run: dict[str, float] = {}

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="assay-leadership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.is_leader:
            self.is_leader = False
            try:
                self.store.leader_release(LEADER_LEASE, self.holder)
            except AssayError:
                log.warning("leader.release_failed holder=%s", self.holder, exc_info=True)

    def step(self) -> float:
        """Renew or try the lease, run due services; return seconds until the next step."""
        renew_every = self.ttl_s / 3
        try:
            leader = self.store.leader_try_acquire(LEADER_LEASE, self.holder, self.ttl_s)
        except Exception:  # the store's, or one it did not translate: compete again next step
            log.warning("leader.acquire_failed holder=%s", self.holder, exc_info=True)
            leader = False
        if leader != self.is_leader:
            log.info("leader.%s holder=%s", "elected" if leader else "lost", self.holder)
            self.is_leader = leader
            self._next_run.clear()
        if not leader:
            return renew_every
        now = self.clock()
        for service in self.services:
            if now >= self._next_run.get(service.name, now):
                try:
                    service.tick()
                except Exception:  # a service (a registered one is user code) never ends this loop
                    log.warning("service.failed name=%s", service.name, exc_info=True)
                self._next_run[service.name] = now + service.interval_s
        waits = [renew_every, *(t - self.clock() for t in self._next_run.values())]
        return max(min(waits), 0.01)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.step())


def maintenance(store: JobStore, settings: Settings, holder: str, registry: Registry) -> Leadership:
    """The leadership every worker or server process runs, with all leader-only services."""
    return Leadership(
        store,
        holder,
        ttl_s=settings.leader_ttl_s,
        services=[
            Rescuer(store, settings.rescue_interval_s, settings.rescue_min_attempts),
            Pruner(store, settings.prune_interval_s, settings.job_retention_s),
            Scheduler(store, registry, default_timeout_s=settings.job_timeout_s),
            *(factory(store, settings) for factory in registry.services),
        ],
    )
