"""Shared by the filter tests: seeded traces, a reference evaluator of filter semantics in plain
Python, and hypothesis strategies for filter ASTs and hostile filter strings."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from hypothesis import strategies as st

from assay.db import tables
from assay.tracing.filters import (
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
    SPAN_FIELDS,
    TRACE_FIELDS,
    And,
    Comparison,
    Expr,
    Field,
    Not,
    Op,
    Or,
    Scalar,
    TraceSearch,
)

# --- seeded traces ---------------------------------------------------------------------------


@dataclass
class Seed:
    trace_id: str
    columns: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    spans: list[tuple[str, str, str]] = field(default_factory=list)  # name, kind, status
    assessments: list[tuple[str, str]] = field(default_factory=list)  # name, JSON value
    experiment_id: str = "e1"


def make_trace(
    trace_id: str,
    status: str,
    start: int,
    duration: int | None = None,
    session: str | None = None,
    request: str | None = None,
    response: str | None = None,
    tokens: int | None = None,
    cost: float | None = None,
    model: str | None = None,
    **kwargs: Any,
) -> Seed:
    columns = {
        "status": status,
        "start_time_ms": start,
        "duration_ms": duration,
        "completed_at_ms": None if duration is None else start + duration,
        "session_id": session,
        "request_preview": request,
        "response_preview": response,
        "input_tokens": tokens,
        "output_tokens": None if tokens is None else tokens * 2,
        "total_tokens": None if tokens is None else tokens * 3,
        "cost": cost,
        "span_count": len(kwargs.get("spans", [])),
        "model": model,
        "created_at_ms": start,
        "updated_at_ms": start,
    }
    return Seed(trace_id, columns, **kwargs)


SEEDS = [
    make_trace(
        "t1",
        "OK",
        1000,
        50,
        "s1",
        "Hello World",
        "fine",
        10,
        0.5,
        model="gpt-4o",
        metadata={"user": "u1", "assay.source_run": "r1"},
        tags={"env": "prod"},
        spans=[("chat", "SERVER", "OK"), ("llm", "CLIENT", "OK")],
        assessments=[("correct", "true")],
    ),
    make_trace(
        "t2",
        "ERROR",
        2000,
        300,
        "s1",
        "hello world",
        None,
        5,
        0.25,
        model="gpt-4o-mini",
        metadata={"user": "u2"},
        tags={"env": "dev"},
        spans=[("chat", "SERVER", "ERROR")],
        assessments=[("correct", "false"), ("score", "0.25")],
    ),
    make_trace("t3", "IN_PROGRESS", 3000, None, None, "100% sure", None),
    make_trace(
        "t4",
        "OK",
        3000,
        50,
        "s2",
        "a_b",
        "FINE",
        7,
        1.0,
        metadata={"user": "U1", "note": "x" * 500},
        tags={"env": "prod ", "team": ""},
        spans=[("tool", "INTERNAL", "UNSET")],
        assessments=[("score", "1"), ("label", '"yes"')],
    ),
    make_trace(
        "t5",
        "OK",
        4000,
        10,
        "s2",
        "a b",
        "日本語 ✓ 🎉",
        metadata={"user": "ü"},
        tags={"k8s.io/name": "x"},
        assessments=[("label", json.dumps("日本"))],
    ),
    make_trace(
        "t6",
        "ERROR",
        5000,
        0,
        "s3",
        'It\'s "quoted" \\ back',
        "[*]?",
        metadata={"user": "o'brien"},
        tags={"env": "staging"},
        assessments=[("label", json.dumps("日本", ensure_ascii=False))],
    ),
    make_trace(
        "x1", "OK", 1000, 50, "s1", "Hello World", metadata={"user": "u1"}, experiment_id="e2"
    ),
]
E1 = [s.trace_id for s in SEEDS if s.experiment_id == "e1"]


def seed(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            tables.experiments.insert(),
            [{"id": e, "name": f"exp-{e}", "created_at_ms": 0} for e in ("e1", "e2")],
        )
        for s in SEEDS:
            conn.execute(
                tables.traces.insert().values(
                    trace_id=s.trace_id,
                    experiment_id=s.experiment_id,
                    metadata_json=json.dumps(s.metadata),
                    tags_json=json.dumps(s.tags),
                    **s.columns,
                )
            )
            for table, pairs in ((tables.trace_metadata, s.metadata), (tables.trace_tags, s.tags)):
                if pairs:
                    conn.execute(
                        table.insert(),
                        [{"trace_id": s.trace_id, "key": k, "value": v} for k, v in pairs.items()],
                    )
            for i, (name, kind, status) in enumerate(s.spans):
                conn.execute(
                    tables.spans.insert().values(
                        trace_id=s.trace_id,
                        span_id=f"{i:016x}",
                        parent_span_id=None,
                        name=name,
                        kind=kind,
                        status_code=status,
                        start_time_ns=0,
                        end_time_ns=1,
                        attributes="{}",
                        events="[]",
                        links="[]",
                        resource="{}",
                    )
                )
            for i, (name, value) in enumerate(s.assessments):
                conn.execute(
                    tables.assessments.insert().values(
                        id=f"{s.trace_id}-a{i}",
                        trace_id=s.trace_id,
                        name=name,
                        value=value,
                        source_type="CODE",
                        source_id="test",
                        created_at_ms=0,
                        updated_at_ms=0,
                    )
                )


def search_ids(
    engine: sa.Engine, text: str | None, experiments: tuple[str, ...] = ("e1",)
) -> list[str]:
    search = TraceSearch.plan(experiment_ids=experiments, filter_string=text, max_results=1000)
    with engine.connect() as conn:
        rows, token = search.run(conn)
    assert token is None
    return sorted(r["trace_id"] for r in rows)


# --- the reference evaluator --------------------------------------------------------------------


def seed_by_id(trace_id: str) -> Seed:
    return next(s for s in SEEDS if s.trace_id == trace_id)


def like_regex(pattern: str) -> re.Pattern[str]:
    """A LIKE pattern (backslash escapes) as a regular expression."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def compare(actual: Any, op: Op, value: Any) -> bool:
    if op in (Op.LIKE, Op.ILIKE, Op.NOT_LIKE, Op.NOT_ILIKE):
        fold = op in (Op.ILIKE, Op.NOT_ILIKE)
        hit = like_regex(value.lower() if fold else value).fullmatch(
            actual.lower() if fold else actual
        )
        return (hit is not None) != (op in (Op.NOT_LIKE, Op.NOT_ILIKE))
    if op is Op.IN:
        return actual in value
    if op is Op.NOT_IN:
        return actual not in value
    ops = {
        Op.EQ: lambda a, b: a == b,
        Op.NE: lambda a, b: a != b,
        Op.LT: lambda a, b: a < b,
        Op.LE: lambda a, b: a <= b,
        Op.GT: lambda a, b: a > b,
        Op.GE: lambda a, b: a >= b,
    }
    return bool(ops[op](actual, value))


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, int | float) else type(value).__name__


def reference(expr: Expr | None, s: Seed) -> bool:
    """What a filter means, in plain Python (the documented semantics)."""
    if expr is None:
        return True
    if isinstance(expr, And):
        return all(reference(e, s) for e in expr.items)
    if isinstance(expr, Or):
        return any(reference(e, s) for e in expr.items)
    if isinstance(expr, Not):
        return not reference(expr.item, s)
    entity, key, op, value = expr.field.entity, expr.field.key, expr.op, expr.value
    if entity in ("trace", "metadata", "tags"):
        if entity == "trace":
            actual = {"trace_id": s.trace_id, **s.columns}[TRACE_FIELDS[key].column]
        else:
            actual = (s.metadata if entity == "metadata" else s.tags).get(key)
        if op is Op.IS_NULL:
            return actual is None
        if op is Op.IS_NOT_NULL:
            return actual is not None
        return actual is not None and compare(actual, op, value)
    if entity == "span":
        index = {"name": 0, "kind": 1, "status": 2}[key]
        values = [span[index] for span in s.spans]
        if op is Op.IS_NULL:
            return not values
        if op is Op.IS_NOT_NULL:
            return bool(values)
        return any(compare(v, op, value) for v in values)
    decoded = [json.loads(v) for name, v in s.assessments if name == key]
    if op is Op.IS_NULL:
        return not decoded
    if op is Op.IS_NOT_NULL:
        return bool(decoded)
    wanted = value if isinstance(value, tuple) else (value,)

    def member(v: Any) -> bool:
        """JSON equality: booleans equal booleans only, numbers compare by value."""
        return any(_json_kind(v) == _json_kind(w) and v == w for w in wanted)

    if op in (Op.EQ, Op.IN):
        return any(member(v) for v in decoded)
    return any(not member(v) for v in decoded)


# --- hypothesis: ASTs over the seeded data ------------------------------------------------------

HOSTILE = [
    "'; DROP TABLE traces; --",
    '" OR 1=1 --',
    "*/ DELETE FROM spans /*",
    "x') OR ('1'='1",
    "\\'; SELECT pg_sleep(5); --",
    "%s %(x)s ? :param",
    "`key`",
]
TEXT_POOL = [
    *sorted(
        {v for s in SEEDS for v in (*s.metadata.values(), *s.tags.values())}
        | {
            s.columns[c]
            for s in SEEDS
            for c in ("status", "session_id", "request_preview", "response_preview", "model")
            if s.columns[c]
        }
        | {n for s in SEEDS for span in s.spans for n in span}
        | {"u", "zz", ""}
    ),
    *HOSTILE,
]
NUMBER_POOL = sorted(
    {v for s in SEEDS for v in s.columns.values() if isinstance(v, int | float)} | {-1, 0.1}
)
KEY_POOL = [
    *sorted({k for s in SEEDS for k in (*s.metadata, *s.tags)} | {"missing", "a b", "x.y"}),
    "'; DROP TABLE traces; --",
    'a"b',
]

safe_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
texts = st.one_of(st.sampled_from(TEXT_POOL), safe_text)
numbers = st.one_of(
    st.sampled_from(NUMBER_POOL),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)
like_patterns = st.lists(
    st.one_of(
        st.sampled_from(["%", "_", "\\%", "\\_", "\\\\", "a", "H", "l", "o", " ", "*", "[", "?"]),
        st.sampled_from(TEXT_POOL[:20]),
    ),
    max_size=5,
).map("".join)


@st.composite
def comparisons(draw: st.DrawFn) -> Comparison:
    entity = draw(st.sampled_from(["trace", "trace", "metadata", "tags", "span", "assessment"]))
    if entity == "trace":
        key = draw(st.sampled_from(sorted(TRACE_FIELDS)))
        kind = TRACE_FIELDS[key].kind
    elif entity == "span":
        key = draw(st.sampled_from(sorted(SPAN_FIELDS)))
        kind = "text"
    else:
        key = draw(st.sampled_from([*KEY_POOL, "correct", "score", "label"]))
        kind = "text"
    if entity == "assessment":
        ops = [Op.EQ, Op.NE, Op.IN, Op.NOT_IN, Op.IS_NULL, Op.IS_NOT_NULL]
        values: st.SearchStrategy[Scalar] = st.one_of(
            st.booleans(), st.sampled_from([1, 1.0, 0.25, "yes", "日本"]), texts
        )
    elif kind == "number":
        ops = [o for o in Op if "LIKE" not in o.value]
        values = numbers
    else:
        ops = list(Op)
        values = texts
    op = draw(st.sampled_from(ops))
    value: Scalar | tuple[Scalar, ...] | None
    if op in (Op.IS_NULL, Op.IS_NOT_NULL):
        value = None
    elif op in (Op.IN, Op.NOT_IN):
        value = tuple(draw(st.lists(values, min_size=1, max_size=4)))
    elif "LIKE" in op.value:
        value = draw(like_patterns)
    else:
        value = draw(values)
    return Comparison(Field(entity, key), op, value)  # type: ignore[arg-type]


exprs: st.SearchStrategy[Expr] = st.recursive(
    comparisons(),
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
        inner.map(Not),
    ),
    max_leaves=8,
)


def ascii_folding(expr: Expr) -> bool:
    """ILIKE folds case per database (SQLite: ASCII only); the differential test keeps to
    patterns whose folding every database agrees on."""
    if isinstance(expr, Comparison):
        return "ILIKE" not in expr.op.value or str(expr.value).isascii()
    items = (expr.item,) if isinstance(expr, Not) else expr.items
    return all(ascii_folding(e) for e in items)


# --- hypothesis: hostile strings never escape as anything but InvalidFilterError ---------------

hostile_text = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "trace.status",
                    "metadata.user",
                    "tags.`a b`",
                    "span.name",
                    "assessment.x",
                    "=",
                    "!=",
                    "<>",
                    "<",
                    ">=",
                    "LIKE",
                    "ILIKE",
                    "NOT",
                    "IN",
                    "IS",
                    "NULL",
                    "AND",
                    "OR",
                    "(",
                    ")",
                    ",",
                    "'",
                    '"',
                    "`",
                    "\\",
                    ";",
                    "--",
                    "/*",
                    "*/",
                    "'x'",
                    '"y"',
                    "1",
                    "-2.5e3",
                    "TRUE",
                    "\x00",
                    "\ud800",
                    "é",
                    "🎉",
                    "\n",
                    " ",
                    "1e999",
                    "99999999999999999999",
                    ".",
                    "..",
                    "%",
                    "_",
                ]
            ),
            st.text(max_size=5),
        ),
        max_size=40,
    ).map(" ".join),
    st.integers(0, 3 * MAX_DEPTH).map(lambda n: "(" * n + "trace.cost = 1" + ")" * n),
    st.integers(MAX_FILTER_LENGTH - 5, MAX_FILTER_LENGTH + 5).map(
        lambda n: ("metadata.x = '" + "a" * n)[:n] + "'"
    ),
)
