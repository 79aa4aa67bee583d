"""Trace search as one statement: experiment scope, filter, a total order, keyset pages.

The order is the caller's ``order_by`` made total by ``trace_id``, with NULLs last in both
directions. A page token holds the last row's sort values and trace_id (base64 JSON) and the
order it belongs to, so the next page starts exactly after that row, whatever was inserted or
deleted meanwhile, and never skips or repeats a row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from assay.errors import InvalidRequestError
from assay.pagetoken import decode_token, encode_token
from assay.tracing.filters.grammar import (
    TRACE_FIELDS,
    OrderKey,
    parse_filter,
    parse_order_by,
)
from assay.tracing.filters.sql import TraceTables, compile_filter

__all__ = ["DEFAULT_MAX_RESULTS", "MAX_EXPERIMENTS", "MAX_RESULTS", "Keyset", "TraceSearch"]

MAX_RESULTS = 1000
DEFAULT_MAX_RESULTS = 100
MAX_EXPERIMENTS = 100
MAX_TOKEN_CHARS = 4000
_TOKEN_DEPTH = 2
_BAD_CHARS = re.compile(r"[\x00\ud800-\udfff]")


class Keyset:
    """An order over ``traces`` made total by trace_id, and the page tokens that resume it."""

    def __init__(self, keys: Sequence[OrderKey], traces: sa.Table) -> None:
        columns = [(traces.c[TRACE_FIELDS[k.field].column], k.descending) for k in keys]
        if not any(col.name == "trace_id" for col, _ in columns):
            columns.append((traces.c.trace_id, keys[0].descending if keys else False))
        self.columns: list[tuple[sa.Column[Any], bool]] = columns
        self.signature = [f"{col.name} {'DESC' if desc else 'ASC'}" for col, desc in columns]

    def order_by(self) -> list[sa.ColumnElement[Any]]:
        clauses: list[sa.ColumnElement[Any]] = []
        for col, desc in self.columns:
            if col.nullable:
                clauses.append(sa.case((col.is_(None), 1), else_=0))  # NULLs last
            clauses.append(col.desc() if desc else col.asc())
        return clauses

    def after(self, token: str) -> sa.ColumnElement[bool]:
        """Rows strictly after the row the token was made from:
        OR over i of (keys before i equal AND key i beyond)."""
        clauses: list[sa.ColumnElement[bool]] = []
        ties: list[sa.ColumnElement[bool]] = []
        values = self.decode(token)
        for (col, desc), value in zip(self.columns, values, strict=True):
            if value is None:  # NULLs sort last: only other NULLs tie, nothing is beyond
                ties.append(col.is_(None))
                continue
            beyond = col < value if desc else col > value
            if col.nullable:
                beyond = sa.or_(col.is_(None), beyond)
            clauses.append(sa.and_(*ties, beyond))
            ties.append(col == value)
        if not clauses:
            return sa.false()
        # A redundant bound on the first key (every later row is on its side of the value, or
        # equal), so the database can start an index range scan there instead of filtering
        # every row the OR above does not narrow: a deep page stays as cheap as the first.
        first, descending = self.columns[0]
        if values[0] is None or first.nullable:
            return sa.or_(*clauses)
        bound = first <= values[0] if descending else first >= values[0]
        return sa.and_(bound, sa.or_(*clauses))

    def token(self, row: Mapping[str, Any] | sa.RowMapping) -> str:
        values = [row[col.name] for col, _ in self.columns]
        return encode_token({"order": self.signature, "after": values})

    def decode(self, token: str) -> list[Any]:
        """The sort values in a token made by :meth:`token` for this order; anything else is
        an :class:`InvalidRequestError`."""
        shown = repr(token if len(token) <= 60 else token[:60] + "...")
        try:
            if len(token) > MAX_TOKEN_CHARS:
                raise ValueError("too long")
            # {"order": [...], "after": [...]}: two levels; deeper is refused before parsing.
            payload = decode_token(token, _TOKEN_DEPTH)
            order, values = payload["order"], payload["after"]
        except (ValueError, TypeError, KeyError):
            raise InvalidRequestError(f"invalid page_token {shown}") from None
        if order != self.signature:
            raise InvalidRequestError(
                f"page_token {shown} belongs to another order_by ({order!r}); "
                "ask again without page_token"
            )
        if not isinstance(values, list) or len(values) != len(self.columns):
            raise InvalidRequestError(f"invalid page_token {shown}")
        for (col, _), value in zip(self.columns, values, strict=True):
            if not _fits(col, value):
                raise InvalidRequestError(f"invalid page_token {shown}")
        return values


def _fits(col: sa.Column[Any], value: Any) -> bool:
    """A value the column could hold (and the database accept as a bound parameter)."""
    if value is None:
        return bool(col.nullable)
    if isinstance(col.type, sa.String):
        return isinstance(value, str) and "\x00" not in value and len(value) <= 10_000
    if isinstance(value, bool):
        return False
    if isinstance(col.type, sa.Integer):
        return isinstance(value, int) and -(2**63) <= value < 2**63
    return isinstance(value, int | float) and abs(value) < 1e308


@dataclass(frozen=True)
class TraceSearch:
    """A validated trace search: build it with :meth:`plan`, run it with :meth:`run`."""

    where: sa.ColumnElement[bool]
    keyset: Keyset
    max_results: int
    tables: TraceTables

    @classmethod
    def plan(
        cls,
        *,
        experiment_ids: Sequence[str],
        filter_string: str | None = None,
        order_by: str | Sequence[str] | None = None,
        max_results: int = DEFAULT_MAX_RESULTS,
        page_token: str | None = None,
        tables: TraceTables | None = None,
    ) -> TraceSearch:
        """Check every input (filter and order_by errors are InvalidFilterError, the others
        InvalidRequestError) and build the statement's parts."""
        tables = tables or TraceTables.default()
        ids = list(dict.fromkeys(experiment_ids))
        if not ids:
            raise InvalidRequestError("experiment_id is required (repeat it for several)")
        if len(ids) > MAX_EXPERIMENTS:
            raise InvalidRequestError(f"at most {MAX_EXPERIMENTS} experiment_id values")
        for experiment_id in ids:
            if not isinstance(experiment_id, str) or _BAD_CHARS.search(experiment_id):
                raise InvalidRequestError(
                    f"invalid experiment_id {experiment_id!r}: NUL or lone surrogate"
                )
        if not 1 <= max_results <= MAX_RESULTS:
            raise InvalidRequestError(
                f"max_results must be between 1 and {MAX_RESULTS}, not {max_results}"
            )
        expr = parse_filter(filter_string)
        keyset = Keyset(parse_order_by(order_by), tables.traces)
        where = sa.and_(tables.traces.c.experiment_id.in_(ids), compile_filter(expr, tables))
        if page_token:
            where = sa.and_(where, keyset.after(page_token))
        return cls(where, keyset, max_results, tables)

    def statement(self) -> sa.Select[Any]:
        """Every ``traces`` column of one page, plus one row to tell whether more follow."""
        return (
            sa.select(self.tables.traces)
            .where(self.where)
            .order_by(*self.keyset.order_by())
            .limit(self.max_results + 1)
        )

    def page(self, rows: Sequence[sa.RowMapping]) -> tuple[list[sa.RowMapping], str | None]:
        """The rows of the page and the token of the next one (None on the last page)."""
        if len(rows) <= self.max_results:
            return list(rows), None
        kept = list(rows[: self.max_results])
        return kept, self.keyset.token(kept[-1])

    def run(self, conn: sa.Connection) -> tuple[list[sa.RowMapping], str | None]:
        return self.page(conn.execute(self.statement()).mappings().all())
