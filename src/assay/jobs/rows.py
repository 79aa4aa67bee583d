"""The job store's row types (what its methods take and return) and the conversions between
them and the rows of the jobs tables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from assay.jobs.model import Job, JobStatus, Progress, ms_to_datetime

__all__ = [
    "CHUNK",
    "Finish",
    "Fired",
    "JobStats",
    "NewJob",
    "QueueStats",
    "RescueResult",
    "RunningState",
]

CHUNK = 500
"""Rows (or ids) per statement: bounds the parameters of one IN list or multi-row insert."""


@dataclass(frozen=True)
class NewJob:
    id: str
    name: str
    params: dict[str, Any]
    max_retries: int
    timeout_s: float
    lock_key: str | None = None
    on_conflict: str = "skip"
    """``skip``, ``queue`` or (scheduler only) :data:`COALESCE`."""
    owner: str | None = None


@dataclass(frozen=True)
class Finish:
    """The end of one execution (or a retry, when ``status`` is PENDING)."""

    job_id: str
    worker_id: str
    attempt: int
    status: JobStatus
    result: Any = None
    result_json: str | None = None
    """``result`` as JSON text, when the caller has encoded it already (the worker checks it)."""
    error: str | None = None
    retry_delay_s: float = 0.0
    release_lock: bool = True
    """False when the code may still be executing (an inline job past its deadline)."""
    log_tail: str | None = None
    progress: Progress | None = None
    """The last progress the execution reported; None leaves the stored one as it is."""


@dataclass(frozen=True)
class RunningState:
    status: JobStatus
    worker_id: str | None
    attempt: int


@dataclass(frozen=True)
class Fired:
    """What :meth:`JobStore.schedule_fire` did with one slot of a schedule."""

    claimed: bool
    """False: the slot was no longer due (another scheduler fired it); nothing was done."""
    job: Job | None = None
    """The job submitted; None when the slot was claimed but coalesced."""
    holder: str | None = None
    """When coalesced: the job holding the schedule's lock key."""


@dataclass(frozen=True)
class RescueResult:
    requeued: list[str]
    failed: list[str]
    names: dict[str, str]
    """Job names by id (of every job in ``requeued`` and ``failed``)."""


@dataclass(frozen=True)
class QueueStats:
    """The runnable PENDING jobs (run_at has passed) of one name."""

    depth: int
    oldest_age_s: float
    waiting_for_lock: int
    """Of them, queue-policy jobs whose lock key another job holds."""


@dataclass(frozen=True)
class JobStats:
    """What the metrics read from the database at scrape time."""

    counts: dict[tuple[str, JobStatus], int]
    """PENDING and RUNNING jobs by name and status (finished jobs are not counted)."""
    queues: dict[str, QueueStats]
    names: list[str]
    """Every job name in the table, finished jobs' too."""


def attempt_record(
    params: dict[str, Any], status: str, started: dict[str, int | None]
) -> dict[str, Any]:
    """The attempt record of one applied finish."""
    return {
        "job_id": params["b_id"],
        "worker_id": params["b_worker"],
        "attempt": params["b_attempt"],
        "status": status,
        "error": params["b_error"],
        "started_at_ms": started[params["b_id"]],
    }


def result_text(finish: Finish) -> str | None:
    if finish.result_json is not None:
        return finish.result_json
    return None if finish.result is None else json.dumps(finish.result)


def when(ms: int) -> datetime:
    when = ms_to_datetime(ms)
    assert when is not None
    return when


def storable(text: str | None) -> str | None:
    """Text from job code (errors, output) as every database stores it: PostgreSQL refuses NUL
    and no database takes a lone surrogate."""
    if text is None:
        return None
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def to_job(row: Any) -> Job:
    progress = json.loads(row.progress) if row.progress else None
    created = ms_to_datetime(row.created_at_ms)
    assert created is not None
    return Job(
        id=row.id,
        name=row.name,
        params=json.loads(row.params),
        status=JobStatus(row.status),
        result=None if row.result is None else json.loads(row.result),
        error=row.error,
        attempt=row.attempt,
        max_retries=row.max_retries,
        timeout=row.timeout_s,
        created_at=created,
        started_at=ms_to_datetime(row.started_at_ms),
        finished_at=ms_to_datetime(row.finished_at_ms),
        worker_id=row.worker_id,
        progress=Progress(**progress) if progress else None,
        log_tail=row.log_tail,
        lock_key=row.lock_key,
        owner=row.owner,
    )
