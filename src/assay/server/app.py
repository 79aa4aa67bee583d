"""The FastAPI application: ``create_app(settings)``; ``assay server`` runs it under uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal
from urllib.parse import urlencode

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from assay import __version__
from assay.config import Settings
from assay.errors import (
    AssayError,
    AuthenticationError,
    PermissionDeniedError,
    RequestTooLargeError,
)
from assay.server import ui, validation
from assay.server.auth import (
    ANONYMOUS,
    PRINCIPAL_KEY,
    Authenticator,
    HostCheck,
    Principal,
    who_guards,
)
from assay.server.errors import (
    BodyTooLarge,
    CatchUnexpected,
    assay_error_response,
    install_error_handlers,
)
from assay.server.otlp_grpc import OtlpGrpcReceiver, start_receiver
from assay.server.otlp_http import otlp_error_response
from assay.server.routes import (
    jobs,
    mlflow,
    mlflow_artifacts,
    mlflow_jobs,
    mlflow_traces,
    otlp_logs,
    scoring,
    system,
    traces,
    tracking,
)
from assay.server.runtime import Runtime
from assay.server.ui.csrf import refuse_cross_site
from assay.server.ui.pages import COOKIE, LoginRequired
from assay.util import collector_for_serving

__all__ = ["OPEN_BODY_BYTES", "Gate", "create_app"]

OPEN_BODY_BYTES = 64 * 1024
"""The largest body a request may send where nobody is authenticated first (the login form)."""


def create_app(settings: Settings) -> FastAPI:
    """The app; its lifespan opens the store (migrating it) and starts workers and leadership."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        app.state.runtime = runtime
        app.state.auth = Authenticator(settings, runtime.stores.tokens)
        runtime.start()
        receiver: OtlpGrpcReceiver | None = None
        try:
            receiver = start_receiver(app.state, settings)  # OTLP/gRPC, unless off
            with collector_for_serving():
                yield
        finally:
            if receiver is not None:
                receiver.stop()
            runtime.stop()

    # /docs (Swagger UI) and /redoc load their scripts and styles from this server (they ship in
    # the fastapi-offline package), never from a CDN: they work with no network. Under
    # /static/ they are open, as the UI's own static files are.
    app = FastAPIOffline(
        static_url="/static/docs",
        title="assay",
        version=__version__,
        description="Durable jobs and online scoring for LLM and ML platforms.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    validation.install(app)  # before the routers: a NUL in the path or query is a 400
    app.include_router(jobs.router)
    app.include_router(system.router)
    app.include_router(tracking.router)
    app.include_router(traces.router)
    app.include_router(scoring.router)
    # MLflow's REST API on the same stores (not in the published OpenAPI schema).
    app.include_router(mlflow.router)
    app.include_router(mlflow.version_router)
    app.include_router(mlflow_artifacts.router)
    app.include_router(mlflow_artifacts.artifacts_router)
    app.include_router(mlflow_jobs.router)
    app.include_router(mlflow_traces.router)
    app.include_router(mlflow_traces.v2_router)
    app.include_router(otlp_logs.router)
    ui.install(app)
    app.add_exception_handler(LoginRequired, _to_login)
    # The last added is the outermost: CatchUnexpected answers whatever the gate or the app
    # raises unexpectedly.
    app.add_middleware(Gate, settings=settings)
    app.add_middleware(CatchUnexpected)
    return app


async def _to_login(request: Request, exc: Exception) -> Response:
    """A UI page without a valid session: to the login page, then back."""
    return _login_redirect(request.url.path, str(exc))


def _login_redirect(path: str, reason: str) -> Response:
    query = urlencode({"reason": reason, "next": path})
    return RedirectResponse(f"/ui/login?{query}", status_code=303)


class Gate:
    """What every HTTP request passes before the app reads a byte of its body.

    0. Requests a browser was made to send by a page of another site, refused with 403:
       a ``Host`` the server is not known by, while auth is off (DNS rebinding:
       :class:`~assay.server.auth.HostCheck`), and an unsafe method (POST, PUT, PATCH,
       DELETE) from another origin (:func:`~assay.server.ui.csrf.refuse_cross_site`).
       Programs send no ``Origin`` and the name they dialled as ``Host``: they pass.
    1. A body announced (Content-Length) over the limit: 413 at once.
    2. A request with a body, on a path that needs a caller
       (:func:`~assay.server.auth.who_guards`): the caller is authenticated from the
       ``Authorization`` header or the UI's session cookie. A missing or bad token is
       answered (401; 403 for an expired job token; a UI page: the login page) without
       reading the body; the caller is kept in the scope for the routes
       (:func:`~assay.server.auth.principal`), so the token is checked once. Requests
       without a body are authenticated by their routes, as before.
    3. The body is counted while the app reads it: past the limit, reading raises
       :class:`~assay.server.errors.BodyTooLarge` (413), so a body sent without a
       Content-Length (chunked) is never held beyond the limit either.

    The limit is ``max_request_bytes``, and :data:`OPEN_BODY_BYTES` where no caller is
    authenticated first.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.max_bytes = settings.max_request_bytes
        self.hosts = HostCheck(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            refused = self.hosts.refusal(headers)
            if refused is not None:
                raise PermissionDeniedError(refused)
            refuse_cross_site(Request(scope), self.settings)
        except AssayError as exc:
            await _refuse(scope, receive, send, exc)
            return
        guard = who_guards(scope["path"])
        limit, setting = self.max_bytes, "max_request_bytes"
        if guard is None and limit > OPEN_BODY_BYTES:
            limit, setting = OPEN_BODY_BYTES, "unauthenticated requests"
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            message = f"request body over the {limit}-byte limit ({setting})"
            await _refuse(scope, receive, send, RequestTooLargeError(message))
            return
        has_body = "transfer-encoding" in headers or length not in (None, "0")
        if guard is not None and has_body:
            try:
                scope[PRINCIPAL_KEY] = await _authenticate(scope, guard)
            except AssayError as exc:
                await _refuse(scope, receive, send, exc)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        await self.app(scope, counted, send)


async def _authenticate(scope: Scope, guard: Literal["header", "cookie"]) -> Principal:
    authenticator: Authenticator | None = getattr(scope["app"].state, "auth", None)
    if authenticator is None:  # the app is not started (no lifespan): nothing to check against
        raise AuthenticationError("the server is not ready to authenticate requests")
    if not authenticator.enabled:
        return ANONYMOUS
    if guard == "header":
        credential = Headers(scope=scope).get("authorization")
    else:
        token = Request(scope).cookies.get(COOKIE)
        credential = f"Bearer {token}" if token else None
    # Verifying an API token reads the database: not on the event loop.
    return await run_in_threadpool(authenticator.authenticate, credential)


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: AssayError) -> None:
    """Answer a request the gate stops, as its route would have: OTLP's google.rpc.Status,
    the login page for a UI page without a session, else the JSON error (a UI error page)."""
    path: str = scope["path"]
    if path.startswith("/v1/"):
        response = otlp_error_response(Headers(scope=scope).get("content-type"), exc)
    elif who_guards(path) == "cookie" and isinstance(exc, AuthenticationError):
        response = _login_redirect(path, str(exc))
    else:
        response = assay_error_response(Request(scope), exc)
    await response(scope, receive, send)
