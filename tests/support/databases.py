"""The test databases: PostgreSQL, MariaDB and Redis at ASSAY_TEST_PG_URI / ASSAY_TEST_MYSQL_URI
/ ASSAY_TEST_REDIS_URI (defaults: the local servers), new empty databases on them, and an empty
store of each kind. When one is unreachable its tests skip with the reason, unless
ASSAY_TEST_REQUIRE_DBS=1 (set by CI), where they fail."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import assay
from assay.db.tables import metadata

PG_URI = os.environ.get("ASSAY_TEST_PG_URI", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URI = os.environ.get("ASSAY_TEST_MYSQL_URI", "mysql+pymysql://root@127.0.0.1:3306/test")
REQUIRE_DBS = os.environ.get("ASSAY_TEST_REQUIRE_DBS") == "1"
REDIS_URI = os.environ.get("ASSAY_TEST_REDIS_URI", "redis://127.0.0.1:6379/0")

ADMIN_URIS = {"postgresql": PG_URI, "mysql": MYSQL_URI}


@contextlib.contextmanager
def server_database(kind: str, prefix: str = "assay_test") -> Iterator[str]:
    """A new, empty database on the ``kind`` ("postgresql" or "mysql") test server, dropped
    afterwards. Skips (or, with ASSAY_TEST_REQUIRE_DBS=1, fails) when the server is down."""
    admin_uri = ADMIN_URIS[kind]
    engine = sa.create_engine(admin_uri, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        message = f"{kind} not reachable at {admin_uri}: {str(exc).splitlines()[0]}"
        if REQUIRE_DBS:
            pytest.fail(message)
        pytest.skip(message)
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield sa.make_url(admin_uri).set(database=name).render_as_string(hide_password=False)
    finally:
        force = " WITH (FORCE)" if kind == "postgresql" else ""
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
        engine.dispose()


def empty_store(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    """A store URI of ``kind`` ("sqlite", "postgresql", "mysql") with an empty schema: the
    session's database of that server (the ``pg_database``/``mysql_database`` fixtures),
    migrated and emptied."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'assay.db'}"
    fixture = {"postgresql": "pg_database", "mysql": "mysql_database"}[kind]
    uri: str = request.getfixturevalue(fixture)
    engine = sa.create_engine(uri)
    assay.db.upgrade(engine)
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()
    return uri
