"""Traces: OTLP/HTTP ingest (protobuf, JSON, gzip) from a real opentelemetry-sdk tracer into a
real `assay server` on SQLite, PostgreSQL and MariaDB; derived trace fields; assessments with
idempotency keys; the ``@assay.trace`` SDK."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import json
import math
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import Status, StatusCode

import assay
import assay.tracing
from assay.config import Settings
from assay.db.engine import create_engine
from assay.db.tables import assessments, experiments, spans, trace_metadata, trace_tags, traces
from assay.errors import InvalidRequestError, RequestTooLargeError, StoreError
from assay.stores import Stores
from assay.tracing.derive import summarize
from assay.tracing.model import Span, default_idempotency_key
from assay.tracing.otlp import decode_request
from assay.tracing.store import _span_row, _trace_row
from assay.tracking.store import TrackingStore
from support.scoring import experiment, new_trace_id, trace_spans
from support.servers import ServerProcess, kinds_grouped, module_server
from support.timing import wait_until
from support.traces import build_agent, export, hex_trace_id, record

PROTOBUF = "application/x-protobuf"


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=kinds_grouped("traces"))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per database for the module: each test makes its own experiment and counts
    only its own traces' rows."""
    with module_server(request.param, tmp_path_factory, "traces") as server:
        yield server


SQLITE_SERVER = pytest.mark.parametrize("server", kinds_grouped("traces")[:1], indirect=True)
"""For tests of the HTTP answers rather than of a store."""


@pytest.fixture
def engine(server: ServerProcess) -> Iterator[sa.Engine]:
    """The server's store."""
    eng = create_engine(server.store_uri)
    yield eng
    eng.dispose()


@pytest.fixture
def store_engine(store_uri: str) -> Iterator[sa.Engine]:
    """An empty store of each kind, with no server."""
    eng = create_engine(store_uri)
    yield eng
    eng.dispose()


@pytest.fixture
def experiment_id(engine: sa.Engine) -> str:
    """A new experiment in the server's store."""
    return TrackingStore(engine).create_experiment(f"exp-{uuid.uuid4().hex[:8]}").id


def otlp_json(batch: Sequence[ReadableSpan]) -> dict[str, Any]:
    """The OTLP JSON of an SDK-produced export request: protobuf's JSON mapping with hex ids."""
    document = json_format.MessageToDict(encode_spans(list(batch)))
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return document


def hex_span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def get_trace(server: ServerProcess, trace_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/api/v1/traces/{trace_id}", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def count(engine: sa.Engine, table: sa.Table, trace_ids: Sequence[str] | None = None) -> int:
    """Rows of ``table``, of these traces only when given (the module's tests share a store)."""
    query = sa.select(sa.func.count()).select_from(table)
    if trace_ids is not None:
        query = query.where(table.c.trace_id.in_(trace_ids))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def by_name(detail: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in detail["spans"]}


# -- ingest ----------------------------------------------------------------------------------------


def test_spans_split_across_requests_out_of_order_make_one_trace(server, experiment_id, engine):
    finished = record(experiment_id, build_agent)
    named = {s.name: s for s in finished}
    trace_id = hex_trace_id(named["agent"])
    assert {hex_trace_id(s) for s in finished} == {trace_id}

    # A grandchild first: the trace exists, in progress.
    assert export(server, [named["llm"]]) is SpanExportResult.SUCCESS
    first = get_trace(server, trace_id)["trace"]
    assert first["status"] == "IN_PROGRESS"
    assert first["completed_at_ms"] is None
    assert first["duration_ms"] is None
    assert first["request"] is None
    assert first["span_count"] == 1
    assert first["token_usage"] == {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}

    # Then the root: complete, with the request and response of the root span.
    assert export(server, [named["agent"]]) is SpanExportResult.SUCCESS
    done = get_trace(server, trace_id)["trace"]
    assert done["status"] == "OK"
    assert done["completed_at_ms"] is not None
    assert done["request"] == {"question": "why?"}
    assert done["response"] == "because"
    assert done["request_preview"] == '{"question": "why?"}'
    assert done["response_preview"] == "because"
    assert done["session_id"] == "s-1"
    assert done["experiment_id"] == experiment_id
    agent = named["agent"]
    assert agent.start_time is not None
    assert agent.end_time is not None
    assert done["start_time_ms"] == agent.start_time // 1_000_000
    assert done["duration_ms"] == (agent.end_time - agent.start_time) // 1_000_000
    assert done["span_count"] == 2

    # The middle span last: the summary is recomputed, completion time kept.
    assert export(server, [named["retrieve"]]) is SpanExportResult.SUCCESS
    detail = get_trace(server, trace_id)
    final = detail["trace"]
    assert final["span_count"] == 3
    assert final["completed_at_ms"] == done["completed_at_ms"]
    assert final["updated_at_ms"] >= done["updated_at_ms"]
    assert final["token_usage"] == {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
    assert final["cost"] == pytest.approx(0.25)
    spans_by_name = by_name(detail)
    assert spans_by_name["agent"]["parent_span_id"] is None
    assert spans_by_name["retrieve"]["parent_span_id"] == hex_span_id(named["agent"])
    assert spans_by_name["llm"]["parent_span_id"] == hex_span_id(named["retrieve"])
    assert spans_by_name["llm"]["attributes"]["llm.token_count.prompt"] == 10
    assert spans_by_name["agent"]["resource"]["service.name"] == "test-app"
    assert "assay.experiment_id" not in spans_by_name["agent"]["resource"]
    assert [s["name"] for s in detail["spans"]] == ["agent", "retrieve", "llm"]  # start order
    assert detail["assessments"] == []

    # A retried export of the same spans changes nothing.
    assert export(server, finished) is SpanExportResult.SUCCESS
    again = get_trace(server, trace_id)["trace"]
    assert again["span_count"] == 3
    assert again["completed_at_ms"] == done["completed_at_ms"]
    assert count(engine, spans, [trace_id]) == 3
    assert count(engine, traces, [trace_id]) == 1


@SQLITE_SERVER
def test_json_body_and_response(server, experiment_id):
    finished = record(experiment_id, build_agent)
    trace_id = hex_trace_id(finished[0])
    body = json.dumps(otlp_json(finished))
    assert trace_id in body  # hex ids, as OTLP JSON has them
    response = httpx.post(
        f"{server.url}/v1/traces",
        content=body,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {}
    detail = get_trace(server, trace_id)
    assert detail["trace"]["status"] == "OK"
    assert detail["trace"]["span_count"] == 3
    assert by_name(detail)["llm"]["parent_span_id"] == hex_span_id(
        next(s for s in finished if s.name == "retrieve")
    )


@SQLITE_SERVER
def test_protobuf_response_is_export_trace_service_response(server, experiment_id):
    finished = record(experiment_id, build_agent)
    response = httpx.post(
        f"{server.url}/v1/traces",
        content=encode_spans(finished).SerializeToString(),
        headers={"content-type": PROTOBUF},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == PROTOBUF
    parsed = ExportTraceServiceResponse()
    parsed.ParseFromString(response.content)
    assert not parsed.HasField("partial_success")


@SQLITE_SERVER
def test_gzip_bodies(server, experiment_id):
    first = record(experiment_id, build_agent)
    assert export(server, first, compression=Compression.Gzip) is SpanExportResult.SUCCESS
    assert get_trace(server, hex_trace_id(first[0]))["trace"]["span_count"] == 3

    second = record(experiment_id, build_agent)
    response = httpx.post(
        f"{server.url}/v1/traces",
        content=gzip.compress(json.dumps(otlp_json(second)).encode()),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert get_trace(server, hex_trace_id(second[0]))["trace"]["status"] == "OK"


@SQLITE_SERVER
def test_experiment_from_header(server, experiment_id):
    finished = record(None, build_agent)
    assert (
        export(server, finished, headers={"x-assay-experiment-id": experiment_id})
        is SpanExportResult.SUCCESS
    )
    trace = get_trace(server, hex_trace_id(finished[0]))["trace"]
    assert trace["experiment_id"] == experiment_id


def test_concurrent_requests_for_one_trace_lose_no_span(server, experiment_id):
    """Twelve requests, each one child of the same root (and one the root), at once: the
    summary is computed over every span, whichever request commits last."""
    n = 12

    def build(tracer: Any) -> None:
        with tracer.start_as_current_span("root"):
            for i in range(n):
                with tracer.start_as_current_span(f"child-{i}") as child:
                    child.set_attribute("gen_ai.usage.input_tokens", 1)
                    child.set_attribute("gen_ai.usage.output_tokens", 2)

    finished = record(experiment_id, build)
    barrier = threading.Barrier(len(finished))
    results: list[SpanExportResult] = []

    def send(span: ReadableSpan) -> None:
        barrier.wait()
        results.append(export(server, [span]))

    threads = [threading.Thread(target=send, args=(s,)) for s in finished]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [SpanExportResult.SUCCESS] * (n + 1)
    trace = get_trace(server, hex_trace_id(finished[0]))["trace"]
    assert trace["span_count"] == n + 1
    assert trace["status"] == "OK"
    assert trace["token_usage"] == {
        "input_tokens": n,
        "output_tokens": 2 * n,
        "total_tokens": 3 * n,
    }


# -- derived fields --------------------------------------------------------------------------------


@SQLITE_SERVER
def test_derived_fields_per_attribute_convention(server, experiment_id):
    def openinference(tracer: Any) -> None:
        with tracer.start_as_current_span("chain") as root:
            root.set_attribute("input.value", "hello")
            root.set_attribute("output.value", json.dumps({"answer": 42}))
            root.set_attribute("output.mime_type", "application/json")
            root.set_attribute("session.id", "oi-session")
            root.set_attribute("user.id", "u1")
            root.set_attribute("metadata", json.dumps({"env": "prod", "version": 3}))
            root.set_attribute("tag.tags", ["beta", "vip"])
            with tracer.start_as_current_span("llm") as llm:
                llm.set_attribute("llm.token_count.prompt", 7)
                llm.set_attribute("llm.token_count.completion", 3)
                llm.set_attribute("llm.token_count.total", 10)
                llm.set_attribute("llm.cost.total", 0.5)
                llm.set_attribute("assay.tags.env", "dev")  # the root's tags win over a child's
            with tracer.start_as_current_span("llm-2") as llm:
                llm.set_attribute("llm.token_count.prompt", 1)
                llm.set_attribute("llm.token_count.completion", 1)
                llm.set_attribute("llm.cost.total", 0.25)
                llm.set_attribute("assay.metadata.step", "second")
            root.set_attribute("assay.tags.env", "prod")

    def genai(tracer: Any) -> None:
        with tracer.start_as_current_span("chat gpt-4o") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute(
                "gen_ai.input.messages",
                json.dumps([{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]),
            )
            span.add_event(
                "gen_ai.client.inference.operation.details",
                {
                    "gen_ai.output.messages": json.dumps(
                        [{"role": "assistant", "parts": [{"type": "text", "content": "hey"}]}]
                    )
                },
            )
            span.set_attribute("gen_ai.usage.input_tokens", 11)
            span.set_attribute("gen_ai.usage.output_tokens", 4)
            span.set_attribute("gen_ai.conversation.id", "conv-9")
            span.set_status(Status(StatusCode.ERROR, "rate limited"))

    def genai_events(tracer: Any) -> None:
        with tracer.start_as_current_span("chat") as span:
            span.add_event("gen_ai.system.message", {"content": "be brief"})
            span.add_event("gen_ai.user.message", {"content": "2+2?"})
            span.add_event(
                "gen_ai.choice",
                {"index": 0, "finish_reason": "stop", "message": json.dumps({"content": "4"})},
            )

    def mlflow(tracer: Any) -> None:
        with tracer.start_as_current_span("predict") as root:
            root.set_attribute("mlflow.spanInputs", json.dumps({"x": [1, 2]}))
            root.set_attribute("mlflow.spanOutputs", json.dumps("three"))
            with tracer.start_as_current_span("chat_model") as child:
                child.set_attribute(
                    "mlflow.chat.tokenUsage",
                    json.dumps({"input_tokens": 5, "output_tokens": 6, "total_tokens": 11}),
                )
                child.set_attribute("mlflow.llm.cost", json.dumps({"total_cost": 0.125}))

    recorded = {
        name: record(experiment_id, build)
        for name, build in {
            "openinference": openinference,
            "genai": genai,
            "genai_events": genai_events,
            "mlflow": mlflow,
        }.items()
    }
    assert export(server, [s for batch in recorded.values() for s in batch]) is (
        SpanExportResult.SUCCESS
    )
    got = {name: get_trace(server, hex_trace_id(b[0]))["trace"] for name, b in recorded.items()}

    oi = got["openinference"]
    assert (oi["request"], oi["response"]) == ("hello", {"answer": 42})
    assert oi["status"] == "OK"
    assert oi["session_id"] == "oi-session"
    assert oi["token_usage"] == {"input_tokens": 8, "output_tokens": 4, "total_tokens": 12}
    assert oi["cost"] == pytest.approx(0.75)
    assert oi["metadata"] == {
        "service.name": "test-app",
        "user": "u1",
        "env": "prod",
        "version": "3",
        "step": "second",
    }
    assert oi["tags"] == {"beta": "", "vip": "", "env": "prod"}

    ga = got["genai"]  # chat messages: their text (the JSON stays on the span)
    assert (ga["request"], ga["response"]) == ("hi", "hey")
    assert ga["status"] == "ERROR"
    assert ga["session_id"] == "conv-9"
    assert ga["token_usage"] == {"input_tokens": 11, "output_tokens": 4, "total_tokens": 15}
    assert ga["cost"] is None

    ev = got["genai_events"]  # the last user message and the first choice
    assert (ev["request"], ev["response"]) == ("2+2?", "4")
    assert ev["token_usage"] is None

    ml = got["mlflow"]
    assert (ml["request"], ml["response"]) == ({"x": [1, 2]}, "three")
    assert ml["token_usage"] == {"input_tokens": 5, "output_tokens": 6, "total_tokens": 11}
    assert ml["cost"] == pytest.approx(0.125)
    assert ml["session_id"] is None


def test_metadata_and_tags_rows_follow_the_summary(server, experiment_id, engine):
    """The key/value rows the filter strings search are rewritten with every recompute."""

    def build(tracer: Any) -> None:
        with tracer.start_as_current_span("root") as root:
            root.set_attribute("assay.metadata.user", "u1")
            with tracer.start_as_current_span("child") as child:
                child.set_attribute("assay.metadata.user", "child-user")
                child.set_attribute("assay.metadata.only_child", "x" * 600)
                child.set_attribute("assay.tags.env", "dev")

    finished = {s.name: s for s in record(experiment_id, build)}
    trace_id = hex_trace_id(finished["root"])
    assert export(server, [finished["child"]]) is SpanExportResult.SUCCESS

    def rows(table: sa.Table) -> dict[str, str]:
        with engine.connect() as conn:
            query = sa.select(table.c.key, table.c.value).where(table.c.trace_id == trace_id)
            return {r.key: r.value for r in conn.execute(query)}

    assert rows(trace_metadata)["user"] == "child-user"
    assert len(rows(trace_metadata)["only_child"]) == 500  # indexed prefix
    assert rows(trace_tags) == {"env": "dev"}
    assert export(server, [finished["root"]]) is SpanExportResult.SUCCESS
    assert rows(trace_metadata)["user"] == "u1"  # the root's value wins
    full = get_trace(server, trace_id)["trace"]["metadata"]
    assert full["only_child"] == "x" * 600


def test_one_request_inserts_new_traces_and_replaces_resent_spans(store_uri, store_engine):
    """Spans of a trace with none stored are inserted (PostgreSQL: one COPY); a re-sent span
    of a trace with stored spans replaces the stored one. One request holding both kinds."""
    assay.db.upgrade(store_engine)
    stores = Stores.open(store_engine, Settings(store_uri=store_uri))
    exp = experiment(store_engine)
    old, new = new_trace_id(), new_trace_id()
    stores.traces.spans_ingest({exp: trace_spans(old, output="first answer")})
    resent = trace_spans(old, output="second answer", child=False)
    # COPY's text format escapes these; they must come back as they were sent.
    awkward = "tab\there \\N \\. line\nend"
    stores.traces.spans_ingest({exp: [*resent, *trace_spans(new, metadata={"user": awkward})]})
    for trace_id, output in ((old, "second answer"), (new, "a fine answer")):
        trace = stores.traces.trace_get(trace_id)
        assert trace is not None
        assert trace.span_count == 2
        assert trace.response == output
    root = next(s for s in stores.traces.spans_list(old) if s.parent_span_id is None)
    assert root.attributes["output.value"] == "second answer"
    with store_engine.connect() as conn:
        query = sa.select(trace_metadata.c.value).where(
            trace_metadata.c.trace_id == new, trace_metadata.c.key == "user"
        )
        assert conn.execute(query).scalar_one() == awkward
    new_root = next(s for s in stores.traces.spans_list(new) if s.parent_span_id is None)
    assert json.loads(new_root.attributes["metadata"])["user"] == awkward


def test_span_values_orjson_refuses_and_rows_json_wrote_read_back(store_uri, store_engine):
    """Span values go to the store as orjson writes them; what orjson refuses (an integer over
    64 bits, a lone surrogate) is written by ``json`` instead and reads back the same. A row
    ``json.dumps`` wrote before (``NaN``, which orjson does not read) reads back too."""
    assay.db.upgrade(store_engine)
    stores = Stores.open(store_engine, Settings(store_uri=store_uri))
    exp = experiment(store_engine)
    trace_id = new_trace_id()
    root, child = trace_spans(trace_id)
    odd = {"big": 2**70, "text": "naïve 東京", "nested": {"k": [1, 2.5, None, True]}}
    child = dataclasses.replace(child, attributes={**child.attributes, **odd})
    lone = dataclasses.replace(root, attributes={**root.attributes, "lone": "a\ud800b"})
    stores.traces.spans_ingest({exp: [lone, child]})
    stored = {s.span_id: s for s in stores.traces.spans_list(trace_id)}
    assert stored[child.span_id].attributes == child.attributes
    assert stored[root.span_id].attributes["lone"] == "a\ud800b"
    with store_engine.begin() as conn:
        where = (spans.c.trace_id == trace_id) & (spans.c.span_id == child.span_id)
        conn.execute(spans.update().where(where).values(attributes='{"x":NaN}'))
    (written_before,) = [
        s for s in stores.traces.spans_list(trace_id) if s.span_id == child.span_id
    ]
    assert math.isnan(written_before.attributes["x"])


@pytest.mark.parametrize("store_uri", ["postgresql", "mysql"], indirect=True)
def test_two_ingests_creating_one_trace_both_land(store_uri, store_engine):
    """A new trace's row goes in whole, summarised from the request. When another ingest
    creates the same trace meanwhile (its row was not there to lock), this one waits for it,
    then writes its spans into that trace and summarises all of them: on PostgreSQL the insert
    fails on the key and the transaction runs again; MariaDB's lock waits for the row."""
    assay.db.upgrade(store_engine)
    stores = Stores.open(store_engine, Settings(store_uri=store_uri))
    exp = experiment(store_engine)
    trace_id = new_trace_id()
    child_only = trace_spans(trace_id, root=False)
    with store_engine.connect() as other:  # an ingest in flight: the child's row, not committed
        other.execute(traces.insert(), _trace_row(trace_id, exp, summarize(child_only), now=1))
        other.execute(spans.insert(), [_span_row(s, {}) for s in child_only])
        failures: list[BaseException] = []

        def ingest_root() -> None:
            try:
                stores.traces.spans_ingest({exp: trace_spans(trace_id, child=False)})
            except BaseException as exc:  # reported by the assertion below
                failures.append(exc)

        thread = threading.Thread(target=ingest_root)
        thread.start()
        # InnoDB refreshes innodb_trx only after 100 ms without a read of it: poll slower.
        wait_until(lambda: _waiting_on_a_lock(store_engine), interval=0.15)
        other.commit()
    thread.join(timeout=60)
    assert failures == []
    trace = stores.traces.trace_get(trace_id)
    assert trace is not None
    assert (trace.span_count, trace.status.value, trace.response) == (2, "OK", "a fine answer")
    assert trace.completed_at_ms is not None
    assert len(stores.traces.spans_list(trace_id)) == 2


def _waiting_on_a_lock(engine: sa.Engine) -> bool:
    """Some session of the test's database waits for a lock (PostgreSQL or MariaDB)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            query = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        else:
            query = (
                "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
            )
        return bool(conn.exec_driver_sql(query).scalar_one())


def test_a_failed_bulk_insert_is_a_store_error(store_uri, store_engine):
    """A driver error inside a bulk insert (PostgreSQL's COPY) surfaces as StoreError, as any
    other statement's, and rolls its transaction back."""
    assay.db.upgrade(store_engine)
    store = TrackingStore(store_engine)
    exp = store.create_experiment(f"exp-{uuid.uuid4().hex[:8]}").id
    row = {"id": exp, "name": "again", "created_at_ms": 0}
    with pytest.raises(StoreError, match="store error"):
        store._tx(lambda conn: store._insert_rows(conn, experiments, [row]))
    assert store.get_experiment(exp).name.startswith("exp-")


# -- refused requests ------------------------------------------------------------------------------


def _status(response: httpx.Response) -> status_pb2.Status:
    status = status_pb2.Status()
    if response.headers["content-type"].startswith("application/json"):
        json_format.Parse(response.text, status)
    else:
        status.ParseFromString(response.content)
    return status


def test_unknown_experiment_is_404_and_writes_nothing(server, experiment_id, engine):
    known = record(experiment_id, build_agent)
    unknown = record(str(uuid.uuid4()), build_agent)
    message = encode_spans(known + unknown)  # two resources: one good, one unknown
    response = httpx.post(
        f"{server.url}/v1/traces",
        content=message.SerializeToString(),
        headers={"content-type": PROTOBUF},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == PROTOBUF
    status = _status(response)
    assert status.code == 5  # NOT_FOUND
    assert "not found" in status.message

    document = otlp_json(unknown)
    response = httpx.post(f"{server.url}/v1/traces", json=document, timeout=10)
    assert response.status_code == 404
    assert _status(response).code == 5

    sent = [hex_trace_id(span) for span in known + unknown]
    for table in (traces, spans, trace_metadata, trace_tags):
        assert count(engine, table, sent) == 0
    missing = httpx.get(f"{server.url}/api/v1/traces/{hex_trace_id(known[0])}", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


@SQLITE_SERVER
@pytest.mark.parametrize(
    ("content_type", "body", "status", "encoding"),
    [
        (PROTOBUF, b"\xff\xff\xff\xff not protobuf", 400, None),
        ("application/json", b'{"resourceSpans": [', 400, None),
        ("application/json", b'{"resourceSpans": "nope"}', 400, None),
        (
            "application/json",
            b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"00"}]}]}]}',
            400,
            None,
        ),
        (PROTOBUF, b"\x1f\x8b\x08\x00 truncated gzip", 400, "gzip"),
        (PROTOBUF, b"", 415, "br"),
        ("text/plain", b"hello", 415, None),
    ],
    ids=["protobuf", "json-syntax", "json-shape", "json-hex", "gzip", "encoding", "media-type"],
)
def test_malformed_bodies_are_refused(
    server, experiment_id, engine, content_type, body, status, encoding
):
    headers = {"content-type": content_type, "x-assay-experiment-id": experiment_id}
    if encoding:
        headers["content-encoding"] = encoding
    # The store is the module's, but this kind's tests run one at a time: nothing else writes.
    before = count(engine, traces), count(engine, spans)
    response = httpx.post(f"{server.url}/v1/traces", content=body, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    assert _status(response).message
    assert (count(engine, traces), count(engine, spans)) == before


@SQLITE_SERVER
def test_spans_without_experiment_land_in_the_default_experiment(server, experiment_id, engine):
    finished = record(None, build_agent)
    response = httpx.post(
        f"{server.url}/v1/traces",
        content=encode_spans(finished).SerializeToString(),
        headers={"content-type": PROTOBUF},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    trace = get_trace(server, hex_trace_id(finished[0]))["trace"]
    assert trace["experiment_id"] == TrackingStore(engine).default_experiment().id == "0"


@SQLITE_SERVER
def test_invalid_spans_are_rejected_with_partial_success(server, experiment_id):
    finished = record(experiment_id, build_agent)
    document = otlp_json(finished)
    bad = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    bad_name = bad["name"]
    bad["traceId"] = "00" * 16  # an all-zero trace id is invalid
    response = httpx.post(f"{server.url}/v1/traces", json=document, timeout=10)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1"  # int64 is a string in protobuf JSON
    assert "trace_id" in partial["errorMessage"]
    names = {s["name"] for s in get_trace(server, hex_trace_id(finished[0]))["spans"]}
    assert names == {s.name for s in finished} - {bad_name}


# -- assessments -----------------------------------------------------------------------------------


def ingest_one(server: ServerProcess, experiment_id: str) -> str:
    finished = record(experiment_id, build_agent)
    assert export(server, finished) is SpanExportResult.SUCCESS
    return hex_trace_id(finished[0])


def post_assessment(server: ServerProcess, trace_id: str, **body: Any) -> httpx.Response:
    payload = {"name": "relevance", "value": 1, "source": {"type": "HUMAN", "id": "alice"}}
    payload.update(body)
    return httpx.post(
        f"{server.url}/api/v1/traces/{trace_id}/assessments", json=payload, timeout=30
    )


def test_assessments_create_list_delete_and_idempotency(server, experiment_id, engine):
    trace_id = ingest_one(server, experiment_id)

    # Without a key, every write is a new assessment.
    first = post_assessment(server, trace_id, rationale="on topic", metadata={"k": "v"})
    assert first.status_code == 201, first.text
    plain = first.json()
    assert plain["trace_id"] == trace_id
    assert plain["source"] == {"type": "HUMAN", "id": "alice"}
    assert (plain["value"], plain["rationale"], plain["metadata"]) == (1, "on topic", {"k": "v"})
    assert plain["idempotency_key"] is None
    assert post_assessment(server, trace_id).status_code == 201

    # With a key, the second write replaces the first.
    key = default_idempotency_key(trace_id, "correct", "judge-1")
    body = {"name": "correct", "source": {"type": "LLM_JUDGE", "id": "judge-1"}}
    a = post_assessment(server, trace_id, value="no", idempotency_key=key, **body).json()
    b = post_assessment(
        server, trace_id, value={"score": 0.9}, rationale="better", idempotency_key=key, **body
    ).json()
    assert b["id"] == a["id"]
    assert b["created_at_ms"] == a["created_at_ms"]
    assert b["updated_at_ms"] >= a["updated_at_ms"]
    assert (b["value"], b["rationale"]) == ({"score": 0.9}, "better")
    error = post_assessment(
        server, trace_id, value=None, error={"code": "TIMEOUT"}, idempotency_key=key, **body
    ).json()
    assert (error["id"], error["value"], error["error"]) == (a["id"], None, {"code": "TIMEOUT"})

    listed = httpx.get(f"{server.url}/api/v1/traces/{trace_id}/assessments", timeout=10).json()
    assert [x["name"] for x in listed["assessments"]] == ["relevance", "relevance", "correct"]
    assert count(engine, assessments, [trace_id]) == 3
    detail = get_trace(server, trace_id.upper())  # ids are hex in any case
    assert len(detail["assessments"]) == 3

    url = f"{server.url}/api/v1/traces/{trace_id}/assessments/{plain['id']}"
    assert httpx.delete(url, timeout=10).status_code == 204
    assert httpx.delete(url, timeout=10).status_code == 404
    assert count(engine, assessments, [trace_id]) == 2

    # Refused: unknown trace, bad source type, NaN value, unknown field.
    other = uuid.uuid4().hex
    assert post_assessment(server, other).status_code == 404
    assert post_assessment(server, "not-a-trace").status_code == 404
    assert post_assessment(server, trace_id, source={"type": "ROBOT", "id": "x"}).status_code == 422
    nan = httpx.post(
        f"{server.url}/api/v1/traces/{trace_id}/assessments",
        content=b'{"name": "n", "value": NaN, "source": {"type": "CODE", "id": "c"}}',
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert nan.status_code in (400, 422), nan.text
    assert post_assessment(server, trace_id, bogus=1).status_code == 422
    assert count(engine, assessments, [trace_id]) == 2
    listing = httpx.get(f"{server.url}/api/v1/traces/{other}/assessments", timeout=10)
    assert listing.status_code == 404


def test_concurrent_writers_of_one_key_leave_one_assessment(server, experiment_id, engine):
    trace_id = ingest_one(server, experiment_id)
    writers = 12
    barrier = threading.Barrier(writers)
    answers: list[httpx.Response] = []

    def write(i: int) -> None:
        barrier.wait()
        answers.append(
            post_assessment(
                server,
                trace_id,
                name="score",
                value=i,
                source={"type": "CODE", "id": "scorer"},
                idempotency_key="score/scorer",
            )
        )

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [a.status_code for a in answers] == [201] * writers, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(assessments.c.value).where(assessments.c.trace_id == trace_id)
        ).all()
    assert len(rows) == 1
    assert int(rows[0].value) in range(writers)


# -- the SDK ---------------------------------------------------------------------------------------


@SQLITE_SERVER
def test_sdk_nested_spans_are_one_trace(server, experiment_id):
    assay.tracing.configure(server.url, experiment_id, service_name="sdk-app")
    try:

        @assay.trace(kind="RETRIEVER")
        def retrieve(query: str, k: int = 2) -> list[str]:
            return [f"doc-{i}" for i in range(k)]

        @assay.trace
        def fail() -> None:
            raise ValueError("boom")

        @assay.trace(name="answer", metadata={"user": "u7"}, tags={"env": "test"}, session_id="s9")
        def answer(question: str) -> dict[str, Any]:
            docs = retrieve(question)
            with assay.trace("rerank") as span:
                span.set_inputs(docs)
                span.set_outputs(docs[:1])
            with pytest.raises(ValueError, match="boom"):
                fail()
            return {"answer": "42", "docs": docs}

        with assay.trace("outer") as outer:
            result = answer("life?")
        assert result == {"answer": "42", "docs": ["doc-0", "doc-1"]}
        assert assay.tracing.flush()
    finally:
        assay.tracing.shutdown()

    detail = wait_until(lambda: _complete(server, outer.trace_id, spans_expected=5), timeout=30)
    trace = detail["trace"]
    assert trace["status"] == "OK"
    assert trace["metadata"] == {"service.name": "sdk-app", "user": "u7"}  # merged from spans
    named = by_name(detail)
    assert set(named) == {"outer", "answer", "retrieve", "rerank", "fail"}
    root = named["outer"]
    assert root["parent_span_id"] is None
    assert named["answer"]["parent_span_id"] == root["span_id"]
    for child in ("retrieve", "rerank", "fail"):
        assert named[child]["parent_span_id"] == named["answer"]["span_id"], child
    attrs = named["answer"]["attributes"]
    assert json.loads(attrs["input.value"]) == {"question": "life?"}
    assert json.loads(attrs["output.value"]) == {"answer": "42", "docs": ["doc-0", "doc-1"]}
    assert attrs["assay.metadata.user"] == "u7"
    assert attrs["assay.tags.env"] == "test"
    assert attrs["session.id"] == "s9"
    assert json.loads(named["retrieve"]["attributes"]["input.value"]) == {"query": "life?", "k": 2}
    assert named["retrieve"]["attributes"]["openinference.span.kind"] == "RETRIEVER"
    assert json.loads(named["rerank"]["attributes"]["output.value"]) == ["doc-0"]
    assert named["fail"]["status"]["code"] == "ERROR"
    assert "boom" in named["fail"]["status"]["message"]
    assert [e["name"] for e in named["fail"]["events"]] == ["exception"]
    assert trace["session_id"] == "s9"  # from a child, as the root has none
    assert trace["tags"] == {"env": "test"}


@SQLITE_SERVER
def test_sdk_decorated_root_carries_request_and_response(server, experiment_id):
    seen: list[str] = []
    assay.tracing.configure(server.url, experiment_id, batch=False)
    try:

        @assay.trace(metadata={"user": "u1"})
        async def handle(message: str) -> str:
            seen.append(f"{otel_trace.get_current_span().get_span_context().trace_id:032x}")
            return message.upper()

        assert asyncio.run(handle("hi")) == "HI"
    finally:
        assay.tracing.shutdown()
    detail = wait_until(lambda: _complete(server, seen[0], spans_expected=1), timeout=30)
    trace = detail["trace"]
    assert trace["request"] == {"message": "hi"}
    assert trace["response"] == "HI"
    assert trace["metadata"]["user"] == "u1"
    assert trace["status"] == "OK"
    assert detail["spans"][0]["name"] == "handle"


def _complete(server: ServerProcess, trace_id: str, spans_expected: int) -> dict[str, Any] | None:
    response = httpx.get(f"{server.url}/api/v1/traces/{trace_id}", timeout=10)
    if response.status_code == 404:
        return None
    detail: dict[str, Any] = response.json()
    if detail["trace"]["completed_at_ms"] is None or len(detail["spans"]) < spans_expected:
        return None
    return detail


@SQLITE_SERVER
def test_trace_ids_in_any_case_and_unknown_ids(server, experiment_id):
    trace_id = ingest_one(server, experiment_id)
    assert get_trace(server, trace_id.upper())["trace"]["trace_id"] == trace_id
    for bad in ("xyz", "0" * 31, uuid.uuid4().hex):
        response = httpx.get(f"{server.url}/api/v1/traces/{bad}", timeout=10)
        assert response.status_code == 404


# -- decoding and deriving without a server --------------------------------------------------------


def _span(**attributes: Any) -> Span:
    return Span(
        trace_id="ab" * 16,
        span_id="cd" * 8,
        parent_span_id=None,
        name="root",
        kind="INTERNAL",
        status_code="UNSET",
        status_message=None,
        start_time_ns=1_700_000_000_000_000_000,
        end_time_ns=1_700_000_000_250_000_000,
        attributes=attributes,
    )


def test_values_json_cannot_render_stay_text():
    """NaN, Infinity, out-of-range numbers and lone surrogates would make the trace's JSON
    answer fail: such inputs are kept as the (cleaned) text they came in as."""
    for text in ('{"a": NaN}', "[Infinity]", "[1e400]", '["\\ud800"]'):
        summary = summarize([_span(**{"input.value": text, "output.value": "[1, 2]"})])
        assert summary.request == text
        assert summary.response == [1, 2]
    summary = summarize(
        [_span(**{"llm.token_count.prompt": 2**63, "llm.token_count.completion": "12"})]
    )
    assert (summary.input_tokens, summary.output_tokens, summary.total_tokens) == (None, 12, 12)
    assert summary.duration_ms == 250
    assert summary.start_time_ms == 1_700_000_000_000


@pytest.mark.parametrize("body", [b"null", b"[]", b"1", b'"x"'])
def test_otlp_json_must_be_an_object(body):
    with pytest.raises(InvalidRequestError, match="not a JSON object"):
        decode_request(
            body,
            content_type="application/json",
            content_encoding=None,
            default_experiment_id="e",
            max_bytes=1000,
        )


def test_decompressed_size_is_limited():
    bomb = gzip.compress(b"\0" * 100_000)
    with pytest.raises(RequestTooLargeError):
        decode_request(
            bomb,
            content_type=PROTOBUF,
            content_encoding="gzip",
            default_experiment_id="e",
            max_bytes=10_000,
        )
