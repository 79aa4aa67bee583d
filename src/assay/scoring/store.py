"""The scoring store: every SQL statement about scorers and the scoring ledger lives here.

The ledger (``scoring_tasks``) is what makes online scoring exact:

- A row per (trace, scorer) is inserted **in the ingest transaction that completes the trace**,
  for every scorer (active or paused) whose sample holds the trace. A trace that is complete is
  therefore either in the ledger or already scored; nothing depends on clocks, polling windows
  or checkpoints, so late, long-running and bursty traces cannot be skipped.
- A row per (session, scorer) is upserted by every ingest that touches the session, with
  ``due_at`` pushed to now + the idle timeout and ``generation`` bumped.
- Processors claim due rows in batches (``FOR UPDATE SKIP LOCKED`` where the database has it)
  and take a lease on them. The assessment is written with a deterministic idempotency key
  (an upsert on the unique (trace_id, idempotency_key)) **in the same transaction** that deletes
  the row, guarded by the lease owner and the generation. A crash before that commit leaves the
  row to be claimed again when the lease expires; a crash after it leaves nothing to redo; two
  processors that both score a row (a lease that expired under a slow judge) write the same key,
  so the second write replaces the first: never two assessments.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from assay import jsonvalue
from assay.db.base import SqlStore
from assay.db.dialects import MYSQL
from assay.db.tables import (
    SCORING_DECIDED,
    assessments,
    experiments,
    scorers,
    scoring_tasks,
    traces,
)
from assay.errors import NotFoundError
from assay.scoring.model import Level
from assay.scoring.sampler import sampled
from assay.tracing.listener import Completed
from assay.tracing.model import ASSESSMENT_UPDATES
from assay.util import chunks

__all__ = [
    "SOURCE_RUN_KEY",
    "Done",
    "Outcome",
    "ScorerRecord",
    "ScoringStore",
    "Task",
    "TaskUpdate",
]

_CHUNK = 500
SOURCE_RUN_KEY = "assay.source_run"
"""Trace metadata naming the evaluation run that produced a trace: never scored online."""

PENDING, FAILED, FILTERED = "PENDING", "FAILED", "FILTERED"
RETRYING = "RETRYING"
"""An outcome, not a stored state: the row stays PENDING, due later, with one more attempt
(one open state lets the claim walk its index in due order)."""
ACTIVE, PAUSED, STOPPED = "ACTIVE", "PAUSED", "STOPPED"


@dataclass(frozen=True)
class ScorerRecord:
    """A scorer as registered on an experiment."""

    experiment_id: str
    name: str
    kind: str
    level: Level
    version: int
    definition: dict[str, Any]
    sample_rate: float
    filter_string: str | None
    status: str
    status_reason: str | None
    created_at_ms: int
    updated_at_ms: int

    @property
    def source_id(self) -> str:
        """The assessment source id of this scorer's results."""
        return f"scorer:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id,
            "name": self.name,
            "scorer": {
                "kind": self.kind,
                "level": self.level.value,
                "version": self.version,
                "definition": self.definition,
            },
            "sample_rate": self.sample_rate,
            "filter_string": self.filter_string,
            "status": self.status,
            "status_reason": self.status_reason,
            "created_at_ms": self.created_at_ms,
            "updated_at_ms": self.updated_at_ms,
        }


@dataclass(frozen=True)
class Task:
    """One claimed ledger row."""

    id: int
    experiment_id: str
    level: Level
    target_id: str
    scorer_name: str
    generation: int
    attempts: int
    created_at_ms: int


@dataclass(frozen=True)
class Done:
    """Scored: write the assessment ``row`` and delete the task. ``replaces_on`` lists traces
    whose assessment with the same key must go (a session's result moves to its first
    trace)."""

    task: Task
    row: dict[str, Any]
    """The assessment to write, as :func:`~assay.tracing.model.assessment_row` made it."""
    replaces_on: tuple[str, ...] = ()
    started_ms: int | None = None
    """When the wait for this result began (the trace's completion), for the latency metric."""


@dataclass(frozen=True)
class TaskUpdate:
    """Any other end of one attempt: ``state`` FILTERED or FAILED (terminal, kept with
    ``reason`` for the decision log), RETRYING (again after ``delay_ms``, one more attempt), or
    None (give the lease back, due again after ``delay_ms``, attempts unchanged)."""

    task: Task
    state: str | None
    reason: str | None = None
    delay_ms: int = 0


Outcome = Done | TaskUpdate


@dataclass(frozen=True)
class Decision:
    """What the ledger says about one (trace, scorer): its row, if any."""

    scorer_name: str
    level: Level
    state: str
    attempts: int
    last_error: str | None
    due_at_ms: int
    leased: bool


class ScoringStore(SqlStore):
    """Scorers and the scoring ledger of one database."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        self._upsert_assessment = self._upsert_statement(
            assessments, ["trace_id", "idempotency_key"], ASSESSMENT_UPDATES
        )
        insert = self._insert(scoring_tasks)
        self._insert_trace_task = (
            insert.prefix_with("IGNORE")
            if self.dialect == MYSQL
            else insert.on_conflict_do_nothing()
        )
        new = insert.inserted if self.dialect == MYSQL else insert.excluded
        touched = {
            "due_at_ms": new.due_at_ms,
            "state": PENDING,
            "attempts": 0,
            "generation": scoring_tasks.c.generation + 1,
            "last_error": None,
            "updated_at_ms": new.updated_at_ms,
        }
        if self.dialect == MYSQL:
            self._touch_session_task = insert.on_duplicate_key_update(touched)
        else:
            self._touch_session_task = insert.on_conflict_do_update(
                index_elements=["experiment_id", "level", "target_id", "scorer_name"],
                set_=touched,
            )

    # -- scorers -----------------------------------------------------------------------------

    def scorer_put(
        self,
        experiment_id: str,
        name: str,
        *,
        kind: str,
        level: Level,
        definition: Mapping[str, Any],
        sample_rate: float,
        filter_string: str | None,
    ) -> ScorerRecord:
        """Create or replace a scorer; it becomes ACTIVE (a PUT resumes a paused scorer). The
        version goes up by one whenever kind, level or definition change.
        :class:`InvalidRequestError` for a definition that is not plain JSON, or text no
        database column can hold."""
        _check_ids(experiment_id, name)
        if filter_string is not None:
            jsonvalue.check_text(filter_string, "filter_string")
        jsonvalue.check(definition, "scorer definition")
        text = json.dumps(definition, sort_keys=True, separators=(",", ":"))

        def body(conn: sa.Connection) -> ScorerRecord:
            self._lock_experiment(conn, experiment_id)
            now = int(conn.execute(sa.select(self._now)).scalar_one())
            key = (scorers.c.experiment_id == experiment_id) & (scorers.c.name == name)
            old = conn.execute(sa.select(scorers).where(key).with_for_update()).first()
            values = {
                "kind": kind,
                "level": level.value,
                "definition": text,
                "sample_rate": float(sample_rate),
                "filter_string": filter_string,
                "status": ACTIVE,
                "status_reason": None,
                "updated_at_ms": now,
            }
            if old is None:
                conn.execute(
                    scorers.insert().values(
                        experiment_id=experiment_id,
                        name=name,
                        version=1,
                        created_at_ms=now,
                        **values,
                    )
                )
            else:
                same = (old.kind, old.level, old.definition) == (kind, level.value, text)
                values["version"] = old.version if same else old.version + 1
                conn.execute(scorers.update().where(key).values(**values))
            return _to_scorer(conn.execute(sa.select(scorers).where(key)).one())

        return self._tx(body)

    def scorer_get(self, experiment_id: str, name: str) -> ScorerRecord | None:
        _check_ids(experiment_id, name)
        key = (scorers.c.experiment_id == experiment_id) & (scorers.c.name == name)
        row = self._tx(
            lambda conn: conn.execute(sa.select(scorers).where(key)).first(), write=False
        )
        return None if row is None else _to_scorer(row)

    def scorers_list(self, experiment_id: str) -> list[ScorerRecord]:
        _check_ids(experiment_id)
        query = (
            sa.select(scorers)
            .where(scorers.c.experiment_id == experiment_id)
            .order_by(scorers.c.name)
        )
        return self._tx(lambda conn: [_to_scorer(row) for row in conn.execute(query)], write=False)

    def scorer_set_status(
        self, experiment_id: str, name: str, status: str, reason: str | None = None
    ) -> ScorerRecord | None:
        """Pause, stop or resume a scorer. Stopping drops its pending ledger rows (a stopped
        scorer scores nothing more); pausing keeps them, so a resumed scorer catches up."""
        _check_ids(experiment_id, name)
        key = (scorers.c.experiment_id == experiment_id) & (scorers.c.name == name)

        def body(conn: sa.Connection) -> ScorerRecord | None:
            if not self._lock_experiment(conn, experiment_id, missing_ok=True):
                return None
            now = int(conn.execute(sa.select(self._now)).scalar_one())
            updated = conn.execute(
                scorers.update()
                .where(key)
                .values(status=status, status_reason=reason, updated_at_ms=now)
            )
            if updated.rowcount == 0:
                return None
            if status == STOPPED:
                self._drop_tasks(conn, experiment_id, name)
            return _to_scorer(conn.execute(sa.select(scorers).where(key)).one())

        return self._tx(body)

    def scorer_delete(self, experiment_id: str, name: str) -> bool:
        """Delete a scorer and its ledger rows; its assessments stay."""
        _check_ids(experiment_id, name)
        key = (scorers.c.experiment_id == experiment_id) & (scorers.c.name == name)

        def body(conn: sa.Connection) -> bool:
            if not self._lock_experiment(conn, experiment_id, missing_ok=True):
                return False
            self._drop_tasks(conn, experiment_id, name)
            return bool(conn.execute(scorers.delete().where(key)).rowcount == 1)

        return self._tx(body)

    def _lock_experiment(
        self, conn: sa.Connection, experiment_id: str, *, missing_ok: bool = False
    ) -> bool:
        """Lock the experiment's row exclusively for the rest of a scorer change. An ingest
        holds it shared while it reads the experiment's scorers and fills the ledger (see
        ``TraceStore._check_experiments``), so the change waits for ingests in flight and the
        ones after it see it. Taken before the change reads the clock, so a trace stamped
        complete after ``created_at_ms`` was filled with the scorer in place."""
        query = sa.select(experiments.c.id).where(experiments.c.id == experiment_id)
        if conn.execute(query.with_for_update()).first() is not None:
            return True
        if missing_ok:
            return False
        raise NotFoundError(f"experiment {experiment_id!r} not found")

    def _drop_tasks(self, conn: sa.Connection, experiment_id: str, name: str) -> None:
        conn.execute(
            scoring_tasks.delete().where(
                scoring_tasks.c.experiment_id == experiment_id,
                scoring_tasks.c.scorer_name == name,
                scoring_tasks.c.state == PENDING,
            )
        )

    # -- filling the ledger (called inside the ingest transaction) ----------------------------

    def on_ingest(
        self, conn: sa.Connection, now: int, items: Sequence[Completed], idle_ms: int
    ) -> None:
        """Ledger rows for the traces an ingest completed and the sessions it touched."""
        experiment_ids = sorted({item.experiment_id for item in items})
        found: dict[str, list[Any]] = {}
        query = sa.select(
            scorers.c.experiment_id, scorers.c.name, scorers.c.level, scorers.c.sample_rate
        ).where(
            scorers.c.experiment_id.in_(sa.bindparam("ids", expanding=True)),
            scorers.c.status != STOPPED,
        )
        for chunk in chunks(experiment_ids, _CHUNK):
            for row in conn.execute(query, {"ids": list(chunk)}):
                found.setdefault(row.experiment_id, []).append(row)
        if not found:
            return
        trace_rows: list[dict[str, Any]] = []
        session_rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        for item in items:
            if SOURCE_RUN_KEY in item.metadata:
                continue
            for scorer in found.get(item.experiment_id, ()):
                if scorer.level == Level.TRACE.value:
                    if item.complete and sampled(item.trace_id, scorer.sample_rate):
                        trace_rows.append(
                            _task_row(
                                item.experiment_id,
                                Level.TRACE,
                                item.trace_id,
                                scorer.name,
                                now,
                                now,
                            )
                        )
                elif item.session_id and sampled(item.session_id, scorer.sample_rate):
                    key = (item.experiment_id, item.session_id, scorer.name)
                    session_rows[key] = _task_row(
                        item.experiment_id,
                        Level.SESSION,
                        item.session_id,
                        scorer.name,
                        now + idle_ms,
                        now,
                    )
        if trace_rows:
            conn.execute(self._insert_trace_task, trace_rows)
        if session_rows:
            conn.execute(self._touch_session_task, [session_rows[k] for k in sorted(session_rows)])

    def on_prune(self, conn: sa.Connection, experiment_id: str, trace_ids: Sequence[str]) -> None:
        """The ledger rows of traces being pruned go with them (a session's row stays: its
        other traces may still be there)."""
        t = scoring_tasks
        for chunk in chunks(trace_ids, _CHUNK):
            conn.execute(
                t.delete().where(
                    t.c.experiment_id == experiment_id,
                    t.c.level == Level.TRACE.value,
                    t.c.target_id.in_(chunk),
                )
            )

    def tasks_enqueue(self, experiment_id: str, scorer_name: str, trace_ids: Sequence[str]) -> int:
        """Backfill: ledger rows for ``trace_ids``, due now. A row that ended FAILED or
        FILTERED is made PENDING again; one that is pending already stays as it is."""

        def body(conn: sa.Connection) -> int:
            now = int(conn.execute(sa.select(self._now)).scalar_one())
            for chunk in chunks(trace_ids, _CHUNK):
                conn.execute(
                    scoring_tasks.update()
                    .where(
                        scoring_tasks.c.experiment_id == experiment_id,
                        scoring_tasks.c.level == Level.TRACE.value,
                        scoring_tasks.c.scorer_name == scorer_name,
                        scoring_tasks.c.target_id.in_(chunk),
                        scoring_tasks.c.state.in_([FAILED, FILTERED]),
                    )
                    .values(
                        state=PENDING, attempts=0, due_at_ms=now, last_error=None, updated_at_ms=now
                    )
                )
                rows = [
                    _task_row(experiment_id, Level.TRACE, t, scorer_name, now, now) for t in chunk
                ]
                if rows:
                    conn.execute(self._insert_trace_task, rows)
            return len(trace_ids)

        return self._tx(body)

    # -- processing ---------------------------------------------------------------------------

    def due_work(self) -> list[tuple[str, Level]]:
        """(experiment, level) pairs with ledger rows due now for an ACTIVE scorer: one
        EXISTS probe of the claim index per active scorer, so the cost follows the number of
        scorers, not the length of the ledger."""
        t = scoring_tasks
        now = self._now
        due = (
            sa.select(t.c.id)
            .where(
                t.c.experiment_id == scorers.c.experiment_id,
                t.c.level == scorers.c.level,
                t.c.state == PENDING,
                t.c.due_at_ms <= now,
                t.c.scorer_name == scorers.c.name,
                sa.or_(t.c.lease_until_ms.is_(None), t.c.lease_until_ms < now),
            )
            .exists()
        )
        query = (
            sa.select(scorers.c.experiment_id, scorers.c.level)
            .where(scorers.c.status == ACTIVE, due)
            .distinct()
        )
        rows = self._tx(lambda conn: conn.execute(query).all(), write=False)
        return sorted((row.experiment_id, Level(row.level)) for row in rows)

    def tasks_claim(
        self,
        experiment_id: str,
        level: Level,
        owner: str,
        *,
        limit: int,
        lease_ms: int,
        skip: Sequence[str] = (),
    ) -> list[Task]:
        """Lease up to ``limit`` due rows of the experiment's ACTIVE scorers, oldest first
        (none of the scorers named in ``skip``: the caller is still busy with their rows).

        The only place ledger rows are picked. ``FOR UPDATE SKIP LOCKED`` (PostgreSQL,
        MariaDB/MySQL) gives concurrent claimers disjoint rows; SQLite serialises claims in its
        write transaction. Rows leased by someone else are taken only once the lease expired
        (its holder died or stalled): then both may score it, and the idempotency key makes
        the second write a replacement.

        Each scorer's oldest rows are read from its own range of ``ix_scoring_tasks_claim``
        (at most ``limit`` each), and the oldest ``limit`` of them are leased: the cost follows
        the number of scorers, never the backlog of a paused one (the rows read and not leased
        are let go at commit)."""
        t = scoring_tasks

        def body(conn: sa.Connection) -> list[Task]:
            now = int(conn.execute(sa.select(self._now)).scalar_one())
            names = (
                conn.execute(
                    sa.select(scorers.c.name).where(
                        scorers.c.experiment_id == experiment_id,
                        scorers.c.level == level.value,
                        scorers.c.status == ACTIVE,
                    )
                )
                .scalars()
                .all()
            )
            names = [name for name in names if name not in skip]
            if not names:
                return []
            query = (
                sa.select(
                    t.c.id,
                    t.c.target_id,
                    t.c.scorer_name,
                    t.c.generation,
                    t.c.attempts,
                    t.c.created_at_ms,
                    t.c.due_at_ms,
                )
                .where(
                    t.c.experiment_id == experiment_id,
                    t.c.level == level.value,
                    t.c.state == PENDING,
                    t.c.due_at_ms <= now,
                    t.c.scorer_name == sa.bindparam("name"),
                    sa.or_(t.c.lease_until_ms.is_(None), t.c.lease_until_ms < now),
                )
                .order_by(t.c.due_at_ms)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            found = [row for name in sorted(names) for row in conn.execute(query, {"name": name})]
            rows = sorted(found, key=lambda r: (r.due_at_ms, r.id))[:limit]
            if not rows:
                return []
            for chunk in chunks([r.id for r in rows], _CHUNK):
                conn.execute(
                    t.update()
                    .where(t.c.id.in_(chunk))
                    .values(lease_owner=owner, lease_until_ms=now + lease_ms)
                )
            return [
                Task(
                    id=r.id,
                    experiment_id=experiment_id,
                    level=level,
                    target_id=r.target_id,
                    scorer_name=r.scorer_name,
                    generation=r.generation,
                    attempts=r.attempts,
                    created_at_ms=r.created_at_ms,
                )
                for r in rows
            ]

        return self._tx(body)

    def tasks_finish(self, owner: str, outcomes: Sequence[Outcome]) -> None:
        """Apply the outcomes of one batch in one transaction: write the assessments of the
        scored rows and delete those rows, move the others to their new state. Every change
        is guarded by the lease owner and the generation claimed, and made set-wise: one
        statement per (change, generation), not one per row."""
        t = scoring_tasks
        done = [o for o in outcomes if isinstance(o, Done)]
        updates = [o for o in outcomes if isinstance(o, TaskUpdate)]

        deleted: dict[int, list[int]] = {}
        for o in done:
            deleted.setdefault(o.task.generation, []).append(o.task.id)
        changes: dict[tuple[int, str | None, str | None, int], list[int]] = {}
        for u in updates:
            key = (u.task.generation, u.state, u.reason, u.delay_ms)
            changes.setdefault(key, []).append(u.task.id)

        def body(conn: sa.Connection) -> None:
            now = int(conn.execute(sa.select(self._now)).scalar_one())
            for o in done:
                if o.replaces_on:
                    conn.execute(
                        assessments.delete().where(
                            assessments.c.trace_id.in_(list(o.replaces_on)),
                            assessments.c.idempotency_key == o.row["idempotency_key"],
                        )
                    )
            if done:
                conn.execute(
                    self._upsert_assessment,
                    [{**o.row, "created_at_ms": now, "updated_at_ms": now} for o in done],
                )
            for generation, ids in deleted.items():
                for chunk in chunks(ids, _CHUNK):
                    conn.execute(
                        t.delete().where(
                            t.c.id.in_(chunk),
                            t.c.lease_owner == owner,
                            t.c.generation == generation,
                        )
                    )
            for (generation, state, reason, delay), ids in changes.items():
                values: dict[str, Any] = {
                    "due_at_ms": now + delay,
                    "lease_owner": None,
                    "lease_until_ms": None,
                    "updated_at_ms": now,
                }
                if state is not None:  # None: only give the lease back
                    values["state"] = PENDING if state == RETRYING else state
                    values["last_error"] = reason
                if state == RETRYING:
                    values["attempts"] = t.c.attempts + 1
                for chunk in chunks(ids, _CHUNK):
                    conn.execute(
                        t.update()
                        .where(
                            t.c.id.in_(chunk),
                            t.c.lease_owner == owner,
                            t.c.generation == generation,
                        )
                        .values(values)
                    )
            # A session touched while it was being scored kept its row (another generation):
            # give the lease back so it is scored again when due.
            touched = [o.task.id for o in outcomes if o.task.level == Level.SESSION]
            for chunk in chunks(touched, _CHUNK):
                conn.execute(
                    t.update()
                    .where(t.c.id.in_(chunk), t.c.lease_owner == owner)
                    .values(lease_owner=None, lease_until_ms=None)
                )

        self._tx(body)

    # -- pruning ------------------------------------------------------------------------------

    # -- results, for the UI ------------------------------------------------------------------

    def latest_values(
        self, trace_ids: Sequence[str], names: Sequence[str]
    ) -> dict[tuple[str, str], str]:
        """``(trace_id, name) -> stored value`` of the latest assessment of that name, in one
        query (a trace page's scorer columns)."""
        if not trace_ids or not names:
            return {}
        query = (
            sa.select(assessments.c.trace_id, assessments.c.name, assessments.c.value)
            .where(assessments.c.trace_id.in_(trace_ids), assessments.c.name.in_(names))
            .order_by(assessments.c.created_at_ms, assessments.c.updated_at_ms)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {(row.trace_id, row.name): row.value for row in rows}

    def value_counts(
        self, experiment_id: str, names: Sequence[str], since_ms: int, bucket_ms: int
    ) -> list[tuple[str, int, str, int]]:
        """``(name, bucket start, stored value, count)`` of the experiment's assessments named
        ``names`` since ``since_ms``, counted per ``bucket_ms`` in SQL so the rows read stay
        few however many traces were scored (the scorers' charts)."""
        if not names:
            return []
        offset = assessments.c.created_at_ms - since_ms
        start = (offset - offset % bucket_ms).label("start")
        query = (
            sa.select(assessments.c.name, start, assessments.c.value, sa.func.count().label("n"))
            .join(traces, traces.c.trace_id == assessments.c.trace_id)
            .where(
                traces.c.experiment_id == experiment_id,
                assessments.c.name.in_(names),
                assessments.c.created_at_ms >= since_ms,
            )
            .group_by(assessments.c.name, start, assessments.c.value)
        )
        with self.engine.connect() as conn:
            return [(r.name, since_ms + int(r.start), r.value, r.n) for r in conn.execute(query)]

    def tasks_prune(self, older_than_s: float, *, batch: int = 1000) -> int:
        """Delete the rows of pairs decided (FILTERED or FAILED) more than ``older_than_s``
        ago, ``batch`` rows per transaction; returns how many. Scored pairs have no row left
        (it goes with its assessment's write), and pending ones are never touched. A decided
        row's ``due_at_ms`` is its decision time, so ``ix_scoring_tasks_decided`` finds them
        (its predicate, written as the index has it, so every database matches the two)."""
        t = scoring_tasks
        cutoff = self._now - int(older_than_s * 1000)
        decided = (sa.text(SCORING_DECIDED), t.c.due_at_ms < cutoff)

        def body(conn: sa.Connection) -> int:
            ids = conn.execute(sa.select(t.c.id).where(*decided).limit(batch)).scalars().all()
            if ids:
                conn.execute(t.delete().where(t.c.id.in_(ids), *decided))
            return len(ids)

        return self._delete_in_batches(body, batch)

    # -- reading the ledger -------------------------------------------------------------------

    def decisions(self, experiment_id: str, targets: Sequence[tuple[Level, str]]) -> list[Decision]:
        """The ledger rows of these traces and sessions."""
        t = scoring_tasks

        def body(conn: sa.Connection) -> list[Decision]:
            now = int(conn.execute(sa.select(self._now)).scalar_one())
            out: list[Decision] = []
            for level, target in targets:
                query = sa.select(t).where(
                    t.c.experiment_id == experiment_id,
                    t.c.level == level.value,
                    t.c.target_id == target,
                )
                out.extend(
                    Decision(
                        scorer_name=row.scorer_name,
                        level=level,
                        state=row.state,
                        attempts=row.attempts,
                        last_error=row.last_error,
                        due_at_ms=row.due_at_ms,
                        leased=row.lease_until_ms is not None and row.lease_until_ms >= now,
                    )
                    for row in conn.execute(query)
                )
            return out

        return self._tx(body, write=False)

    def pending_among(self, experiment_id: str, scorer_name: str, trace_ids: Sequence[str]) -> int:
        """How many of these traces' rows of one scorer are still to score."""
        t = scoring_tasks

        def body(conn: sa.Connection) -> int:
            total = 0
            for chunk in chunks(trace_ids, _CHUNK):
                query = sa.select(sa.func.count()).where(
                    t.c.experiment_id == experiment_id,
                    t.c.level == Level.TRACE.value,
                    t.c.scorer_name == scorer_name,
                    t.c.target_id.in_(chunk),
                    t.c.state == PENDING,
                )
                total += int(conn.execute(query).scalar_one())
            return total

        return self._tx(body, write=False)


# -- rows --------------------------------------------------------------------------------------


def _task_row(
    experiment_id: str, level: Level, target: str, scorer: str, due: int, now: int
) -> dict[str, Any]:
    return {
        "experiment_id": experiment_id,
        "level": level.value,
        "target_id": target,
        "scorer_name": scorer,
        "state": PENDING,
        "due_at_ms": due,
        "attempts": 0,
        "generation": 0,
        "lease_owner": None,
        "lease_until_ms": None,
        "last_error": None,
        "created_at_ms": now,
        "updated_at_ms": now,
    }


def _to_scorer(row: Any) -> ScorerRecord:
    return ScorerRecord(
        experiment_id=row.experiment_id,
        name=row.name,
        kind=row.kind,
        level=Level(row.level),
        version=row.version,
        definition=jsonvalue.loads(row.definition),  # an old row may not be plain JSON
        sample_rate=row.sample_rate,
        filter_string=row.filter_string,
        status=row.status,
        status_reason=row.status_reason,
        created_at_ms=row.created_at_ms,
        updated_at_ms=row.updated_at_ms,
    )


def _check_ids(experiment_id: str, name: str | None = None) -> None:
    """Ids no database can compare (PostgreSQL refuses NUL in text) are a 400, not a 503."""
    jsonvalue.check_text(experiment_id, "experiment_id")
    if name is not None:
        jsonvalue.check_text(name, "scorer name")
