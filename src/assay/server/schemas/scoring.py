"""Online scoring: scorers of an experiment to register and as answered, backfills, and the
decision log of a trace (:mod:`assay.server.routes.scoring`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from assay.scoring.store import ScorerRecord

__all__ = [
    "BackfillIn",
    "BackfillOut",
    "DecisionOut",
    "DecisionsOut",
    "ScorerIn",
    "ScorerListOut",
    "ScorerOut",
    "ScorerPatchIn",
    "ScorerSpecIn",
    "ScorerSpecOut",
]


class ScorerSpecIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(max_length=50, description="`llm_judge`, `custom` or a heuristic kind.")
    level: Literal["trace", "session"] = "trace"
    definition: dict[str, Any] = Field(default_factory=dict)


class ScorerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scorer: ScorerSpecIn
    sample_rate: float = Field(1.0, ge=0, le=1, allow_inf_nan=False)
    filter_string: str | None = Field(None, max_length=10_000)


class ScorerSpecOut(BaseModel):
    kind: str
    level: str
    version: int
    definition: dict[str, Any]


class ScorerOut(BaseModel):
    experiment_id: str
    name: str
    scorer: ScorerSpecOut
    sample_rate: float
    filter_string: str | None
    status: str
    status_reason: str | None
    created_at_ms: int
    updated_at_ms: int

    @classmethod
    def of(cls, record: ScorerRecord) -> ScorerOut:
        return cls.model_validate(record.to_dict())


class ScorerListOut(BaseModel):
    scorers: list[ScorerOut]


class ScorerPatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["ACTIVE", "PAUSED", "STOPPED"]


class BackfillIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: int | datetime = Field(description="Epoch milliseconds or an ISO-8601 time.")
    end: int | datetime = Field(description="Epoch milliseconds or an ISO-8601 time.")
    dry_run: bool = False


class BackfillOut(BaseModel):
    count: int
    examined: int
    estimated_tokens: int | None
    cap: int
    over_cap: bool
    job_id: str | None = None


class DecisionOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    scorer: str
    level: str
    state: str
    reason: str | None = None


class DecisionsOut(BaseModel):
    trace_id: str
    decisions: list[DecisionOut]
