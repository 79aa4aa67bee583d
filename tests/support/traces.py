"""Traces recorded by a real opentelemetry-sdk tracer and sent by its official OTLP/HTTP
exporter: what the trace, UI and scoring-server tests send to a real server."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from support.servers import ServerProcess


def record(experiment: str | None, build: Any) -> list[ReadableSpan]:
    """The finished spans of ``build(tracer)``, recorded by a real SDK tracer in memory."""
    memory = InMemorySpanExporter()
    attrs = {"service.name": "test-app"}
    if experiment is not None:
        attrs["assay.experiment_id"] = experiment
    provider = TracerProvider(resource=Resource.create(attrs))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    build(provider.get_tracer("tests"))
    provider.shutdown()
    return list(memory.get_finished_spans())


def export(server: ServerProcess, batch: Sequence[ReadableSpan], **kwargs: Any) -> SpanExportResult:
    """One OTLP/HTTP protobuf request through the official exporter."""
    exporter = OTLPSpanExporter(endpoint=f"{server.url}/v1/traces", timeout=30, **kwargs)
    try:
        return exporter.export(list(batch))
    finally:
        exporter.shutdown()


def hex_trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def build_agent(tracer: Any) -> None:
    """root 'agent' > 'retrieve' > 'llm' (OpenInference attributes)."""
    with tracer.start_as_current_span("agent") as root:
        root.set_attribute("input.value", json.dumps({"question": "why?"}))
        root.set_attribute("input.mime_type", "application/json")
        root.set_attribute("session.id", "s-1")
        with tracer.start_as_current_span("retrieve"), tracer.start_as_current_span("llm") as llm:
            llm.set_attribute("llm.token_count.prompt", 10)
            llm.set_attribute("llm.token_count.completion", 5)
            llm.set_attribute("llm.cost.total", 0.25)
        root.set_attribute("output.value", "because")
