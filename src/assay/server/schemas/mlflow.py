"""MLflow's wire format for the MLflow-compatible routes (:mod:`assay.server.routes.mlflow`,
``mlflow_artifacts``, ``mlflow_jobs``): request bodies, and the JSON of experiments, runs,
metrics, logged models and jobs. Errors in MLflow's shape: :mod:`assay.server.errors`.

Bodies follow MLflow's protobuf JSON: unknown fields are ignored, fields left at their default
may be missing (an empty string, a zero), 64-bit integers may come as strings, enums as names
or numbers. Answers use MLflow's field names; ids are strings.
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from assay.errors import InvalidRequestError
from assay.jobs.model import Job
from assay.server.schemas.jobs import Params
from assay.tracking import limits
from assay.tracking.artifacts import LoggedModel
from assay.tracking.model import Experiment, Metric, Run, RunStatus

__all__ = [
    "MLFLOW_VERSION",
    "CreateExperimentBody",
    "CreateLoggedModelBody",
    "CreateRunBody",
    "DatasetInputBody",
    "FinalizeLoggedModelBody",
    "KeyValue",
    "LogBatchBody",
    "LogInputsBody",
    "LogMetricBody",
    "LogModelBody",
    "LogOutputsBody",
    "LogParamBody",
    "LoggedModelParamsBody",
    "LoggedModelTagsBody",
    "MetricBody",
    "MlflowBody",
    "OrderByBody",
    "RunIdBody",
    "SearchExperimentsBody",
    "SearchJobsBody",
    "SearchLoggedModelsBody",
    "SearchRunsBody",
    "SetTagBody",
    "SubmitJobBody",
    "UpdateRunBody",
    "experiment_json",
    "job_json",
    "metric_json",
    "metric_value",
    "model_json",
    "run_info_json",
    "run_json",
    "run_name",
    "run_status",
]

MLFLOW_VERSION = "3.17.2"
"""What ``/version`` answers: the MLflow release whose client the surface is tested with."""


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


# Logged models (routes/mlflow_artifacts.py).


class CreateLoggedModelBody(MlflowBody):
    experiment_id: str = ""
    name: str = Field("model", max_length=limits.MAX_NAME_CHARS)
    model_type: str = Field("", max_length=limits.MAX_NAME_CHARS)
    source_run_id: str = Field("", max_length=1000)
    params: list[KeyValue] = Field(default_factory=list)
    tags: list[KeyValue] = Field(default_factory=list)


class FinalizeLoggedModelBody(MlflowBody):
    status: str = "LOGGED_MODEL_READY"


class LoggedModelTagsBody(MlflowBody):
    tags: list[KeyValue] = Field(default_factory=list)


class LoggedModelParamsBody(MlflowBody):
    params: list[KeyValue] = Field(default_factory=list)


class OrderByBody(MlflowBody):
    field_name: str
    ascending: bool = True


class SearchLoggedModelsBody(MlflowBody):
    experiment_ids: list[str] = Field(default_factory=list)
    filter: str = ""
    max_results: int = Field(100, ge=1, le=1000)
    order_by: list[OrderByBody] = Field(default_factory=list)
    page_token: str = ""


class LogOutputsBody(MlflowBody):
    run_id: str = ""


class LogModelBody(MlflowBody):
    run_id: str = ""
    model_json: str = ""


# Jobs (routes/mlflow_jobs.py).


class SubmitJobBody(MlflowBody):
    job_name: str = Field(min_length=1, max_length=200)
    params: Params = Field(default_factory=dict)
    timeout: float | None = Field(None, gt=0, allow_inf_nan=False)


class SearchJobsBody(MlflowBody):
    job_name: str | None = Field(None, max_length=200)
    params: dict[str, Any] | None = None
    statuses: list[str] | None = None


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


def model_json(model: LoggedModel) -> dict[str, Any]:
    return {
        "info": {
            "model_id": model.model_id,
            "experiment_id": model.experiment_id,
            "name": model.name,
            "creation_timestamp_ms": model.creation_timestamp_ms,
            "last_updated_timestamp_ms": model.last_updated_timestamp_ms,
            "artifact_uri": f"mlflow-artifacts:/{model.artifact_path}",
            "status": model.status,
            "model_type": model.model_type,
            "source_run_id": model.source_run_id,
            "status_message": model.status_message,
            "tags": [{"key": k, "value": v} for k, v in model.tags.items()],
        },
        "data": {
            "params": [{"key": k, "value": v} for k, v in model.params.items()],
            "metrics": [],
        },
    }


def _ms(job: Job, name: str) -> int | None:
    value = getattr(job, name)
    return None if value is None else int(value.timestamp() * 1000)


def job_json(job: Job) -> dict[str, Any]:
    """A job under MLflow's field names."""
    created = _ms(job, "created_at") or 0
    times = [t for t in (created, _ms(job, "started_at"), _ms(job, "finished_at")) if t]
    progress = None
    if job.progress is not None:
        completed, total = job.progress.completed, job.progress.total
        progress = {
            "phase": job.progress.message,
            "completed": int(completed) if float(completed).is_integer() else completed,
            "total": int(total) if total is not None and float(total).is_integer() else total,
            "unit": None,
        }
    return {
        "job_id": job.id,
        "creation_time": created,
        "job_name": job.name,
        "params": job.params,
        "timeout": job.timeout,
        "status": job.status.value,
        "result": job.result,
        "error_message": job.error,
        "retry_count": max(job.attempt - 1, 0),
        "last_update_time": max(times),
        "status_details": None,
        "creator": job.owner,
        "status_message": job.progress.message if job.progress else None,
        "progress": progress,
        "progress_updated_at": None,
    }
