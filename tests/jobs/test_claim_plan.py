"""The claim walks ix_jobs_status_run_at in run_at order and stops after its limit, whatever
PostgreSQL's statistics say, and batches of ends apply exactly like single ones."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

import assay
from assay.jobs.model import JobStatus
from assay.jobs.store import _NO_SORT, Finish
from support.jobs import FAST

# 20,000 runnable jobs, written in one statement (the claim plan is the point, not submits).
_BACKLOG = """
INSERT INTO jobs (id, name, params, status, attempt, max_retries, timeout_s, on_conflict,
                  created_at_ms, run_at_ms)
SELECT md5(g::text), 't_noop', '{}', 'PENDING', 0, 0, 60, 'skip', g, g
FROM generate_series(1, 20000) AS g
"""


@pytest.mark.parametrize("store_uri", ["postgresql"], indirect=True)
def test_claim_never_sorts_the_backlog_on_stale_statistics(store_uri: str) -> None:
    """A backlog in a table that has not been analysed since it grew looks like a few rows to
    the planner. It then read every PENDING row (a bitmap scan, ANDed with the name index)
    and sorted them, for every claim: O(backlog) per claim, 10 ms at 10,000 pending jobs."""
    with assay.connect(store_uri, **FAST) as backend:
        store = backend.store
        with store.engine.begin() as conn:
            conn.execute(sa.text(_BACKLOG))
        query = store._claim_query.params(names=["t_noop"], limit=100)
        sql = query.compile(
            dialect=store.engine.dialect,
            compile_kwargs={"literal_binds": True, "render_postcompile": True},
        )
        with store.engine.begin() as conn:
            conn.execute(_NO_SORT)  # as jobs_claim does
            plan = "\n".join(conn.execute(sa.text(f"EXPLAIN {sql}")).scalars())
        assert "Sort" not in plan, plan
        assert "Index Scan using ix_jobs_status_run_at" in plan, plan
        claimed = store.jobs_claim("w1", limit=100, names=["t_noop"], lease_ttl_s=60)
        assert [j.created_at for j in claimed] == sorted(j.created_at for j in claimed)
        assert len(claimed) == 100
        assert int(claimed[0].created_at.timestamp() * 1000) == 1  # the oldest first


@pytest.mark.parametrize("store_uri", ["postgresql"], indirect=True)
def test_updates_by_id_use_the_primary_key_when_statistics_say_nothing_is_pending(
    store_uri: str,
) -> None:
    """Autovacuum analyses a queue table when it is drained, so its statistics say no job is
    PENDING. With ``status = 'PENDING'`` as their guard, the start of the claimed jobs and
    a cancel by id were then driven from ix_jobs_status_created, reading the whole backlog:
    225 ms per claim at 10,000 pending jobs, ~200 jobs/s per worker."""
    with assay.connect(store_uri, **FAST) as backend:
        store = backend.store
        with store.engine.begin() as conn:
            conn.execute(sa.text(_BACKLOG.replace("'PENDING'", "'SUCCEEDED'")))
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE jobs"))
        with store.engine.begin() as conn:
            conn.execute(sa.text(_BACKLOG.replace("md5(g::text)", "'p' || g")))
        ran: list[tuple[str, Any]] = []

        def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            if statement.startswith(("WITH picked", "UPDATE jobs")):
                ran.append((statement, parameters))

        sa.event.listen(store.engine, "before_cursor_execute", record)
        try:
            one = store.jobs_claim("w1", limit=50, names=["t_noop"], lease_ttl_s=60)
            # Two groups (a capped name): the claim query, then the start by ids.
            two = store.jobs_claim(
                "w1", limit=50, names=["t_noop", "t_add"], capped={"t_add": 1}, lease_ttl_s=60
            )
            canceled = backend.cancel("p20000")
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", record)
        assert (len(one), len(two), canceled.status) == (50, 50, JobStatus.CANCELED)
        assert [s.split()[0] for s, _ in ran] == ["WITH", "UPDATE", "UPDATE"]
        with store.engine.begin() as conn:
            conn.execute(_NO_SORT)  # as jobs_claim does
            for statement, parameters in ran:
                plan = "\n".join(
                    r[0] for r in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)
                )
                assert "ix_jobs_status_created" not in plan, plan
                assert "jobs_pkey" in plan, plan


def test_a_batch_of_ends_applies_each_only_to_its_own_execution(backend) -> None:
    """One finish batch mixing ends that apply, stale ones (another attempt, another worker,
    a cancelled job) and a retry: each reports exactly whether it applied, and only the
    applied ones leave an attempt record."""
    store = backend.store
    jobs = backend.submit_many("t_noop", [{}] * 5)
    claimed = store.jobs_claim("w1", limit=5, names=["t_noop"], lease_ttl_s=60)
    assert {j.id for j in claimed} == {j.id for j in jobs}
    a, b, c, d, e = sorted(claimed, key=lambda j: j.id)
    backend.cancel(c.id)
    finishes = [
        Finish(a.id, "w1", a.attempt, JobStatus.SUCCEEDED, result={"x": 1}, result_json='{"x":1}'),
        Finish(b.id, "w1", b.attempt + 1, JobStatus.SUCCEEDED),  # not this attempt
        Finish(c.id, "w1", c.attempt, JobStatus.FAILED, error="late"),  # cancelled meanwhile
        Finish(d.id, "w2", d.attempt, JobStatus.SUCCEEDED),  # not this worker
        Finish(e.id, "w1", e.attempt, JobStatus.PENDING, error="again", retry_delay_s=60),
    ]
    assert store.jobs_finish(finishes) == [True, False, False, False, True]
    after = {j.id: j for j in store.jobs_get_many([a.id, b.id, c.id, d.id, e.id])}
    assert after[a.id].status == JobStatus.SUCCEEDED
    assert after[a.id].result == {"x": 1}
    assert after[b.id].status == JobStatus.RUNNING
    assert after[c.id].status == JobStatus.CANCELED
    assert after[d.id].status == JobStatus.RUNNING
    assert after[e.id].status == JobStatus.PENDING
    assert [x.status for x in store.job_attempts(a.id)] == ["SUCCEEDED"]
    assert [x.status for x in store.job_attempts(b.id)] == []
    assert [x.status for x in store.job_attempts(c.id)] == ["CANCELED"]  # from the cancel
    assert [x.status for x in store.job_attempts(e.id)] == ["RETRIED"]
    assert store.jobs_finish([]) == []
