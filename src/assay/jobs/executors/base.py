"""The executor seam: run one claimed job, return one outcome from a closed set.

The worker owns every state change; an executor only runs code and reports what happened.
Cancellation and timeouts reach the executor through :class:`JobContext` (its cancel flag):
an executor that can stop code by force (a process) does so when the flag is set.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from assay.config import Settings
from assay.jobs.context import JobContext
from assay.jobs.registry import JobSpec

__all__ = ["Cancelled", "Completed", "Executor", "Failed", "Outcome", "Retry", "TimedOut"]


@dataclass(frozen=True)
class Completed:
    result: Any


@dataclass(frozen=True)
class Failed:
    error: str


@dataclass(frozen=True)
class Retry:
    """A transient error (an exception listed in ``retry_on``); the worker decides whether
    attempts remain."""

    error: str


@dataclass(frozen=True)
class Cancelled:
    reason: str


@dataclass(frozen=True)
class TimedOut:
    reason: str


Outcome = Completed | Failed | Retry | Cancelled | TimedOut


class Executor(abc.ABC):
    """Runs jobs. ``run`` is called from one of the worker's job threads, once per execution,
    possibly for several jobs at the same time."""

    name: ClassVar[str]
    options: ClassVar[Mapping[str, Any]] = {}
    """The options this executor accepts, with their defaults. Values come from
    ``ASSAY_EXECUTOR_OPTIONS`` (``{"ray": {"address": "auto"}}``); unknown keys are rejected."""

    def __init__(
        self, settings: Settings, *, slots: int, options: Mapping[str, Any] | None = None
    ) -> None:
        """``slots``: how many jobs the worker may run on this executor at the same time;
        ``options``: validated values for :attr:`options` (defaults filled in)."""
        self.settings = settings
        self.slots = slots
        self.config: dict[str, Any] = {**self.options, **(options or {})}

    def start(self) -> None:  # noqa: B027 - optional hook
        """Called once before the first job (e.g. to start a process pool)."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Called once when the worker stops."""

    @abc.abstractmethod
    def run(self, spec: JobSpec, ctx: JobContext) -> Outcome:
        """Run ``spec.fn(**ctx.job.params)`` and report the outcome. Never raises."""
