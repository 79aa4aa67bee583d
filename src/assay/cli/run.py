"""``assay worker``, ``assay server`` and ``assay demo``: the long-running commands."""

from __future__ import annotations

import faulthandler
import json
import logging
import multiprocessing
import os
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from assay.config import Settings
from assay.cli.base import _settings, cli, modules_option, store_option

# -- worker ------------------------------------------------------------------------------------


@cli.command()
@store_option
@modules_option
@click.option("--concurrency", type=click.IntRange(min=1), help="Jobs run at once (default 10).")
@click.option("--executor", help="Default executor for jobs that name none (default process).")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve this worker's Prometheus metrics on this port (GET /metrics; 0: any free port).",
)
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, help="Address of --metrics-port."
)
def worker(
    store_uri: str | None,
    job_modules: tuple[str, ...],
    concurrency: int | None,
    executor: str | None,
    log_level: str,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run a worker until SIGTERM/SIGINT (a second signal stops at once)."""
    from prometheus_client import start_http_server

    from assay.jobs.backend import Backend
    from assay.scoring import jobs as scoring_jobs
    from assay.util import collector_for_serving

    _log_to_stderr(log_level)
    settings = _settings(
        store_uri, job_modules, worker_concurrency=concurrency, default_executor=executor
    )
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack
    with Backend(settings) as backend:
        scoring_jobs.install(backend.registry)
        w = backend.worker()
        signals = {"count": 0}

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            signals["count"] += 1
            w.stop(now=signals["count"] > 1)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if metrics_port is not None:
            try:
                http, _ = start_http_server(
                    metrics_port, metrics_host, registry=backend.store.metrics.registry
                )
            except OSError as exc:
                raise click.ClickException(
                    f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror}"
                ) from None
            click.echo(f"metrics on http://{metrics_host}:{http.server_port}/metrics", err=True)
        click.echo(
            f"worker {w.id} on {settings.store_uri} running {', '.join(backend.registry.names)}",
            err=True,
        )
        with collector_for_serving():
            w.run()


# -- server ------------------------------------------------------------------------------------


@cli.command()
@store_option
@modules_option
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default 8400).")
@click.option(
    "--otlp-grpc-port",
    type=click.IntRange(0, 65535),
    help="OTLP/gRPC receiver port (default 4317 when grpcio is installed; 0: off).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    help="Worker loops in this process (default 1; 0 for an API-only replica).",
)
@click.option("--concurrency", type=click.IntRange(min=1), help="Jobs each worker loop runs.")
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    help="Processes serving the one address, each with its own worker loops (default 1).",
)
@click.option(
    "--auth/--no-auth",
    default=None,
    help="Require API tokens (default: required unless listening on loopback only).",
)
@click.option(
    "--allow-custom-scorers",
    is_flag=True,
    default=None,
    help="Accept custom code scorers (run in the sandbox executor only).",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def server(
    store_uri: str | None,
    job_modules: tuple[str, ...],
    host: str | None,
    port: int | None,
    otlp_grpc_port: int | None,
    workers: int | None,
    concurrency: int | None,
    processes: int | None,
    auth: bool | None,
    allow_custom_scorers: bool | None,
    log_level: str,
) -> None:
    """Serve the REST API, run worker loops and the leader services until SIGTERM/SIGINT."""
    import uvicorn

    from assay.server.app import create_app

    _log_to_stderr(log_level)
    settings = _settings(
        store_uri,
        job_modules,
        host=host,
        port=port,
        otlp_grpc_port=otlp_grpc_port,
        server_workers=workers,
        worker_concurrency=concurrency,
        server_processes=processes,
        auth=auth,
        allow_custom_scorers=allow_custom_scorers,
    )
    _preflight(settings)
    serve: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": log_level.lower(),
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s) + 5,
    }
    if settings.server_processes == 1:
        uvicorn.run(create_app(settings), **serve)
        return
    # uvicorn binds the address here and starts each process afresh, importing the app by
    # name: the settings go to them through the environment. A process that dies (kill -9)
    # is replaced; SIGTERM here stops them all, each as gracefully as a single server.
    handed = {"settings": _revealed(settings), "log_level": log_level}
    os.environ[_PROCESS_ENV] = json.dumps(handed)
    uvicorn.run(
        f"{__name__}:{process_app.__name__}",
        factory=True,
        workers=settings.server_processes,
        **serve,
    )


_PROCESS_ENV = "_ASSAY_SERVER_PROCESS"
"""How ``assay server --processes N`` hands its settings and log level to its processes."""


def process_app() -> ASGIApp:
    """The app of one of the processes of ``assay server --processes N`` (uvicorn's factory):
    the parent's settings, read once and taken out of the environment, so that no job's
    process started from here inherits them."""
    from assay.config import Settings
    from assay.server.app import create_app

    handed = json.loads(os.environ.pop(_PROCESS_ENV))
    _log_to_stderr(handed["log_level"])
    _stop_with_parent()
    return create_app(Settings(**handed["settings"]))


def _stop_with_parent() -> None:
    """Stop this process (SIGTERM: gracefully, as the parent's SIGTERM would) once its parent
    is gone. A parent killed with SIGKILL cannot stop its processes, and uvicorn's would go on
    serving the address, orphaned. The parent is the one multiprocessing started this process
    from, so a parent that died while this one was still starting counts too."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        logging.getLogger("assay.server").warning("server.orphaned parent=%s: stopping", parent.pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="assay-parent-watch", daemon=True).start()


def _revealed(settings: Settings) -> dict[str, Any]:
    """``settings`` as JSON values that make the same settings again, secrets included."""
    from pydantic import SecretStr

    values: dict[str, Any] = settings.model_dump(mode="json")
    for name, value in settings:
        if isinstance(value, SecretStr):
            values[name] = value.get_secret_value()
    return values


def _preflight(settings: Settings) -> None:
    """What the server's start-up does that can fail on the user's input (the store, its
    schema, job modules, executors), done first so a mistake is one ``error:`` line and exit
    2 rather than uvicorn's traceback of a failed lifespan."""
    from assay.jobs.backend import Backend
    from assay.jobs.executors import create_executor

    with Backend(settings) as backend:
        if settings.server_workers:
            specs = [backend.registry.get(name) for name in backend.registry.names]
            executors = {settings.default_executor}
            # As the worker picks them (Worker._executor_for).
            executors |= {"venv" if s.python_env else s.executor or "" for s in specs}
            executors.discard("")
            for name in sorted(executors):
                create_executor(name, settings, slots=1)


# -- demo --------------------------------------------------------------------------------------


@cli.command()
@store_option
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8400,
    show_default=True,
    help="Port to serve on (a free one if taken; 0: any free port).",
)
@click.option(
    "--traces", type=click.IntRange(min=1), default=300, show_default=True, help="Traces to send."
)
@click.option("--no-serve", is_flag=True, help="Exit after the summary instead of serving.")
def demo(store_uri: str | None, port: int, traces: int, no_serve: bool) -> None:
    """Online scoring end to end, offline: a server, a stand-in judge, a simulated app's
    traces, and what each scorer found."""
    from assay.demo import run_demo

    logging.getLogger("alembic").setLevel(logging.WARNING)
    run_demo(store_uri=store_uri, port=port, traces=traces, serve=not no_serve)


def _log_to_stderr(level: str) -> None:
    """A long-running command's log: one line a record, alembic's chatter left out."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
