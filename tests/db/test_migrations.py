"""Migrations: from an empty database they yield exactly the models, on every database."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import assay
from assay.db.engine import create_engine
from assay.db.migrate import current_revision, head_revision, is_current, upgrade
from assay.db.tables import JOB_STATUSES, jobs, metadata, traces_fts
from assay.jobs.model import JobStatus
from assay.jobs.store import JobStore, NewJob
from support.databases import server_database
from support.jobs import fast_env

TABLES = {
    "jobs",
    "job_locks",
    "leader_leases",
    "api_tokens",
    "secrets",
    "schedules",
    # 0003: experiment tracking
    "experiments",
    "experiment_tags",
    "runs",
    "run_params",
    "run_metrics",
    "run_tags",
    "run_inputs",
    # 0004: traces
    "traces",
    "trace_metadata",
    "trace_tags",
    "spans",
    "assessments",
    # 0005: online scoring
    "scorers",
    "scoring_tasks",
    # 0006: job attempts
    "job_attempts",
    # 0007: GenAI log events of spans (and traces.model)
    "span_log_events",
}
# 0010, SQLite only: the FTS5 table of tables.traces_fts (own MetaData) and FTS5's shadow tables
FTS_TABLES = {traces_fts.name} | {f"{traces_fts.name}_{s}" for s in ("data", "idx", "config")}
FTS_TRIGGERS = {f"{traces_fts.name}_{s}" for s in ("ai", "ad", "au")}


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def empty_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URI of a brand-new, empty database (no alembic_version, no tables)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with server_database(request.param, prefix="assay_mig") as uri:
        yield uri


def _drift(engine: sa.Engine) -> list[object]:
    dialect = engine.dialect.name

    def on_this_database(obj: object, name: str | None, type_: str, *_: object) -> bool:
        """A model object made on some databases only (``ddl_if``) is compared on those; the
        FTS5 tables are checked by test_sqlite_text_index_matches_the_model."""
        if type_ == "table" and name in FTS_TABLES:
            return False
        only = getattr(obj, "_ddl_if", None)
        return only is None or only.dialect in (None, dialect)

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": on_this_database})
        return list(compare_metadata(context, metadata))


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def _all_tables(engine: sa.Engine) -> set[str]:
    """The tables a migrated database has: the models', and on SQLite the FTS5 index."""
    fts = FTS_TABLES if engine.dialect.name == "sqlite" else set()
    return TABLES | fts | {"alembic_version"}


def test_upgrade_from_empty_yields_the_models(empty_uri):
    engine = create_engine(empty_uri)
    try:
        assert current_revision(engine) is None
        assert not is_current(engine)
        assert _tables(engine) == set()
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        assert is_current(engine)
        assert _tables(engine) == _all_tables(engine)
        assert _drift(engine) == []
    finally:
        engine.dispose()


def test_every_migration_downgrades_and_upgrades_again(empty_uri):
    from alembic import command

    from assay.db.migrate import _config

    engine = create_engine(empty_uri)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            command.downgrade(_config(conn), "base")
        assert _tables(engine) <= {"alembic_version"}
        upgrade(engine)
        assert _tables(engine) == _all_tables(engine)
        assert _drift(engine) == []
    finally:
        engine.dispose()


def test_sqlite_text_index_matches_the_model(empty_uri):
    """0010 made tables.traces_fts (its columns, in order) and its three triggers on SQLite,
    nothing elsewhere; 0009 made the pg_trgm index on PostgreSQL only."""
    engine = create_engine(empty_uri)
    try:
        upgrade(engine)
        inspector = sa.inspect(engine)
        indexes = {i["name"] for i in inspector.get_indexes("traces")}
        assert ("ix_traces_request_trgm" in indexes) == (engine.dialect.name == "postgresql")
        if engine.dialect.name != "sqlite":
            assert not FTS_TABLES & _tables(engine)
            return
        with engine.connect() as conn:
            columns = conn.execute(sa.text(f"PRAGMA table_info({traces_fts.name})")).all()
            triggers = conn.execute(
                sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            ).scalars()
            assert set(triggers) == FTS_TRIGGERS
        assert ["rowid", *(c[1] for c in columns)] == [c.name for c in traces_fts.columns]
    finally:
        engine.dispose()


def test_upgrade_is_idempotent(empty_uri):
    engine = create_engine(empty_uri)
    try:
        upgrade(engine)
        store = JobStore(engine)
        job = NewJob(
            id=str(uuid.uuid4()), name="t_add", params={"a": 1}, max_retries=0, timeout_s=9
        )
        store.jobs_insert([job])
        upgrade(engine)
        upgrade(engine, "head")
        assert current_revision(engine) == head_revision()
        assert _drift(engine) == []
        kept = store.job_get(job.id)
        assert kept is not None
        assert kept.params == {"a": 1}
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert [v[0] for v in versions] == [head_revision()]
    finally:
        engine.dispose()


def test_check_constraint_statuses_equal_job_status():
    assert tuple(JOB_STATUSES) == tuple(s.value for s in JobStatus)
    check = next(c for c in jobs.constraints if isinstance(c, sa.CheckConstraint))
    assert set(re.findall(r"'([A-Z_]+)'", str(check.sqltext))) == set(JOB_STATUSES)


def test_database_check_constraint_enforces_statuses(store_uri):
    engine = create_engine(store_uri)
    try:
        upgrade(engine)  # the fixture migrates the server databases; SQLite starts empty
        checks = sa.inspect(engine).get_check_constraints("jobs")
        texts = [c["sqltext"] for c in checks if "status" in c["sqltext"]]
        assert len(texts) == 1, checks
        assert set(re.findall(r"'([A-Z_]+)'", texts[0])) == {s.value for s in JobStatus}

        def row(status: str) -> dict[str, object]:
            return {
                "id": str(uuid.uuid4()),
                "name": "t_noop",
                "params": json.dumps({}),
                "status": status,
                "attempt": 0,
                "max_retries": 0,
                "timeout_s": 1.0,
                "on_conflict": "skip",
                "created_at_ms": 0,
                "run_at_ms": 0,
            }

        with engine.begin() as conn:
            for status in JobStatus:
                conn.execute(jobs.insert().values(**row(status.value)))
        with (
            pytest.raises(sa.exc.DBAPIError, match=r"(?i)check|ck_jobs_status"),
            engine.begin() as conn,
        ):
            conn.execute(jobs.insert().values(**row("BOGUS")))
        with engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one()
        assert count == len(JobStatus)
    finally:
        engine.dispose()


def test_cli_db_upgrade(empty_uri):
    proc = subprocess.run(
        [sys.executable, "-m", "assay", "db", "upgrade", "--store", empty_uri],
        env=fast_env(),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"store at revision {head_revision()}"
    assert "Traceback" not in proc.stderr
    engine = create_engine(empty_uri)
    try:
        assert is_current(engine)
        assert _drift(engine) == []
    finally:
        engine.dispose()
    # The upgraded store is usable without migrating again.
    with assay.connect(empty_uri, auto_migrate=False) as backend:
        assert backend.search().jobs == []
