"""The trace store: every SQL statement about traces, spans, trace metadata and tags, and
assessments lives here.

Rules this module keeps:

- An ingest request is written in transactions of whole traces, at most ``INGEST_TX_SPANS``
  spans each (a trace with more spans in one request has a transaction of its own): a
  trace's spans, summary, metadata, tags, completion and scoring-ledger rows are always
  written together. A usual request is one transaction; a large one holds SQLite's write lock
  (or row locks) for a bounded time at once, and what would fail it (an unknown experiment,
  a trace of another experiment) is checked before anything is written.
- Spans of one trace may arrive in any order, in several requests, concurrently. Every ingest
  locks the rows of the traces it touches (in trace id order) before it writes their spans and
  recomputes their summaries from *all* their stored spans, so no summary misses a span. A
  trace with no row yet is inserted whole, summarised from the request; if another ingest
  creates it first, the insert fails on the key and the transaction runs again, now locking it.
- A trace becomes complete when its root span (no parent) arrives; ``completed_at_ms`` is the
  database time of that ingest and never changes afterwards.
- Assessments with an idempotency key are upserts on the unique (trace_id, idempotency_key):
  ``ON CONFLICT DO UPDATE`` on PostgreSQL and SQLite, ``ON DUPLICATE KEY UPDATE`` on MySQL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import sqlalchemy as sa

from assay.db.base import require_rows
from assay.db.dialects import SQLITE
from assay.db.tables import (
    assessments,
    experiments,
    spans,
    trace_metadata,
    trace_tags,
    traces,
    traces_fts,
)
from assay.errors import InvalidRequestError, StoreError
from assay.jsonvalue import loads
from assay.tracing import log_events
from assay.tracing.derive import MAX_VALUE_CHARS, Summary, summarize
from assay.tracing.filters import (
    DEFAULT_MAX_RESULTS,
    TraceSearch,
    compile_filter,
    parse_filter,
)
from assay.tracing.filters.sql import keyed_lookups
from assay.tracing.filters.textindex import text_lookups
from assay.tracing.listener import Completed, IngestListener
from assay.tracing.log_events import LogEvent
from assay.tracing.model import (
    ASSESSMENT_UPDATES,
    Assessment,
    AssessmentSource,
    NewAssessment,
    Span,
    Trace,
    TraceDetail,
    TracePage,
    TraceStatus,
    assessment_row,
    clean_text,
)
from assay.tracing.retention import TracePruning
from assay.util import chunks

__all__ = ["INGEST_TX_SPANS", "TraceStore"]

_CHUNK = 200
INGEST_TX_SPANS = 1000
"""The most spans one ingest transaction writes, unless one trace of the request has more."""
_DRIVE_MAX = 2000
"""SQLite: a metadata or tag value of fewer traces than this drives a search (traces_run)."""

_LOCK_TRACES = (
    sa.select(
        traces.c.trace_id, traces.c.experiment_id, traces.c.completed_at_ms, traces.c.span_count
    )
    .where(traces.c.trace_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(traces.c.trace_id)
    .with_for_update()
)

_SPAN_UPDATES = (
    "parent_span_id",
    "name",
    "kind",
    "status_code",
    "status_message",
    "start_time_ns",
    "end_time_ns",
    "attributes",
    "events",
    "links",
    "resource",
)


class TraceStore(TracePruning):
    """Typed access to the trace tables of one database.

    ``listener`` is told, in each ingest transaction, which traces it completed and which
    sessions it touched (the scoring ledger: :class:`assay.stores.Stores` wires it); without
    one, an ingest writes the trace tables only.
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        session_idle_s: float = 300.0,
        listener: IngestListener | None = None,
    ) -> None:
        super().__init__(engine)
        self.listener = listener
        self.session_idle_ms = round(session_idle_s * 1000)
        self._text_index: bool | None = None if self.dialect == SQLITE else False
        # SET is the summary's columns (_summary_values); the row is named by ``b_trace_id``.
        self._update_trace = traces.update().where(traces.c.trace_id == sa.bindparam("b_trace_id"))
        self._upsert_span = self._upsert_statement(spans, ["trace_id", "span_id"], _SPAN_UPDATES)
        self._upsert_assessment = self._upsert_statement(
            assessments, ["trace_id", "idempotency_key"], ASSESSMENT_UPDATES
        )

    # -- ingest ----------------------------------------------------------------------------------

    def spans_ingest(
        self,
        spans_by_experiment: Mapping[str, Sequence[Span]],
        *,
        tx_spans: int = INGEST_TX_SPANS,
    ) -> list[str]:
        """Store spans and recompute the summaries of their traces, in transactions of at most
        ``tx_spans`` spans (see the module's rules).

        Raises NotFoundError for an unknown experiment and InvalidRequestError for a trace
        whose spans name two experiments or that belongs to another experiment; nothing is
        written then. Returns the trace ids."""
        experiment_of: dict[str, str] = {}
        rows: dict[tuple[str, str], Span] = {}
        for experiment_id, items in spans_by_experiment.items():
            for span in items:
                known = experiment_of.setdefault(span.trace_id, experiment_id)
                if known != experiment_id:
                    raise InvalidRequestError(
                        f"spans of trace {span.trace_id} name two experiments "
                        f"({known!r} and {experiment_id!r})"
                    )
                rows[(span.trace_id, span.span_id)] = span  # a repeated span: the last wins
        if not rows:
            return []
        trace_ids = sorted(experiment_of)
        incoming: dict[str, list[Span]] = {t: [] for t in trace_ids}
        for span in rows.values():
            incoming[span.trace_id].append(span)
        batches = _batches(trace_ids, incoming, tx_spans)
        if len(batches) > 1:  # one transaction checks its own request as it writes it
            self._tx(lambda conn: self._check_request(conn, experiment_of), write=False)
        for batch in batches:
            self._ingest_batch({t: incoming[t] for t in batch}, experiment_of)
        return trace_ids

    def _check_request(self, conn: sa.Connection, experiment_of: Mapping[str, str]) -> None:
        """Before the first of several transactions: the experiments exist and no trace
        belongs to another one (each transaction checks its part again, under its locks)."""
        require_rows(conn, experiments.c.id, sorted(set(experiment_of.values())), "experiment")
        other = log_events.in_other_experiment(conn, experiment_of)
        if other is not None:
            trace_id, stored = other
            raise _other_experiment(trace_id, stored, experiment_of[trace_id])

    def _ingest_batch(
        self, incoming: Mapping[str, Sequence[Span]], experiment_of: Mapping[str, str]
    ) -> None:
        """One transaction of an ingest: whole traces (``incoming``: their spans of this
        request, by trace id in id order), with their summaries, completion and ledger rows."""
        trace_ids = list(incoming)
        # Everything that needs no database is done before the transaction (and SQLite's write
        # lock): the span rows, and each trace's summary from this request's spans alone, which
        # is its summary unless the trace had spans stored already.
        encoded: dict[int, str] = {}
        span_rows = [_span_row(s, encoded) for t in trace_ids for s in incoming[t]]
        summaries_of_request = {t: summarize(incoming[t]) for t in trace_ids}
        experiment_ids = sorted({experiment_of[t] for t in trace_ids})

        def body(conn: sa.Connection) -> None:
            self._check_experiments(conn, experiment_ids)
            now = int(conn.execute(sa.select(self._now)).scalar_one())
            locked = self._lock_traces(conn, trace_ids)
            for trace_id, row in locked.items():
                if row.experiment_id != experiment_of[trace_id]:
                    raise _other_experiment(trace_id, row.experiment_id, experiment_of[trace_id])
            # A trace with no row yet goes in whole, summarised from this request's spans: one
            # write of its row and indexes, not a placeholder and then an update. Another
            # ingest may create the same row meanwhile (it was not there to lock): the insert
            # then fails on the key and the transaction runs again (_TraceRace).
            new = [t for t in trace_ids if t not in locked]
            try:
                self._insert_rows(
                    conn,
                    traces,
                    [_trace_row(t, experiment_of[t], summaries_of_request[t], now) for t in new],
                )
            except sa.exc.IntegrityError as exc:
                raise _TraceRace from exc
            # A trace with no stored span before this transaction now has exactly the spans
            # of this request: they are plain inserts. Only the spans of traces that had some
            # already can replace stored ones (an exporter's retry), and only those traces are
            # read back and summarised again.
            had_spans = {t for t, row in locked.items() if row.span_count > 0}
            new_rows = [r for r in span_rows if r["trace_id"] not in had_spans]
            self._insert_rows(conn, spans, new_rows)
            if len(new_rows) < len(span_rows):
                conn.execute(
                    self._upsert_span, [r for r in span_rows if r["trace_id"] in had_spans]
                )
            summaries = dict(summaries_of_request)
            # So are traces with GenAI log events stored before their spans (log_events).
            with_logs = log_events.traces_with_events(conn, trace_ids)
            earlier = [t for t in trace_ids if t in had_spans or t in with_logs]
            if earlier:
                stored = self._read_spans(conn, earlier)
                summaries.update({t: summarize(stored[t]) for t in earlier})
            completed_before = {t: row.completed_at_ms for t, row in locked.items()}
            stale = [t for t in trace_ids if t in locked or t in with_logs]
            if stale:
                conn.execute(
                    self._update_trace,
                    [
                        {
                            "b_trace_id": t,
                            **_summary_values(summaries[t], completed_before.get(t), now),
                        }
                        for t in stale
                    ],
                )
            metadata = {t: summaries[t].metadata for t in trace_ids}
            tags = {t: summaries[t].tags for t in trace_ids}
            self._replace_pairs(conn, trace_metadata, metadata, earlier)
            self._replace_pairs(conn, trace_tags, tags, earlier)
            # The scoring ledger is filled in this same transaction: a trace that is complete
            # once this commits is in the ledger of every scorer that samples it.
            touched = [
                Completed(
                    trace_id=t,
                    experiment_id=experiment_of[t],
                    metadata=summaries[t].metadata,
                    session_id=summaries[t].session_id,
                    complete=completed_before.get(t) is None and summaries[t].complete,
                )
                for t in trace_ids
            ]
            if self.listener is not None:
                self.listener.on_ingest(conn, now, touched, self.session_idle_ms)

        for attempt in range(3):
            try:
                self._tx(body)
                return
            except _TraceRace as race:
                if attempt == 2:
                    raise StoreError(f"store error: {race.__cause__}") from race

    def _check_experiments(self, conn: sa.Connection, experiment_ids: Sequence[str]) -> None:
        """Check that the experiments exist and take a shared lock on their rows (PostgreSQL:
        FOR KEY SHARE, as a foreign key check would; MariaDB: LOCK IN SHARE MODE). A scorer
        change locks the row exclusively, so an ingest reads its experiment's scorers and
        stamps the completion time either wholly before or wholly after that change commits:
        a trace completed after a scorer was registered is always in its ledger."""
        require_rows(conn, experiments.c.id, experiment_ids, "experiment", lock="share")

    def _lock_traces(self, conn: sa.Connection, trace_ids: Sequence[str]) -> dict[str, Any]:
        """Lock the trace rows (in id order, so two ingests cannot deadlock on them) and read
        their experiment, completion time and span count. SQLite renders no FOR UPDATE: its
        write transaction already holds the database."""
        out: dict[str, Any] = {}
        for chunk in chunks(trace_ids, _CHUNK):
            for row in conn.execute(_LOCK_TRACES, {"ids": list(chunk)}):
                out[row.trace_id] = row
        return out

    def _read_spans(
        self, conn: sa.Connection, trace_ids: Sequence[str], *, with_logs: bool = True
    ) -> dict[str, list[Span]]:
        """The stored spans of the traces; ``with_logs``: with the GenAI log events that name
        them among their events (as read and summarised; never written back)."""
        out: dict[str, list[Span]] = {t: [] for t in trace_ids}
        for chunk in chunks(trace_ids, _CHUNK):
            for row in conn.execute(sa.select(spans).where(spans.c.trace_id.in_(chunk))):
                out[row.trace_id].append(_to_span(row))
        if with_logs:
            log_events.attach(conn, out)
        return out

    def log_events_ingest(self, by_experiment: Mapping[str, Sequence[LogEvent]]) -> None:
        """Store GenAI log events (:mod:`assay.tracing.log_events`; its errors, nothing written
        then). The traces whose stored spans they name are summarised again, by ingesting one
        of those spans as stored (an upsert of the same row)."""

        def body(conn: sa.Connection) -> dict[str, list[Span]]:
            now = int(conn.execute(sa.select(self._now)).scalar_one())
            stale = log_events.insert(conn, now, by_experiment)
            again: dict[str, list[Span]] = {}
            for experiment_id, trace_ids in stale.items():
                stored = self._read_spans(conn, sorted(trace_ids), with_logs=False)
                again[experiment_id] = [found[0] for found in stored.values() if found]
            return again

        again = self._tx(body)
        if again:
            self.spans_ingest(again)

    def _replace_pairs(
        self,
        conn: sa.Connection,
        table: sa.Table,
        pairs: Mapping[str, Mapping[str, str]],
        stored: Sequence[str],
    ) -> None:
        """Replace the (key, value) rows of the traces in ``pairs``; only the ``stored`` ones
        (traces that had spans, hence a summary, before) can have rows to delete."""
        ids = sorted(pairs)
        for chunk in chunks(sorted(stored), _CHUNK):
            conn.execute(table.delete().where(table.c.trace_id.in_(chunk)))
        rows = [
            {"trace_id": t, "key": key, "value": clean_text(value)[:MAX_VALUE_CHARS]}
            for t in ids
            for key, value in pairs[t].items()
        ]
        self._insert_rows(conn, table, rows)

    # -- reading traces ----------------------------------------------------------------------------

    def trace_get(self, trace_id: str) -> Trace | None:
        found = self.traces_get_many([trace_id])
        return found[0] if found else None

    def traces_get_many(self, trace_ids: Sequence[str]) -> list[Trace]:
        """The traces that exist, in the order asked."""

        def body(conn: sa.Connection) -> list[Trace]:
            found: dict[str, Trace] = {}
            for chunk in chunks(trace_ids, _CHUNK):
                for row in conn.execute(sa.select(traces).where(traces.c.trace_id.in_(chunk))):
                    found[row.trace_id] = _to_trace(row._mapping)
            return [found[t] for t in trace_ids if t in found]

        return self._tx(body, write=False)

    def trace_detail(self, trace_id: str) -> TraceDetail | None:
        """A trace with its spans (in start order) and assessments, read in one transaction."""

        def body(conn: sa.Connection) -> TraceDetail | None:
            row = conn.execute(sa.select(traces).where(traces.c.trace_id == trace_id)).first()
            if row is None:
                return None
            span_list = sorted(
                self._read_spans(conn, [trace_id])[trace_id],
                key=lambda s: (s.start_time_ns, s.span_id),
            )
            return TraceDetail(
                _to_trace(row._mapping), span_list, self._assessments(conn, trace_id)
            )

        return self._tx(body, write=False)

    def spans_list(self, trace_id: str) -> list[Span]:
        return self._tx(
            lambda conn: sorted(
                self._read_spans(conn, [trace_id])[trace_id],
                key=lambda s: (s.start_time_ns, s.span_id),
            ),
            write=False,
        )

    def traces_matching(self, trace_ids: Sequence[str], filter_string: str | None) -> set[str]:
        """Of ``trace_ids``, those that match a filter string (all of them with no filter)."""
        if not filter_string:
            return set(trace_ids)
        condition = compile_filter(parse_filter(filter_string))

        def body(conn: sa.Connection) -> set[str]:
            found: set[str] = set()
            for chunk in chunks(sorted(trace_ids), _CHUNK):
                query = sa.select(traces.c.trace_id).where(traces.c.trace_id.in_(chunk), condition)
                found.update(conn.execute(query).scalars().all())
            return found

        return self._tx(body, write=False)

    def trace_ids_completed(
        self,
        experiment_id: str,
        start_ms: int,
        end_ms: int,
        filter_string: str | None,
        *,
        limit: int,
    ) -> list[str]:
        """Complete traces of an experiment that started in [start_ms, end_ms) and match the
        filter, oldest first (at most ``limit``)."""
        condition = compile_filter(parse_filter(filter_string))
        query = (
            sa.select(traces.c.trace_id)
            .where(
                traces.c.experiment_id == experiment_id,
                traces.c.start_time_ms >= start_ms,
                traces.c.start_time_ms < end_ms,
                traces.c.completed_at_ms.is_not(None),
                condition,
            )
            .order_by(traces.c.start_time_ms, traces.c.trace_id)
            .limit(limit)
        )
        return list(self._tx(lambda conn: conn.execute(query).scalars().all(), write=False))

    def assessments_by_key(self, keys: Sequence[str]) -> dict[str, Assessment]:
        """The assessments with these idempotency keys, by key."""

        def body(conn: sa.Connection) -> dict[str, Assessment]:
            found: dict[str, Assessment] = {}
            for chunk in chunks(sorted(set(keys)), _CHUNK):
                query = sa.select(assessments).where(assessments.c.idempotency_key.in_(chunk))
                for row in conn.execute(query):
                    found[row.idempotency_key] = _to_assessment(row)
            return found

        return self._tx(body, write=False)

    def session_trace_ids(self, experiment_id: str, session_id: str) -> list[str]:
        """The trace ids of a session, in start order."""
        query = (
            sa.select(traces.c.trace_id)
            .where(traces.c.experiment_id == experiment_id, traces.c.session_id == session_id)
            .order_by(traces.c.start_time_ms, traces.c.trace_id)
        )
        return list(self._tx(lambda conn: conn.execute(query).scalars().all(), write=False))

    def traces_search(
        self,
        experiment_ids: Sequence[str],
        filter_string: str | None = None,
        order_by: str | Sequence[str] | None = None,
        max_results: int = DEFAULT_MAX_RESULTS,
        page_token: str | None = None,
    ) -> TracePage:
        """Traces of ``experiment_ids`` matching a filter string, in ``order_by`` order (newest
        first by default), one keyset page at a time (see :mod:`assay.tracing.filters`)."""
        search = TraceSearch.plan(
            experiment_ids=experiment_ids,
            filter_string=filter_string,
            order_by=order_by,
            max_results=max_results,
            page_token=page_token,
        )
        if self.dialect != SQLITE:
            return self.traces_run(search)
        expr = parse_filter(filter_string)
        lookups = keyed_lookups(expr)
        if self._has_text_index():
            lookups += text_lookups(expr, traces, traces_fts)
        return self.traces_run(search, lookups)

    def _has_text_index(self) -> bool:
        """Whether migration 0010 made ``traces_fts`` (SQLite with FTS5's trigram tokenizer;
        asked once per store)."""
        if self._text_index is None:
            query = sa.text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name")
            found = self._tx(
                lambda conn: conn.execute(query, {"name": traces_fts.name}).first(), write=False
            )
            self._text_index = found is not None
        return self._text_index

    def traces_run(
        self, search: TraceSearch, lookups: Sequence[sa.Select[tuple[str]]] = ()
    ) -> TracePage:
        """Run a planned :class:`TraceSearch` in one read transaction.

        ``lookups`` (on SQLite: :func:`keyed_lookups`, and :func:`text_lookups` for ``LIKE``
        and ``ILIKE`` on the request or response text, from the FTS5 trigram index of
        migration 0010): when the rarest of them matches fewer than ``_DRIVE_MAX`` traces, the
        search starts from its rows (joined to traces, then sorted) instead of walking the
        experiment's traces in order and probing each; the filter itself still applies.
        SQLite has no statistics (assay never runs ANALYZE), so it always walks: right for a
        common value, a scan of the whole experiment for one that 100 traces of a million
        have. Counting stops at ``_DRIVE_MAX`` index entries, so the check stays cheap.
        PostgreSQL and MySQL choose between the two plans from their own statistics.
        """

        def body(conn: sa.Connection) -> tuple[list[sa.RowMapping], str | None]:
            statement = search.statement()
            counted = [(_count_upto(conn, q, _DRIVE_MAX), i) for i, q in enumerate(lookups)]
            if counted and min(counted)[0] < _DRIVE_MAX:
                # The LIMIT (no row is cut: there are fewer) keeps SQLite from flattening the
                # subquery into the join, where it would be free to walk the traces again.
                rarest = lookups[min(counted)[1]].limit(_DRIVE_MAX).subquery("rarest")
                table = search.tables.traces
                statement = statement.select_from(
                    rarest.join(table, table.c.trace_id == rarest.c.trace_id)
                )
            return search.page(conn.execute(statement).mappings().all())

        rows, token = self._tx(body, write=False)
        return TracePage([_to_trace(row) for row in rows], token)

    # -- assessments -------------------------------------------------------------------------------

    def assessment_write(self, new: NewAssessment) -> Assessment:
        return self.assessments_write([new])[0]

    def assessments_write(self, items: Sequence[NewAssessment]) -> list[Assessment]:
        """Write assessments in one transaction; one with the idempotency key of an existing
        assessment on the same trace replaces it (keeping its id and created time)."""
        rows = [assessment_row(item) for item in items]

        def body(conn: sa.Connection) -> list[Assessment]:
            require_rows(conn, traces.c.trace_id, sorted({i.trace_id for i in items}), "trace")
            now = int(conn.execute(sa.select(self._now)).scalar_one())
            written = []
            for new in rows:
                row = {**new, "created_at_ms": now, "updated_at_ms": now}
                key = row["idempotency_key"]
                if key is None:
                    conn.execute(assessments.insert().values(row))
                    where = assessments.c.id == row["id"]
                else:
                    conn.execute(self._upsert_assessment, row)
                    where = sa.and_(
                        assessments.c.trace_id == row["trace_id"],
                        assessments.c.idempotency_key == key,
                    )
                written.append(
                    _to_assessment(conn.execute(sa.select(assessments).where(where)).one())
                )
            return written

        return self._tx(body)

    def assessments_list(self, trace_id: str) -> list[Assessment] | None:
        """The trace's assessments, oldest first; None when there is no such trace."""

        def body(conn: sa.Connection) -> list[Assessment] | None:
            query = sa.select(traces.c.trace_id).where(traces.c.trace_id == trace_id)
            if conn.execute(query).first() is None:
                return None
            return self._assessments(conn, trace_id)

        return self._tx(body, write=False)

    def _assessments(self, conn: sa.Connection, trace_id: str) -> list[Assessment]:
        query = (
            sa.select(assessments)
            .where(assessments.c.trace_id == trace_id)
            .order_by(assessments.c.created_at_ms, assessments.c.id)
        )
        return [_to_assessment(r) for r in conn.execute(query)]

    def assessment_delete(self, trace_id: str, assessment_id: str) -> bool:
        """Delete one assessment of a trace; False when there was none with that id."""

        def body(conn: sa.Connection) -> bool:
            result = conn.execute(
                assessments.delete().where(
                    assessments.c.id == assessment_id, assessments.c.trace_id == trace_id
                )
            )
            return bool(result.rowcount == 1)

        return self._tx(body)


# -- ingest batches --------------------------------------------------------------------------------


def _batches(
    trace_ids: Sequence[str], incoming: Mapping[str, Sequence[Span]], size: int
) -> list[list[str]]:
    """The transactions of an ingest: whole traces in id order, at most ``size`` spans each
    (a trace with more, alone)."""
    batches: list[list[str]] = []
    current: list[str] = []
    count = 0
    for trace_id in trace_ids:
        spans = len(incoming[trace_id])
        if current and count + spans > size:
            batches.append(current)
            current, count = [], 0
        current.append(trace_id)
        count += spans
    if current:
        batches.append(current)
    return batches


class _TraceRace(Exception):
    """An ingest's new trace row was created by another ingest after this one looked."""


def _other_experiment(trace_id: str, stored: str, wanted: str) -> InvalidRequestError:
    return InvalidRequestError(f"trace {trace_id} belongs to experiment {stored!r}, not {wanted!r}")


# -- search ----------------------------------------------------------------------------------------


def _count_upto(conn: sa.Connection, query: sa.Select[Any], most: int) -> int:
    """The rows of ``query``, counted up to ``most`` (it reads no further)."""
    limited = query.limit(most).subquery()
    return int(conn.execute(sa.select(sa.func.count()).select_from(limited)).scalar_one())


# -- rows ------------------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    """Compact JSON text of a span's or a summary's value. orjson writes it ~10 times faster
    than ``json`` (it was a tenth of the ingest's CPU); what it refuses (an integer over 64
    bits, a lone surrogate from a user's JSON text) ``json`` writes as before."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, separators=(",", ":"))


def _loads(text: str) -> Any:
    """``_dumps`` read back; ``json`` reads what orjson refuses (``NaN``, a lone surrogate's
    escape), which ``json.dumps`` wrote before."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _dumps_shared(value: Any, encoded: dict[int, str]) -> str:
    """``_dumps`` of a value many spans share (the spans of one scope share one resource
    dict), encoded once per request; ``encoded`` maps ``id(value)`` while the values live."""
    text = encoded.get(id(value))
    if text is None:
        text = encoded[id(value)] = _dumps(value)
    return text


def _trace_row(trace_id: str, experiment_id: str, summary: Summary, now: int) -> dict[str, Any]:
    """A new trace's row, with its summary."""
    return {
        "trace_id": trace_id,
        "experiment_id": experiment_id,
        "created_at_ms": now,
        **_summary_values(summary, None, now),
    }


def _span_row(span: Span, encoded: dict[int, str]) -> dict[str, Any]:
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "name": span.name,
        "kind": span.kind,
        "status_code": span.status_code,
        "status_message": span.status_message,
        "start_time_ns": span.start_time_ns,
        "end_time_ns": span.end_time_ns,
        "attributes": _dumps(span.attributes),
        "events": _dumps(span.events) if span.events else "[]",
        "links": _dumps(span.links) if span.links else "[]",
        "resource": _dumps_shared(span.resource, encoded),
    }


def _to_span(row: Any) -> Span:
    return Span(
        trace_id=row.trace_id,
        span_id=row.span_id,
        parent_span_id=row.parent_span_id,
        name=row.name,
        kind=row.kind,
        status_code=row.status_code,
        status_message=row.status_message,
        start_time_ns=row.start_time_ns,
        end_time_ns=row.end_time_ns,
        attributes=_loads(row.attributes),
        events=_loads(row.events),
        links=_loads(row.links),
        resource=_loads(row.resource),
    )


def _summary_values(summary: Summary, completed_at_ms: int | None, now: int) -> dict[str, Any]:
    """A trace row's summary columns; ``completed_at_ms``: the stored one (None: not yet)."""
    if completed_at_ms is None and summary.complete:
        completed_at_ms = now
    return {
        "status": summary.status.value,
        "request": _dumps(summary.request) if summary.has_request else None,
        "response": _dumps(summary.response) if summary.has_response else None,
        "request_preview": _clean(summary.request_preview),
        "response_preview": _clean(summary.response_preview),
        "start_time_ms": summary.start_time_ms,
        "duration_ms": summary.duration_ms,
        "completed_at_ms": completed_at_ms,
        "session_id": _clean(summary.session_id),
        "input_tokens": summary.input_tokens,
        "output_tokens": summary.output_tokens,
        "total_tokens": summary.total_tokens,
        "cost": summary.cost,
        "metadata_json": _dumps(summary.metadata),
        "tags_json": _dumps(summary.tags),
        "root_span_id": summary.root_span_id,
        "span_count": summary.span_count,
        "updated_at_ms": now,
        "model": _clean(summary.model),
    }


def _clean(text: str | None) -> str | None:
    return None if text is None else clean_text(text)


def _to_trace(row: Mapping[Any, Any]) -> Trace:
    return Trace(
        trace_id=row["trace_id"],
        experiment_id=row["experiment_id"],
        status=TraceStatus(row["status"]),
        request=loads(row["request"]),  # loads never fails: an old row may not be plain JSON
        response=loads(row["response"]),
        request_preview=row["request_preview"],
        response_preview=row["response_preview"],
        start_time_ms=row["start_time_ms"],
        duration_ms=row["duration_ms"],
        completed_at_ms=row["completed_at_ms"],
        session_id=row["session_id"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        total_tokens=row["total_tokens"],
        cost=row["cost"],
        metadata=_loads(row["metadata_json"]),
        tags=_loads(row["tags_json"]),
        root_span_id=row["root_span_id"],
        span_count=row["span_count"],
        created_at_ms=row["created_at_ms"],
        updated_at_ms=row["updated_at_ms"],
        model=row["model"],
    )


def _to_assessment(row: Any) -> Assessment:
    return Assessment(
        id=row.id,
        trace_id=row.trace_id,
        name=row.name,
        value=loads(row.value),
        rationale=row.rationale,
        source_type=AssessmentSource(row.source_type),
        source_id=row.source_id,
        error=loads(row.error),
        metadata=loads(row.metadata_json),
        idempotency_key=row.idempotency_key,
        created_at_ms=row.created_at_ms,
        updated_at_ms=row.updated_at_ms,
    )
