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
    body over max_request_bytes            413 (BodyTooLarge, raised while the body is read)
    JudgeError                             502 (an LLM judge endpoint failed)
    StoreError                             503 (the database is unreachable or failing)
    any other AssayError                   500
    any other exception                    500 ``internal_error`` (CatchUnexpected)

Every answer is a complete response on a connection that stays open: an unexpected exception
is answered by :class:`CatchUnexpected` and not raised on to the server, which would close
the keep-alive connection after the 500.

The MLflow-compatible routes (:class:`MlflowRoute`) and every path under
:data:`MLFLOW_PATH_PREFIXES` answer in MLflow's shape instead:
``{"error_code": "...", "message": "..."}`` with MLflow's HTTP status for the code (the MLflow
client reads ``error_code``); the jobs routes add ``detail``, as MLflow's FastAPI jobs API
does. The assay error each code stands for:

==========================  ======  ===========================================================
RESOURCE_DOES_NOT_EXIST     404     NotFoundError
INVALID_PARAMETER_VALUE     400     InvalidRequestError, a malformed body, a param changed
RESOURCE_ALREADY_EXISTS     400     an experiment name taken (the route says so)
UNAUTHENTICATED             401     AuthenticationError
PERMISSION_DENIED           403     PermissionDeniedError
TEMPORARILY_UNAVAILABLE     503     StoreError (the client retries it)
ENDPOINT_NOT_FOUND          404     a path or method the surface does not serve
INTERNAL_ERROR              500     anything else (logged as ``request.crashed``)
==========================  ======  ===========================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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

__all__ = [
    "MLFLOW_PATH_PREFIXES",
    "BodyTooLarge",
    "CatchUnexpected",
    "MlflowJobsRoute",
    "MlflowRoute",
    "assay_error_response",
    "error_response",
    "install_error_handlers",
    "mlflow_error",
    "status_for",
    "unmatched_response",
]

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


class BodyTooLarge(StarletteHTTPException):
    """A request body read past ``max_request_bytes``: raised from the ASGI ``receive`` while
    the body streams in, so nothing more is read. An HTTPException, which FastAPI's body
    parsing passes on (it would turn any other exception into a 400), answered with 413."""

    def __init__(self, max_bytes: int, setting: str = "max_request_bytes") -> None:
        super().__init__(413, f"request body over the {max_bytes}-byte limit ({setting})")


ErrorPage = Callable[[Request, int, str], Response]
"""How the web UI answers a failed page (``app.state.error_page``, set by
:func:`assay.server.ui.install`): errors never import the UI, whose routes import them."""


def _respond(request: Request, status: int, code: str, message: str) -> Response:
    """The API's JSON error, or, for a web UI page, the same reason as a page; on MLflow's
    paths, MLflow's error shape (its routes answer their own errors in it)."""
    error_page: ErrorPage | None = getattr(request.app.state, "error_page", None)
    if error_page is not None and request.url.path.startswith("/ui/"):
        return error_page(request, status, message)
    if request.url.path.startswith(MLFLOW_PATH_PREFIXES):
        return unmatched_response(status, message, detail=request.url.path.startswith("/ajax-api/"))
    return error_response(status, code, message)


def assay_error_response(request: Request, exc: AssayError) -> Response:
    """The answer to an AssayError (JSON, or a page for the web UI)."""
    status = status_for(exc)
    if status >= 500:
        log.error("request.failed code=%s", exc.code, exc_info=exc)
    return _respond(request, status, exc.code, str(exc))


def install_error_handlers(app: FastAPI) -> None:
    """The handlers of expected errors. Unexpected ones are answered by the
    :class:`CatchUnexpected` middleware, which the app adds outermost."""

    @app.exception_handler(AssayError)
    async def _assay_error(request: Request, exc: AssayError) -> Response:
        return assay_error_response(request, exc)

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


class CatchUnexpected:
    """Answers any exception the app raises before it started a response with a 500
    ``internal_error`` and returns normally, so the server keeps the connection open.

    Starlette hands an ``Exception`` handler to its outermost middleware, which answers and
    then raises the exception again for the server to log; uvicorn then closes the
    connection, so every 500 cost the client its keep-alive connection. An exception raised
    after the response started cannot be answered any more: it is raised on (the connection
    is closed, as it must be with half a response sent)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            request = Request(scope)
            log.error(
                "request.crashed method=%s path=%s", request.method, scope["path"], exc_info=exc
            )
            response = _respond(
                request, 500, "internal_error", f"internal error: {type(exc).__name__}"
            )
            await response(scope, receive, send)


# -- MLflow's error shape ---------------------------------------------------------------------

MLFLOW_PATH_PREFIXES = (
    "/api/2.0/mlflow/",
    "/api/2.0/mlflow-artifacts/",
    "/api/3.0/mlflow/",
    "/ajax-api/3.0/jobs",
)
"""Paths answered in MLflow's error shape, even when no route serves them."""

_MLFLOW_STATUS = {
    "RESOURCE_DOES_NOT_EXIST": 404,
    "ENDPOINT_NOT_FOUND": 404,
    "INVALID_PARAMETER_VALUE": 400,
    "RESOURCE_ALREADY_EXISTS": 400,
    "BAD_REQUEST": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "REQUEST_LIMIT_EXCEEDED": 429,
    "TEMPORARILY_UNAVAILABLE": 503,
    "INTERNAL_ERROR": 500,
}
_MLFLOW_CODES: list[tuple[type[AssayError], str]] = [
    (NotFoundError, "RESOURCE_DOES_NOT_EXIST"),
    (InvalidRequestError, "INVALID_PARAMETER_VALUE"),
    (ConflictError, "INVALID_PARAMETER_VALUE"),
    (AuthenticationError, "UNAUTHENTICATED"),
    (PermissionDeniedError, "PERMISSION_DENIED"),
    (StoreError, "TEMPORARILY_UNAVAILABLE"),
]


def mlflow_error(code: str, message: str, *, detail: bool = False) -> JSONResponse:
    """MLflow's error answer; ``detail``: also as FastAPI's ``detail`` (the jobs API)."""
    body: dict[str, str] = {"error_code": code, "message": message}
    if detail:
        body["detail"] = message
    status = _MLFLOW_STATUS.get(code, 400)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _describe_mlflow(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + ("; ".join(parts) or "malformed body")


def _mlflow_answer(exc: Exception, detail: bool) -> Response:
    if isinstance(exc, RequestValidationError):
        return mlflow_error("INVALID_PARAMETER_VALUE", _describe_mlflow(exc), detail=detail)
    if isinstance(exc, AssayError):
        code = next((c for cls, c in _MLFLOW_CODES if isinstance(exc, cls)), "INTERNAL_ERROR")
        if code == "INTERNAL_ERROR":
            log.error("request.failed code=%s", exc.code, exc_info=exc)
        return mlflow_error(code, str(exc), detail=detail)
    if isinstance(exc, StarletteHTTPException):
        return unmatched_response(exc.status_code, str(exc.detail), detail=detail)
    log.error("request.crashed", exc_info=exc)
    return mlflow_error("INTERNAL_ERROR", f"internal error: {type(exc).__name__}", detail=detail)


def unmatched_response(status: int, message: str, *, detail: bool = False) -> JSONResponse:
    """An error raised outside the MLflow routes (no route for the path, a wrong method, a
    body over the size limit) on an MLflow path, in MLflow's shape with the status kept."""
    code = {
        400: "INVALID_PARAMETER_VALUE",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "ENDPOINT_NOT_FOUND",
        405: "ENDPOINT_NOT_FOUND",
        413: "REQUEST_LIMIT_EXCEEDED",
        422: "INVALID_PARAMETER_VALUE",
    }.get(status, "INTERNAL_ERROR" if status >= 500 else "BAD_REQUEST")
    response = mlflow_error(code, message, detail=detail)
    response.status_code = status
    return response


class MlflowRoute(APIRoute):
    """A route whose every error (bad body, auth, store) is answered in MLflow's shape."""

    detail = False

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        detail = self.detail

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return _mlflow_answer(exc, detail)

        return route


class MlflowJobsRoute(MlflowRoute):
    detail = True
