"""What every OTLP request does once its caller is known, over HTTP (``/v1/traces``,
``/v1/logs``) and gRPC (:mod:`assay.server.otlp_grpc`) alike: decode the body, find each
span's or event's experiment, check the caller may write there, store.

The experiment of a resource: its attribute ``assay.experiment_id``, else the request's
header ``x-assay-experiment-id``, else ``x-mlflow-experiment-id`` (what MLflow's clients send),
else the default experiment. ``0`` names the default experiment too (MLflow's id for it): the
``Default`` experiment of the tracking store, made on first use.

A refused request is logged here at WARNING with its reason (exporters show only the status).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from assay.server.auth import Principal, require_scope
from assay.tracing.log_events import LogEvent
from assay.tracing.model import Span
from assay.tracing.otlp import EXPERIMENT_HEADER, Decoded, decode_request
from assay.tracing.otlp_logs import DecodedLogs, decode_logs_request
from assay.tracing.store import TraceStore
from assay.tracking.store import DEFAULT_EXPERIMENT_ID, TrackingStore

__all__ = ["MLFLOW_EXPERIMENT_HEADER", "OtlpIngest", "experiment_header", "log_rejected"]

log = logging.getLogger("assay.server.otlp")

MLFLOW_EXPERIMENT_HEADER = "x-mlflow-experiment-id"
"""The header MLflow's span exporters name their experiment with."""
_lock = threading.Lock()


def experiment_header(header: Callable[[str], str | None]) -> str | None:
    """The experiment a request's headers (or gRPC metadata) name, if any."""
    return header(EXPERIMENT_HEADER) or header(MLFLOW_EXPERIMENT_HEADER) or None


def log_rejected(signal: str, transport: str, status: int, reason: str) -> None:
    log.warning(
        "otlp.rejected signal=%s transport=%s status=%s reason=%s",
        signal,
        transport,
        status,
        reason,
    )


class OtlpIngest:
    """Decode-and-store for OTLP requests on one database (one per app: :meth:`of`)."""

    def __init__(self, traces: TraceStore, tracking: TrackingStore, max_bytes: int) -> None:
        self.traces = traces
        self.tracking = tracking
        self.max_bytes = max_bytes

    @classmethod
    def of(cls, state: Any) -> OtlpIngest:
        """The app's ingest (``state``: ``app.state``, once the runtime started)."""
        with _lock:
            ingest: OtlpIngest | None = getattr(state, "otlp_ingest", None)
            if ingest is None:
                stores = state.runtime.stores
                ingest = cls(stores.traces, stores.tracking, state.settings.max_request_bytes)
                state.otlp_ingest = ingest
        return ingest

    def spans(
        self,
        caller: Principal,
        body: bytes,
        *,
        media: str,
        encoding: str | None,
        experiment: str | None,
        transport: str,
    ) -> Decoded:
        """Store the spans of one trace export request (the caller is authenticated)."""
        decoded = decode_request(
            body,
            content_type=media,
            content_encoding=encoding,
            default_experiment_id=experiment,
            max_bytes=self.max_bytes,
        )
        by_experiment: dict[str, list[Span]] = defaultdict(list)
        resolve = self._resolver()
        for incoming in decoded.spans:
            by_experiment[resolve(incoming.experiment_id)].append(incoming.span)
        for experiment_id in by_experiment:
            require_scope(caller, "experiment_id", experiment_id)
        self.traces.spans_ingest(by_experiment)
        if decoded.rejected:
            log.warning(
                "otlp.partial signal=traces transport=%s rejected=%s reason=%s",
                transport,
                decoded.rejected,
                decoded.error_message,
            )
        return decoded

    def logs(
        self,
        caller: Principal,
        body: bytes,
        *,
        media: str,
        encoding: str | None,
        experiment: str | None,
        transport: str,
    ) -> DecodedLogs:
        """Store the GenAI events of one logs export request (the caller is authenticated)."""
        decoded = decode_logs_request(
            body,
            content_type=media,
            content_encoding=encoding,
            default_experiment_id=experiment,
            max_bytes=self.max_bytes,
        )
        by_experiment: dict[str, list[LogEvent]] = defaultdict(list)
        resolve = self._resolver()
        for incoming in decoded.events:
            by_experiment[resolve(incoming.experiment_id)].append(incoming.event)
        for experiment_id in by_experiment:
            require_scope(caller, "experiment_id", experiment_id)
        if by_experiment:
            self.traces.log_events_ingest(by_experiment)
        if decoded.rejected:
            log.warning(
                "otlp.partial signal=logs transport=%s rejected=%s reason=%s",
                transport,
                decoded.rejected,
                decoded.error_message,
            )
        return decoded

    def _resolver(self) -> Callable[[str | None], str]:
        """Experiment ids as stored: none, or ``0``, is the default experiment (looked up, or
        made, once per request and only when needed)."""
        default: list[str] = []

        def resolve(experiment_id: str | None) -> str:
            if experiment_id not in (None, "", DEFAULT_EXPERIMENT_ID):
                assert experiment_id is not None
                return experiment_id
            if not default:
                default.append(self.tracking.default_experiment().id)
            return default[0]

        return resolve
