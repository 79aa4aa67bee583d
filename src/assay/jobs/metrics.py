"""Prometheus metrics of one job store, served at ``GET /metrics``.

Two kinds, in one dedicated :class:`~prometheus_client.CollectorRegistry` per store (never the
global default one, so several backends, workers or apps in one process never collide):

- events counted by this process as they happen, at one seam each: claims and lock conflicts
  in the store, execution ends in the worker, rescues in the rescuer;
- gauges read from the database at scrape time (live jobs by name and status, queue depth,
  oldest runnable job, jobs waiting for a lock), the same for every replica. They never read
  finished jobs, so a scrape costs the same with months of history in the table.

The metrics table is in the README ("Metrics").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from assay.errors import StoreError
from assay.jobs.model import Job, JobStatus
from assay.jobs.rows import JobStats, RescueResult

__all__ = ["PICKUP_BUCKETS_S", "RUN_BUCKETS_S", "JobMetrics"]

log = logging.getLogger("assay.metrics")

# Pickup is milliseconds when workers keep up, seconds to a minute when they do not.
PICKUP_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Jobs run from milliseconds (inline) to hours (training, batch scoring).
RUN_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 14400.0,
)  # fmt: skip


class JobMetrics:
    """The metrics of one :class:`~assay.jobs.store.JobStore`, shared by everything in this
    process that uses that store (its workers, its leadership, its backend).

    ``stats`` reads the database-derived gauges (the store's ``jobs_stats``); the metrics need
    nothing else of the store, which is handed them (``JobStore(metrics=...)``)."""

    def __init__(self, stats: Callable[[], JobStats]) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._pickup = Histogram(
            "assay_jobs_pickup_latency_seconds",
            "From when a job became runnable (max of created_at, run_at) to its claim.",
            ["name"],
            buckets=PICKUP_BUCKETS_S,
            registry=reg,
        )
        self._run = Histogram(
            "assay_jobs_run_seconds",
            "Wall time of one execution on its executor, observed when it ends.",
            ["name"],
            buckets=RUN_BUCKETS_S,
            registry=reg,
        )
        self._finished = Counter(
            "assay_jobs_finished",
            "Executions ended by this process's workers, by the status they wrote.",
            ["name", "status"],
            registry=reg,
        )
        self._retried = Counter(
            "assay_jobs_retried",
            "Executions that failed transiently and put their job back to PENDING for a retry.",
            ["name"],
            registry=reg,
        )
        self._rescued = Counter(
            "assay_jobs_rescued",
            "RUNNING jobs whose lease expired, by the status the rescuer gave them "
            "(PENDING: re-queued, FAILED: attempts spent).",
            ["name", "status"],
            registry=reg,
        )
        self._conflicts = Counter(
            "assay_jobs_lock_conflicts",
            "Exclusive jobs that found their lock key held: skip-policy duplicates cancelled "
            "at submit or claim, queue-policy claims deferred.",
            ["name", "on_conflict"],
            registry=reg,
        )
        reg.register(_StoreGauges(stats))

    # -- events --------------------------------------------------------------------------------

    def claimed(self, jobs: Iterable[Job], run_at_ms: Mapping[str, int]) -> None:
        """Observe the pickup latency of jobs just claimed (``run_at_ms`` by job id)."""
        for job in jobs:
            if job.started_at is None:
                continue
            runnable_s = max(job.created_at.timestamp(), run_at_ms.get(job.id, 0) / 1000)
            waited = max(job.started_at.timestamp() - runnable_s, 0.0)
            self._child(self._pickup, job.name).observe(waited)

    def ran(self, name: str, seconds: float) -> None:
        self._child(self._run, name).observe(seconds)

    def finished(self, name: str, status: JobStatus) -> None:
        """An execution's end was written; PENDING means it was re-queued for a retry."""
        if status == JobStatus.PENDING:
            self._child(self._retried, name).inc()
        else:
            self._child(self._finished, name, status.value).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: ``labels()`` checks and locks on every call, which
        was a tenth of a no-op job's cost in the worker (three calls per job)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def rescued(self, result: RescueResult) -> None:
        for job_id in result.requeued:
            self._rescued.labels(result.names[job_id], JobStatus.PENDING.value).inc()
        for job_id in result.failed:
            self._rescued.labels(result.names[job_id], JobStatus.FAILED.value).inc()

    def lock_conflict(self, name: str, on_conflict: str) -> None:
        self._conflicts.labels(name, on_conflict).inc()

    # -- exposition ----------------------------------------------------------------------------

    def expose(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics if ``accept`` asks) and its type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _StoreGauges:
    """Reads the database-derived gauges at scrape time; on a store error only
    ``assay_store_up`` (0) is reported."""

    def __init__(self, stats: Callable[[], JobStats]) -> None:
        self._stats = stats

    def describe(self) -> Sequence[Metric]:
        return [*self._families(), _up(1)]

    def collect(self) -> Iterable[Metric]:
        try:
            stats = self._stats()
        except StoreError:
            log.warning("metrics.store_failed", exc_info=True)
            return [_up(0)]
        stored, depth, oldest, waiting = self._families()
        names = set(stats.names) | {name for name, _ in stats.counts} | set(stats.queues)
        for (name, status), count in sorted(stats.counts.items()):
            stored.add_metric([name, status.value], count)
        for name in sorted(names):
            queue = stats.queues.get(name)
            depth.add_metric([name], queue.depth if queue else 0)
            oldest.add_metric([name], queue.oldest_age_s if queue else 0.0)
            waiting.add_metric([name], queue.waiting_for_lock if queue else 0)
        return [stored, depth, oldest, waiting, _up(1)]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "assay_jobs_stored",
                "PENDING and RUNNING jobs in the store, by name and status "
                "(finished jobs are counted by assay_jobs_finished).",
                labels=["name", "status"],
            ),
            GaugeMetricFamily(
                "assay_jobs_queue_depth",
                "PENDING jobs whose run_at has passed (runnable now).",
                labels=["name"],
            ),
            GaugeMetricFamily(
                "assay_jobs_queue_oldest_age_seconds",
                "How long the oldest runnable PENDING job has been runnable (0: none).",
                labels=["name"],
            ),
            GaugeMetricFamily(
                "assay_jobs_waiting_for_lock",
                "Runnable queue-policy PENDING jobs whose lock key another job holds.",
                labels=["name"],
            ),
        )


def _up(value: int) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "assay_store_up", "1 if the database-derived gauges could be read, else 0.", value=value
    )
