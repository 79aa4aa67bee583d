"""Property-based fuzz of hostile data (hypothesis) against one real server per store.

OTLP export bodies, as JSON or protobuf, with random attribute values (nested arrays and
key-value lists, nested past the limits, JSON-encoded inputs and outputs, strings holding lone
surrogates and NUL characters) on the attributes the trace summary reads; then assessments and
scorers written with the same kind of values. No answer may be a 5xx, and whatever was stored
must read back: the trace list, the trace, its assessments, the scorer list and the UI pages
answer 200. Bounded (``ASSAY_TEST_HOSTILE_EXAMPLES`` examples per store) to stay well under
30 s a store.
"""

from __future__ import annotations

import base64
import json
import math
import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from support.hostile import STORES, Target, deep, otlp_document, reads_ok, target_fixture

pytestmark = pytest.mark.xdist_group("hostile")

EXAMPLES = int(os.environ.get("ASSAY_TEST_HOSTILE_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies ------------------------------------------------------------------------------------

SURROGATES = ["\ud800", "\udfff", "\ud83d"]
ODD = ["\x00", "\U0001f600", "é", "\u2028", "\\", '"', "NaN", "{{ outputs }}"]
texts = st.lists(st.sampled_from(ODD + SURROGATES) | st.characters(), max_size=12).map("".join)
"""Any text: lone surrogates, NUL, quotes, line separators..."""
valid_texts = st.lists(
    st.sampled_from(ODD) | st.characters(exclude_categories=["Cs"]), max_size=12
).map("".join)
"""Text protobuf can hold (no lone surrogates), for the OTLP structure itself: a span with a
lone surrogate in its name or an attribute key is refused whole, which tests little."""
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)
depths = st.sampled_from([1, 63, 64, 65, 254, 255, 256, 300]) | st.integers(0, 300)
"""Nesting around a value: at and past :data:`assay.jsonvalue.MAX_DEPTH` (64) and pydantic's
serializer's limit (255)."""
values = json_values | st.builds(deep, depths, json_values)


def _double(number: float) -> dict[str, Any]:
    """An OTLP JSON double: NaN and the infinities as the strings protobuf's JSON uses."""
    if math.isfinite(number):
        return {"doubleValue": number}
    return {"doubleValue": {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[str(number)]}


any_scalars = (
    valid_texts.map(lambda s: {"stringValue": s})
    | st.integers(-(2**63), 2**63 - 1).map(lambda i: {"intValue": str(i)})
    | st.floats().map(_double)
    | st.booleans().map(lambda b: {"boolValue": b})
    | st.binary(max_size=8).map(lambda b: {"bytesValue": base64.b64encode(b).decode()})
)
any_values = st.recursive(
    any_scalars,
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda vs: {"arrayValue": {"values": vs}})
        | st.lists(st.tuples(valid_texts, inner), max_size=3).map(
            lambda pairs: {"kvlistValue": {"values": [{"key": k, "value": v} for k, v in pairs]}}
        )
    ),
    max_leaves=8,
)


def _nest(value: dict[str, Any], levels: int) -> dict[str, Any]:
    for _ in range(levels):
        value = {"arrayValue": {"values": [value]}}
    return value


attribute_values = (
    any_values
    | st.builds(_nest, any_values, st.integers(0, 50))
    | values.map(lambda v: {"stringValue": json.dumps(v, allow_nan=True)})
)
KEYS = [
    "input.value",
    "output.value",
    "input.mime_type",
    "metadata",
    "tag.tags",
    "session.id",
    "user.id",
    "mlflow.spanInputs",
    "mlflow.spanOutputs",
    "mlflow.chat.tokenUsage",
    "mlflow.llm.cost",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.prompt",
    "gen_ai.prompt.0.content",
    "llm.token_count.prompt",
    "assay.metadata.user",
    "assay.tags.env",
]
attributes = st.lists(
    st.tuples(st.sampled_from(KEYS) | valid_texts, attribute_values), max_size=6
).map(lambda pairs: [{"key": k, "value": v} for k, v in pairs])
inputs_and_outputs = st.lists(
    st.tuples(
        st.sampled_from(["input.value", "output.value", "mlflow.spanInputs"]),
        values.map(lambda v: {"stringValue": json.dumps(v, allow_nan=True)}),
    ),
    min_size=1,
    max_size=2,
).map(lambda pairs: [{"key": k, "value": v} for k, v in pairs])
"""The root's request and response, as JSON text (as OpenInference and MLflow send them)."""
events = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["gen_ai.choice", "gen_ai.user.message", "exception"])
            | valid_texts,
            "timeUnixNano": st.just("1700000000000000000"),
            "attributes": attributes,
        }
    ),
    max_size=2,
)


@st.composite
def traces(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]]]:
    """A trace id and 1-4 OTLP JSON spans of it: a root, children of earlier spans, maybe one
    whose parent never arrives."""
    trace_id = uuid.uuid4().hex
    spans = []
    ids: list[str] = []
    for index in range(draw(st.integers(1, 4))):
        span_id = f"{index + 1:016x}"
        parent = None if index == 0 else draw(st.sampled_from([*ids, "ffffffffffffffff"]))
        span: dict[str, Any] = {
            "traceId": trace_id,
            "spanId": span_id,
            "name": draw(texts if index == 3 else valid_texts),  # the 4th: maybe refused
            "startTimeUnixNano": str(1_700_000_000_000_000_000 + index),
            "endTimeUnixNano": str(1_700_000_000_000_000_000 + index + draw(st.integers(0, 10**9))),
            "attributes": draw(attributes) + (draw(inputs_and_outputs) if index == 0 else []),
            "events": draw(events),
            "status": {"code": draw(st.integers(0, 2)), "message": draw(valid_texts)},
        }
        if parent is not None:
            span["parentSpanId"] = parent
        spans.append(span)
        ids.append(span_id)
    return trace_id, spans


# -- requests --------------------------------------------------------------------------------------


def _json_body(value: Any) -> bytes:
    """JSON as a hostile client writes it: NaN and Infinity as bare words, lone surrogates as
    \\u escapes (the only way to put them in UTF-8)."""
    return json.dumps(value, allow_nan=True).encode()


def _protobuf_body(document: dict[str, Any]) -> bytes | None:
    """The same export as protobuf; None when protobuf cannot hold it (a lone surrogate)."""
    converted = json.loads(json.dumps(document))
    for resource in converted["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for name in ("traceId", "spanId", "parentSpanId"):
                    if name in span:
                        span[name] = base64.b64encode(bytes.fromhex(span[name])).decode()
    message = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(converted, message)
        return message.SerializeToString()
    except (json_format.ParseError, ValueError, RecursionError):
        return None


def _no_5xx(answer: httpx.Response, what: str) -> None:
    assert answer.status_code < 500, (what, answer.status_code, answer.text[:500])


@pytest.fixture(scope="module", params=STORES)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    yield from target_fixture(request, tmp_path_factory.mktemp(f"fuzz-{request.param}"))


@pytest.fixture(scope="module")
def experiment_id(target: Target) -> str:
    return target.experiment()


# -- the properties --------------------------------------------------------------------------------


@FUZZ
@given(trace=traces(), protobuf=st.booleans())
def test_otlp_ingest_never_5xx_and_reads_back(
    target: Target, experiment_id: str, trace: tuple[str, list[dict[str, Any]]], protobuf: bool
) -> None:
    trace_id, spans = trace
    document = otlp_document(experiment_id, spans)
    body = _protobuf_body(document) if protobuf else None
    media = "application/x-protobuf" if body is not None else "application/json"
    answer = target.http.post(
        "/v1/traces", content=body or _json_body(document), headers={"content-type": media}
    )
    _no_5xx(answer, "ingest")
    stored = answer.status_code == 200 and (
        target.http.get(f"/api/v1/traces/{trace_id}").status_code != 404
    )
    reads_ok(target, experiment_id, trace_id if stored else None)


@st.composite
def assessments(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": draw(texts | st.just("ok")),
        "value": draw(values),
        "source": {"type": draw(st.sampled_from(["HUMAN", "CODE", "LLM_JUDGE"])), "id": "f"},
    }
    for field, strategy in [
        ("rationale", texts),
        ("error", values),
        ("metadata", st.dictionaries(texts, values, max_size=3)),
        ("idempotency_key", texts),
    ]:
        if draw(st.booleans()):
            body[field] = draw(strategy)
    return body


@st.composite
def scorers(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A scorer name (mostly a valid one) and a PUT body: half the time a judge whose text
    fields hold odd strings (it passes the judge's own checks), else any kind and definition."""
    valid_name = draw(st.integers(0, 3)) > 0
    name = draw(st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True) if valid_name else texts)
    if draw(st.booleans()):
        kind = "llm_judge"
        output = st.just({"type": "yes_no"}) | st.builds(
            lambda choices: {"type": "category", "choices": choices},
            st.lists(texts, min_size=1, max_size=3, unique=True),
        )
        definition = {
            "instructions": draw(texts) + " {{ outputs }}",
            "model": "m" + draw(texts),
            "output": draw(output),
        }
    else:
        kind = draw(st.sampled_from(["llm_judge", "output_length", "keywords", "regex"]) | texts)
        definition = draw(st.dictionaries(texts, values, max_size=3))
    body: dict[str, Any] = {"scorer": {"kind": kind, "definition": definition}}
    if draw(st.booleans()):
        body["filter_string"] = draw(texts)
    return name, body


@FUZZ
@given(assessment=assessments(), scorer=scorers())
def test_assessment_and_scorer_writes_never_5xx_and_read_back(
    target: Target,
    experiment_id: str,
    assessment: dict[str, Any],
    scorer: tuple[str, dict[str, Any]],
) -> None:
    trace_id = _a_trace(target, experiment_id)
    json_headers = {"content-type": "application/json"}
    answer = target.http.post(
        f"/api/v1/traces/{trace_id}/assessments",
        content=_json_body(assessment),
        headers=json_headers,
    )
    _no_5xx(answer, "assessment")
    name, body = scorer
    quoted = quote(name, safe="", errors="surrogatepass")
    answer = target.http.put(
        f"/api/v1/experiments/{experiment_id}/scorers/{quoted}",
        content=_json_body(body),
        headers=json_headers,
    )
    _no_5xx(answer, "scorer")
    reads_ok(target, experiment_id, trace_id)


_TRACES: dict[str, str] = {}


def _a_trace(target: Target, experiment_id: str) -> str:
    """One plain trace per experiment, made on first use, that the examples assess."""
    if experiment_id not in _TRACES:
        trace_id = uuid.uuid4().hex
        root = {
            "traceId": trace_id,
            "spanId": "0102030405060708",
            "name": "root",
            "startTimeUnixNano": "1700000000000000000",
            "endTimeUnixNano": "1700000001000000000",
        }
        answer = target.ingest(experiment_id, [root])
        assert answer.status_code == 200, answer.text
        _TRACES[experiment_id] = trace_id
    return _TRACES[experiment_id]
