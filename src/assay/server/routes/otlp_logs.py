"""``POST /v1/logs``: OTLP/HTTP log export, for the GenAI content events that instrumentations
such as ``opentelemetry-instrumentation-openai-v2`` send as log records
(:mod:`assay.tracing.otlp_logs`). They join their spans whichever arrives first
(:mod:`assay.tracing.log_events`).

Answers as ``/v1/traces`` does: an ``ExportLogsServiceResponse`` (``partial_success`` when
GenAI events were rejected), or a ``google.rpc.Status``, in the request's encoding.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from assay.server import otlp_http

__all__ = ["router"]

router = APIRouter(tags=["traces"])


@router.post(
    "/v1/logs",
    summary="OTLP/HTTP log export (GenAI content events; protobuf or JSON, optionally gzip)",
    openapi_extra=otlp_http.REQUEST_BODY,
    responses=otlp_http.responses("ExportLogsServiceResponse", "malformed body"),
)
async def export_logs(request: Request) -> Response:
    """Store the GenAI events of an OTLP logs export request."""
    return await otlp_http.export(request, "logs")
