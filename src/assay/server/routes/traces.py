"""Trace ingest and reads: ``POST /v1/traces`` (OTLP/HTTP), ``GET /api/v1/traces/{trace_id}``
and the assessments of a trace (DESIGN.md, Tracking and traces).

OTLP answers follow the OTLP/HTTP specification: an ``ExportTraceServiceResponse`` (with
``partial_success`` when spans were rejected) or, on failure, a ``google.rpc.Status``, each in
the encoding of the request (protobuf or JSON).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from assay.errors import AssayError, NotFoundError
from assay.server.auth import Caller, Principal, principal, require_scope, require_some_scope
from assay.server.deps import trace_store
from assay.server.errors import status_for
from assay.server.otlp_ingest import OtlpIngest, experiment_header, log_rejected
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
from assay.tracing.otlp import (
    JSON,
    Decoded,
    encode_response,
    encode_status,
    media_type_of,
)
from assay.tracing.store import TraceStore

__all__ = ["otlp_error_response", "router", "visible_trace"]


# -- OTLP ingest -----------------------------------------------------------------------------------

otlp = APIRouter(tags=["traces"])


@otlp.post(
    "/v1/traces",
    summary="OTLP/HTTP trace export (protobuf or JSON, optionally gzip)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
    responses={
        200: {"description": "ExportTraceServiceResponse, in the request's encoding"},
        400: {"description": "google.rpc.Status: malformed body or no experiment"},
        404: {"description": "google.rpc.Status: unknown experiment"},
        415: {"description": "google.rpc.Status: unsupported content type or encoding"},
    },
)
async def export_traces(request: Request) -> Response:
    """Store the spans of an OTLP export request (see TraceStore.spans_ingest)."""
    content_type = request.headers.get("content-type")
    try:
        media = media_type_of(content_type)
        # The app's gate authenticated the caller before any of the body was read; what can
        # be refused without the body is refused before it is read too.
        caller = principal(request)
        require_some_scope(caller, "experiment_id", "send traces")
        body = await request.body()  # counted by the gate: at most max_request_bytes
        decoded = await run_in_threadpool(_ingest, request, caller, body, media)
    except (AssayError, StarletteHTTPException) as exc:
        return otlp_error_response(content_type, exc, signal="traces")
    return Response(
        encode_response(media, decoded.rejected, decoded.error_message), media_type=media
    )


def otlp_error_response(
    content_type: str | None, exc: AssayError | StarletteHTTPException, *, signal: str = "otlp"
) -> Response:
    """A failed OTLP request's answer: a google.rpc.Status in the request's encoding (JSON
    when it has none we know). Logged at WARNING with its reason."""
    try:
        media = media_type_of(content_type)
    except AssayError:
        media = JSON
    if isinstance(exc, AssayError):
        status, message = status_for(exc), str(exc)
    else:
        status, message = exc.status_code, str(exc.detail)
    log_rejected(signal, "http", status, message)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(
        encode_status(media, status, message), status_code=status, media_type=media, headers=headers
    )


def _ingest(request: Request, caller: Principal, body: bytes, media: str) -> Decoded:
    """The same code path as OTLP/gRPC (:mod:`assay.server.otlp_ingest`: experiments from
    the resource or the headers, else the default experiment)."""
    return OtlpIngest.of(request.app.state).spans(
        caller,
        body,
        media=media,
        encoding=request.headers.get("content-encoding"),
        experiment=experiment_header(request.headers.get),
        transport="http",
    )


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

Store = Annotated[TraceStore, Depends(trace_store)]


def visible_trace(store: TraceStore, caller: Principal, trace_id: str) -> Trace:
    trace = store.trace_get(trace_id)
    if trace is None:
        raise NotFoundError(f"trace {trace_id!r} not found")
    require_scope(caller, "experiment_id", trace.experiment_id)
    return trace


@api.get("", response_model=TracePageOut)
def search_traces(
    store: Store,
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
def get_trace(trace_id: str, store: Store, caller: Caller) -> TraceDetailOut:
    """A trace with its spans (in start order) and its assessments."""
    trace_id = trace_id_of(trace_id)
    detail = store.trace_detail(trace_id)
    if detail is None:
        raise NotFoundError(f"trace {trace_id!r} not found")
    require_scope(caller, "experiment_id", detail.trace.experiment_id)
    return TraceDetailOut.of(detail)


@api.post("/{trace_id}/assessments", status_code=201, response_model=AssessmentOut)
def create_assessment(
    trace_id: str, body: AssessmentIn, store: Store, caller: Caller
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
def list_assessments(trace_id: str, store: Store, caller: Caller) -> AssessmentListOut:
    trace_id = trace_id_of(trace_id)
    visible_trace(store, caller, trace_id)
    found = store.assessments_list(trace_id)
    if found is None:
        raise NotFoundError(f"trace {trace_id!r} not found")
    return AssessmentListOut(assessments=[AssessmentOut.of(a) for a in found])


@api.delete("/{trace_id}/assessments/{assessment_id}", status_code=204)
def delete_assessment(trace_id: str, assessment_id: str, store: Store, caller: Caller) -> Response:
    trace_id = trace_id_of(trace_id)
    visible_trace(store, caller, trace_id)
    if "\x00" in assessment_id or not store.assessment_delete(trace_id, assessment_id):
        raise NotFoundError(f"assessment {assessment_id[:64]!r} of trace {trace_id} not found")
    return Response(status_code=204)


router = APIRouter()
"""Everything above: ``POST /v1/traces`` and the ``/api/v1/traces/{trace_id}`` routes."""
router.include_router(otlp)
router.include_router(api)
