"""Filter strings and ``order_by`` for trace search and scorer filters.

:func:`parse_filter` checks a filter string without a database (field names, value types,
limits) and returns a typed AST, or raises :class:`~assay.errors.InvalidFilterError` naming the
offending token and its 0-based position; :func:`compile_filter` turns the AST into a SQLAlchemy
boolean over the trace tables with bound parameters only; :class:`TraceSearch` is the whole
search statement with keyset pagination. The grammar is drawn in :mod:`.grammar`.
"""

from __future__ import annotations

from assay.tracing.filters.grammar import (
    ASSESSMENT_OPS,
    DEFAULT_ORDER,
    MAX_COMPARISONS,
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
    MAX_ORDER_KEYS,
    SPAN_FIELDS,
    TRACE_FIELDS,
    And,
    Comparison,
    Expr,
    Field,
    FieldSpec,
    Not,
    Op,
    Or,
    OrderKey,
    Scalar,
    format_filter,
    parse_filter,
    parse_order_by,
)
from assay.tracing.filters.paging import (
    DEFAULT_MAX_RESULTS,
    MAX_RESULTS,
    Keyset,
    TraceSearch,
)
from assay.tracing.filters.sql import TraceTables, compile_filter

__all__ = [
    "ASSESSMENT_OPS",
    "DEFAULT_MAX_RESULTS",
    "DEFAULT_ORDER",
    "MAX_COMPARISONS",
    "MAX_DEPTH",
    "MAX_FILTER_LENGTH",
    "MAX_ORDER_KEYS",
    "MAX_RESULTS",
    "SPAN_FIELDS",
    "TRACE_FIELDS",
    "And",
    "Comparison",
    "Expr",
    "Field",
    "FieldSpec",
    "Keyset",
    "Not",
    "Op",
    "Or",
    "OrderKey",
    "Scalar",
    "TraceSearch",
    "TraceTables",
    "compile_filter",
    "format_filter",
    "parse_filter",
    "parse_order_by",
]
