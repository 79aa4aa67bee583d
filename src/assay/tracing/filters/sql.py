"""Compile a filter AST into a SQLAlchemy boolean over the trace tables.

Trace fields are columns of ``traces``; ``metadata.<key>``, ``tags.<key>``, ``span.<field>``
and ``assessment.<name>`` are correlated EXISTS subqueries. Every value, key and pattern is a
bound parameter; field names reach SQL only through the fixed maps in :mod:`.grammar`.

Logic is two-valued: a comparison with a missing value (NULL column, absent key) is false, never
unknown, so ``NOT x`` is exactly the complement of ``x``. Text compares exactly (case-sensitive,
trailing spaces count, ordering by code point) on every database.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from assay.db.dialects import MYSQL, POSTGRESQL, SQLITE
from assay.errors import InvalidFilterError
from assay.tracing.filters.grammar import (
    ASSESSMENT_OPS,
    SPAN_FIELDS,
    TRACE_FIELDS,
    And,
    Comparison,
    Expr,
    Kind,
    Not,
    Op,
    Or,
    Scalar,
)

__all__ = ["TraceTables", "compile_filter", "keyed_lookups"]


@dataclass(frozen=True)
class TraceTables:
    """The tables a filter reads; :meth:`default` gives assay's own."""

    traces: sa.Table
    metadata: sa.Table
    tags: sa.Table
    spans: sa.Table | None = None
    assessments: sa.Table | None = None

    @classmethod
    def default(cls) -> TraceTables:
        from assay.db import tables

        return cls(
            traces=tables.traces,
            metadata=tables.trace_metadata,
            tags=tables.trace_tags,
            spans=tables.spans,
            assessments=tables.assessments,
        )


def compile_filter(expr: Expr | None, tables: TraceTables | None = None) -> sa.ColumnElement[bool]:
    """A boolean over ``tables.traces`` (correlated EXISTS for metadata, tags, spans and
    assessments), with every value, key and pattern a bound parameter."""
    if expr is None:
        return sa.true()
    return _Compiler(tables or TraceTables.default()).compile(expr)


def keyed_lookups(
    expr: Expr | None, tables: TraceTables | None = None
) -> list[sa.Select[tuple[str]]]:
    """For each top-level AND term of ``expr`` that is ``metadata.<key>`` or ``tags.<key>``
    ``=`` or ``IN`` values: the ids of the traces it matches, as a query the (key, value)
    index answers alone, one row per trace (the key is part of the primary key). A trace that
    matches ``expr`` is in every one of them, so a search may start from any of them."""
    t = tables or TraceTables.default()
    terms = expr.items if isinstance(expr, And) else () if expr is None else (expr,)
    lookups = []
    for term in terms:
        if not isinstance(term, Comparison) or term.op not in (Op.EQ, Op.IN):
            continue
        if term.field.entity not in ("metadata", "tags"):
            continue
        table = t.metadata if term.field.entity == "metadata" else t.tags
        lookups.append(
            sa.select(table.c.trace_id).where(
                _exact(table.c.key) == _bind(term.field.key),
                _compare(table.c.value, term, "text"),
            )
        )
    return lookups


class _Compiler:
    def __init__(self, tables: TraceTables) -> None:
        self.t = tables

    def compile(self, expr: Expr) -> sa.ColumnElement[bool]:
        if isinstance(expr, And):
            return sa.and_(*(self.compile(item) for item in expr.items))
        if isinstance(expr, Or):
            return sa.or_(*(self.compile(item) for item in expr.items))
        if isinstance(expr, Not):
            return sa.not_(self.compile(expr.item))
        entity = expr.field.entity
        if entity == "trace":
            spec = TRACE_FIELDS[expr.field.key]
            return _compare(self.t.traces.c[spec.column], expr, spec.kind)
        if entity in ("metadata", "tags"):
            table = self.t.metadata if entity == "metadata" else self.t.tags
            return self._keyed(table, "key", "value", expr)
        if entity == "span":
            spans = _need(self.t.spans, "span")
            col = spans.c[SPAN_FIELDS[expr.field.key].column]
            of_trace = spans.c.trace_id == self.t.traces.c.trace_id
            if expr.op is Op.IS_NULL:  # like an absent key: no span has a value
                return ~sa.exists().where(of_trace, col.is_not(None))
            match = _compare(col, expr, SPAN_FIELDS[expr.field.key].kind)
            return sa.exists().where(of_trace, match)
        return self._assessment(_need(self.t.assessments, "assessment"), expr)

    def _keyed(
        self, table: sa.Table, key_col: str, value_col: str, expr: Comparison
    ) -> sa.ColumnElement[bool]:
        """``entity.key op value`` over a (trace_id, key, value) table: EXISTS a row with the
        key whose value matches; IS NULL is NOT EXISTS a row with the key."""
        has_key = [
            table.c.trace_id == self.t.traces.c.trace_id,
            _exact(table.c[key_col]) == _bind(expr.field.key),
        ]
        if expr.op is Op.IS_NULL:
            return ~sa.exists().where(*has_key)
        if expr.op is Op.IS_NOT_NULL:
            return sa.exists().where(*has_key)
        return sa.exists().where(*has_key, _compare(table.c[value_col], expr, "text"))

    def _assessment(self, table: sa.Table, expr: Comparison) -> sa.ColumnElement[bool]:
        """EXISTS an assessment with the name whose JSON value is (not) one of the values;
        IS NULL is NOT EXISTS an assessment with the name."""
        assert expr.op in ASSESSMENT_OPS
        if expr.op in (Op.IS_NULL, Op.IS_NOT_NULL):
            return self._keyed(table, "name", "value", expr)
        values = expr.value if isinstance(expr.value, tuple) else (expr.value,)
        forms = sorted({form for v in values if v is not None for form in _json_forms(v)})
        op = Op.IN if expr.op in (Op.EQ, Op.IN) else Op.NOT_IN
        return self._keyed(table, "name", "value", Comparison(expr.field, op, tuple(forms)))


def _need(table: sa.Table | None, what: str) -> sa.Table:
    if table is None:
        raise InvalidFilterError(f"{what} fields cannot be searched here")
    return table


def _json_forms(value: Scalar) -> list[str]:
    """The JSON texts an assessment value may be stored as (ASCII-escaped or not; a whole
    number as int or float)."""
    if isinstance(value, str):
        return [json.dumps(value), json.dumps(value, ensure_ascii=False)]
    if isinstance(value, bool):
        return [json.dumps(value)]
    if isinstance(value, int) or value.is_integer():
        whole = int(value)
        return [json.dumps(whole), json.dumps(float(whole))]
    return [json.dumps(value)]


def _bind(value: Scalar) -> sa.BindParameter[Any]:
    if isinstance(value, bool):
        return sa.bindparam(None, value, type_=sa.Boolean())
    if isinstance(value, int):
        return sa.bindparam(None, value, type_=sa.BigInteger())
    if isinstance(value, float):
        return sa.bindparam(None, value, type_=sa.Float())
    return sa.bindparam(None, value, type_=sa.String())


def _compare(col: sa.ColumnElement[Any], c: Comparison, kind: Kind) -> sa.ColumnElement[bool]:
    """``col op value``, false (not NULL) when ``col`` is NULL; text compares exactly
    (case-sensitive, code-point order) on every database."""
    op, value = c.op, c.value
    if op is Op.IS_NULL:
        return col.is_(None)
    if op is Op.IS_NOT_NULL:
        return col.is_not(None)
    cond: sa.ColumnElement[bool]
    if op in (Op.LIKE, Op.NOT_LIKE, Op.ILIKE, Op.NOT_ILIKE):
        assert isinstance(value, str)
        if op in (Op.LIKE, Op.NOT_LIKE):
            cond = _like(col, _bind(value), _bind(_like_to_glob(value)))
        else:
            cond = _ilike(col, _bind(value))
        if op in (Op.NOT_LIKE, Op.NOT_ILIKE):
            cond = sa.not_(cond)
    elif op in (Op.IN, Op.NOT_IN):
        assert isinstance(value, tuple)
        if kind == "text":  # one expanding parameter: the SQL does not depend on the values
            exact, items = _exact(col), [str(v) for v in value]
            cond = exact.in_(items) if op is Op.IN else exact.not_in(items)
        else:  # one bind per value, typed by the value (never a float cast to BIGINT)
            binds = [_bind(v) for v in value]
            cond = col.in_(binds) if op is Op.IN else col.not_in(binds)
    else:
        assert value is not None
        assert not isinstance(value, tuple)
        target: sa.ColumnElement[Any] = col
        if kind == "text":
            target = _ordered(col) if op in (Op.LT, Op.LE, Op.GT, Op.GE) else _exact(col)
        cond = _SQL_OPS[op](target, _bind(value))
    if _nullable(col):
        return sa.and_(col.is_not(None), cond)
    return cond


_SQL_OPS: dict[Op, Callable[[Any, Any], sa.ColumnElement[bool]]] = {
    Op.EQ: sa.sql.operators.eq,
    Op.NE: sa.sql.operators.ne,
    Op.LT: sa.sql.operators.lt,
    Op.LE: sa.sql.operators.le,
    Op.GT: sa.sql.operators.gt,
    Op.GE: sa.sql.operators.ge,
}


def _nullable(col: sa.ColumnElement[Any]) -> bool:
    return not isinstance(col, sa.Column) or bool(col.nullable)


def _like_to_glob(pattern: str) -> str:
    """A LIKE pattern (``%``, ``_``, backslash escapes) as the equivalent SQLite GLOB."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            i += 1
            ch = pattern[i]
            out.append({"*": "[*]", "?": "[?]", "[": "[[]"}.get(ch, ch))
        elif ch == "%":
            out.append("*")
        elif ch == "_":
            out.append("?")
        else:
            out.append({"*": "[*]", "?": "[?]", "[": "[[]"}.get(ch, ch))
        i += 1
    return "".join(out)


# Text comparisons that mean the same on every database. MySQL's usual collations ignore case
# and trailing spaces, so it compares bytes (UTF-8 byte order is code-point order); PostgreSQL
# orders by its locale, so ordering uses the "C" collation; SQLite compares code points already
# but its LIKE ignores ASCII case, so LIKE becomes the equivalent GLOB there.


class _exact(FunctionElement[str]):
    """A text column compared for (in)equality, exactly."""

    name = "assay_exact"
    type = sa.String()
    inherit_cache = True


class _ordered(FunctionElement[str]):
    """A text column compared with < <= > >=, in code-point order."""

    name = "assay_ordered"
    type = sa.String()
    inherit_cache = True


class _like(FunctionElement[bool]):
    """``column LIKE pattern``, case-sensitive, backslash escapes; args (column, like, glob)."""

    name = "assay_like"
    type = sa.Boolean()
    inherit_cache = True


class _ilike(FunctionElement[bool]):
    """``lower(column) LIKE lower(pattern)``, backslash escapes; args (column, pattern).
    Case folding is the database's own lower() (SQLite folds ASCII letters only)."""

    name = "assay_ilike"
    type = sa.Boolean()
    inherit_cache = True


@compiles(_exact)
@compiles(_ordered)
def _plain(element: FunctionElement[str], compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(_exact, MYSQL)
@compiles(_ordered, MYSQL)
def _binary_mysql(element: FunctionElement[str], compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS BINARY)"


@compiles(_ordered, POSTGRESQL)
def _ordered_pg(element: FunctionElement[str], compiler: SQLCompiler, **kw: Any) -> str:
    return f'({compiler.process(element.clauses, **kw)} COLLATE "C")'


@compiles(_like)
def _like_default(element: _like, compiler: SQLCompiler, **kw: Any) -> str:
    col, pattern, _glob = element.clauses.clauses
    return f"({compiler.process(col.like(pattern, escape=chr(92)), **kw)})"


@compiles(_like, SQLITE)
def _like_sqlite(element: _like, compiler: SQLCompiler, **kw: Any) -> str:
    col, _pattern, glob = element.clauses.clauses
    return f"({compiler.process(col, **kw)} GLOB {compiler.process(glob, **kw)})"


@compiles(_like, MYSQL)
def _like_mysql(element: _like, compiler: SQLCompiler, **kw: Any) -> str:
    col, pattern, _glob = element.clauses.clauses
    escape = compiler.render_literal_value("\\", sa.String())
    return (
        f"(CONVERT({compiler.process(col, **kw)} USING utf8mb4) COLLATE utf8mb4_bin "
        f"LIKE {compiler.process(pattern, **kw)} ESCAPE {escape})"
    )


@compiles(_ilike)
def _ilike_default(element: _ilike, compiler: SQLCompiler, **kw: Any) -> str:
    col, pattern = element.clauses.clauses
    like = sa.func.lower(col).like(sa.func.lower(pattern), escape="\\")
    return f"({compiler.process(like, **kw)})"


@compiles(_ilike, MYSQL)
def _ilike_mysql(element: _ilike, compiler: SQLCompiler, **kw: Any) -> str:
    """The usual MySQL collations also ignore accents; compare the lowered text by code point."""
    col, pattern = element.clauses.clauses
    escape = compiler.render_literal_value("\\", sa.String())
    return (
        f"(CONVERT(LOWER({compiler.process(col, **kw)}) USING utf8mb4) COLLATE utf8mb4_bin "
        f"LIKE LOWER({compiler.process(pattern, **kw)}) ESCAPE {escape})"
    )
