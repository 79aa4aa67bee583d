"""MLflow's jobs API (``/ajax-api/3.0/jobs``) on assay's jobs: the same jobs as ``/api/v1/jobs``
under MLflow's field names.

=========  ==================================  =============================================
POST       ``/ajax-api/3.0/jobs/``             ``{job_name, params, timeout?}``: submit
GET        ``/ajax-api/3.0/jobs/{job_id}``     the job
PATCH      ``/ajax-api/3.0/jobs/cancel/{id}``  cancel it (a finished job comes back as it is)
POST       ``/ajax-api/3.0/jobs/search``       ``{job_name?, params?, statuses?}``: ``{jobs}``
=========  ==================================  =============================================

``job_name`` is the name of an assay ``@job``. A job reads ``{job_id, creation_time,
job_name, params, timeout, status, result, error_message, retry_count, last_update_time,
creator, status_message, progress}`` (times in epoch ms); the statuses are assay's, which
are MLflow's (PENDING, RUNNING, SUCCEEDED, FAILED, TIMEOUT, CANCELED; assay has no
NEEDS_RECOVERY: a job whose worker died is re-run after its lease expires). Search, as in
MLflow, returns every match, oldest first; ``params`` matches jobs whose params hold those
keys with those values. Errors are MLflow's shape plus FastAPI's ``detail``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from assay.errors import InvalidRequestError, NotFoundError
from assay.jobs.backend import Backend
from assay.jobs.model import Job, JobStatus
from assay.server.auth import Caller, check_job, check_submit, require_api_token, search_owner
from assay.server.errors import MlflowJobsRoute
from assay.server.schemas.mlflow import SearchJobsBody, SubmitJobBody, job_json

__all__ = ["router"]

router = APIRouter(
    prefix="/ajax-api/3.0/jobs",
    route_class=MlflowJobsRoute,
    include_in_schema=False,
    tags=["mlflow"],
)

_PAGE = 1000


def _backend(request: Request) -> Backend:
    backend: Backend = request.app.state.runtime.backend
    return backend


@router.post("")
@router.post("/")
def submit_job(body: SubmitJobBody, request: Request, caller: Caller) -> dict[str, Any]:
    backend = _backend(request)
    check_submit(caller, backend.registry, body.job_name)
    job = backend.submit(body.job_name, body.params, timeout=body.timeout, owner=caller.subject)
    return job_json(job)


@router.post("/search")
def search_jobs(body: SearchJobsBody, request: Request, caller: Caller) -> dict[str, Any]:
    owner = search_owner(caller, None)
    statuses: list[JobStatus] = []
    for name in body.statuses or []:
        if name.upper() == "NEEDS_RECOVERY":
            continue  # assay has no such status: it matches no job
        try:
            statuses.append(JobStatus(name.upper()))
        except ValueError:
            known = ", ".join([*(s.value for s in JobStatus), "NEEDS_RECOVERY"])
            raise InvalidRequestError(
                f"unknown job status {name!r} (expected one of {known})"
            ) from None
    if body.statuses and not statuses:
        return {"jobs": []}
    wanted = body.params or {}
    found: list[Job] = []
    token = None
    while True:
        page = _backend(request).search(
            name=body.job_name, status=statuses, owner=owner, limit=_PAGE, page_token=token
        )
        found += [
            job
            for job in page.jobs
            if all(key in job.params and job.params[key] == v for key, v in wanted.items())
        ]
        token = page.next_page_token
        if token is None:
            break
    return {"jobs": [job_json(job) for job in reversed(found)]}


def _check_id(job_id: str) -> None:
    """An id with a NUL byte names no job (PostgreSQL cannot even compare it)."""
    if "\x00" in job_id:
        raise NotFoundError(f"job {job_id!r} not found")


@router.get("/{job_id}")
def get_job(job_id: str, request: Request, caller: Caller) -> dict[str, Any]:
    _check_id(job_id)
    check_job(caller, job_id)
    job = _backend(request).get(job_id)
    check_job(caller, job_id, job)
    return job_json(job)


@router.patch("/cancel/{job_id}")
def cancel_job(job_id: str, request: Request, caller: Caller) -> dict[str, Any]:
    _check_id(job_id)
    require_api_token(caller, "cancel jobs")
    backend = _backend(request)
    check_job(caller, job_id, backend.get(job_id))
    return job_json(backend.cancel(job_id))
