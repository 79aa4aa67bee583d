"""OTLP log requests in and out (``POST /v1/logs``, gRPC ``LogsService/Export``).

assay keeps one kind of log record: a GenAI content event (``gen_ai.user.message``,
``gen_ai.choice``, ``gen_ai.client.inference.operation.details``...), named by the record's
``event_name`` field or its ``event.name`` attribute, with the trace and span id of the call.
Such a record becomes a :class:`~assay.tracing.log_events.LogEvent` of its span: its body's
fields (or, for a body that is not a map, ``content``) and its attributes, as the attributes
of a span event. Other records are accepted and dropped; a GenAI event without a span to join
is rejected and counted in ``partial_success``.

Bodies are decoded as trace requests are (:mod:`assay.tracing.otlp`): protobuf or OTLP JSON
(hex ids), optionally gzip- or deflate-compressed, within ``max_request_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from assay.tracing.log_events import LogEvent
from assay.tracing.model import clean_text
from assay.tracing.otlp import (
    EXPERIMENT_ATTRIBUTE,
    PROTOBUF,
    _attributes,
    _convert_ids,
    _dicts,
    _value,
    check_items,
    parse_export,
)

__all__ = [
    "EVENT_NAME_ATTRIBUTE",
    "DecodedLogs",
    "IncomingLogEvent",
    "decode_logs_request",
    "encode_logs_response",
]

EVENT_NAME_ATTRIBUTE = "event.name"
"""Where older emitters put a log record's event name (newer ones use ``event_name``)."""
_GENAI_PREFIX = "gen_ai."
_MAX_NAME_CHARS = 250
_MAX_INT64 = 2**63 - 1


@dataclass(frozen=True)
class IncomingLogEvent:
    """A decoded GenAI event and the experiment its resource (or the request header) names."""

    experiment_id: str | None
    event: LogEvent


@dataclass(frozen=True)
class DecodedLogs:
    events: list[IncomingLogEvent]
    rejected: int
    """GenAI events left out, with the first reason in ``error_message``."""
    error_message: str
    ignored: int
    """Records that are not GenAI events (accepted and dropped)."""


def decode_logs_request(
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None,
    default_experiment_id: str | None,
    max_bytes: int,
    max_items: int | None = None,
) -> DecodedLogs:
    """Decode one OTLP logs export body (InvalidRequestError if malformed;
    RequestTooLargeError if it holds more than ``max_items`` log records)."""
    message = ExportLogsServiceRequest()
    parse_export(
        message,
        body,
        content_type=content_type,
        content_encoding=content_encoding,
        max_bytes=max_bytes,
        hex_ids_to_base64=_hex_ids_to_base64,
    )
    if max_items is not None:
        count = sum(len(s.log_records) for r in message.resource_logs for s in r.scope_logs)
        check_items(count, max_items, "log records")
    return _events_of(message, default_experiment_id)


def encode_logs_response(media: str, rejected: int = 0, error_message: str = "") -> bytes:
    """An ExportLogsServiceResponse in the request's encoding."""
    response = ExportLogsServiceResponse()
    if rejected or error_message:
        response.partial_success.rejected_log_records = rejected
        response.partial_success.error_message = error_message
    if media == PROTOBUF:
        encoded: bytes = response.SerializeToString()
        return encoded
    return json_format.MessageToJson(response, indent=None).encode()


def _hex_ids_to_base64(document: dict[str, Any]) -> dict[str, Any]:
    """OTLP JSON carries trace and span ids as hex; protobuf's JSON mapping expects base64."""
    for resource_logs in _dicts(document.get("resourceLogs", document.get("resource_logs"))):
        for scope_logs in _dicts(resource_logs.get("scopeLogs", resource_logs.get("scope_logs"))):
            for record in _dicts(scope_logs.get("logRecords", scope_logs.get("log_records"))):
                _convert_ids(record, ("traceId", "spanId"))
    return document


def _events_of(message: ExportLogsServiceRequest, default_experiment: str | None) -> DecodedLogs:
    events: list[IncomingLogEvent] = []
    rejected = ignored = 0
    first_error = ""
    for resource_logs in message.resource_logs:
        resource = _attributes(resource_logs.resource.attributes)
        experiment = resource.get(EXPERIMENT_ATTRIBUTE)
        experiment_id = clean_text(str(experiment)) if experiment else default_experiment
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attributes = _attributes(record.attributes)
                name = record.event_name or attributes.pop(EVENT_NAME_ATTRIBUTE, "")
                attributes.pop(EVENT_NAME_ATTRIBUTE, None)
                if not isinstance(name, str) or not name.startswith(_GENAI_PREFIX):
                    ignored += 1
                    continue
                error = _invalid(record)
                if error:
                    rejected += 1
                    first_error = first_error or f"{name}: {error}"
                    continue
                events.append(IncomingLogEvent(experiment_id, _event(record, name, attributes)))
    message_text = f"{rejected} log record(s) rejected: {first_error}" if rejected else ""
    return DecodedLogs(events, rejected, message_text, ignored)


def _invalid(record: LogRecord) -> str:
    if len(record.trace_id) != 16 or not any(record.trace_id):
        return "a GenAI event needs the trace_id of its span (16 bytes, not all zero)"
    if len(record.span_id) != 8 or not any(record.span_id):
        return "a GenAI event needs the span_id of its span (8 bytes, not all zero)"
    if max(record.time_unix_nano, record.observed_time_unix_nano) > _MAX_INT64:
        return "log record times must be before the year 2262"
    return ""


def _event(record: LogRecord, name: str, attributes: dict[str, Any]) -> LogEvent:
    if record.HasField("body"):
        body = _value(record.body, 0)
        if isinstance(body, dict):
            attributes.update(body)
        elif body is not None:
            attributes["content"] = body
    return LogEvent(
        trace_id=record.trace_id.hex(),
        span_id=record.span_id.hex(),
        name=clean_text(name)[:_MAX_NAME_CHARS],
        time_unix_nano=record.time_unix_nano or record.observed_time_unix_nano,
        attributes=attributes,
    )
