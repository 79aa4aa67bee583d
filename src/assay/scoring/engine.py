"""The scoring processor: claims due ledger rows of one experiment, scores them, commits.

One call of :meth:`ScoringEngine.run` is one online-scoring job (see :mod:`.jobs`): it loops
claim → score → commit until the experiment has nothing due, its time budget is spent or it is
cancelled. Every piece of work is committed as soon as it is done, so a crash loses at most the
work in progress, and that work is redone (once its lease expires) without duplicates: see
:mod:`assay.scoring.store` for why.

Heuristics run inline (microseconds each) and are committed with the batch that claimed them.
Judges, custom scorers and regexes (``slow``: their cost is their author's) run on a bounded
thread pool, ``scoring_concurrency`` calls at a time, as one group per scorer that is committed
on its own once its calls are done; until then the job claims no more rows of that scorer but
goes on with the others, so a slow scorer holds back no one's assessments but its own.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from assay.config import Settings
from assay.errors import (
    AssayError,
    JobCancelled,
    JudgeConfigError,
    JudgeOutputError,
    JudgeUnavailableError,
    ScorerTimeoutError,
)
from assay.scoring import kinds
from assay.scoring.model import Feedback, Level, ScoreManyFn, ScoringItem
from assay.scoring.store import (
    ACTIVE,
    FAILED,
    FILTERED,
    PAUSED,
    RETRYING,
    SOURCE_RUN_KEY,
    Done,
    Outcome,
    ScorerRecord,
    Task,
    TaskUpdate,
)
from assay.tracing.model import NewAssessment, Trace, assessment_row, default_idempotency_key

if TYPE_CHECKING:
    from assay.stores import Stores

__all__ = ["RunStats", "ScoringEngine", "session_key", "trace_key"]

log = logging.getLogger("assay.scoring")
T = TypeVar("T")

_MAX_REASON = 500
_OUTPUT_RETRIES = 2
_RETRY_BASE_MS = 5_000
_RETRY_MAX_MS = 300_000
BATCH_CALL_ITEMS = 50
"""Most items one call gets from a scorer that scores many at once (a custom scorer: one
sandbox per call)."""
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def trace_key(trace_id: str, scorer: ScorerRecord) -> str:
    """The idempotency key of a scorer's assessment on a trace."""
    return default_idempotency_key(trace_id, scorer.name, scorer.source_id)


def session_key(session_id: str, scorer: ScorerRecord) -> str:
    """The idempotency key of a session scorer's assessment (on the session's first trace)."""
    return default_idempotency_key(f"session:{session_id}", scorer.name, scorer.source_id)


@dataclass
class RunStats:
    """What one run did, by outcome."""

    claimed: int = 0
    scored: int = 0
    filtered: int = 0
    retrying: int = 0
    failed: int = 0
    released: int = 0
    paused: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Paused(Exception):
    """A judge refused its configuration: the scorer is paused, its batch given back."""


class ScoringMetrics:
    """Counters of what this process's scoring jobs decided, in the store's registry."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry or CollectorRegistry()
        self.decisions = Counter(
            "assay_scoring_decisions",
            "Ledger rows finished by this process's scoring jobs, by scorer and outcome "
            "(scored, filtered, retrying, failed, released).",
            ["scorer", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "assay_scoring_completion_to_assessment_seconds",
            "From a trace's completion (or a session's due time) to its assessment's commit.",
            ["scorer"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )


class ScoringEngine:
    """Scores the due ledger rows of experiments on one store. One per backend
    (kept in the backend's :class:`~assay.jobs.context.Resources`); thread-safe."""

    def __init__(
        self,
        stores: Stores,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.traces = stores.traces
        self.store = stores.scoring
        self.metrics = ScoringMetrics(registry)
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._pool = ThreadPoolExecutor(settings.scoring_concurrency, "assay-score")
        self._built: dict[tuple[str, str, int], kinds.Built] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- one job ----------------------------------------------------------------------------

    def run(
        self,
        experiment_id: str,
        level: Level,
        *,
        owner: str,
        cancelled: Callable[[], bool] = lambda: False,
        progress: Callable[[RunStats], None] = lambda stats: None,
        budget_s: float | None = None,
    ) -> RunStats:
        """Score due rows until none is left, ``budget_s`` is spent or ``cancelled()``; every
        group still running then is waited for and committed before this returns."""
        stats = RunStats()
        deadline = time.monotonic() + (budget_s or self.settings.scoring_job_budget_s)
        lease_ms = round(self.settings.scoring_lease_s * 1000)
        busy: dict[str, list[Future[list[Outcome]]]] = {}  # scorer → its calls on the pool

        def commit(outcomes: Sequence[Outcome]) -> None:
            if outcomes:
                self.store.tasks_finish(owner, outcomes)
                self._count(outcomes, stats)
                progress(stats)

        def commit_done(block: bool) -> None:
            """Commit each scorer group whose calls are all done (all of them, waiting)."""
            for name, group in list(busy.items()):
                if block or all(f.done() for f in group):
                    del busy[name]
                    commit([o for f in group for o in f.result()])

        while not cancelled() and time.monotonic() < deadline:
            commit_done(block=False)
            tasks = self.store.tasks_claim(
                experiment_id,
                level,
                owner,
                limit=self.settings.scoring_batch_size,
                lease_ms=lease_ms,
                skip=sorted(busy),
            )
            if tasks:
                stats.claimed += len(tasks)
                scorers = {s.name: s for s in self.store.scorers_list(experiment_id)}
                self._forget_stale(experiment_id, scorers.values())
                if level == Level.TRACE:
                    decided, calls = self._plan_traces(tasks, scorers)
                else:
                    decided, calls = self._plan_sessions(tasks, scorers)
                scored, pooled = self._run_all(calls, stats)
                commit([*decided, *scored])
                busy.update(pooled)
            elif busy:
                # Only busy scorers have work: wait for one to finish, or for rows of the
                # others to come due.
                futures = [f for group in busy.values() for f in group if not f.done()]
                wait(futures, self.settings.scoring_interval_s, FIRST_COMPLETED)
            else:
                break
        commit_done(block=True)
        return stats

    def _count(self, outcomes: Sequence[Outcome], stats: RunStats) -> None:
        now = self.clock_ms()
        for outcome in outcomes:
            name = outcome.task.scorer_name
            if isinstance(outcome, Done):
                stats.scored += 1
                label = "scored"
                started = outcome.started_ms
                if started is not None:
                    self.metrics.latency.labels(name).observe(max(now - started, 0) / 1000)
            elif outcome.state == FILTERED:
                stats.filtered += 1
                label = "filtered"
            elif outcome.state == RETRYING:
                stats.retrying += 1
                label = "retrying"
            elif outcome.state == FAILED:
                stats.failed += 1
                label = "failed"
            else:
                stats.released += 1
                label = "released"
            self.metrics.decisions.labels(name, label).inc()

    # -- traces -----------------------------------------------------------------------------

    def _score_traces(
        self, tasks: Sequence[Task], scorers: dict[str, ScorerRecord], stats: RunStats
    ) -> list[Outcome]:
        """Every outcome of a batch of trace rows, waiting for the slow scorers."""
        decided, calls = self._plan_traces(tasks, scorers)
        scored, pooled = self._run_all(calls, stats)
        return [
            *decided,
            *scored,
            *(o for group in pooled.values() for f in group for o in f.result()),
        ]

    def _plan_traces(
        self, tasks: Sequence[Task], scorers: dict[str, ScorerRecord]
    ) -> tuple[list[Outcome], list[_Call]]:
        """What is decided without a scorer call (filtered out, gone, scorer inactive), and
        the calls to make."""
        found = {t.trace_id: t for t in self.traces.traces_get_many(_ids(tasks))}
        outcomes: list[Outcome] = []
        work: list[tuple[Task, ScorerRecord, Trace]] = []
        for name, group in _grouped(tasks, lambda t: t.scorer_name).items():
            scorer = scorers.get(name)
            if scorer is None or scorer.status != ACTIVE:
                outcomes.extend(TaskUpdate(t, None) for t in group)
                continue
            matched = self.traces.traces_matching(
                [t.target_id for t in group if t.target_id in found], scorer.filter_string
            )
            for task in group:
                trace = found.get(task.target_id)
                if trace is None:
                    outcomes.append(TaskUpdate(task, FAILED, "the trace no longer exists"))
                elif SOURCE_RUN_KEY in trace.metadata:
                    outcomes.append(TaskUpdate(task, FILTERED, "trace of an evaluation run"))
                elif task.target_id not in matched:
                    outcomes.append(
                        TaskUpdate(task, FILTERED, f"filtered out by {scorer.filter_string!r}")
                    )
                else:
                    work.append((task, scorer, trace))
        spans = self._spans_for(work)
        items: dict[str, ScoringItem] = {}
        for _, _, trace in work:  # one item per trace, shared by its scorers
            if trace.trace_id not in items:
                view = _trace_view(trace)
                if trace.trace_id in spans:
                    view["spans"] = spans[trace.trace_id]
                items[trace.trace_id] = ScoringItem(trace.request, trace.response, view)
        calls = [
            _Call(
                task,
                scorer,
                items[trace.trace_id],
                trace.trace_id,
                trace_key(trace.trace_id, scorer),
                trace.completed_at_ms,
            )
            for task, scorer, trace in work
        ]
        return outcomes, calls

    def _spans_for(self, work: Sequence[tuple[Task, ScorerRecord, Trace]]) -> dict[str, Any]:
        wanted = sorted(
            {trace.trace_id for _, scorer, trace in work if self._build(scorer).needs_spans}
        )
        return {
            trace_id: [asdict(span) for span in self.traces.spans_list(trace_id)]
            for trace_id in wanted
        }

    # -- sessions ---------------------------------------------------------------------------

    def _plan_sessions(
        self, tasks: Sequence[Task], scorers: dict[str, ScorerRecord]
    ) -> tuple[list[Outcome], list[_Call]]:
        outcomes: list[Outcome] = []
        calls: list[_Call] = []
        idle_ms = round(self.settings.session_idle_s * 1000)
        for task in tasks:
            scorer = scorers.get(task.scorer_name)
            if scorer is None or scorer.status != ACTIVE:
                outcomes.append(TaskUpdate(task, None))
                continue
            ids = self.traces.session_trace_ids(task.experiment_id, task.target_id)
            session = [
                t for t in self.traces.traces_get_many(ids) if SOURCE_RUN_KEY not in t.metadata
            ]
            if not session:
                outcomes.append(TaskUpdate(task, FILTERED, "no traces outside evaluation runs"))
            elif any(t.completed_at_ms is None for t in session):
                # A turn is still running: the session is not idle yet.
                outcomes.append(TaskUpdate(task, None, delay_ms=idle_ms))
            elif not self.traces.traces_matching(
                [t.trace_id for t in session], scorer.filter_string
            ):
                outcomes.append(
                    TaskUpdate(task, FILTERED, f"no trace matches {scorer.filter_string!r}")
                )
            else:
                item = ScoringItem(
                    inputs=[t.request for t in session],
                    outputs=[t.response for t in session],
                    trace={
                        "session_id": task.target_id,
                        "traces": [_trace_view(t) for t in session],
                    },
                )
                # The result goes on the session's first trace (and leaves any other).
                first, others = session[0].trace_id, tuple(t.trace_id for t in session[1:])
                key = session_key(task.target_id, scorer)
                calls.append(_Call(task, scorer, item, first, key, None, others))
        return outcomes, calls

    # -- running scorers --------------------------------------------------------------------

    def _run_all(
        self, calls: Sequence[_Call], stats: RunStats
    ) -> tuple[list[Outcome], dict[str, list[Future[list[Outcome]]]]]:
        """Score the fast scorers' items here, and start the slow ones' on the pool: one pool
        task per item, or per chunk of up to ``BATCH_CALL_ITEMS`` items for scorers that score
        many in one call (a sandbox per chunk, not per item). Returns the fast outcomes, and
        each slow scorer's pool tasks. A scorer paused on the way has the rest of its items
        given back."""
        paused: set[str] = set()

        def run(chunk: Sequence[_Call]) -> list[Outcome]:
            scorer = chunk[0].scorer
            if scorer.name in paused:
                return [TaskUpdate(c.task, None) for c in chunk]
            built = self._build(scorer)
            if built.many is not None:
                results = _call_many(built.many, [c.item for c in chunk])
            else:
                results = [_call(built.fn, c.item) for c in chunk]
            try:
                return [self._outcome(c, built, r) for c, r in zip(chunk, results, strict=True)]
            except _Paused as exc:
                with self._lock:
                    if scorer.name not in paused:
                        paused.add(scorer.name)
                        self._pause(scorer, str(exc), stats)
                return [TaskUpdate(c.task, None) for c in chunk]

        inline: list[list[_Call]] = []
        pooled: dict[str, list[Future[list[Outcome]]]] = {}
        for name, group in _grouped(calls, lambda c: c.scorer.name).items():
            built = self._build(group[0].scorer)
            if not built.slow:
                inline += [[c] for c in group]
                continue
            size = 1 if built.many is None else BATCH_CALL_ITEMS
            chunks = [group[i : i + size] for i in range(0, len(group), size)]
            pooled[name] = [self._pool.submit(run, chunk) for chunk in chunks]
        return [o for chunk in inline for o in run(chunk)], pooled

    def _outcome(self, call: _Call, built: kinds.Built, result: Feedback | Exception) -> Outcome:
        """What one scorer call's result (or error) means for its ledger row."""
        task = call.task
        if isinstance(result, Exception):
            exc = result
            if isinstance(exc, JudgeConfigError):
                raise _Paused(str(exc)) from exc
            if isinstance(exc, JudgeUnavailableError):
                return self._retry(task, str(exc), exc.retry_after_s)
            if isinstance(exc, JudgeOutputError):
                if task.attempts < _OUTPUT_RETRIES:
                    return self._retry(task, str(exc), None)
                return TaskUpdate(task, FAILED, _reason(exc))
            if isinstance(exc, JobCancelled):
                return TaskUpdate(task, None)
            if isinstance(exc, ScorerTimeoutError) and not exc.ran:
                # Not run: an earlier item of its chunk timed out. Again later, a few times.
                if task.attempts < _OUTPUT_RETRIES:
                    return self._retry(task, str(exc), None)
                return TaskUpdate(
                    task, FAILED, _reason(f"gave up after {task.attempts + 1} attempts: {exc}")
                )
            # A scorer's own bug: the same input would fail again.
            if not isinstance(exc, AssayError):
                log.warning("scoring.scorer_error scorer=%s", call.scorer.name, exc_info=exc)
            return TaskUpdate(task, FAILED, _reason(exc))
        try:
            # Validated here: a value that cannot be stored fails this item, not the batch.
            row = assessment_row(_assessment(call.scorer, built, result, call.trace_id, call.key))
        except Exception as exc:
            return TaskUpdate(task, FAILED, _reason(exc))
        return Done(task, row, call.replaces_on, call.started_ms)

    def _retry(self, task: Task, reason: str, retry_after_s: float | None) -> TaskUpdate:
        """Again later, with exponential backoff and jitter, until the row is too old."""
        age_ms = self.clock_ms() - task.created_at_ms
        if age_ms > self.settings.scoring_retry_max_age_s * 1000:
            return TaskUpdate(
                task, FAILED, _reason(f"gave up after {task.attempts + 1} attempts: {reason}")
            )
        delay = min(_RETRY_BASE_MS * 2**task.attempts, _RETRY_MAX_MS)
        delay = round(delay * random.uniform(0.5, 1.5))
        if retry_after_s is not None:
            delay = max(delay, round(retry_after_s * 1000))
        return TaskUpdate(task, RETRYING, _reason(reason), delay_ms=delay)

    def _pause(self, scorer: ScorerRecord, reason: str, stats: RunStats) -> None:
        log.warning("scoring.paused scorer=%s reason=%s", scorer.name, reason)
        stats.paused.append(scorer.name)
        self.store.scorer_set_status(scorer.experiment_id, scorer.name, PAUSED, _reason(reason))

    def _forget_stale(self, experiment_id: str, current: Iterable[ScorerRecord]) -> None:
        """Drop built scorers of the experiment that were replaced by a new version or
        deleted, so that a long-lived worker does not keep every judge client it ever made."""
        live = {(experiment_id, s.name, s.version) for s in current}
        with self._lock:
            for key in [k for k in self._built if k[0] == experiment_id and k not in live]:
                del self._built[key]

    def _build(self, scorer: ScorerRecord) -> kinds.Built:
        key = (scorer.experiment_id, scorer.name, scorer.version)
        with self._lock:
            built = self._built.get(key)
            if built is None:
                built = self._built[key] = kinds.build(
                    scorer.kind, scorer.definition, self.settings
                )
            return built


def _assessment(
    scorer: ScorerRecord, built: kinds.Built, feedback: Feedback, trace_id: str, key: str
) -> NewAssessment:
    return NewAssessment(
        trace_id=trace_id,
        name=scorer.name,
        value=feedback.value,
        rationale=feedback.rationale,
        source_type=built.source_type,
        source_id=scorer.source_id,
        metadata={
            **feedback.metadata,
            "scorer_kind": scorer.kind,
            "scorer_version": scorer.version,
        },
        idempotency_key=key,
    )


def _trace_view(trace: Trace) -> dict[str, Any]:
    """The trace summary as a dict (shallow: scorers read it, never change it)."""
    view = {f.name: getattr(trace, f.name) for f in fields(trace)}
    view["status"] = trace.status.value
    return view


@dataclass(frozen=True)
class _Call:
    """One scorer call to make: the item, and where its assessment goes."""

    task: Task
    scorer: ScorerRecord
    item: ScoringItem
    trace_id: str
    key: str
    started_ms: int | None
    replaces_on: tuple[str, ...] = ()


def _call(fn: Callable[[ScoringItem], Feedback], item: ScoringItem) -> Feedback | Exception:
    try:
        return fn(item)
    except Exception as exc:
        return exc


def _call_many(many: ScoreManyFn, items: Sequence[ScoringItem]) -> list[Feedback | Exception]:
    try:
        results = many(items)
    except Exception as exc:
        return [exc] * len(items)
    if len(results) != len(items):
        error = AssayError(f"the scorer returned {len(results)} results for {len(items)} items")
        return [error] * len(items)
    return results


def _ids(tasks: Sequence[Task]) -> list[str]:
    return sorted({t.target_id for t in tasks})


def _grouped(items: Iterable[T], key: Callable[[T], str]) -> dict[str, list[T]]:
    groups: dict[str, list[T]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return groups


def _reason(error: object) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:_MAX_REASON]
