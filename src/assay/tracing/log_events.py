"""GenAI content events that arrive as OTLP log records, and how they join their spans.

OpenTelemetry's GenAI instrumentations (``opentelemetry-instrumentation-openai-v2`` by default)
put prompts and completions in log records (``gen_ai.user.message``, ``gen_ai.choice``...)
that carry the trace and span id of the call, sent to ``/v1/logs`` by their own exporter,
before or after the span. Each is stored as a row of ``span_log_events`` and read back as an
event of its span (:func:`attach`), so a trace's request and response are derived from them
whichever arrived first.

Why no event is ever missed by a summary: an insert (:func:`insert`) holds an exclusive lock
on its experiment's row, and every span ingest holds a shared one on it
(``TraceStore._check_experiments``) while it looks for the events of its traces
(:func:`traces_with_events`). So an ingest of spans either commits before the events are
written (the insert then finds the spans, and the trace is summarised again), or starts after
they committed (and reads them). Events join the spans of traces in their own experiment only.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from assay.db.base import require_rows
from assay.db.tables import experiments, span_log_events, spans, traces
from assay.errors import InvalidRequestError
from assay.tracing.model import Span
from assay.util import chunks

__all__ = ["LogEvent", "attach", "in_other_experiment", "insert", "traces_with_events"]

_CHUNK = 200


@dataclass(frozen=True)
class LogEvent:
    """One GenAI event of a span, as it is read back among the span's events."""

    trace_id: str
    span_id: str
    name: str
    time_unix_nano: int
    attributes: dict[str, Any]
    """The log record's body (its fields, or ``content``) and attributes."""


def insert(
    conn: sa.Connection, now_ms: int, by_experiment: Mapping[str, Sequence[LogEvent]]
) -> dict[str, set[str]]:
    """Store events (see the module's locking rule). NotFoundError for an unknown experiment,
    InvalidRequestError for an event of a trace stored in another experiment; nothing is
    written then. Returns, by experiment, the traces whose stored spans an event names: their
    summaries are out of date."""
    require_rows(conn, experiments.c.id, sorted(by_experiment), "experiment", lock="update")
    experiment_of = {e.trace_id: x for x, events in by_experiment.items() for e in events}
    other = in_other_experiment(conn, experiment_of)
    if other is not None:
        trace_id, stored = other
        raise InvalidRequestError(
            f"log records of trace {trace_id} name experiment "
            f"{experiment_of[trace_id]!r}, but its spans are in {stored!r}"
        )
    rows = [
        {
            "experiment_id": experiment_id,
            "trace_id": event.trace_id,
            "span_id": event.span_id,
            "name": event.name,
            "time_unix_nano": event.time_unix_nano,
            "attributes": json.dumps(event.attributes, separators=(",", ":")),
            "created_at_ms": now_ms,
        }
        for experiment_id, events in by_experiment.items()
        for event in events
    ]
    if rows:
        conn.execute(span_log_events.insert(), rows)
    wanted = {(e.trace_id, e.span_id) for events in by_experiment.values() for e in events}
    stale: dict[str, set[str]] = defaultdict(set)
    for chunk in chunks(sorted(experiment_of), _CHUNK):
        query = sa.select(spans.c.trace_id, spans.c.span_id).where(spans.c.trace_id.in_(chunk))
        for row in conn.execute(query):
            if (row.trace_id, row.span_id) in wanted:
                stale[experiment_of[row.trace_id]].add(row.trace_id)
    return dict(stale)


def in_other_experiment(
    conn: sa.Connection, experiment_of: Mapping[str, str]
) -> tuple[str, str] | None:
    """The first stored trace that ``experiment_of`` (trace id -> the experiment a request
    names) puts in another experiment than its own: (its id, its experiment); else None."""
    for chunk in chunks(sorted(experiment_of), _CHUNK):
        query = sa.select(traces.c.trace_id, traces.c.experiment_id).where(
            traces.c.trace_id.in_(chunk)
        )
        for row in conn.execute(query):
            if row.experiment_id != experiment_of[row.trace_id]:
                return row.trace_id, row.experiment_id
    return None


def traces_with_events(conn: sa.Connection, trace_ids: Sequence[str]) -> set[str]:
    """Of ``trace_ids``, those with stored log events."""
    found: set[str] = set()
    for chunk in chunks(sorted(trace_ids), _CHUNK):
        found.update(conn.execute(_WITH_EVENTS, {"ids": list(chunk)}).scalars().all())
    return found


_WITH_EVENTS = (
    sa.select(span_log_events.c.trace_id)
    .where(span_log_events.c.trace_id.in_(sa.bindparam("ids", expanding=True)))
    .distinct()
)


def attach(conn: sa.Connection, spans_by_trace: dict[str, list[Span]]) -> None:
    """Add to the spans (in place, by trace id) the log events of their experiment that name
    them, after their own events, in time order (then arrival order)."""
    if not spans_by_trace:
        return
    by_span: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for chunk in chunks(sorted(spans_by_trace), _CHUNK):
        query = (
            sa.select(
                span_log_events.c.trace_id,
                span_log_events.c.span_id,
                span_log_events.c.name,
                span_log_events.c.time_unix_nano,
                span_log_events.c.attributes,
            )
            .join(
                traces,
                sa.and_(
                    traces.c.trace_id == span_log_events.c.trace_id,
                    traces.c.experiment_id == span_log_events.c.experiment_id,
                ),
            )
            .where(span_log_events.c.trace_id.in_(chunk))
            .order_by(span_log_events.c.time_unix_nano, span_log_events.c.id)
        )
        for row in conn.execute(query):
            by_span[(row.trace_id, row.span_id)].append(
                {
                    "name": row.name,
                    "time_unix_nano": row.time_unix_nano,
                    "attributes": json.loads(row.attributes),
                }
            )
    if not by_span:
        return
    for trace_id, items in spans_by_trace.items():
        items[:] = [_with_events(span, by_span.get((trace_id, span.span_id))) for span in items]


def _with_events(span: Span, extra: list[dict[str, Any]] | None) -> Span:
    return span if not extra else dataclasses.replace(span, events=[*span.events, *extra])
