"""Pruning: deleting old finished jobs without stalling the queue.

Part of the job store (:class:`assay.jobs.store.JobStore` inherits :class:`Pruning`).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from assay.db.base import Pace, SqlStore
from assay.db.dialects import SQLITE
from assay.db.tables import job_attempts, jobs
from assay.jobs.model import TERMINAL_STATUSES

__all__ = ["Pruning"]


class Pruning(SqlStore):
    """The job store's deletion of finished jobs."""

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

        A backlog of months must not stall the queue while it goes: it is deleted at the
        :class:`~assay.db.base.Pace` of ``batch``, ``tx_ms`` and ``duty``. Each status is
        walked oldest first in ix_jobs_status_created, every batch starting where the last
        one stopped, so no batch reads the entries of rows already deleted (dead index
        entries on PostgreSQL until vacuum) or scans for rows that are not old enough.
        """
        cutoff = self.now_ms() - int(older_than_s * 1000)
        pace = Pace(batch, tx_ms, duty)
        total = 0
        for status in sorted(s.value for s in TERMINAL_STATUSES):
            after = 0  # created_at_ms of the newest job deleted so far
            while True:
                size = pace.size
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
                if self.dialect == SQLITE:
                    self._sqlite_checkpoint()
                if len(rows) < size:
                    break
                after = max(row.created_at_ms for row in rows)
                pace.rest(held_s)
        return total

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
