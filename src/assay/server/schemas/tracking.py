"""``/api/v1/experiments`` and ``/api/v1/runs``: experiments, runs and metrics to write and as
answered (:mod:`assay.server.routes.tracking`). Times in epoch milliseconds."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from assay.tracking import limits
from assay.tracking.model import Experiment, Metric, Run, RunStatus

__all__ = [
    "ExperimentCreate",
    "ExperimentOut",
    "ExperimentPageOut",
    "InputIn",
    "LogBatch",
    "LogInputs",
    "MetricIn",
    "MetricOut",
    "MetricPageOut",
    "RunCreate",
    "RunOut",
    "RunPageOut",
    "RunUpdate",
]

Millis = Annotated[int, Field(ge=0, lt=2**63, description="Milliseconds since the epoch.")]
Name = Annotated[str, Field(min_length=1, max_length=limits.MAX_NAME_CHARS)]


class ExperimentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    tags: dict[str, str] = Field(default_factory=dict)


class ExperimentOut(BaseModel):
    id: str
    name: str
    creation_time: Millis
    tags: dict[str, str]

    @classmethod
    def of(cls, experiment: Experiment) -> ExperimentOut:
        return cls(
            id=experiment.id,
            name=experiment.name,
            creation_time=experiment.created_at_ms,
            tags=experiment.tags,
        )


class ExperimentPageOut(BaseModel):
    experiments: list[ExperimentOut]
    next_page_token: str | None = None


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experiment_id: str = Field(min_length=1, max_length=36)
    name: Name | None = None
    start_time: Millis | None = Field(None, description="Default: now (the database clock).")
    tags: dict[str, str] = Field(default_factory=dict)


class RunUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: RunStatus | None = None
    end_time: Millis | None = Field(
        None, description="Default when ending the run: now (the database clock)."
    )


class MetricIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    value: float = Field(allow_inf_nan=False)
    step: int = Field(0, ge=-(2**63) + 1, lt=2**63)
    timestamp: Millis | None = Field(None, description="Default: now (the database clock).")


class MetricOut(BaseModel):
    key: str
    value: float
    step: int
    timestamp: Millis

    @classmethod
    def of(cls, metric: Metric) -> MetricOut:
        return cls(
            key=metric.key,
            value=metric.value,
            step=metric.step,
            timestamp=metric.timestamp_ms or 0,
        )


class LogBatch(BaseModel):
    """Metrics, params and tags of one run, stored in one transaction (all or none)."""

    model_config = ConfigDict(extra="forbid")

    metrics: list[MetricIn] = Field(
        default_factory=list, description=f"At most {limits.MAX_METRICS_PER_BATCH}."
    )
    params: dict[str, str] = Field(
        default_factory=dict, description="Logged once: a different value later is a 409."
    )
    tags: dict[str, str] = Field(default_factory=dict)


class InputIn(BaseModel):
    model_config = ConfigDict(extra="forbid", from_attributes=True)

    name: Name
    digest: Name
    source: str | None = Field(None, max_length=limits.MAX_SOURCE_CHARS)


class LogInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[InputIn]


class RunOut(BaseModel):
    id: str
    experiment_id: str
    name: str | None = None
    status: RunStatus
    start_time: Millis
    end_time: Millis | None = None
    params: dict[str, str]
    metrics: list[MetricOut] = Field(description="The latest value of each metric.")
    tags: dict[str, str]
    inputs: list[InputIn]

    @classmethod
    def of(cls, run: Run) -> RunOut:
        return cls(
            id=run.id,
            experiment_id=run.experiment_id,
            name=run.name,
            status=run.status,
            start_time=run.start_time_ms,
            end_time=run.end_time_ms,
            params=run.params,
            metrics=[MetricOut.of(m) for m in run.metrics.values()],
            tags=run.tags,
            inputs=[InputIn.model_validate(i) for i in run.inputs],
        )


class RunPageOut(BaseModel):
    runs: list[RunOut]
    next_page_token: str | None = None


class MetricPageOut(BaseModel):
    metrics: list[MetricOut]
    next_page_token: str | None = None
