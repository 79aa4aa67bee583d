"""LIKE and ILIKE on trace text through SQLite's FTS5 trigram index (``traces_fts``, 0010).

A trace that matches ``trace.request_preview LIKE p`` holds each literal run of ``p`` (the
characters between its ``%`` and ``_``, escapes resolved) as a substring, whatever the case
under ILIKE. ``traces_fts`` folds case (FTS5's Unicode folding, coarser than SQLite's ASCII
``lower()``), and an FTS5 phrase of trigrams matches where its text is a substring of the
column, so the traces whose column holds every run of three or more characters as a phrase are
a superset of the matches, found from the index. The search keeps the LIKE itself: the index
only says where to look. A pattern with no such run (``'%ab%'``, ``'a_b_c'``) cannot use it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from assay.tracing.filters.grammar import TRACE_FIELDS, And, Comparison, Expr, Op

__all__ = ["MIN_RUN", "literal_runs", "match_query", "text_lookups"]

MIN_RUN = 3
"""The shortest run the trigram index can look up (one trigram)."""


def literal_runs(pattern: str) -> list[str]:
    """The literal text of a LIKE pattern between its wildcards, escapes resolved:
    ``'%order 5\\_1%'`` → ``['order 5_1']``, ``'a_bc%d'`` → ``['a', 'bc', 'd']``."""
    runs: list[str] = []
    run: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            i += 1
            run.append(pattern[i])
        elif ch in "%_":
            runs.append("".join(run))
            run = []
        else:
            run.append(ch)
        i += 1
    runs.append("".join(run))
    return [r for r in runs if r]


def match_query(pattern: str) -> str | None:
    """An FTS5 query matching a superset of the texts ``pattern`` matches (with LIKE or
    ILIKE): each run of at least :data:`MIN_RUN` characters as a quoted phrase, ANDed; None
    when there is no such run."""
    # FTS5 reads its query up to a NUL (the filter grammar refuses NUL; a split only widens).
    pieces = [piece for run in literal_runs(pattern) for piece in run.split("\x00")]
    runs = [r for r in pieces if len(r) >= MIN_RUN]
    if not runs:
        return None
    return " AND ".join('"' + r.replace('"', '""') + '"' for r in runs)


def text_lookups(
    expr: Expr | None, traces: sa.Table, index: sa.Table
) -> list[sa.Select[tuple[str]]]:
    """For each top-level AND term of ``expr`` that is ``LIKE`` or ``ILIKE`` on a column of
    ``index`` with a pattern :func:`match_query` can serve: the ids of the traces the index
    finds for it, a superset of the traces the term matches (see the module), so a search may
    start from them. ``NOT LIKE`` and terms under OR or NOT never use the index."""
    terms = expr.items if isinstance(expr, And) else () if expr is None else (expr,)
    rowid = sa.column("rowid", sa.Integer, _selectable=traces)
    lookups = []
    for term in terms:
        if not isinstance(term, Comparison) or term.op not in (Op.LIKE, Op.ILIKE):
            continue
        if term.field.entity != "trace":
            continue
        column = TRACE_FIELDS[term.field.key].column
        if column not in index.c:
            continue
        assert isinstance(term.value, str)
        query = match_query(term.value)
        if query is None:
            continue
        match: sa.ColumnElement[Any] = index.c[column].op("MATCH")(
            sa.bindparam(None, query, type_=sa.String())
        )
        lookups.append(
            sa.select(traces.c.trace_id)
            .select_from(index.join(traces, rowid == index.c.rowid))
            .where(match)
        )
    return lookups
