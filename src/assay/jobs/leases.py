"""Leader leases and schedule rows: who runs the singleton services, and when each periodic job
fires next.

Part of the job store (:class:`assay.jobs.store.JobStore` inherits :class:`LeaseRows`). Like
every state change of the store, each is a guarded conditional UPDATE that reports whether it
applied. Firing a schedule's slot also submits its job, so it stays with the job rows
(:meth:`assay.jobs.store.JobStore.schedule_fire`) and uses :meth:`LeaseRows._schedule_advance`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from assay.db.base import SqlStore
from assay.db.tables import leader_leases, schedules
from assay.jobs.rows import CHUNK
from assay.util import chunks

__all__ = ["LeaseRows"]


class LeaseRows(SqlStore):
    """The job store's statements on ``leader_leases`` and ``schedules``."""

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

    def schedules_next_run(self, names: Sequence[str]) -> dict[str, int]:
        """The stored next fire time of each schedule that has a row."""

        def body(conn: sa.Connection) -> dict[str, int]:
            out: dict[str, int] = {}
            for chunk in chunks(names, CHUNK):
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

    def _schedule_advance(self, conn: sa.Connection, name: str, old_ms: int, new_ms: int) -> bool:
        moved = conn.execute(
            schedules.update()
            .where(schedules.c.name == name, schedules.c.next_run_at_ms == old_ms)
            .values(next_run_at_ms=new_ms)
        )
        return bool(moved.rowcount == 1)
