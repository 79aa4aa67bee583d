"""The one place where errors become HTTP answers: ``{"error": {"code", "message"}}``.

::

    UnsupportedMediaTypeError              415
    RequestTooLargeError                   413
    InvalidRequestError (other subclasses) 400
    AuthenticationError                    401
    PermissionDeniedError                  403
    NotFoundError                          404
    ConflictError                          409
    request validation (FastAPI)           422
    body over max_request_bytes            413
    JudgeError                             502 (an LLM judge endpoint failed)
    StoreError                             503 (the database is unreachable or failing)
    any other AssayError                   500
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from assay.errors import (
    AssayError,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    JudgeError,
    NotFoundError,
    PermissionDeniedError,
    RequestTooLargeError,
    StoreError,
    UnsupportedMediaTypeError,
)

__all__ = ["error_response", "install_error_handlers", "status_for"]

log = logging.getLogger("assay.server")

_STATUS: list[tuple[type[AssayError], int]] = [
    (UnsupportedMediaTypeError, 415),
    (RequestTooLargeError, 413),
    (InvalidRequestError, 400),
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (JudgeError, 502),
    (StoreError, 503),
]

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def status_for(exc: AssayError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _allowed_methods(request: Request) -> list[str]:
    """Every method served at the request's path (Starlette's 405 names only one route's)."""
    return [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]


def _respond(request: Request, status: int, code: str, message: str) -> Response:
    """The API's JSON error, or, for a web UI page, the same reason as a page."""
    if request.url.path.startswith("/ui/"):
        from assay.server.ui.pages import error_page  # the UI's routes import this module

        return error_page(request, status, message)
    return error_response(status, code, message)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AssayError)
    async def _assay_error(request: Request, exc: AssayError) -> Response:
        status = status_for(exc)
        if status >= 500:
            log.error("request.failed code=%s", exc.code, exc_info=exc)
        return _respond(request, status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _respond(request, 422, "invalid_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        response = _respond(request, exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("request.crashed", exc_info=exc)
        return _respond(request, 500, "internal_error", f"internal error: {type(exc).__name__}")
