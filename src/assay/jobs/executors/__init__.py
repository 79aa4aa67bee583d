"""Executors run claimed jobs; see :mod:`assay.jobs.executors.base` for the seam."""

from __future__ import annotations

import difflib

from assay.config import Settings
from assay.errors import ConfigError
from assay.jobs.executors.base import (
    Cancelled,
    Completed,
    Executor,
    Failed,
    Outcome,
    Retry,
    TimedOut,
)
from assay.jobs.executors.inline import InlineExecutor
from assay.jobs.executors.process import ProcessExecutor
from assay.jobs.executors.sandbox import SandboxExecutor

__all__ = [
    "Cancelled",
    "Completed",
    "Executor",
    "Failed",
    "InlineExecutor",
    "Outcome",
    "ProcessExecutor",
    "Retry",
    "SandboxExecutor",
    "TimedOut",
    "available_executors",
    "create_executor",
]

_BUILTIN: dict[str, type[Executor]] = {
    InlineExecutor.name: InlineExecutor,
    ProcessExecutor.name: ProcessExecutor,
    SandboxExecutor.name: SandboxExecutor,
}


def available_executors() -> list[str]:
    return sorted(_BUILTIN)


def create_executor(name: str, settings: Settings, *, slots: int) -> Executor:
    """Build the executor registered under ``name``; a clear error for an unknown name."""
    cls = _BUILTIN.get(name)
    if cls is None:
        hint = difflib.get_close_matches(name, list(_BUILTIN), n=1)
        suffix = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(
            f"unknown executor {name!r}{suffix} (available: {', '.join(available_executors())})"
        )
    return cls(settings, slots=slots)
