"""Executors run claimed jobs; see :mod:`assay.jobs.executors.base` for the seam."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

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
from assay.jobs.executors.venv import VenvExecutor
from assay.util import did_you_mean

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
    "VenvExecutor",
    "available_executors",
    "check_executor",
    "create_executor",
    "executor_class",
]

_BUILTIN: dict[str, type[Executor]] = {
    InlineExecutor.name: InlineExecutor,
    ProcessExecutor.name: ProcessExecutor,
    SandboxExecutor.name: SandboxExecutor,
    VenvExecutor.name: VenvExecutor,
}
ENTRY_POINT_GROUP = "assay.executors"


def _plugins() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_executors() -> list[str]:
    """Built-in executors and those installed packages advertise (``assay.executors``)."""
    return sorted({*_BUILTIN, *_plugins()})


def check_executor(name: str) -> None:
    """Raise ConfigError naming the choices (with a "did you mean") if ``name`` is unknown."""
    known = available_executors()
    if name not in known:
        raise ConfigError(
            f"unknown executor {name!r}{did_you_mean(name, known)} (available: {', '.join(known)})"
        )


def executor_class(name: str) -> type[Executor]:
    check_executor(name)
    if name in _BUILTIN:
        return _BUILTIN[name]
    ep = _plugins()[name]
    try:
        cls = ep.load()
    except Exception as exc:
        raise ConfigError(f"cannot load executor plugin {name!r} ({ep.value}): {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise ConfigError(f"executor plugin {name!r} ({ep.value}) is not an Executor subclass")
    return cls


def create_executor(name: str, settings: Settings, *, slots: int) -> Executor:
    """Build the executor ``name`` with its options from settings, rejecting unknown ones."""
    cls = executor_class(name)
    given = settings.executor_options.get(name, {})
    for key in given:
        if key not in cls.options:
            accepted = ", ".join(sorted(cls.options)) or "none"
            raise ConfigError(
                f"unknown option {key!r} for executor {name!r}"
                f"{did_you_mean(key, cls.options)} (accepted: {accepted})"
            )
    return cls(settings, slots=slots, options=given)
