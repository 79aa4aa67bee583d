"""``assay tokens …``, ``assay db …`` and ``assay traces prune``: API tokens, the store's
schema and trace retention."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from assay.errors import (
    MigrationError,
)
from assay.jobs.model import ms_to_datetime

if TYPE_CHECKING:
    from assay.server.tokens import TokenRole
    from assay.stores import Stores
from assay.cli.base import _Group, cli, parse_duration, store_option

# -- tokens ------------------------------------------------------------------------------------


@cli.group(cls=_Group)
def tokens() -> None:
    """Create, list and revoke API tokens (directly in the store: this is how the first admin
    token is made)."""


@contextlib.contextmanager
def _stores(store_uri: str | None) -> Iterator[Stores]:
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
        yield Stores.open(engine, settings)
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
    with _stores(store_uri) as stores:
        store = stores.tokens
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
    with _stores(store_uri) as stores:
        store = stores.tokens
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
    with _stores(store_uri) as stores:
        store = stores.tokens
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


# -- traces ------------------------------------------------------------------------------------


@cli.group(cls=_Group)
def traces() -> None:
    """Trace retention (the server prunes on its own with ASSAY_TRACE_RETENTION_S)."""


@traces.command("prune")
@click.option(
    "--older-than",
    required=True,
    help="Delete traces that started longer ago than this (e.g. 30d).",
)
@store_option
def traces_prune(older_than: str, store_uri: str | None) -> None:
    """Delete old traces with their spans, assessments and scoring-ledger rows."""
    seconds = parse_duration(older_than)
    with _stores(store_uri) as stores:
        deleted = stores.traces.traces_prune(seconds)
    click.echo(f"deleted {deleted} traces")
