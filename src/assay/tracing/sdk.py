"""The Python tracing SDK, on ``opentelemetry-sdk`` (``pip install 'assay[tracing]'``).

Two lines send an app's traces to an assay server::

    assay.tracing.configure("http://localhost:8080", experiment_id="...")

    @assay.trace
    def answer(question: str) -> str: ...

Every call of a traced function is a span; calls made inside it are its children, and the
outermost one is the root of the trace. Arguments and return values are recorded as
OpenInference ``input.value``/``output.value`` (JSON), exceptions as the span's ERROR status
and an ``exception`` event. ``with assay.trace("step") as span:`` traces a block the same way.
Spans are batched and exported over OTLP/HTTP (protobuf) to ``<url>/v1/traces``.

OpenTelemetry is imported when first used, so ``import assay`` works without the extra.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from assay.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import Tracer

__all__ = ["SpanHandle", "TraceBlock", "configure", "flush", "shutdown", "trace"]

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_provider: TracerProvider | None = None
_SCOPE = "assay"


def _otel_missing(exc: ImportError) -> ConfigError:
    return ConfigError(
        f"tracing needs OpenTelemetry: pip install 'assay[tracing]' ({exc.name} is missing)"
    )


def configure(
    url: str,
    experiment_id: str,
    token: str | None = None,
    *,
    service_name: str = "assay-app",
    batch: bool = True,
    timeout_s: float = 10.0,
    set_global: bool = False,
) -> TracerProvider:
    """Export the spans of :func:`trace` to the assay server at ``url``, into
    ``experiment_id`` (sent as the resource attribute ``assay.experiment_id``).

    ``token``: an API token, sent as ``Authorization: Bearer``. ``batch=False`` exports each
    span when it ends (for scripts and tests); batched spans are flushed at exit and by
    :func:`flush`. ``set_global=True`` also makes this the global OpenTelemetry tracer
    provider, so other instrumentation (OpenInference, GenAI) exports to assay too.
    Calling it again replaces the previous configuration (flushing it first).
    """
    try:
        from opentelemetry import trace as trace_api
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise _otel_missing(exc) from exc
    if not experiment_id:
        raise ConfigError("configure() needs the id of the experiment traces go to")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"server url must start with http:// or https://, not {url!r}")
    global _provider
    headers = {"authorization": f"Bearer {token}"} if token else None
    exporter = OTLPSpanExporter(
        endpoint=url.rstrip("/") + "/v1/traces", headers=headers, timeout=timeout_s
    )
    resource = Resource.create({"service.name": service_name, "assay.experiment_id": experiment_id})
    provider = TracerProvider(resource=resource)
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    with _lock:
        previous, _provider = _provider, provider
    if previous is not None:
        previous.shutdown()
    if set_global:
        trace_api.set_tracer_provider(provider)
    return provider


def flush(timeout_s: float = 30.0) -> bool:
    """Export every span that has ended; False if that did not finish within ``timeout_s``."""
    provider = _provider
    return True if provider is None else provider.force_flush(int(timeout_s * 1000))


def shutdown() -> None:
    """Flush and stop exporting; :func:`trace` records nothing until configured again."""
    global _provider
    with _lock:
        provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


def _tracer() -> Tracer:
    provider = _provider
    if provider is not None:
        return provider.get_tracer(_SCOPE)
    try:
        from opentelemetry import trace as trace_api
    except ImportError as exc:
        raise _otel_missing(exc) from exc
    return trace_api.get_tracer(_SCOPE)  # the global provider: a no-op unless one is set


# -- spans ---------------------------------------------------------------------------------------


def _encode(value: Any) -> tuple[str, str]:
    """A value as (text, mime type): strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value, "text/plain"
    return json.dumps(value, default=_jsonable, ensure_ascii=False), "application/json"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return repr(value)


def _attribute(value: Any) -> Any:
    """An OpenTelemetry attribute value: str, bool, int, float, or JSON text for others."""
    if isinstance(value, str | bool | int | float):
        return value
    return json.dumps(value, default=_jsonable, ensure_ascii=False)


class SpanHandle:
    """The span of one traced call or block: record inputs, outputs, metadata and tags."""

    def __init__(self, span: OtelSpan) -> None:
        self.span = span
        """The OpenTelemetry span itself."""

    @property
    def trace_id(self) -> str:
        """The trace's id as 32 hex digits (how the assay API names traces)."""
        return f"{self.span.get_span_context().trace_id:032x}"

    @property
    def span_id(self) -> str:
        return f"{self.span.get_span_context().span_id:016x}"

    def set_inputs(self, value: Any) -> None:
        text, mime = _encode(value)
        self.span.set_attribute("input.value", text)
        self.span.set_attribute("input.mime_type", mime)

    def set_outputs(self, value: Any) -> None:
        text, mime = _encode(value)
        self.span.set_attribute("output.value", text)
        self.span.set_attribute("output.mime_type", mime)

    def set_attribute(self, key: str, value: Any) -> None:
        self.span.set_attribute(key, _attribute(value))

    def set_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Trace metadata (searchable as ``metadata.<key>``); the root span's values win."""
        for key, value in metadata.items():
            self.span.set_attribute(f"assay.metadata.{key}", _attribute(value))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Trace tags (searchable as ``tags.<key>``); the root span's values win."""
        for key, value in tags.items():
            self.span.set_attribute(f"assay.tags.{key}", _attribute(value))

    def set_session(self, session_id: str) -> None:
        """The session (conversation) the trace belongs to."""
        self.span.set_attribute("session.id", session_id)


class TraceBlock:
    """What ``trace(...)`` returns: a decorator, and a context manager yielding a
    :class:`SpanHandle`."""

    def __init__(
        self,
        name: str | None,
        *,
        kind: str,
        attributes: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        tags: Mapping[str, Any] | None,
        session_id: str | None,
        capture_inputs: bool,
        capture_outputs: bool,
    ) -> None:
        self.name = name
        self.kind = kind
        self.attributes = dict(attributes or {})
        self.metadata = dict(metadata or {})
        self.tags = dict(tags or {})
        self.session_id = session_id
        self.capture_inputs = capture_inputs
        self.capture_outputs = capture_outputs
        self._open: list[Any] = []

    @contextmanager
    def _span(self, name: str) -> Iterator[SpanHandle]:
        with _tracer().start_as_current_span(
            name, record_exception=True, set_status_on_exception=True
        ) as span:
            handle = SpanHandle(span)
            span.set_attribute("openinference.span.kind", self.kind)
            for key, value in self.attributes.items():
                handle.set_attribute(key, value)
            handle.set_metadata(self.metadata)
            handle.set_tags(self.tags)
            if self.session_id is not None:
                handle.set_session(self.session_id)
            yield handle

    # -- as a context manager --

    def __enter__(self) -> SpanHandle:
        block = self._span(self.name or "span")
        handle = block.__enter__()
        self._open.append(block)
        return handle

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open.pop().__exit__(exc_type, exc, tb)

    # -- as a decorator --

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        qualname = getattr(func, "__qualname__", None) or repr(func)
        name = self.name or qualname.rsplit("<locals>.", 1)[-1]
        signature = _signature(func)

        def inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if signature is None:
                return {"args": list(args), "kwargs": kwargs}
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                return {"args": list(args), "kwargs": kwargs}
            bound.apply_defaults()
            return {k: v for k, v in bound.arguments.items() if k not in ("self", "cls")}

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self._span(name) as handle:
                    if self.capture_inputs:
                        handle.set_inputs(inputs(args, kwargs))
                    result = await func(*args, **kwargs)
                    if self.capture_outputs:
                        handle.set_outputs(result)
                    return result

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._span(name) as handle:
                if self.capture_inputs:
                    handle.set_inputs(inputs(args, kwargs))
                result = func(*args, **kwargs)
                if self.capture_outputs:
                    handle.set_outputs(result)
                return result

        return run


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


@overload
def trace(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def trace(
    func_or_name: str | None = None,
    /,
    *,
    name: str | None = None,
    kind: str = "CHAIN",
    attributes: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    session_id: str | None = None,
    capture_inputs: bool = True,
    capture_outputs: bool = True,
) -> TraceBlock: ...


def trace(
    func_or_name: Callable[P, R] | str | None = None,
    /,
    *,
    name: str | None = None,
    kind: str = "CHAIN",
    attributes: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    session_id: str | None = None,
    capture_inputs: bool = True,
    capture_outputs: bool = True,
) -> Callable[P, R] | TraceBlock:
    """Trace a function (``@trace``, ``@trace(name=..., kind="LLM")``) or a block
    (``with trace("retrieve") as span:``). A function's span is named after the function
    unless ``name`` (or a string first argument) says otherwise.

    ``kind`` is the OpenInference span kind (CHAIN, LLM, TOOL, RETRIEVER, AGENT, ...);
    ``metadata`` and ``tags`` become the trace's (searchable as ``metadata.<key>`` and
    ``tags.<key>``); ``session_id`` groups traces into a session. ``capture_inputs`` and
    ``capture_outputs`` turn off recording arguments and results (e.g. secrets, big data).
    """
    block = TraceBlock(
        name or (func_or_name if isinstance(func_or_name, str) else None),
        kind=kind,
        attributes=attributes,
        metadata=metadata,
        tags=tags,
        session_id=session_id,
        capture_inputs=capture_inputs,
        capture_outputs=capture_outputs,
    )
    if callable(func_or_name):
        return block(func_or_name)
    return block
