"""The FastAPI application: ``create_app(settings)``; ``assay server`` runs it under uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlencode

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from assay import __version__
from assay.config import Settings
from assay.server import ui
from assay.server.auth import Authenticator
from assay.server.errors import error_response, install_error_handlers
from assay.server.routes import jobs, scoring, system, traces, tracking
from assay.server.runtime import Runtime
from assay.server.ui.pages import LoginRequired

__all__ = ["create_app"]


def create_app(settings: Settings) -> FastAPI:
    """The app; its lifespan opens the store (migrating it) and starts workers and leadership."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        app.state.runtime = runtime
        app.state.auth = Authenticator(settings, runtime.backend.engine)
        runtime.start()
        try:
            yield
        finally:
            runtime.stop()

    app = FastAPI(
        title="assay",
        version=__version__,
        description="Durable jobs and online scoring for LLM and ML platforms.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(system.router)
    app.include_router(tracking.router)
    app.include_router(traces.router)
    app.include_router(scoring.router)
    ui.install(app)
    app.add_exception_handler(LoginRequired, _to_login)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    return app


async def _to_login(request: Request, exc: Exception) -> Response:
    """A UI page without a valid session: to the login page, then back."""
    query = urlencode({"reason": str(exc), "next": request.url.path})
    return RedirectResponse(f"/ui/login?{query}", status_code=303)


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413: by Content-Length, or, for a body
    sent without one (chunked), by reading it up to the limit before the app sees it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "request_too_large",
            f"request body over the {self.max_bytes}-byte limit (max_request_bytes)",
        )
        await response(scope, receive, send)
