"""``/api/v1/experiments`` and ``/api/v1/runs``: experiment tracking (docs/contract.md, REST).

Times are epoch milliseconds. Over-limit ``log-batch`` and ``inputs`` requests are a 400 that
names the limit (:mod:`assay.tracking.limits`); malformed bodies are a 422.

When auth is on, every call needs a token. API tokens (admin or user) may use all of tracking;
a job token only the experiments its job is scoped to (``token_scopes=["experiment_id"]``), and
it may not create or list experiments.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from assay.server.auth import Caller, Principal, require_api_token, require_scope
from assay.server.deps import tracking_store
from assay.server.schemas.errors import ErrorOut
from assay.server.schemas.tracking import (
    ExperimentCreate,
    ExperimentOut,
    ExperimentPageOut,
    LogBatch,
    LogInputs,
    MetricOut,
    MetricPageOut,
    RunCreate,
    RunOut,
    RunPageOut,
    RunUpdate,
)
from assay.tracking import limits
from assay.tracking.model import Metric, RunInput
from assay.tracking.store import MAX_PAGE, TrackingStore

__all__ = ["router"]

# -- routes -----------------------------------------------------------------------------------

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 422)
}
router = APIRouter(prefix="/api/v1", tags=["tracking"], responses=_ERRORS)
_CONFLICT: dict[int | str, dict[str, object]] = {409: {"model": ErrorOut}}
MaxResults = Annotated[int, Query(ge=1, le=MAX_PAGE)]
PageToken = Annotated[str | None, Query(max_length=1000)]


def _check_run(caller: Principal, store: TrackingStore, run_id: str) -> None:
    """A job token may act on runs of its scoped experiments only (checked before writing)."""
    if caller.is_job:
        require_scope(caller, "experiment_id", store.run_experiment_id(run_id))


@router.post("/experiments", status_code=201, response_model=ExperimentOut, responses=_CONFLICT)
def create_experiment(body: ExperimentCreate, request: Request, caller: Caller) -> ExperimentOut:
    """A new experiment; 409 if one of that name exists."""
    require_api_token(caller, "create experiments")
    return ExperimentOut.of(tracking_store(request).create_experiment(body.name, body.tags))


@router.get("/experiments", response_model=ExperimentPageOut)
def list_experiments(
    request: Request,
    caller: Caller,
    name: Annotated[str | None, Query(description="Only the experiment of this name.")] = None,
    max_results: MaxResults = 100,
    page_token: PageToken = None,
) -> ExperimentPageOut:
    """Experiments, newest first."""
    require_api_token(caller, "list experiments")
    page = tracking_store(request).list_experiments(
        limit=max_results, page_token=page_token, name=name
    )
    return ExperimentPageOut(
        experiments=[ExperimentOut.of(e) for e in page.experiments],
        next_page_token=page.next_page_token,
    )


@router.get("/experiments/{experiment_id}", response_model=ExperimentOut)
def get_experiment(experiment_id: str, request: Request, caller: Caller) -> ExperimentOut:
    require_scope(caller, "experiment_id", experiment_id)
    return ExperimentOut.of(tracking_store(request).get_experiment(experiment_id))


@router.post("/runs", status_code=201, response_model=RunOut)
def create_run(body: RunCreate, request: Request, caller: Caller) -> RunOut:
    """A new RUNNING run in an experiment."""
    require_scope(caller, "experiment_id", body.experiment_id)
    run = tracking_store(request).create_run(
        body.experiment_id, name=body.name, start_time=body.start_time, tags=body.tags
    )
    return RunOut.of(run)


@router.get("/runs", response_model=RunPageOut)
def list_runs(
    request: Request,
    caller: Caller,
    experiment_id: Annotated[str, Query(max_length=36)],
    max_results: MaxResults = 100,
    page_token: PageToken = None,
) -> RunPageOut:
    """The runs of one experiment, latest start first."""
    require_scope(caller, "experiment_id", experiment_id)
    page = tracking_store(request).list_runs(
        experiment_id, limit=max_results, page_token=page_token
    )
    return RunPageOut(runs=[RunOut.of(r) for r in page.runs], next_page_token=page.next_page_token)


@router.get("/runs/{run_id}", response_model=RunOut)
def get_run(run_id: str, request: Request, caller: Caller) -> RunOut:
    run = tracking_store(request).get_run(run_id)
    require_scope(caller, "experiment_id", run.experiment_id)
    return RunOut.of(run)


@router.patch("/runs/{run_id}", response_model=RunOut)
def update_run(run_id: str, body: RunUpdate, request: Request, caller: Caller) -> RunOut:
    """Set the status and/or end time; ending a run without an end time stamps it now."""
    store = tracking_store(request)
    _check_run(caller, store, run_id)
    return RunOut.of(store.update_run(run_id, status=body.status, end_time=body.end_time))


@router.post("/runs/{run_id}/log-batch", status_code=204, responses=_CONFLICT)
def log_batch(run_id: str, body: LogBatch, request: Request, caller: Caller) -> Response:
    """Store metrics, params and tags in one transaction; 409 if a param would change."""
    store = tracking_store(request)
    _check_run(caller, store, run_id)
    metrics = [Metric(m.key, m.value, m.step, m.timestamp) for m in body.metrics]
    store.log_batch(run_id, metrics=metrics, params=body.params, tags=body.tags)
    return Response(status_code=204)


@router.post("/runs/{run_id}/inputs", status_code=204)
def log_inputs(run_id: str, body: LogInputs, request: Request, caller: Caller) -> Response:
    """Record datasets the run read (the same name and digest again updates the source)."""
    store = tracking_store(request)
    _check_run(caller, store, run_id)
    store.log_inputs(run_id, [RunInput(i.name, i.digest, i.source) for i in body.inputs])
    return Response(status_code=204)


@router.get("/runs/{run_id}/metric-history", response_model=MetricPageOut)
def metric_history(
    run_id: str,
    request: Request,
    caller: Caller,
    key: Annotated[str, Query(max_length=limits.MAX_KEY_CHARS)],
    max_results: MaxResults = MAX_PAGE,
    page_token: PageToken = None,
) -> MetricPageOut:
    """Every logged value of one metric, by step."""
    store = tracking_store(request)
    _check_run(caller, store, run_id)
    page = store.metric_history(run_id, key, limit=max_results, page_token=page_token)
    return MetricPageOut(
        metrics=[MetricOut.of(m) for m in page.metrics], next_page_token=page.next_page_token
    )
