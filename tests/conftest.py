"""Shared fixtures: real SQLite, PostgreSQL and MariaDB stores, workers in threads and processes,
the server's app in this process (``apps``, ``api``) and real server processes (``servers``,
``server``).

PostgreSQL, MariaDB and Redis are reached at ASSAY_TEST_PG_URI / ASSAY_TEST_MYSQL_URI /
ASSAY_TEST_REDIS_URI (defaults: the local servers). When one is unreachable its tests skip with
the reason, unless ASSAY_TEST_REQUIRE_DBS=1 (set by CI), where they fail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

import assay
from assay.db.tables import metadata
from assay.jobs.backend import Backend

TESTS_DIR = Path(__file__).parent
PG_URI = os.environ.get("ASSAY_TEST_PG_URI", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URI = os.environ.get("ASSAY_TEST_MYSQL_URI", "mysql+pymysql://root@127.0.0.1:3306/test")
REQUIRE_DBS = os.environ.get("ASSAY_TEST_REQUIRE_DBS") == "1"
REDIS_URI = os.environ.get("ASSAY_TEST_REDIS_URI", "redis://127.0.0.1:6379/0")

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
    "owner",
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


def empty_store(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    """A store URI of ``kind`` ("sqlite", "postgresql", "mysql") with an empty schema."""
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


@pytest.fixture
def backend(store_uri: str) -> Iterator[Backend]:
    with assay.connect(store_uri, **FAST) as b:
        yield b


def time_scale() -> float:
    """How many times longer than on a quiet machine a wait may take right now: the load per
    core (the 1-minute load average over the CPU count), at least 1, or ASSAY_TEST_TIME_SCALE
    when that is larger. A 2-core box running four test processes and other people's work
    starts a server in 30 s instead of 3."""
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    return max(1.0, load, float(os.environ.get("ASSAY_TEST_TIME_SCALE") or 1))


def scaled(seconds: float) -> float:
    """``seconds`` on a quiet machine, stretched by :func:`time_scale` on a busy one. For
    timeouts and for bounds on how long something may take; never for how long to wait."""
    return seconds * time_scale()


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` (on a quiet
    machine: it is :func:`scaled` by the load, so a busy machine is not a failure)."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {limit:.1f}s ({timeout}s scaled)")
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
        thread.join(timeout=scaled(15))
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


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """One real `assay server` (uvicorn) on a free port, as a subprocess."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until /health answers 200 (the server imported everything, migrated the store and
        started its loops: seconds on a quiet machine, a minute on a busy one)."""
        last: list[str] = ["no answer"]

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.logs()}")
            try:
                answer = httpx.get(f"{self.url}/health", timeout=scaled(5))
            except httpx.HTTPError as exc:
                last[0] = repr(exc)
                return False
            last[0] = f"{answer.status_code} {answer.text}"
            return answer.status_code == 200

        try:
            wait_until(healthy, timeout=timeout, interval=0.05)
        except AssertionError as exc:
            raise AssertionError(
                f"server not healthy: {exc}; last /health: {last[0]}\n{self.logs()[-5000:]}"
            ) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


class Servers:
    """Starts `assay server` processes for a test and kills whatever is left at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[ServerProcess] = []

    def start(
        self, store_uri: str, *args: str, wait: bool = True, **settings: Any
    ) -> ServerProcess:
        port = free_port()
        log_path = self.tmp_path / f"server-{len(self.started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "assay",
                    "server",
                    "--store",
                    store_uri,
                    "--port",
                    str(port),
                    *args,
                ],
                env=fast_env(**settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
        self.started.append(server)
        if wait:
            server.wait_healthy()
        return server

    def close(self) -> None:
        for server in self.started:
            if server.proc.poll() is None:
                server.proc.kill()
            server.proc.wait(timeout=10)


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


class InProcessServers:
    """The real app (``create_app``) of ``assay server``, run in this process: its lifespan
    (store migration, worker loops in threads, leadership) runs as under uvicorn, requests go
    to it through httpx (Starlette's ``TestClient``) with no socket and no process to start.
    For tests of the HTTP API's answers; tests of the process itself (signals, kill -9,
    replicas, body streaming on a socket, OTLP/gRPC, real clients) use :class:`Servers`."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()

    def start(self, store_uri: str, *, workers: int = 1, **settings: Any) -> httpx.Client:
        """An httpx client of a new app on ``store_uri`` with ``workers`` worker loops (the
        FAST settings and the tests' job modules, as :meth:`Servers.start`). Loopback, port 0
        and no OTLP/gRPC receiver: auth is off unless ``auth=True``."""
        from fastapi.testclient import TestClient

        from assay.config import Settings
        from assay.server.app import create_app

        config = Settings(
            **{
                **FAST,
                "store_uri": store_uri,
                "server_workers": workers,
                "port": 0,
                "otlp_grpc_port": 0,
                **settings,
            }
        )
        # An IP address for a host: the DNS-rebinding check accepts it ("testserver" it would
        # refuse). Errors are answered with their status, as a real server's are, not raised.
        client = TestClient(
            create_app(config), base_url="http://127.0.0.1", raise_server_exceptions=False
        )
        return self.stack.enter_context(client)

    def close(self) -> None:
        self.stack.close()


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
