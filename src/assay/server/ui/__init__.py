"""The web UI: server-rendered pages (Jinja2) with a few lines of JavaScript for live parts.

Pages read the same stores and services as the REST API and apply the same permission checks
(:mod:`assay.server.auth`). With auth on, the UI asks for an API token once and keeps it in an
HttpOnly, SameSite=Strict cookie (``Secure`` over https, kept ``ui_session_max_age_s``); every
page then authenticates with it like an ``Authorization: Bearer`` header. Every request that
may change something must come from one of the UI's own pages (:mod:`.csrf`). No build step:
templates and static files ship in the package.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from assay.server.ui import experiments, jobs, pages
from assay.server.ui.csrf import same_origin
from assay.server.ui.pages import STATIC_DIR

__all__ = ["install"]


def install(app: FastAPI) -> None:
    """Mount the UI's pages and static files on ``app``; every page checks where an unsafe
    request came from before anything else (so before the login check too)."""
    router = APIRouter(include_in_schema=False, dependencies=[Depends(same_origin)])
    router.include_router(pages.router)
    router.include_router(jobs.router)
    router.include_router(experiments.router)
    app.include_router(router)
    app.state.error_page = pages.error_page
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
