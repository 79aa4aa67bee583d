"""The filter-string grammar and its SQL (semantics on real databases: test_trace_search.py).

Parse tests are table-driven; hypothesis feeds random and hostile strings and ASTs and checks
that nothing but InvalidFilterError ever escapes, that no key or value reaches the SQL text, and
that running hostile filters never changes a database.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import mysql, postgresql, sqlite

import assay
from assay.db import tables
from assay.errors import InvalidFilterError, InvalidRequestError
from assay.tracing.filters import (
    MAX_COMPARISONS,
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
    OrderKey,
    Scalar,
    TraceSearch,
    compile_filter,
    format_filter,
    parse_filter,
    parse_order_by,
)
from support.filter_cases import exprs, hostile_text, search_ids, seed

# --- parsing, table-driven --------------------------------------------------------------------


def C(entity: str, key: str, op: str, value: Any = None) -> Comparison:
    return Comparison(Field(entity, key), Op(op), value)  # type: ignore[arg-type]


DESIGN_EXAMPLE = (
    "trace.status = 'OK' AND metadata.user = 'u1' AND tags.env != 'dev' AND "
    "trace.timestamp_ms > 1700000000000 AND metadata.assay.source_run IS NULL"
)

VALID: list[tuple[str, Expr | None]] = [
    ("", None),
    ("   \n\t", None),
    ("trace.status = 'OK'", C("trace", "status", "=", "OK")),
    ('trace.status == "OK"', C("trace", "status", "=", "OK")),
    ("trace.status <> 'OK'", C("trace", "status", "!=", "OK")),
    ("trace.status!='OK'", C("trace", "status", "!=", "OK")),
    ("trace.timestamp_ms < 5", C("trace", "timestamp_ms", "<", 5)),
    ("trace.timestamp_ms <= -5", C("trace", "timestamp_ms", "<=", -5)),
    ("trace.cost > 1.5e-3", C("trace", "cost", ">", 0.0015)),
    ("trace.cost >= .5", C("trace", "cost", ">=", 0.5)),
    ("trace.execution_time_ms > 10", C("trace", "execution_time_ms", ">", 10)),
    ("metadata.user IN ('a', \"b\")", C("metadata", "user", "IN", ("a", "b"))),
    ("metadata.user not in ('a')", C("metadata", "user", "NOT IN", ("a",))),
    ("trace.span_count IN (1, 2.5)", C("trace", "span_count", "IN", (1, 2.5))),
    ("tags.env LIKE 'pr%'", C("tags", "env", "LIKE", "pr%")),
    ("tag.env ilike 'PR_'", C("tags", "env", "ILIKE", "PR_")),
    ("tags.env NOT LIKE 'a'", C("tags", "env", "NOT LIKE", "a")),
    ("tags.env NOT ILIKE 'a'", C("tags", "env", "NOT ILIKE", "a")),
    ("metadata.assay.source_run IS NULL", C("metadata", "assay.source_run", "IS NULL")),
    ("metadata.x is not null", C("metadata", "x", "IS NOT NULL")),
    ("metadata.`user id`.`a.b` = 'x'", C("metadata", "user id.a.b", "=", "x")),
    ("tags.k8s-app = 'x'", C("tags", "k8s-app", "=", "x")),
    ("metadata.ключ = 'значение'", C("metadata", "ключ", "=", "значение")),
    ("metadata.x = 'it''s'", C("metadata", "x", "=", "it's")),
    ("metadata.x = 'it\\'s'", C("metadata", "x", "=", "it's")),
    ('metadata.x = "say \\"hi\\""', C("metadata", "x", "=", 'say "hi"')),
    ("metadata.x = 'a\\\\b'", C("metadata", "x", "=", "a\\b")),
    ("metadata.x LIKE '100\\%'", C("metadata", "x", "LIKE", "100\\%")),
    ("metadata.x = '; DROP TABLE traces; --'", C("metadata", "x", "=", "; DROP TABLE traces; --")),
    ("span.name = 'llm'", C("span", "name", "=", "llm")),
    ("span.status = 'ERROR'", C("span", "status", "=", "ERROR")),
    ("assessment.correct = TRUE", C("assessment", "correct", "=", True)),
    ("assessment.correct != false", C("assessment", "correct", "!=", False)),
    ("assessment.score IN (1, 'a', TRUE)", C("assessment", "score", "IN", (1, "a", True))),
    (
        "trace.status = 'OK' AND metadata.user = 'u1' OR tags.env = 'dev'",
        Or(
            (
                And((C("trace", "status", "=", "OK"), C("metadata", "user", "=", "u1"))),
                C("tags", "env", "=", "dev"),
            )
        ),
    ),
    (
        "trace.status = 'OK' and (metadata.user = 'u1' or tags.env = 'dev')",
        And(
            (
                C("trace", "status", "=", "OK"),
                Or((C("metadata", "user", "=", "u1"), C("tags", "env", "=", "dev"))),
            )
        ),
    ),
    (
        "NOT NOT (trace.status = 'OK')",
        Not(Not(C("trace", "status", "=", "OK"))),
    ),
    (
        "not trace.status = 'OK' AND trace.cost > 1",
        And((Not(C("trace", "status", "=", "OK")), C("trace", "cost", ">", 1))),
    ),
    (
        DESIGN_EXAMPLE,
        And(
            (
                C("trace", "status", "=", "OK"),
                C("metadata", "user", "=", "u1"),
                C("tags", "env", "!=", "dev"),
                C("trace", "timestamp_ms", ">", 1700000000000),
                C("metadata", "assay.source_run", "IS NULL"),
            )
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_parse_valid(text: str, expected: Expr | None) -> None:
    expr = parse_filter(text)
    assert expr == expected
    assert parse_filter(format_filter(expr)) == expr


def test_positions_point_at_fields() -> None:
    expr = parse_filter("trace.status = 'OK' AND  metadata.user = 'u'")
    assert isinstance(expr, And)
    assert [c.position for c in expr.items if isinstance(c, Comparison)] == [0, 25]


# (filter, message fragment, position, token)
INVALID: list[tuple[str, str, int | None, str | None]] = [
    (
        "trace.status = 'OK' AND (metadata.x = )",
        "unexpected token ')' at position 38; expected a quoted string",
        38,
        ")",
    ),
    ("trace.status = 'OK' AND", "unexpected end of filter at position 23", 23, None),
    (
        "trace.status 'OK'",
        "unexpected token \"'OK'\" at position 13; expected an operator",
        13,
        "'OK'",
    ),
    ("(trace.status = 'OK'", "expected ')' to close the '(' at position 0", 20, None),
    ("trace.status = 'OK')", "unexpected token ')' at position 19; expected AND, OR", 19, ")"),
    ("status = 'OK'", "unexpected token 'status' at position 0; expected a field", 0, "status"),
    (
        "trace.nope = 1",
        "unknown field 'trace.nope' at position 0; valid trace fields: trace_id",
        0,
        "trace.nope",
    ),
    ("span.nope = 'a'", "valid span fields: name, status, kind", 0, "span.nope"),
    ("run.x = 'a'", "fields start with trace., metadata.", 0, "run.x"),
    ("trace.status = 5", "unexpected token '5' at position 15; expected a quoted string", 15, "5"),
    ("trace.cost = '5'", "expected a number (trace.cost is a number)", 13, "'5'"),
    ("metadata.n = 5", "expected a quoted string (metadata.n is text)", 13, "5"),
    ("trace.status = TRUE", "at position 15", 15, "TRUE"),
    ("trace.cost LIKE '5%'", "LIKE at position 11 needs a text field", 11, "LIKE"),
    ("metadata.x LIKE 5", "expected a quoted LIKE pattern", 16, "5"),
    ("metadata.x LIKE 'a\\\\'", "ends with a lone backslash", 16, None),
    ("assessment.s > 1", "operator '>' at position 13 does not apply", 13, ">"),
    ("assessment.s LIKE 'a'", "operator 'LIKE' at position 13 does not apply", 13, "LIKE"),
    ("metadata.x IN 'a'", "expected '(' to start the IN list", 14, "'a'"),
    ("metadata.x IN ('a' 'b')", "expected ',' or ')' in the IN list", 19, "'b'"),
    ("metadata.x IN ()", "unexpected token ')' at position 15", 15, ")"),
    ("metadata.x NOT = 'a'", "expected IN, LIKE or ILIKE after NOT", 15, "="),
    ("metadata.x IS 'a'", "expected NULL or NOT NULL", 14, "'a'"),
    ("metadata.x IS NOT 'a'", "expected NULL", 18, "'a'"),
    ("metadata.x = 'abc", "unterminated string starting at position 13", 13, None),
    ("metadata.`abc = 'x'", "unterminated `key` starting at position 9", 9, None),
    ("metadata.`` = 'x'", "empty `` key at position 9", 9, "``"),
    ("metadata. = 'x'", "expected a key after '.' at position 9", 9, " "),
    ("trace.status = 'OK'; DROP TABLE traces", "unexpected character ';' at position 19", 19, ";"),
    ("trace.status = 'OK' -- comment", "unexpected character '-' at position 20", 20, "-"),
    ("trace.status = 'OK' /* c */", "unexpected character '/' at position 20", 20, "/"),
    ("trace.cost = 12abc", "invalid number '12abc' at position 13", 13, "12abc"),
    ("trace.cost = 1.2.3", "invalid number '1.2.3' at position 13", 13, "1.2.3"),
    ("trace.cost = 1e999", "number '1e999' at position 13 is out of range", 13, "1e999"),
    ("trace.cost = 9223372036854775808", "out of range", 13, None),
    ("trace.cost = " + "1" * 5000, "out of range", 13, None),  # not Python's digit limit
    ("metadata.x = 'a\x00'", "NUL character at position 15", 15, "\x00"),
    ("metadata.x = '\ud800'", "lone surrogate) at position 14", 14, None),
    ("AND", "unexpected token 'AND' at position 0", 0, "AND"),
    ("\u0131n", "unexpected token '\u0131n' at position 0", 0, "\u0131n"),  # dotless i
    ("metadata.x = 'a' AND OR", "unexpected token 'OR' at position 21", 21, "OR"),
    ("NOT", "unexpected end of filter at position 3", 3, None),
    ("metadata.x = 'a' metadata.y = 'b'", "unexpected token 'metadata.y' at position 17", 17, None),
    (
        "(" * (MAX_DEPTH + 1) + "trace.cost = 1" + ")" * (MAX_DEPTH + 1),
        f"deeper than {MAX_DEPTH} levels at position {MAX_DEPTH}",
        MAX_DEPTH,
        "(",
    ),
    ("NOT " * (MAX_DEPTH + 1) + "trace.cost = 1", f"deeper than {MAX_DEPTH}", 4 * MAX_DEPTH, None),
    (
        " OR ".join(["trace.cost = 1"] * (MAX_COMPARISONS + 1)),
        f"more than {MAX_COMPARISONS} comparisons",
        18 * MAX_COMPARISONS,
        None,
    ),
    (
        "metadata.x = '" + "a" * MAX_FILTER_LENGTH + "'",
        f"the limit is {MAX_FILTER_LENGTH}",
        MAX_FILTER_LENGTH,
        None,
    ),
]


@pytest.mark.parametrize(("text", "message", "position", "token"), INVALID)
def test_parse_invalid(text: str, message: str, position: int | None, token: str | None) -> None:
    with pytest.raises(InvalidFilterError) as info:
        parse_filter(text)
    assert message in str(info.value)
    assert info.value.code == "invalid_filter"
    assert info.value.position == position
    if token is not None:
        assert info.value.token == token
    if position is not None and "position" in str(info.value):
        assert f"position {position}" in str(info.value)


def test_the_limits_are_inclusive() -> None:
    text = "metadata.x = '" + "a" * (MAX_FILTER_LENGTH - 15) + "'"
    assert len(text) == MAX_FILTER_LENGTH
    assert parse_filter(text) is not None
    assert parse_filter("(" * MAX_DEPTH + "trace.cost = 1" + ")" * MAX_DEPTH) is not None
    assert parse_filter(" OR ".join(["trace.cost = 1"] * MAX_COMPARISONS)) is not None


ORDER_VALID: list[tuple[Any, tuple[OrderKey, ...]]] = [
    (None, (OrderKey("timestamp_ms", True),)),
    ("", (OrderKey("timestamp_ms", True),)),
    ([], (OrderKey("timestamp_ms", True),)),
    ("trace.duration_ms", (OrderKey("duration_ms"),)),
    (
        ["trace.timestamp_ms DESC", "trace.execution_time_ms"],
        (OrderKey("timestamp_ms", True), OrderKey("execution_time_ms")),
    ),
    (
        "status asc, cost desc",
        (OrderKey("status"), OrderKey("cost", True)),
    ),
]


@pytest.mark.parametrize(("order_by", "expected"), ORDER_VALID)
def test_order_by_valid(order_by: Any, expected: tuple[OrderKey, ...]) -> None:
    assert parse_order_by(order_by) == expected


@pytest.mark.parametrize(
    ("order_by", "message"),
    [
        ("trace.nope", "order_by item 1 ('trace.nope'): unknown field 'trace.nope'"),
        ("status, metadata.user", "order_by item 2 ('metadata.user'): unknown field"),
        ("status sideways", "unknown direction 'sideways'"),
        ("status DESC NULLS", "expected '<field> [ASC|DESC]'"),
        ("status,", "order_by item 2 (''): expected"),
        ("timestamp_ms, start_time_ms DESC", "already ordered by"),
        ("status; DROP TABLE traces", "expected '<field> [ASC|DESC]'"),
        ("status DROP", "unknown direction 'DROP'"),
        ("status;", "unknown field 'status;'"),
        (",".join(["status"] * 6), "the limit is 5"),
    ],
)
def test_order_by_invalid(order_by: str, message: str) -> None:
    with pytest.raises(InvalidFilterError, match=re.escape(message)):
        parse_order_by(order_by)


def test_field_maps_name_real_columns() -> None:
    for spec in TRACE_FIELDS.values():
        assert spec.column in tables.traces.c
        numeric = isinstance(tables.traces.c[spec.column].type, sa.Integer | sa.Float)
        assert numeric == (spec.kind == "number"), spec
    for spec in SPAN_FIELDS.values():
        assert spec.column in tables.spans.c


def test_ast_strategy_round_trips() -> None:
    @settings(max_examples=150, deadline=None, database=None)
    @given(exprs)
    def check(expr: Expr) -> None:
        assert parse_filter(format_filter(expr)) == expr

    check()


def _parse_or_error(text: str) -> Expr | InvalidFilterError | None:
    """The AST, or the InvalidFilterError; any other exception escapes (and fails the test)."""
    try:
        return parse_filter(text)
    except InvalidFilterError as exc:
        return exc


def test_fuzz_parser_only_raises_invalid_filter() -> None:
    @settings(max_examples=800, deadline=None, database=None)
    @given(hostile_text)
    def check(text: str) -> None:
        result = _parse_or_error(text)
        if isinstance(result, InvalidFilterError):
            assert result.position is None or 0 <= result.position <= len(text)
            assert str(result)
            return
        assert parse_filter(format_filter(result)) == result
        compile_filter(result)

    check()


def _blank(expr: Expr) -> Expr:
    """The same filter with every user-chosen key and value replaced by a fixed placeholder."""

    def blank(v: Scalar) -> Scalar:
        if isinstance(v, bool):
            return False
        if isinstance(v, int):
            return 0
        return 0.0 if isinstance(v, float) else "placeholder"

    if isinstance(expr, Comparison):
        key = expr.field.key if expr.field.entity in ("trace", "span") else "k"
        value = expr.value
        if isinstance(value, tuple):
            value = tuple(blank(v) for v in value)
        elif value is not None:
            value = blank(value)
        return replace(expr, field=Field(expr.field.entity, key), value=value)
    if isinstance(expr, Not):
        return Not(_blank(expr.item))
    return type(expr)(tuple(_blank(e) for e in expr.items))


DIALECTS = [sqlite.dialect(), postgresql.dialect(), mysql.dialect()]


def _sql(expr: Expr, dialect: sa.Dialect) -> str:
    stmt = sa.select(tables.traces.c.trace_id).where(compile_filter(expr))
    return str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": False}))


def test_fuzz_values_never_reach_sql() -> None:
    """The SQL of a filter depends on its shape only: replacing every key and value by a
    placeholder gives the very same statement text, on every dialect."""

    @settings(max_examples=150, deadline=None, database=None)
    @given(exprs)
    def check(expr: Expr) -> None:
        for dialect in DIALECTS:
            assert _sql(expr, dialect) == _sql(_blank(expr), dialect)

    check()
    hostile = parse_filter(
        "metadata.`'; DROP TABLE x; --` = '\"; DELETE FROM traces; --' "
        "OR trace.request_preview LIKE '%*/ UNION SELECT 1 /*%'"
    )
    assert hostile is not None
    for dialect in DIALECTS:
        sql = _sql(hostile, dialect)
        for needle in ("DROP", "DELETE", "UNION", "--", "/*"):
            assert needle not in sql


def test_fuzz_hostile_filters_never_change_the_database(tmp_path: Any) -> None:
    engine = assay.db.create_engine(f"sqlite:///{tmp_path / 'fuzz.db'}")
    assay.db.upgrade(engine)
    seed(engine)

    def snapshot() -> tuple[Any, ...]:
        with engine.connect() as conn:
            schema = conn.execute(sa.text("SELECT type, name, sql FROM sqlite_master")).all()
            counts = [
                conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()
                for t in tables.metadata.sorted_tables
            ]
        return tuple(schema), tuple(counts)

    before = snapshot()

    @settings(max_examples=150, deadline=None, database=None)
    @given(st.one_of(exprs.map(format_filter), hostile_text))
    def check(text: str) -> None:
        with contextlib.suppress(InvalidFilterError):
            search_ids(engine, text)

    try:
        check()
        assert snapshot() == before
    finally:
        engine.dispose()


def test_plan_errors() -> None:
    with pytest.raises(InvalidRequestError, match="invalid page_token"):
        TraceSearch.plan(experiment_ids=["e1"], page_token="not a token!")
    first = TraceSearch.plan(experiment_ids=["e1"], max_results=1)
    token = first.keyset.token({"start_time_ms": 5, "trace_id": "t1"})
    with pytest.raises(InvalidRequestError, match="belongs to another order_by"):
        TraceSearch.plan(experiment_ids=["e1"], order_by="trace.cost", page_token=token)
    forged = first.keyset.token({"start_time_ms": "5; DROP TABLE traces", "trace_id": "t1"})
    with pytest.raises(InvalidRequestError, match="invalid page_token"):
        TraceSearch.plan(experiment_ids=["e1"], page_token=forged)
    huge = first.keyset.token({"start_time_ms": 2**70, "trace_id": "t1"})
    with pytest.raises(InvalidRequestError, match="invalid page_token"):
        TraceSearch.plan(experiment_ids=["e1"], page_token=huge)
    with pytest.raises(InvalidRequestError, match="experiment_id is required"):
        TraceSearch.plan(experiment_ids=[])
    for bad_id in ("e\x00", "e\ud800"):
        with pytest.raises(InvalidRequestError, match="invalid experiment_id"):
            TraceSearch.plan(experiment_ids=[bad_id])
    for bad in (0, 1001):
        with pytest.raises(InvalidRequestError, match="max_results must be between 1 and 1000"):
            TraceSearch.plan(experiment_ids=["e1"], max_results=bad)


@given(st.text(max_size=200))
@settings(max_examples=150, deadline=None, database=None)
def test_fuzz_page_tokens(token: str) -> None:
    with contextlib.suppress(InvalidRequestError):
        TraceSearch.plan(experiment_ids=["e1"], page_token=token)
