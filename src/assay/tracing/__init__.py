"""Traces: OTLP ingest, the trace store, assessments, filter strings, and the tracing SDK.

The SDK is what applications use (``pip install 'assay[tracing]'``)::

    import assay

    assay.tracing.configure("http://localhost:8080", experiment_id="...")

    @assay.trace
    def answer(question: str) -> str: ...
"""

from assay.tracing.sdk import SpanHandle, TraceBlock, configure, flush, shutdown, trace

__all__ = ["SpanHandle", "TraceBlock", "configure", "flush", "shutdown", "trace"]
