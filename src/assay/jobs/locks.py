"""Job locks (``lock_key``): the rows that let one job of a key run at a time.

Part of the job store (:class:`assay.jobs.store.JobStore` inherits :class:`LockRows`): the
claim, the finishes and the rescuer take and release these rows inside their own transactions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from assay.db.base import SqlStore
from assay.db.tables import job_locks, jobs
from assay.jobs.model import JobStatus
from assay.jobs.rows import CHUNK
from assay.util import chunks

__all__ = ["COALESCE", "HOLD_AT_SUBMIT", "LOCK_MARGIN_MS", "LockRows"]

_RUNNING = JobStatus.RUNNING.value
COALESCE = "coalesce"
"""The scheduler's internal ``on_conflict`` policy: like ``skip``, but a job whose key is held is
dropped (nothing is stored) instead of being stored CANCELED."""
HOLD_AT_SUBMIT = ("skip", COALESCE)
"""Policies whose jobs hold their lock key from submit (while PENDING), not only while running."""
# A pending skip-policy job holds its lock this long at most (the claim then renews it with
# the lease; cancel releases it). Past it, a new duplicate may take the key over, and the stale
# job is skipped when it is claimed: still exactly one of them runs.
_PENDING_LOCK_TTL_MS = 7 * 24 * 3600 * 1000
# An execution's lock outlives its lease by this much, so the rescuer always sees the lease
# expire first and can hand the lock on to the re-queued job instead of finding it gone.
LOCK_MARGIN_MS = 1000


class LockRows(SqlStore):
    """The job store's statements on ``job_locks``."""

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
        return self._lock_take(conn, row.lock_key, row.id, row.attempt + 1, ttl_ms + LOCK_MARGIN_MS)

    def _lock_hold_for_pending(self, conn: sa.Connection, key: str, job_id: str) -> str | None:
        """Hold ``key`` for a pending skip-policy job; return the current holder if taken."""
        if self._lock_take(conn, key, job_id, 0, _PENDING_LOCK_TTL_MS):
            return None
        holder = conn.execute(
            sa.select(job_locks.c.job_id).where(job_locks.c.lock_key == key)
        ).scalar_one_or_none()
        return str(holder)

    def _locks_release(self, conn: sa.Connection, executions: Sequence[tuple[str, int]]) -> None:
        pairs = sorted(set(executions))
        for chunk in chunks(pairs, CHUNK):
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
        skip_jobs = sa.select(jobs.c.id).where(jobs.c.on_conflict.in_(HOLD_AT_SUBMIT))
        for chunk in chunks(sorted(set(executions)), CHUNK):
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
