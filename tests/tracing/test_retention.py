"""Trace retention on each database: old traces go with everything that hangs off them, in
short transactions; recent ones, and a trace that comes back, are untouched; the leader's
pruner runs it only when asked; and the CLI."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import assay
from assay.db.tables import (
    assessments,
    scoring_tasks,
    span_log_events,
    spans,
    trace_metadata,
    trace_tags,
    traces,
)
from assay.jobs.store import JobStore
from assay.scoring.jobs import TracePruner
from assay.scoring.service import ScoringService
from assay.stores import Stores
from assay.tracing.log_events import LogEvent
from assay.tracing.model import AssessmentSource, NewAssessment
from assay.tracing.store import _span_row
from support.scoring import experiment, new_trace_id, register, settings_for, trace_spans
from support.timing import wait_until

DAY_NS = 86_400 * 10**9
WEEK_S = 7 * 86_400.0


@pytest.fixture
def engine(store_uri: str) -> Iterator[sa.Engine]:
    eng = assay.db.create_engine(store_uri)
    assay.db.upgrade(eng)
    yield eng
    eng.dispose()


def _rows(engine: sa.Engine, table: sa.Table, trace_ids: list[str]) -> int:
    column = table.c.target_id if table is scoring_tasks else table.c.trace_id
    query = sa.select(sa.func.count()).select_from(table).where(column.in_(trace_ids))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_prune_deletes_old_traces_with_all_their_rows(store_uri, engine) -> None:
    settings = settings_for(store_uri)
    stores = Stores.open(engine, settings)
    e = experiment(engine)
    register(ScoringService(stores, settings), e, "length")  # ledger rows for every trace
    now_ns = time.time_ns()
    old = sorted(new_trace_id() for _ in range(7))
    recent = sorted(new_trace_id() for _ in range(3))
    batch = [
        span
        for i, t in enumerate(old)
        for span in trace_spans(t, start_ns=now_ns - (30 - i) * DAY_NS, metadata={"user": "u"})
    ]
    batch += [span for t in recent for span in trace_spans(t, start_ns=now_ns)]
    stores.traces.spans_ingest({e: batch})
    stores.traces.assessments_write(
        [NewAssessment(t, "quality", 1, AssessmentSource.HUMAN, "me") for t in (old[0], recent[0])]
    )
    event = LogEvent(old[1], old[1][:16], "gen_ai.user.message", now_ns, {"content": "hi"})
    stores.traces.log_events_ingest({e: [event]})
    children = (assessments, spans, span_log_events, trace_metadata, trace_tags, scoring_tasks)
    assert all(_rows(engine, table, old) > 0 for table in children)
    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda conn: commits.append(1))

    assert stores.traces.traces_prune(WEEK_S, batch=3, duty=1.0) == len(old)
    assert len(commits) >= 3  # 7 traces in transactions of at most 3
    for table in (*children, traces):
        assert _rows(engine, table, old) == 0, table.name
    found = stores.traces.traces_search([e], max_results=100).traces
    assert sorted(t.trace_id for t in found) == recent
    assert _rows(engine, assessments, recent) == 1
    assert _rows(engine, scoring_tasks, recent) == len(recent)
    # A text search (SQLite: its FTS index follows the deleted rows) finds only what is left.
    texts = stores.traces.traces_search([e], "trace.request_preview LIKE '%\"q %'").traces
    assert sorted(t.trace_id for t in texts) == recent
    # Nothing is old enough any more; a span of a pruned trace that comes late starts afresh.
    assert stores.traces.traces_prune(WEEK_S, duty=1.0) == 0
    stores.traces.spans_ingest({e: trace_spans(old[0], child=False, start_ns=now_ns)})
    back = stores.traces.trace_get(old[0])
    assert back is not None
    assert back.span_count == 1


def test_prune_deletes_old_log_events_whose_trace_never_came(store_uri, engine) -> None:
    """GenAI log events wait for their trace's spans; when those never come, the events go
    once they are older than the retention. Events of a stored trace stay with it."""
    stores = Stores.open(engine, settings_for(store_uri))
    e = experiment(engine)
    now_ns = time.time_ns()
    orphans = sorted(new_trace_id() for _ in range(7))
    young, kept = new_trace_id(), new_trace_id()
    stores.traces.spans_ingest({e: trace_spans(kept, start_ns=now_ns)})

    def event(trace_id: str) -> LogEvent:
        return LogEvent(trace_id, trace_id[:16], "gen_ai.user.message", now_ns, {"content": "hi"})

    stores.traces.log_events_ingest({e: [event(t) for t in [*orphans, kept]]})
    month = 30 * 86_400_000
    with engine.begin() as conn:  # they arrived a month ago
        conn.execute(
            span_log_events.update().values(created_at_ms=span_log_events.c.created_at_ms - month)
        )
    stores.traces.log_events_ingest({e: [event(young)]})
    assert _rows(engine, span_log_events, orphans) == len(orphans)
    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda conn: commits.append(1))

    assert stores.traces.traces_prune(WEEK_S, batch=3, duty=1.0) == 0
    assert _rows(engine, span_log_events, orphans) == 0
    assert len(commits) >= 3  # 8 old events read in transactions of at most 3
    assert _rows(engine, span_log_events, [young, kept]) == 2
    detail = stores.traces.trace_detail(kept)
    assert detail is not None
    assert "gen_ai.user.message" in [ev["name"] for s in detail.spans for ev in s.events]


@pytest.mark.parametrize("store_uri", ["postgresql"], indirect=True)
def test_prune_waits_for_an_ingest_of_the_same_trace(store_uri, engine) -> None:
    """A batch locks its traces first, as an ingest does: a span written meanwhile is either
    in before the prune reads the trace's rows (and goes with it) or waits for the prune and
    starts a new trace; no foreign key is ever broken."""
    stores = Stores.open(engine, settings_for(store_uri))
    e = experiment(engine)
    trace_id = new_trace_id()
    old_ns = time.time_ns() - 30 * DAY_NS
    stores.traces.spans_ingest({e: trace_spans(trace_id, child=False, start_ns=old_ns)})
    late = trace_spans(trace_id, root=False, start_ns=old_ns)
    with engine.connect() as ingest:  # an ingest in flight: the trace row locked
        ingest.execute(
            sa.select(traces.c.trace_id).where(traces.c.trace_id == trace_id).with_for_update()
        )
        result: dict[str, Any] = {}
        pruner = threading.Thread(
            target=lambda: result.update(n=stores.traces.traces_prune(WEEK_S, duty=1.0))
        )
        pruner.start()

        def prune_waits() -> bool:
            with engine.connect() as conn:
                query = (
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                return bool(conn.exec_driver_sql(query).scalar_one())

        wait_until(prune_waits)
        ingest.execute(spans.insert(), [_span_row(s, {}) for s in late])
        ingest.commit()
    pruner.join(timeout=60)
    assert result == {"n": 1}
    assert _rows(engine, spans, [trace_id]) == 0
    assert _rows(engine, traces, [trace_id]) == 0


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_the_leaders_pruner_runs_only_with_a_retention(store_uri, engine) -> None:
    stores = Stores.open(engine, settings_for(store_uri))
    e = experiment(engine)
    trace_id = new_trace_id()
    stores.traces.spans_ingest({e: trace_spans(trace_id, start_ns=time.time_ns() - 30 * DAY_NS)})
    jobs = JobStore(engine)
    TracePruner(jobs, settings_for(store_uri)).tick()  # no retention set: traces are kept
    assert stores.traces.trace_get(trace_id) is not None
    TracePruner(jobs, settings_for(store_uri, trace_retention_s=WEEK_S)).tick()
    assert stores.traces.trace_get(trace_id) is None


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_cli_traces_prune(store_uri, engine) -> None:
    stores = Stores.open(engine, settings_for(store_uri))
    e = experiment(engine)
    now_ns = time.time_ns()
    old, recent = new_trace_id(), new_trace_id()
    stores.traces.spans_ingest({e: trace_spans(old, start_ns=now_ns - 30 * DAY_NS)})
    stores.traces.spans_ingest({e: trace_spans(recent, start_ns=now_ns)})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "assay", "traces", "prune", *args, "--store", store_uri]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    done = cli("--older-than", "7d")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "deleted 1 traces"
    assert stores.traces.trace_get(old) is None
    assert stores.traces.trace_get(recent) is not None
    bad = cli("--older-than", "7x")
    assert bad.returncode == 2
    assert "7x" in bad.stderr
    assert "Traceback" not in bad.stderr
