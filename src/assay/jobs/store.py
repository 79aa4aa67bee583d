"""The job store: every SQL statement about jobs, job locks and leader leases lives here.

Rules this module keeps:

- Every state change is a conditional UPDATE guarded on the current status (and, for a running
  job, on the execution that owns it: ``worker_id`` and ``attempt``) and reports whether it
  applied. A late result therefore never overwrites a cancel, a timeout or a rescue.
- Times come from the database clock (milliseconds since the epoch), so replicas with skewed
  clocks agree on leases and back-offs.
- Driver errors are translated to :class:`StoreError` here; deadlocks and lock time-outs are
  retried a few times first.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from assay.db.base import SqlStore
from assay.db.tables import job_attempts, job_locks, jobs, leader_leases, schedules
from assay.jobs.api import INTERNAL_PREFIX
from assay.jobs.metrics import JobMetrics
from assay.jobs.model import TERMINAL_STATUSES, Attempt, Job, JobStatus, Progress, ms_to_datetime
from assay.jobs.notify import FileWatch, RedisWakeups

__all__ = [
    "COALESCE",
    "Finish",
    "Fired",
    "JobStats",
    "JobStore",
    "NewJob",
    "QueueStats",
    "RescueResult",
    "RunningState",
]

log = logging.getLogger("assay.store")
T = TypeVar("T")

_PENDING = JobStatus.PENDING.value
_RUNNING = JobStatus.RUNNING.value
_CHUNK = 500
_NOTIFY_CHANNEL = "assay_jobs"
# SQLite watcher: how long a WAL write may precede its commit's data_version, and how often the
# watch returns to check for stop.
_SETTLE_S = 0.005
_WATCH_TIMEOUT_S = 0.5
# PostgreSQL plans the claim from its statistics. Gathered while the queue was short, they make
# a backlog look like a few rows, and the planner then reads every PENDING row (a bitmap scan
# of ix_jobs_status_run_at, ANDed with ix_jobs_name_created) and sorts them to keep `limit`:
# every claim costs O(backlog), 10 ms per claim at 10,000 pending jobs. The claim must walk
# the index in run_at order and stop after `limit` rows; without a sort, that is the only plan.
_NO_SORT = sa.text("SET LOCAL enable_sort = off")
# Attempt record statuses besides the job statuses an execution can end with.
RETRIED, LOST, HANDED_BACK = "RETRIED", "LOST", "HANDED_BACK"
COALESCE = "coalesce"
"""The scheduler's internal ``on_conflict`` policy: like ``skip``, but a job whose key is held is
dropped (nothing is stored) instead of being stored CANCELED."""
# Policies whose jobs hold their lock key from submit (while PENDING), not only while running.
_HOLD_AT_SUBMIT = ("skip", COALESCE)
# A pending skip-policy job holds its lock this long at most (the claim then renews it with
# the lease; cancel releases it). Past it, a new duplicate may take the key over, and the stale
# job is skipped when it is claimed: still exactly one of them runs.
_PENDING_LOCK_TTL_MS = 7 * 24 * 3600 * 1000
# An execution's lock outlives its lease by this much, so the rescuer always sees the lease
# expire first and can hand the lock on to the re-queued job instead of finding it gone.
_LOCK_MARGIN_MS = 1000


@dataclass(frozen=True)
class NewJob:
    id: str
    name: str
    params: dict[str, Any]
    max_retries: int
    timeout_s: float
    lock_key: str | None = None
    on_conflict: str = "skip"
    """``skip``, ``queue`` or (scheduler only) :data:`COALESCE`."""
    owner: str | None = None


@dataclass(frozen=True)
class Finish:
    """The end of one execution (or a retry, when ``status`` is PENDING)."""

    job_id: str
    worker_id: str
    attempt: int
    status: JobStatus
    result: Any = None
    result_json: str | None = None
    """``result`` as JSON text, when the caller has encoded it already (the worker checks it)."""
    error: str | None = None
    retry_delay_s: float = 0.0
    release_lock: bool = True
    """False when the code may still be executing (an inline job past its deadline)."""
    log_tail: str | None = None
    progress: Progress | None = None
    """The last progress the execution reported; None leaves the stored one as it is."""


@dataclass(frozen=True)
class RunningState:
    status: JobStatus
    worker_id: str | None
    attempt: int


@dataclass(frozen=True)
class Fired:
    """What :meth:`JobStore.schedule_fire` did with one slot of a schedule."""

    claimed: bool
    """False: the slot was no longer due (another scheduler fired it); nothing was done."""
    job: Job | None = None
    """The job submitted; None when the slot was claimed but coalesced."""
    holder: str | None = None
    """When coalesced: the job holding the schedule's lock key."""


@dataclass(frozen=True)
class RescueResult:
    requeued: list[str]
    failed: list[str]
    names: dict[str, str]
    """Job names by id (of every job in ``requeued`` and ``failed``)."""


@dataclass(frozen=True)
class QueueStats:
    """The runnable PENDING jobs (run_at has passed) of one name."""

    depth: int
    oldest_age_s: float
    waiting_for_lock: int
    """Of them, queue-policy jobs whose lock key another job holds."""


@dataclass(frozen=True)
class JobStats:
    """What the metrics read from the database at scrape time."""

    counts: dict[tuple[str, JobStatus], int]
    """PENDING and RUNNING jobs by name and status (finished jobs are not counted)."""
    queues: dict[str, QueueStats]
    names: list[str]
    """Every job name in the table, finished jobs' too."""


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class JobStore(SqlStore):
    """Typed access to the job tables of one database."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        wakeups: RedisWakeups | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(engine, clock_ms=clock_ms)
        self.wakeups = wakeups
        """Redis pub/sub wake-ups (``notify_url``), in place of the database's own."""
        self.metrics = JobMetrics(self)
        """What this process's users of the store did (claims, ends, rescues, conflicts)."""
        owned = (
            jobs.c.id == sa.bindparam("b_id"),
            jobs.c.status == _RUNNING,
            jobs.c.worker_id == sa.bindparam("b_worker"),
            jobs.c.attempt == sa.bindparam("b_attempt"),
        )
        self._finish_stmt = (
            jobs.update()
            .where(*owned)
            .values(
                status=sa.bindparam("b_status"),
                result=sa.bindparam("b_result"),
                error=sa.bindparam("b_error"),
                log_tail=sa.func.coalesce(sa.bindparam("b_log", type_=sa.Text), jobs.c.log_tail),
                progress=sa.func.coalesce(
                    sa.bindparam("b_progress", type_=sa.Text), jobs.c.progress
                ),
                finished_at_ms=self._now,
                lease_expires_at_ms=None,
            )
        )
        # Statements on the hot path are built once (SQLAlchemy then reuses their compiled form).
        self._claim_query = self._build_claim_query()
        self._insert_attempts = job_attempts.insert().values(finished_at_ms=self._now)
        # One row per ended execution, read from the job row before the update that ends it.
        self._record_attempt = job_attempts.insert().from_select(
            [
                "job_id",
                "attempt",
                "worker_id",
                "status",
                "error",
                "started_at_ms",
                "finished_at_ms",
            ],
            sa.select(
                jobs.c.id,
                jobs.c.attempt,
                jobs.c.worker_id,
                sa.bindparam("a_status", type_=sa.String),
                sa.bindparam("a_error", type_=sa.Text),
                jobs.c.started_at_ms,
                self._now,
            ).where(
                jobs.c.id == sa.bindparam("a_id"),
                jobs.c.status == _RUNNING,
                jobs.c.worker_id == sa.bindparam("a_worker"),
                jobs.c.attempt == sa.bindparam("a_attempt"),
            ),
        )
        # PostgreSQL takes the ids as one array: the statement's text is the same for every
        # batch, so psycopg prepares it once per connection (an IN list is parsed and planned
        # again for every length).
        ids: Any = jobs.c.id.in_(sa.bindparam("ids", expanding=True))
        if self.dialect == "postgresql":
            ids = jobs.c.id == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(sa.String)))
        start: dict[str, Any] = {
            "status": _RUNNING,
            "worker_id": sa.bindparam("b_worker"),
            "attempt": jobs.c.attempt + 1,
            "started_at_ms": self._now,
            "finished_at_ms": None,
            "lease_expires_at_ms": self._now + sa.bindparam("b_ttl", type_=sa.BigInteger),
        }
        self._start_stmt = jobs.update().where(ids, jobs.c.status == _PENDING).values(**start)
        self._start_returning = self._start_stmt.returning(*jobs.c)
        self._claim_and_start = self._build_claim_and_start(start)
        self._finish_returning = self._build_finish_returning()
        self._retry_stmt = (
            jobs.update()
            .where(*owned)
            .values(
                status=_PENDING,
                worker_id=None,
                started_at_ms=None,
                lease_expires_at_ms=None,
                run_at_ms=self._now + sa.bindparam("b_delay", type_=sa.BigInteger),
                error=sa.bindparam("b_error"),
                log_tail=sa.func.coalesce(sa.bindparam("b_log", type_=sa.Text), jobs.c.log_tail),
            )
        )

    def _build_claim_and_start(self, start: dict[str, Any]) -> Any:
        """PostgreSQL: the claim query and the start of the jobs it picks, in one statement
        (one round trip; River's and Oban's claims have this shape).

        Jobs without a lock key start at once (``started`` is true in their rows). Those with
        one come back as they are, still PENDING but locked by this transaction (FOR UPDATE),
        for :meth:`jobs_claim` to take their lock first, as on the other databases.
        """
        if self.dialect != "postgresql":
            return None
        picked = self._claim_query.cte("picked")
        started = (
            jobs.update()
            .where(jobs.c.id == picked.c.id, picked.c.lock_key.is_(None), jobs.c.status == _PENDING)
            .values(**start)
            .returning(*jobs.c)
            .cte("started")
        )
        return sa.select(*started.c, sa.true().label("started")).union_all(
            sa.select(*jobs.c, sa.false().label("started"))
            .join_from(jobs, picked, jobs.c.id == picked.c.id)
            .where(picked.c.lock_key.is_not(None))
        )

    def _build_finish_returning(self) -> Any:
        """PostgreSQL: the ends of a batch of executions in ONE statement, their attempt
        records included (``jobs_finish``, for every status but a retry).

        The batch comes in as one JSON array of objects (``json_to_recordset``): one statement
        text for any batch size, so it is prepared once, and one ``json.dumps`` in C instead of
        the driver adapting every value of every row. The UPDATE is guarded like every finish
        (RUNNING, same worker and attempt) and its RETURNING says exactly which applied: under
        READ COMMITTED a row changed meanwhile by a cancel or the rescuer is checked again
        against the guard. A finish changes neither ``worker_id``, ``attempt`` nor
        ``started_at_ms``, so the new row has what the attempt record needs: the rows are not
        read (and locked) first.
        """
        if self.dialect != "postgresql":
            return None
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
                finished_at_ms=self._now,
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

    def _build_claim_query(self) -> sa.Select[Any]:
        """THE claim query; the only place jobs are picked for running.

        Its shape, and why:
        - ``status = PENDING AND run_at <= now ORDER BY run_at`` walks ix_jobs_status_run_at, so
          the cost does not grow with the number of finished jobs. On PostgreSQL it runs with
          sorts disabled (:data:`_NO_SORT`), so that this stays the plan whatever the
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
            .where(job_locks.c.lock_key == jobs.c.lock_key, job_locks.c.expires_at_ms > self._now)
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
                jobs.c.run_at_ms <= self._now,
                jobs.c.name.in_(sa.bindparam("names", expanding=True)),
                sa.or_(jobs.c.lock_key.is_(None), jobs.c.on_conflict.in_(_HOLD_AT_SUBMIT), ~held),
            )
            .order_by(jobs.c.run_at_ms)
            .limit(sa.bindparam("limit", type_=sa.Integer))
            .with_for_update(skip_locked=True)
        )

    # -- plumbing ------------------------------------------------------------------------------

    # -- reading -------------------------------------------------------------------------------

    def job_get(self, job_id: str) -> Job | None:
        def body(conn: sa.Connection) -> Job | None:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
            return _to_job(row) if row else None

        return self._tx(body, write=False)

    def jobs_get_many(self, job_ids: Sequence[str]) -> list[Job]:
        return self._tx(lambda conn: self._select_jobs(conn, job_ids), write=False)

    def _select_jobs(self, conn: sa.Connection, job_ids: Sequence[str]) -> list[Job]:
        found: dict[str, Job] = {}
        for chunk in _chunks(job_ids):
            for row in conn.execute(sa.select(jobs).where(jobs.c.id.in_(chunk))):
                found[row.id] = _to_job(row)
        return [found[i] for i in job_ids if i in found]

    def jobs_search(
        self,
        *,
        names: Sequence[str] = (),
        statuses: Sequence[JobStatus] = (),
        owner: str | None = None,
        limit: int = 100,
        before: tuple[int, str] | None = None,
        id_prefix: str | None = None,
        include_internal: bool = True,
    ) -> list[Job]:
        """Newest first; ``before`` is the (created_at_ms, id) of the last job already seen.
        ``id_prefix``: only ids starting with it; ``include_internal=False`` leaves out jobs
        named :data:`~assay.jobs.api.INTERNAL_PREFIX`…"""
        query = sa.select(jobs)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        if names:
            query = query.where(jobs.c.name.in_(list(names)))
        if id_prefix is not None:
            # LIKE 'prefix%' (escaped), not a range: a range depends on the collation's order,
            # which need not be byte order (MySQL's UCA collations, glibc locales).
            query = query.where(jobs.c.id.startswith(id_prefix, autoescape=True))
        if not include_internal:
            query = query.where(sa.not_(jobs.c.name.startswith(INTERNAL_PREFIX, autoescape=True)))
        if statuses:
            query = query.where(jobs.c.status.in_([s.value for s in statuses]))
        if before is not None:
            created, last_id = before
            query = query.where(
                # The first bound lets the index seek; the second breaks ties on the same ms.
                jobs.c.created_at_ms <= created,
                sa.or_(
                    jobs.c.created_at_ms < created,
                    sa.and_(jobs.c.created_at_ms == created, jobs.c.id < last_id),
                ),
            )
        query = query.order_by(jobs.c.created_at_ms.desc(), jobs.c.id.desc()).limit(limit)
        return self._tx(lambda conn: [_to_job(r) for r in conn.execute(query)], write=False)

    def jobs_running_state(self, job_ids: Sequence[str]) -> dict[str, RunningState]:
        """Who owns each job now; a worker compares this with what it is executing."""

        def body(conn: sa.Connection) -> dict[str, RunningState]:
            out: dict[str, RunningState] = {}
            cols = (jobs.c.id, jobs.c.status, jobs.c.worker_id, jobs.c.attempt)
            for chunk in _chunks(job_ids):
                for row in conn.execute(sa.select(*cols).where(jobs.c.id.in_(chunk))):
                    out[row.id] = RunningState(JobStatus(row.status), row.worker_id, row.attempt)
            return out

        return self._tx(body, write=False)

    def jobs_stats(self) -> JobStats:
        """The live jobs by name and status, the runnable queue of each name, and every job
        name (for the metrics), without reading finished jobs.

        A table keeps months of finished jobs, so a scrape must not count them: one pass over
        the PENDING and RUNNING rows (a range of a status index) gives the counts and the
        queues, and the names are a loose index scan of ix_jobs_name_created (a recursive
        query that seeks the next name after the last one: one index seek per name).
        """
        held = (
            sa.select(job_locks.c.lock_key)
            .where(
                job_locks.c.lock_key == jobs.c.lock_key,
                job_locks.c.job_id != jobs.c.id,
                job_locks.c.expires_at_ms > self._now,
            )
            .exists()
        )
        runnable = sa.and_(jobs.c.status == _PENDING, jobs.c.run_at_ms <= self._now)
        waiting = sa.and_(
            runnable, jobs.c.on_conflict == "queue", jobs.c.lock_key.is_not(None), held
        )
        live = (
            sa.select(
                jobs.c.name,
                jobs.c.status,
                sa.func.count().label("n"),
                sa.func.sum(sa.case((runnable, 1), else_=0)).label("depth"),
                (self._now - sa.func.min(sa.case((runnable, jobs.c.run_at_ms)))).label("oldest_ms"),
                sa.func.sum(sa.case((waiting, 1), else_=0)).label("waiting"),
            )
            .where(jobs.c.status.in_([_PENDING, _RUNNING]))
            .group_by(jobs.c.name, jobs.c.status)
        )
        first = sa.select(sa.func.min(jobs.c.name).label("name")).cte("job_names", recursive=True)
        after = sa.select(sa.func.min(jobs.c.name)).where(jobs.c.name > first.c.name)
        walk = first.union_all(sa.select(after.scalar_subquery()).where(first.c.name.is_not(None)))
        names = sa.select(walk.c.name).where(walk.c.name.is_not(None))

        def body(conn: sa.Connection) -> JobStats:
            counts: dict[tuple[str, JobStatus], int] = {}
            queues: dict[str, QueueStats] = {}
            for r in conn.execute(live):
                counts[(r.name, JobStatus(r.status))] = int(r.n)
                if r.status == _PENDING and r.depth:
                    queues[r.name] = QueueStats(
                        depth=int(r.depth),
                        oldest_age_s=max(int(r.oldest_ms), 0) / 1000,
                        waiting_for_lock=int(r.waiting or 0),
                    )
            return JobStats(counts, queues, list(conn.execute(names).scalars()))

        return self._tx(body, write=False)

    # -- submitting ----------------------------------------------------------------------------

    def jobs_insert(self, new_jobs: Sequence[NewJob]) -> list[Job]:
        """Insert jobs in one transaction.

        Under the ``skip`` policy a job takes its lock key here, at submit (held while it is
        pending, then by its execution): a job whose key is already held is stored CANCELED at
        once, naming the holder. The lock row's primary key makes this race-free: of two
        submits racing for one key, exactly one inserts it. Under the scheduler's
        :data:`COALESCE` policy such a job is not stored at all (and left out of the result).
        """
        stored = self._tx(lambda conn: self._jobs_insert(conn, new_jobs))
        if self.wakeups is not None and any(job.status == JobStatus.PENDING for job in stored):
            self.wakeups.publish()  # after the commit: a woken worker finds the jobs
        policies = {new.id: new.on_conflict for new in new_jobs}
        for job in stored:
            if job.status == JobStatus.CANCELED:  # only a skipped duplicate is stored CANCELED
                self.metrics.lock_conflict(job.name, policies[job.id])
        return stored

    def _jobs_insert(self, conn: sa.Connection, new_jobs: Sequence[NewJob]) -> list[Job]:
        rows: list[dict[str, Any]] = []
        for new in new_jobs:
            status, error = _PENDING, None
            if new.lock_key and new.on_conflict in _HOLD_AT_SUBMIT:
                holder = self._lock_hold_for_pending(conn, new.lock_key, new.id)
                if holder is not None and new.on_conflict == COALESCE:
                    continue
                if holder is not None:
                    status = JobStatus.CANCELED.value
                    error = f"skipped: job {holder} holds lock {new.lock_key}"
            rows.append(
                {
                    "id": new.id,
                    "name": new.name,
                    "params": json.dumps(new.params),
                    "status": status,
                    "error": error,
                    "attempt": 0,
                    "max_retries": new.max_retries,
                    "timeout_s": new.timeout_s,
                    "lock_key": new.lock_key,
                    "on_conflict": new.on_conflict,
                    "owner": new.owner,
                }
            )
        insert = jobs.insert().values(created_at_ms=self._now, run_at_ms=self._now)
        returning = conn.dialect.insert_executemany_returning
        stored: dict[str, Job] = {}
        for batch in _chunks(rows):
            if returning:  # PostgreSQL, SQLite: no second round trip to read them back
                result = conn.execute(insert.returning(*jobs.c), batch)
                stored.update((row.id, _to_job(row)) for row in result)
            else:
                conn.execute(insert, batch)
        finished = [r["id"] for r in rows if r["status"] != _PENDING]
        for chunk in _chunks(finished):
            conn.execute(jobs.update().where(jobs.c.id.in_(chunk)).values(finished_at_ms=self._now))
        if self.dialect == "postgresql":
            conn.execute(sa.select(sa.func.pg_notify(_NOTIFY_CHANNEL, "")))
        skipped = set(finished)
        reread = [r["id"] for r in rows if not returning or r["id"] in skipped]
        stored.update((job.id, job) for job in self._select_jobs(conn, reread))
        return [stored[r["id"]] for r in rows]

    # -- claiming ------------------------------------------------------------------------------

    def jobs_claim(
        self,
        worker_id: str,
        *,
        limit: int,
        names: Sequence[str],
        capped: Mapping[str, int] | None = None,
        lease_ttl_s: float,
    ) -> list[Job]:
        """Claim up to ``limit`` runnable jobs among ``names`` for ``worker_id``.

        ``capped`` maps names with a per-worker concurrency cap to the slots still free. Claimed
        jobs become RUNNING with ``attempt + 1``, ``started_at`` and a lease from the database
        clock; exclusive jobs also take their lock here, in the same transaction.
        """
        capped = capped or {}
        names = [n for n in names if capped.get(n, 1) > 0]
        if limit <= 0 or not names:
            return []
        ttl_ms = int(lease_ttl_s * 1000)
        # For the metrics, filled by the transaction that commits (a retried one starts over).
        run_at_ms: dict[str, int] = {}
        conflicts: list[tuple[str, str]] = []

        def body(conn: sa.Connection) -> list[Job]:
            run_at_ms.clear()
            conflicts.clear()
            # Uncapped names share one query; each capped name gets its own with its own limit,
            # so a backlog of one capped name cannot starve the rest of this batch.
            groups: list[tuple[list[str], int]] = [([n for n in names if n not in capped], limit)]
            groups += [([n], min(capped[n], limit)) for n in names if n in capped]
            groups = [(group, group_limit) for group, group_limit in groups if group]
            started: dict[str, Job] = {}
            candidates: list[Any] = []
            if self.dialect == "postgresql":
                conn.execute(_NO_SORT)
            if self._claim_and_start is not None and len(groups) == 1:
                params = {
                    "names": groups[0][0],
                    "limit": limit,
                    "b_worker": worker_id,
                    "b_ttl": ttl_ms,
                }
                for row in conn.execute(self._claim_and_start, params).all():
                    if row.started:
                        started[row.id] = _to_job(row)
                        run_at_ms[row.id] = row.run_at_ms
                    else:
                        candidates.append(row)
            else:
                for group, group_limit in groups:
                    params = {"names": group, "limit": group_limit}
                    candidates += conn.execute(self._claim_query, params).all()
                candidates.sort(key=lambda r: r.run_at_ms)
                candidates = candidates[:limit]
            # Locks are taken in key order so that two claimers cannot deadlock on them.
            acquired = {
                row.id
                for row in sorted(candidates, key=lambda r: r.lock_key or "")
                if row.lock_key is None or self._lock_acquire(conn, row, ttl_ms)
            }
            claimed = [row for row in candidates if row.id in acquired]
            run_at_ms.update((row.id, row.run_at_ms) for row in claimed)
            conflicts.extend((r.name, r.on_conflict) for r in candidates if r.id not in acquired)
            skipped = [
                (row.id, row.lock_key)
                for row in candidates
                if row.id not in acquired and row.on_conflict in _HOLD_AT_SUBMIT
            ]
            for job_id, key in skipped:
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.status == _PENDING)
                    .values(
                        status=JobStatus.CANCELED.value,
                        error=f"skipped: lock {key} is held by another job",
                        finished_at_ms=self._now,
                    )
                )
            ids = [r.id for r in claimed]
            params = {"ids": ids, "b_worker": worker_id, "b_ttl": ttl_ms}
            if ids and not conn.dialect.update_returning:  # MariaDB/MySQL
                conn.execute(self._start_stmt, params)
                started.update((job.id, job) for job in self._select_jobs(conn, ids))
            elif ids:
                rows = conn.execute(self._start_returning, params)
                started.update((row.id, _to_job(row)) for row in rows)
            return sorted(started.values(), key=lambda job: run_at_ms[job.id])

        claimed = self._tx(body)
        self.metrics.claimed(claimed, run_at_ms)
        for name, on_conflict in conflicts:
            self.metrics.lock_conflict(name, on_conflict)
        return claimed

    def _lock_take(
        self, conn: sa.Connection, key: str, job_id: str, attempt: int, ttl_ms: int
    ) -> bool:
        """Take ``key`` for (job_id, attempt) if it is free, already this job's, or its
        holder's lock has expired and the holder is not RUNNING. A RUNNING holder past its
        lock is a lost execution the rescuer has not re-queued yet: the re-queued job keeps
        the key, so taking it now would only get one of the two skipped later."""
        values = {"job_id": job_id, "attempt": attempt, "expires_at_ms": self._now + ttl_ms}
        if self._insert_if_absent(conn, job_locks, lock_key=key, **values):
            return True
        holder_running = sa.exists().where(
            jobs.c.id == job_locks.c.job_id, jobs.c.status == _RUNNING
        )
        taken = conn.execute(
            job_locks.update()
            .where(
                job_locks.c.lock_key == key,
                sa.or_(
                    job_locks.c.job_id == job_id,
                    sa.and_(job_locks.c.expires_at_ms <= self._now, ~holder_running),
                ),
            )
            .values(**values)
        )
        return bool(taken.rowcount == 1)

    def _lock_acquire(self, conn: sa.Connection, row: Any, ttl_ms: int) -> bool:
        """Take ``row.lock_key`` for the execution that is about to start."""
        return self._lock_take(
            conn, row.lock_key, row.id, row.attempt + 1, ttl_ms + _LOCK_MARGIN_MS
        )

    def _lock_hold_for_pending(self, conn: sa.Connection, key: str, job_id: str) -> str | None:
        """Hold ``key`` for a pending skip-policy job; return the current holder if taken."""
        if self._lock_take(conn, key, job_id, 0, _PENDING_LOCK_TTL_MS):
            return None
        holder = conn.execute(
            sa.select(job_locks.c.job_id).where(job_locks.c.lock_key == key)
        ).scalar_one_or_none()
        return str(holder)

    # -- running -------------------------------------------------------------------------------

    def jobs_finish(self, finishes: Sequence[Finish]) -> list[bool]:
        """Record ends of executions in one transaction; each applies only if that execution
        still owns a RUNNING job. Returns, per finish, whether it applied. Locks of finished
        executions are released in the same transaction (when ``release_lock``).

        On PostgreSQL the ends (all but retries) are one statement, guarded UPDATE and attempt
        records together (:meth:`_build_finish_returning`). Elsewhere, and for retries (whose
        update clears the worker and start the attempt record needs), the owners are read
        under row locks first (FOR UPDATE; SQLite holds its write lock), so the answer is
        exact, and the updates then run as prepared executemany statements that repeat the
        guard."""

        def body(conn: sa.Connection) -> list[bool]:
            at_once = self._finish_returning is not None
            applied = self._finish_ended(
                conn, [f for f in finishes if at_once and f.status != JobStatus.PENDING]
            )
            applied |= self._finish_read_first(
                conn, [f for f in finishes if not at_once or f.status == JobStatus.PENDING]
            )
            ok = [(f.job_id, f.worker_id, f.attempt) in applied for f in finishes]
            self._locks_hold_for_requeued(
                conn,
                [
                    (f.job_id, f.attempt)
                    for f, done in zip(finishes, ok, strict=True)
                    if done and f.release_lock and f.status == JobStatus.PENDING
                ],
            )
            self._locks_release(conn, [(f.job_id, f.attempt) for f in finishes if f.release_lock])
            return ok

        return self._tx(body) if finishes else []

    def _finish_ended(
        self, conn: sa.Connection, finishes: Sequence[Finish]
    ) -> set[tuple[str, str, int]]:
        """PostgreSQL: ends (no retries) in one statement; the (job, worker, attempt) of each
        that applied."""
        applied: set[tuple[str, str, int]] = set()
        for chunk in _chunks(sorted(finishes, key=lambda f: f.job_id)):
            rows = [
                {
                    "id": f.job_id,
                    "worker_id": f.worker_id,
                    "attempt": f.attempt,
                    "status": f.status.value,
                    "result": _result_text(f),
                    "error": _storable(f.error),
                    "log_tail": _storable(f.log_tail),
                    "progress": None if f.progress is None else json.dumps(f.progress.__dict__),
                }
                for f in chunk
            ]
            result = conn.execute(self._finish_returning, {"f_rows": json.dumps(rows)})
            applied.update((row.job_id, row.worker_id, row.attempt) for row in result)
        return applied

    def _finish_read_first(
        self, conn: sa.Connection, finishes: Sequence[Finish]
    ) -> set[tuple[str, str, int]]:
        """Ends and retries, the owners read under row locks first; the (job, worker,
        attempt) of each that applied."""
        owners: dict[str, tuple[str | None, int]] = {}
        started: dict[str, int | None] = {}
        ids = sorted({f.job_id for f in finishes})
        for chunk in _chunks(ids):
            query = (
                sa.select(jobs.c.id, jobs.c.worker_id, jobs.c.attempt, jobs.c.started_at_ms)
                .where(jobs.c.id.in_(chunk), jobs.c.status == _RUNNING)
                .order_by(jobs.c.id)
                .with_for_update()
            )
            for r in conn.execute(query):
                owners[r.id] = (r.worker_id, r.attempt)
                started[r.id] = r.started_at_ms
        applied = {
            (f.job_id, f.worker_id, f.attempt)
            for f in finishes
            if owners.get(f.job_id) == (f.worker_id, f.attempt)
        }
        done: list[dict[str, Any]] = []
        retry: list[dict[str, Any]] = []
        for f in finishes:
            if (f.job_id, f.worker_id, f.attempt) not in applied:
                continue
            params = {
                "b_id": f.job_id,
                "b_worker": f.worker_id,
                "b_attempt": f.attempt,
                "b_error": _storable(f.error),
                "b_log": _storable(f.log_tail),
            }
            if f.status == JobStatus.PENDING:
                retry.append({**params, "b_delay": int(f.retry_delay_s * 1000)})
            else:
                progress = None if f.progress is None else json.dumps(f.progress.__dict__)
                values = {
                    "b_status": f.status.value,
                    "b_result": _result_text(f),
                    "b_progress": progress,
                }
                done.append({**params, **values})
        ended = [_ended(p, p["b_status"], started) for p in done]
        ended += [_ended(p, RETRIED, started) for p in retry]
        if ended:  # one multi-row INSERT: the owners' rows were read above
            conn.execute(self._insert_attempts, ended)
        if done:
            conn.execute(self._finish_stmt, done)
        if retry:
            conn.execute(self._retry_stmt, retry)
        return applied

    def _locks_release(self, conn: sa.Connection, executions: Sequence[tuple[str, int]]) -> None:
        pairs = sorted(set(executions))
        for chunk in _chunks(pairs):
            conn.execute(
                job_locks.delete().where(
                    sa.tuple_(job_locks.c.job_id, job_locks.c.attempt).in_(chunk)
                )
            )

    def _locks_hold_for_requeued(
        self, conn: sa.Connection, executions: Sequence[tuple[str, int]]
    ) -> None:
        """Executions whose job went back to PENDING (retry, rescue, hand-back): a skip-policy
        job keeps its key as a pending hold, so a duplicate submitted meanwhile is skipped
        instead of displacing it. (Queue-policy locks are then released by the caller.)"""
        if not executions:
            return
        skip_jobs = sa.select(jobs.c.id).where(jobs.c.on_conflict.in_(_HOLD_AT_SUBMIT))
        for chunk in _chunks(sorted(set(executions))):
            conn.execute(
                job_locks.update()
                .where(
                    sa.tuple_(job_locks.c.job_id, job_locks.c.attempt).in_(chunk),
                    job_locks.c.job_id.in_(skip_jobs.where(jobs.c.id.in_([e[0] for e in chunk]))),
                )
                .values(attempt=0, expires_at_ms=self._now + _PENDING_LOCK_TTL_MS)
            )

    def locks_release(self, executions: Sequence[tuple[str, int]]) -> None:
        if executions:
            self._tx(lambda conn: self._locks_release(conn, executions))

    def jobs_renew(
        self, worker_id: str, executions: Sequence[tuple[str, int]], lease_ttl_s: float
    ) -> None:
        """Extend the leases of this worker's RUNNING jobs and the locks of everything it is
        still executing (including jobs already marked TIMEOUT or CANCELED whose code has not
        stopped yet)."""
        ttl_ms = int(lease_ttl_s * 1000)
        ids = [job_id for job_id, _ in executions]

        def body(conn: sa.Connection) -> None:
            for chunk in _chunks(ids):
                conn.execute(
                    jobs.update()
                    .where(
                        jobs.c.id.in_(chunk),
                        jobs.c.status == _RUNNING,
                        jobs.c.worker_id == worker_id,
                    )
                    .values(lease_expires_at_ms=self._now + ttl_ms)
                )
                conn.execute(
                    job_locks.update()
                    .where(job_locks.c.job_id.in_(chunk))
                    .values(expires_at_ms=self._now + ttl_ms + _LOCK_MARGIN_MS)
                )

        if executions:
            self._tx(body)

    def jobs_set_progress(
        self, worker_id: str, updates: Mapping[str, tuple[Progress | None, str | None]]
    ) -> None:
        """Write (progress, log tail) of running jobs; None leaves a field as it is."""

        def body(conn: sa.Connection) -> None:
            for job_id, (progress, log_tail) in updates.items():
                values: dict[str, Any] = {}
                if progress is not None:
                    values["progress"] = json.dumps(progress.__dict__)
                if log_tail is not None:
                    values["log_tail"] = _storable(log_tail)
                conn.execute(
                    jobs.update()
                    .where(
                        jobs.c.id == job_id,
                        jobs.c.status == _RUNNING,
                        jobs.c.worker_id == worker_id,
                    )
                    .values(**values)
                )

        if updates:
            self._tx(body)

    def jobs_hand_back(self, worker_id: str, executions: Sequence[tuple[str, int]]) -> list[str]:
        """Return jobs this worker will not finish to PENDING (graceful shutdown)."""

        def body(conn: sa.Connection) -> list[str]:
            handed: list[str] = []
            for job_id, attempt in executions:
                reason = f"handed back by worker {worker_id} at shutdown"
                self._record_ended(conn, job_id, attempt, HANDED_BACK, reason, worker_id)
                result = conn.execute(
                    jobs.update()
                    .where(
                        jobs.c.id == job_id,
                        jobs.c.status == _RUNNING,
                        jobs.c.worker_id == worker_id,
                        jobs.c.attempt == attempt,
                    )
                    .values(
                        status=_PENDING,
                        worker_id=None,
                        started_at_ms=None,
                        lease_expires_at_ms=None,
                        run_at_ms=self._now,
                        error=reason,
                    )
                )
                if result.rowcount == 1:
                    handed.append(job_id)
            self._locks_hold_for_requeued(conn, [e for e in executions if e[0] in handed])
            self._locks_release(conn, executions)
            return handed

        return self._tx(body) if executions else []

    def _record_ended(
        self,
        conn: sa.Connection,
        job_id: str,
        attempt: int,
        status: str,
        error: str,
        worker_id: str | None,
    ) -> None:
        """Record the end of one execution, if it still owns its RUNNING job."""
        params = {"a_id": job_id, "a_status": status, "a_error": error}
        conn.execute(self._record_attempt, {**params, "a_worker": worker_id, "a_attempt": attempt})

    def job_attempts(self, job_id: str) -> list[Attempt]:
        """The ended executions of a job, first to last (the running one is on the job)."""
        query = (
            sa.select(job_attempts)
            .where(job_attempts.c.job_id == job_id)
            .order_by(job_attempts.c.attempt)
        )
        rows = self._tx(lambda conn: conn.execute(query).all(), write=False)
        return [
            Attempt(
                attempt=row.attempt,
                worker_id=row.worker_id,
                status=row.status,
                error=row.error,
                started_at=ms_to_datetime(row.started_at_ms),
                finished_at=_when(row.finished_at_ms),
            )
            for row in rows
        ]

    def job_cancel(self, job_id: str, reason: str = "canceled by request") -> Job | None:
        """Cancel a PENDING or RUNNING job at once. A running job's worker notices within its
        cancel poll and stops the code; its lock is released when the code has stopped."""

        def body(conn: sa.Connection) -> Job | None:
            before = conn.execute(
                sa.select(jobs.c.status, jobs.c.worker_id, jobs.c.attempt)
                .where(jobs.c.id == job_id)
                .with_for_update()
            ).first()
            if before is not None and before.status == _RUNNING:
                self._record_ended(
                    conn, job_id, before.attempt, JobStatus.CANCELED.value, reason, before.worker_id
                )
            before = None if before is None else before.status
            if before in (_PENDING, _RUNNING):
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.status == before)
                    .values(
                        status=JobStatus.CANCELED.value,
                        error=reason,
                        finished_at_ms=self._now,
                        lease_expires_at_ms=None,
                    )
                )
            if before == _PENDING:  # a pending job's lock hold ends with it
                conn.execute(job_locks.delete().where(job_locks.c.job_id == job_id))
            found = self._select_jobs(conn, [job_id])
            return found[0] if found else None

        return self._tx(body)

    # -- maintenance ---------------------------------------------------------------------------

    def jobs_rescue_expired(self, *, min_attempts: int, limit: int = 1000) -> RescueResult:
        """Requeue (or fail, when attempts are spent) RUNNING jobs whose lease has expired,
        release their locks, and drop locks whose holder's lease has expired."""

        def body(conn: sa.Connection) -> RescueResult:
            expired = (jobs.c.status == _RUNNING, jobs.c.lease_expires_at_ms < self._now)
            rows = conn.execute(
                sa.select(
                    jobs.c.id, jobs.c.name, jobs.c.attempt, jobs.c.max_retries, jobs.c.worker_id
                )
                .where(*expired)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            requeued: list[str] = []
            failed: list[str] = []
            for row in rows:
                lost = f"worker {row.worker_id} lost (lease expired) during attempt {row.attempt}"
                if row.attempt < max(row.max_retries + 1, min_attempts):
                    values: dict[str, Any] = {
                        "status": _PENDING,
                        "run_at_ms": self._now,
                        "started_at_ms": None,
                        "error": f"{lost}; re-queued",
                    }
                    target = requeued
                else:
                    values = {
                        "status": JobStatus.FAILED.value,
                        "finished_at_ms": self._now,
                        "error": f"{lost}; no attempts left",
                    }
                    target = failed
                values.update(worker_id=None, lease_expires_at_ms=None)
                self._record_ended(conn, row.id, row.attempt, LOST, lost, row.worker_id)
                result = conn.execute(
                    jobs.update().where(jobs.c.id == row.id, *expired).values(**values)
                )
                if result.rowcount == 1:
                    target.append(row.id)
            self._locks_hold_for_requeued(
                conn, [(r.id, r.attempt) for r in rows if r.id in requeued]
            )
            self._locks_release(conn, [(r.id, r.attempt) for r in rows])
            conn.execute(job_locks.delete().where(job_locks.c.expires_at_ms < self._now))
            return RescueResult(requeued, failed, {r.id: r.name for r in rows})

        return self._tx(body)

    def jobs_prune(
        self,
        older_than_s: float,
        *,
        batch: int = 1000,
        tx_ms: float = 20.0,
        duty: float = 0.1,
    ) -> int:
        """Delete finished jobs (and their attempt records) that finished more than
        ``older_than_s`` ago; returns how many.

        A backlog of months must not stall the queue while it goes: each transaction deletes
        at most ``batch`` jobs, sized from the one before so that it takes about ``tx_ms``,
        and after each the pruner rests so that it holds the database at most ``duty`` of
        the time. Claims and finishes waiting for a lock wait for one short transaction at
        most, and on SQLite, whose single writer the workers keep busy, the prune takes at
        most that share of it from them (a faster prune would cost them as much). Each
        status is walked oldest first in ix_jobs_status_created, every batch starting where
        the last one stopped, so no batch reads the entries of rows already deleted (dead
        index entries on PostgreSQL until vacuum) or scans for rows that are not old enough.
        """
        cutoff = self.now_ms() - int(older_than_s * 1000)
        size = min(100, batch)
        total = 0
        for status in sorted(s.value for s in TERMINAL_STATUSES):
            after = 0  # created_at_ms of the newest job deleted so far
            while True:
                query = (
                    sa.select(jobs.c.id, jobs.c.created_at_ms)
                    .where(
                        jobs.c.status == status,
                        jobs.c.created_at_ms >= after,
                        jobs.c.created_at_ms < cutoff,
                        jobs.c.finished_at_ms < cutoff,
                    )
                    .order_by(jobs.c.created_at_ms)
                    .limit(size)
                )
                rows, held_s = self._prune_batch(query)
                total += len(rows)
                if self.dialect == "sqlite":
                    self._sqlite_checkpoint()
                if len(rows) < size:
                    break
                after = max(row.created_at_ms for row in rows)
                grow = min(2.0, tx_ms / 1000 / max(held_s, 1e-4))
                size = max(10, min(batch, int(size * grow)))
                time.sleep(held_s * (1 - duty) / duty)
        return total

    def _sqlite_checkpoint(self) -> None:
        """Copy the pages a prune wrote to the WAL into the database now, on the pruner's
        time. Left to SQLite's automatic checkpoint, that copying (old rows' pages, scattered
        over every index) would run inside the commit of whichever worker next passes the
        WAL's size threshold. PASSIVE: it never waits for, or blocks, anyone."""
        raw = self.engine.raw_connection()
        try:  # outside any transaction (the connection is in autocommit mode)
            raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            raw.close()

    def _prune_batch(self, query: sa.Select[Any]) -> tuple[list[Any], float]:
        """One transaction: delete the jobs ``query`` selects (their attempt records first).
        Returns them and the seconds the transaction held its locks (waiting for SQLite's
        write lock not included)."""

        def body(conn: sa.Connection) -> tuple[list[Any], float]:
            began = time.monotonic()
            rows = list(conn.execute(query))
            ids = [row.id for row in rows]
            if ids:
                conn.execute(job_attempts.delete().where(job_attempts.c.job_id.in_(ids)))
                conn.execute(jobs.delete().where(jobs.c.id.in_(ids)))
            return rows, time.monotonic() - began

        return self._tx(body)

    def leader_try_acquire(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or extend the lease ``name``; True while ``holder`` is the leader."""
        ttl_ms = int(ttl_s * 1000)

        def body(conn: sa.Connection) -> bool:
            extended = conn.execute(
                leader_leases.update()
                .where(
                    leader_leases.c.name == name,
                    sa.or_(
                        leader_leases.c.holder == holder,
                        leader_leases.c.expires_at_ms < self._now,
                    ),
                )
                .values(holder=holder, expires_at_ms=self._now + ttl_ms)
            )
            if extended.rowcount == 1:
                return True
            return self._insert_if_absent(
                conn, leader_leases, name=name, holder=holder, expires_at_ms=self._now + ttl_ms
            )

        return self._tx(body)

    def leader_release(self, name: str, holder: str) -> None:
        self._tx(
            lambda conn: conn.execute(
                leader_leases.delete().where(
                    leader_leases.c.name == name, leader_leases.c.holder == holder
                )
            )
        )

    # -- schedules -----------------------------------------------------------------------------

    def schedules_next_run(self, names: Sequence[str]) -> dict[str, int]:
        """The stored next fire time of each schedule that has a row."""

        def body(conn: sa.Connection) -> dict[str, int]:
            out: dict[str, int] = {}
            for chunk in _chunks(names):
                query = sa.select(schedules.c.name, schedules.c.next_run_at_ms).where(
                    schedules.c.name.in_(chunk)
                )
                out.update((row.name, int(row.next_run_at_ms)) for row in conn.execute(query))
            return out

        return self._tx(body, write=False)

    def schedule_create(self, name: str, next_run_at_ms: int) -> bool:
        """Start a schedule's row unless it exists (another scheduler may have started it)."""
        return self._tx(
            lambda conn: self._insert_if_absent(
                conn, schedules, name=name, next_run_at_ms=next_run_at_ms
            )
        )

    def schedule_move(self, name: str, old_ms: int, new_ms: int) -> bool:
        """Set a schedule's next fire time, only if it is still ``old_ms``."""
        return self._tx(lambda conn: self._schedule_advance(conn, name, old_ms, new_ms))

    def schedule_fire(self, name: str, due_ms: int, next_ms: int, new_job: NewJob) -> Fired:
        """Claim the slot ``due_ms`` of a schedule and submit its job, in one transaction.

        The claim is ``UPDATE ... SET next = :next WHERE name = :name AND next = :due``: of two
        schedulers firing one slot (two leaders overlapping at a failover) exactly one updates
        the row, so a slot fires at most once, and the job is stored only with the claim. The
        job is submitted under :data:`COALESCE`: while its lock key is held (the previous job
        of the schedule is still pending or running) the slot passes and nothing is stored.
        """

        def body(conn: sa.Connection) -> Fired:
            if not self._schedule_advance(conn, name, due_ms, next_ms):
                return Fired(claimed=False)
            stored = self._jobs_insert(conn, [new_job])
            if stored:
                return Fired(claimed=True, job=stored[0])
            holder = conn.execute(
                sa.select(job_locks.c.job_id).where(job_locks.c.lock_key == new_job.lock_key)
            ).scalar_one_or_none()
            return Fired(claimed=True, holder=holder)

        return self._tx(body)

    def _schedule_advance(self, conn: sa.Connection, name: str, old_ms: int, new_ms: int) -> bool:
        moved = conn.execute(
            schedules.update()
            .where(schedules.c.name == name, schedules.c.next_run_at_ms == old_ms)
            .values(next_run_at_ms=new_ms)
        )
        return bool(moved.rowcount == 1)

    # -- wake-ups ------------------------------------------------------------------------------

    def watch(self, wake: Callable[[], None], stop: threading.Event, interval_s: float) -> None:
        """Block until ``stop``, calling ``wake()`` whenever new jobs may be claimable.

        With :attr:`wakeups` (Redis): its messages. Otherwise PostgreSQL: LISTEN for the NOTIFY
        sent by every submit. SQLite: ``PRAGMA data_version`` (it changes when another
        connection commits), checked every ``interval_s``. MySQL has neither; workers rely on
        polling there. Polling stays on in every case: this is only a speed-up, and errors here
        are logged and retried, never fatal.
        """
        if self.wakeups is None and self.dialect == "mysql":
            return
        while not stop.is_set():
            try:
                if self.wakeups is not None:
                    self.wakeups.listen(wake, stop)
                elif self.dialect == "postgresql":
                    self._watch_postgres(wake, stop)
                else:
                    self._watch_sqlite(wake, stop, interval_s)
            except Exception:
                log.warning("store.watch_failed", exc_info=True)
                stop.wait(1.0)

    def _raw_connection(self) -> Any:
        """A DBAPI connection of our own, taken out of the pool (closed by the caller)."""
        pooled = self.engine.raw_connection()
        driver = pooled.driver_connection
        pooled.detach()
        return driver

    def _watch_postgres(self, wake: Callable[[], None], stop: threading.Event) -> None:
        pg = self._raw_connection()
        try:
            pg.rollback()
            pg.autocommit = True
            pg.execute(f"LISTEN {_NOTIFY_CHANNEL}")
            while not stop.is_set():
                for _ in pg.notifies(timeout=0.5, stop_after=1):
                    wake()
        finally:
            pg.close()

    def _watch_sqlite(
        self, wake: Callable[[], None], stop: threading.Event, interval: float
    ) -> None:
        """Wake when ``PRAGMA data_version`` changes (another connection committed). It is read
        when the database's WAL file is written (inotify, :class:`FileWatch`), and then every
        ``interval / 8`` until the commit shows (the frames are written before the commit is
        visible) or ``_SETTLE_S`` passes; without inotify, every ``interval``."""
        raw = self._raw_connection()
        database = self.engine.url.database or ""
        watch = None
        if database not in ("", ":memory:") and not database.startswith("file:"):
            watch = FileWatch.open(Path(f"{Path(database).absolute()}-wal"))
        try:
            cursor = raw.cursor()
            last = cursor.execute("PRAGMA data_version").fetchone()[0]
            while not stop.is_set():
                settle_until = 0.0
                if watch is None:
                    stop.wait(interval)
                elif watch.wait(_WATCH_TIMEOUT_S):
                    settle_until = time.monotonic() + _SETTLE_S
                while True:
                    version = cursor.execute("PRAGMA data_version").fetchone()[0]
                    if version != last:
                        last = version
                        wake()
                        break
                    if time.monotonic() >= settle_until or stop.is_set():
                        break
                    time.sleep(interval / 8)
        finally:
            raw.close()
            if watch is not None:
                watch.close()


def _ended(params: dict[str, Any], status: str, started: dict[str, int | None]) -> dict[str, Any]:
    """The attempt record of one applied finish."""
    return {
        "job_id": params["b_id"],
        "worker_id": params["b_worker"],
        "attempt": params["b_attempt"],
        "status": status,
        "error": params["b_error"],
        "started_at_ms": started[params["b_id"]],
    }


def _result_text(finish: Finish) -> str | None:
    if finish.result_json is not None:
        return finish.result_json
    return None if finish.result is None else json.dumps(finish.result)


def _when(ms: int) -> datetime:
    when = ms_to_datetime(ms)
    assert when is not None
    return when


def _storable(text: str | None) -> str | None:
    """Text from job code (errors, output) as every database stores it: PostgreSQL refuses NUL
    and no database takes a lone surrogate."""
    if text is None:
        return None
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _to_job(row: Any) -> Job:
    progress = json.loads(row.progress) if row.progress else None
    created = ms_to_datetime(row.created_at_ms)
    assert created is not None
    return Job(
        id=row.id,
        name=row.name,
        params=json.loads(row.params),
        status=JobStatus(row.status),
        result=None if row.result is None else json.loads(row.result),
        error=row.error,
        attempt=row.attempt,
        max_retries=row.max_retries,
        timeout=row.timeout_s,
        created_at=created,
        started_at=ms_to_datetime(row.started_at_ms),
        finished_at=ms_to_datetime(row.finished_at_ms),
        worker_id=row.worker_id,
        progress=Progress(**progress) if progress else None,
        log_tail=row.log_tail,
        lock_key=row.lock_key,
        owner=row.owner,
    )
