"""Engine factory: one place that knows how each database must be connected."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url

from assay.db.dialects import MYSQL_NAMES, POSTGRESQL, SQLITE
from assay.errors import ConfigError

__all__ = ["BEGIN_MODE", "create_engine"]

BEGIN_MODE = "assay_sqlite_begin"
"""Execution option: "IMMEDIATE" (default, every write) or "DEFERRED" (read-only work).

SQLite transactions that read before they write fail with SQLITE_BUSY when another connection
commits in between, and the busy timeout cannot help them; taking the write lock at BEGIN makes
concurrent writers queue on the busy timeout instead."""


def create_engine(uri: str, *, pool_size: int = 10) -> sa.Engine:
    """Create an engine for a store URI, with the per-database settings assay relies on."""
    try:
        url = make_url(uri)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"invalid store URI {uri!r}: {exc}") from exc
    backend = url.get_backend_name()
    if backend == SQLITE:
        return _sqlite_engine(url)
    kwargs: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "pool_recycle": 1800,
    }
    if backend in MYSQL_NAMES:
        # READ COMMITTED avoids InnoDB gap locks between concurrent claimers.
        kwargs["isolation_level"] = "READ COMMITTED"
    elif backend != POSTGRESQL:
        raise ConfigError(f"unsupported database {backend!r}: use sqlite, postgresql or mysql")
    try:
        return sa.create_engine(url, **kwargs)
    except ImportError as exc:
        extra = "postgres" if backend == POSTGRESQL else "mysql"
        raise ConfigError(f"driver for {backend} missing: pip install 'assay[{extra}]'") from exc


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        path = Path(database).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = url.set(database=str(path))
    engine = sa.create_engine(
        url,
        connect_args={"timeout": 60, "check_same_thread": False},
        pool_size=20,
        max_overflow=20,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Let us emit BEGIN ourselves (pysqlite's own transaction handling is legacy).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL is crash-safe for the application in WAL mode (an OS crash may drop the last
        # commits, never corrupt the file).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get(BEGIN_MODE, "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine
