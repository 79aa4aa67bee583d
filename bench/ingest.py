"""OTLP ingest benchmark: spans/s into a real ``assay server``, and trace search latency as the
store grows to 1M spans.

Run it from the repository root::

    .venv/bin/python bench/ingest.py [--stores sqlite,postgresql] [--exporters 1,4]
                                     [--replicas 1] [--processes 1] [--batch 10]
                                     [--traces 100000] [--quick]
                                     [--out bench/results/ingest.json]

The first phase times the ingest path in-process (CPU per span: decoding, storing, and the
PostgreSQL sessions' CPU from ``/proc``), so that where the time goes is measured, not guessed.
Every trace has 10 spans (an agent root with OpenInference and GenAI attributes, metadata,
tags and a session id; retriever, embedding, LLM, tool and HTTP children). Requests are real
``ExportTraceServiceRequest`` protobuf messages, serialised before the clock starts and sent
to ``POST /v1/traces`` by N concurrent exporters (threads, one keep-alive ``httpx.Client``
each). Search latency is timed over ``GET /api/v1/traces`` at a small size and again after the
store is grown (through ``TraceStore.spans_ingest`` in-process) to the large size.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status

from assay.config import load_settings
from assay.db.engine import create_engine
from assay.db.migrate import upgrade
from assay.db.tables import spans as spans_table
from assay.db.tables import traces as traces_table
from assay.stores import Stores
from assay.tracing.filters import Keyset, parse_order_by
from assay.tracing.otlp import PROTOBUF, decode_request
from assay.tracing.store import TraceStore
from assay.tracking.store import TrackingStore
from common import (
    SMALL_LARGE_COLUMNS,
    Store,
    add_run_options,
    add_skipped,
    analyze,
    console,
    ints,
    load_average,
    new_parser,
    new_table,
    percentiles,
    run_benchmark,
    run_together,
    server,
    small_vs_large,
)

OTLP = "/v1/traces"
TRACES = "/api/v1/traces"
SPANS_PER_TRACE = 10
PAGE = 100
TRACE_TABLES = ("assessments", "spans", "trace_metadata", "trace_tags", "traces")
TARGET_SPANS_PER_S = {"sqlite": 10_000.0, "postgresql": 20_000.0}
"""From issue 16: spans/s on a 2-core machine (best exporter count)."""

# Shares of the generated traces, so that the filters select a common, a rarer and a very rare
# slice: ERROR ~5 %, env=prod 60 %, one user of 1,000 ~0.1 %; root durations are log-normal
# around 800 ms, so about 40 % take more than 1 s.
ERROR_SHARE = 0.05
ENVS = {"prod": 60, "staging": 30, "dev": 10}
USERS = 1000
TRACES_PER_SESSION = 5
SEARCHES = {
    "newest page (no filter)": None,
    "trace.status = 'ERROR'": "trace.status = 'ERROR'",
    "metadata.user = 'u42'": "metadata.user = 'u42'",
    "tags.env = 'prod' AND duration > 1 s": "tags.env = 'prod' AND trace.duration_ms > 1000",
}


@dataclass(frozen=True)
class Sizes:
    ingest_traces: int
    batch: int
    exporters: tuple[int, ...]
    replicas: tuple[int, ...]
    processes: tuple[int, ...]
    small_traces: int
    traces: int
    samples: int
    seed_batch: int
    cpu_requests: int


# -- the traces --------------------------------------------------------------------------------

_QUESTIONS = [
    "How do I rotate the API keys of a workspace without downtime?",
    "Summarise the incident report from last Tuesday in three bullet points.",
    "What is the refund policy for annual plans cancelled within 30 days?",
    "Compare the latency of the EU and US clusters over the last week.",
    "Draft a reply to the customer asking about SSO with Okta.",
    "Which invoices are overdue by more than 60 days, and who owns them?",
]
_DOCUMENT = (
    "Section {n}. Keys are rotated per workspace: create the new key, deploy it alongside the "
    "old one, switch traffic, then revoke the old key. Rotation never needs downtime when both "
    "keys are accepted during the overlap window, which defaults to 24 hours. "
)
_ANSWER = (
    "You can rotate keys without downtime: create a second key, roll it out to every client, "
    "wait until traffic on the old key stops, then revoke it. The overlap window is 24 hours "
    "by default and can be extended in the workspace settings."
)
_STACK = (
    'Traceback (most recent call last):\n  File "agent/tools.py", line 88, in search\n'
    "    response.raise_for_status()\nhttpx.HTTPStatusError: 503 Service Unavailable\n"
)
# (name, parent index, kind, start and end as fractions of the root's duration)
_SHAPE = [
    ("agent.run", None, Span.SPAN_KIND_SERVER, 0.0, 1.0),
    ("retrieve", 0, Span.SPAN_KIND_INTERNAL, 0.01, 0.2),
    ("embed_query", 1, Span.SPAN_KIND_CLIENT, 0.02, 0.08),
    ("llm.plan", 0, Span.SPAN_KIND_CLIENT, 0.21, 0.45),
    ("tool.search", 0, Span.SPAN_KIND_INTERNAL, 0.46, 0.6),
    ("tool.calculator", 0, Span.SPAN_KIND_INTERNAL, 0.6, 0.62),
    ("llm.answer", 0, Span.SPAN_KIND_CLIENT, 0.63, 0.95),
    ("POST /v1/chat/completions", 6, Span.SPAN_KIND_CLIENT, 0.64, 0.94),
    ("guardrail", 0, Span.SPAN_KIND_INTERNAL, 0.95, 0.98),
    ("format_output", 0, Span.SPAN_KIND_INTERNAL, 0.98, 0.999),
]
assert len(_SHAPE) == SPANS_PER_TRACE
_PER_TRACE = ("user.id", "session.id", "assay.tags.env", "output.value")
"""Root attributes drawn for every trace (the rest of a trace comes from a pool)."""
_EXCEPTION = {
    "exception.type": "httpx.HTTPStatusError",
    "exception.message": "503 Service Unavailable",
    "exception.stacktrace": _STACK,
}


def _any(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[_any(v) for v in value]))
    return AnyValue(string_value=str(value))


def _kvs(attributes: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_any(v)) for k, v in attributes.items()]


class TraceFactory:
    """Realistic 10-span agent traces of one experiment, as OTLP protobuf requests.

    The text of a trace (question, documents, token counts, customer) comes from a pool of
    ``variants`` built once; ids, times, duration, status, user, session and env are drawn for
    every trace. Trace ``n`` starts ``n * step_ms`` after ``start_ms``. Everything is drawn from
    a seeded random generator, so a run is reproducible."""

    def __init__(
        self, experiment_id: str, seed: int, start_ms: int, step_ms: int = 10, variants: int = 64
    ) -> None:
        self.rng = random.Random(seed)
        self.start_ms = start_ms
        self.step_ms = step_ms
        self.count = 0
        self.resource = _kvs(
            {
                "service.name": "support-agent",
                "service.version": "1.4.2",
                "deployment.environment": "bench",
                "telemetry.sdk.language": "python",
                "telemetry.sdk.name": "opentelemetry",
                "telemetry.sdk.version": "1.45.2",
                "assay.experiment_id": experiment_id,
            }
        )
        self.variants = [self._variant() for _ in range(variants)]
        root_keys = [kv.key for kv in self.variants[0][0].attributes]
        self.per_trace = {k: root_keys.index(k) for k in _PER_TRACE}
        self.exception = Span.Event(name="exception", attributes=_kvs(_EXCEPTION))

    def request(self, traces: int) -> tuple[bytes, list[str]]:
        """One serialised export request holding ``traces`` whole traces, and their ids."""
        message = ExportTraceServiceRequest()
        resource_spans = message.resource_spans.add()
        resource_spans.resource.attributes.extend(self.resource)
        scope: ScopeSpans = resource_spans.scope_spans.add()
        scope.scope.name = "openinference.instrumentation.langchain"
        scope.scope.version = "0.1.30"
        ids = [self._trace(scope) for _ in range(traces)]
        return message.SerializeToString(), ids

    def _trace(self, scope: ScopeSpans) -> str:
        rng = self.rng
        n = self.count
        self.count += 1
        trace_id = rng.randbytes(16)
        span_ids = [rng.randbytes(8) for _ in _SHAPE]
        start_ns = (self.start_ms + n * self.step_ms) * 1_000_000 + rng.randrange(1_000_000)
        duration_ns = int(min(rng.lognormvariate(6.7, 0.7), 60_000) * 1_000_000)
        failed = rng.random() < ERROR_SHARE
        made: list[Span] = []
        for index, (template, (_, parent, _, begin, end)) in enumerate(
            zip(rng.choice(self.variants), _SHAPE, strict=True)
        ):
            span = scope.spans.add()
            span.CopyFrom(template)
            span.trace_id = trace_id
            span.span_id = span_ids[index]
            if parent is not None:
                span.parent_span_id = span_ids[parent]
            span.start_time_unix_nano = start_ns + int(duration_ns * begin)
            span.end_time_unix_nano = start_ns + int(duration_ns * end)
            made.append(span)
        root = made[0]
        values = {
            "user.id": f"u{rng.randrange(USERS)}",
            "session.id": f"s-{n // TRACES_PER_SESSION}",
            "assay.tags.env": rng.choices(list(ENVS), weights=list(ENVS.values()))[0],
            "output.value": "" if failed else _ANSWER,
        }
        for key, value in values.items():
            root.attributes[self.per_trace[key]].value.string_value = value
        if failed:
            for span in (root, made[4]):  # the agent, and the search tool that failed
                span.status.code = Status.STATUS_CODE_ERROR
                span.status.message = "search 503"
                event = span.events.add()
                event.CopyFrom(self.exception)
                event.time_unix_nano = span.end_time_unix_nano
        else:
            root.status.code = Status.STATUS_CODE_OK
        return trace_id.hex()

    def _variant(self) -> list[Span]:
        """The spans of one trace without ids, times or status (the per-trace attributes are
        placeholders)."""
        rng = self.rng
        question = rng.choice(_QUESTIONS)
        prompt_tokens = [rng.randrange(300, 3000), rng.randrange(800, 6000)]
        completion_tokens = [rng.randrange(20, 200), rng.randrange(80, 600)]
        attributes: list[dict[str, Any]] = [
            {
                "openinference.span.kind": "AGENT",
                "input.value": json.dumps({"messages": [{"role": "user", "content": question}]}),
                "input.mime_type": "application/json",
                "output.value": "",
                "output.mime_type": "text/plain",
                "session.id": "",
                "user.id": "",
                "metadata": json.dumps(
                    {"customer": f"c{rng.randrange(200)}", "region": "eu-west-1", "plan": "pro"}
                ),
                "tag.tags": ["agent", "support"],
                "assay.tags.env": "",
                "assay.metadata.release": "2026.11",
            },
            {
                "openinference.span.kind": "RETRIEVER",
                "input.value": question,
                **{
                    f"retrieval.documents.{i}.document.{field}": value
                    for i in range(3)
                    for field, value in (
                        ("id", f"doc-{rng.randrange(10_000)}"),
                        ("content", _DOCUMENT.format(n=i + 1)),
                        ("score", round(rng.random(), 4)),
                    )
                },
            },
            {
                "openinference.span.kind": "EMBEDDING",
                "embedding.model_name": "text-embedding-3-small",
                "embedding.embeddings.0.embedding.text": question,
                "gen_ai.system": "openai",
                "gen_ai.request.model": "text-embedding-3-small",
                "gen_ai.usage.input_tokens": len(question) // 4,
            },
            _llm(question, "plan the answer", prompt_tokens[0], completion_tokens[0]),
            {
                "openinference.span.kind": "TOOL",
                "tool.name": "search_kb",
                "tool.description": "Full-text search over the knowledge base",
                "tool.parameters": json.dumps({"query": question, "top_k": 5}),
                "input.value": json.dumps({"query": question}),
                "output.value": json.dumps([f"doc-{rng.randrange(10_000)}" for _ in range(5)]),
            },
            {
                "openinference.span.kind": "TOOL",
                "tool.name": "calculator",
                "input.value": "30 * 24",
                "output.value": "720",
            },
            _llm(question, _ANSWER, prompt_tokens[1], completion_tokens[1]),
            {
                "http.request.method": "POST",
                "url.full": "https://api.openai.com/v1/chat/completions",
                "server.address": "api.openai.com",
                "http.response.status_code": 200,
            },
            {
                "openinference.span.kind": "GUARDRAIL",
                "input.value": _ANSWER,
                "output.value": json.dumps({"passed": True, "checks": ["pii", "toxicity"]}),
            },
            {
                "openinference.span.kind": "CHAIN",
                "input.value": _ANSWER,
                "output.value": _ANSWER,
            },
        ]
        return [
            Span(name=name, kind=kind, attributes=_kvs(attrs))
            for (name, _, kind, _, _), attrs in zip(_SHAPE, attributes, strict=True)
        ]


def _llm(question: str, answer: str, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "openinference.span.kind": "LLM",
        "llm.model_name": "gpt-4o-mini",
        "llm.provider": "openai",
        "llm.invocation_parameters": json.dumps({"temperature": 0.2, "max_tokens": 800}),
        "llm.input_messages.0.message.role": "system",
        "llm.input_messages.0.message.content": "You are a helpful support agent.",
        "llm.input_messages.1.message.role": "user",
        "llm.input_messages.1.message.content": question,
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.content": answer,
        "llm.token_count.prompt": prompt,
        "llm.token_count.completion": completion,
        "llm.token_count.total": prompt + completion,
        "llm.cost.total": round(prompt * 1.5e-7 + completion * 6e-7, 8),
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.finish_reasons": ["stop"],
    }


# -- stores ------------------------------------------------------------------------------------


def fresh(store: Store) -> str:
    """An empty store: ``Store.fresh()`` plus the trace tables emptied on a server database."""
    uri = store.fresh()
    if store.kind == "sqlite":
        return uri
    engine = sa.create_engine(uri)
    try:
        with engine.begin() as conn:
            existing = set(sa.inspect(conn).get_table_names())
            names = [t for t in TRACE_TABLES if t in existing]
            if names and store.kind == "postgresql":
                conn.execute(sa.text(f"TRUNCATE TABLE {', '.join(names)} CASCADE"))
            elif names:  # MySQL: no TRUNCATE of a table another one references
                for name in names:
                    conn.execute(sa.text(f"DELETE FROM {name}"))
    finally:
        engine.dispose()
    return uri


def create_experiment(url: str) -> str:
    name = f"bench-{time.time_ns()}"
    answer = httpx.post(f"{url}/api/v1/experiments", json={"name": name}, timeout=30)
    if answer.status_code != 201:
        raise RuntimeError(f"create experiment: {answer.status_code} {answer.text[:300]}")
    experiment_id: str = answer.json()["id"]
    return experiment_id


def count_rows(uri: str, table: sa.Table) -> int:
    engine = create_engine(uri)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    finally:
        engine.dispose()


# -- ingest ------------------------------------------------------------------------------------


def measure_ingest(
    urls: Sequence[str], sizes: Sizes, exporters: int, experiment_id: str
) -> dict[str, Any]:
    """``sizes.ingest_traces`` traces in requests of ``sizes.batch`` traces, split over
    ``exporters`` threads started together, exporter i sending to ``urls[i % len(urls)]`` (the
    replicas, as a load balancer would spread them); spans/s over the wall clock."""
    factory = TraceFactory(experiment_id, seed=exporters, start_ms=time.time_ns() // 1_000_000)
    requests = -(-sizes.ingest_traces // sizes.batch)
    per_exporter: list[list[bytes]] = [[] for _ in range(exporters)]
    warmups: list[list[bytes]] = [[factory.request(sizes.batch)[0]] for _ in range(exporters)]
    sent_traces = 0
    for index in range(requests):
        size = min(sizes.batch, sizes.ingest_traces - sent_traces)
        per_exporter[index % exporters].append(factory.request(size)[0])
        sent_traces += size
    body_bytes = [len(b) for per in per_exporter for b in per]
    latencies: list[list[float]] = [[] for _ in range(exporters)]
    errors: list[str] = []
    headers = {"content-type": PROTOBUF}

    def check(answer: httpx.Response) -> None:
        if answer.status_code != 200:
            errors.append(f"{answer.status_code} {answer.content[:200]!r}")
            return
        parsed = ExportTraceServiceResponse.FromString(answer.content)
        if parsed.partial_success.rejected_spans:
            errors.append(f"rejected: {parsed.partial_success.error_message}")

    def run(index: int, ready: threading.Barrier) -> None:
        url = urls[index % len(urls)]
        with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
            for body in warmups[index]:
                check(client.post(OTLP, content=body))
            ready.wait()
            for body in per_exporter[index]:
                start = time.perf_counter()
                answer = client.post(OTLP, content=body)
                latencies[index].append((time.perf_counter() - start) * 1000)
                check(answer)

    wall_s = run_together(exporters, run)
    if errors:
        raise RuntimeError(f"{len(errors)} exports failed, first: {errors[0]}")
    pooled = sorted(x for per in latencies for x in per)
    spans = sizes.ingest_traces * SPANS_PER_TRACE
    return {
        "exporters": exporters,
        "replicas": len(urls),
        "batch_traces": sizes.batch,
        "requests": requests,
        "traces": sizes.ingest_traces,
        "spans": spans,
        "mean_request_bytes": sum(body_bytes) / len(body_bytes),
        "wall_s": wall_s,
        "spans_per_s": spans / wall_s,
        "traces_per_s": sizes.ingest_traces / wall_s,
        "request_ms": percentiles(pooled),
    }


def measure_cpu(uri: str, kind: str, requests: int, batch: int) -> dict[str, Any]:
    """Where an ingest's CPU goes, in this process: ``requests`` requests of ``batch`` traces
    through ``decode_request``, then through ``Stores.traces.spans_ingest`` (the server's path
    minus HTTP, with the scoring ledger), each after a warm-up. Returns µs of CPU per span for
    decoding and for storing (this process), and, for PostgreSQL on this machine, of its
    sessions (``/proc``; None elsewhere: SQLite's work is in the store figure)."""
    engine = create_engine(uri)
    try:
        upgrade(engine)
        stores = Stores.open(engine, load_settings(store_uri=uri))
        experiment_id = TrackingStore(engine).create_experiment(f"cpu-{time.time_ns()}").id
        factory = TraceFactory(experiment_id, seed=7, start_ms=time.time_ns() // 1_000_000)
        warmup = 20
        bodies = [factory.request(batch)[0] for _ in range(warmup + requests)]
        for body in bodies[:warmup]:
            stores.traces.spans_ingest(_by_experiment(body))
        started = time.process_time()
        decoded = [_by_experiment(body) for body in bodies[warmup:]]
        decode_s = time.process_time() - started
        database = _session_cpu(engine) if kind == "postgresql" else None
        started, wall = time.process_time(), time.perf_counter()
        for request in decoded:
            stores.traces.spans_ingest(request)
        store_s, wall_s = time.process_time() - started, time.perf_counter() - wall
        if database is not None:
            after = _session_cpu(engine)
            database = None if after is None else after - database
    finally:
        engine.dispose()
    spans = requests * batch * SPANS_PER_TRACE
    return {
        "requests": requests,
        "spans": spans,
        "decode_us": decode_s * 1e6 / spans,
        "store_us": store_s * 1e6 / spans,
        "database_us": None if database is None else database * 1e6 / spans,
        "wall_us": wall_s * 1e6 / spans,
    }


def _by_experiment(body: bytes) -> dict[str, list[Any]]:
    """One protobuf request decoded as the server does, its spans by experiment."""
    decoded = decode_request(
        body,
        content_type=PROTOBUF,
        content_encoding=None,
        default_experiment_id=None,
        max_bytes=2**31,
    )
    out: dict[str, list[Any]] = {}
    for incoming in decoded.spans:
        out.setdefault(str(incoming.experiment_id), []).append(incoming.span)
    return out


def _database_us(cpu: dict[str, Any]) -> str:
    return "" if cpu["database_us"] is None else f", database {cpu['database_us']:.0f} µs"


def _session_cpu(engine: sa.Engine) -> float | None:
    """Seconds of CPU the PostgreSQL sessions of ``engine``'s database have used, from
    ``/proc`` (None when the server is not on this machine)."""
    with engine.connect() as conn:
        pids = conn.execute(
            sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend'"
            )
        ).scalars()
        ticks = 0
        try:
            for pid in pids:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            return None
    return ticks / os.sysconf("SC_CLK_TCK")


# -- seeding and search ------------------------------------------------------------------------


def seed(
    trace_store: TraceStore, factory: TraceFactory, count: int, batch: int
) -> tuple[list[str], float]:
    """``count`` traces through ``TraceStore.spans_ingest`` (the ingest path minus HTTP), in
    transactions of ``batch`` traces; returns their ids and the seconds it took."""
    ids: list[str] = []
    started = time.perf_counter()
    for done in range(0, count, batch):
        body, made = factory.request(min(batch, count - done))
        trace_store.spans_ingest(_by_experiment(body))
        ids += made
    return ids, time.perf_counter() - started


def deep_token(engine: sa.Engine, experiment_id: str, depth: int) -> str:
    """The page token of the default order (newest first) after ``depth`` traces, made the way
    the server makes it from the last row of a page."""
    keyset = Keyset(parse_order_by(None), traces_table)
    query = (
        sa.select(traces_table)
        .where(traces_table.c.experiment_id == experiment_id)
        .order_by(*keyset.order_by())
        .offset(depth - 1)
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).mappings().one()
    return keyset.token(row)


def measure_search(
    url: str, engine: sa.Engine, experiment_id: str, ids: Sequence[str], samples: int
) -> dict[str, Any]:
    rng = random.Random(len(ids))
    traces = len(ids)
    out: dict[str, Any] = {"traces": traces, "spans": traces * SPANS_PER_TRACE, "queries": {}}
    token = deep_token(engine, experiment_id, traces // 2)
    base = {"experiment_id": experiment_id, "max_results": PAGE}
    with httpx.Client(base_url=url, timeout=120) as client:

        def search(filter_string: str | None, **extra: Any) -> Callable[[], httpx.Response]:
            params = dict(base, **extra)
            if filter_string is not None:
                params["filter"] = filter_string
            return lambda: client.get(TRACES, params=params)

        queries: dict[str, Callable[[], httpx.Response]] = {
            label: search(text) for label, text in SEARCHES.items()
        }
        queries["deep page (page_token at 50 %)"] = search(None, page_token=token)
        queries["GET /traces/{id} (10 spans)"] = lambda: client.get(f"{TRACES}/{rng.choice(ids)}")
        for label, call in queries.items():
            for _ in range(3):
                call()  # warm up caches and the connection
            times: list[float] = []
            found = 0
            for _ in range(samples):
                start = time.perf_counter()
                answer = call()
                times.append((time.perf_counter() - start) * 1000)
                if answer.status_code != 200:
                    raise RuntimeError(f"{label}: {answer.status_code} {answer.text[:300]}")
                body = answer.json()
                found = len(body["traces"]) if "traces" in body else len(body["spans"])
            out["queries"][label] = percentiles(sorted(times)) | {"returned": found}
    return out


# -- one store ---------------------------------------------------------------------------------


def bench_store(store: Store, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    result: dict[str, Any] = {"version": store.version, "ingest": [], "search": []}
    cpu = result["cpu"] = measure_cpu(fresh(store), store.kind, sizes.cpu_requests, sizes.batch)
    log(
        f"{store.kind}: in-process CPU per span: decode {cpu['decode_us']:.0f} µs, store"
        f" {cpu['store_us']:.0f} µs" + _database_us(cpu)
    )
    for replicas, processes, exporters in itertools.product(
        sizes.replicas, sizes.processes, sizes.exporters
    ):
        uri = fresh(store)
        with contextlib.ExitStack() as servers:
            urls = [
                servers.enter_context(server(uri, store.tmp, processes=processes))
                for _ in range(replicas)
            ]
            experiment_id = create_experiment(urls[0])
            run = measure_ingest(urls, sizes, exporters, experiment_id)
            run["processes"] = processes
        stored = count_rows(uri, spans_table)
        expected = (sizes.ingest_traces + exporters * sizes.batch) * SPANS_PER_TRACE
        if stored != expected:
            raise RuntimeError(f"{stored} spans stored, {expected} sent")
        result["ingest"].append(run)
        lat = run["request_ms"]
        log(
            f"{store.kind}: ingest, {_servers(replicas, processes)}, {exporters} exporter(s),"
            f" {sizes.batch} traces/request: {run['spans_per_s']:,.0f} spans/s,"
            f" {run['traces_per_s']:,.0f} traces/s"
            f" (request p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms)"
        )

    uri = fresh(store)
    with server(uri, store.tmp) as url:
        experiment_id = create_experiment(url)
        engine = create_engine(uri)
        try:
            trace_store = TraceStore(engine)
            start_ms = time.time_ns() // 1_000_000 - sizes.traces * 10
            factory = TraceFactory(experiment_id, seed=42, start_ms=start_ms)
            ids: list[str] = []
            for traces in (sizes.small_traces, sizes.traces):
                made, seconds = seed(trace_store, factory, traces - len(ids), sizes.seed_batch)
                ids += made
                analyze(engine, TRACE_TABLES)
                log(
                    f"{store.kind}: seeded {len(made) * SPANS_PER_TRACE:,} spans in {seconds:.0f} s"
                    f" ({len(made) * SPANS_PER_TRACE / seconds:,.0f} spans/s in-process)"
                )
                search = measure_search(url, engine, experiment_id, ids, sizes.samples)
                search["seed_s"] = seconds
                result["search"].append(search)
                for label, p in search["queries"].items():
                    log(
                        f"{store.kind}: {traces * SPANS_PER_TRACE:,} spans: {label}:"
                        f" p50 {p['p50']:.1f} ms, p95 {p['p95']:.1f} ms"
                    )
            # The same ingest once more, into the large store: does the rate hold up?
            run = measure_ingest([url], sizes, sizes.exporters[0], experiment_id)
            run["stored_spans"] = sizes.traces * SPANS_PER_TRACE
            result["ingest_large"] = run
            log(
                f"{store.kind}: ingest into {run['stored_spans']:,} spans,"
                f" {run['exporters']} exporter(s): {run['spans_per_s']:,.0f} spans/s"
            )
        finally:
            engine.dispose()
    return result


# -- report ------------------------------------------------------------------------------------


def print_table(results: dict[str, Any]) -> None:
    table = new_table("assay OTLP ingest and trace search benchmark", SMALL_LARGE_COLUMNS)
    for kind, store in results["stores"].items():
        if "skipped" in store:
            add_skipped(table, kind, reason=store["skipped"], reason_column=2)
            continue
        cpu = store["cpu"]
        table.add_row(
            kind,
            f"in-process CPU per span: decode {cpu['decode_us']:.0f} µs, store"
            f" {cpu['store_us']:.0f} µs{_database_us(cpu)} [dim](wall {cpu['wall_us']:.0f} µs)[/]",
            "",
            "",
            "",
        )
        target = TARGET_SPANS_PER_S.get(kind)
        best = max((run["spans_per_s"] for run in store["ingest"]), default=0.0)
        for run in store["ingest"]:
            lat = run["request_ms"]
            mark = ""
            if target is not None and run["spans_per_s"] == best:
                mark = " [green]✔[/]" if best >= target else " [red]FAIL[/]"
                mark += f" (target ≥ {target:,.0f})"
            table.add_row(
                kind,
                f"ingest, {_servers(run['replicas'], run.get('processes', 1))},"
                f" {run['exporters']} exporter(s),"
                f" {run['batch_traces']} traces/request:"
                f" [bold]{run['spans_per_s']:,.0f} spans/s[/], {run['traces_per_s']:,.0f}"
                f" traces/s{mark}",
                "",
                f"{lat['p50']:.0f} / {lat['p95']:.0f} ms",
                "",
            )
        run = store["ingest_large"]
        lat = run["request_ms"]
        table.add_row(
            kind,
            f"the same, {run['exporters']} exporter(s), into {run['stored_spans']:,} stored"
            f" spans: [bold]{run['spans_per_s']:,.0f} spans/s[/]",
            "",
            f"{lat['p50']:.0f} / {lat['p95']:.0f} ms",
            "",
        )
        small, large = store["search"][0], store["search"][-1]
        for label, s in small["queries"].items():
            g = large["queries"][label]
            table.add_row(
                kind,
                f"{label} [dim]({s['returned']} / {g['returned']} returned)[/]",
                *small_vs_large(s, g),
            )
        table.add_section()
    console.print(table)
    sizes = results["sizes"]
    console.print(
        f"small = {sizes['small_traces'] * SPANS_PER_TRACE:,} spans,"
        f" large = {sizes['traces'] * SPANS_PER_TRACE:,} spans ({SPANS_PER_TRACE} per trace);"
        f" {load_average(results)}"
    )


# -- main --------------------------------------------------------------------------------------


def _servers(replicas: int, processes: int) -> str:
    servers = "1 server" if replicas == 1 else f"{replicas} server replicas"
    return servers if processes == 1 else f"{servers} of {processes} processes"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--exporters", default="1,4", help="concurrent exporters to try")
    parser.add_argument(
        "--replicas",
        default="1",
        help="servers on the one store to try, exporters spread over them (e.g. 1,2)",
    )
    parser.add_argument(
        "--processes",
        default="1",
        help="processes of each server to try (assay server --processes; e.g. 1,2)",
    )
    parser.add_argument("--batch", type=int, default=10, help="traces per export request")
    parser.add_argument(
        "--ingest-traces", type=int, help="traces per ingest run (default 5000; 500 --quick)"
    )
    parser.add_argument("--traces", type=int, help="the large store (default 100000 traces)")
    parser.add_argument("--small-traces", type=int, help="the small store (default 1000)")
    parser.add_argument("--samples", type=int, help="timed requests per query (default 100)")
    parser.add_argument("--seed-batch", type=int, default=1000, help="traces per seed transaction")
    parser.add_argument(
        "--cpu-requests",
        type=int,
        help="requests of the in-process CPU run (default 300; 50 --quick)",
    )
    add_run_options(parser, "ingest", quick_help="small sizes: a ~60 s smoke test")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    quick = args.quick
    return Sizes(
        ingest_traces=args.ingest_traces or (500 if quick else 5000),
        batch=args.batch,
        exporters=ints(args.exporters),
        replicas=ints(args.replicas),
        processes=ints(args.processes),
        small_traces=args.small_traces or (200 if quick else 1000),
        traces=args.traces or (2000 if quick else 100_000),
        samples=args.samples or (20 if quick else 100),
        seed_batch=args.seed_batch,
        cpu_requests=args.cpu_requests or (50 if quick else 300),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    if not 0 < sizes.small_traces < sizes.traces or sizes.batch < 1 or sizes.ingest_traces < 1:
        console.print("[red]need 0 < --small-traces < --traces, --batch ≥ 1[/]")
        return 2
    return run_benchmark(
        args,
        sizes.__dict__ | {"spans_per_trace": SPANS_PER_TRACE},
        lambda store: bench_store(store, sizes, console.log),
        print_table,
        name="ingest",
    )


if __name__ == "__main__":
    sys.exit(main())
