"""``/api/v1/jobs``: submit, get, search and cancel (docs/contract.md, REST)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from assay.errors import InvalidRequestError
from assay.jobs.backend import Backend
from assay.jobs.model import JobStatus
from assay.server.auth import (
    Caller,
    check_job,
    check_submit,
    require_api_token,
    search_owner,
)
from assay.server.schemas.errors import ErrorOut
from assay.server.schemas.jobs import (
    AttemptListOut,
    AttemptOut,
    JobBatchSubmit,
    JobListOut,
    JobOut,
    JobPageOut,
    JobSubmit,
)

__all__ = ["router"]


def _no_nul_bytes(request: Request) -> None:
    """Refuse NUL bytes in the path and query: no id or name holds one, and PostgreSQL cannot
    even compare text with one (it would be a 503 from the store instead of a 400)."""
    values = [*request.path_params.values(), *(v for _, v in request.query_params.multi_items())]
    if any("\x00" in str(v) for v in values):
        raise InvalidRequestError("request parameters must not contain NUL bytes")


router = APIRouter(
    prefix="/api/v1/jobs",
    tags=["jobs"],
    dependencies=[Depends(_no_nul_bytes)],
    responses={
        400: {"model": ErrorOut},
        401: {"model": ErrorOut},
        403: {"model": ErrorOut},
        422: {"model": ErrorOut},
    },
)


def _backend(request: Request) -> Backend:
    backend: Backend = request.app.state.runtime.backend
    return backend


@router.post("", status_code=201, response_model=JobOut)
def submit_job(body: JobSubmit, request: Request, caller: Caller) -> JobOut:
    backend = _backend(request)
    check_submit(caller, backend.registry, body.name)
    job = backend.submit(body.name, body.params, timeout=body.timeout, owner=caller.subject)
    return JobOut.model_validate(job)


@router.post(":batch", status_code=201, response_model=JobListOut)
def submit_jobs(body: JobBatchSubmit, request: Request, caller: Caller) -> JobListOut:
    """Queue many jobs of one name in one transaction: all are queued, or none."""
    backend = _backend(request)
    check_submit(caller, backend.registry, body.name)
    jobs = backend.submit_many(
        body.name, body.params_list, timeout=body.timeout, owner=caller.subject
    )
    return JobListOut(jobs=[JobOut.model_validate(j) for j in jobs])


@router.get("/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}})
def get_job(job_id: str, request: Request, caller: Caller) -> JobOut:
    check_job(caller, job_id)
    job = _backend(request).get(job_id)
    check_job(caller, job_id, job)
    return JobOut.model_validate(job)


@router.get(
    "/{job_id}/attempts", response_model=AttemptListOut, responses={404: {"model": ErrorOut}}
)
def get_job_attempts(job_id: str, request: Request, caller: Caller) -> AttemptListOut:
    """The job's ended executions, first to last (the running one is the job itself)."""
    check_job(caller, job_id)
    job = _backend(request).get(job_id)
    check_job(caller, job_id, job)
    attempts = _backend(request).attempts(job_id)
    return AttemptListOut(attempts=[AttemptOut(**a.to_dict()) for a in attempts])


@router.get("", response_model=JobPageOut)
def search_jobs(
    request: Request,
    caller: Caller,
    name: Annotated[list[str] | None, Query(description="Only these job names.")] = None,
    status: Annotated[list[JobStatus] | None, Query(description="Only these statuses.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    page_token: Annotated[str | None, Query(max_length=1000)] = None,
    owner: Annotated[
        str | None, Query(max_length=200, description="Only jobs of this owner (admins).")
    ] = None,
    id_prefix: Annotated[
        str | None,
        Query(
            max_length=36,
            description="Only jobs whose id starts with this (at least 4 hex digits).",
        ),
    ] = None,
    include_internal: Annotated[
        bool,
        Query(description="Also assay's own jobs (online scoring, named assay.…)."),
    ] = False,
) -> JobPageOut:
    page = _backend(request).search(
        name=name,
        status=status,
        owner=search_owner(caller, owner),
        limit=limit,
        page_token=page_token,
        id_prefix=id_prefix,
        include_internal=include_internal,
    )
    return JobPageOut(
        jobs=[JobOut.model_validate(j) for j in page.jobs], next_page_token=page.next_page_token
    )


@router.post("/{job_id}/cancel", response_model=JobOut, responses={404: {"model": ErrorOut}})
def cancel_job(job_id: str, request: Request, caller: Caller) -> JobOut:
    require_api_token(caller, "cancel jobs")
    backend = _backend(request)
    check_job(caller, job_id, backend.get(job_id))
    return JobOut.model_validate(backend.cancel(job_id))
