"""Experiment tracking: experiments, runs, params, metrics, tags and inputs."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from assay.tracking.model import (
        Experiment,
        ExperimentPage,
        Metric,
        MetricPage,
        Run,
        RunInput,
        RunPage,
        RunStatus,
    )
    from assay.tracking.queueing import FailedOperation, FlushHandle, QueueingClient
    from assay.tracking.store import TrackingStore
    from assay.tracking.transport import RestTransport, StoreTransport, Transport

# Names load from their modules on first use: a training script that logs over HTTP
# (QueueingClient) never imports the store (SQLAlchemy) or the migrations (Alembic).
_EXPORTS = {
    "Experiment": "assay.tracking.model",
    "ExperimentPage": "assay.tracking.model",
    "Metric": "assay.tracking.model",
    "MetricPage": "assay.tracking.model",
    "Run": "assay.tracking.model",
    "RunInput": "assay.tracking.model",
    "RunPage": "assay.tracking.model",
    "RunStatus": "assay.tracking.model",
    "FailedOperation": "assay.tracking.queueing",
    "FlushHandle": "assay.tracking.queueing",
    "QueueingClient": "assay.tracking.queueing",
    "TrackingStore": "assay.tracking.store",
    "RestTransport": "assay.tracking.transport",
    "StoreTransport": "assay.tracking.transport",
    "Transport": "assay.tracking.transport",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'assay.tracking' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "Experiment",
    "ExperimentPage",
    "FailedOperation",
    "FlushHandle",
    "Metric",
    "MetricPage",
    "QueueingClient",
    "RestTransport",
    "Run",
    "RunInput",
    "RunPage",
    "RunStatus",
    "StoreTransport",
    "TrackingStore",
    "Transport",
]
