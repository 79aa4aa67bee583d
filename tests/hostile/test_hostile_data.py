"""Hostile data: values that were stored but could not be read back, page tokens and span
chains that exhausted the recursion, NUL characters that reached PostgreSQL (issue 12, items 3
and 6). One real `assay server` per store (SQLite, PostgreSQL, MariaDB) serves the module."""

from __future__ import annotations

import base64
import enum
import json
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from assay import jsonvalue
from assay.db.tables import assessments, scorers, traces
from assay.errors import InvalidRequestError
from assay.scoring.model import Level
from assay.scoring.store import ScoringStore
from assay.server.ui.experiments import span_tree
from assay.tracing.derive import summarize
from assay.tracing.model import Span
from support.hostile import (
    START_NS,
    STORES,
    Target,
    deep,
    depth_of,
    reads_ok,
    span,
    target_fixture,
)

pytestmark = pytest.mark.xdist_group("hostile")


@pytest.fixture(scope="module", params=STORES)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    yield from target_fixture(request, tmp_path_factory.mktemp(f"hostile-{request.param}"))


def reads_trace(target: Target, experiment_id: str, trace_id: str) -> dict[str, Any]:
    """Every read answers 200; the trace as the API shows it."""
    detail = reads_ok(target, experiment_id, trace_id)
    assert detail is not None
    return detail


def new_trace(target: Target, experiment_id: str, **root_attributes: Any) -> str:
    trace_id = uuid.uuid4().hex
    answer = target.ingest(experiment_id, [span(trace_id, "0102030405060708", **root_attributes)])
    assert answer.status_code == 200, answer.text
    return trace_id


def error_of(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text[:500]
    message: str = answer.json()["error"]["message"]
    return message


# -- item 3: what cannot be serialised is not stored, and old rows still read ----------------------


def test_otlp_input_nested_300_deep_keeps_every_read_working(target: Target) -> None:
    """Was: the trace list of the experiment answered 500 for good."""
    experiment_id = target.experiment()
    text = json.dumps(deep(300))
    trace_id = new_trace(target, experiment_id, input_value=text, output_value=json.dumps(deep(64)))
    trace = reads_trace(target, experiment_id, trace_id)["trace"]
    assert trace["request"] == text  # kept as the text it came as
    assert depth_of(trace["response"]) == 64  # up to the limit, decoded as always


def test_otlp_attribute_nested_past_the_otlp_limit_is_kept_as_text(target: Target) -> None:
    """Was: one attribute nested 40 deep made the whole batch a 400 (every span lost)."""
    experiment_id = target.experiment()
    value: dict[str, Any] = {"stringValue": "bottom"}
    for _ in range(40):
        value = {"arrayValue": {"values": [value]}}
    trace_id = new_trace(target, experiment_id, deep_attribute=value, input_value="hello")
    detail = reads_trace(target, experiment_id, trace_id)
    attribute = detail["spans"][0]["attributes"]["deep.attribute"]
    inner = attribute
    while isinstance(inner, list):
        inner = inner[0]
    assert isinstance(inner, str)
    assert '"arrayValue"' in inner
    assert "bottom" in inner
    assert detail["trace"]["request"] == "hello"


def test_assessment_nested_300_deep_is_400_and_not_stored(target: Target) -> None:
    """Was: stored while the POST answered 500; every read of the trace 500s after."""
    experiment_id = target.experiment()
    trace_id = new_trace(target, experiment_id, input_value="q")
    source = {"type": "HUMAN", "id": "me"}
    url = f"/api/v1/traces/{trace_id}/assessments"
    for field, body in [
        ("assessment value", {"name": "deep", "value": deep(300), "source": source}),
        (
            "assessment metadata",
            {"name": "m", "value": 1, "metadata": {"a": deep(70)}, "source": source},
        ),
        ("assessment error", {"name": "e", "error": {"x": deep(65)}, "source": source}),
    ]:
        message = error_of(target.http.post(url, json=body), 400)
        assert f"{field} at " in message, message
        assert "nests deeper than 64 levels" in message
    at_limit = target.http.post(url, json={"name": "ok", "value": deep(64), "source": source})
    assert at_limit.status_code == 201, at_limit.text[:300]
    detail = reads_trace(target, experiment_id, trace_id)
    assert [(a["name"], depth_of(a["value"])) for a in detail["assessments"]] == [("ok", 64)]


def test_assessment_value_with_nan_or_lone_surrogate_is_400(target: Target) -> None:
    experiment_id = target.experiment()
    trace_id = new_trace(target, experiment_id, input_value="q")
    url = f"/api/v1/traces/{trace_id}/assessments"
    for raw, expected in [
        ('{"name": "n", "value": [1, NaN], "source": {"type": "CODE", "id": "c"}}', "NaN"),
        ('{"name": "s", "value": {"a": "\\ud800"}, "source": {"type": "CODE", "id": "c"}}', "at a"),
        ('{"name": "k", "metadata": {"\\udc00": 1}, "source": {"type": "CODE", "id": "c"}}', "key"),
    ]:
        answer = target.http.post(url, content=raw, headers={"content-type": "application/json"})
        assert expected in error_of(answer, 400)
    assert reads_trace(target, experiment_id, trace_id)["assessments"] == []


def test_scorer_definition_with_lone_surrogate_is_400_and_not_stored(target: Target) -> None:
    """Was: stored while the PUT answered 500; the scorer list 500s after."""
    experiment_id = target.experiment()
    raw = (
        '{"scorer": {"kind": "llm_judge", "definition": '
        '{"instructions": "judge \\ud800 {{ outputs }}", "model": "m"}}}'
    )
    answer = target.http.put(
        f"/api/v1/experiments/{experiment_id}/scorers/judge",
        content=raw,
        headers={"content-type": "application/json"},
    )
    message = error_of(answer, 400)
    assert "scorer definition at instructions" in message
    assert "lone surrogate" in message
    listed = target.http.get(f"/api/v1/experiments/{experiment_id}/scorers")
    assert listed.status_code == 200
    assert listed.json()["scorers"] == []


def test_old_rows_that_cannot_be_rendered_still_read(target: Target) -> None:
    """Rows written before the checks (over-deep, lone surrogates, not JSON at all) are shown
    as well as they can be, never as a 500."""
    experiment_id = target.experiment()
    trace_id = new_trace(target, experiment_id, input_value="q", output_value="a")
    url = f"/api/v1/traces/{trace_id}/assessments"
    source = {"type": "HUMAN", "id": "me"}
    for name in ("deep", "surrogate", "garbled"):
        answer = target.http.post(url, json={"name": name, "value": 1, "source": source})
        assert answer.status_code == 201, answer.text
    put = target.http.put(
        f"/api/v1/experiments/{experiment_id}/scorers/judge",
        json={"scorer": {"kind": "llm_judge", "definition": {"instructions": "{{ outputs }}"}}},
    )
    assert put.status_code == 200, put.text
    rows = {
        "deep": json.dumps(deep(300)),
        "surrogate": '{"a": "\\ud800"}',
        "garbled": '{"not json',
    }
    with target.engine.begin() as conn:
        conn.execute(
            traces.update()
            .where(traces.c.trace_id == trace_id)
            .values(request=json.dumps({"q": deep(300)}), response='["\\udfff"]')
        )
        for name, text in rows.items():
            conn.execute(
                assessments.update()
                .where(assessments.c.trace_id == trace_id, assessments.c.name == name)
                .values(value=text, metadata_json=json.dumps({"m": deep(260)}))
            )
        conn.execute(
            scorers.update()
            .where(scorers.c.experiment_id == experiment_id)
            .values(
                definition='{"instructions": "\\ud800 {{ outputs }}", "output": {"type": "yes_no"}}'
            )
        )
    detail = reads_trace(target, experiment_id, trace_id)
    assert depth_of(detail["trace"]["request"]["q"]) == 63  # the deepest part is text
    assert detail["trace"]["response"] == ["\ufffd"]
    values = {a["name"]: a["value"] for a in detail["assessments"]}
    assert depth_of(values["deep"]) == 64
    assert values["surrogate"] == {"a": "\ufffd"}
    assert values["garbled"] == '{"not json'
    listed = target.http.get(f"/api/v1/experiments/{experiment_id}/scorers").json()
    assert listed["scorers"][0]["scorer"]["definition"]["instructions"] == "\ufffd {{ outputs }}"


# -- item 6: page tokens, span chains, NUL ---------------------------------------------------------


def test_deep_page_tokens_are_400(target: Target) -> None:
    """Was: a 500 RecursionError from the token's JSON."""
    experiment_id = target.experiment()
    token = base64.urlsafe_b64encode(b"[" * 2900).decode().rstrip("=")
    answer = target.http.get(
        "/api/v1/traces", params={"experiment_id": experiment_id, "page_token": token}
    )
    assert "invalid page_token" in error_of(answer, 400)
    page = target.http.get(f"/ui/experiments/{experiment_id}", params={"page_token": token})
    assert page.status_code == 400
    assert "invalid page_token" in page.text
    short = base64.urlsafe_b64encode(b"[" * 700).decode()
    for path, params in [
        ("/api/v1/experiments", {"page_token": short}),
        ("/api/v1/runs", {"experiment_id": experiment_id, "page_token": short}),
    ]:
        assert "invalid page_token" in error_of(target.http.get(path, params=params), 400)


def test_a_chain_of_1000_spans_renders(target: Target) -> None:
    """Was: the UI trace page 500ed (a recursive span tree)."""
    experiment_id = target.experiment()
    trace_id = uuid.uuid4().hex
    ids = [f"{i + 1:016x}" for i in range(1000)]
    chain = [
        span(trace_id, span_id, parent=ids[i - 1] if i else None, offset_ms=i)
        for i, span_id in enumerate(ids)
    ]
    answer = target.ingest(experiment_id, chain)
    assert answer.status_code == 200, answer.text
    detail = reads_trace(target, experiment_id, trace_id)
    assert detail["trace"]["span_count"] == 1000


def test_span_tree_is_iterative_and_keeps_the_order() -> None:
    def make(span_id: str, parent: str | None, start: int) -> Span:
        return Span("t" * 32, span_id, parent, span_id, "INTERNAL", "OK", None, start, start + 1)

    chain = [make(f"s{i}", f"s{i - 1}" if i else None, i) for i in range(5000)]
    rows = span_tree(chain)
    assert [r.depth for r in rows] == list(range(5000))
    tree = [
        make("root", None, 0),
        make("b", "root", 2),
        make("a", "root", 1),
        make("a1", "a", 3),
        make("orphan", "gone", 4),
        make("x", "y", 5),  # a parent cycle: shown once, as a tree of its own
        make("y", "x", 6),
    ]
    assert [(r.span.span_id, r.depth) for r in span_tree(tree)] == [
        ("root", 0),
        ("a", 1),
        ("a1", 2),
        ("b", 1),
        ("orphan", 0),
        ("x", 0),
        ("y", 1),
    ]


def test_nul_in_paths_and_queries_is_400_naming_it(target: Target) -> None:
    """Was: 503 on PostgreSQL (it cannot compare text holding NUL) from the scoring routes and
    the UI's job filter, and a different answer on every other store."""
    experiment_id = target.experiment()
    scorer = {"scorer": {"kind": "output_length", "definition": {}}}
    base = f"/api/v1/experiments/{experiment_id}/scorers"
    for method, path, params, body, named in [
        ("GET", f"{base}/a%00b", None, None, "'name'"),
        ("PUT", f"{base}/a%00b", None, scorer, "'name'"),
        ("PATCH", f"{base}/a%00b", None, {"status": "PAUSED"}, "'name'"),
        ("DELETE", f"{base}/a%00b", None, None, "'name'"),
        ("POST", f"{base}/a%00b/backfill", None, {"start": 0, "end": 1}, "'name'"),
        ("GET", "/api/v1/experiments/x%00y/scorers", None, None, "'experiment_id'"),
        ("PUT", "/api/v1/experiments/x%00y/scorers/s", None, scorer, "'experiment_id'"),
        ("GET", "/api/v1/traces", {"experiment_id": "a\x00"}, None, "'experiment_id'"),
        ("GET", "/api/v1/jobs", {"name": "a\x00b"}, None, "'name'"),
        ("GET", "/api/v1/experiments", {"name": "a\x00b"}, None, "'name'"),
        ("GET", "/ui/jobs", {"name": "a\x00b"}, None, "'name'"),
        ("GET", f"/ui/experiments/{experiment_id}/scorers", {"edit": "\x00"}, None, "'edit'"),
        ("GET", "/ui/experiments/x%00y", None, None, "'experiment_id'"),
    ]:
        answer = target.http.request(method, path, params=params, json=body)
        assert answer.status_code == 400, (method, path, params, answer.text[:300])
        text = answer.json()["error"]["message"] if path.startswith("/api/") else answer.text
        assert f"{named} must not contain a NUL" in text.replace("&#39;", "'"), (path, text[:300])


def test_scoring_store_refuses_nul_and_bad_definitions(target: Target) -> None:
    """The Python API's calls get the same 400-class errors as the REST API's."""
    store = ScoringStore(target.engine)
    experiment_id = target.experiment()
    with pytest.raises(InvalidRequestError, match="experiment_id must not contain a NUL"):
        store.scorers_list("a\x00")
    with pytest.raises(InvalidRequestError, match="scorer name must not contain a NUL"):
        store.scorer_get(experiment_id, "a\x00")
    with pytest.raises(InvalidRequestError) as raised:
        store.scorer_put(
            experiment_id,
            "s",
            kind="output_length",
            level=Level.TRACE,
            definition={"x": deep(64)},
            sample_rate=1.0,
            filter_string=None,
        )
    assert "scorer definition at x[0][0]" in str(raised.value)
    assert "nests deeper than 64 levels" in str(raised.value)
    assert store.scorers_list(experiment_id) == []


# -- the helper itself -----------------------------------------------------------------------------


class Colour(enum.StrEnum):
    RED = "red"


class Size(enum.IntEnum):
    BIG = 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (deep(65), "at [0][0][0]"),
        ({"a": [1, {"b c": float("nan")}]}, 'value at a[1]["b c"] must be JSON: NaN'),
        ({"a": float("-inf")}, "NaN and Infinity"),
        ({"k": "x\ud800"}, "value at k must be valid Unicode (it holds a lone surrogate)"),
        ({"\udfff": 1}, "a key holds a lone surrogate"),
        ({"a": object()}, "value at a must be JSON: 'object' values are not"),
        ({(1, 2): 1}, "'tuple' keys are not"),
        ([b"bytes"], "value at [0] must be JSON: 'bytes' values are not"),
        (10**5000, "too large"),
    ],
    ids=[
        "deep",
        "nan",
        "inf",
        "surrogate",
        "surrogate-key",
        "object",
        "tuple-key",
        "bytes",
        "huge",
    ],
)
def test_check_names_the_path_and_the_problem(value: Any, message: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        jsonvalue.check(value, "value")
    assert message in str(raised.value)
    assert not jsonvalue.is_plain(value)


def test_plain_values_pass_and_dump_compactly() -> None:
    value = {
        "s": "naïve \x00 ☃",
        "n": [1, -2.5, 2**63, True, None],
        "e": {"c": Colour.RED, "i": Size.BIG},
        "o": OrderedDict(a=(1, 2)),
        7: "int keys are written as JSON writes them",
        "d": deep(63),
    }
    jsonvalue.check(value, "value")
    assert jsonvalue.is_plain(value)
    text = jsonvalue.dumps({"b": "é", "a": [1, {"x": None}]}, "value")
    assert text == '{"b":"é","a":[1,{"x":null}]}'


def test_to_storable_keeps_what_it_can() -> None:
    cleaned = jsonvalue.to_storable(
        {
            "a": "x\ud800",
            "\udc00": 1,
            "f": [float("nan"), float("inf")],
            "o": object,
            "d": deep(300),
        }
    )
    assert cleaned["a"] == "x\ufffd"
    assert cleaned["\ufffd"] == 1
    assert cleaned["f"] == ["nan", "inf"]
    assert cleaned["o"] == str(object)
    assert depth_of(cleaned["d"]) == 63
    assert json.loads(depth_of_leaf(cleaned["d"])) == deep(237)
    assert jsonvalue.is_plain(cleaned)
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    assert jsonvalue.is_plain(jsonvalue.to_storable(cyclic))
    plain = {"a": [1]}
    assert jsonvalue.to_storable(plain) is plain


def depth_of_leaf(value: Any) -> Any:
    while isinstance(value, list):
        value = value[0]
    return value


def test_loads_never_fails() -> None:
    assert jsonvalue.loads(None) is None
    assert jsonvalue.loads('{"a": 1}') == {"a": 1}
    assert jsonvalue.loads("{oops") == "{oops"
    assert jsonvalue.loads("[" * 100_000 + "]" * 100_000).startswith("[[[")
    assert jsonvalue.loads('"\\ud800"') == "\ufffd"
    assert depth_of(jsonvalue.loads(json.dumps(deep(500)))) == 64


def test_loads_shallow_refuses_depth_before_parsing() -> None:
    assert jsonvalue.loads_shallow(b'{"order": ["a [{"], "after": [1, "]]]"]}', 2) == {
        "order": ["a [{"],
        "after": [1, "]]]"],
    }
    with pytest.raises(ValueError, match="deeper than 2"):
        jsonvalue.loads_shallow("[[[" + "]" * 3, 2)
    with pytest.raises(ValueError, match="deeper than 2"):
        jsonvalue.loads_shallow("[" * 100_000, 2)
    with pytest.raises(UnicodeDecodeError):
        jsonvalue.loads_shallow(b"\xff", 2)


def test_summary_of_messages_around_deep_values_stays_plain() -> None:
    """Messages built around decoded values (a system instruction prepended) may nest past the
    limit: the deepest parts are kept as text, so the trace can always be rendered."""
    root = Span(
        "t" * 32,
        "s" * 16,
        None,
        "root",
        "INTERNAL",
        "OK",
        None,
        START_NS,
        START_NS + 1,
        attributes={
            "gen_ai.input.messages": json.dumps([{"parts": deep(62)}]),
            "gen_ai.system_instructions": json.dumps(deep(64)),
        },
    )
    summary = summarize([root])
    assert jsonvalue.is_plain(summary.request)
    assert summary.request[1]["parts"] == deep(62)
