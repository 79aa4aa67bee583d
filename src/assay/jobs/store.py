"""The job store: every SQL statement about jobs lives in this package, one module per concept.

This module has the job rows: submit, THE claim, finishes, renewals, cancels, the rescuer and
firing a schedule's slot. :class:`JobStore` inherits the rest: job locks
(:mod:`assay.jobs.locks`), leader leases and schedule rows (:mod:`assay.jobs.leases`), pruning
(:mod:`assay.jobs.prune`); the hot-path statements are built in :mod:`assay.jobs.statements`,
wake-ups are :mod:`assay.jobs.notifier`'s and the row types :mod:`assay.jobs.rows`'.

Rules the package keeps:

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from assay.db.dialects import POSTGRESQL
from assay.db.tables import job_attempts, job_locks, jobs
from assay.jobs.api import INTERNAL_PREFIX
from assay.jobs.leases import LeaseRows
from assay.jobs.locks import COALESCE, HOLD_AT_SUBMIT, LOCK_MARGIN_MS, LockRows
from assay.jobs.metrics import JobMetrics
from assay.jobs.model import Attempt, Job, JobStatus, Progress, ms_to_datetime
from assay.jobs.notifier import NOTIFY_CHANNEL, RedisWakeups, database_notifier, watch
from assay.jobs.prune import Pruning
from assay.jobs.rows import (
    CHUNK,
    Finish,
    Fired,
    JobStats,
    NewJob,
    QueueStats,
    RescueResult,
    RunningState,
    attempt_record,
    result_text,
    storable,
    to_job,
    when,
)
from assay.jobs.statements import (
    claim_and_start,
    claim_query,
    finish,
    finish_returning,
    record_attempt,
    retry,
    still,
)
from assay.util import chunks

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

_PENDING = JobStatus.PENDING.value
_RUNNING = JobStatus.RUNNING.value
# PostgreSQL plans the claim from its statistics. Gathered while the queue was short, they make
# a backlog look like a few rows, and the planner then reads every PENDING row (a bitmap scan
# of ix_jobs_status_run_at, ANDed with ix_jobs_name_created) and sorts them to keep `limit`:
# every claim costs O(backlog), 10 ms per claim at 10,000 pending jobs. The claim must walk
# the index in run_at order and stop after `limit` rows; without a sort, that is the only plan.
_NO_SORT = sa.text("SET LOCAL enable_sort = off")
# Attempt record statuses besides the job statuses an execution can end with.
RETRIED, LOST, HANDED_BACK = "RETRIED", "LOST", "HANDED_BACK"


class JobStore(LockRows, LeaseRows, Pruning):
    """Typed access to the job tables of one database."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        wakeups: RedisWakeups | None = None,
        metrics: JobMetrics | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(engine, clock_ms=clock_ms)
        self.wakeups = wakeups
        """Redis pub/sub wake-ups (``notify_url``), in place of the database's own."""
        self.metrics = JobMetrics(self.jobs_stats) if metrics is None else metrics
        """What this process's users of the store did (claims, ends, rescues, conflicts)."""
        self._finish_stmt = finish(self._now)
        # Statements on the hot path are built once (SQLAlchemy then reuses their compiled form).
        self._claim_query = claim_query(self._now)
        self._insert_attempts = job_attempts.insert().values(finished_at_ms=self._now)
        self._record_attempt = record_attempt(self._now)
        # PostgreSQL takes the ids as one array: the statement's text is the same for every
        # batch, so psycopg prepares it once per connection (an IN list is parsed and planned
        # again for every length).
        ids: Any = jobs.c.id.in_(sa.bindparam("ids", expanding=True))
        if self.dialect == POSTGRESQL:
            ids = jobs.c.id == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(sa.String)))
        start: dict[str, Any] = {
            "status": _RUNNING,
            "worker_id": sa.bindparam("b_worker"),
            "attempt": jobs.c.attempt + 1,
            "started_at_ms": self._now,
            "finished_at_ms": None,
            "lease_expires_at_ms": self._now + sa.bindparam("b_ttl", type_=sa.BigInteger),
        }
        self._start_stmt = jobs.update().where(ids, still(_PENDING)).values(**start)
        self._start_returning = self._start_stmt.returning(*jobs.c)
        self._claim_and_start: Any = None
        self._finish_returning: Any = None
        if self.dialect == POSTGRESQL:
            self._claim_and_start = claim_and_start(self._claim_query, start)
            self._finish_returning = finish_returning(self._now)
        self._retry_stmt = retry(self._now)
        self._insert_jobs = jobs.insert().values(created_at_ms=self._now, run_at_ms=self._now)
        returned: list[Any] = [*jobs.c]
        if self.dialect == POSTGRESQL:
            # The NOTIFY is part of the INSERT, not a statement of its own: one round trip less
            # between the INSERT (which stamps created_at) and the COMMIT that makes the jobs
            # claimable, in every submit. It is evaluated per row, but PostgreSQL delivers
            # identical notifications of one transaction once, at its COMMIT.
            returned.append(sa.func.pg_notify(NOTIFY_CHANNEL, "").label("notified"))
        self._insert_returning = self._insert_jobs.returning(*returned)

    # -- plumbing ------------------------------------------------------------------------------

    # -- reading -------------------------------------------------------------------------------

    def job_get(self, job_id: str) -> Job | None:
        def body(conn: sa.Connection) -> Job | None:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
            return to_job(row) if row else None

        return self._tx(body, write=False)

    def jobs_get_many(self, job_ids: Sequence[str]) -> list[Job]:
        return self._tx(lambda conn: self._select_jobs(conn, job_ids), write=False)

    def _select_jobs(self, conn: sa.Connection, job_ids: Sequence[str]) -> list[Job]:
        found: dict[str, Job] = {}
        for chunk in chunks(job_ids, CHUNK):
            for row in conn.execute(sa.select(jobs).where(jobs.c.id.in_(chunk))):
                found[row.id] = to_job(row)
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
        return self._tx(lambda conn: [to_job(r) for r in conn.execute(query)], write=False)

    def jobs_running_state(self, job_ids: Sequence[str]) -> dict[str, RunningState]:
        """Who owns each job now; a worker compares this with what it is executing."""

        def body(conn: sa.Connection) -> dict[str, RunningState]:
            out: dict[str, RunningState] = {}
            cols = (jobs.c.id, jobs.c.status, jobs.c.worker_id, jobs.c.attempt)
            for chunk in chunks(job_ids, CHUNK):
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
            if new.lock_key and new.on_conflict in HOLD_AT_SUBMIT:
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
        returning = conn.dialect.insert_executemany_returning
        stored: dict[str, Job] = {}
        for batch in chunks(rows, CHUNK):
            if returning:  # PostgreSQL, SQLite: no second round trip to read them back
                result = conn.execute(self._insert_returning, batch)
                stored.update((row.id, to_job(row)) for row in result)
            else:
                conn.execute(self._insert_jobs, batch)
        finished = [r["id"] for r in rows if r["status"] != _PENDING]
        for chunk in chunks(finished, CHUNK):
            conn.execute(jobs.update().where(jobs.c.id.in_(chunk)).values(finished_at_ms=self._now))
        if self.dialect == POSTGRESQL and rows and not returning:  # a driver without RETURNING
            conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, "")))
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
            if self.dialect == POSTGRESQL:
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
                        started[row.id] = to_job(row)
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
                if row.id not in acquired and row.on_conflict in HOLD_AT_SUBMIT
            ]
            for job_id, key in skipped:
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, still(_PENDING))
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
                started.update((row.id, to_job(row)) for row in rows)
            return sorted(started.values(), key=lambda job: run_at_ms[job.id])

        claimed = self._tx(body)
        self.metrics.claimed(claimed, run_at_ms)
        for name, on_conflict in conflicts:
            self.metrics.lock_conflict(name, on_conflict)
        return claimed

    # -- running -------------------------------------------------------------------------------

    def jobs_finish(self, finishes: Sequence[Finish]) -> list[bool]:
        """Record ends of executions in one transaction; each applies only if that execution
        still owns a RUNNING job. Returns, per finish, whether it applied. Locks of finished
        executions are released in the same transaction (when ``release_lock``).

        On PostgreSQL the ends (all but retries) are one statement, guarded UPDATE and attempt
        records together (:func:`~assay.jobs.statements.finish_returning`). Elsewhere, and for
        retries (whose
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
        for chunk in chunks(sorted(finishes, key=lambda f: f.job_id), CHUNK):
            rows = [
                {
                    "id": f.job_id,
                    "worker_id": f.worker_id,
                    "attempt": f.attempt,
                    "status": f.status.value,
                    "result": result_text(f),
                    "error": storable(f.error),
                    "log_tail": storable(f.log_tail),
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
        for chunk in chunks(ids, CHUNK):
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
                "b_error": storable(f.error),
                "b_log": storable(f.log_tail),
            }
            if f.status == JobStatus.PENDING:
                retry.append({**params, "b_delay": int(f.retry_delay_s * 1000)})
            else:
                progress = None if f.progress is None else json.dumps(f.progress.__dict__)
                values = {
                    "b_status": f.status.value,
                    "b_result": result_text(f),
                    "b_progress": progress,
                }
                done.append({**params, **values})
        ended = [attempt_record(p, p["b_status"], started) for p in done]
        ended += [attempt_record(p, RETRIED, started) for p in retry]
        if ended:  # one multi-row INSERT: the owners' rows were read above
            conn.execute(self._insert_attempts, ended)
        if done:
            conn.execute(self._finish_stmt, done)
        if retry:
            conn.execute(self._retry_stmt, retry)
        return applied

    def jobs_renew(
        self, worker_id: str, executions: Sequence[tuple[str, int]], lease_ttl_s: float
    ) -> None:
        """Extend the leases of this worker's RUNNING jobs and the locks of everything it is
        still executing (including jobs already marked TIMEOUT or CANCELED whose code has not
        stopped yet)."""
        ttl_ms = int(lease_ttl_s * 1000)
        ids = [job_id for job_id, _ in executions]

        def body(conn: sa.Connection) -> None:
            for chunk in chunks(ids, CHUNK):
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
                    .values(expires_at_ms=self._now + ttl_ms + LOCK_MARGIN_MS)
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
                    values["log_tail"] = storable(log_tail)
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
                finished_at=when(row.finished_at_ms),
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
                    .where(jobs.c.id == job_id, still(before))
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

    # -- schedules -----------------------------------------------------------------------------

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

    # -- wake-ups ------------------------------------------------------------------------------

    def watch(self, wake: Callable[[], None], stop: threading.Event, interval_s: float) -> None:
        """Block until ``stop``, calling ``wake()`` whenever new jobs may be claimable.

        With :attr:`wakeups` (Redis): its messages. Otherwise the database's own
        (:func:`assay.jobs.notifier.database_notifier`: PostgreSQL's LISTEN, SQLite's
        ``data_version`` checked every ``interval_s``; MySQL has none, workers poll there).
        """
        notifier = self.wakeups or database_notifier(self.engine, interval_s)
        if notifier is not None:
            watch(notifier, wake, stop)
