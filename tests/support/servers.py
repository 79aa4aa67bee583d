"""Real `assay server` processes on free ports, and the server's app run in this process (for
tests of the HTTP API's answers, no process to start)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.databases import server_database
from support.jobs import FAST, fast_env
from support.timing import scaled, wait_until


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """One real `assay server` (uvicorn) on a free port, as a subprocess."""

    def __init__(
        self, proc: subprocess.Popen[bytes], url: str, log_path: Path, store_uri: str
    ) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path
        self.store_uri = store_uri

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
        server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path, store_uri)
        self.started.append(server)
        if wait:
            server.wait_healthy()
        return server

    def close(self) -> None:
        for server in self.started:
            if server.proc.poll() is None:
                server.proc.kill()
            server.proc.wait(timeout=10)


def kinds_grouped(module: str) -> list[Any]:
    """The three store kinds as the params of a module-scoped server fixture (see
    :func:`module_server`), each kind in an xdist group of its own: one test process runs all of
    a kind's tests, so its server starts once, not once in each process that got one of them;
    the three kinds still run in parallel."""
    return [
        pytest.param(kind, marks=pytest.mark.xdist_group(f"{module}-{kind}"))
        for kind in ("sqlite", "postgresql", "mysql")
    ]


@contextlib.contextmanager
def module_server(
    kind: str, tmp_path_factory: pytest.TempPathFactory, module: str, *args: str, **settings: Any
) -> Iterator[ServerProcess]:
    """One real server on a new store of ``kind`` (a database of its own), shared by a
    module's tests, which therefore each make their own experiment and check only its rows."""
    tmp = tmp_path_factory.mktemp(f"{module}-{kind}")
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            store_uri = f"sqlite:///{tmp / 'assay.db'}"
        else:
            store_uri = stack.enter_context(server_database(kind, prefix=f"assay_{module}"))
        servers = Servers(tmp)
        stack.callback(servers.close)
        yield servers.start(store_uri, *args, **settings)


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
