"""What an LLM span says in plain words: the text of its messages, its model, its type.

Instrumentations record a chat call as structured messages, each in its own shape:

==============  ==================================================================================
OpenInference   flattened attributes ``llm.input_messages.<i>.message.role`` / ``.content`` (or
                ``.contents.<j>.message_content.text``), ``llm.output_messages.<i>.message.*``
GenAI (new)     ``gen_ai.input.messages`` / ``gen_ai.output.messages``: ``[{role, parts: [{type:
                "text", content}]}]``
GenAI (events)  ``gen_ai.user.message`` ... events with a ``content`` body, ``gen_ai.choice``
                events with ``{index, message: {role, content}}``
OpenAI JSON     ``{role, content}`` where content is text or ``[{type: "text", text}]``
==============  ==================================================================================

:func:`request_text` is the text of the last user message (the question asked), and
:func:`response_text` the text of the first answer; both None when no message has text (a
tool-call-only answer), so the caller can keep the structured value instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from assay.tracing.model import Span

__all__ = [
    "MAX_MODEL_CHARS",
    "model_name",
    "openinference_messages",
    "request_text",
    "response_text",
    "span_type",
]

MAX_MODEL_CHARS = 250
"""A model name is stored (and searchable) up to this many characters."""
MAX_SPAN_TYPE_CHARS = 32

_MODEL_KEYS = (
    "gen_ai.request.model",
    "llm.model_name",
    "mlflow.llm.model",
    "gen_ai.response.model",
)
"""Where a span names its model, most specific first: the model asked for wins over the
snapshot that answered (``gpt-4o`` over ``gpt-4o-2024-08-06``)."""
_SPAN_TYPE_KEYS = ("openinference.span.kind", "mlflow.spanType")
_GENAI_OPERATIONS = {
    "chat": "LLM",
    "text_completion": "LLM",
    "generate_content": "LLM",
    "embeddings": "EMBEDDING",
    "execute_tool": "TOOL",
    "invoke_agent": "AGENT",
    "create_agent": "AGENT",
}
"""``gen_ai.operation.name`` as a span type, for GenAI spans that name no type."""


def request_text(messages: Any) -> str | None:
    """The text of the last user message (else of the last message with text)."""
    items = _messages(messages)
    for message in reversed(items):
        if message.get("role") == "user":
            text = message_text(message)
            if text is not None:
                return text
    return _first_text(reversed(items))


def response_text(messages: Any) -> str | None:
    """The text of the first answer: the first message (or choice) with text."""
    return _first_text(_messages(messages))


def message_text(message: Any) -> str | None:
    """The text of one message in any of the shapes above (parts joined by newlines)."""
    if isinstance(message, str):
        return message
    if not isinstance(message, Mapping):
        return None
    for key in ("content", "parts"):
        text = _parts_text(message.get(key))
        if text is not None:
            return text
    inner = message.get("message")  # a gen_ai.choice body
    return message_text(inner) if isinstance(inner, Mapping) else None


def openinference_messages(attributes: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """OpenInference's flattened messages (``prefix`` is ``llm.input_messages.`` or
    ``llm.output_messages.``) as ``[{role, content}]`` in index order; content parts
    (``message.contents.<j>.message_content.*``) become ``[{type, text}]``."""
    found: dict[int, dict[str, Any]] = {}
    parts: dict[int, dict[int, dict[str, Any]]] = {}
    for key, value in attributes.items():
        if not key.startswith(prefix):
            continue
        index, _, rest = key[len(prefix) :].partition(".")
        if not index.isdigit():
            continue
        message = found.setdefault(int(index), {})
        if rest in ("message.role", "message.content", "message.name"):
            message[rest.removeprefix("message.")] = value
        elif rest.startswith("message.contents."):
            number, _, field = rest.removeprefix("message.contents.").partition(".")
            if number.isdigit() and field.startswith("message_content."):
                part = parts.setdefault(int(index), {}).setdefault(int(number), {})
                part[field.removeprefix("message_content.")] = value
    for position, by_number in parts.items():
        if "content" not in found[position]:
            found[position]["content"] = [by_number[n] for n in sorted(by_number)]
    return [found[i] for i in sorted(found) if found[i]]


def model_name(spans: Iterable[Span]) -> str | None:
    """The model of the first span (in the order given) that names one."""
    for span in spans:
        for key in _MODEL_KEYS:
            value = _decoded(span.attributes.get(key))
            if isinstance(value, str) and value.strip():
                return value.strip()[:MAX_MODEL_CHARS]
    return None


def span_type(span: Span) -> str | None:
    """The span's type in upper case (``LLM``, ``CHAIN``, ``TOOL``, ``AGENT``, ``RETRIEVER``...):
    OpenInference's ``openinference.span.kind``, MLflow's ``mlflow.spanType``, else derived
    from GenAI's ``gen_ai.operation.name``; None when the span says nothing about it."""
    for key in _SPAN_TYPE_KEYS:
        value = _decoded(span.attributes.get(key))
        if isinstance(value, str) and value.strip():
            return value.strip().upper()[:MAX_SPAN_TYPE_CHARS]
    operation = span.attributes.get("gen_ai.operation.name")
    if isinstance(operation, str):
        return _GENAI_OPERATIONS.get(operation.strip().lower())
    return None


# -- helpers -----------------------------------------------------------------------------------


def _messages(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        return []
    return [m for m in value if isinstance(m, Mapping)]


def _first_text(messages: Iterable[Mapping[str, Any]]) -> str | None:
    for message in messages:
        text = message_text(message)
        if text is not None:
            return text
    return None


def _parts_text(content: Any) -> str | None:
    """Text content, or the text parts of a part list (OpenAI ``{type: text, text}``, GenAI
    ``{type: text, content}``) joined by newlines; None when there is no text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = [
        text
        for part in content
        if isinstance(part, Mapping) and part.get("type", "text") == "text"
        for text in (part.get("text", part.get("content")),)
        if isinstance(text, str)
    ]
    return "\n".join(texts) if texts else None


def _decoded(value: Any) -> Any:
    """MLflow JSON-encodes its attribute values (``"\\"LLM\\""``): a JSON string decoded."""
    if isinstance(value, str) and value.startswith('"'):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
