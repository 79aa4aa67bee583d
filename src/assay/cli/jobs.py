"""``assay jobs …``: submit, list, show, cancel and prune jobs, in a store or on a server."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from assay.jobs.api import JobsAPI, find_job
from assay.jobs.model import Job, JobStatus
from assay.jobs.model import Progress as JobProgress

if TYPE_CHECKING:
    pass
from assay.cli.base import (
    _Group,
    _open_jobs,
    _parse_param,
    _settings,
    cli,
    modules_option,
    parse_duration,
    server_option,
    store_option,
    token_option,
)

# -- jobs --------------------------------------------------------------------------------------


@cli.group(cls=_Group)
def jobs() -> None:
    """Submit, inspect, cancel and prune jobs (in a store, or on a server with --server)."""


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
