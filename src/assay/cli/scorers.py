"""``assay scorers …``: register, pause, resume, remove and backfill online scorers."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import click
from rich.console import Console
from rich.table import Table

from assay.errors import (
    InvalidRequestError,
)
from assay.scoring.scorers import (
    Scorer,
    backfill_scorer,
    delete_scorer,
    list_scorers,
    set_scorer_status,
)

if TYPE_CHECKING:
    from assay.client import Client
    from assay.jobs.backend import Backend
from assay.cli.base import _Group, _open_jobs, cli, server_option, store_option, token_option

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
