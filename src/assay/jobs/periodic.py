"""The ``@periodic`` decorator: jobs the leader submits on a schedule.

A schedule fires on a grid of slots: ``every=`` slots are the multiples of the period since the
Unix epoch (``every="15m"`` fires at :00, :15, :30, :45), ``cron=`` slots are those of a
five-field cron expression, in UTC. The leader's :class:`~assay.jobs.services.Scheduler` submits
the job once per slot, from the database clock; see its docstring for the guarantees.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from croniter import CroniterError, croniter

from assay.errors import ConfigError, InvalidRequestError
from assay.jobs.registry import REGISTRY, JobSpec, Registry, job

__all__ = ["MIN_EVERY_S", "Schedule", "parse_cron", "parse_every", "periodic"]

F = TypeVar("F", bound=Callable[..., Any])

MIN_EVERY_S = 1.0
"""The shortest period ``every=`` accepts."""
MAX_NAME = 180
"""Schedule names are at most this long (the lock key adds a prefix)."""

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_EVERY = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


@dataclass(frozen=True)
class Schedule:
    """One registered schedule: which job, with which params, on which slots."""

    name: str
    job_name: str
    params: dict[str, Any] = field(hash=False)
    every_ms: int | None = None
    cron: str | None = None
    source: str = field(default="", compare=False)
    """Where it was declared (module.qualname), for error messages."""

    @property
    def lock_key(self) -> str:
        """The key a fired job holds (unless its job is exclusive, which then decides)."""
        return f"schedule:{self.name}"

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron!r}"
        assert self.every_ms is not None
        return f"every {_format_ms(self.every_ms)}"

    def next_after(self, now_ms: int) -> int:
        """The first slot strictly after ``now_ms`` (epoch milliseconds)."""
        if self.every_ms is not None:
            return (now_ms // self.every_ms + 1) * self.every_ms
        assert self.cron is not None
        start = datetime.fromtimestamp(now_ms / 1000, UTC)
        following: datetime = croniter(self.cron, start).get_next(datetime)
        return int(following.timestamp() * 1000)


def parse_every(every: str | float | timedelta) -> int:
    """A period in milliseconds from ``"10s"``, ``"15m"``, ``"1h30m"``, a timedelta or seconds."""
    if isinstance(every, timedelta):
        millis = round(every.total_seconds() * 1000)
    elif isinstance(every, bool):
        raise InvalidRequestError(f"every must be a duration, not {every!r}")
    elif isinstance(every, int | float):
        millis = round(every * 1000)
    elif isinstance(every, str):
        text = every.strip().lower().replace(" ", "")
        parts = _EVERY.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise InvalidRequestError(
                f"every={every!r} is not a duration: use e.g. '30s', '15m', '1h30m', '1d' "
                "(units ms, s, m, h, d), a timedelta or a number of seconds"
            )
        millis = round(sum(float(n) * _UNITS_MS[u] for n, u in parts))
    else:
        raise InvalidRequestError(f"every must be a duration, not {type(every).__name__}")
    if millis < MIN_EVERY_S * 1000:
        raise InvalidRequestError(f"every={every!r} is shorter than {MIN_EVERY_S:g}s")
    return millis


def parse_cron(expression: str) -> str:
    """Check a five-field cron expression (or an alias like ``@hourly``); return it tidied."""
    if not isinstance(expression, str):
        raise InvalidRequestError(f"cron must be a string, not {type(expression).__name__}")
    text = " ".join(expression.split())
    if not text.startswith("@") and len(text.split(" ")) != 5:
        raise InvalidRequestError(
            f"cron={expression!r} must have five fields: minute hour day-of-month month "
            "day-of-week (e.g. '*/5 * * * *')"
        )
    try:
        croniter(text, datetime.now(UTC)).get_next(datetime)
    except CroniterError as exc:
        raise InvalidRequestError(f"cron={expression!r} is not a valid expression: {exc}") from exc
    return text


def periodic(
    every: str | float | timedelta | None = None,
    *,
    cron: str | None = None,
    params: Mapping[str, Any] | None = None,
    name: str | None = None,
    registry: Registry | None = None,
) -> Callable[[F], F]:
    """Submit a job on a schedule: ``every="10s"`` (or a timedelta, or seconds) or
    ``cron="*/5 * * * *"`` (UTC), with fixed ``params``.

    Put it above ``@job(...)``; on a plain function it registers the function as a job with the
    default options first. ``name`` (default: the job's name) tells schedules of one job apart.
    Every mistake is a :class:`ConfigError` here, at decoration time.
    """

    def decorate(func: F) -> F:
        spec = getattr(func, "__assay_job__", None)
        if not isinstance(spec, JobSpec):
            func = job(registry=registry)(func)
            spec = func.__assay_job__  # type: ignore[attr-defined]
        assert isinstance(spec, JobSpec)
        schedule = _make_schedule(spec, every=every, cron=cron, params=params, name=name)
        (registry or REGISTRY).register_schedule(schedule)
        return func

    return decorate


def _make_schedule(
    spec: JobSpec,
    *,
    every: str | float | timedelta | None,
    cron: str | None,
    params: Mapping[str, Any] | None,
    name: str | None,
) -> Schedule:
    schedule_name = spec.name if name is None else name
    where = f"@periodic {schedule_name!r}"
    if not isinstance(schedule_name, str) or not 1 <= len(schedule_name) <= MAX_NAME:
        raise ConfigError(f"{where}: name must be 1 to {MAX_NAME} characters")
    if schedule_name != schedule_name.strip():
        raise ConfigError(f"{where}: name must not start or end with whitespace")
    if (every is None) == (cron is None):
        raise ConfigError(f"{where}: give exactly one of every= or cron=")
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"{where}: params must be a mapping, not {type(params).__name__}")
    try:
        every_ms = parse_every(every) if every is not None else None
        cron_text = parse_cron(cron) if cron is not None else None
        bound = spec.bind(dict(params or {}))
    except InvalidRequestError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return Schedule(
        name=schedule_name,
        job_name=spec.name,
        params=bound,
        every_ms=every_ms,
        cron=cron_text,
        source=f"{getattr(spec.fn, '__module__', '?')}.{getattr(spec.fn, '__qualname__', '?')}",
    )


def _format_ms(millis: int) -> str:
    for unit in ("d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"
