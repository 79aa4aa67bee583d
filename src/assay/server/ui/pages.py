"""What every UI page shares: templates, the caller from the session cookie, login/logout,
and the redirect from ``/``."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from assay.config import Settings
from assay.errors import AuthenticationError
from assay.server.auth import Authenticator, Principal
from assay.server.ui.csrf import same_origin

__all__ = [
    "COOKIE",
    "STATIC_DIR",
    "LoginRequired",
    "UiCaller",
    "error_page",
    "render",
    "router",
    "templates",
    "ui_caller",
]

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
COOKIE = "assay_token"

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter()


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.2f} s"


templates.env.filters["when"] = _when
templates.env.filters["duration"] = _duration


class LoginRequired(Exception):
    """Raised by :func:`ui_caller` when auth is on and the cookie holds no valid token; the
    app turns it into a redirect to the login page."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def ui_caller(request: Request) -> Principal:
    """The caller of a UI request, from the session cookie."""
    authenticator: Authenticator = request.app.state.auth
    token = request.cookies.get(COOKIE)
    try:
        return authenticator.authenticate(f"Bearer {token}" if token else None)
    except AuthenticationError as exc:
        raise LoginRequired(str(exc)) from None


UiCaller = Annotated[Principal, Depends(ui_caller)]


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """A UI request that failed (not found, forbidden, bad input): the reason as a page."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return render(
        request, "error.html", status_code=status, status=status, title=title, message=message
    )


def is_fragment(request: Request) -> bool:
    """Whether ``assay.js`` asks for the live part only (see ``data-refresh``)."""
    return request.headers.get("x-fragment") == "1"


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page: ``template`` with ``context``, plus what the layout needs."""
    auth: Authenticator = request.app.state.auth
    context.setdefault("auth_enabled", auth.enabled)
    return templates.TemplateResponse(request, template, context, status_code=status_code)


@router.get("/")
def home() -> Response:
    return RedirectResponse("/ui/jobs", status_code=303)


@router.get("/ui/login", response_class=HTMLResponse)
def login_page(request: Request, reason: str | None = None, next: str = "/ui/jobs") -> Response:
    return render(request, "login.html", auth_enabled=False, reason=reason, next=_local(next))


SentFrom = Annotated[str | None, Depends(same_origin)]
"""The origin a POST came from: one of this server's (the UI router checked it already)."""


@router.post("/ui/login")
def login(
    request: Request,
    origin: SentFrom,
    token: Annotated[str, Form(max_length=500)],
    next: Annotated[str, Form(max_length=2000)] = "/ui/jobs",
) -> Response:
    """Check the token, then keep it in the session cookie: HttpOnly, SameSite=Strict,
    ``Secure`` when the page was served over https, kept ``ui_session_max_age_s``."""
    authenticator: Authenticator = request.app.state.auth
    settings: Settings = request.app.state.settings
    try:
        authenticator.authenticate(f"Bearer {token.strip()}")
    except AuthenticationError as exc:
        return render(
            request, "login.html", 401, auth_enabled=False, reason=str(exc), next=_local(next)
        )
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(
        COOKIE,
        token.strip(),
        max_age=math.ceil(settings.ui_session_max_age_s),
        httponly=True,
        samesite="strict",
        secure=_https(origin),
    )
    return response


@router.post("/ui/logout")
def logout(origin: SentFrom) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=_https(origin))
    return response


def _https(origin: str | None) -> bool:
    """Whether the page that sent the form was served over https."""
    return origin is not None and origin.startswith("https://")


def _local(path: str) -> str:
    """Only redirect within this site: a path, not ``//host`` or ``/\\host`` (which browsers
    read as ``//host``), nor one with characters browsers drop from URLs (tab, newline)."""
    local = path.startswith("/") and not path.startswith(("//", "/\\"))
    return path if local and not any(c < " " or c == "\x7f" for c in path) else "/ui/jobs"
