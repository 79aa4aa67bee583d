"""UI pages: the jobs list (with filters and a submit form), one job's page, and cancel.

Every page goes through the same backend and the same checks as ``/api/v1/jobs``
(:mod:`assay.server.routes.jobs`): a user lists, reads and cancels only its own jobs and
submits only public ones; a job another user owns is a 404 page, as it is a 404 in the API.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from assay.errors import AssayError, InvalidParamsError, InvalidRequestError, NotFoundError
from assay.jobs.backend import Backend
from assay.jobs.model import Job, JobStatus
from assay.server.auth import Principal, check_job, check_submit, require_api_token, search_owner
from assay.server.errors import status_for
from assay.server.ui.pages import UiCaller, is_fragment, render

__all__ = ["PAGE_SIZE", "router"]

PAGE_SIZE = 50
"""Jobs per page of the list."""

router = APIRouter(prefix="/ui/jobs")


def _backend(request: Request) -> Backend:
    backend: Backend = request.app.state.runtime.backend
    return backend


def _run_ms(job: Job) -> float | None:
    """How long the current attempt ran (so far, while it runs), in milliseconds."""
    if job.started_at is None:
        return None
    end = job.finished_at or datetime.now(UTC)
    return max(0.0, (end - job.started_at).total_seconds() * 1000)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _list_url(
    name: str, status: str, page_token: str | None = None, *, show_all: bool = False
) -> str:
    """The list's URL with its filters (empty ones left out), for refreshes and paging."""
    query = {
        "name": name,
        "status": status,
        "all": "1" if show_all else "",
        "page_token": page_token or "",
    }
    kept = {key: value for key, value in query.items() if value}
    return f"/ui/jobs?{urlencode(kept)}" if kept else "/ui/jobs"


def _submittable(caller: Principal, backend: Backend) -> list[str]:
    """The job names the caller may submit, by the same check the submit itself makes."""
    names = []
    for name in backend.registry.user_names:
        try:
            check_submit(caller, backend.registry, name)
        except AssayError:
            continue
        names.append(name)
    return names


def _list_page(
    request: Request,
    caller: Principal,
    *,
    name: str = "",
    status: str = "",
    page_token: str | None = None,
    show_all: bool = False,
    form: dict[str, str] | None = None,
    form_error: str | None = None,
    status_code: int = 200,
) -> Response:
    """The list (or only its live table, for a refresh), with the submit form."""
    backend = _backend(request)
    jobs: list[Job] = []
    next_url = None
    list_error = None
    try:
        page = backend.search(
            name=name or None,
            status=status or None,
            owner=search_owner(caller, None),
            limit=PAGE_SIZE,
            page_token=page_token,
            include_internal=show_all,
        )
        jobs = page.jobs
        if page.next_page_token:
            next_url = _list_url(name, status, page.next_page_token, show_all=show_all)
    except AssayError as exc:
        list_error = str(exc)
        status_code = max(status_code, status_for(exc))
    context: dict[str, Any] = {
        "jobs": jobs,
        "next_url": next_url,
        "list_error": list_error,
        "refresh_url": _list_url(name, status, page_token, show_all=show_all),
        "run_ms": _run_ms,
    }
    if is_fragment(request):
        return render(request, "jobs_table.html", status_code=status_code, **context)
    return render(
        request,
        "jobs.html",
        status_code=status_code,
        section="jobs",
        filters={"name": name, "status": status, "all": show_all},
        statuses=[s.value for s in JobStatus],
        submittable=_submittable(caller, backend),
        form=form or {"name": "", "params": "{}", "timeout": ""},
        form_error=form_error,
        **context,
    )


@router.get("", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    caller: UiCaller,
    name: str = "",
    status: str = "",
    page_token: str | None = None,
    show_all: Annotated[bool, Query(alias="all")] = False,
) -> Response:
    """The list; assay's own jobs (online scoring) only with ``?all=1``."""
    return _list_page(
        request,
        caller,
        name=name.strip(),
        status=status.strip(),
        page_token=page_token,
        show_all=show_all,
    )


def _parse_params(text: str) -> dict[str, Any]:
    """The params textarea as a JSON object (empty means no params)."""

    def refuse_constant(constant: str) -> None:
        raise InvalidParamsError(f"params must be plain JSON: {constant} is not a JSON number")

    if not text.strip():
        return {}
    try:
        params = json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidParamsError(f"params are not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise InvalidParamsError(
            f'params must be a JSON object such as {{"n": 3}}, not {type(params).__name__}'
        )
    return params


def _parse_timeout(text: str) -> float | None:
    """The optional timeout field, in seconds (the backend rejects non-positive ones)."""
    if not text.strip():
        return None
    try:
        timeout = float(text)
    except ValueError:
        raise InvalidRequestError(f"timeout must be a number of seconds, not {text!r}") from None
    if not math.isfinite(timeout):
        raise InvalidRequestError(f"timeout must be a finite number of seconds, not {text!r}")
    return timeout


@router.post("", response_class=HTMLResponse)
def submit_job(
    request: Request,
    caller: UiCaller,
    name: Annotated[str, Form()] = "",
    params: Annotated[str, Form()] = "{}",
    timeout: Annotated[str, Form()] = "",
) -> Response:
    """Submit, then go to the new job's page; bad input shows the form again with the error."""
    backend = _backend(request)
    try:
        check_submit(caller, backend.registry, name)
        job = backend.submit(
            name, _parse_params(params), timeout=_parse_timeout(timeout), owner=caller.subject
        )
    except AssayError as exc:
        form = {"name": name, "params": params, "timeout": timeout}
        return _list_page(
            request, caller, form=form, form_error=str(exc), status_code=status_for(exc)
        )
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)


def _visible_job(request: Request, caller: Principal, job_id: str) -> Job:
    """The job, if the caller may see it (NotFoundError otherwise, as in the API)."""
    if "\x00" in job_id:  # no id holds one, and PostgreSQL cannot even compare it
        raise NotFoundError(f"job {job_id!r} not found")
    check_job(caller, job_id)
    job = _backend(request).get(job_id)
    check_job(caller, job_id, job)
    return job


@router.get("/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, caller: UiCaller, job_id: str) -> Response:
    job = _visible_job(request, caller, job_id)
    context: dict[str, Any] = {
        "job": job,
        "attempts": _backend(request).attempts(job_id),
        "run_ms": _run_ms,
        "pretty": _pretty,
    }
    if is_fragment(request):
        return render(request, "job_live.html", **context)
    return render(request, "job.html", section="jobs", **context)


@router.post("/{job_id}/cancel")
def cancel_job(request: Request, caller: UiCaller, job_id: str) -> Response:
    """Cancel, then back to the job's page (a finished job is left as it is)."""
    require_api_token(caller, "cancel jobs")
    _visible_job(request, caller, job_id)
    _backend(request).cancel(job_id)
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)
