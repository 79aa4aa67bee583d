"""What every store shares: the dialect, the database clock and one transaction helper.

The job, token, tracking and trace stores each own the SQL of their tables and inherit this
plumbing, so they agree on time, on retries and on how driver errors become
:class:`~assay.errors.StoreError`.
"""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from assay.db.dialects import MYSQL, POSTGRESQL, SQLITE, Dialect, dialect_of
from assay.db.engine import BEGIN_MODE
from assay.db.tables import metadata
from assay.errors import NotFoundError, StoreError
from assay.util import chunks

__all__ = ["IN_CHUNK", "NOW_SQL", "Pace", "SqlStore", "is_transient", "require_rows"]

T = TypeVar("T")

NOW_SQL = {
    SQLITE: "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    POSTGRESQL: "CAST(EXTRACT(EPOCH FROM statement_timestamp()) * 1000 AS BIGINT)",
    MYSQL: "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
}
"""The database clock in epoch milliseconds, stable within one statement."""

IN_CHUNK = 200
"""Ids per ``IN (...)`` list when a store looks up many rows."""


def require_rows(
    conn: sa.Connection,
    column: sa.Column[str],
    ids: Sequence[str],
    what: str,
    *,
    lock: Literal["share", "update"] | None = None,
) -> None:
    """NotFoundError naming the first of ``ids`` that no row holds in ``column``. ``lock``
    locks the rows found, in id order (so that two transactions cannot deadlock on them):
    ``share`` as a foreign key check would (PostgreSQL FOR KEY SHARE), ``update``
    exclusively."""
    found: set[str] = set()
    query = _rows_query(column.table.name, column.name, lock)
    for chunk in chunks(ids, IN_CHUNK):
        found.update(conn.execute(query, {"ids": list(chunk)}).scalars().all())
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFoundError(f"{what} {missing[0]!r} not found")


@functools.cache
def _rows_query(table: str, name: str, lock: Literal["share", "update"] | None) -> Any:
    """:func:`require_rows`' statement, built once (``ids``: an expanding parameter)."""
    column = metadata.tables[table].c[name]
    query = sa.select(column).where(column.in_(sa.bindparam("ids", expanding=True)))
    if lock is not None:
        query = query.order_by(column).with_for_update(
            read=lock == "share", key_share=lock == "share"
        )
    return query


_INSERT_SQL: dict[tuple[str, str, tuple[str, ...]], str] = {}
"""The statements of :meth:`SqlStore._insert_rows`, by dialect, table and columns."""


# SQLite has one writer at a time and its busy handler retries on a sleep schedule, so a thread
# waiting for the write lock can starve behind a busy claim loop. Within one process, writers
# of every store on one engine queue on this lock instead (other processes use the handler).
_WRITERS: weakref.WeakKeyDictionary[sa.Engine, threading.Lock] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


TX_ATTEMPTS = 10
"""Tries of a transaction that hits a deadlock, a serialisation failure or a lost
connection: the last pause is at most 0.5 s, all of them together at most 1.7 s."""


def is_transient(exc: sa.exc.DBAPIError) -> bool:
    """A deadlock, serialisation failure or lock timeout: the transaction may simply be retried."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in ("40001", "40P01", "55P03"):
        return True
    args = getattr(orig, "args", ())
    if args and args[0] in (1205, 1213):  # MySQL lock wait timeout, deadlock
        return True
    return "database is locked" in str(orig)


class Pace:
    """The rhythm of a long deletion that must not stall anyone: transactions of ``size``
    rows, sized from the one before so that each holds its locks about ``tx_ms``, and after
    each a rest, so that the work holds the database at most ``duty`` of the time. Claims and
    writes waiting for a lock wait for one short transaction at most; on SQLite, whose single
    writer the workers keep busy, the deletion takes at most that share of it from them."""

    def __init__(self, batch: int, tx_ms: float, duty: float) -> None:
        self.batch = batch
        self.tx_s = tx_ms / 1000
        self.duty = duty
        self.size = min(100, batch)

    def rest(self, held_s: float) -> None:
        """After a transaction that held its locks ``held_s``: size the next one, then rest."""
        grow = min(2.0, self.tx_s / max(held_s, 1e-4))
        self.size = max(10, min(self.batch, int(self.size * grow)))
        time.sleep(held_s * (1 - self.duty) / self.duty)


class SqlStore:
    """Base of the stores: ``dialect`` ("sqlite", "postgresql" or "mysql"), ``_now`` (the DB
    clock as a SQL expression) and :meth:`_tx`.

    ``clock_ms`` replaces the database clock with a Python one (epoch milliseconds, read once
    per statement), so that a test moves time past a lease instead of waiting it out.
    """

    def __init__(self, engine: sa.Engine, *, clock_ms: Callable[[], int] | None = None) -> None:
        self.engine = engine
        self.dialect: Dialect = dialect_of(engine)
        self._now: sa.ColumnElement[Any] = (
            sa.literal_column(NOW_SQL[self.dialect], sa.BigInteger)
            if clock_ms is None
            else sa.bindparam("assay_now", type_=sa.BigInteger, callable_=clock_ms)
        )
        self._writer: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.dialect == SQLITE:
            with _WRITERS_LOCK:
                self._writer = _WRITERS.setdefault(engine, threading.Lock())

    def _tx(self, body: Callable[[sa.Connection], T], *, write: bool = True) -> T:
        """Run ``body`` in one transaction, retrying deadlocks; translate driver errors (and a
        pool that has no connection to give) into :class:`StoreError`.

        A deadlock's victims wait a random part of a doubling pause before they try again, so
        that the same transactions do not meet again in the same order (five claimers racing
        for twenty keys on a loaded MariaDB ran out of five evenly spaced tries)."""
        for attempt in range(TX_ATTEMPTS):
            try:
                with (
                    self._writer if write else contextlib.nullcontext(),
                    self.engine.connect() as conn,
                ):
                    if not write:
                        conn.execution_options(**{BEGIN_MODE: "DEFERRED"})
                    with conn.begin():
                        return body(conn)
            except sa.exc.DBAPIError as exc:
                if (exc.connection_invalidated or is_transient(exc)) and attempt < TX_ATTEMPTS - 1:
                    time.sleep(random.uniform(0, min(0.005 * 2**attempt, 0.5)))
                    continue
                if exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError):
                    raise StoreError(f"the store is unreachable or failing: {exc.orig}") from exc
                raise StoreError(f"store error: {exc.orig}") from exc
            except sa.exc.TimeoutError as exc:  # the pool waited pool_timeout for a connection
                raise StoreError(
                    f"the store is busy: no connection of the pool came free ({exc.args[0]})"
                ) from exc
        raise AssertionError("unreachable")

    def _delete_in_batches(self, body: Callable[[sa.Connection], int], batch: int) -> int:
        """Run ``body`` (which deletes up to ``batch`` rows and returns how many) in one
        transaction after another until it deletes fewer; returns the total. Short
        transactions keep a large prune from holding locks or a huge undo log."""
        total = 0
        while (deleted := self._tx(body)) > 0:
            total += deleted
            if deleted < batch:
                break
        return total

    def _sqlite_checkpoint(self) -> None:
        """After a batch of a long deletion on SQLite: copy the pages it wrote to the WAL into
        the database now, on the deleter's time. Left to SQLite's automatic checkpoint, that
        copying (old rows' pages, scattered over every index) would run inside the commit of
        whichever writer next passes the WAL's size threshold. PASSIVE: it never waits for,
        or blocks, anyone."""
        raw = self.engine.raw_connection()
        try:  # outside any transaction (the connection is in autocommit mode)
            raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            raw.close()

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, for ON CONFLICT / ON DUPLICATE KEY clauses."""
        dialect_insert = {POSTGRESQL: postgresql.insert, MYSQL: mysql.insert}
        return dialect_insert.get(self.dialect, sqlite.insert)(table)

    def _upsert_statement(
        self, table: sa.Table, keys: Sequence[str], updates: Sequence[str]
    ) -> Any:
        """INSERT a row (or, executed with a list, each row of it); where one conflicts on
        ``keys``, update ``updates`` from it instead (with no ``updates``: leave the existing
        row as it is). Built once: executed with a list of rows it is one prepared executemany,
        never a statement compiled again for every request."""
        stmt = self._insert(table)
        if self.dialect == MYSQL:
            changes = {c: stmt.inserted[c] for c in updates} or {keys[0]: table.c[keys[0]]}
            return stmt.on_duplicate_key_update(changes)
        if not updates:
            return stmt.on_conflict_do_nothing(index_elements=list(keys))
        return stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in updates}
        )

    def _insert_rows(
        self, conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """INSERT rows (dicts with the same keys, plain values) that no stored row conflicts
        with. On PostgreSQL one ``COPY``: a third of the client's CPU of an executemany of the
        same rows, and one statement for the server instead of one per row; elsewhere the
        driver's executemany of tuples (SQLAlchemy's own would process every row's parameters
        again). Driver errors surface as SQLAlchemy's, as from ``conn.execute``."""
        if not rows:
            return
        columns = tuple(rows[0])
        key = (self.dialect, table.name, columns)
        statement = _INSERT_SQL.get(key) or _INSERT_SQL.setdefault(
            key, self._insert_sql(table, columns)
        )
        if self.dialect != POSTGRESQL:
            conn.exec_driver_sql(statement, [tuple(row[c] for c in columns) for row in rows])
            return
        driver = conn.connection.driver_connection
        assert driver is not None
        try:
            with driver.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row([row[c] for c in columns])
        except driver.Error as exc:
            raise sa.exc.DBAPIError.instance(statement, None, exc, driver.Error) from exc

    def _insert_sql(self, table: sa.Table, columns: Sequence[str]) -> str:
        """The statement of :meth:`_insert_rows`: PostgreSQL's ``COPY``, else an INSERT of
        ``columns`` with positional parameters in that order."""
        quote = self.engine.dialect.identifier_preparer.quote
        names = ", ".join(map(quote, columns))
        if self.dialect == POSTGRESQL:
            return f"COPY {quote(table.name)} ({names}) FROM STDIN"
        markers = ", ".join(["?" if self.dialect == SQLITE else "%s"] * len(columns))
        return f"INSERT INTO {quote(table.name)} ({names}) VALUES ({markers})"

    def _insert_if_absent(self, conn: sa.Connection, table: sa.Table, **values: Any) -> bool:
        """INSERT one row unless its primary key exists; True if it was inserted.

        PostgreSQL and SQLite report it through RETURNING (psycopg's rowcount for ON CONFLICT
        DO NOTHING is not reliable through SQLAlchemy); MySQL's INSERT IGNORE through rowcount.
        """
        if self.dialect == MYSQL:
            stmt = mysql.insert(table).prefix_with("IGNORE").values(**values)
            return bool(conn.execute(stmt).rowcount == 1)
        key = next(iter(table.primary_key.columns))
        returning = self._insert(table).values(**values).on_conflict_do_nothing().returning(key)
        return conn.execute(returning).first() is not None

    def now_ms(self) -> int:
        """The database clock."""
        return self._tx(
            lambda conn: int(conn.execute(sa.select(self._now)).scalar_one()), write=False
        )
