"""The summary of a trace, derived from all of its spans that have arrived.

Three attribute conventions are read:

=================  ===========================================================================
OpenInference      ``input.value``/``output.value`` (with ``input.mime_type``), token counts
                   ``llm.token_count.{prompt,completion,total}``, ``llm.cost.total``,
                   ``session.id``, ``user.id``, ``metadata`` (a JSON object), ``tag.tags``
OpenTelemetry      ``gen_ai.input.messages``/``gen_ai.output.messages`` (attributes, or on a
GenAI              ``gen_ai.client.inference.operation.details`` event), the older
                   ``gen_ai.content.prompt``/``gen_ai.content.completion``,
                   ``gen_ai.{system,user,assistant,tool}.message`` and ``gen_ai.choice`` events,
                   ``gen_ai.prompt``/``gen_ai.completion`` attributes,
                   ``gen_ai.usage.{input,output}_tokens``, ``gen_ai.conversation.id``
MLflow             ``mlflow.spanInputs``/``mlflow.spanOutputs`` (JSON), ``mlflow.chat.tokenUsage``,
                   ``mlflow.llm.cost``, ``mlflow.trace.session``
assay              ``assay.metadata.<key>`` and ``assay.tags.<key>`` (what :func:`assay.trace`
                   writes)
=================  ===========================================================================

The request and response are the root span's inputs and outputs; for chat messages (an LLM
span's OpenInference ``llm.input_messages``/``llm.output_messages``, GenAI messages and message
events) they are the message text: the last user message and the first answer
(:mod:`assay.tracing.messages`), while the full JSON stays on the span as it came. The model is
the first of ``gen_ai.request.model``, ``llm.model_name``, ``mlflow.llm.model``,
``gen_ai.response.model`` that the root, else the earliest span, names. Token usage and cost
add up the top-most spans that report them (a span whose ancestor reports usage is already
counted in it). Metadata and tags are merged over all spans, the root's winning.

A summary holds only plain JSON (:mod:`assay.jsonvalue`), so a trace can always be rendered
again: a JSON-encoded attribute that is not plain JSON (NaN, a lone surrogate, nesting deeper
than 64 levels) stays the text it came as, and wherever a request or response would nest
deeper than that (messages built around decoded values), the deepest parts are kept as their
JSON text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from assay import jsonvalue
from assay.tracing.messages import (
    model_name,
    openinference_messages,
    request_text,
    response_text,
)
from assay.tracing.model import Span, TraceStatus

__all__ = ["PREVIEW_CHARS", "Summary", "summarize"]

PREVIEW_CHARS = 1000
MAX_KEY_CHARS = 250
"""Metadata and tag keys longer than this are dropped."""
MAX_VALUE_CHARS = 500
"""Metadata and tag values are indexed (filterable) up to this many characters."""

_GENAI_ROLE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
_MAX_INT64 = 2**63 - 1
_SESSION_KEYS = ("session.id", "gen_ai.conversation.id", "mlflow.trace.session")
_INPUT_TOKENS = (
    "llm.token_count.prompt",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
)
_OUTPUT_TOKENS = (
    "llm.token_count.completion",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
)
_TOTAL_TOKENS = ("llm.token_count.total", "gen_ai.usage.total_tokens")
_USAGE_KEYS = frozenset(["mlflow.chat.tokenUsage", *_INPUT_TOKENS, *_OUTPUT_TOKENS, *_TOTAL_TOKENS])
_SPAN_COSTS = ("llm.cost.total", "gen_ai.usage.cost")
_COST_KEYS = frozenset(["mlflow.llm.cost", *_SPAN_COSTS])


@dataclass(frozen=True)
class Summary:
    status: TraceStatus
    request: Any
    response: Any
    has_request: bool
    has_response: bool
    start_time_ms: int
    duration_ms: int | None
    session_id: str | None
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    cost: float | None
    metadata: dict[str, str]
    tags: dict[str, str]
    root_span_id: str | None
    span_count: int
    model: str | None = None
    """The model the root (else the first span in start order) names."""

    @property
    def complete(self) -> bool:
        return self.root_span_id is not None

    @property
    def request_preview(self) -> str | None:
        return preview(self.request) if self.has_request else None

    @property
    def response_preview(self) -> str | None:
        return preview(self.response) if self.has_response else None


def preview(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text[:PREVIEW_CHARS]


def summarize(spans: Sequence[Span]) -> Summary:
    """The trace summary of ``spans`` (all spans of one trace that have arrived, at least one)."""
    if not spans:
        raise ValueError("a trace has at least one span")
    ordered = sorted(spans, key=lambda s: (s.start_time_ns, s.span_id))
    roots = [s for s in ordered if s.is_root]
    root = roots[0] if roots else None
    has_request = has_response = False
    request = response = None
    if root is not None:
        has_request, request = _side(root, _REQUEST)
        has_response, response = _side(root, _RESPONSE)
        status = TraceStatus.ERROR if root.status_code == "ERROR" else TraceStatus.OK
        start_ns = root.start_time_ns
        duration_ms: int | None = (root.end_time_ns - root.start_time_ns) // 1_000_000
    else:
        status = TraceStatus.IN_PROGRESS
        start_ns = ordered[0].start_time_ns
        duration_ms = None
    usage = _top_most(ordered, _usage)
    costs = _top_most(ordered, _cost)
    # Later entries win: every span in start order, then the root.
    precedence = [*ordered, root] if root is not None else ordered
    metadata, tags = _metadata_and_tags(precedence)
    return Summary(
        status=status,
        request=jsonvalue.to_storable(request),
        response=jsonvalue.to_storable(response),
        has_request=has_request,
        has_response=has_response,
        start_time_ms=start_ns // 1_000_000,
        duration_ms=duration_ms,
        session_id=_session_id(root, ordered),
        input_tokens=_sum(u[0] for u in usage),
        output_tokens=_sum(u[1] for u in usage),
        total_tokens=_sum(u[2] for u in usage),
        cost=sum(costs) if costs else None,
        metadata=_bounded(metadata),
        tags=_bounded(tags),
        root_span_id=root.span_id if root is not None else None,
        span_count=len(spans),
        model=model_name([root, *ordered] if root is not None else ordered),
    )


# -- inputs and outputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Side:
    """Where each convention puts one side of a call, the request or the response; they are
    tried in this order: MLflow, OpenInference, current GenAI, then older GenAI forms."""

    mlflow: str
    openinference: str
    """``input``/``output``: ``llm.<side>_messages.*``, ``<side>.value``, ``<side>.mime_type``."""
    genai: str
    instructions: str | None
    """The attribute of system instructions put before the GenAI messages (requests only)."""
    message_events: Mapping[str, str | None]
    """GenAI events that are one message each, and the role each stands for (None: in the
    message)."""
    legacy: str
    """``gen_ai.prompt``/``gen_ai.completion``: an attribute (maybe indexed) or the attribute of
    the ``legacy_event``."""
    legacy_event: str
    text_of: Callable[[Any], str | None]


_REQUEST = _Side(
    mlflow="mlflow.spanInputs",
    openinference="input",
    genai="gen_ai.input.messages",
    instructions="gen_ai.system_instructions",
    message_events=_GENAI_ROLE_EVENTS,
    legacy="gen_ai.prompt",
    legacy_event="gen_ai.content.prompt",
    text_of=request_text,
)
_RESPONSE = _Side(
    mlflow="mlflow.spanOutputs",
    openinference="output",
    genai="gen_ai.output.messages",
    instructions=None,
    message_events={"gen_ai.choice": None},
    legacy="gen_ai.completion",
    legacy_event="gen_ai.content.completion",
    text_of=response_text,
)


def _side(span: Span, side: _Side) -> tuple[bool, Any]:
    """Whether the span records this side of its call, and its value (the text of chat
    messages where there is one: the question or the answer, not the whole JSON)."""
    attrs = span.attributes
    if side.mlflow in attrs:
        return True, _json(attrs[side.mlflow])
    text = side.text_of(openinference_messages(attrs, f"llm.{side.openinference}_messages."))
    if text is not None:
        return True, text
    value_key = f"{side.openinference}.value"
    if value_key in attrs:
        mime_type = attrs.get(f"{side.openinference}.mime_type")
        return True, _openinference(attrs[value_key], mime_type)
    messages = _genai_messages(span, side.genai)
    if messages is not None:
        instructions = attrs.get(side.instructions) if side.instructions else None
        if instructions is not None:
            messages = [{"role": "system", "parts": _json(instructions)}, *messages]
        return True, _text_or(side.text_of, messages)
    for event in span.events:
        if event["name"] == side.legacy_event and side.legacy in event["attributes"]:
            return True, _json(event["attributes"][side.legacy])
    event_messages = [
        _event_message(event, side.message_events[event["name"]])
        for event in span.events
        if event["name"] in side.message_events
    ]
    if event_messages:
        return True, _text_or(side.text_of, event_messages)
    if side.legacy in attrs:
        return True, _json(attrs[side.legacy])
    indexed = _indexed(attrs, f"{side.legacy}.")
    if indexed:
        return True, _text_or(side.text_of, indexed)
    return False, None


def _event_message(event: Mapping[str, Any], role: str | None) -> dict[str, Any]:
    body = _event_body(event["attributes"])
    return body if role is None else {"role": role, **body}


def _text_or(text_of: Any, messages: Any) -> Any:
    """The text of chat messages (:mod:`assay.tracing.messages`), else the messages as they
    are (a tool-call-only answer has no text); the raw messages stay on the span."""
    text = text_of(messages)
    return messages if text is None else text


def _genai_messages(span: Span, key: str) -> Any:
    """``gen_ai.input.messages``/``gen_ai.output.messages``: a span attribute or an attribute
    of the ``gen_ai.client.inference.operation.details`` event (current GenAI conventions)."""
    if key in span.attributes:
        return _json(span.attributes[key])
    for event in span.events:
        if event["name"] == "gen_ai.client.inference.operation.details" and (
            key in event["attributes"]
        ):
            return _json(event["attributes"][key])
    return None


def _event_body(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """A GenAI message event's attributes (``content``, ``message``, ``tool_calls``...) with
    JSON-encoded values decoded; ``gen_ai.*`` bookkeeping attributes are left out."""
    return {k: _json(v) for k, v in attributes.items() if not k.startswith("gen_ai.")}


def _indexed(attrs: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Flattened messages such as ``gen_ai.prompt.0.role``/``gen_ai.prompt.0.content``."""
    messages: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if not key.startswith(prefix):
            continue
        index, _, field = key[len(prefix) :].partition(".")
        if index.isdigit() and field:
            messages.setdefault(int(index), {})[field] = _json(value)
    return [messages[i] for i in sorted(messages)]


def _openinference(value: Any, mime_type: Any) -> Any:
    if not isinstance(value, str):
        return value
    if mime_type == "application/json" or (mime_type is None and value.lstrip()[:1] in ("{", "[")):
        return _json(value)
    return value


def _json(value: Any) -> Any:
    """A JSON-encoded string decoded; anything else, or text that does not decode to plain
    JSON (NaN, Infinity, numbers out of range, lone surrogates, nesting deeper than
    :data:`assay.jsonvalue.MAX_DEPTH`), as it is."""
    if not isinstance(value, str):
        return value
    try:
        decoded = json.loads(value, parse_constant=_refuse, parse_float=_finite)
    except (ValueError, RecursionError):
        return value
    return decoded if jsonvalue.is_plain(decoded) else value


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not standard JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range")
    return number


# -- usage, session, metadata ----------------------------------------------------------------------


def _int(value: Any) -> int | None:
    """A token count: a non-negative integer (or integral float or digit string) in int64."""
    if value is None:
        return None
    integral_float = isinstance(value, float) and value.is_integer()
    digits = isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 20
    if integral_float or digits:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value < _MAX_INT64 else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _usage(span: Span) -> tuple[int | None, int | None, int | None] | None:
    attrs = span.attributes
    if attrs.keys().isdisjoint(_USAGE_KEYS):  # most spans: one set operation, not eight lookups
        return None
    mlflow_usage = _json(attrs.get("mlflow.chat.tokenUsage"))
    if isinstance(mlflow_usage, dict):
        found = (
            _int(mlflow_usage.get("input_tokens")),
            _int(mlflow_usage.get("output_tokens")),
            _int(mlflow_usage.get("total_tokens")),
        )
    else:
        found = (
            _first_int(attrs, _INPUT_TOKENS),
            _first_int(attrs, _OUTPUT_TOKENS),
            _first_int(attrs, _TOTAL_TOKENS),
        )
    input_tokens, output_tokens, total = found
    if input_tokens is None and output_tokens is None and total is None:
        return None
    if total is None:
        total = (input_tokens or 0) + (output_tokens or 0)
    return input_tokens, output_tokens, total


def _first_int(attrs: Mapping[str, Any], keys: Sequence[str]) -> int | None:
    for key in keys:
        value = _int(attrs.get(key))
        if value is not None:
            return value
    return None


def _cost(span: Span) -> float | None:
    attrs = span.attributes
    if attrs.keys().isdisjoint(_COST_KEYS):
        return None
    mlflow_cost = _json(attrs.get("mlflow.llm.cost"))
    if isinstance(mlflow_cost, dict):
        total = _float(mlflow_cost.get("total_cost"))
        if total is not None:
            return total
        parts = [_float(mlflow_cost.get(k)) for k in ("input_cost", "output_cost")]
        if any(p is not None for p in parts):
            return sum(p or 0.0 for p in parts)
    for key in _SPAN_COSTS:
        value = _float(attrs.get(key))
        if value is not None:
            return value
    return None


def _top_most(spans: Sequence[Span], measure: Any) -> list[Any]:
    """``measure(span)`` of every span that has one and no ancestor that has one.

    Linear in the spans (a chain of thousands with a measured span on every link is not
    walked once per span): the first measured span at or above each unmeasured one is
    remembered on the way up. Parent links may be missing or circular; a measured span that
    is its own ancestor counts as top-most."""
    by_id = {s.span_id: s for s in spans}
    measured = {s.span_id: m for s in spans if (m := measure(s)) is not None}
    first: dict[str | None, str | None] = {None: None}

    def first_measured(span_id: str | None) -> str | None:
        path: list[str] = []
        on_path: set[str] = set()
        current = span_id
        while current not in first and current not in measured and current not in on_path:
            assert current is not None  # None is in ``first``
            path.append(current)
            on_path.add(current)
            span = by_id.get(current)
            current = span.parent_span_id if span is not None else None
        if current in first:
            found = first[current]
        elif current in measured:
            found = current
        else:  # a circle of spans that measure nothing
            found = None
        first.update(dict.fromkeys(path, found))
        return found

    return [
        value
        for span_id, value in measured.items()
        if first_measured(by_id[span_id].parent_span_id) in (None, span_id)
    ]


def _sum(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    total = sum(present) if present else None
    return total if total is None or 0 <= total < _MAX_INT64 else None


def _session_id(root: Span | None, ordered: Sequence[Span]) -> str | None:
    for span in [root, *ordered] if root is not None else ordered:
        for key in _SESSION_KEYS:
            value = span.attributes.get(key)
            if value is not None and value != "":
                return str(value)[:MAX_KEY_CHARS]
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _metadata_and_tags(precedence: Sequence[Span]) -> tuple[dict[str, str], dict[str, str]]:
    """Metadata and tags merged over the spans in ``precedence`` (later spans win); one pass
    over each span's attributes finds both the ``assay.metadata.*`` and ``assay.tags.*``."""
    metadata: dict[str, str] = {}
    tags: dict[str, str] = {}
    service = next((s.resource.get("service.name") for s in precedence), None)
    if service is not None:
        metadata["service.name"] = _text(service)
    for span in precedence:
        attrs = span.attributes
        if "user.id" in attrs:
            metadata["user"] = _text(attrs["user.id"])
        blob = _json(attrs.get("metadata"))
        if isinstance(blob, dict):
            metadata.update({str(k): _text(v) for k, v in blob.items() if v is not None})
        names = attrs.get("tag.tags")
        if isinstance(names, list):
            tags.update({_text(n): "" for n in names if n is not None})
        for key, value in attrs.items():
            if value is None or not key.startswith("assay."):
                continue
            if key.startswith("assay.metadata."):
                metadata[key.removeprefix("assay.metadata.")] = _text(value)
            elif key.startswith("assay.tags."):
                tags[key.removeprefix("assay.tags.")] = _text(value)
    return metadata, tags


def _bounded(pairs: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in pairs.items() if 0 < len(k) <= MAX_KEY_CHARS}
