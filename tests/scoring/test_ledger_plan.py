"""The ledger's claim reads one scorer's range of ix_scoring_tasks_claim and stops after its
limit, whatever the other scorers' backlogs and PostgreSQL's statistics say; the prune reads
the decided rows only."""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa

import assay
from assay.scoring.model import Level
from assay.scoring.service import ScoringService
from assay.stores import Stores
from support.scoring import experiment, register, settings_for

# Ledger rows of experiment :e and scorer :name, written in one statement (the plan is the
# point, not the ingest): due at :first, :first + 1, ... for :count rows.
_ROWS = """
INSERT INTO scoring_tasks (experiment_id, level, target_id, scorer_name, state, due_at_ms,
                           attempts, generation, created_at_ms, updated_at_ms)
SELECT :e, 'trace', md5(:name || (:first + g)::text), :name, :state, :first + g, 0, 0, 0, 0
FROM generate_series(1, :count) AS g
"""


@pytest.mark.parametrize("store_uri", ["postgresql"], indirect=True)
def test_a_paused_scorers_backlog_is_never_read_by_the_others_claims(store_uri: str) -> None:
    """A paused scorer keeps getting rows, due before everyone else's. The claim index had no
    scorer in its key, so every claim of the active scorer read through the whole paused
    backlog (a scan of 100,000 rows, 16 ms per claim); and when autovacuum had analysed a
    drained ledger, the planner took the prune's (state, due_at_ms) index instead, reading
    the PENDING rows of every experiment."""
    engine = assay.db.create_engine(store_uri)
    try:
        assay.db.upgrade(engine)
        settings = settings_for(store_uri)
        stores = Stores.open(engine, settings)
        service = ScoringService(stores, settings)
        e = experiment(engine)
        for name in ("active", "paused"):
            register(service, e, name)
        service.set_status(e, "paused", "PAUSED")

        def write(name: str, state: str, first: int, count: int) -> None:
            params = {"e": e, "name": name, "state": state, "first": first, "count": count}
            with engine.begin() as conn:
                conn.execute(sa.text(_ROWS), params)

        write("active", "FILTERED", 0, 20_000)  # decided rows: the statistics see no PENDING
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE scoring_tasks"))
        write("paused", "PENDING", 100_000, 20_000)
        write("active", "PENDING", 200_000, 100)
        ran: list[tuple[str, Any]] = []

        def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            if statement.startswith("SELECT") and "FROM scoring_tasks" in statement:
                ran.append((statement, parameters))

        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            claimed = stores.scoring.tasks_claim(e, Level.TRACE, "w1", limit=50, lease_ms=60_000)
            stores.scoring.tasks_prune(0)
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)
        assert len(claimed) == 50
        assert {t.scorer_name for t in claimed} == {"active"}
        claim, prune = ran[0], ran[-1]
        with engine.begin() as conn:
            plan = "\n".join(
                r[0] for r in conn.exec_driver_sql(f"EXPLAIN ANALYZE {claim[0]}", claim[1])
            )
            assert "Index Scan using ix_scoring_tasks_claim" in plan, plan
            assert "scorer_name" in plan.split("Index Cond:")[1].split("\n")[0], plan
            # Read again after the claim: only the 50 rows it leased are passed over.
            removed = re.findall(r"Rows Removed by Filter: (\d+)", plan)
            assert sum(map(int, removed)) <= 50, plan
            # The prune's predicate is the partial index's, so the index can serve it (whether
            # it does depends on how many rows are decided; forbid the scan to see it can).
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {prune[0]}", prune[1]))
            assert "ix_scoring_tasks_decided" in plan, plan
        with engine.connect() as conn:
            left = conn.execute(sa.text("SELECT state, count(*) FROM scoring_tasks GROUP BY 1"))
            assert dict(left.all()) == {"PENDING": 20_100}  # the prune took the decided ones
    finally:
        engine.dispose()
