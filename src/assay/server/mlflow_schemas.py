"""MLflow's wire format for the MLflow-compatible routes: request bodies, the JSON of
experiments, runs and metrics, and MLflow's error shape.

Bodies follow MLflow's protobuf JSON: unknown fields are ignored, fields left at their default
may be missing (an empty string, a zero), 64-bit integers may come as strings, enums as names
or numbers. Answers use MLflow's field names; ids are strings.

Errors on these routes are ``{"error_code": "...", "message": "..."}`` with MLflow's HTTP
status for the code (the MLflow client reads ``error_code``); the jobs routes add ``detail``,
as MLflow's FastAPI jobs API does. The assay error each code stands for:

==========================  ======  ===========================================================
RESOURCE_DOES_NOT_EXIST     404     NotFoundError
INVALID_PARAMETER_VALUE     400     InvalidRequestError, a malformed body, a param changed
RESOURCE_ALREADY_EXISTS     400     an experiment name taken (the route says so)
UNAUTHENTICATED             401     AuthenticationError
PERMISSION_DENIED           403     PermissionDeniedError
TEMPORARILY_UNAVAILABLE     503     StoreError (the client retries it)
ENDPOINT_NOT_FOUND          404     a path or method the surface does not serve
INTERNAL_ERROR              500     anything else (logged as ``request.crashed``)
==========================  ======  ===========================================================
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from assay.errors import (
    AssayError,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    StoreError,
)
from assay.tracking.model import Experiment, Metric, Run, RunStatus

__all__ = [
    "MLFLOW_PATH_PREFIXES",
    "MLFLOW_VERSION",
    "CreateExperimentBody",
    "CreateRunBody",
    "DatasetInputBody",
    "KeyValue",
    "LogBatchBody",
    "LogInputsBody",
    "LogMetricBody",
    "LogParamBody",
    "MetricBody",
    "MlflowBody",
    "MlflowJobsRoute",
    "MlflowRoute",
    "RunIdBody",
    "SearchExperimentsBody",
    "SearchRunsBody",
    "SetTagBody",
    "UpdateRunBody",
    "experiment_json",
    "metric_json",
    "metric_value",
    "mlflow_error",
    "run_info_json",
    "run_json",
    "run_name",
    "run_status",
    "unmatched_response",
]

log = logging.getLogger("assay.server")

MLFLOW_VERSION = "3.17.2"
"""What ``/version`` answers: the MLflow release whose client the surface is tested with."""
MLFLOW_PATH_PREFIXES = (
    "/api/2.0/mlflow/",
    "/api/2.0/mlflow-artifacts/",
    "/api/3.0/mlflow/",
    "/ajax-api/3.0/jobs",
)
"""Paths answered in MLflow's error shape, even when no route serves them."""

_STATUS = {
    "RESOURCE_DOES_NOT_EXIST": 404,
    "ENDPOINT_NOT_FOUND": 404,
    "INVALID_PARAMETER_VALUE": 400,
    "RESOURCE_ALREADY_EXISTS": 400,
    "BAD_REQUEST": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "REQUEST_LIMIT_EXCEEDED": 429,
    "TEMPORARILY_UNAVAILABLE": 503,
    "INTERNAL_ERROR": 500,
}
_CODES: list[tuple[type[AssayError], str]] = [
    (NotFoundError, "RESOURCE_DOES_NOT_EXIST"),
    (InvalidRequestError, "INVALID_PARAMETER_VALUE"),
    (ConflictError, "INVALID_PARAMETER_VALUE"),
    (AuthenticationError, "UNAUTHENTICATED"),
    (PermissionDeniedError, "PERMISSION_DENIED"),
    (StoreError, "TEMPORARILY_UNAVAILABLE"),
]


def mlflow_error(code: str, message: str, *, detail: bool = False) -> JSONResponse:
    """MLflow's error answer; ``detail``: also as FastAPI's ``detail`` (the jobs API)."""
    body: dict[str, str] = {"error_code": code, "message": message}
    if detail:
        body["detail"] = message
    status = _STATUS.get(code, 400)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + ("; ".join(parts) or "malformed body")


def _translate(exc: Exception, detail: bool) -> Response:
    if isinstance(exc, RequestValidationError):
        return mlflow_error("INVALID_PARAMETER_VALUE", _describe(exc), detail=detail)
    if isinstance(exc, AssayError):
        code = next((c for cls, c in _CODES if isinstance(exc, cls)), "INTERNAL_ERROR")
        if code == "INTERNAL_ERROR":
            log.error("request.failed code=%s", exc.code, exc_info=exc)
        return mlflow_error(code, str(exc), detail=detail)
    if isinstance(exc, StarletteHTTPException):
        return unmatched_response(exc.status_code, str(exc.detail), detail=detail)
    log.error("request.crashed", exc_info=exc)
    return mlflow_error("INTERNAL_ERROR", f"internal error: {type(exc).__name__}", detail=detail)


def unmatched_response(status: int, message: str, *, detail: bool = False) -> JSONResponse:
    """An error raised outside the MLflow routes (no route for the path, a wrong method, a
    body over the size limit) on an MLflow path, in MLflow's shape with the status kept."""
    code = {
        400: "INVALID_PARAMETER_VALUE",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "ENDPOINT_NOT_FOUND",
        405: "ENDPOINT_NOT_FOUND",
        413: "REQUEST_LIMIT_EXCEEDED",
        422: "INVALID_PARAMETER_VALUE",
    }.get(status, "INTERNAL_ERROR" if status >= 500 else "BAD_REQUEST")
    response = mlflow_error(code, message, detail=detail)
    response.status_code = status
    return response


class MlflowRoute(APIRoute):
    """A route whose every error (bad body, auth, store) is answered in MLflow's shape."""

    detail = False

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        detail = self.detail

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return _translate(exc, detail)

        return route


class MlflowJobsRoute(MlflowRoute):
    detail = True


# -- request bodies ---------------------------------------------------------------------------


def _empty_is_none(value: object) -> object:
    return None if value in ("", 0, "0") else value


def _no_nul(value: object) -> object:
    """Ids and keys with a NUL byte name nothing (PostgreSQL cannot even compare them)."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


Id = Annotated[str, BeforeValidator(_no_nul), Field(max_length=1000)]
# The bounds on the int only: on the whole union, pydantic applies them to None too (TypeError).
OptionalMillis = Annotated[
    Annotated[int, Field(ge=0, lt=2**63)] | None, BeforeValidator(_empty_is_none)
]


class MlflowBody(BaseModel):
    model_config = ConfigDict(extra="ignore")


class KeyValue(MlflowBody):
    key: str
    value: str = ""


class MetricBody(MlflowBody):
    key: str
    value: float = 0.0
    timestamp: OptionalMillis = None
    step: int = Field(0, ge=-(2**63) + 1, lt=2**63)


class CreateExperimentBody(MlflowBody):
    name: str = ""
    artifact_location: str = ""
    tags: list[KeyValue] = Field(default_factory=list)


class SearchExperimentsBody(MlflowBody):
    max_results: int = Field(1000, ge=1, le=50_000)
    page_token: str = ""
    filter: str = ""
    order_by: list[str] = Field(default_factory=list)
    view_type: str | int = "ACTIVE_ONLY"


class CreateRunBody(MlflowBody):
    experiment_id: Id = ""
    user_id: str = ""
    run_name: str = ""
    start_time: OptionalMillis = None
    tags: list[KeyValue] = Field(default_factory=list)


class RunIdBody(MlflowBody):
    """The run a request is about, as ``run_id`` or its older name ``run_uuid``."""

    run_id: Id = ""
    run_uuid: Id = ""

    @property
    def run(self) -> str:
        return self.run_id or self.run_uuid


class UpdateRunBody(RunIdBody):
    status: str | int | None = None
    end_time: OptionalMillis = None
    run_name: str = ""


class LogMetricBody(RunIdBody, MetricBody):
    pass


class LogParamBody(RunIdBody, KeyValue):
    pass


class SetTagBody(RunIdBody, KeyValue):
    pass


class LogBatchBody(MlflowBody):
    run_id: Id = ""
    metrics: list[MetricBody] = Field(default_factory=list)
    params: list[KeyValue] = Field(default_factory=list)
    tags: list[KeyValue] = Field(default_factory=list)


class DatasetBody(MlflowBody):
    name: str = ""
    digest: str = ""
    source_type: str = ""
    source: str = ""


class DatasetInputBody(MlflowBody):
    tags: list[KeyValue] = Field(default_factory=list)
    dataset: DatasetBody


class LogInputsBody(MlflowBody):
    run_id: Id = ""
    datasets: list[DatasetInputBody] = Field(default_factory=list)


class SearchRunsBody(MlflowBody):
    experiment_ids: list[Id] = Field(default_factory=list)
    filter: str = ""
    run_view_type: str | int = "ACTIVE_ONLY"
    max_results: int = Field(1000, ge=1, le=50_000)
    order_by: list[str] = Field(default_factory=list)
    page_token: str = ""


# -- values -----------------------------------------------------------------------------------

_RUN_STATUS_NUMBERS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}


def run_status(value: str | int) -> RunStatus:
    """An MLflow run status (name or enum number) as assay's."""
    name = _RUN_STATUS_NUMBERS.get(value, str(value)) if isinstance(value, int) else value
    try:
        return RunStatus(name.upper())
    except ValueError:
        known = ", ".join(s.value for s in RunStatus)
        raise InvalidRequestError(
            f"unsupported run status {value!r} (assay runs are one of {known})"
        ) from None


def metric_value(key: str, value: float) -> float:
    """A metric value as stored: infinities clipped to the largest double, as MLflow stores
    them; NaN refused (assay keeps finite values only)."""
    if math.isnan(value):
        raise InvalidRequestError(f"metric {key!r}: the value must be a number, not NaN")
    if math.isinf(value):
        return math.copysign(sys.float_info.max, value)
    return value


RUN_NAME_TAG = "mlflow.runName"
USER_TAG = "mlflow.user"


def experiment_json(experiment: Experiment) -> dict[str, Any]:
    return {
        "experiment_id": experiment.id,
        "name": experiment.name,
        "artifact_location": f"mlflow-artifacts:/{experiment.id}",
        "lifecycle_stage": "active",
        "creation_time": experiment.created_at_ms,
        "last_update_time": experiment.created_at_ms,
        "tags": [{"key": k, "value": v} for k, v in experiment.tags.items()],
    }


def run_name(run: Run) -> str:
    """The run's name as MLflow shows it: its ``mlflow.runName`` tag, else assay's name."""
    return run.tags.get(RUN_NAME_TAG) or run.name or ""


def run_info_json(run: Run) -> dict[str, Any]:
    info: dict[str, Any] = {
        "run_id": run.id,
        "run_uuid": run.id,
        "run_name": run_name(run),
        "experiment_id": run.experiment_id,
        "user_id": run.tags.get(USER_TAG, ""),
        "status": run.status.value,
        "start_time": run.start_time_ms,
        "artifact_uri": f"mlflow-artifacts:/{run.experiment_id}/{run.id}/artifacts",
        "lifecycle_stage": "active",
    }
    if run.end_time_ms is not None:
        info["end_time"] = run.end_time_ms
    return info


def metric_json(metric: Metric) -> dict[str, Any]:
    return {
        "key": metric.key,
        "value": metric.value,
        "timestamp": metric.timestamp_ms or 0,
        "step": metric.step,
    }


def run_json(run: Run) -> dict[str, Any]:
    tags = dict(run.tags)
    if run.name and RUN_NAME_TAG not in tags:
        tags[RUN_NAME_TAG] = run.name
    return {
        "info": run_info_json(run),
        "data": {
            "metrics": [metric_json(m) for m in run.metrics.values()],
            "params": [{"key": k, "value": v} for k, v in run.params.items()],
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        },
        "inputs": {
            "dataset_inputs": [
                {
                    "tags": [],
                    "dataset": {
                        "name": i.name,
                        "digest": i.digest,
                        "source_type": "",
                        "source": i.source or "",
                    },
                }
                for i in run.inputs
            ]
        },
        "outputs": {},
    }
