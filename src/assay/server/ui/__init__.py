"""The web UI: server-rendered pages (Jinja2) with a few lines of JavaScript for live parts.

Pages read the same stores and services as the REST API and apply the same permission checks
(:mod:`assay.server.auth`). With auth on, the UI asks for an API token once and keeps it in an
HttpOnly, SameSite=Strict cookie; every page then authenticates with it like an
``Authorization: Bearer`` header. No build step: templates and static files ship in the
package.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from assay.server.ui import experiments, jobs, pages
from assay.server.ui.pages import STATIC_DIR

__all__ = ["install"]


def install(app: FastAPI) -> None:
    """Mount the UI's pages and static files on ``app``."""
    router = APIRouter(include_in_schema=False)
    router.include_router(pages.router)
    router.include_router(jobs.router)
    router.include_router(experiments.router)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
