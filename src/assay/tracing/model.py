"""What traces, spans and assessments are, as typed values.

Trace times are epoch milliseconds (UTC); span times are epoch nanoseconds, as OTLP sends them.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from assay import jsonvalue
from assay.errors import InvalidRequestError, NotFoundError

__all__ = [
    "ASSESSMENT_UPDATES",
    "Assessment",
    "AssessmentSource",
    "NewAssessment",
    "Span",
    "Trace",
    "TraceDetail",
    "TracePage",
    "TraceStatus",
    "assessment_row",
    "clean_text",
    "default_idempotency_key",
    "trace_id_of",
]


class TraceStatus(enum.StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    """The root span has not arrived yet."""
    OK = "OK"
    ERROR = "ERROR"
    """The root span ended with status ERROR."""


class AssessmentSource(enum.StrEnum):
    HUMAN = "HUMAN"
    LLM_JUDGE = "LLM_JUDGE"
    CODE = "CODE"


@dataclass(frozen=True)
class Span:
    """One OTLP span as stored; ``attributes`` hold decoded OTLP values (JSON-able)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    status_code: str
    status_message: str | None
    start_time_ns: int
    end_time_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)
    """The resource's attributes, plus ``otel.scope.name``/``otel.scope.version``."""

    @property
    def is_root(self) -> bool:
        return self.parent_span_id is None


@dataclass(frozen=True)
class Trace:
    """The summary of one trace, derived from its spans (recomputed when more arrive)."""

    trace_id: str
    experiment_id: str
    status: TraceStatus
    request: Any
    response: Any
    request_preview: str | None
    response_preview: str | None
    start_time_ms: int
    duration_ms: int | None
    completed_at_ms: int | None
    """Database time at which the root span arrived; None while the trace is in progress."""
    session_id: str | None
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    cost: float | None
    metadata: dict[str, str]
    tags: dict[str, str]
    root_span_id: str | None
    span_count: int
    created_at_ms: int
    updated_at_ms: int
    model: str | None = None
    """The LLM the trace's spans name (:func:`assay.tracing.messages.model_name`)."""


@dataclass(frozen=True)
class TracePage:
    traces: list[Trace]
    next_page_token: str | None


@dataclass(frozen=True)
class NewAssessment:
    """An assessment to write. With an ``idempotency_key``, writing the same key on the same
    trace again replaces the earlier assessment instead of adding one."""

    trace_id: str
    name: str
    value: Any
    source_type: AssessmentSource
    source_id: str
    rationale: str | None = None
    error: Any = None
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Assessment:
    id: str
    trace_id: str
    name: str
    value: Any
    rationale: str | None
    source_type: AssessmentSource
    source_id: str
    error: Any
    metadata: dict[str, Any] | None
    idempotency_key: str | None
    created_at_ms: int
    updated_at_ms: int


@dataclass(frozen=True)
class TraceDetail:
    trace: Trace
    spans: list[Span]
    assessments: list[Assessment]


def default_idempotency_key(trace_id: str, name: str, source_id: str) -> str:
    """The key online scorers write with: one assessment per (trace, name, source id)."""
    text = json.dumps([trace_id, name, source_id], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def clean_text(text: str) -> str:
    """Text every database stores: no NUL (PostgreSQL refuses it), no lone surrogates."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if text.isascii():  # O(1) in CPython, and most text is: no surrogate to look for
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


_MAX_KEY_CHARS = 250
ASSESSMENT_UPDATES = (
    "name",
    "value",
    "rationale",
    "source_type",
    "source_id",
    "error",
    "metadata_json",
    "updated_at_ms",
)
"""The columns an assessment upsert replaces when its idempotency key exists."""


def _json_text(value: Any, what: str) -> str | None:
    """Plain JSON every reader can render again (:mod:`assay.jsonvalue`): no NaN or Infinity,
    no lone surrogates, at most 64 levels deep."""
    return None if value is None else jsonvalue.dumps(value, f"assessment {what}")


def _key(value: str, what: str) -> str:
    text = clean_text(value)
    if not 0 < len(text) <= _MAX_KEY_CHARS:
        raise InvalidRequestError(f"assessment {what} must be 1 to {_MAX_KEY_CHARS} characters")
    return text


def assessment_row(item: NewAssessment) -> dict[str, Any]:
    """The row of a new assessment (validated; without its times)."""
    return {
        "id": str(uuid.uuid4()),
        "trace_id": item.trace_id,
        "name": _key(item.name, "name"),
        "value": _json_text(item.value, "value"),
        "rationale": None if item.rationale is None else clean_text(item.rationale),
        "source_type": AssessmentSource(item.source_type).value,
        "source_id": _key(item.source_id, "source id"),
        "error": _json_text(item.error, "error"),
        "metadata_json": _json_text(item.metadata, "metadata"),
        "idempotency_key": (
            None if item.idempotency_key is None else _key(item.idempotency_key, "idempotency key")
        ),
    }


_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def trace_id_of(text: str) -> str:
    """The stored form of a trace id given by a caller: 32 hex digits (any case), optionally as
    MLflow writes them (``tr-<hex>``). Anything else names no trace (NotFoundError)."""
    normal = text.lower().removeprefix("tr-")
    if not _TRACE_ID.fullmatch(normal):
        raise NotFoundError(f"trace {text[:64]!r} not found")
    return normal
