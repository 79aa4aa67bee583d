"""Traces, experiments and scorers for the online-scoring tests (real stores, no mocks)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from assay.config import Settings
from assay.db.tables import assessments, scoring_tasks
from assay.scoring.engine import RunStats, ScoringEngine
from assay.scoring.model import Level
from assay.scoring.service import ScoringService
from assay.tracing.model import Span
from assay.tracing.store import TraceStore
from assay.tracking.store import TrackingStore

BASE_NS = 1_700_000_000_000_000_000


def new_trace_id() -> str:
    return uuid.uuid4().hex


def trace_spans(
    trace_id: str,
    *,
    output: str = "a fine answer",
    session: str | None = None,
    root: bool = True,
    child: bool = True,
    metadata: dict[str, Any] | None = None,
    env: str = "prod",
    start_ns: int = BASE_NS,
) -> list[Span]:
    """A two-span trace: an agent root (inputs, outputs, session, metadata, a tag) and an LLM
    child. ``root=False`` leaves the root out (the trace stays in progress)."""
    spans = []
    if root:
        attributes: dict[str, Any] = {
            "openinference.span.kind": "AGENT",
            "input.value": json.dumps({"question": f"q {trace_id[:6]}"}),
            "output.value": output,
            "assay.tags.env": env,
        }
        if session:
            attributes["session.id"] = session
        if metadata:
            attributes["metadata"] = json.dumps(metadata)
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=trace_id[:16],
                parent_span_id=None,
                name="agent",
                kind="INTERNAL",
                status_code="OK",
                status_message=None,
                start_time_ns=start_ns,
                end_time_ns=start_ns + 400_000_000,
                attributes=attributes,
            )
        )
    if child:
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=trace_id[16:],
                parent_span_id=trace_id[:16],
                name="llm",
                kind="CLIENT",
                status_code="OK",
                status_message=None,
                start_time_ns=start_ns + 1_000_000,
                end_time_ns=start_ns + 300_000_000,
                attributes={
                    "llm.token_count.prompt": 10,
                    "llm.token_count.completion": 5,
                    **({"session.id": session} if session else {}),
                },
            )
        )
    return spans


def ingest(store: TraceStore, experiment_id: str, spans: Iterable[Span]) -> None:
    store.spans_ingest({experiment_id: list(spans)})


def experiment(engine: sa.Engine, name: str | None = None) -> str:
    return TrackingStore(engine).create_experiment(name or f"e-{uuid.uuid4().hex[:8]}").id


def settings_for(uri: str, **overrides: Any) -> Settings:
    return Settings(store_uri=uri, **overrides)


def scored(engine: sa.Engine, name: str | None = None) -> list[tuple[str, str]]:
    """(trace_id, assessment name) of every assessment, sorted; duplicates stay visible."""
    query = sa.select(assessments.c.trace_id, assessments.c.name)
    if name is not None:
        query = query.where(assessments.c.name == name)
    with engine.connect() as conn:
        return sorted((r.trace_id, r.name) for r in conn.execute(query))


def ledger(engine: sa.Engine) -> list[tuple[str, str, str]]:
    """(target, scorer, state) of every ledger row."""
    query = sa.select(scoring_tasks.c.target_id, scoring_tasks.c.scorer_name, scoring_tasks.c.state)
    with engine.connect() as conn:
        return sorted((r[0], r[1], r[2]) for r in conn.execute(query))


def drain(
    scoring: ScoringEngine, experiment_id: str, level: Level = Level.TRACE, owner: str = "test"
) -> RunStats:
    """Run the processor until nothing is due."""
    return scoring.run(experiment_id, level, owner=owner)


def register(
    service: ScoringService,
    experiment_id: str,
    name: str,
    kind: str = "output_length",
    definition: dict[str, Any] | None = None,
    **options: Any,
) -> None:
    service.put(
        experiment_id,
        name,
        kind=kind,
        definition=definition if definition is not None else {"max_chars": 1000},
        **options,
    )


def all_ids(spans: Sequence[Span]) -> list[str]:
    return sorted({s.trace_id for s in spans})
