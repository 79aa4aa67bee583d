"""What hostile HTTP input may cost the server (issue 12), against real servers and stores.

- A gzip body of many members (streams) is refused at once, and ``/health`` keeps answering.
- Requests with a bad or missing token are refused before their body is read: a body that is
  never completely sent still gets its 401 (REST JSON, OTLP, chunked, UI forms), and a job
  token that may send no traces gets its 403 before the body too.
- A body over ``max_request_bytes`` is refused while it streams, with OTLP's Status on OTLP.
- An unexpected exception is a JSON 500 on a connection that stays open.
- A large OTLP request on SQLite is written in bounded transactions: a job submitted while it
  is being written waits for one of them, not for the whole request; on every store the
  traces are whole in each transaction, with their ledger rows, and what would fail the
  request is found before anything is written.
- Deriving a summary is linear in the spans, and resource attributes copied to every span are
  bounded.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import assay
from assay.config import Settings
from assay.db.engine import create_engine
from assay.db.tables import scoring_tasks, spans, traces
from assay.errors import InvalidRequestError, NotFoundError, RequestTooLargeError
from assay.jobs.tokens import JobTokens
from assay.scoring.service import ScoringService
from assay.server.app import create_app
from assay.server.auth import principal, who_guards
from assay.server.tokens import TokenStore
from assay.server.ui.pages import ui_caller
from assay.stores import Stores
from assay.tracing.derive import summarize
from assay.tracing.model import Span
from assay.tracing.otlp import EXPERIMENT_ATTRIBUTE, MAX_GZIP_MEMBERS, decode_request
from assay.tracing.otlp_logs import decode_logs_request
from assay.tracking.store import TrackingStore
from support.scoring import experiment, new_trace_id, register, settings_for, trace_spans
from support.servers import ServerProcess, Servers, free_port
from support.timing import wait_until

PROTOBUF = "application/x-protobuf"
BASE_NS = 1_700_000_000_000_000_000


# -- helpers ---------------------------------------------------------------------------------------


def tiny_traces(experiment_id: str, count: int, seed: int = 1) -> bytes:
    """An OTLP request of ``count`` one-span traces: the most traces a body of its size holds."""
    rng = random.Random(seed)
    message = ExportTraceServiceRequest()
    resource_spans = message.resource_spans.add()
    attribute = resource_spans.resource.attributes.add(key=EXPERIMENT_ATTRIBUTE)
    attribute.value.string_value = experiment_id
    scope = resource_spans.scope_spans.add()
    for i in range(count):
        scope.spans.add(
            trace_id=rng.randbytes(15) + b"\x01",
            span_id=rng.randbytes(7) + b"\x01",
            name="s",
            start_time_unix_nano=BASE_NS + i,
            end_time_unix_nano=BASE_NS + i + 1,
        )
    return message.SerializeToString()


def otlp_status(response: httpx.Response) -> status_pb2.Status:
    assert response.headers["content-type"] == PROTOBUF, response.text
    status = status_pb2.Status()
    status.ParseFromString(response.content)
    return status


def raw_exchange(url: str, head: str, body_start: bytes, timeout: float = 60) -> bytes:
    """Send a request's head and only the start of its body (the rest never comes); return
    the head of the answer. Times out (failing the test) if the server waits for the body."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body_start)
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(
                    f"no answer within {timeout} s: the body was awaited"
                ) from None
            if not data:
                break
            answer += data
        return answer


def request_head(method: str, path: str, *headers: str) -> str:
    return "\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, ""])


def admin_token(store_uri: str) -> str:
    engine = create_engine(store_uri)
    try:
        return TokenStore(engine).create("root", "admin")[1]
    finally:
        engine.dispose()


# -- gzip ------------------------------------------------------------------------------------------


def test_gzip_members_are_capped_and_decompressed_in_linear_time() -> None:
    decode = {
        "content_type": PROTOBUF,
        "content_encoding": "gzip",
        "default_experiment_id": "e",
        "max_bytes": 16 * 2**20,
    }
    started = time.monotonic()
    with pytest.raises(InvalidRequestError, match="members"):
        decode_request(gzip.compress(b"") * 200_000, **decode)  # 4 MB: 80 s before
    assert time.monotonic() - started < 20

    message = ExportTraceServiceRequest.FromString(tiny_traces("e", 200))
    body = message.SerializeToString()
    step = len(body) // MAX_GZIP_MEMBERS + 1
    members = b"".join(gzip.compress(body[i : i + step]) for i in range(0, len(body), step))
    assert len(decode_request(members, **decode).spans) == 200  # several members still work
    with pytest.raises(InvalidRequestError, match="members"):
        decode_request(members + gzip.compress(b""), **decode)
    with pytest.raises(RequestTooLargeError, match="max_request_bytes"):
        decode_request(gzip.compress(b"\0" * 2**20) * 20, **decode)


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_an_export_of_more_spans_than_the_limit_is_refused_before_decoding(
    server: ServerProcess, store_uri: str
) -> None:
    """A 16 MB body holds ~430,000 one-span traces of 39 bytes: ~60 s of the server's CPU
    (spans that small cost ~40x the CPU per byte of real ones). The byte limit does not
    bound that; the span count does (max_request_items, 20,000 by default)."""
    engine = create_engine(store_uri)
    try:
        exp = TrackingStore(engine).create_experiment(f"many-{uuid.uuid4().hex[:8]}").id
        body = tiny_traces(exp, 20_001)
        headers = {"content-type": PROTOBUF}
        answer = httpx.post(f"{server.url}/v1/traces", content=body, headers=headers, timeout=60)
        assert answer.status_code == 413, answer.text
        message = otlp_status(answer).message
        assert "20001 spans" in message
        assert "ASSAY_MAX_REQUEST_ITEMS" in message
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(traces)).scalar_one() == 0
    finally:
        engine.dispose()


def test_log_exports_are_bounded_by_record_count() -> None:
    message = ExportLogsServiceRequest()
    scope = message.resource_logs.add().scope_logs.add()
    for i in range(3):
        scope.log_records.add(time_unix_nano=BASE_NS + i).body.string_value = "hi"
    body = message.SerializeToString()
    decode = {"content_type": PROTOBUF, "content_encoding": None, "default_experiment_id": "e"}
    with pytest.raises(RequestTooLargeError, match="3 log records"):
        decode_logs_request(body, max_bytes=2**20, max_items=2, **decode)
    assert decode_logs_request(body, max_bytes=2**20, max_items=3, **decode).ignored == 3


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_gzip_bombs_are_refused_at_once_and_health_answers(server: ServerProcess) -> None:
    bomb = gzip.compress(b"") * 200_000
    headers = {"content-type": PROTOBUF, "content-encoding": "gzip"}
    answers: list[httpx.Response] = []
    health: list[float] = []

    def send() -> None:
        answers.append(
            httpx.post(f"{server.url}/v1/traces", content=bomb, headers=headers, timeout=60)
        )

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    while any(s.is_alive() for s in senders):
        started = time.monotonic()
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
        health.append(time.monotonic() - started)
    for sender in senders:
        sender.join()
    assert len(answers) == 4
    for answer in answers:
        assert answer.status_code == 400
        assert "members" in otlp_status(answer).message
    assert max(health, default=0) < 10


# -- authentication before the body ----------------------------------------------------------------


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_bad_tokens_are_refused_before_the_body_is_read(servers: Servers, store_uri: str) -> None:
    server = servers.start(store_uri, "--auth", "--workers", "0")
    length = "Content-Length: 16000000"  # under max_request_bytes; only 1 KB is ever sent
    cases = [
        ("/api/v1/jobs", ["Content-Type: application/json", "Authorization: Bearer nope"]),
        ("/api/v1/experiments", ["Content-Type: application/json"]),
        ("/v1/traces", [f"Content-Type: {PROTOBUF}"]),
        ("/v1/traces", [f"Content-Type: {PROTOBUF}", "Authorization: Bearer assay_x"]),
    ]
    for path, headers in cases:
        answer = raw_exchange(server.url, request_head("POST", path, length, *headers), b"{" * 1024)
        assert answer.startswith(b"HTTP/1.1 401"), (path, answer)
        assert b"www-authenticate: bearer" in answer.lower()

    chunked = request_head(
        "POST", "/api/v1/jobs", "Transfer-Encoding: chunked", "Content-Type: application/json"
    )
    answer = raw_exchange(server.url, chunked, b"400\r\n" + b"[" * 1024 + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 401"), answer

    # A UI form without a session goes to the login page, unread.
    form = request_head(
        "POST",
        "/ui/jobs",
        length,
        "Content-Type: application/x-www-form-urlencoded",
        "Cookie: assay_token=nope",
        "Origin: http://127.0.0.1",  # the Host this request names
    )
    answer = raw_exchange(server.url, form, b"name=" + b"x" * 1024)
    assert answer.startswith(b"HTTP/1.1 303"), answer
    assert b"location: /ui/login?" in answer.lower()

    # A job token with no experiment scope may send no traces: 403, before the body.
    engine = create_engine(store_uri)
    job_token = JobTokens(TokenStore(engine)).mint("j", 1, None, ["run_id:1"], 2**62)
    engine.dispose()
    head = request_head(
        "POST",
        "/v1/traces",
        length,
        f"Content-Type: {PROTOBUF}",
        f"Authorization: Bearer {job_token}",
    )
    answer = raw_exchange(server.url, head, b"\0" * 1024)
    assert answer.startswith(b"HTTP/1.1 403"), answer

    # A valid token is let through (the gate keeps the caller for the route).
    token = admin_token(store_uri)
    created = httpx.post(
        f"{server.url}/api/v1/experiments",
        json={"name": "gate"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert created.status_code in (200, 201), created.text


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_bodies_over_the_limit_are_refused_while_they_stream(
    servers: Servers, store_uri: str
) -> None:
    limit = 64 * 1024
    server = servers.start(store_uri, "--workers", "0", max_request_bytes=limit)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(8):
            yield b"\0" * (limit // 4)

    answer = httpx.post(
        f"{server.url}/v1/traces", content=chunks(), headers={"content-type": PROTOBUF}, timeout=30
    )
    assert answer.status_code == 413
    status = otlp_status(answer)  # OTLP's own error body, in the request's encoding
    assert status.code == 8  # RESOURCE_EXHAUSTED
    assert "max_request_bytes" in status.message

    answer = httpx.post(
        f"{server.url}/api/v1/jobs",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"

    # Refused once past the limit, though the body never ends.
    head = request_head(
        "POST", "/api/v1/jobs", "Transfer-Encoding: chunked", "Content-Type: application/json"
    )
    piece = b"4000\r\n" + b" " * 0x4000 + b"\r\n"
    assert raw_exchange(server.url, head, piece * 5).startswith(b"HTTP/1.1 413")

    # Where nobody is authenticated first (the login form), far less is read.
    form = {"token": "x" * 70_000}
    assert httpx.post(f"{server.url}/ui/login", data=form, timeout=30).status_code == 413


def _flat_routes(app: FastAPI) -> list[APIRoute]:
    from fastapi import routing

    walk = getattr(routing, "_iter_included_route_candidates", None)  # FastAPI's lazy routers
    routes = list(walk(app.routes)) if walk is not None else list(app.routes)
    return [route for route in routes if isinstance(route, APIRoute)]


def _calls(route: APIRoute) -> set[Any]:
    calls, stack = set(), [route.dependant]
    while stack:
        dependant = stack.pop()
        calls.add(dependant.call)
        stack.extend(dependant.dependencies)
    return calls


def test_every_route_that_needs_a_caller_is_authenticated_before_its_body(
    tmp_path: Path,
) -> None:
    """The gate authenticates requests with a body by path (closed by default): every route
    that may read a body must be guarded the way it reads its caller, or be open and need
    none."""
    app = create_app(Settings(store_uri=f"sqlite:///{tmp_path / 'a.db'}"))
    routes = _flat_routes(app)
    assert len(routes) > 20
    for route in routes:
        if not route.methods & {"POST", "PUT", "PATCH", "DELETE"}:
            continue
        calls = _calls(route)
        needs = "header" if principal in calls else "cookie" if ui_caller in calls else None
        guard = who_guards(route.path)
        if route.path.startswith("/v1/"):  # OTLP: reads its caller itself, before its body
            needs = "header"
        assert guard == needs, (route.path, needs, guard)


# -- 500 on a connection that stays open -----------------------------------------------------------


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """``app`` under a real uvicorn in a thread; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=60)
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_a_500_is_json_and_keeps_the_connection(tmp_path: Path) -> None:
    app = create_app(
        Settings(store_uri=f"sqlite:///{tmp_path / 'a.db'}", server_workers=0, maintenance=False)
    )

    @app.get("/test/peer")
    def peer(request: Request) -> dict[str, Any]:
        assert request.client is not None
        return {"port": request.client.port}

    @app.get("/test/crash")
    def crash() -> None:
        raise RuntimeError("a bug")

    @app.post("/test/crash-async")
    async def crash_async(request: Request) -> None:
        await request.body()
        raise KeyError("another bug")

    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        first = client.get("/test/peer").json()["port"]
        for method, path, kind in (
            ("GET", "/test/crash", "RuntimeError"),
            ("POST", "/test/crash-async", "KeyError"),
        ):
            answer = client.request(method, path, json={"a": 1})
            assert answer.status_code == 500
            assert answer.json() == {
                "error": {"code": "internal_error", "message": f"internal error: {kind}"}
            }
            assert answer.headers.get("connection", "").lower() != "close"
            assert client.get("/test/peer").json()["port"] == first  # the same connection
        assert client.get("/health").status_code == 200


# -- ingest in bounded transactions ----------------------------------------------------------------


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_a_submit_waits_for_one_transaction_of_a_large_ingest(
    server: ServerProcess, store_uri: str
) -> None:
    engine = create_engine(store_uri)
    experiment_id = TrackingStore(engine).create_experiment(f"e-{uuid.uuid4().hex[:6]}").id
    count = Settings().max_request_items  # the largest request a server takes
    body = tiny_traces(experiment_id, count)
    waits: list[float] = []
    ingesting = threading.Event()
    done = threading.Event()

    def submit() -> None:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            while not done.is_set():
                started = time.monotonic()
                answer = client.post("/api/v1/jobs", json={"name": "t_noop"})
                assert answer.status_code == 201, answer.text
                if ingesting.is_set():
                    waits.append(time.monotonic() - started)
                done.wait(0.05)

    submitter = threading.Thread(target=submit)
    submitter.start()
    try:
        ingesting.set()
        started = time.monotonic()
        answer = httpx.post(
            f"{server.url}/v1/traces", content=body, headers={"content-type": PROTOBUF}, timeout=900
        )
        took = time.monotonic() - started
    finally:
        done.set()
        submitter.join()
    assert answer.status_code == 200, answer.text
    with engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(traces)).scalar_one()
    engine.dispose()
    assert stored == count
    assert len(waits) >= 5
    # One transaction held the write lock for most of the request before (60-80 s for 16 MB);
    # now a submit waits for one transaction of at most INGEST_TX_SPANS spans.
    assert max(waits) < took / 5, (max(waits), took)


def test_a_large_ingest_commits_whole_traces_in_bounded_transactions(store_uri: str) -> None:
    engine = create_engine(store_uri)
    assay.db.upgrade(engine)
    exp, other = experiment(engine), experiment(engine)
    settings = settings_for(store_uri)
    stores = Stores.open(engine, settings)
    register(ScoringService(stores, settings), exp, "length")
    store = stores.traces
    small = sorted(new_trace_id() for _ in range(6))
    big = new_trace_id()
    batch = [span for t in small for span in trace_spans(t)] + trace_spans(big)
    batch += [
        Span(
            trace_id=big,
            span_id=f"{i:016x}",
            parent_span_id=big[:16],
            name=f"tool {i}",
            kind="INTERNAL",
            status_code="OK",
            status_message=None,
            start_time_ns=BASE_NS + i,
            end_time_ns=BASE_NS + i + 1,
            attributes={"llm.token_count.prompt": 1},
        )
        for i in range(1, 6)
    ]
    commits: list[int] = []

    def committed(conn: sa.Connection) -> None:
        commits.append(1)

    sa.event.listen(engine, "commit", committed)
    store.spans_ingest({exp: batch}, tx_spans=3)
    sa.event.remove(engine, "commit", committed)
    # 6 traces of 2 spans (one per transaction at 3 spans each) and the trace of 7 alone.
    assert len(commits) >= 7
    for trace_id in [*small, big]:
        trace = store.trace_get(trace_id)
        assert trace is not None
        assert trace.completed_at_ms is not None
        assert trace.span_count == (7 if trace_id == big else 2)
    assert store.trace_get(big).input_tokens == 15  # type: ignore[union-attr]
    with engine.connect() as conn:
        query = sa.select(scoring_tasks.c.target_id).where(scoring_tasks.c.scorer_name == "length")
        assert sorted(conn.execute(query).scalars()) == sorted([*small, big])

    def stored() -> tuple[int, int]:
        with engine.connect() as conn:
            return (
                conn.execute(sa.select(sa.func.count()).select_from(traces)).scalar_one(),
                conn.execute(sa.select(sa.func.count()).select_from(spans)).scalar_one(),
            )

    before = stored()
    fresh = [new_trace_id() for _ in range(4)]
    with pytest.raises(NotFoundError):  # the unknown experiment's traces sort last
        store.spans_ingest(
            {exp: [s for t in fresh for s in trace_spans(t)], "f" * 36: trace_spans("f" * 32)},
            tx_spans=1,
        )
    assert stored() == before
    first = "0" * 31 + "1"  # written first, if the request were not checked beforehand
    with pytest.raises(InvalidRequestError, match="belongs to experiment"):
        store.spans_ingest({other: trace_spans(first) + trace_spans(small[-1])}, tx_spans=1)
    assert stored() == before
    engine.dispose()


# -- derived summaries and copied resources --------------------------------------------------------


def _top_most_reference(items: list[Span]) -> int:
    """The token count of the top-most measured spans, the obvious (quadratic) way."""
    by_id = {s.span_id: s for s in items}
    total = 0
    for span in items:
        if "llm.token_count.prompt" not in span.attributes:
            continue
        parent, seen = span.parent_span_id, {span.span_id}
        while parent is not None and parent not in seen:
            ancestor = by_id.get(parent)
            if ancestor is not None and "llm.token_count.prompt" in ancestor.attributes:
                break
            seen.add(parent)
            parent = ancestor.parent_span_id if ancestor is not None else None
        else:
            total += span.attributes["llm.token_count.prompt"]
    return total


def _span(span_id: str, parent: str | None, tokens: int | None) -> Span:
    return Span(
        trace_id="a" * 32,
        span_id=span_id,
        parent_span_id=parent,
        name="s",
        kind="INTERNAL",
        status_code="OK",
        status_message=None,
        start_time_ns=BASE_NS,
        end_time_ns=BASE_NS + 1,
        attributes={} if tokens is None else {"llm.token_count.prompt": tokens},
    )


def test_token_usage_adds_top_most_spans_in_linear_time() -> None:
    rng = random.Random(7)
    for _ in range(500):  # small random forests, with missing and circular parents
        ids = [f"{i:016x}" for i in range(rng.randint(1, 12))]
        spans = [
            _span(i, rng.choice([*ids, "f" * 16, None]), rng.choice([None, 1, 10, 100]))
            for i in ids
        ]
        assert (summarize(spans).input_tokens or 0) == _top_most_reference(spans)
    # A chain of 20,000 spans, each with a measured leaf: every leaf walked the whole chain.
    chain = [_span(f"{0:016x}", None, None)]
    for i in range(1, 20_000):
        chain.append(_span(f"{2 * i:016x}", f"{2 * (i - 1):016x}", None))
        chain.append(_span(f"{2 * i + 1:016x}", f"{2 * i:016x}", 1))
    started = time.monotonic()
    assert summarize(chain).input_tokens == 19_999
    assert time.monotonic() - started < 30  # minutes before


def test_resource_attributes_copied_to_every_span_are_bounded() -> None:
    message = ExportTraceServiceRequest.FromString(tiny_traces("e", 2000))
    resource = message.resource_spans[0].resource
    for i in range(300):
        resource.attributes.add(key=f"k{i}").value.string_value = "v" * 30
    body = message.SerializeToString()
    decode = {"content_type": PROTOBUF, "content_encoding": None, "default_experiment_id": None}
    with pytest.raises(RequestTooLargeError, match="resource attributes"):
        decode_request(body, max_bytes=len(body), **decode)  # 2,000 copies of ~12 KB
    decoded = decode_request(body, max_bytes=2**24, **decode)
    assert len(decoded.spans) == 2000
    assert json.dumps(decoded.spans[0].span.resource).count('"v') == 300
