"""Experiment tracking: experiments, runs, params, metrics, tags and inputs."""

from __future__ import annotations

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
