"""Shared fixtures: real SQLite, PostgreSQL and MariaDB stores, workers in threads and processes.

PostgreSQL and MariaDB are reached at ASSAY_TEST_PG_URI / ASSAY_TEST_MYSQL_URI (defaults: the
local servers). When one is unreachable its tests skip with the reason, unless
ASSAY_TEST_REQUIRE_DBS=1 (set by CI), where they fail.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import assay
from assay.db.tables import metadata
from assay.jobs.backend import Backend

TESTS_DIR = Path(__file__).parent
PG_URI = os.environ.get("ASSAY_TEST_PG_URI", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URI = os.environ.get("ASSAY_TEST_MYSQL_URI", "mysql+pymysql://root@127.0.0.1:3306/test")
REQUIRE_DBS = os.environ.get("ASSAY_TEST_REQUIRE_DBS") == "1"

# Short leases and polls so crash and cancel paths finish in seconds.
FAST: dict[str, Any] = {
    "lease_ttl_s": 2.0,
    "leader_ttl_s": 2.0,
    "rescue_interval_s": 0.3,
    "cancel_poll_s": 0.1,
    "poll_interval_s": 0.05,
    "retry_backoff_base_s": 0.05,
    "retry_backoff_max_s": 1.0,
    "shutdown_grace_s": 2.0,
    "job_modules": ["jobmods"],
    "default_executor": "inline",
}


def fast_env(**extra: Any) -> dict[str, str]:
    """Environment for a worker subprocess with the FAST settings."""
    env = dict(os.environ)
    for key, value in {**FAST, **extra}.items():
        env[f"ASSAY_{key.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    return env


ADMIN_URIS = {"postgresql": PG_URI, "mysql": MYSQL_URI}

# The public JSON shape of a job (DESIGN.md), in order.
JOB_KEYS = [
    "id",
    "name",
    "params",
    "status",
    "result",
    "error",
    "attempt",
    "max_retries",
    "timeout",
    "created_at",
    "started_at",
    "finished_at",
    "worker_id",
    "progress",
    "log_tail",
]


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


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    with server_database("postgresql") as uri:
        yield uri


@pytest.fixture(scope="session")
def mysql_database() -> Iterator[str]:
    with server_database("mysql") as uri:
        yield uri


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URI with an empty, migrated schema, on each of the three databases."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'assay.db'}"
    fixture = {"postgresql": "pg_database", "mysql": "mysql_database"}[request.param]
    uri: str = request.getfixturevalue(fixture)
    engine = sa.create_engine(uri)
    assay.db.upgrade(engine)
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()
    return uri


@pytest.fixture
def backend(store_uri: str) -> Iterator[Backend]:
    with assay.connect(store_uri, **FAST) as b:
        yield b


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@contextlib.contextmanager
def running_worker(backend: Backend, **kwargs: Any) -> Iterator[assay.Worker]:
    """A worker of ``backend`` running in a thread for the duration of the block."""
    worker = backend.worker(**kwargs)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop(now=True)
        thread.join(timeout=15)
        assert not thread.is_alive(), "worker did not stop"


class WorkerProcesses:
    """Real `assay worker` processes; all are killed at the end of the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp_path = tmp_path

    def start(self, store_uri: str, *args: str, **settings: Any) -> subprocess.Popen[bytes]:
        with open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "assay", "worker", "--store", store_uri, *args],
                env=fast_env(**settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def wait_ready(self, n: int, timeout: float = 60) -> None:
        """``n`` workers printed their start line (imported everything, connected)."""

        def ready() -> bool:
            logs = [p.read_text() for p in self.tmp_path.glob("worker-*.log")]
            return sum(1 for text in logs if " running " in text) >= n

        try:
            wait_until(ready, timeout=timeout, interval=0.05)
        except AssertionError:
            raise AssertionError(f"workers did not start:\n{self.logs()[-5000:]}") from None

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp_path.glob("worker-*.log")))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def worker_processes(tmp_path: Path) -> Iterator[WorkerProcesses]:
    procs = WorkerProcesses(tmp_path)
    try:
        yield procs
    finally:
        procs.close()
