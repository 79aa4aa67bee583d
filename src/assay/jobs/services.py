"""Leader-only services: the rescuer and the pruner (the scheduler joins them later).

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
from collections.abc import Callable, Sequence

from assay.errors import AssayError
from assay.jobs.store import JobStore

__all__ = ["LEADER_LEASE", "Leadership", "Pruner", "Rescuer", "Service"]

log = logging.getLogger("assay.services")

LEADER_LEASE = "maintenance"


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
        except AssayError:
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
                except AssayError:
                    log.warning("service.failed name=%s", service.name, exc_info=True)
                self._next_run[service.name] = now + service.interval_s
        waits = [renew_every, *(t - self.clock() for t in self._next_run.values())]
        return max(min(waits), 0.01)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.step())
