"""The MLflow trace route its tracing client calls on a server it finds compatible.

With ``mlflow.set_tracking_uri(<assay server>)``, ``@mlflow.trace`` asks ``GET /version``
(3.4 or later: the native path), sends each trace's spans as OTLP to ``/v1/traces`` with
``x-mlflow-experiment-id``, then ``POST /api/3.0/mlflow/traces`` (StartTraceV3) with the
trace's info. The spans carry everything assay stores (:mod:`assay.tracing.derive`), so this
route checks the experiment and answers the info back tagged
``mlflow.trace.spansLocation = TRACKING_STORE``: the client then uploads no copy of the spans
as an artifact. The info's own metadata and tags are not stored.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from assay.errors import InvalidRequestError
from assay.server.auth import Caller, require_scope
from assay.server.deps import tracking_store
from assay.server.errors import MlflowRoute

__all__ = ["SPANS_LOCATION_TAG", "router"]

router = APIRouter(
    prefix="/api/3.0/mlflow", route_class=MlflowRoute, include_in_schema=False, tags=["mlflow"]
)

SPANS_LOCATION_TAG = "mlflow.trace.spansLocation"


@router.post("/traces")
def start_trace(
    body: Annotated[dict[str, Any], Body()], request: Request, caller: Caller
) -> dict[str, Any]:
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
