"""``/health`` and ``/metrics``."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from assay.db.migrate import is_current
from assay.server.auth import Caller, require_admin
from assay.server.runtime import Runtime
from assay.server.schemas.errors import ErrorOut

__all__ = ["router"]

router = APIRouter(tags=["system"])


@router.get("/health")
def health(request: Request) -> JSONResponse:
    """200 when the database answers, its schema is current and the worker loops are alive;
    503 otherwise, naming what is wrong."""
    runtime: Runtime = request.app.state.runtime
    checks: dict[str, Any] = {}
    try:
        with runtime.backend.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
        checks["migrations"] = "ok" if is_current(runtime.backend.engine) else "behind"
    except sa.exc.SQLAlchemyError as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    alive = runtime.workers_alive()
    checks["workers"] = f"{len(runtime.workers)} alive" if alive else "a worker loop died"
    ok = checks["database"] == "ok" and checks["migrations"] == "ok" and alive
    status = "ok" if ok else "unhealthy"
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ok else 503)


_EXPOSITION = {
    "text/plain": {"schema": {"type": "string"}},
    "application/openmetrics-text": {"schema": {"type": "string"}},
}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": _EXPOSITION}, 403: {"model": ErrorOut}},
)
def metrics(request: Request, caller: Caller) -> Response:
    """The Prometheus exposition of this process's job metrics and the store's gauges
    (OpenMetrics when the scraper asks for it). Admin-only when auth is on."""
    require_admin(caller, "read /metrics")
    runtime: Runtime = request.app.state.runtime
    body, content_type = runtime.stores.metrics.expose(request.headers.get("accept"))
    return Response(body, media_type=content_type)
