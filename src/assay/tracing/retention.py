"""Trace retention: deleting old traces, and everything that hangs off them, without stalling
ingest.

Part of the trace store (:class:`assay.tracing.store.TraceStore` inherits
:class:`TracePruning`); the leader's :class:`assay.scoring.jobs.TracePruner` runs it every
``prune_interval_s`` when ``trace_retention_s`` is set.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from assay.db.base import IN_CHUNK, Pace, SqlStore
from assay.db.dialects import SQLITE
from assay.db.tables import (
    assessments,
    experiments,
    span_log_events,
    spans,
    trace_metadata,
    trace_tags,
    traces,
)
from assay.errors import InvalidRequestError
from assay.tracing.listener import IngestListener
from assay.util import chunks

__all__ = ["TracePruning"]

_CHILDREN = (assessments, spans, span_log_events, trace_metadata, trace_tags)
"""The rows that go with their trace (the FTS index of SQLite follows by trigger)."""


class TracePruning(SqlStore):
    """The trace store's deletion of old traces."""

    listener: IngestListener | None

    def traces_prune(
        self,
        older_than_s: float,
        *,
        batch: int = 500,
        tx_ms: float = 20.0,
        duty: float = 0.1,
    ) -> int:
        """Delete the traces that started more than ``older_than_s`` ago (by their
        ``start_time_ms``, the time the UI orders them by), with their spans, GenAI log
        events, metadata and tag rows, assessments and, through the listener, their
        scoring-ledger rows; returns how many traces. Then the GenAI log events that arrived
        as long ago for traces that never did (:meth:`_prune_orphan_events`).

        Each experiment is walked oldest first in ix_traces_experiment_start, every batch
        starting where the last one stopped, at the :class:`~assay.db.base.Pace` of
        ``batch``, ``tx_ms`` and ``duty``, so a first prune of months of traces never holds
        up ingest for more than one short transaction. A batch locks its traces first, in
        trace id order as an ingest does: a span that arrives for one of them meanwhile
        waits, and then starts a new trace of that id."""
        cutoff = self.now_ms() - int(older_than_s * 1000)
        experiment_ids = self._tx(
            lambda conn: (
                conn.execute(sa.select(experiments.c.id).order_by(experiments.c.id)).scalars().all()
            ),
            write=False,
        )
        pace = Pace(batch, tx_ms, duty)
        total = sum(self._prune_experiment(e, cutoff, pace) for e in experiment_ids)
        self._prune_orphan_events(cutoff, pace)
        return total

    def traces_delete(
        self,
        experiment_id: str,
        *,
        trace_ids: Sequence[str] | None = None,
        started_before_ms: int | None = None,
        max_traces: int | None = None,
    ) -> int:
        """Delete traces of one experiment, as :meth:`traces_prune` does: those of
        ``trace_ids`` (ids of other experiments are left alone), or those that started before
        ``started_before_ms``, oldest first, at most ``max_traces`` (MLflow's DeleteTraces).
        Returns how many. The caller is waiting, so it rests between transactions only as
        long as each took."""
        if trace_ids is not None:
            total = 0
            for chunk in chunks(sorted(set(trace_ids)), IN_CHUNK):
                query = sa.select(traces.c.trace_id, traces.c.start_time_ms).where(
                    traces.c.experiment_id == experiment_id, traces.c.trace_id.in_(chunk)
                )
                total += self._tx(
                    functools.partial(
                        self._prune_traces, query=query, experiment_id=experiment_id, cutoff=None
                    )
                )[1]
            return total
        if started_before_ms is None:
            raise InvalidRequestError("name the traces, or the time they started before")
        pace = Pace(500, tx_ms=20.0, duty=0.5)
        return self._prune_experiment(experiment_id, started_before_ms, pace, max_traces)

    def _prune_experiment(
        self, experiment_id: str, cutoff: int, pace: Pace, most: int | None = None
    ) -> int:
        """Delete the experiment's traces that started before ``cutoff`` (at most ``most``),
        oldest first, at ``pace``; returns how many."""
        total = 0
        after: int | None = None  # start_time_ms of the newest trace deleted so far
        while most is None or total < most:
            size = pace.size if most is None else min(pace.size, most - total)
            query = (
                sa.select(traces.c.trace_id, traces.c.start_time_ms)
                .where(traces.c.experiment_id == experiment_id, traces.c.start_time_ms < cutoff)
                .order_by(traces.c.start_time_ms)
                .limit(size)
            )
            if after is not None:
                query = query.where(traces.c.start_time_ms >= after)
            rows, deleted, held_s = self._tx(
                functools.partial(
                    self._prune_traces, query=query, experiment_id=experiment_id, cutoff=cutoff
                )
            )
            total += deleted
            if self.dialect == SQLITE:
                self._sqlite_checkpoint()
            if len(rows) < size:
                break
            after = max(row.start_time_ms for row in rows)
            pace.rest(held_s)
        return total

    def _prune_orphan_events(self, cutoff: int, pace: Pace) -> int:
        """Delete the GenAI log events that arrived before ``cutoff`` (database time) for a
        trace that has no row: its spans never came, so no trace prune would ever take them.
        Walks span_log_events in id order, which is arrival order, and stops at the first
        event that arrived after the cutoff: it reads the old events only. An old event whose
        trace is stored is left to go with its trace. Returns how many went."""
        total, after = 0, 0
        while True:
            size = pace.size
            rows, deleted, held_s = self._tx(
                functools.partial(self._prune_orphans, after=after, cutoff=cutoff, size=size)
            )
            total += deleted
            if self.dialect == SQLITE and deleted:
                self._sqlite_checkpoint()
            if len(rows) < size or rows[-1].created_at_ms >= cutoff:
                return total
            after = rows[-1].id
            pace.rest(held_s)

    def _prune_orphans(
        self, conn: sa.Connection, after: int, cutoff: int, size: int
    ) -> tuple[Sequence[Any], int, float]:
        """One transaction of :meth:`_prune_orphan_events`: the ``size`` events after id
        ``after``; those that arrived before ``cutoff`` for a trace with no row go. Returns the
        rows read, how many went, and the seconds the transaction took."""
        began = time.monotonic()
        query = (
            sa.select(
                span_log_events.c.id, span_log_events.c.trace_id, span_log_events.c.created_at_ms
            )
            .where(span_log_events.c.id > after)
            .order_by(span_log_events.c.id)
            .limit(size)
        )
        rows = conn.execute(query).all()
        old = [row for row in rows if row.created_at_ms < cutoff]
        stored: set[str] = set()
        for chunk in chunks(sorted({row.trace_id for row in old}), IN_CHUNK):
            found = sa.select(traces.c.trace_id).where(traces.c.trace_id.in_(chunk))
            stored.update(conn.execute(found).scalars())
        ids = [row.id for row in old if row.trace_id not in stored]
        for chunk in chunks(ids, IN_CHUNK):
            conn.execute(span_log_events.delete().where(span_log_events.c.id.in_(chunk)))
        return rows, len(ids), time.monotonic() - began

    def _prune_traces(
        self, conn: sa.Connection, query: sa.Select[Any], experiment_id: str, cutoff: int | None
    ) -> tuple[Sequence[Any], int, float]:
        """One transaction: delete the traces ``query`` selects that, once locked, still
        started before ``cutoff`` (None: whenever). Returns the rows selected, how many traces
        went, and the seconds the transaction held its locks."""
        began = time.monotonic()
        rows = conn.execute(query).all()
        if not rows:
            return rows, 0, time.monotonic() - began
        lock = (
            sa.select(traces.c.trace_id)
            .where(traces.c.trace_id.in_(sorted(row.trace_id for row in rows)))
            .order_by(traces.c.trace_id)
            .with_for_update()
        )
        if cutoff is not None:
            lock = lock.where(traces.c.start_time_ms < cutoff)
        ids = list(conn.execute(lock).scalars())
        if ids:
            for table in _CHILDREN:
                conn.execute(table.delete().where(table.c.trace_id.in_(ids)))
            if self.listener is not None:
                self.listener.on_prune(conn, experiment_id, ids)
            conn.execute(traces.delete().where(traces.c.trace_id.in_(ids)))
        return rows, len(ids), time.monotonic() - began
