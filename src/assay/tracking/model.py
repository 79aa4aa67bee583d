"""What experiments and runs are, as typed values. Times are epoch milliseconds (UTC)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Experiment",
    "ExperimentPage",
    "Metric",
    "MetricPage",
    "Run",
    "RunInput",
    "RunPage",
    "RunStatus",
]


class RunStatus(enum.StrEnum):
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"

    @property
    def is_terminal(self) -> bool:
        return self is not RunStatus.RUNNING


@dataclass(frozen=True)
class Experiment:
    id: str
    name: str
    created_at_ms: int
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """One logged value of a metric. ``timestamp_ms`` None (when logging): the database clock."""

    key: str
    value: float
    step: int = 0
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class RunInput:
    """A dataset a run read: its name, a digest of its content, and where it came from."""

    name: str
    digest: str
    source: str | None = None


@dataclass(frozen=True)
class Run:
    """A run with its params, tags, inputs and the latest value of each metric.

    The latest value of a metric is the one with the highest step, then the latest timestamp,
    then the one logged last; :meth:`TrackingStore.metric_history` has every value.
    """

    id: str
    experiment_id: str
    name: str | None
    status: RunStatus
    start_time_ms: int
    end_time_ms: int | None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Metric] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    inputs: list[RunInput] = field(default_factory=list)


@dataclass(frozen=True)
class ExperimentPage:
    experiments: list[Experiment]
    next_page_token: str | None


@dataclass(frozen=True)
class RunPage:
    runs: list[Run]
    next_page_token: str | None


@dataclass(frozen=True)
class MetricPage:
    metrics: list[Metric]
    next_page_token: str | None
