"""``/api/v1/jobs``: a job to submit, and a job as answered (:mod:`assay.server.routes.jobs`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from assay.jobs.model import JobStatus
from assay.jobs.payload import dumps_plain

__all__ = [
    "AttemptListOut",
    "AttemptOut",
    "JobBatchSubmit",
    "JobListOut",
    "JobOut",
    "JobPageOut",
    "JobSubmit",
    "Params",
    "ProgressOut",
]


def _plain_json(value: dict[str, Any]) -> dict[str, Any]:
    dumps_plain(value, "params")
    return value


Params = Annotated[dict[str, Any], AfterValidator(_plain_json)]


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    params: Params = Field(default_factory=dict)
    timeout: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Seconds; default from the job."
    )


class JobBatchSubmit(BaseModel):
    """Many jobs of one name, queued in one transaction (all or none)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    params_list: list[Params] = Field(min_length=1)
    timeout: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Seconds; default from the job."
    )


class ProgressOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    completed: float
    total: float | None = None
    message: str | None = None


class AttemptOut(BaseModel):
    attempt: int
    worker_id: str | None
    status: str = Field(
        description="The status the job ended with, or RETRIED, LOST (its worker's lease "
        "expired) or HANDED_BACK (its worker shut down)."
    )
    error: str | None
    started_at: str | None
    finished_at: str


class AttemptListOut(BaseModel):
    attempts: list[AttemptOut]


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    params: dict[str, Any]
    status: JobStatus
    result: Any = None
    error: str | None = None
    attempt: int
    max_retries: int
    timeout: float
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: str | None = None
    progress: ProgressOut | None = None
    log_tail: str | None = None
    owner: str | None = None


class JobListOut(BaseModel):
    jobs: list[JobOut]


class JobPageOut(BaseModel):
    jobs: list[JobOut]
    next_page_token: str | None = None
