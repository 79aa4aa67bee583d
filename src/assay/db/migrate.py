"""Apply the alembic migrations in ``migrations/`` programmatically.

Concurrent upgrades (several replicas starting at once) are serialised with a database lock:
an advisory lock on PostgreSQL, GET_LOCK on MySQL/MariaDB, the write lock on SQLite.
"""

from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from assay.db.dialects import MYSQL_NAMES, POSTGRESQL
from assay.errors import MigrationError, StoreError

__all__ = ["current_revision", "head_revision", "is_current", "upgrade"]

_MIGRATIONS = Path(__file__).with_name("migrations")
_PG_LOCK_ID = 0x61_73_73_61_79  # "assay" (PostgreSQL advisory locks are per database)
# MySQL lock names are server-wide: one per database, so that the stores of one server (test
# databases, tenants) do not queue behind each other's migrations.
_MYSQL_LOCK = "LEFT(CONCAT('assay_migrate:', DATABASE()), 64)"
_MYSQL_LOCK_WAIT_S = 60


def _config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest migration shipped with assay (read once: ``/health`` asks on every call)."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: sa.Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except sa.exc.DBAPIError as exc:
        raise StoreError(f"cannot reach the store: {exc.orig}") from exc


def is_current(engine: sa.Engine) -> bool:
    return current_revision(engine) == head_revision()


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (idempotent)."""
    try:
        with engine.connect() as conn:
            dialect = conn.dialect.name
            if dialect == POSTGRESQL:
                conn.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": _PG_LOCK_ID})
                conn.commit()
            elif dialect in MYSQL_NAMES:
                got = conn.execute(
                    sa.text(f"SELECT GET_LOCK({_MYSQL_LOCK}, {_MYSQL_LOCK_WAIT_S})")
                ).scalar()
                conn.commit()
                if got != 1:  # never migrate beside another migration
                    raise MigrationError(
                        f"another process held this database's migration lock for "
                        f"{_MYSQL_LOCK_WAIT_S}s; try again once its migration is done"
                    )
            try:
                command.upgrade(_config(conn), revision)
                conn.commit()
            finally:
                if dialect == POSTGRESQL:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": _PG_LOCK_ID})
                    conn.commit()
                elif dialect in MYSQL_NAMES:
                    conn.execute(sa.text(f"SELECT RELEASE_LOCK({_MYSQL_LOCK})"))
                    conn.commit()
    except sa.exc.DBAPIError as exc:
        raise MigrationError(f"migration failed: {exc.orig}") from exc
