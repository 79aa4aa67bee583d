"""Costs that stay flat as the tables grow (``bench/scale.py`` measures them at a million rows):
trace searches that start from the right index, and a prune in short transactions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

import assay
from assay import Backend
from assay.db import tables
from assay.tracing.store import TraceStore


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = assay.db.create_engine(f"sqlite:///{tmp_path / 'scale.db'}")
    assay.db.upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def _seed_traces(engine: sa.Engine, count: int, user_of: Callable[[int], str]) -> None:
    """``count`` traces of experiment e1, trace ``i`` starting at ``i`` ms; every trace has
    ``env = prod`` and ``user = user_of(i)`` metadata, and session ``s<i // 5>``."""
    with engine.begin() as conn:
        conn.execute(tables.experiments.insert().values(id="e1", name="e1", created_at_ms=0))
        conn.execute(
            tables.traces.insert(),
            [
                {
                    "trace_id": f"t{i:05d}",
                    "experiment_id": "e1",
                    "status": "ERROR" if i % 10 == 0 else "OK",
                    "start_time_ms": i,
                    "session_id": f"s{i // 5}",
                    "metadata_json": "{}",
                    "tags_json": "{}",
                    "span_count": 0,
                    "created_at_ms": i,
                    "updated_at_ms": i,
                }
                for i in range(count)
            ],
        )
        conn.execute(
            tables.trace_metadata.insert(),
            [
                {"trace_id": f"t{i:05d}", "key": key, "value": value}
                for i in range(count)
                for key, value in (("env", "prod"), ("user", user_of(i)))
            ],
        )


def _main_plan(engine: sa.Engine, call: Callable[[], Any]) -> str:
    """SQLite's plan of the last SELECT ``call`` runs (the search itself)."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = seen[-1]
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    return "\n".join(row[3] for row in rows)


def _pages(store: TraceStore, filter_string: str, size: int) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        page = store.traces_search(["e1"], filter_string, max_results=size, page_token=token)
        ids += [t.trace_id for t in page.traces]
        token = page.next_page_token
        if token is None:
            return ids


def test_a_rare_metadata_value_drives_the_search_on_sqlite(sqlite_engine: sa.Engine) -> None:
    """Without statistics SQLite walks the experiment newest first and probes every trace for
    the value: a scan of the whole experiment when 120 traces of it have the value. A value
    with fewer than 2,000 rows starts the search instead; a common one is still walked."""
    count = 2100
    _seed_traces(sqlite_engine, count, lambda i: "rare" if i % 17 == 0 else f"u{i % 3}")
    store = TraceStore(sqlite_engine)
    rare = [f"t{i:05d}" for i in reversed(range(count)) if i % 17 == 0]
    assert len(rare) == 124

    assert _pages(store, "metadata.user = 'rare'", 50) == rare
    assert _pages(store, "metadata.user IN ('rare', 'nobody')", 50) == rare
    both = "metadata.env = 'prod' AND metadata.user = 'rare' AND trace.status = 'ERROR'"
    assert _pages(store, both, 50) == [t for t in rare if int(t[1:]) % 10 == 0]
    plan = _main_plan(sqlite_engine, lambda: store.traces_search(["e1"], both, max_results=50))
    assert plan.splitlines()[0:2] == [
        "MATERIALIZE rarest",
        "SEARCH trace_metadata USING INDEX ix_trace_metadata_key_value (key=? AND value=?)",
    ], plan
    assert "ix_traces_experiment_start" not in plan

    newest = [f"t{i:05d}" for i in reversed(range(count))][:50]
    page = store.traces_search(["e1"], "metadata.env = 'prod'", max_results=50)
    assert [t.trace_id for t in page.traces] == newest
    plan = _main_plan(
        sqlite_engine, lambda: store.traces_search(["e1"], "metadata.env = 'prod'", max_results=50)
    )
    assert "rarest" not in plan
    assert "ix_traces_experiment_start" in plan


def test_session_and_status_searches_use_their_index(sqlite_engine: sa.Engine) -> None:
    """A session's traces and a status filter are ranges of an index in the search's order,
    not a walk of the experiment (SQLite chose the walk, for its order, before 0008)."""
    _seed_traces(sqlite_engine, 50, lambda i: f"u{i}")
    store = TraceStore(sqlite_engine)
    for filter_string, index, expected in (
        ("trace.session_id = 's3'", "ix_traces_experiment_session", ["t00019", "t00018"]),
        ("trace.status = 'ERROR'", "ix_traces_experiment_status", ["t00040", "t00030"]),
    ):
        page = store.traces_search(["e1"], filter_string, max_results=2)
        assert [t.trace_id for t in page.traces] == expected

        def search(text: str = filter_string) -> Any:
            return store.traces_search(["e1"], text, max_results=2)

        assert f"USING INDEX {index}" in _main_plan(sqlite_engine, search)


def test_prune_deletes_in_short_transactions(backend: Backend) -> None:
    """Each transaction is sized from the one before to take about ``tx_ms``: a backlog
    goes in many small deletes, never one that holds the database long; every old finished
    job goes (with its attempt records), live and recent ones stay."""
    jobs, attempts = tables.jobs, tables.job_attempts
    old = {"SUCCEEDED": 150, "FAILED": 150, "CANCELED": 10, "TIMEOUT": 10}
    made = backend.submit_many("t_noop", [{}] * (sum(old.values()) + 6))
    old_ids = [j.id for j in made[: sum(old.values())]]
    statuses = [status for status, n in old.items() for _ in range(n)]
    live, recent = [j.id for j in made[-6:-3]], [j.id for j in made[-3:]]
    with backend.engine.begin() as conn:
        for i, (job_id, status) in enumerate(zip(old_ids, statuses, strict=True)):
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(status=status, attempt=1, created_at_ms=1 + i, finished_at_ms=2 + i)
            )
        conn.execute(jobs.update().where(jobs.c.id.in_(live)).values(created_at_ms=1))
        conn.execute(
            jobs.update()
            .where(jobs.c.id.in_(recent))
            .values(status="SUCCEEDED", finished_at_ms=jobs.c.created_at_ms)
        )
        conn.execute(
            attempts.insert(),
            [
                {"job_id": job_id, "attempt": 1, "status": "SUCCEEDED", "finished_at_ms": 2}
                for job_id in old_ids
            ],
        )

    deletes: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM JOBS"):
            deletes.append(len(parameters))

    event.listen(backend.engine, "before_cursor_execute", count)
    try:
        assert backend.store.jobs_prune(3600, tx_ms=0.001) == len(old_ids)
    finally:
        event.remove(backend.engine, "before_cursor_execute", count)
    assert sum(deletes) == len(old_ids)
    assert max(deletes) <= 100
    assert len(deletes) >= 20, deletes
    assert max(deletes[2:]) <= 10, deletes
    left = {j.id for j in backend.store.jobs_get_many([j.id for j in made])}
    assert left == set(live) | set(recent)
    with backend.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(attempts)).scalar_one() == 0
