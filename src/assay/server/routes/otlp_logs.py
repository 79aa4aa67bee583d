"""``POST /v1/logs``: OTLP/HTTP log export, for the GenAI content events that instrumentations
such as ``opentelemetry-instrumentation-openai-v2`` send as log records
(:mod:`assay.tracing.otlp_logs`). They join their spans whichever arrives first
(:mod:`assay.tracing.log_events`).

Answers as ``/v1/traces`` does: an ``ExportLogsServiceResponse`` (``partial_success`` when
GenAI events were rejected), or a ``google.rpc.Status``, in the request's encoding.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from assay.errors import AssayError
from assay.server.auth import Principal, principal, require_some_scope
from assay.server.otlp_ingest import OtlpIngest, experiment_header
from assay.server.routes.traces import otlp_error_response
from assay.tracing.otlp import media_type_of
from assay.tracing.otlp_logs import DecodedLogs, encode_logs_response

__all__ = ["router"]

router = APIRouter(tags=["traces"])


@router.post(
    "/v1/logs",
    summary="OTLP/HTTP log export (GenAI content events; protobuf or JSON, optionally gzip)",
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
        200: {"description": "ExportLogsServiceResponse, in the request's encoding"},
        400: {"description": "google.rpc.Status: malformed body"},
        404: {"description": "google.rpc.Status: unknown experiment"},
        415: {"description": "google.rpc.Status: unsupported content type or encoding"},
    },
)
async def export_logs(request: Request) -> Response:
    """Store the GenAI events of an OTLP logs export request."""
    content_type = request.headers.get("content-type")
    try:
        media = media_type_of(content_type)
        caller = principal(request)  # authenticated by the app's gate, before the body
        require_some_scope(caller, "experiment_id", "send logs")
        body = await request.body()  # counted by the gate: at most max_request_bytes
        decoded = await run_in_threadpool(_ingest, request, caller, body, media)
    except (AssayError, StarletteHTTPException) as exc:
        return otlp_error_response(content_type, exc, signal="logs")
    return Response(
        encode_logs_response(media, decoded.rejected, decoded.error_message), media_type=media
    )


def _ingest(request: Request, caller: Principal, body: bytes, media: str) -> DecodedLogs:
    return OtlpIngest.of(request.app.state).logs(
        caller,
        body,
        media=media,
        encoding=request.headers.get("content-encoding"),
        experiment=experiment_header(request.headers.get),
        transport="http",
    )
