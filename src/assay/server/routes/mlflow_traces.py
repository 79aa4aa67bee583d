"""MLflow's trace routes (``/api/3.0/mlflow/traces``): what its tracing client calls to write
traces, read them back, search them and assess them, on assay's trace store.

Writing: with ``mlflow.set_tracking_uri(<assay server>)``, ``@mlflow.trace`` asks
``GET /version`` (3.4 or later: the native path), sends each trace's spans as OTLP to
``/v1/traces`` with ``x-mlflow-experiment-id``, then ``POST /traces`` (StartTraceV3) with the
trace's info. The spans carry everything assay stores (:mod:`assay.tracing.derive`), so that
route checks the experiment and answers the info back tagged ``mlflow.trace.spansLocation =
TRACKING_STORE``: the client then uploads no copy of the spans as an artifact. The info's own
metadata and tags are not stored.

Reading (``mlflow.get_trace``, ``mlflow.search_traces``, ``MlflowClient`` alike):
GetTraceInfoV3 ``GET /traces/{id}``, GetTrace ``GET /traces/get``, BatchGetTraces
``GET /traces/batchGet``, BatchGetTraceInfos ``POST /traces/batchGetInfos``, SearchTracesV3
``POST /traces/search``. Assessments (``mlflow.log_feedback``, ``log_expectation``,
``get_assessment``, ``delete_assessment``): ``POST /traces/{id}/assessments``,
``GET``/``DELETE /traces/{id}/assessments/{assessment_id}``. Deleting
(``MlflowClient.delete_traces``, admin only): DeleteTraces ``POST
/api/2.0/mlflow/traces/delete-traces`` (:data:`v2_router`). Not served (MLflow's
``ENDPOINT_NOT_FOUND``): trace tag writes, assessment updates. The wire format:
:mod:`assay.server.mlflow_trace_wire`.

Auth is the same as on ``/api/v1/traces``: a job token reads and assesses only the traces of
the experiments it is scoped to (403 PERMISSION_DENIED otherwise).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request

from assay.errors import InvalidRequestError, NotFoundError
from assay.server.auth import Caller, Principal, require_admin, require_scope
from assay.server.deps import trace_store, tracking_store
from assay.server.errors import MlflowRoute
from assay.server.mlflow_trace_wire import (
    SPANS_LOCATION_TAG,
    assessment_json,
    mlflow_filter,
    mlflow_order_by,
    new_assessment,
    trace_info_json,
    trace_json,
)
from assay.server.routes.traces import visible_trace
from assay.tracing.filters import DEFAULT_MAX_RESULTS, MAX_RESULTS
from assay.tracing.model import Trace, TraceDetail, trace_id_of
from assay.tracing.store import TraceStore

__all__ = ["SPANS_LOCATION_TAG", "router", "v2_router"]

router = APIRouter(
    prefix="/api/3.0/mlflow/traces",
    route_class=MlflowRoute,
    include_in_schema=False,
    tags=["mlflow"],
)

v2_router = APIRouter(
    prefix="/api/2.0/mlflow/traces",
    route_class=MlflowRoute,
    include_in_schema=False,
    tags=["mlflow"],
)
"""The one trace route MLflow's client still calls on its 2.0 API: DeleteTraces."""

Store = Annotated[TraceStore, Depends(trace_store)]
JsonBody = Annotated[dict[str, Any], Body()]
MAX_BATCH = 100
"""Trace ids in one batch read (MLflow's client sends at most 10 at a time)."""


@router.post("")
def start_trace(body: JsonBody, request: Request, caller: Caller) -> dict[str, Any]:
    """StartTraceV3: ``{trace: {trace_info}}`` back, once its experiment exists and the
    caller may write to it."""
    try:
        info = body["trace"]["trace_info"]
        experiment_id = info["trace_location"]["mlflow_experiment"]["experiment_id"]
    except (KeyError, TypeError):
        raise InvalidRequestError(
            "expected {trace: {trace_info: {trace_location: {mlflow_experiment: {experiment_id}}}}}"
        ) from None
    if not isinstance(info, dict) or not isinstance(experiment_id, str):
        raise InvalidRequestError("trace_info must be an object naming an experiment_id")
    experiment = tracking_store(request).get_experiment(experiment_id)  # "0": the default
    require_scope(caller, "experiment_id", experiment.id)
    tags = info.get("tags")
    tags = tags if isinstance(tags, dict) else {}
    return {
        "trace": {"trace_info": {**info, "tags": {**tags, SPANS_LOCATION_TAG: "TRACKING_STORE"}}}
    }


def _detail(store: TraceStore, caller: Principal, trace_id: str) -> TraceDetail:
    detail = store.trace_detail(trace_id_of(trace_id))
    if detail is None:
        raise NotFoundError(f"Trace with ID {trace_id[:64]!r} not found")
    require_scope(caller, "experiment_id", detail.trace.experiment_id)
    return detail


def _experiments(request: Request, caller: Principal, experiment_ids: list[str]) -> list[str]:
    """The stored ids of the named experiments ("0": the default), each readable by the
    caller."""
    tracking = tracking_store(request)
    found = [tracking.get_experiment(e).id for e in experiment_ids]
    for experiment in found:
        require_scope(caller, "experiment_id", experiment)
    return found


def _batch(
    store: TraceStore,
    caller: Principal,
    trace_ids: list[str],
    experiment_ids: list[str] | None,
) -> list[Trace]:
    """The traces of ``trace_ids`` that exist (in the experiments named, if any), each
    readable by the caller."""
    if len(trace_ids) > MAX_BATCH:
        raise InvalidRequestError(f"at most {MAX_BATCH} trace ids at once, not {len(trace_ids)}")
    found = store.traces_get_many([trace_id_of(t) for t in trace_ids])
    out = [t for t in found if not experiment_ids or t.experiment_id in experiment_ids]
    for trace in out:
        require_scope(caller, "experiment_id", trace.experiment_id)
    return out


def _info(store: TraceStore, trace: Trace) -> dict[str, Any]:
    """A trace's info with its assessments, without reading its spans."""
    return trace_info_json(trace, store.assessments_list(trace.trace_id) or [])


@router.get("/get")
def get_trace(
    store: Store, caller: Caller, trace_id: Annotated[str, Query(max_length=200)]
) -> dict[str, Any]:
    """GetTrace: the trace's info (with its assessments) and its spans."""
    return {"trace": trace_json(_detail(store, caller, trace_id))}


@router.get("/batchGet")
def batch_get_traces(
    store: Store,
    caller: Caller,
    trace_ids: Annotated[list[str], Query()],
    experiment_ids: Annotated[list[str] | None, Query()] = None,
) -> dict[str, Any]:
    """BatchGetTraces: the traces found, with their spans; unknown ids are left out."""
    found = _batch(store, caller, trace_ids, experiment_ids)
    details = (store.trace_detail(t.trace_id) for t in found)
    return {"traces": [trace_json(d) for d in details if d is not None]}


@router.post("/batchGetInfos")
def batch_get_trace_infos(store: Store, caller: Caller, body: JsonBody) -> dict[str, Any]:
    """BatchGetTraceInfos: the infos of the traces found; unknown ids are left out."""
    trace_ids, experiment_ids = body.get("trace_ids"), body.get("experiment_ids")
    if not isinstance(trace_ids, list) or not all(isinstance(t, str) for t in trace_ids):
        raise InvalidRequestError("trace_ids must be a list of trace ids")
    if experiment_ids is not None and not isinstance(experiment_ids, list):
        raise InvalidRequestError("experiment_ids must be a list")
    found = _batch(store, caller, trace_ids, experiment_ids)
    return {"trace_infos": [_info(store, t) for t in found]}


def _location(location: Any) -> str:
    try:
        experiment_id = location["mlflow_experiment"]["experiment_id"]
    except (KeyError, TypeError):
        raise InvalidRequestError(
            "each location must be {mlflow_experiment: {experiment_id}}: assay stores traces "
            "in experiments"
        ) from None
    return str(experiment_id)


@router.post("/search")
def search_traces(request: Request, store: Store, caller: Caller, body: JsonBody) -> dict[str, Any]:
    """SearchTracesV3: trace infos (without assessments) of the experiments named by
    ``locations``, newest first unless ``order_by`` says otherwise (filters and order:
    :func:`mlflow_filter`)."""
    locations = body.get("locations")
    if not isinstance(locations, list) or not locations:
        raise InvalidRequestError("locations must name at least one experiment")
    order_by = body.get("order_by") or []
    if not isinstance(order_by, list) or not all(isinstance(o, str) for o in order_by):
        raise InvalidRequestError("order_by must be a list of strings")
    max_results = body.get("max_results") or DEFAULT_MAX_RESULTS
    page_token = body.get("page_token") or None
    filter_string = body.get("filter")
    try:
        max_results = min(int(max_results), MAX_RESULTS)
    except (TypeError, ValueError):
        raise InvalidRequestError("max_results must be an integer") from None
    if not isinstance(filter_string, str | None) or not isinstance(page_token, str | None):
        raise InvalidRequestError("filter and page_token must be strings")
    page = store.traces_search(
        _experiments(request, caller, [_location(loc) for loc in locations]),
        filter_string=mlflow_filter(filter_string),
        order_by=mlflow_order_by(order_by),
        max_results=max_results,
        page_token=page_token,
    )
    out: dict[str, Any] = {"traces": [trace_info_json(t) for t in page.traces]}
    if page.next_page_token:
        out["next_page_token"] = page.next_page_token
    return out


@router.get("/{trace_id}")
def get_trace_info(trace_id: str, store: Store, caller: Caller) -> dict[str, Any]:
    """GetTraceInfoV3: the trace's info with its assessments (not the root span's name, which
    needs the spans: that tag comes with GetTrace)."""
    trace = visible_trace(store, caller, trace_id_of(trace_id))
    return {"trace": {"trace_info": _info(store, trace)}}


@router.post("/{trace_id}/assessments")
def create_assessment(
    trace_id: str, store: Store, caller: Caller, body: JsonBody
) -> dict[str, Any]:
    """CreateAssessment: a feedback or an expectation, added to the trace."""
    new = new_assessment(trace_id, body)
    visible_trace(store, caller, new.trace_id)
    return {"assessment": assessment_json(store.assessment_write(new))}


@router.get("/{trace_id}/assessments/{assessment_id}")
def get_assessment(
    trace_id: str, assessment_id: str, store: Store, caller: Caller
) -> dict[str, Any]:
    stored_id = trace_id_of(trace_id)
    visible_trace(store, caller, stored_id)
    found = next(
        (a for a in store.assessments_list(stored_id) or [] if a.id == assessment_id), None
    )
    if found is None:
        raise NotFoundError(f"assessment {assessment_id[:64]!r} of trace {trace_id} not found")
    return {"assessment": assessment_json(found)}


@router.delete("/{trace_id}/assessments/{assessment_id}")
def delete_assessment(
    trace_id: str, assessment_id: str, store: Store, caller: Caller
) -> dict[str, Any]:
    stored_id = trace_id_of(trace_id)
    visible_trace(store, caller, stored_id)
    if "\x00" in assessment_id or not store.assessment_delete(stored_id, assessment_id):
        raise NotFoundError(f"assessment {assessment_id[:64]!r} of trace {trace_id} not found")
    return {}


@v2_router.post("/delete-traces")
def delete_traces(request: Request, store: Store, caller: Caller, body: JsonBody) -> dict[str, Any]:
    """DeleteTraces: the traces of ``request_ids``, or those of the experiment with a
    timestamp at or before ``max_timestamp_millis`` (oldest first, at most ``max_traces``),
    with everything of theirs. Admin only: it is the one bulk deletion of data a token can
    ask for."""
    require_admin(caller, "delete traces")
    experiment_id = body.get("experiment_id")
    if not isinstance(experiment_id, str) or not experiment_id:
        raise InvalidRequestError("experiment_id is required")
    experiment = tracking_store(request).get_experiment(experiment_id)
    ids = body.get("request_ids") or None
    before = body.get("max_timestamp_millis")
    most = body.get("max_traces")
    if ids is not None and not (
        isinstance(ids, list) and all(isinstance(i, str) and i for i in ids)
    ):
        raise InvalidRequestError("request_ids must be a list of trace ids")
    if (ids is None) == (before is None):
        raise InvalidRequestError("give either max_timestamp_millis or request_ids, not both")
    if ids is not None and most is not None:
        raise InvalidRequestError("max_traces goes with max_timestamp_millis, not request_ids")
    for name, value in (("max_timestamp_millis", before), ("max_traces", most)):
        if value is not None and (not _is_int(value) or int(value) < 0):
            raise InvalidRequestError(f"{name} must be a non-negative integer, not {value!r}")
    if most is not None and int(most) == 0:
        raise InvalidRequestError("max_traces must be positive")
    deleted = store.traces_delete(
        experiment.id,
        trace_ids=None if ids is None else [trace_id_of(i) for i in ids],
        started_before_ms=None if before is None else int(before) + 1,
        max_traces=None if most is None else int(most),
    )
    return {"traces_deleted": deleted}


def _is_int(value: Any) -> bool:
    """An integer, or its decimal text (MLflow's JSON sends int64 fields as strings)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.isdigit() and len(value) <= 19
