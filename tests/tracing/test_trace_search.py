"""Trace search on real SQLite, PostgreSQL and MariaDB: what each operator means (checked
against a plain-Python reference, also on random filters), keyset pages, and the REST endpoint
``GET /api/v1/traces`` on a real server."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings

import assay
from assay.db import tables
from assay.tracing.filters import (
    TRACE_FIELDS,
    Expr,
    OrderKey,
    TraceSearch,
    format_filter,
    parse_filter,
    parse_order_by,
)
from support.filter_cases import (
    E1,
    ascii_folding,
    exprs,
    hostile_text,
    reference,
    search_ids,
    seed,
    seed_by_id,
)
from support.servers import InProcessServers

DESIGN_EXAMPLE = (
    "trace.status = 'OK' AND metadata.user = 'u1' AND tags.env != 'dev' AND "
    "trace.timestamp_ms > 1700000000000 AND metadata.assay.source_run IS NULL"
)


@pytest.fixture
def seeded(store_uri: str) -> Iterator[sa.Engine]:
    engine = assay.db.create_engine(store_uri)
    assay.db.upgrade(engine)
    seed(engine)
    try:
        yield engine
    finally:
        engine.dispose()


# (filter, trace ids of experiment e1 it matches)
SEMANTICS: list[tuple[str, str]] = [
    ("", "t1 t2 t3 t4 t5 t6"),
    ("trace.status = 'OK'", "t1 t4 t5"),
    ("trace.status = 'ok'", ""),  # case-sensitive everywhere (MariaDB's collation is not)
    ("trace.status != 'OK'", "t2 t3 t6"),
    ("trace.status IN ('OK', 'ERROR')", "t1 t2 t4 t5 t6"),
    ("trace.status NOT IN ('OK', 'ERROR')", "t3"),
    ("trace.trace_id = 't4'", "t4"),
    ("trace.timestamp_ms > 2000", "t3 t4 t5 t6"),
    ("trace.timestamp_ms >= 2000", "t2 t3 t4 t5 t6"),
    ("trace.timestamp_ms < 2000", "t1"),
    ("trace.timestamp_ms <= 3000", "t1 t2 t3 t4"),
    ("trace.timestamp_ms = 3000", "t3 t4"),
    ("trace.start_time_ms = 3000.0", "t3 t4"),
    ("trace.duration_ms < 100", "t1 t4 t5 t6"),  # NULL never compares
    ("trace.duration_ms != 50", "t2 t5 t6"),
    ("NOT trace.duration_ms = 50", "t2 t3 t5 t6"),  # two-valued: NOT is the complement
    ("trace.duration_ms IS NULL", "t3"),
    ("trace.execution_time_ms IS NOT NULL", "t1 t2 t4 t5 t6"),
    ("trace.duration_ms IN (0, 10)", "t5 t6"),
    ("trace.duration_ms NOT IN (0, 10)", "t1 t2 t4"),
    ("trace.cost > 0.3", "t1 t4"),
    ("trace.cost = 0.25", "t2"),
    ("trace.cost = 1", "t4"),
    ("trace.total_tokens >= 21", "t1 t4"),
    ("trace.span_count = 0", "t3 t5 t6"),
    ("trace.session_id = 's1'", "t1 t2"),
    ("trace.session_id != 's1'", "t4 t5 t6"),
    ("trace.session_id IS NULL", "t3"),
    ("trace.session_id > 's1'", "t4 t5 t6"),
    ("trace.request_preview LIKE 'Hello%'", "t1"),
    ("trace.request_preview ILIKE 'hello%'", "t1 t2"),
    ("trace.request_preview ILIKE 'HELLO_WORLD'", "t1 t2"),
    ("trace.request_preview LIKE '100\\%%'", "t3"),
    ("trace.request_preview LIKE '%\\%%'", "t3"),
    ("trace.request_preview LIKE 'a_b'", "t4 t5"),
    ("trace.request_preview LIKE 'a\\_b'", "t4"),
    ("trace.request_preview LIKE '%\\\\\\\\%'", "t6"),  # a literal backslash
    ("trace.request_preview LIKE '%\"quoted\"%'", "t6"),
    ("trace.request_preview LIKE 'It''s%'", "t6"),
    ("trace.request_preview NOT LIKE 'a%'", "t1 t2 t3 t6"),
    ("trace.response_preview LIKE '[*]?'", "t6"),  # GLOB characters are plain in LIKE
    ("trace.response_preview LIKE '%✓%'", "t5"),
    ("trace.response_preview LIKE '%🎉'", "t5"),
    ("trace.response_preview = 'fine'", "t1"),
    ("trace.response_preview ILIKE 'fine'", "t1 t4"),
    ("trace.response_preview NOT ILIKE 'fine'", "t5 t6"),  # NULL previews never match
    ("metadata.user = 'u1'", "t1"),
    ("metadata.user ILIKE 'u1'", "t1 t4"),
    ("metadata.user != 'u1'", "t2 t4 t5 t6"),  # != needs the key
    ("NOT metadata.user = 'u1'", "t2 t3 t4 t5 t6"),
    ("metadata.user IS NULL", "t3"),
    ("metadata.user IS NOT NULL", "t1 t2 t4 t5 t6"),
    ("metadata.user IN ('u1', 'u2')", "t1 t2"),
    ("metadata.user NOT IN ('u1', 'u2')", "t4 t5 t6"),
    ("metadata.user > 'u1'", "t2 t5"),  # code-point order: 'U1' < 'u1' < 'u2' < 'ü'
    ("metadata.user = 'ü'", "t5"),
    ("metadata.user = 'o''brien'", "t6"),
    ('metadata.user = "o\'brien"', "t6"),
    ("metadata.user = 'o\\'brien'", "t6"),
    ("metadata.note LIKE 'xxx%'", "t4"),
    ("metadata.assay.source_run IS NULL", "t2 t3 t4 t5 t6"),
    ("metadata.`assay.source_run` = 'r1'", "t1"),
    ("metadata.USER = 'u1'", ""),  # keys are case-sensitive
    ("tags.env = 'prod'", "t1"),  # trailing spaces count (MariaDB pads them away)
    ("tags.env = 'prod '", "t4"),
    ("tags.env LIKE 'prod%'", "t1 t4"),
    ("tags.env != 'dev'", "t1 t4 t6"),
    ("NOT tags.env = 'dev'", "t1 t3 t4 t5 t6"),
    ("tags.team = ''", "t4"),
    ("tag.team IS NOT NULL", "t4"),
    ("tags.`k8s.io/name` = 'x'", "t5"),
    ("span.name = 'llm'", "t1"),
    ("span.name = 'chat'", "t1 t2"),
    ("span.name != 'chat'", "t1 t4"),  # some span is not named chat
    ("NOT span.name = 'chat'", "t3 t4 t5 t6"),
    ("span.status = 'ERROR'", "t2"),
    ("span.kind IN ('CLIENT', 'INTERNAL')", "t1 t4"),
    ("span.name LIKE 'c%'", "t1 t2"),
    ("span.name IS NULL", "t3 t5 t6"),  # no span at all
    ("assessment.correct = TRUE", "t1"),
    ("assessment.correct = FALSE", "t2"),
    ("assessment.correct != TRUE", "t2"),
    ("assessment.correct IS NULL", "t3 t4 t5 t6"),
    ("assessment.score = 1", "t4"),
    ("assessment.score = 1.0", "t4"),
    ("assessment.score = 0.25", "t2"),
    ("assessment.score IN (1, 0.25)", "t2 t4"),
    ("assessment.score NOT IN (1)", "t2"),
    ("assessment.label = 'yes'", "t4"),
    ("assessment.label = '日本'", "t5 t6"),  # ASCII-escaped JSON or not
    ("assessment.label = TRUE", ""),
    ("assessment.label IS NOT NULL", "t4 t5 t6"),
    (DESIGN_EXAMPLE.replace("1700000000000", "500"), ""),
    (DESIGN_EXAMPLE.replace("1700000000000", "500").replace("IS NULL", "IS NOT NULL"), "t1"),
    ("trace.status = 'ERROR' OR trace.status = 'OK' AND trace.duration_ms < 20", "t2 t5 t6"),
    ("(trace.status = 'ERROR' OR trace.status = 'OK') AND trace.duration_ms < 20", "t5 t6"),
    ("NOT (trace.status = 'OK' OR trace.status = 'ERROR')", "t3"),
    ("trace.status = 'OK' and metadata.user = 'u1'", "t1"),
    ("metadata.user = 'x''; DROP TABLE traces; --'", ""),
    ("metadata.user = 'u1'' OR ''1''=''1'", ""),
]


def test_semantics(seeded: sa.Engine) -> None:
    failures = []
    for text, expected in SEMANTICS:
        got = " ".join(search_ids(seeded, text))
        if got != expected:
            failures.append(f"{text!r}: got {got!r}, expected {expected!r}")
        meant = " ".join(t for t in E1 if reference(parse_filter(text), seed_by_id(t)))
        assert meant == expected, f"the reference evaluator disagrees on {text!r}"
    assert not failures, "\n".join(failures)
    assert search_ids(seeded, "metadata.user = 'u1'", ("e1", "e2")) == ["t1", "x1"]
    assert search_ids(seeded, "", ("e2",)) == ["x1"]
    assert search_ids(seeded, "", ("nope",)) == []


def test_differential_against_reference(seeded: sa.Engine) -> None:
    """Random filters over the seeded values mean the same on the database as in Python."""

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(exprs)
    def check(expr: Expr) -> None:
        assume(ascii_folding(expr))
        text = format_filter(expr)
        expected = [t for t in E1 if reference(expr, seed_by_id(t))]
        assert search_ids(seeded, text) == expected, text

    check()


# --- keyset pages ------------------------------------------------------------------------------


def _expected_order(keys: tuple[OrderKey, ...], ids: list[str]) -> list[str]:
    """The documented order: keys in turn, NULLs last, then trace_id in the first key's
    direction."""
    columns = [(TRACE_FIELDS[k.field].column, k.descending) for k in keys]
    if not any(c == "trace_id" for c, _ in columns):
        columns.append(("trace_id", keys[0].descending))
    rows = [{"trace_id": s.trace_id, **s.columns} for s in map(seed_by_id, ids)]
    for column, desc in reversed(columns):
        present = sorted(
            (r for r in rows if r[column] is not None), key=lambda r: r[column], reverse=desc
        )
        rows = present + [r for r in rows if r[column] is None]
    return [r["trace_id"] for r in rows]


@pytest.mark.parametrize(
    "order_by",
    [
        None,
        "trace.timestamp_ms",
        "trace.duration_ms",
        "trace.duration_ms DESC",
        "trace.session_id DESC, trace.timestamp_ms",
        "trace.cost, trace.status DESC",
        "trace.trace_id DESC",
    ],
)
def test_keyset_pages(seeded: sa.Engine, order_by: str | None) -> None:
    keys = parse_order_by(order_by)
    for text in ("", "trace.status != 'IN_PROGRESS'"):
        matching = search_ids(seeded, text)
        expected = _expected_order(keys, matching)
        for size in (1, 2, 4, 1000):
            seen: list[str] = []
            token: str | None = None
            for _ in range(20):
                search = TraceSearch.plan(
                    experiment_ids=["e1"],
                    filter_string=text,
                    order_by=order_by,
                    max_results=size,
                    page_token=token,
                )
                with seeded.connect() as conn:
                    rows, token = search.run(conn)
                assert len(rows) <= size
                seen += [r["trace_id"] for r in rows]
                if token is None:
                    break
            assert seen == expected, (order_by, text, size)


def test_keyset_resumes_after_inserts(seeded: sa.Engine) -> None:
    """A page token marks a row, not an offset: rows inserted before it do not shift pages."""
    search = TraceSearch.plan(experiment_ids=["e1"], max_results=2)
    with seeded.connect() as conn:
        rows, token = search.run(conn)
    assert [r["trace_id"] for r in rows] == ["t6", "t5"]
    with seeded.begin() as conn:
        conn.execute(
            tables.traces.insert().values(
                trace_id="t9",
                experiment_id="e1",
                status="OK",
                start_time_ms=9000,
                metadata_json="{}",
                tags_json="{}",
                span_count=0,
                created_at_ms=0,
                updated_at_ms=0,
            )
        )
    nxt = TraceSearch.plan(experiment_ids=["e1"], max_results=2, page_token=token)
    with seeded.connect() as conn:
        rows, _ = nxt.run(conn)
    assert [r["trace_id"] for r in rows] == ["t4", "t3"]


# --- REST: GET /api/v1/traces on an in-process server -------------------------------------------


def _get(server: httpx.Client, **params: Any) -> httpx.Response:
    return server.get("/api/v1/traces", params=params)


def _experiment(server: httpx.Client) -> str:
    created = server.post("/api/v1/experiments", json={"name": f"search-{uuid.uuid4().hex}"})
    assert created.status_code == 201, created.text
    experiment_id: str = created.json()["id"]
    return experiment_id


def _ingest(server: httpx.Client, experiment_id: str, traces: list[dict[str, Any]]) -> None:
    """One OTLP/HTTP JSON request with one root span per trace."""
    spans = []
    for t in traces:
        start = t["start_ms"] * 1_000_000
        attributes = [
            {"key": f"assay.{kind}.{k}", "value": {"stringValue": v}}
            for kind in ("metadata", "tags")
            for k, v in t.get(kind, {}).items()
        ]
        spans.append(
            {
                "traceId": t["trace_id"],
                "spanId": t["trace_id"][16:],
                "name": "root",
                "kind": 2,
                "startTimeUnixNano": str(start),
                "endTimeUnixNano": str(start + 5_000_000),
                "attributes": attributes,
                "status": {"code": 2 if t.get("error") else 1},
            }
        )
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": "assay.experiment_id", "value": {"stringValue": experiment_id}}
                    ]
                },
                "scopeSpans": [{"spans": spans}],
            }
        ]
    }
    response = server.post("/v1/traces", json=body)
    assert response.status_code == 200, response.text
    assert "partialSuccess" not in response.json() or not response.json()["partialSuccess"]


def _pages(server: httpx.Client, **params: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    token = None
    while True:
        response = _get(server, **params, **({"page_token": token} if token else {}))
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"traces", "next_page_token"}
        pages.append([t["trace_id"] for t in body["traces"]])
        token = body["next_page_token"]
        if token is None:
            return pages
        assert len(pages) < 20


def _error(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, str] = body["error"]
    assert set(error) == {"code", "message"}
    return error


def test_rest_search_filters_and_pages(apps: InProcessServers, store_uri: str) -> None:
    server = apps.start(store_uri, workers=0)
    first, second = _experiment(server), _experiment(server)
    traces = [
        {
            "trace_id": f"{i + 1:032x}",
            "start_ms": 1_700_000_000_000 + i * 1000,
            "metadata": {"user": f"u{i % 2}"},
            "tags": {"env": "dev" if i % 3 == 0 else "prod"},
            "error": i == 3,
        }
        for i in range(7)
    ]
    _ingest(server, first, traces)
    _ingest(server, second, [{"trace_id": "f" * 32, "start_ms": 1, "metadata": {"user": "u1"}}])
    tid = [t["trace_id"] for t in traces]

    pages = _pages(server, experiment_id=first, filter="metadata.user = 'u1'", max_results=2)
    assert pages == [[tid[5], tid[3]], [tid[1]]]
    pages = _pages(
        server,
        experiment_id=first,
        filter="tags.env != 'dev' AND trace.status = 'OK'",
        order_by="trace.timestamp_ms ASC",
        max_results=1,
    )
    assert pages == [[tid[1]], [tid[2]], [tid[4]], [tid[5]]]
    pages = _pages(server, experiment_id=[first, second], filter="metadata.user = 'u1'")
    assert pages == [[tid[5], tid[3], tid[1], "f" * 32]]
    pages = _pages(
        server,
        experiment_id=first,
        filter="trace.status = 'ERROR' OR metadata.user = 'u0' AND tags.env = 'dev'",
        order_by=["trace.status DESC", "trace.timestamp_ms"],
        max_results=2,
    )
    assert pages == [[tid[0], tid[6]], [tid[3]]]
    one = _get(server, experiment_id=first, filter=f"trace.trace_id = '{tid[4]}'").json()
    assert one["traces"][0]["metadata"] == {"user": "u0"}
    assert one["traces"][0]["tags"] == {"env": "prod"}
    assert one["traces"][0]["status"] == "OK"


# (filter, offending token, its position)
REST_BAD_FILTERS = [
    ("trace.status = 'OK' AND (metadata.x = )", ")", 38),
    ("trace.status = 'OK'; DROP TABLE traces", ";", 19),
    ("trace.nope = 1", "trace.nope", 0),
    ("metadata.user = 'u1' -- comment", "-", 21),
    ("trace.duration_ms > 'slow'", "'slow'", 20),
]


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_rest_bad_input_is_400_never_500(
    apps: InProcessServers, store_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = apps.start(store_uri, workers=0)
    experiment = _experiment(server)
    for text, token, position in REST_BAD_FILTERS:
        error = _error(_get(server, experiment_id=experiment, filter=text), 400)
        assert error["code"] == "invalid_filter"
        assert f"{token!r} at position {position}" in error["message"], error["message"]
    error = _error(_get(server, experiment_id=experiment, filter="x" * 10_001), 400)
    assert "the limit is 10000" in error["message"]
    error = _error(_get(server, experiment_id=experiment, filter="metadata.x = 'a\x00'"), 400)
    assert "query parameter 'filter' must not contain a NUL" in error["message"]
    error = _error(_get(server, experiment_id=experiment, order_by="trace.nope DESC"), 400)
    assert error["code"] == "invalid_filter"
    assert "unknown field 'trace.nope'" in error["message"]
    error = _error(_get(server, experiment_id=experiment, page_token="garbage"), 400)
    assert "invalid page_token" in error["message"]
    _error(_get(server, experiment_id="e\x00"), 400)
    _error(_get(server), 422)
    _error(_get(server, experiment_id=experiment, max_results=0), 422)
    _error(_get(server, experiment_id=experiment, max_results=1001), 422)

    @settings(max_examples=40, deadline=None, database=None)
    @given(hostile_text.filter(lambda t: not re.search("[\ud800-\udfff]", t)))
    def check(text: str) -> None:
        response = _get(server, experiment_id=experiment, filter=text)
        assert response.status_code in (200, 400), (text, response.text)

    check()
    assert "request.crashed" not in caplog.text
