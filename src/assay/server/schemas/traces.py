"""``/api/v1/traces``: traces, their spans and assessments as answered, and an assessment to
write (:mod:`assay.server.routes.traces`). Times of traces in epoch milliseconds, of spans in
nanoseconds."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from assay.tracing.messages import span_type
from assay.tracing.model import Assessment, AssessmentSource, Span, Trace, TraceDetail

__all__ = [
    "AssessmentIn",
    "AssessmentListOut",
    "AssessmentOut",
    "AssessmentSourceBody",
    "SpanOut",
    "SpanStatusOut",
    "TokenUsageOut",
    "TraceDetailOut",
    "TraceOut",
    "TracePageOut",
]


class TokenUsageOut(BaseModel):
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None


class TraceOut(BaseModel):
    """A trace's summary, derived from its spans. Times in epoch milliseconds."""

    trace_id: str
    experiment_id: str
    status: str = Field(description="IN_PROGRESS until the root span arrives, then OK or ERROR.")
    request: Any
    response: Any
    request_preview: str | None
    response_preview: str | None
    start_time_ms: int
    duration_ms: int | None
    completed_at_ms: int | None
    session_id: str | None
    token_usage: TokenUsageOut | None
    cost: float | None
    metadata: dict[str, str]
    tags: dict[str, str]
    root_span_id: str | None
    span_count: int
    created_at_ms: int
    updated_at_ms: int
    model: str | None = Field(
        description="The LLM the spans name (gen_ai.request.model, llm.model_name, "
        "mlflow.llm.model, gen_ai.response.model); searchable as trace.model."
    )

    @classmethod
    def of(cls, trace: Trace) -> TraceOut:
        usage = None
        if any(
            v is not None for v in (trace.input_tokens, trace.output_tokens, trace.total_tokens)
        ):
            usage = TokenUsageOut(
                input_tokens=trace.input_tokens,
                output_tokens=trace.output_tokens,
                total_tokens=trace.total_tokens,
            )
        return cls(
            trace_id=trace.trace_id,
            experiment_id=trace.experiment_id,
            status=trace.status.value,
            request=trace.request,
            response=trace.response,
            request_preview=trace.request_preview,
            response_preview=trace.response_preview,
            start_time_ms=trace.start_time_ms,
            duration_ms=trace.duration_ms,
            completed_at_ms=trace.completed_at_ms,
            session_id=trace.session_id,
            token_usage=usage,
            cost=trace.cost,
            metadata=trace.metadata,
            tags=trace.tags,
            root_span_id=trace.root_span_id,
            span_count=trace.span_count,
            created_at_ms=trace.created_at_ms,
            updated_at_ms=trace.updated_at_ms,
            model=trace.model,
        )


class TracePageOut(BaseModel):
    traces: list[TraceOut]
    next_page_token: str | None


class SpanStatusOut(BaseModel):
    code: str = Field(description="UNSET, OK or ERROR")
    message: str | None


class SpanOut(BaseModel):
    """One span as OTLP sent it; times in epoch nanoseconds, ids in hex."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    status: SpanStatusOut
    start_time_ns: int
    end_time_ns: int
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    links: list[dict[str, Any]]
    resource: dict[str, Any]
    span_type: str | None = Field(
        description="LLM, CHAIN, TOOL, AGENT, RETRIEVER...: openinference.span.kind, "
        "mlflow.spanType, else from gen_ai.operation.name."
    )

    @classmethod
    def of(cls, span: Span) -> SpanOut:
        return cls(
            trace_id=span.trace_id,
            span_id=span.span_id,
            parent_span_id=span.parent_span_id,
            name=span.name,
            kind=span.kind,
            status=SpanStatusOut(code=span.status_code, message=span.status_message),
            start_time_ns=span.start_time_ns,
            end_time_ns=span.end_time_ns,
            attributes=span.attributes,
            events=span.events,
            links=span.links,
            resource=span.resource,
            span_type=span_type(span),
        )


class AssessmentSourceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: AssessmentSource
    id: str = Field(min_length=1, max_length=250)


class AssessmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=250)
    value: Any = None
    rationale: str | None = None
    source: AssessmentSourceBody
    error: Any = None
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=250,
        description="Writing the same key on the same trace again replaces the assessment.",
    )


class AssessmentOut(BaseModel):
    id: str
    trace_id: str
    name: str
    value: Any
    rationale: str | None
    source: AssessmentSourceBody
    error: Any
    metadata: dict[str, Any] | None
    idempotency_key: str | None
    created_at_ms: int
    updated_at_ms: int

    @classmethod
    def of(cls, a: Assessment) -> AssessmentOut:
        return cls(
            id=a.id,
            trace_id=a.trace_id,
            name=a.name,
            value=a.value,
            rationale=a.rationale,
            source=AssessmentSourceBody(type=a.source_type, id=a.source_id),
            error=a.error,
            metadata=a.metadata,
            idempotency_key=a.idempotency_key,
            created_at_ms=a.created_at_ms,
            updated_at_ms=a.updated_at_ms,
        )


class AssessmentListOut(BaseModel):
    assessments: list[AssessmentOut]


class TraceDetailOut(BaseModel):
    trace: TraceOut
    spans: list[SpanOut]
    assessments: list[AssessmentOut]

    @classmethod
    def of(cls, detail: TraceDetail) -> TraceDetailOut:
        return cls(
            trace=TraceOut.of(detail.trace),
            spans=[SpanOut.of(s) for s in detail.spans],
            assessments=[AssessmentOut.of(a) for a in detail.assessments],
        )
