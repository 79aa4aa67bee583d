"""The executor seam: run one claimed job, return one outcome from a closed set.

The worker owns every state change; an executor only runs code and reports what happened.
Cancellation and timeouts reach the executor through :class:`JobContext` (its cancel flag):
an executor that can stop code by force (a process) does so when the flag is set.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import signal
import traceback
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from assay.config import Settings
from assay.jobs.context import JobContext
from assay.jobs.registry import JobSpec

__all__ = [
    "Cancelled",
    "Completed",
    "Executor",
    "Failed",
    "Outcome",
    "Retry",
    "TimedOut",
    "call_job",
    "describe_exit",
    "environ_swapped",
    "kill_group",
    "outcome_of",
    "stopped",
]


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


def call_job(
    fn: Any, ctx: JobContext, retry_on: tuple[type[BaseException], ...]
) -> tuple[str, str]:
    """Run ``fn(**ctx.job.params)`` with ``ctx`` as ``current_job()``, where the outcome has to
    cross a process boundary: ``("ok", result JSON)``, or ``("retry" | "fail", traceback)``;
    exceptions in ``retry_on`` are transient. :func:`outcome_of` turns it back into an Outcome."""
    token = ctx.activate()
    try:
        result = fn(**ctx.job.params)
    except Exception as exc:
        return ("retry" if isinstance(exc, retry_on) else "fail"), traceback.format_exc()
    except BaseException:  # SystemExit, KeyboardInterrupt raised by the job itself
        return "fail", traceback.format_exc()
    finally:
        ctx.deactivate(token)
    try:
        return "ok", json.dumps(result)
    except (TypeError, ValueError) as exc:
        return "fail", f"the result of job {ctx.job.name!r} is not JSON-serialisable: {exc}"


def outcome_of(status: str, payload: str) -> Outcome:
    """The Outcome of a :func:`call_job` result."""
    if status == "ok":
        return Completed(json.loads(payload))
    if status == "retry":
        return Retry(payload)
    return Failed(payload)


def stopped(ctx: JobContext) -> Outcome:
    """The outcome of a job the worker told to stop: TimedOut past its deadline, else
    Cancelled."""
    reason = ctx.cancel_reason or "cancelled"
    return TimedOut(reason) if ctx.timed_out else Cancelled(reason)


@contextlib.contextmanager
def environ_swapped(values: Mapping[str, str], keys: Collection[str]) -> Iterator[None]:
    """Set the process environment's ``keys`` to ``values`` (a key absent from ``values`` is
    unset) for the duration, then put them back: a process that runs one job at a time (a
    pool process, a Ray worker) gives each job its API variables, also for the programs the
    job starts."""
    saved = {key: os.environ.pop(key, None) for key in keys}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (a child started in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def describe_exit(code: int | None) -> str:
    """'exit status 3', 'killed by SIGSEGV' — from a returncode / exitcode."""
    if code is None or code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


class Executor(abc.ABC):
    """Runs jobs. ``run`` is called from one of the worker's job threads, once per execution,
    possibly for several jobs at the same time."""

    name: ClassVar[str]
    options: ClassVar[Mapping[str, Any]] = {}
    """The options this executor accepts, with their defaults. Values come from
    ``ASSAY_EXECUTOR_OPTIONS`` (``{"ray": {"address": "auto"}}``); unknown keys are rejected."""
    settings_options: ClassVar[Mapping[str, str]] = {}
    """Options set by a top-level setting instead (option name -> :class:`Settings` field): the
    built-in executors' historical keys (``ASSAY_SANDBOX_WALL_S``, ...). They reach the
    executor in :attr:`config` like any option, so every executor reads its options one way."""

    def __init__(
        self, settings: Settings, *, slots: int, options: Mapping[str, Any] | None = None
    ) -> None:
        """``slots``: how many jobs the worker may run on this executor at the same time;
        ``options``: validated values for :attr:`options` (defaults filled in). :attr:`config`
        has them and the :attr:`settings_options`."""
        self.settings = settings
        self.slots = slots
        from_settings = {
            key: getattr(settings, field) for key, field in self.settings_options.items()
        }
        self.config: dict[str, Any] = {**self.options, **(options or {}), **from_settings}

    def start(self) -> None:  # noqa: B027 - optional hook
        """Called once before the first job (e.g. to start a process pool)."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Called once when the worker stops."""

    @abc.abstractmethod
    def run(self, spec: JobSpec, ctx: JobContext) -> Outcome:
        """Run ``spec.fn(**ctx.job.params)`` and report the outcome. Never raises."""
