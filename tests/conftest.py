"""Shared fixtures: real SQLite, PostgreSQL and MariaDB stores, workers in processes, the
server's app in this process (``apps``, ``api``) and real server processes (``servers``,
``server``). The helpers they are built from, and that tests import by name, are in
:mod:`support`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import assay
from assay.jobs.backend import Backend
from support.databases import REDIS_URI, REQUIRE_DBS, empty_store, server_database
from support.jobs import FAST, WorkerProcesses
from support.servers import InProcessServers, ServerProcess, Servers


@pytest.fixture
def redis_url() -> str:
    """The test Redis server (wake-ups by pub/sub). Skips (or, with ASSAY_TEST_REQUIRE_DBS=1,
    fails) when it is down or the redis package is missing."""
    try:
        import redis

        redis.Redis.from_url(REDIS_URI, socket_connect_timeout=2).ping()
    except Exception as exc:
        message = f"redis not usable at {REDIS_URI}: {str(exc).splitlines()[0]}"
        if REQUIRE_DBS:
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URI


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
    return empty_store(request, str(request.param), tmp_path)


@pytest.fixture
def backend(store_uri: str) -> Iterator[Backend]:
    with assay.connect(store_uri, **FAST) as b:
        yield b


@pytest.fixture
def worker_processes(tmp_path: Path) -> Iterator[WorkerProcesses]:
    procs = WorkerProcesses(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """Real `assay server` processes: ``servers.start(store_uri, "--workers", "1")``."""
    started = Servers(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def server(servers: Servers, store_uri: str) -> ServerProcess:
    """One real server (one worker loop, FAST settings, tests' job modules) on each store."""
    return servers.start(store_uri)


@pytest.fixture
def apps() -> Iterator[InProcessServers]:
    """In-process servers: ``apps.start(store_uri, workers=0)`` is an ``httpx.Client``."""
    started = InProcessServers()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def api(apps: InProcessServers, store_uri: str) -> httpx.Client:
    """The in-process :func:`server`: one worker loop, FAST settings, on each store."""
    return apps.start(store_uri)
