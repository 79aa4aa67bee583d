"""What routes get from the running server, as FastAPI dependencies: the runtime's one
:class:`~assay.stores.Stores` and the services built on it (nothing here builds a store)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from assay.scoring.service import ScoringService
from assay.stores import Stores
from assay.tracing.store import TraceStore
from assay.tracking.store import TrackingStore

__all__ = [
    "Scoring",
    "Traces",
    "Tracking",
    "scoring_service",
    "stores",
    "trace_store",
    "tracking_store",
]


def stores(request: Request) -> Stores:
    """The stores of the server's runtime (built once when the app starts)."""
    found: Stores = request.app.state.runtime.stores
    return found


def trace_store(request: Request) -> TraceStore:
    return stores(request).traces


def tracking_store(request: Request) -> TrackingStore:
    return stores(request).tracking


def scoring_service(request: Request) -> ScoringService:
    service: ScoringService = request.app.state.runtime.scoring
    return service


Traces = Annotated[TraceStore, Depends(trace_store)]
Tracking = Annotated[TrackingStore, Depends(tracking_store)]
Scoring = Annotated[ScoringService, Depends(scoring_service)]
