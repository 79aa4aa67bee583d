"""What a job is: its status, its stored row as a typed value, and its progress."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["TERMINAL_STATUSES", "Job", "JobPage", "JobStatus", "Progress", "ms_to_datetime"]


class JobStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELED}
)


@dataclass(frozen=True)
class Progress:
    completed: float
    total: float | None = None
    message: str | None = None


def ms_to_datetime(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True)
class Attempt:
    """One ended execution of a job. ``status`` is the status the job ended with, or RETRIED
    (failed, re-queued for another attempt), LOST (its worker's lease expired) or HANDED_BACK
    (its worker shut down first)."""

    attempt: int
    worker_id: str | None
    status: str
    error: str | None
    started_at: datetime | None
    finished_at: datetime

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("started_at", "finished_at"):
            value = data[key]
            data[key] = value.isoformat().replace("+00:00", "Z") if value else None
        return data


@dataclass(frozen=True)
class Job:
    """A job as stored. Times are UTC; ``timeout`` is in seconds."""

    id: str
    name: str
    params: dict[str, Any]
    status: JobStatus
    result: Any
    error: str | None
    attempt: int
    max_retries: int
    timeout: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    progress: Progress | None
    log_tail: str | None = None
    lock_key: str | None = None
    owner: str | None = None
    """Who submitted it (the API token's subject); None for the system and direct callers."""

    def to_dict(self) -> dict[str, Any]:
        """The public JSON shape of a job (docs/contract.md), times as ISO-8601 UTC."""
        data = asdict(self)
        data.pop("lock_key")
        data["status"] = str(self.status)
        for key in ("created_at", "started_at", "finished_at"):
            value = data[key]
            data[key] = value.isoformat().replace("+00:00", "Z") if value else None
        return data


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_page_token: str | None
