"""The online-scoring jobs and the leader services that start them and prune the ledger.

- ``assay.scoring.traces(experiment_id)`` and ``assay.scoring.sessions(experiment_id)`` score
  one experiment's due ledger rows (:class:`~assay.scoring.engine.ScoringEngine`). They run
  inline in the worker (they wait on judges, not on the CPU) and are exclusive on
  ``experiment_id``: at most one of each runs or waits per experiment, on any replica.
- :class:`ScoringScheduler` runs on the leader every ``scoring_interval_s``: for each
  (experiment, level) with rows due for an active scorer, it submits the job under the
  coalescing policy, so a job that is already queued or running absorbs the tick and nothing
  is stored (no CANCELED rows per tick).
- ``assay.scoring.backfill`` queues past traces for one scorer and follows them to the end.
- :class:`LedgerPruner` (leader) deletes the ledger rows of pairs decided without an
  assessment once they are older than ``scoring_retention_s``; the traces' pruner
  (:class:`TracePruner`), those older than ``trace_retention_s``.

:func:`install` adds all of this to a job registry; ``assay server`` and ``assay worker`` do.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from assay.config import Settings
from assay.errors import AssayError
from assay.jobs.context import JobContext, current_job
from assay.jobs.registry import JobSpec, Registry, job
from assay.jobs.services import Service
from assay.jobs.store import COALESCE, JobStore, NewJob
from assay.scoring.engine import RunStats, ScoringEngine
from assay.scoring.model import Level
from assay.scoring.service import BACKFILL_JOB, ScoringService
from assay.stores import Stores

__all__ = [
    "BACKFILL_JOB",
    "JOB_NAMES",
    "LedgerPruner",
    "ScoringScheduler",
    "TracePruner",
    "install",
]

log = logging.getLogger("assay.scoring")

JOB_NAMES = {Level.TRACE: "assay.scoring.traces", Level.SESSION: "assay.scoring.sessions"}
_ENQUEUE_CHUNK = 1000


def _engine(ctx: JobContext) -> ScoringEngine:
    """The scoring engine of the worker's backend: its pool and built scorers outlive a job."""
    store, settings, resources = ctx.store, ctx.settings, ctx.resources
    if store is None or settings is None or resources is None:
        raise AssayError("online scoring jobs run in an assay worker (inline executor)")
    return resources.get(
        "assay.scoring.engine",
        lambda: ScoringEngine(
            Stores.on(store, settings), settings, registry=store.metrics.registry
        ),
    )


def _run(experiment_id: str, level: Level) -> dict[str, Any]:
    ctx = current_job()

    def report(stats: RunStats) -> None:
        done = stats.scored + stats.filtered + stats.failed + stats.retrying
        ctx.progress(done, None, f"{stats.scored} scored, {stats.filtered} filtered out")

    stats = _engine(ctx).run(
        experiment_id,
        level,
        owner=f"{ctx.job_id}:{ctx.attempt}",
        cancelled=lambda: ctx.cancelled,
        progress=report,
    )
    return stats.to_dict()


def score_traces(experiment_id: str) -> dict[str, Any]:
    """Score the experiment's completed traces that are due."""
    return _run(experiment_id, Level.TRACE)


def score_sessions(experiment_id: str) -> dict[str, Any]:
    """Score the experiment's sessions that have been idle long enough."""
    return _run(experiment_id, Level.SESSION)


def backfill(experiment_id: str, scorer: str, start_ms: int, end_ms: int) -> dict[str, Any]:
    """Queue the past traces of [start_ms, end_ms) for ``scorer`` and wait until they are all
    scored (or filtered out or failed), reporting progress."""
    ctx = current_job()
    engine = _engine(ctx)
    assert ctx.settings is not None
    service = ScoringService(engine.stores, ctx.settings)
    plan = service.backfill_plan(experiment_id, scorer, start_ms, end_ms)
    cap = ctx.settings.backfill_max_traces
    if len(plan.trace_ids) > cap:
        raise AssayError(f"backfill would score {len(plan.trace_ids)} traces, over the cap {cap}")
    ids = plan.trace_ids
    total = len(ids)
    for start in range(0, total, _ENQUEUE_CHUNK):
        ctx.check_cancelled()
        engine.store.tasks_enqueue(experiment_id, scorer, ids[start : start + _ENQUEUE_CHUNK])
        ctx.progress(0, total, f"queued {min(start + _ENQUEUE_CHUNK, total)} of {total}")
    while True:
        left = engine.store.pending_among(experiment_id, scorer, ids)
        ctx.progress(total - left, total, f"{total - left} of {total} traces done")
        if left == 0:
            return {"queued": total}
        if ctx.wait_cancelled(1.0):
            ctx.check_cancelled()


class ScoringScheduler(Service):
    """Starts the scoring job of every (experiment, level) with work due (leader only)."""

    name = "scoring"

    def __init__(self, store: JobStore, settings: Settings) -> None:
        super().__init__(settings.scoring_interval_s)
        self.jobs = store
        self.scoring = Stores.on(store, settings).scoring
        self.timeout_s = settings.scoring_job_budget_s + settings.scoring_lease_s

    def tick(self) -> None:
        due = self.scoring.due_work()
        if due:
            self.jobs.jobs_insert([self._new_job(e, level) for e, level in due])

    def _new_job(self, experiment_id: str, level: Level) -> NewJob:
        fn = score_traces if level == Level.TRACE else score_sessions
        spec: JobSpec = fn.__assay_job__  # type: ignore[attr-defined]
        params = {"experiment_id": experiment_id}
        return NewJob(
            id=str(uuid.uuid4()),
            name=spec.name,
            params=params,
            max_retries=0,
            timeout_s=self.timeout_s,
            lock_key=spec.lock_key(params),
            on_conflict=COALESCE,
        )


class LedgerPruner(Service):
    """Deletes ledger rows decided without an assessment longer than ``scoring_retention_s``
    ago (leader only)."""

    name = "scoring-pruner"

    def __init__(self, store: JobStore, settings: Settings) -> None:
        super().__init__(settings.prune_interval_s)
        self.scoring = Stores.on(store, settings).scoring
        self.retention_s = settings.scoring_retention_s

    def tick(self) -> None:
        deleted = self.scoring.tasks_prune(self.retention_s)
        if deleted:
            log.info("scoring.pruned count=%s", deleted)


class TracePruner(Service):
    """Deletes traces that started longer than ``trace_retention_s`` ago, with their ledger
    rows (leader only; off while that setting is unset)."""

    name = "trace-pruner"

    def __init__(self, store: JobStore, settings: Settings) -> None:
        super().__init__(settings.prune_interval_s)
        self.traces = Stores.on(store, settings).traces
        self.retention_s = settings.trace_retention_s

    def tick(self) -> None:
        if self.retention_s is None:
            return
        deleted = self.traces.traces_prune(self.retention_s)
        if deleted:
            log.info("traces.pruned count=%s", deleted)


def install(registry: Registry) -> None:
    """Register the scoring jobs and the leader's services in ``registry``: the scoring
    scheduler, the ledger's pruner and the traces' (what scoring reads, pruned on the same
    leader)."""
    for name, fn, exclusive in (
        (JOB_NAMES[Level.TRACE], score_traces, ["experiment_id"]),
        (JOB_NAMES[Level.SESSION], score_sessions, ["experiment_id"]),
        (BACKFILL_JOB, backfill, ["experiment_id", "scorer"]),
    ):
        if name not in registry:
            job(name=name, executor="inline", exclusive=exclusive, registry=registry)(fn)
    registry.register_service("scoring", ScoringScheduler)
    registry.register_service("scoring-pruner", LedgerPruner)
    registry.register_service("trace-pruner", TracePruner)
