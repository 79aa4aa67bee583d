"""The ``assay`` command.

Exit codes: 0 success, 1 a job that did not succeed (``--wait``) or a store failure, 2 usage
errors (unknown job, bad params, bad options). Errors print one line, never a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from assay.config import Settings, load_settings
from assay.errors import AssayError, ConfigError, InvalidRequestError, NotFoundError
from assay.jobs.backend import Backend
from assay.jobs.model import Job, JobStatus

__all__ = ["main", "parse_duration"]

_USAGE_ERRORS = (InvalidRequestError, NotFoundError, ConfigError)
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
def worker(
    store_uri: str | None,
    job_modules: tuple[str, ...],
    concurrency: int | None,
    executor: str | None,
    log_level: str,
) -> None:
    """Run a worker until SIGTERM/SIGINT (a second signal stops at once)."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = _settings(
        store_uri, job_modules, worker_concurrency=concurrency, default_executor=executor
    )
    with Backend(settings) as backend:
        w = backend.worker()
        signals = {"count": 0}

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            signals["count"] += 1
            w.stop(now=signals["count"] > 1)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        click.echo(
            f"worker {w.id} on {settings.store_uri} running {', '.join(backend.registry.names)}",
            err=True,
        )
        w.run()


# -- jobs --------------------------------------------------------------------------------------


@cli.group(cls=_Group)
def jobs() -> None:
    """Submit, inspect, cancel and prune jobs."""


@jobs.command("submit")
@click.argument("name")
@click.option("-p", "--param", "params", multiple=True, help="key=value (value parsed as JSON).")
@click.option("--timeout", type=float, help="Seconds before the job is timed out.")
@click.option("--wait", is_flag=True, help="Wait for the job, showing progress.")
@store_option
@modules_option
def jobs_submit(
    name: str,
    params: tuple[str, ...],
    timeout: float | None,
    wait: bool,
    store_uri: str | None,
    job_modules: tuple[str, ...],
) -> None:
    """Submit job NAME."""
    values = dict(_parse_param(p) for p in params)
    with Backend(_settings(store_uri, job_modules)) as backend:
        job = backend.submit(name, values, timeout=timeout)
        if not wait:
            click.echo(job.id)
            return
        click.echo(f"submitted {job.id}", err=True)
        final = _wait_with_progress(backend, job)
        _print_job(final)
        sys.exit(0 if final.status == JobStatus.SUCCEEDED else 1)


def _wait_with_progress(backend: Backend, job: Job) -> Job:
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.fields[status]:<9}"),
        BarColumn(),
        TextColumn("{task.fields[counts]}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(job.name, total=None, status=job.status.value, counts="")

        def update(current: Job) -> None:
            p = current.progress
            counts = (
                ""
                if p is None
                else f"{p.completed:g}/{p.total:g}"
                if p.total
                else f"{p.completed:g}"
            )
            bar.update(
                task,
                status=current.status.value,
                completed=p.completed if p else 0,
                total=p.total if p and p.total else None,
                description=(p.message if p and p.message else current.name),
                counts=counts,
            )

        return backend.wait(job.id, poll_s=0.1, on_update=update)


@jobs.command("list")
@click.option("--name", multiple=True, help="Only jobs with this name (repeatable).")
@click.option("--status", multiple=True, help="Only jobs in this status (repeatable).")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--page-token", help="Token printed by the previous page.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_option
def jobs_list(
    name: tuple[str, ...],
    status: tuple[str, ...],
    limit: int,
    page_token: str | None,
    as_json: bool,
    store_uri: str | None,
) -> None:
    """List jobs, newest first."""
    with Backend(_settings(store_uri)) as backend:
        page = backend.search(name=name, status=status, limit=limit, page_token=page_token)
    if as_json:
        out = {"jobs": [j.to_dict() for j in page.jobs], "next_page_token": page.next_page_token}
        click.echo(json.dumps(out, indent=2))
        return
    table = Table("id", "name", "status", "attempt", "created", "progress")
    for j in page.jobs:
        progress = f"{j.progress.completed:g}/{j.progress.total or '?'}" if j.progress else ""
        table.add_row(
            j.id, j.name, j.status.value, str(j.attempt), j.created_at.isoformat(), progress
        )
    Console().print(table)
    if page.next_page_token:
        click.echo(f"next page: --page-token {page.next_page_token}")


@jobs.command("show")
@click.argument("job_id")
@store_option
def jobs_show(job_id: str, store_uri: str | None) -> None:
    """Show one job as JSON."""
    with Backend(_settings(store_uri)) as backend:
        _print_job(backend.get(job_id))


@jobs.command("cancel")
@click.argument("job_id")
@store_option
def jobs_cancel(job_id: str, store_uri: str | None) -> None:
    """Cancel a pending or running job."""
    with Backend(_settings(store_uri)) as backend:
        job = backend.cancel(job_id)
    click.echo(f"{job.id} {job.status.value}")


@jobs.command("prune")
@click.option(
    "--older-than", required=True, help="Delete jobs finished longer ago than this (e.g. 7d)."
)
@store_option
def jobs_prune(older_than: str, store_uri: str | None) -> None:
    """Delete finished jobs older than a duration."""
    seconds = parse_duration(older_than)
    with Backend(_settings(store_uri)) as backend:
        deleted = backend.prune(seconds)
    click.echo(f"deleted {deleted} jobs")


def _print_job(job: Job) -> None:
    click.echo(json.dumps(job.to_dict(), indent=2, default=str))


# -- db ----------------------------------------------------------------------------------------


@cli.group(cls=_Group)
def db() -> None:
    """Manage the store's schema."""


@db.command("upgrade")
@store_option
def db_upgrade(store_uri: str | None) -> None:
    """Apply pending migrations."""
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
