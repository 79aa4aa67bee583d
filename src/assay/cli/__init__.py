"""The ``assay`` command.

Exit codes: 0 success, 1 a job that did not succeed (``--wait``) or a store failure, 2 usage
errors (unknown job, bad params, bad options). Errors print one line, never a traceback.

The commands that talk to a server (``assay jobs|scorers … --server URL``) work on the
client-only install: the store, the server and their packages are imported only by the
commands that use them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from assay.cli import admin, jobs, run, scorers  # noqa: F401  (they register their commands)
from assay.cli.base import cli, parse_duration

__all__ = ["cli", "main", "parse_duration"]


def main(argv: list[str] | None = None) -> None:
    entry: Callable[..., Any] = cli
    entry(args=argv, prog_name="assay")
