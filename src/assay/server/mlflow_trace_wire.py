"""MLflow's wire format for traces: assay's traces, spans and assessments as the MLflow client
reads them (protobuf JSON of ``TraceInfoV3``, OTLP ``Span`` and ``Assessment``), MLflow's
search filters in assay's grammar, and MLflow's assessments as assay's.

How the two models meet:

- Trace ids: assay stores 32 hex digits; MLflow's are ``tr-<hex>``. Both are accepted, MLflow's
  form is answered.
- A trace's info carries assay's tags and metadata as stored (derived from span attributes,
  :mod:`assay.tracing.derive`), plus what MLflow reads from its own keys: the token usage
  (``mlflow.trace.tokenUsage``), the session (``mlflow.trace.session``), the root span's name
  (``mlflow.traceName``, where the spans are read) and ``mlflow.trace.spansLocation =
  TRACKING_STORE``, which sends the client to ``traces/batchGet`` for the spans.
- Spans go out as OTLP spans in protobuf JSON (ids in base64, attributes as ``AnyValue``),
  the shape ``mlflow.entities.Span.from_otel_proto`` reads; attribute values are the decoded
  values assay stored.
- An MLflow assessment is a feedback or an expectation; assay's have no such kind, so an
  expectation is stored with ``metadata["mlflow.assessmentKind"] = "expectation"`` (the key is
  hidden again on the way out). A feedback's error ``{error_code, error_message}`` is stored
  as assay's ``error``.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from assay.errors import InvalidRequestError
from assay.tracing.model import (
    Assessment,
    AssessmentSource,
    NewAssessment,
    Span,
    Trace,
    TraceDetail,
    trace_id_of,
)

__all__ = [
    "KIND_KEY",
    "SPANS_LOCATION_TAG",
    "assessment_json",
    "mlflow_filter",
    "mlflow_order_by",
    "mlflow_trace_id",
    "new_assessment",
    "span_json",
    "trace_info_json",
    "trace_json",
]

SPANS_LOCATION_TAG = "mlflow.trace.spansLocation"
KIND_KEY = "mlflow.assessmentKind"
"""The metadata key that marks an assessment written as an MLflow expectation."""
_INT64 = 2**63
_JSON = "JSON_FORMAT"


def mlflow_trace_id(trace_id: str) -> str:
    return f"tr-{trace_id}"


# -- traces ------------------------------------------------------------------------------------


def _timestamp(ms: int) -> str:
    """A ``google.protobuf.Timestamp`` in JSON (RFC 3339, UTC)."""
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def trace_info_json(
    trace: Trace, assessments: list[Assessment] | None = None, root_name: str | None = None
) -> dict[str, Any]:
    """A ``TraceInfoV3``; ``assessments`` and ``root_name`` where they were read."""
    metadata = dict(trace.metadata)
    usage = {
        k: v
        for k, v in (
            ("input_tokens", trace.input_tokens),
            ("output_tokens", trace.output_tokens),
            ("total_tokens", trace.total_tokens),
        )
        if v is not None
    }
    if usage:
        metadata["mlflow.trace.tokenUsage"] = json.dumps(usage)
    if trace.session_id is not None:
        metadata["mlflow.trace.session"] = trace.session_id
    tags = {**trace.tags, SPANS_LOCATION_TAG: "TRACKING_STORE"}
    if root_name is not None:
        tags["mlflow.traceName"] = root_name
    info: dict[str, Any] = {
        "trace_id": mlflow_trace_id(trace.trace_id),
        "trace_location": {
            "type": "MLFLOW_EXPERIMENT",
            "mlflow_experiment": {"experiment_id": trace.experiment_id},
        },
        "request_time": _timestamp(trace.start_time_ms),
        "state": trace.status.value,
        "trace_metadata": metadata,
        "tags": tags,
        "assessments": [assessment_json(a) for a in assessments or []],
    }
    if trace.duration_ms is not None:
        info["execution_duration"] = f"{trace.duration_ms / 1000:.3f}s"
    if trace.request_preview is not None:
        info["request_preview"] = trace.request_preview
    if trace.response_preview is not None:
        info["response_preview"] = trace.response_preview
    return info


def trace_json(detail: TraceDetail) -> dict[str, Any]:
    """A ``Trace``: its info (with assessments and the root span's name) and its spans."""
    root = next((s.name for s in detail.spans if s.span_id == detail.trace.root_span_id), None)
    return {
        "trace_info": trace_info_json(detail.trace, detail.assessments, root),
        "spans": [span_json(s) for s in detail.spans],
    }


# -- spans -------------------------------------------------------------------------------------


def _id(hex_id: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


def _any_value(value: Any) -> dict[str, Any]:
    """An OTLP ``AnyValue`` in protobuf JSON."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"bool_value": value}
    if isinstance(value, int) and -_INT64 <= value < _INT64:
        return {"int_value": str(value)}
    if isinstance(value, float):
        return {"double_value": value}
    if isinstance(value, list):
        return {"array_value": {"values": [_any_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlist_value": {"values": _key_values(value)}}
    return {"string_value": value if isinstance(value, str) else json.dumps(value)}


def _key_values(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": str(k), "value": _any_value(v)} for k, v in attributes.items()]


def span_json(span: Span) -> dict[str, Any]:
    """An OTLP ``Span`` in protobuf JSON."""
    out: dict[str, Any] = {
        "trace_id": _id(span.trace_id),
        "span_id": _id(span.span_id),
        "name": span.name,
        "kind": f"SPAN_KIND_{span.kind}",
        "start_time_unix_nano": str(span.start_time_ns),
        "end_time_unix_nano": str(span.end_time_ns),
        "attributes": _key_values(span.attributes),
        "events": [
            {
                "name": event.get("name", ""),
                "time_unix_nano": str(event.get("time_unix_nano", 0)),
                "attributes": _key_values(event.get("attributes") or {}),
            }
            for event in span.events
        ],
        "links": [
            {
                "trace_id": _id(link["trace_id"]),
                "span_id": _id(link["span_id"]),
                "attributes": _key_values(link.get("attributes") or {}),
            }
            for link in span.links
            if link.get("trace_id") and link.get("span_id")
        ],
        "status": {"code": f"STATUS_CODE_{span.status_code}", "message": span.status_message or ""},
    }
    if span.parent_span_id is not None:
        out["parent_span_id"] = _id(span.parent_span_id)
    return out


# -- search ------------------------------------------------------------------------------------

# MLflow's entity prefixes that name an assay one by another name.
_PREFIXES = {
    "attributes": "trace",
    "attribute": "trace",
    "request_metadata": "metadata",
    "feedback": "assessment",
    "expectation": "assessment",
}
_PREFIX = re.compile(r"(?<![\w.`])(" + "|".join(_PREFIXES) + r")\.")
# MLflow reads a field without an entity as a trace attribute.
_BARE = re.compile(r"(?<![\w.`])(status|timestamp(?:_ms)?|execution_time(?:_ms)?)(?![\w.`])")
_ALIASES = re.compile(r"(?<![\w.`])trace\.(timestamp|execution_time)(?![\w])")
# Quoted strings and backticked keys, left as they are.
_QUOTED = re.compile(r"""('(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|`[^`]*`)""")


def _rename(text: str) -> str:
    text = _PREFIX.sub(lambda m: _PREFIXES[m.group(1)] + ".", text)
    text = _BARE.sub(lambda m: f"trace.{m.group(1)}", text)
    return _ALIASES.sub(lambda m: f"trace.{m.group(1)}_ms", text)


def mlflow_filter(text: str | None) -> str | None:
    """An MLflow ``search_traces`` filter in assay's grammar (:mod:`assay.tracing.filters`):
    ``attributes.``/``attribute.`` (or no entity, for ``status``, ``timestamp_ms`` and
    ``execution_time_ms``) are ``trace.``, ``request_metadata.`` is ``metadata.``,
    ``feedback.``/``expectation.`` are ``assessment.``, ``timestamp`` and ``execution_time``
    take their ``_ms``. Anything assay's grammar does not know fails there
    (InvalidFilterError, 400)."""
    if not text:
        return None
    parts = _QUOTED.split(text)
    return "".join(p if i % 2 else _rename(p) for i, p in enumerate(parts))


def mlflow_order_by(order_by: list[str]) -> list[str]:
    """MLflow's ``order_by`` (``timestamp_ms DESC``, ``attributes.timestamp``) in assay's."""
    return [_rename(item.strip()) for item in order_by]


# -- assessments -------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def assessment_json(a: Assessment) -> dict[str, Any]:
    """An MLflow ``Assessment``: a feedback, or an expectation when written as one."""
    metadata = dict(a.metadata or {})
    kind = metadata.pop(KIND_KEY, "feedback")
    out: dict[str, Any] = {
        "assessment_id": a.id,
        "assessment_name": a.name,
        "trace_id": mlflow_trace_id(a.trace_id),
        "source": {"source_type": a.source_type.value, "source_id": a.source_id},
        "create_time": _timestamp(a.created_at_ms),
        "last_update_time": _timestamp(a.updated_at_ms),
        "metadata": {str(k): _text(v) for k, v in metadata.items()},
    }
    if a.rationale is not None:
        out["rationale"] = a.rationale
    if kind == "expectation":
        # A list or an object goes as JSON text, as MLflow sends it: protobuf's Value would
        # turn its integers into floats.
        structured = isinstance(a.value, list | dict)
        out["expectation"] = (
            {"serialized_value": {"serialization_format": _JSON, "value": json.dumps(a.value)}}
            if structured
            else {"value": a.value}
        )
        return out
    feedback: dict[str, Any] = {"value": a.value}
    if a.error is not None:
        error = a.error if isinstance(a.error, dict) else {"error_message": _text(a.error)}
        feedback["error"] = {
            "error_code": _text(error.get("error_code", "ERROR")),
            "error_message": _text(error.get("error_message", "")),
        }
    out["feedback"] = feedback
    return out


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{what} must be an object")
    return value


def _expectation_value(expectation: dict[str, Any]) -> Any:
    """An expectation's value: ``value``, or a ``serialized_value`` in JSON."""
    serialized = _object(expectation.get("serialized_value"), "expectation.serialized_value")
    if not serialized:
        return expectation.get("value")
    if serialized.get("serialization_format") != _JSON:
        raise InvalidRequestError(f"expectation.serialized_value must be in {_JSON}")
    try:
        return json.loads(str(serialized.get("value", "")))
    except ValueError:
        raise InvalidRequestError("expectation.serialized_value.value is not JSON") from None


def new_assessment(trace_id: str, body: Any) -> NewAssessment:
    """The assessment a ``CreateAssessment`` body (``{assessment: {...}}``) writes."""
    item = _object(_object(body, "the body").get("assessment"), "assessment")
    name = item.get("assessment_name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError("assessment.assessment_name is required")
    feedback = _object(item.get("feedback"), "assessment.feedback")
    expectation = _object(item.get("expectation"), "assessment.expectation")
    if bool(feedback) == bool(expectation):
        raise InvalidRequestError("an assessment has exactly one of feedback or expectation")
    source = _object(item.get("source"), "assessment.source")
    source_type = str(source.get("source_type") or "CODE")
    if source_type not in AssessmentSource.__members__:
        raise InvalidRequestError(
            f"assessment.source.source_type must be one of {', '.join(AssessmentSource)}"
        )
    metadata: dict[str, Any] = {
        str(k): v for k, v in _object(item.get("metadata"), "assessment.metadata").items()
    }
    if expectation:
        metadata[KIND_KEY] = "expectation"
    error = _object(feedback.get("error"), "assessment.feedback.error") or None
    rationale = item.get("rationale")
    return NewAssessment(
        trace_id=trace_id_of(trace_id),
        name=name,
        value=_expectation_value(expectation) if expectation else feedback.get("value"),
        source_type=AssessmentSource(source_type),
        source_id=str(source.get("source_id") or "default"),
        rationale=rationale if isinstance(rationale, str) and rationale else None,
        error=error,
        metadata=metadata or None,
    )
