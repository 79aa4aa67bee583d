"""Online scoring over REST: scorers of an experiment, backfills, and the decision log of a
trace (docs/contract.md, Online scoring).

Registering, changing, deleting and backfilling scorers is for admins (a scorer spends judge
tokens, a custom one runs code); reading them needs access to the experiment.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response

from assay.errors import InvalidRequestError
from assay.server.auth import Caller, require_admin, require_scope
from assay.server.deps import Scoring, Traces
from assay.server.routes.traces import visible_trace
from assay.server.schemas.errors import ErrorOut
from assay.server.schemas.scoring import (
    BackfillIn,
    BackfillOut,
    DecisionOut,
    DecisionsOut,
    ScorerIn,
    ScorerListOut,
    ScorerOut,
    ScorerPatchIn,
)
from assay.tracing.model import trace_id_of

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["scoring"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut},
    403: {"model": ErrorOut},
    404: {"model": ErrorOut},
}


Service = Scoring


def _millis(value: int | datetime) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidRequestError("backfill times need a time zone (e.g. 2026-11-23T00:00Z)")
        return round(value.timestamp() * 1000)
    return value


@router.put(
    "/experiments/{experiment_id}/scorers/{name}", response_model=ScorerOut, responses=_ERRORS
)
def put_scorer(
    experiment_id: str, name: str, body: ScorerIn, service: Service, caller: Caller
) -> ScorerOut:
    """Register a scorer on an experiment, or replace it (which also resumes it)."""
    require_admin(caller, "register scorers")
    record = service.put(
        experiment_id,
        name,
        kind=body.scorer.kind,
        level=body.scorer.level,
        definition=body.scorer.definition,
        sample_rate=body.sample_rate,
        filter_string=body.filter_string,
    )
    return ScorerOut.of(record)


@router.get("/experiments/{experiment_id}/scorers", response_model=ScorerListOut)
def list_scorers(experiment_id: str, service: Service, caller: Caller) -> ScorerListOut:
    require_scope(caller, "experiment_id", experiment_id)
    return ScorerListOut(scorers=[ScorerOut.of(s) for s in service.list(experiment_id)])


@router.get(
    "/experiments/{experiment_id}/scorers/{name}", response_model=ScorerOut, responses=_ERRORS
)
def get_scorer(experiment_id: str, name: str, service: Service, caller: Caller) -> ScorerOut:
    require_scope(caller, "experiment_id", experiment_id)
    return ScorerOut.of(service.get(experiment_id, name))


@router.patch(
    "/experiments/{experiment_id}/scorers/{name}", response_model=ScorerOut, responses=_ERRORS
)
def patch_scorer(
    experiment_id: str, name: str, body: ScorerPatchIn, service: Service, caller: Caller
) -> ScorerOut:
    """Pause (keep queuing, stop scoring), resume, or stop (drop what is queued) a scorer."""
    require_admin(caller, "change scorers")
    return ScorerOut.of(service.set_status(experiment_id, name, body.status))


@router.delete("/experiments/{experiment_id}/scorers/{name}", status_code=204, responses=_ERRORS)
def delete_scorer(experiment_id: str, name: str, service: Service, caller: Caller) -> Response:
    """Delete a scorer and what it has queued; its assessments stay."""
    require_admin(caller, "delete scorers")
    service.delete(experiment_id, name)
    return Response(status_code=204)


@router.post(
    "/experiments/{experiment_id}/scorers/{name}/backfill",
    response_model=BackfillOut,
    responses=_ERRORS,
)
def backfill_scorer(
    experiment_id: str,
    name: str,
    body: BackfillIn,
    service: Service,
    caller: Caller,
    request: Request,
) -> BackfillOut:
    """Score past traces (started in [start, end)) through the online pipeline; with
    ``dry_run`` only count them (and estimate a judge's tokens)."""
    require_admin(caller, "backfill scorers")
    backend = request.app.state.runtime.backend

    def submit(job: str, params: dict[str, Any]) -> str:
        return str(backend.submit(job, params, owner=caller.subject).id)

    out = service.backfill(
        experiment_id,
        name,
        _millis(body.start),
        _millis(body.end),
        dry_run=body.dry_run,
        submit=submit,
    )
    return BackfillOut(**out)


@router.get(
    "/traces/{trace_id}/scoring", response_model=DecisionsOut, responses={404: {"model": ErrorOut}}
)
def trace_scoring(trace_id: str, store: Traces, service: Service, caller: Caller) -> DecisionsOut:
    """The decision log: for each scorer of the trace's experiment, whether it scored, will
    score, or skipped this trace, and why."""
    trace = visible_trace(store, caller, trace_id_of(trace_id))
    decisions = [DecisionOut.model_validate(d) for d in service.decisions(trace)]
    return DecisionsOut(trace_id=trace.trace_id, decisions=decisions)
