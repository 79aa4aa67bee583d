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
from typing import Any, Literal, TypeVar

from assay.server.auth import Principal, require_scope
from assay.tracing.otlp import EXPERIMENT_HEADER, decode_request, encode_response
from assay.tracing.otlp_logs import decode_logs_request, encode_logs_response
from assay.tracing.store import TraceStore
from assay.tracking.store import DEFAULT_EXPERIMENT_ID, TrackingStore

__all__ = [
    "MLFLOW_EXPERIMENT_HEADER",
    "OtlpIngest",
    "Signal",
    "experiment_header",
    "log_rejected",
]

log = logging.getLogger("assay.server.otlp")

MLFLOW_EXPERIMENT_HEADER = "x-mlflow-experiment-id"
"""The header MLflow's span exporters name their experiment with."""
_lock = threading.Lock()
T = TypeVar("T")

Signal = Literal["traces", "logs"]
"""What an OTLP export request carries: spans, or log records (GenAI events)."""


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

    def __init__(
        self, traces: TraceStore, tracking: TrackingStore, max_bytes: int, max_items: int
    ) -> None:
        self.traces = traces
        self.tracking = tracking
        self.max_bytes = max_bytes
        self.max_items = max_items

    @classmethod
    def of(cls, state: Any) -> OtlpIngest:
        """The app's ingest (``state``: ``app.state``, once the runtime started)."""
        with _lock:
            ingest: OtlpIngest | None = getattr(state, "otlp_ingest", None)
            if ingest is None:
                stores = state.runtime.stores
                settings = state.settings
                ingest = cls(
                    stores.traces,
                    stores.tracking,
                    settings.max_request_bytes,
                    settings.max_request_items,
                )
                state.otlp_ingest = ingest
        return ingest

    def export(
        self,
        signal: Signal,
        caller: Principal,
        body: bytes,
        *,
        media: str,
        encoding: str | None,
        experiment: str | None,
        transport: str,
    ) -> bytes:
        """Store the spans (``traces``) or GenAI events (``logs``) of one export request (the
        caller is authenticated); the export response, encoded as ``media``."""
        options: dict[str, Any] = {
            "content_type": media,
            "content_encoding": encoding,
            "default_experiment_id": experiment,
            "max_bytes": self.max_bytes,
            "max_items": self.max_items,
        }
        if signal == "traces":
            spans = decode_request(body, **options)
            grouped = self._by_experiment(caller, [(s.experiment_id, s.span) for s in spans.spans])
            self.traces.spans_ingest(grouped)
            rejected, reason = spans.rejected, spans.error_message
            answer = encode_response(media, rejected, reason)
        else:
            logs = decode_logs_request(body, **options)
            events = self._by_experiment(caller, [(e.experiment_id, e.event) for e in logs.events])
            if events:
                self.traces.log_events_ingest(events)
            rejected, reason = logs.rejected, logs.error_message
            answer = encode_logs_response(media, rejected, reason)
        if rejected:
            log.warning(
                "otlp.partial signal=%s transport=%s rejected=%s reason=%s",
                signal,
                transport,
                rejected,
                reason,
            )
        return answer

    def _by_experiment(
        self, caller: Principal, items: list[tuple[str | None, T]]
    ) -> dict[str, list[T]]:
        """``(experiment id, item)`` pairs grouped by experiment as stored, once the caller
        may write to each of those experiments."""
        grouped: dict[str, list[T]] = defaultdict(list)
        resolve = self._resolver()
        for experiment_id, item in items:
            grouped[resolve(experiment_id)].append(item)
        for experiment_id in grouped:
            require_scope(caller, "experiment_id", experiment_id)
        return grouped

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
