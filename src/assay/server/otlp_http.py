"""OTLP over HTTP, what ``POST /v1/traces`` and ``POST /v1/logs`` share: the request's path to
:class:`~assay.server.otlp_ingest.OtlpIngest` and the answers, which follow the OTLP/HTTP
specification: an export response (with ``partial_success`` when items were rejected) or, on
failure, a ``google.rpc.Status``, each in the encoding of the request (protobuf or JSON)."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from assay.errors import AssayError
from assay.server.auth import Principal, principal, require_some_scope
from assay.server.errors import status_for
from assay.server.otlp_ingest import OtlpIngest, Signal, experiment_header, log_rejected
from assay.tracing.otlp import JSON, encode_status, media_type_of

__all__ = ["REQUEST_BODY", "export", "otlp_error_response", "responses"]

REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}
"""The routes' ``openapi_extra``: FastAPI reads no body of theirs, they decode it."""


def responses(answer: str, malformed: str) -> dict[int | str, dict[str, Any]]:
    """The routes' answers for the OpenAPI schema: ``answer`` on success, else a Status."""
    return {
        200: {"description": f"{answer}, in the request's encoding"},
        400: {"description": f"google.rpc.Status: {malformed}"},
        404: {"description": "google.rpc.Status: unknown experiment"},
        415: {"description": "google.rpc.Status: unsupported content type or encoding"},
    }


async def export(request: Request, signal: Signal) -> Response:
    """Store what an OTLP export request carries and answer it."""
    content_type = request.headers.get("content-type")
    try:
        media = media_type_of(content_type)
        # The app's gate authenticated the caller before any of the body was read; what can
        # be refused without the body is refused before it is read too.
        caller = principal(request)
        require_some_scope(caller, "experiment_id", f"send {signal}")
        body = await request.body()  # counted by the gate: at most max_request_bytes
        answer = await run_in_threadpool(_ingest, request, signal, caller, body, media)
    except (AssayError, StarletteHTTPException) as exc:
        return otlp_error_response(content_type, exc, signal=signal)
    return Response(answer, media_type=media)


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


def _ingest(request: Request, signal: Signal, caller: Principal, body: bytes, media: str) -> bytes:
    """The same code path as OTLP/gRPC (:mod:`assay.server.otlp_ingest`: experiments from
    the resource or the headers, else the default experiment)."""
    return OtlpIngest.of(request.app.state).export(
        signal,
        caller,
        body,
        media=media,
        encoding=request.headers.get("content-encoding"),
        experiment=experiment_header(request.headers.get),
        transport="http",
    )
