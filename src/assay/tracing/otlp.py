"""OTLP/HTTP trace requests in and out, with the official ``opentelemetry-proto`` messages.

A request body is protobuf (``application/x-protobuf``) or OTLP JSON (``application/json``:
lowerCamelCase names, hex trace and span ids), optionally gzip- or deflate-compressed. It is
decoded into :class:`IncomingSpan` values; spans that cannot be stored (bad ids, impossible
times) are rejected one by one and reported through ``partial_success``, as the OTLP
specification asks. A body that does not decode at all is an :class:`InvalidRequestError`.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from assay.errors import InvalidRequestError, RequestTooLargeError, UnsupportedMediaTypeError
from assay.tracing.model import Span, clean_text

__all__ = [
    "EXPERIMENT_ATTRIBUTE",
    "EXPERIMENT_HEADER",
    "JSON",
    "MAX_GZIP_MEMBERS",
    "PROTOBUF",
    "RESOURCE_COPIES_FACTOR",
    "Decoded",
    "IncomingSpan",
    "check_items",
    "decode_request",
    "encode_response",
    "encode_status",
    "media_type_of",
    "parse_export",
]

EXPERIMENT_ATTRIBUTE = "assay.experiment_id"
"""Resource attribute naming the experiment a resource's spans belong to."""
EXPERIMENT_HEADER = "x-assay-experiment-id"
"""Header naming the experiment of spans whose resource names none."""

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_MEDIA_TYPES = {PROTOBUF: PROTOBUF, "application/protobuf": PROTOBUF, JSON: JSON}
_MAX_NAME_CHARS = 1000
_MAX_INT64 = 2**63 - 1
_MAX_ATTRIBUTE_DEPTH = 32
MAX_GZIP_MEMBERS = 64
"""A gzip body may be several members (streams) back to back; more than this is refused (400).
Exporters send one."""
_INFLATE_SLICE = 64 * 1024
RESOURCE_COPIES_FACTOR = 8
"""A request may store at most this many times ``max_request_bytes`` of resource and scope
attributes, which are copied to each of their spans (413 beyond)."""
_KINDS = {v: k.removeprefix("SPAN_KIND_") for k, v in PbSpan.SpanKind.items()}
_STATUS_CODES = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclass(frozen=True)
class IncomingSpan:
    """A decoded span and the experiment its resource (or the request header) names."""

    experiment_id: str | None
    span: Span


@dataclass(frozen=True)
class Decoded:
    spans: list[IncomingSpan]
    rejected: int
    """Spans left out, with the first reason in ``error_message``."""
    error_message: str


def media_type_of(content_type: str | None) -> str:
    """The OTLP media type of a Content-Type header (415 for anything else)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in _MEDIA_TYPES:
        raise UnsupportedMediaTypeError(
            f"unsupported content type {content_type!r}: send {PROTOBUF} or {JSON}"
        )
    return _MEDIA_TYPES[media]


def decode_request(
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None,
    default_experiment_id: str | None,
    max_bytes: int,
    max_items: int | None = None,
) -> Decoded:
    """Decode one OTLP/HTTP trace export body into spans (InvalidRequestError if malformed;
    RequestTooLargeError if it holds more than ``max_items`` spans)."""
    message = ExportTraceServiceRequest()
    parse_export(
        message,
        body,
        content_type=content_type,
        content_encoding=content_encoding,
        max_bytes=max_bytes,
        hex_ids_to_base64=_hex_ids_to_base64,
    )
    if max_items is not None:
        count = sum(len(s.spans) for r in message.resource_spans for s in r.scope_spans)
        check_items(count, max_items, "spans")
    _check_copies(message, max_bytes)
    return _spans_of(message, default_experiment_id)


def check_items(count: int, max_items: int, what: str) -> None:
    """RequestTooLargeError (413) for an export of more than ``max_items`` spans or log
    records, before any is decoded."""
    if count > max_items:
        raise RequestTooLargeError(
            f"this request holds {count} {what}, over the limit of {max_items} per request "
            "(max_request_items, ASSAY_MAX_REQUEST_ITEMS): send them in several requests"
        )


def parse_export(
    message: Message,
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None,
    max_bytes: int,
    hex_ids_to_base64: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """Parse an OTLP/HTTP export body (protobuf or OTLP JSON, maybe compressed) into ``message``.

    Traces and logs share it; each signal names its own ids (``hex_ids_to_base64``), since
    OTLP JSON carries them as hex where protobuf's JSON mapping expects base64. Anything
    malformed is an InvalidRequestError.
    """
    media = media_type_of(content_type)
    raw = _decompress(body, content_encoding, max_bytes)
    if media == PROTOBUF:
        try:
            message.ParseFromString(raw)
        except (DecodeError, RuntimeWarning, ValueError) as exc:
            raise InvalidRequestError(f"malformed OTLP protobuf body: {exc}") from None
        return
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidRequestError(f"malformed OTLP JSON body: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequestError("malformed OTLP JSON body: not a JSON object")
    try:
        json_format.ParseDict(hex_ids_to_base64(document), message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise InvalidRequestError(f"malformed OTLP JSON body: {exc}") from None


def encode_response(media: str, rejected: int = 0, error_message: str = "") -> bytes:
    """An ExportTraceServiceResponse in the request's encoding."""
    response = ExportTraceServiceResponse()
    if rejected or error_message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = error_message
    if media == PROTOBUF:
        return response.SerializeToString()
    return json_format.MessageToJson(response, indent=None).encode()


_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 413: 8, 415: 3, 429: 8, 503: 14}


def encode_status(media: str, http_status: int, message: str) -> bytes:
    """The google.rpc.Status body OTLP/HTTP answers a failed request with."""
    status = status_pb2.Status(code=_GRPC_CODES.get(http_status, 13), message=message)
    if media == PROTOBUF:
        encoded: bytes = status.SerializeToString()
        return encoded
    return json_format.MessageToJson(status, indent=None).encode()


# -- decoding ------------------------------------------------------------------------------------


def _decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS
    else:
        raise UnsupportedMediaTypeError(
            f"unsupported content encoding {encoding!r}: send gzip, deflate or none"
        )
    # gzip allows several members back to back. The input is fed in slices of a view (no
    # copies), so a member's end costs at most one slice of ``unused_data``, never a copy of
    # the rest of the body: the work is linear in the body, capped at MAX_GZIP_MEMBERS members
    # and ``max_bytes`` of output.
    out = bytearray()
    view = memoryview(body)
    pos = members = 0
    try:
        while pos < len(view):
            members += 1
            if members > MAX_GZIP_MEMBERS:
                raise InvalidRequestError(
                    f"{encoding} body of more than {MAX_GZIP_MEMBERS} members (streams)"
                )
            inflater = zlib.decompressobj(wbits)
            while not inflater.eof and pos < len(view):
                piece = view[pos : pos + _INFLATE_SLICE]
                out += inflater.decompress(piece, max_bytes + 1 - len(out))
                if len(out) > max_bytes:
                    raise RequestTooLargeError(
                        f"decompressed body over the {max_bytes}-byte limit (max_request_bytes)"
                    )
                pos += len(piece) - len(inflater.unused_data)
            if not inflater.eof:
                raise InvalidRequestError(f"truncated {encoding} body")
    except zlib.error as exc:
        raise InvalidRequestError(f"malformed {encoding} body: {exc}") from None
    return bytes(out)


def _hex_ids_to_base64(document: dict[str, Any]) -> dict[str, Any]:
    """OTLP JSON carries trace and span ids as hex; protobuf's JSON mapping expects base64."""
    for resource_spans in _dicts(document.get("resourceSpans", document.get("resource_spans"))):
        for scope_spans in _dicts(
            resource_spans.get("scopeSpans", resource_spans.get("scope_spans"))
        ):
            for span in _dicts(scope_spans.get("spans")):
                _convert_ids(span, ("traceId", "spanId", "parentSpanId"))
                for link in _dicts(span.get("links")):
                    _convert_ids(link, ("traceId", "spanId"))
    return document


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _convert_ids(obj: dict[str, Any], camel_names: tuple[str, ...]) -> None:
    for camel in camel_names:
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
        for name in (camel, snake):
            value = obj.get(name)
            if isinstance(value, str):
                try:
                    obj[name] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise InvalidRequestError(
                        f"malformed OTLP JSON body: {name} {value[:40]!r} is not hex"
                    ) from None


def _check_copies(message: ExportTraceServiceRequest, max_bytes: int) -> None:
    """Resource and scope attributes are stored with every span of their scope: refuse (413)
    a request that would store more than RESOURCE_COPIES_FACTOR times ``max_bytes`` of
    them (a large resource over many small spans), before any is decoded."""
    copies = 0
    for resource_spans in message.resource_spans:
        size = resource_spans.resource.ByteSize()
        for scope_spans in resource_spans.scope_spans:
            copies += len(scope_spans.spans) * (size + scope_spans.scope.ByteSize())
    limit = RESOURCE_COPIES_FACTOR * max_bytes
    if copies > limit:
        raise RequestTooLargeError(
            f"resource attributes are stored with every span: this request would store "
            f"{copies} bytes of them, over the limit of {limit} "
            f"({RESOURCE_COPIES_FACTOR} x max_request_bytes); send fewer spans per request "
            "or fewer resource attributes"
        )


def _spans_of(message: ExportTraceServiceRequest, default_experiment: str | None) -> Decoded:
    spans: list[IncomingSpan] = []
    rejected = 0
    first_error = ""
    for resource_spans in message.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        experiment = resource.pop(EXPERIMENT_ATTRIBUTE, None)
        experiment_id = clean_text(str(experiment)) if experiment else default_experiment
        for scope_spans in resource_spans.scope_spans:
            if not scope_spans.spans:  # nothing to copy the resource to
                continue
            scope = dict(resource)
            if scope_spans.scope.name:
                scope["otel.scope.name"] = clean_text(scope_spans.scope.name)
            if scope_spans.scope.version:
                scope["otel.scope.version"] = clean_text(scope_spans.scope.version)
            for pb in scope_spans.spans:
                error = _invalid(pb)
                if error:
                    rejected += 1
                    first_error = first_error or error
                    continue
                spans.append(IncomingSpan(experiment_id, _span(pb, scope)))
    message_text = f"{rejected} span(s) rejected: {first_error}" if rejected else ""
    return Decoded(spans, rejected, message_text)


def _invalid(pb: PbSpan) -> str:
    if len(pb.trace_id) != 16 or not any(pb.trace_id):
        return "trace_id must be 16 bytes, not all zero"
    if len(pb.span_id) != 8 or not any(pb.span_id):
        return "span_id must be 8 bytes, not all zero"
    if pb.parent_span_id and len(pb.parent_span_id) != 8:
        return "parent_span_id must be empty or 8 bytes"
    if pb.start_time_unix_nano > _MAX_INT64 or pb.end_time_unix_nano > _MAX_INT64:
        return "span times must be before the year 2262"
    return ""


def _span(pb: PbSpan, resource: dict[str, Any]) -> Span:
    parent = pb.parent_span_id.hex() if pb.parent_span_id and any(pb.parent_span_id) else None
    end = pb.end_time_unix_nano or pb.start_time_unix_nano
    return Span(
        trace_id=pb.trace_id.hex(),
        span_id=pb.span_id.hex(),
        parent_span_id=parent,
        name=clean_text(pb.name)[:_MAX_NAME_CHARS],
        kind=_KINDS.get(pb.kind, "UNSPECIFIED"),
        status_code=_STATUS_CODES.get(pb.status.code, "UNSET"),
        status_message=clean_text(pb.status.message) or None,
        start_time_ns=pb.start_time_unix_nano,
        end_time_ns=max(end, pb.start_time_unix_nano),
        attributes=_attributes(pb.attributes),
        events=[
            {
                "name": clean_text(event.name),
                "time_unix_nano": event.time_unix_nano,
                "attributes": _attributes(event.attributes),
            }
            for event in pb.events
        ],
        links=[
            {
                "trace_id": link.trace_id.hex(),
                "span_id": link.span_id.hex(),
                "attributes": _attributes(link.attributes),
            }
            for link in pb.links
        ],
        resource=resource,
    )


def _attributes(pairs: Any) -> dict[str, Any]:
    return _kv(pairs, 0)


def _kv(pairs: Any, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kv: KeyValue
    for kv in pairs:
        out[clean_text(kv.key)] = _value(kv.value, depth)
    return out


def _value(value: AnyValue, depth: int) -> Any:
    if depth > _MAX_ATTRIBUTE_DEPTH:  # kept as its OTLP JSON text: the batch is not refused
        try:
            return clean_text(json_format.MessageToJson(value, indent=None))
        except RecursionError:
            return f"<attribute value nested deeper than {_MAX_ATTRIBUTE_DEPTH} levels>"
    which = value.WhichOneof("value")
    if which == "string_value":
        return clean_text(value.string_value)
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        number = value.double_value
        return number if math.isfinite(number) else str(number)
    if which == "array_value":
        return [_value(v, depth + 1) for v in value.array_value.values]
    if which == "kvlist_value":
        return _kv(value.kvlist_value.values, depth + 1)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return None
