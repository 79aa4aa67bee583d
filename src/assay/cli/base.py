"""What every ``assay`` command shares: the root group, its error handling (one line, the
documented exit code), the common options and the settings they build."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import click

from assay.errors import (
    AssayError,
    ConfigError,
    InvalidRequestError,
    NotFoundError,
)
from assay.jobs.api import JobsAPI

if TYPE_CHECKING:
    from assay.config import Settings

__all__ = ["cli", "parse_duration"]

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
