"""The job store's hot-path statements, built once per store (SQLAlchemy then reuses their
compiled form). Among them THE claim query (:func:`claim_query`): jobs are picked for running
there and nowhere else.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from assay.db.tables import job_attempts, job_locks, jobs
from assay.jobs.locks import HOLD_AT_SUBMIT
from assay.jobs.model import JobStatus

__all__ = [
    "claim_and_start",
    "claim_query",
    "finish",
    "finish_returning",
    "record_attempt",
    "retry",
    "still",
]

_PENDING = JobStatus.PENDING.value
_RUNNING = JobStatus.RUNNING.value


def still(status: Any) -> sa.ColumnElement[bool]:
    """The guard of a change to jobs picked by id: ``jobs.status`` is still ``status``.

    Written as an expression (``status || ''``) that no index serves, so that the id (the
    primary key) drives the plan. PostgreSQL's statistics of a queue table nearly always say
    that no row is PENDING (autovacuum's ANALYZE saw a drained queue), and with a plain
    ``status = 'PENDING'`` the planner drove an update by id from ``ix_jobs_status_created``
    instead, reading every pending job: with 10,000 queued a claim took ~225 ms and a worker
    ran ~200 jobs/s instead of thousands (bench/README.md, ``scale.py``).
    """
    unindexed = jobs.c.status.concat(sa.literal_column("''"))
    guard: sa.ColumnElement[bool] = unindexed == status
    return guard


def claim_and_start(claim: sa.Select[Any], start: dict[str, Any]) -> Any:
    """PostgreSQL: the claim query and the start of the jobs it picks, in one statement
    (one round trip; River's and Oban's claims have this shape).

    Jobs without a lock key start at once (``started`` is true in their rows). Those with
    one come back as they are, still PENDING but locked by this transaction (FOR UPDATE),
    for :meth:`JobStore.jobs_claim` to take their lock first, as on the other databases.
    """
    picked = claim.cte("picked")
    started = (
        jobs.update()
        .where(jobs.c.id == picked.c.id, picked.c.lock_key.is_(None), still(_PENDING))
        .values(**start)
        .returning(*jobs.c)
        .cte("started")
    )
    return sa.select(*started.c, sa.true().label("started")).union_all(
        sa.select(*jobs.c, sa.false().label("started"))
        .join_from(jobs, picked, jobs.c.id == picked.c.id)
        .where(picked.c.lock_key.is_not(None))
    )


def finish_returning(now: sa.ColumnElement[Any]) -> Any:
    """PostgreSQL: the ends of a batch of executions in ONE statement, their attempt
    records included (``JobStore.jobs_finish``, for every status but a retry).

    The batch comes in as one JSON array of objects (``json_to_recordset``): one statement
    text for any batch size, so it is prepared once, and one ``json.dumps`` in C instead of
    the driver adapting every value of every row. The UPDATE is guarded like every finish
    (RUNNING, same worker and attempt) and its RETURNING says exactly which applied: under
    READ COMMITTED a row changed meanwhile by a cancel or the rescuer is checked again
    against the guard. A finish changes neither ``worker_id``, ``attempt`` nor
    ``started_at_ms``, so the new row has what the attempt record needs: the rows are not
    read (and locked) first.
    """
    columns = {
        "id": sa.String,
        "worker_id": sa.String,
        "attempt": sa.Integer,
        "status": sa.String,
        "result": sa.Text,
        "error": sa.Text,
        "log_tail": sa.Text,
        "progress": sa.Text,
    }
    rows = sa.cast(sa.bindparam("f_rows", type_=sa.Text), postgresql.JSON)
    v = (
        sa.func.json_to_recordset(rows)
        .table_valued(*(sa.column(c, t) for c, t in columns.items()))
        .render_derived("v", with_types=True)
    )
    done = (
        jobs.update()
        .where(
            jobs.c.id == v.c.id,
            jobs.c.status == _RUNNING,
            jobs.c.worker_id == v.c.worker_id,
            jobs.c.attempt == v.c.attempt,
        )
        .values(
            status=v.c.status,
            result=v.c.result,
            error=v.c.error,
            log_tail=sa.func.coalesce(v.c.log_tail, jobs.c.log_tail),
            progress=sa.func.coalesce(v.c.progress, jobs.c.progress),
            finished_at_ms=now,
            lease_expires_at_ms=None,
        )
        .returning(
            jobs.c.id,
            jobs.c.attempt,
            jobs.c.worker_id,
            jobs.c.status,
            jobs.c.error,
            jobs.c.started_at_ms,
            jobs.c.finished_at_ms,
        )
        .cte("done")
    )
    recorded = ["job_id", "attempt", "worker_id", "status", "error"]
    recorded += ["started_at_ms", "finished_at_ms"]
    return (
        job_attempts.insert()
        .from_select(recorded, sa.select(*done.c))
        .returning(job_attempts.c.job_id, job_attempts.c.worker_id, job_attempts.c.attempt)
    )


def claim_query(now: sa.ColumnElement[Any]) -> sa.Select[Any]:
    """THE claim query; the only place jobs are picked for running.

    Its shape, and why:
    - ``status = PENDING AND run_at <= now ORDER BY run_at`` walks ix_jobs_status_run_at, so
      the cost does not grow with the number of finished jobs. On PostgreSQL it runs with
      sorts disabled (:data:`assay.jobs.store._NO_SORT`), so that this stays the plan whatever the
      statistics say: sorting the backlog made every claim cost O(pending jobs).
    - Queue-policy jobs whose lock is held (and live) are left out here so a long queue of
      them cannot fill every batch; skip- and coalesce-policy ones (which hold their own
      key while pending) are taken, so the claim can cancel them if they lost it.
      This filter is only an optimisation: the lock insert in the same transaction is the
      real guard.
    - ``FOR UPDATE SKIP LOCKED`` (PostgreSQL, MariaDB/MySQL) lets concurrent claimers take
      disjoint rows without waiting on each other. SQLite renders no FOR UPDATE; there the
      whole claim runs inside one BEGIN IMMEDIATE write transaction, which serialises
      claimers.
    """
    held = (
        sa.select(job_locks.c.lock_key)
        .where(job_locks.c.lock_key == jobs.c.lock_key, job_locks.c.expires_at_ms > now)
        .exists()
    )
    return (
        sa.select(
            jobs.c.id,
            jobs.c.name,
            jobs.c.lock_key,
            jobs.c.on_conflict,
            jobs.c.run_at_ms,
            jobs.c.attempt,
        )
        .where(
            jobs.c.status == _PENDING,
            jobs.c.run_at_ms <= now,
            jobs.c.name.in_(sa.bindparam("names", expanding=True)),
            sa.or_(jobs.c.lock_key.is_(None), jobs.c.on_conflict.in_(HOLD_AT_SUBMIT), ~held),
        )
        .order_by(jobs.c.run_at_ms)
        .limit(sa.bindparam("limit", type_=sa.Integer))
        .with_for_update(skip_locked=True)
    )


def _owned() -> tuple[sa.ColumnElement[bool], ...]:
    """The guard of every change to a running job: still RUNNING, by the same execution."""
    return (
        jobs.c.id == sa.bindparam("b_id"),
        jobs.c.status == _RUNNING,
        jobs.c.worker_id == sa.bindparam("b_worker"),
        jobs.c.attempt == sa.bindparam("b_attempt"),
    )


def finish(now: sa.ColumnElement[Any]) -> sa.Update:
    """The end of one execution (any status but a retry)."""
    return (
        jobs.update()
        .where(*_owned())
        .values(
            status=sa.bindparam("b_status"),
            result=sa.bindparam("b_result"),
            error=sa.bindparam("b_error"),
            log_tail=sa.func.coalesce(sa.bindparam("b_log", type_=sa.Text), jobs.c.log_tail),
            progress=sa.func.coalesce(sa.bindparam("b_progress", type_=sa.Text), jobs.c.progress),
            finished_at_ms=now,
            lease_expires_at_ms=None,
        )
    )


def retry(now: sa.ColumnElement[Any]) -> sa.Update:
    """An execution's job back to PENDING, to run again after ``b_delay`` ms."""
    return (
        jobs.update()
        .where(*_owned())
        .values(
            status=_PENDING,
            worker_id=None,
            started_at_ms=None,
            lease_expires_at_ms=None,
            run_at_ms=now + sa.bindparam("b_delay", type_=sa.BigInteger),
            error=sa.bindparam("b_error"),
            log_tail=sa.func.coalesce(sa.bindparam("b_log", type_=sa.Text), jobs.c.log_tail),
        )
    )


def record_attempt(now: sa.ColumnElement[Any]) -> sa.Insert:
    """One row per ended execution, read from the job row before the update that ends it."""
    return job_attempts.insert().from_select(
        ["job_id", "attempt", "worker_id", "status", "error", "started_at_ms", "finished_at_ms"],
        sa.select(
            jobs.c.id,
            jobs.c.attempt,
            jobs.c.worker_id,
            sa.bindparam("a_status", type_=sa.String),
            sa.bindparam("a_error", type_=sa.Text),
            jobs.c.started_at_ms,
            now,
        ).where(
            jobs.c.id == sa.bindparam("a_id"),
            jobs.c.status == _RUNNING,
            jobs.c.worker_id == sa.bindparam("a_worker"),
            jobs.c.attempt == sa.bindparam("a_attempt"),
        ),
    )
