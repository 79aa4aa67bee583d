"""Trace ingest and reads: ``POST /v1/traces`` (OTLP/HTTP), ``GET /api/v1/traces/{trace_id}``
and the assessments of a trace (docs/contract.md, Tracking and traces).

OTLP answers follow the OTLP/HTTP specification (:mod:`assay.server.otlp_http`): an
``ExportTraceServiceResponse`` (with ``partial_success`` when spans were rejected) or, on
failure, a ``google.rpc.Status``, each in the encoding of the request (protobuf or JSON).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from assay.errors import NotFoundError
from assay.server import otlp_http
from assay.server.auth import Caller, Principal, require_scope
from assay.server.deps import Traces
from assay.server.schemas.errors import ErrorOut
from assay.server.schemas.traces import (
    AssessmentIn,
    AssessmentListOut,
    AssessmentOut,
    TraceDetailOut,
    TraceOut,
    TracePageOut,
)
from assay.tracing.filters import DEFAULT_MAX_RESULTS, MAX_RESULTS
from assay.tracing.model import NewAssessment, Trace, trace_id_of
from assay.tracing.store import TraceStore

__all__ = ["router", "visible_trace"]


# -- OTLP ingest -----------------------------------------------------------------------------------

otlp = APIRouter(tags=["traces"])


@otlp.post(
    "/v1/traces",
    summary="OTLP/HTTP trace export (protobuf or JSON, optionally gzip)",
    openapi_extra=otlp_http.REQUEST_BODY,
    responses=otlp_http.responses("ExportTraceServiceResponse", "malformed body or no experiment"),
)
async def export_traces(request: Request) -> Response:
    """Store the spans of an OTLP export request (see TraceStore.spans_ingest)."""
    return await otlp_http.export(request, "traces")


# -- REST ------------------------------------------------------------------------------------------

api = APIRouter(
    prefix="/api/v1/traces",
    tags=["traces"],
    responses={
        400: {"model": ErrorOut},
        401: {"model": ErrorOut},
        403: {"model": ErrorOut},
        404: {"model": ErrorOut},
        422: {"model": ErrorOut},
    },
)


def visible_trace(store: TraceStore, caller: Principal, trace_id: str) -> Trace:
    trace = store.trace_get(trace_id)
    if trace is None:
        raise NotFoundError(f"trace {trace_id!r} not found")
    require_scope(caller, "experiment_id", trace.experiment_id)
    return trace


@api.get("", response_model=TracePageOut)
def search_traces(
    store: Traces,
    caller: Caller,
    experiment_id: Annotated[
        list[str], Query(description="Search these experiments (repeat for several).")
    ],
    filter_string: Annotated[
        str | None,
        Query(
            alias="filter",
            description="A filter string, e.g. `trace.status = 'OK' AND metadata.user = 'u1'`.",
        ),
    ] = None,
    order_by: Annotated[
        list[str] | None,
        Query(description="`trace.<field> [ASC|DESC]`, repeated or comma-separated."),
    ] = None,
    max_results: Annotated[int, Query(ge=1, le=MAX_RESULTS)] = DEFAULT_MAX_RESULTS,
    page_token: Annotated[str | None, Query(max_length=4000)] = None,
) -> TracePageOut:
    """Traces of the experiments that match ``filter``, newest first unless ``order_by`` says
    otherwise, one page at a time; a bad filter is a 400 naming the token and its position."""
    for experiment in experiment_id:
        require_scope(caller, "experiment_id", experiment)
    page = store.traces_search(
        experiment_id,
        filter_string=filter_string,
        order_by=order_by,
        max_results=max_results,
        page_token=page_token,
    )
    return TracePageOut(
        traces=[TraceOut.of(t) for t in page.traces], next_page_token=page.next_page_token
    )


@api.get("/{trace_id}", response_model=TraceDetailOut)
def get_trace(trace_id: str, store: Traces, caller: Caller) -> TraceDetailOut:
    """A trace with its spans (in start order) and its assessments."""
    trace_id = trace_id_of(trace_id)
    detail = store.trace_detail(trace_id)
    if detail is None:
        raise NotFoundError(f"trace {trace_id!r} not found")
    require_scope(caller, "experiment_id", detail.trace.experiment_id)
    return TraceDetailOut.of(detail)


@api.post("/{trace_id}/assessments", status_code=201, response_model=AssessmentOut)
def create_assessment(
    trace_id: str, body: AssessmentIn, store: Traces, caller: Caller
) -> AssessmentOut:
    """Add an assessment; with an ``idempotency_key`` already used on this trace, replace that
    assessment instead (201 either way)."""
    trace_id = trace_id_of(trace_id)
    visible_trace(store, caller, trace_id)
    written = store.assessment_write(
        NewAssessment(
            trace_id=trace_id,
            name=body.name,
            value=body.value,
            source_type=body.source.type,
            source_id=body.source.id,
            rationale=body.rationale,
            error=body.error,
            metadata=body.metadata,
            idempotency_key=body.idempotency_key,
        )
    )
    return AssessmentOut.of(written)


@api.get("/{trace_id}/assessments", response_model=AssessmentListOut)
def list_assessments(trace_id: str, store: Traces, caller: Caller) -> AssessmentListOut:
    trace_id = trace_id_of(trace_id)
    visible_trace(store, caller, trace_id)
    found = store.assessments_list(trace_id)
    if found is None:
        raise NotFoundError(f"trace {trace_id!r} not found")
    return AssessmentListOut(assessments=[AssessmentOut.of(a) for a in found])


@api.delete("/{trace_id}/assessments/{assessment_id}", status_code=204)
def delete_assessment(trace_id: str, assessment_id: str, store: Traces, caller: Caller) -> Response:
    trace_id = trace_id_of(trace_id)
    visible_trace(store, caller, trace_id)
    if "\x00" in assessment_id or not store.assessment_delete(trace_id, assessment_id):
        raise NotFoundError(f"assessment {assessment_id[:64]!r} of trace {trace_id} not found")
    return Response(status_code=204)


router = APIRouter()
"""Everything above: ``POST /v1/traces`` and the ``/api/v1/traces/{trace_id}`` routes."""
router.include_router(otlp)
router.include_router(api)
