"""The ``assay`` command.

Exit codes: 0 success, 1 a job that did not succeed (``--wait``) or a store failure, 2 usage
errors (unknown job, bad params, bad options). Errors print one line, never a traceback.

The commands that talk to a server (``assay jobs|scorers … --server URL``) work on the
client-only install: the store, the server and their packages are imported only by the
commands that use them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import json
import logging
import re
import signal
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from assay.errors import (
    AssayError,
    ConfigError,
    InvalidRequestError,
    MigrationError,
    NotFoundError,
)
from assay.jobs.api import JobsAPI, find_job
from assay.jobs.model import Job, JobStatus, ms_to_datetime
from assay.jobs.model import Progress as JobProgress
from assay.scoring.scorers import (
    Scorer,
    backfill_scorer,
    delete_scorer,
    list_scorers,
    set_scorer_status,
)

if TYPE_CHECKING:
    from assay.client import Client
    from assay.config import Settings
    from assay.jobs.backend import Backend
    from assay.server.tokens import TokenRole, TokenStore

__all__ = ["main", "parse_duration"]

_USAGE_ERRORS = (InvalidRequestError, NotFoundError, ConfigError)
_SERVER_PACKAGES = frozenset(
    {
        "alembic",
        "croniter",
        "fastapi",
        "fastapi_offline",
        "google",
        "jinja2",
        "multipart",
        "prometheus_client",
        "pydantic",
        "pydantic_settings",
        "regex",
        "sqlalchemy",
        "starlette",
        "uvicorn",
    }
)
"""Packages of ``assay[server]``: a command that needs one on a client-only install says so."""
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '12h', '7d', '2w' -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30s, 15m, 12h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not key=value", param_hint="-p")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


class _Group(click.Group):
    """Turns assay errors into one readable line and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AssayError as exc:
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            click.echo(f"error: {lines[0]}", err=True)
            ctx.exit(2 if isinstance(exc, _USAGE_ERRORS) else 1)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in _SERVER_PACKAGES:
                raise
            click.echo(
                f"error: this command needs the store and server packages: "
                f"pip install 'assay[server]' ({exc.name} is missing)",
                err=True,
            )
            ctx.exit(2)


store_option = click.option(
    "--store", "store_uri", envvar="ASSAY_STORE_URI", help="Store URI (default ~/.assay/assay.db)."
)
modules_option = click.option(
    "--jobs-module",
    "job_modules",
    multiple=True,
    help="Module defining @job functions (repeatable; also ASSAY_JOB_MODULES).",
)


def _settings(store_uri: str | None, job_modules: tuple[str, ...] = (), **kw: Any) -> Settings:
    from assay.config import load_settings

    base = load_settings(store_uri=store_uri, **kw)
    if job_modules:
        base = base.model_copy(update={"job_modules": [*base.job_modules, *job_modules]})
    return base


@click.group(cls=_Group)
@click.version_option(package_name="assay")
def cli() -> None:
    """assay: durable jobs and online scoring."""


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

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
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
    auth: bool | None,
    allow_custom_scorers: bool | None,
    log_level: str,
) -> None:
    """Serve the REST API, run worker loops and the leader services until SIGTERM/SIGINT."""
    import uvicorn

    from assay.server.app import create_app

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = _settings(
        store_uri,
        job_modules,
        host=host,
        port=port,
        otlp_grpc_port=otlp_grpc_port,
        server_workers=workers,
        worker_concurrency=concurrency,
        auth=auth,
        allow_custom_scorers=allow_custom_scorers,
    )
    _preflight(settings)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
    )


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


# -- jobs --------------------------------------------------------------------------------------


@cli.group(cls=_Group)
def jobs() -> None:
    """Submit, inspect, cancel and prune jobs (in a store, or on a server with --server)."""


server_option = click.option(
    "--server",
    "server_url",
    envvar="ASSAY_SERVER_URL",
    help="URL of an assay server to use instead of a store, e.g. http://127.0.0.1:8400.",
)
token_option = click.option(
    "--token", envvar="ASSAY_TOKEN", help="API token for --server (also ASSAY_TOKEN)."
)


def _open_jobs(
    store_uri: str | None,
    server_url: str | None,
    token: str | None,
    job_modules: tuple[str, ...] = (),
) -> JobsAPI:
    """A client of ``server_url`` or a backend on ``store_uri``.

    A store and a server both given the same way (both options, or both environment
    variables) is a usage error; otherwise the command line wins over the environment.
    """
    ctx = click.get_current_context()

    def given(param: str) -> bool:
        return ctx.get_parameter_source(param) is click.core.ParameterSource.COMMANDLINE

    if server_url and store_uri:
        if given("server_url") == given("store_uri"):
            where = "options" if given("server_url") else "ASSAY_SERVER_URL and ASSAY_STORE_URI"
            raise ConfigError(f"give a store or a server, not both ({where})")
        if given("store_uri"):
            server_url = None
    if not server_url:
        if token and given("token"):
            raise ConfigError("--token applies to --server only")
        from assay.jobs.backend import Backend

        return Backend(_settings(store_uri, job_modules))
    if job_modules:
        raise ConfigError("--jobs-module applies to --store only: a server imports its own")
    from assay.client import Client

    return Client(server_url, token)


@jobs.command("submit")
@click.argument("name")
@click.option("-p", "--param", "params", multiple=True, help="key=value (value parsed as JSON).")
@click.option("--timeout", type=float, help="Seconds before the job is timed out.")
@click.option("--wait", is_flag=True, help="Wait for the job, showing progress.")
@store_option
@server_option
@token_option
@modules_option
def jobs_submit(
    name: str,
    params: tuple[str, ...],
    timeout: float | None,
    wait: bool,
    store_uri: str | None,
    server_url: str | None,
    token: str | None,
    job_modules: tuple[str, ...],
) -> None:
    """Submit job NAME."""
    values = dict(_parse_param(p) for p in params)
    with _open_jobs(store_uri, server_url, token, job_modules) as api:
        job = api.submit(name, values, timeout=timeout)
        if not wait:
            click.echo(job.id)
            return
        click.echo(f"submitted {job.id}", err=True)
        final = _wait_with_progress(api, job)
        _print_job(final)
        sys.exit(0 if final.status == JobStatus.SUCCEEDED else 1)


def _number(value: float) -> str:
    """30.0 -> '30', 2.5 -> '2.5', 1234567.0 -> '1234567' (never '1.23457e+06')."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def format_progress(progress: JobProgress | None) -> str:
    """'26/30', or '7' when the job gave no total; '' without progress."""
    if progress is None:
        return ""
    done = _number(progress.completed)
    return f"{done}/{_number(progress.total)}" if progress.total else done


def _wait_with_progress(api: JobsAPI, job: Job) -> Job:
    """Wait for ``job`` with a live bar on stderr; the bar stays, showing the job's final
    status and the last progress it reported (written with its result)."""
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.fields[status]:<9}"),
        BarColumn(),
        TextColumn("{task.fields[counts]}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(job.name, total=None, status=job.status.value, counts="")

        def update(current: Job) -> None:
            p = current.progress
            bar.update(
                task,
                status=current.status.value,
                completed=p.completed if p else 0,
                total=p.total if p and p.total else None,
                description=(p.message if p and p.message else current.name),
                counts=format_progress(p),
            )
            if current.status.is_terminal:
                bar.stop_task(task)  # the elapsed time stops with the job

        return api.wait(job.id, poll_s=0.2, on_update=update)


@jobs.command("list")
@click.option("--name", multiple=True, help="Only jobs with this name (repeatable).")
@click.option("--status", multiple=True, help="Only jobs in this status (repeatable).")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--page-token", help="Token printed by the previous page.")
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="Also assay's own jobs (online scoring, named assay.…).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_option
@server_option
@token_option
def jobs_list(
    name: tuple[str, ...],
    status: tuple[str, ...],
    limit: int,
    page_token: str | None,
    show_all: bool,
    as_json: bool,
    store_uri: str | None,
    server_url: str | None,
    token: str | None,
) -> None:
    """List jobs, newest first (assay's own online-scoring jobs only with --all)."""
    with _open_jobs(store_uri, server_url, token) as api:
        page = api.search(
            name=name,
            status=status,
            limit=limit,
            page_token=page_token,
            include_internal=show_all,
        )
    if as_json:
        out = {"jobs": [j.to_dict() for j in page.jobs], "next_page_token": page.next_page_token}
        click.echo(json.dumps(out, indent=2))
        return
    _table_console().print(jobs_table(page.jobs))
    if page.next_page_token:
        click.echo(f"next page: --page-token {page.next_page_token}")


@jobs.command("show")
@click.argument("job_id")
@store_option
@server_option
@token_option
def jobs_show(
    job_id: str, store_uri: str | None, server_url: str | None, token: str | None
) -> None:
    """Show one job as JSON. JOB_ID may be any unique prefix of the id (at least 4 digits)."""
    with _open_jobs(store_uri, server_url, token) as api:
        _print_job(find_job(api, job_id))


@jobs.command("cancel")
@click.argument("job_id")
@store_option
@server_option
@token_option
def jobs_cancel(
    job_id: str, store_uri: str | None, server_url: str | None, token: str | None
) -> None:
    """Cancel a pending or running job. JOB_ID may be any unique prefix of the id."""
    with _open_jobs(store_uri, server_url, token) as api:
        job = api.cancel(find_job(api, job_id).id)
    click.echo(f"{job.id} {job.status.value}")


@jobs.command("prune")
@click.option(
    "--older-than", required=True, help="Delete jobs finished longer ago than this (e.g. 7d)."
)
@store_option
def jobs_prune(older_than: str, store_uri: str | None) -> None:
    """Delete finished jobs older than a duration."""
    from assay.jobs.backend import Backend

    seconds = parse_duration(older_than)
    with Backend(_settings(store_uri)) as backend:
        deleted = backend.prune(seconds)
    click.echo(f"deleted {deleted} jobs")


def _print_job(job: Job) -> None:
    click.echo(json.dumps(job.to_dict(), indent=2, default=str))


def jobs_table(jobs: list[Job], now: datetime | None = None) -> Table:
    """The table of ``assay jobs list``: ids in full (never folded or cut, so they can be
    copied); the name and progress fold when the terminal is narrow."""
    now = now or datetime.now(UTC)
    table = Table(box=None, pad_edge=False)
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("name", overflow="fold", min_width=8)
    table.add_column("status", no_wrap=True)
    table.add_column("try", justify="right", no_wrap=True)
    table.add_column("age", justify="right", no_wrap=True)
    table.add_column("progress", overflow="fold", min_width=5)
    for j in jobs:
        age = _age((now - j.created_at).total_seconds())
        table.add_row(
            j.id, j.name, j.status.value, str(j.attempt), age, format_progress(j.progress)
        )
    return table


def _age(seconds: float) -> str:
    """12s, 5m, 3h, 4d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(int(seconds), 0)}s"


def _table_console() -> Console:
    """stdout for tables: a terminal's width, or no limit when piped (nothing folds)."""
    console = Console()
    if not console.is_terminal:
        console.width = 1000
    return console


# -- scorers -----------------------------------------------------------------------------------


@cli.group(cls=_Group)
def scorers() -> None:
    """Register, list, pause, resume, backfill and remove the online scorers of an experiment
    (in a store, or on a server with --server)."""


def _scorers_target(
    store_uri: str | None, server_url: str | None, token: str | None
) -> Client | Backend:
    """The server client or store backend of the options, chosen as for ``assay jobs``."""
    # _open_jobs makes exactly a Client (for a server) or a Backend (for a store).
    return cast("Client | Backend", _open_jobs(store_uri, server_url, token))


def _definition(text: str | None, path: str | None) -> dict[str, Any]:
    """The scorer definition of --definition or --definition-file: one JSON object."""
    if text is not None and path is not None:
        raise InvalidRequestError("give --definition or --definition-file, not both")
    source, where = (text, "--definition") if path is None else (_read(path), path)
    if source is None:
        return {}
    try:
        value = json.loads(source)
    except ValueError as exc:
        raise InvalidRequestError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{where} must be a JSON object, not {type(value).__name__}")
    return value


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise InvalidRequestError(f"cannot read --definition-file {path}: {exc.strerror}") from None


def _millis(text: str) -> int:
    """Epoch milliseconds, or an ISO-8601 time with a zone (e.g. 2026-11-23T00:00Z)."""
    if text.strip().isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequestError(
            f"{text!r} is neither epoch milliseconds nor an ISO-8601 time"
        ) from None
    if when.tzinfo is None:
        raise InvalidRequestError(f"{text!r} needs a time zone (e.g. 2026-11-23T00:00Z)")
    return round(when.timestamp() * 1000)


def _echo_change(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data))


@scorers.command("list")
@click.argument("experiment_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_option
@server_option
@token_option
def scorers_list(
    experiment_id: str,
    as_json: bool,
    store_uri: str | None,
    server_url: str | None,
    token: str | None,
) -> None:
    """List the scorers of EXPERIMENT_ID."""
    with _scorers_target(store_uri, server_url, token) as api:
        found = list_scorers(experiment_id, target=api)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(s) for s in found], indent=2))
        return
    table = Table("name", "kind", "level", "version", "sample", "filter", "status", "reason")
    for s in found:
        table.add_row(
            s.name,
            s.kind,
            s.level,
            str(s.version),
            f"{s.sample_rate:g}",
            s.filter_string or "",
            s.status,
            s.status_reason or "",
        )
    Console().print(table)


@scorers.command("add")
@click.argument("experiment_id")
@click.argument("name")
@click.option("--kind", required=True, help="llm_judge, custom or a heuristic (e.g. keywords).")
@click.option("--definition", "definition_json", help="The definition as a JSON object.")
@click.option("--definition-file", help="A file holding the definition as a JSON object.")
@click.option("--level", type=click.Choice(["trace", "session"]), default="trace")
@click.option("--sample-rate", type=float, default=1.0, show_default=True)
@click.option("--filter", "filter_string", help="Only traces matching this filter string.")
@store_option
@server_option
@token_option
def scorers_add(
    experiment_id: str,
    name: str,
    kind: str,
    definition_json: str | None,
    definition_file: str | None,
    level: str,
    sample_rate: float,
    filter_string: str | None,
    store_uri: str | None,
    server_url: str | None,
    token: str | None,
) -> None:
    """Register scorer NAME on EXPERIMENT_ID (replacing, and resuming, one of that name)."""
    scorer = Scorer(name, kind, _definition(definition_json, definition_file), level)
    with _scorers_target(store_uri, server_url, token) as api:
        added = scorer.register(
            experiment_id, sample_rate=sample_rate, filter_string=filter_string, target=api
        )
    _echo_change(dataclasses.asdict(added))


def _set_status(
    experiment_id: str, name: str, status: str, options: tuple[str | None, str | None, str | None]
) -> None:
    with _scorers_target(*options) as api:
        changed = set_scorer_status(experiment_id, name, status, target=api)
    _echo_change(dataclasses.asdict(changed))


@scorers.command("pause")
@click.argument("experiment_id")
@click.argument("name")
@store_option
@server_option
@token_option
def scorers_pause(
    experiment_id: str, name: str, store_uri: str | None, server_url: str | None, token: str | None
) -> None:
    """Pause scorer NAME: traces keep being queued, and are scored once it is resumed."""
    _set_status(experiment_id, name, "PAUSED", (store_uri, server_url, token))


@scorers.command("resume")
@click.argument("experiment_id")
@click.argument("name")
@store_option
@server_option
@token_option
def scorers_resume(
    experiment_id: str, name: str, store_uri: str | None, server_url: str | None, token: str | None
) -> None:
    """Resume scorer NAME; it catches up on what was queued while paused."""
    _set_status(experiment_id, name, "ACTIVE", (store_uri, server_url, token))


@scorers.command("remove")
@click.argument("experiment_id")
@click.argument("name")
@store_option
@server_option
@token_option
def scorers_remove(
    experiment_id: str, name: str, store_uri: str | None, server_url: str | None, token: str | None
) -> None:
    """Delete scorer NAME and what it has queued; its assessments stay."""
    with _scorers_target(store_uri, server_url, token) as api:
        delete_scorer(experiment_id, name, target=api)
    _echo_change({"experiment_id": experiment_id, "name": name, "deleted": True})


@scorers.command("backfill")
@click.argument("experiment_id")
@click.argument("name")
@click.option("--start", required=True, help="Epoch ms or ISO-8601 time (inclusive).")
@click.option("--end", required=True, help="Epoch ms or ISO-8601 time (exclusive).")
@click.option("--dry-run", is_flag=True, help="Only count the traces (and a judge's tokens).")
@store_option
@server_option
@token_option
def scorers_backfill(
    experiment_id: str,
    name: str,
    start: str,
    end: str,
    dry_run: bool,
    store_uri: str | None,
    server_url: str | None,
    token: str | None,
) -> None:
    """Score the past traces of EXPERIMENT_ID started in [--start, --end) with scorer NAME."""
    start_ms, end_ms = _millis(start), _millis(end)
    with _scorers_target(store_uri, server_url, token) as api:
        out = backfill_scorer(
            experiment_id, name, start_ms=start_ms, end_ms=end_ms, dry_run=dry_run, target=api
        )
    _echo_change({"experiment_id": experiment_id, "name": name, **out})


# -- tokens ------------------------------------------------------------------------------------


@cli.group(cls=_Group)
def tokens() -> None:
    """Create, list and revoke API tokens (directly in the store: this is how the first admin
    token is made)."""


@contextlib.contextmanager
def _token_store(store_uri: str | None) -> Iterator[TokenStore]:
    from assay.config import load_settings
    from assay.db.engine import create_engine
    from assay.db.migrate import is_current, upgrade
    from assay.stores import Stores

    settings = load_settings(store_uri=store_uri)
    engine = create_engine(settings.store_uri)
    try:
        if settings.auto_migrate:
            upgrade(engine)
        elif not is_current(engine):
            raise MigrationError("the store schema is not current: run `assay db upgrade`")
        yield Stores.open(engine, settings).tokens
    finally:
        engine.dispose()


def _when(ms: int | None) -> str:
    when = ms_to_datetime(ms)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z") if when else ""


@tokens.command("create")
@click.option("--role", required=True, type=click.Choice(["admin", "user"]))
@click.option("--subject", required=True, help="Who the token is for; owns the jobs it submits.")
@click.option("--expires", help="Lifetime, e.g. 30d or 12h (default: until revoked).")
@store_option
def tokens_create(role: str, subject: str, expires: str | None, store_uri: str | None) -> None:
    """Create a token and print it once (only its hash is stored)."""
    expires_in_s = parse_duration(expires) if expires else None
    role_name: TokenRole = "admin" if role == "admin" else "user"
    with _token_store(store_uri) as store:
        row, plaintext = store.create(subject, role_name, expires_in_s=expires_in_s)
    until = f", expires {_when(row.expires_at_ms)}" if row.expires_at_ms else ""
    click.echo(
        f"token {row.id} for {row.subject} ({row.role}{until}); "
        "it is shown only once, store it now",
        err=True,
    )
    click.echo(plaintext)


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_option
def tokens_list(as_json: bool, store_uri: str | None) -> None:
    """List tokens (never the tokens themselves)."""
    with _token_store(store_uri) as store:
        rows = store.list_tokens()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    cells = [("id", "subject", "role", "created", "expires", "revoked")]
    for r in rows:
        times = (_when(r.created_at_ms), _when(r.expires_at_ms), _when(r.revoked_at_ms))
        cells.append((r.id, r.subject, r.role, *times))
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@tokens.command("revoke")
@click.argument("token_id")
@store_option
def tokens_revoke(token_id: str, store_uri: str | None) -> None:
    """Revoke a token; every server refuses it from its next request."""
    with _token_store(store_uri) as store:
        row = store.revoke(token_id)
    click.echo(f"revoked {row.id} ({row.subject})")


# -- db ----------------------------------------------------------------------------------------


@cli.group(cls=_Group)
def db() -> None:
    """Manage the store's schema."""


@db.command("upgrade")
@store_option
def db_upgrade(store_uri: str | None) -> None:
    """Apply pending migrations."""
    from assay.config import load_settings
    from assay.db.engine import create_engine
    from assay.db.migrate import current_revision, upgrade

    settings = load_settings(store_uri=store_uri)
    engine = create_engine(settings.store_uri)
    try:
        upgrade(engine)
        click.echo(f"store at revision {current_revision(engine)}")
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    entry: Callable[..., Any] = cli
    entry(args=argv, prog_name="assay")
