"""LIKE and ILIKE on trace text with SQLite's FTS5 trigram index (migration 0010): a search that
starts from the index finds exactly what the same search without it finds, for many patterns,
and the index follows the traces through inserts, updates, ingest, deletes and VACUUM. On
PostgreSQL and MariaDB (no such index) the same searches are checked against the reference."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

import assay
from assay.db import tables
from assay.tracing.filters import Comparison, Field, Op, TraceSearch, format_filter, parse_filter
from assay.tracing.filters.textindex import literal_runs, match_query, text_lookups
from assay.tracing.model import Span
from assay.tracing.store import TraceStore
from support.filter_cases import compare

# (request_preview, response_preview) by trace id
TEXTS: dict[str, tuple[str | None, str | None]] = {
    "t01": ("How do I reset my password? (account A7, order 501000)", "Use the link."),
    "t02": ("how do i RESET my Password? (account a7, order 501001)", "USE THE LINK"),
    "t03": ("100% sure_thing \\ back\\slash", "50%_off"),
    "t04": ("quote \"double\" and 'single'", 'it\'s "fine"'),
    "t05": ("Ünïcödé ÄÖÜ straße ΣΊΣΥΦΟΣ", "日本語のテキスト"),
    "t06": ("ünïcödé äöü STRASSE σίσυφος", "日本語"),
    "t07": ("ab", "a"),
    "t08": (None, None),
    "t09": ("", ""),
    "t10": ("glob chars * ? [x] here", "[a-z]*"),
    "t11": ("emoji 🎉🎉🎉 party", "🎉"),
    "t12": ("trailing spaces   ", "line\nbreak\ttab"),
    "t13": ("order 5010000) is not order 501000", "order 501000)"),
    "t14": ("xABCx abc ABC", "aBc"),
}

PATTERNS = [
    "%order 501000)%",
    "%order 50100%",
    "%ORDER%",
    "%reset%",
    "%RESET%",
    "%Password%",
    "%account a7,%order%",
    "%ccount A7, order 50100_)",
    "How do%",
    "How_do_I%",
    "%501000)",
    "%100\\%%",
    "%100\\% sure%",
    "%sure\\_thing%",
    "%sure_thing%",
    "%\\\\ back%",
    "%back\\\\slash",
    '%"double"%',
    "%'single'%",
    "%it's%",
    "%Ünï%",
    "%ünï%",
    "%straße%",
    "%STRASSE%",
    "%ΣΊΣ%",
    "%σίσ%",
    "%日本語%",
    "%日本%",
    "%ab%",
    "ab",
    "a%",
    "%a_c%",
    "__",
    "%",
    "",
    "%abc%",
    "%ABC%",
    "x%x%",
    "%* ? [x]%",
    "%[x]%",
    "%[a-z]*%",
    "%🎉🎉🎉%",
    "%🎉🎉%",
    "%spaces   ",
    "%spaces  ",
    "%line\nbreak%",
    "%_%_%_%",
    "%%%abc%%%",
    "%nothing like this%",
    "%50\\%\\_off%",
    "%é%",
    "%cödé ÄÖ%",
]

OPS = (Op.LIKE, Op.ILIKE, Op.NOT_LIKE, Op.NOT_ILIKE)
COLUMNS = ("request_preview", "response_preview")


@dataclass
class Stores:
    engine: sa.Engine
    traces: TraceStore

    def ids(self, text: str, *, index: bool) -> list[str]:
        """The trace ids a search finds, through the store (with the FTS5 lookups on SQLite)
        or the same plan without any lookup."""
        if index:
            page = self.traces.traces_search(["e1"], text, max_results=500)
            rows = [t.trace_id for t in page.traces]
        else:
            search = TraceSearch.plan(experiment_ids=["e1"], filter_string=text, max_results=500)
            rows = [t.trace_id for t in self.traces.traces_run(search).traces]
        return sorted(rows)

    @property
    def sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"


def _insert(conn: sa.Connection, trace_id: str, request: str | None, response: str | None) -> None:
    conn.execute(
        tables.traces.insert().values(
            trace_id=trace_id,
            experiment_id="e1",
            status="OK",
            request_preview=request,
            response_preview=response,
            start_time_ms=int(trace_id[1:]) if trace_id[1:].isdigit() else 0,
            metadata_json="{}",
            tags_json="{}",
            span_count=0,
            created_at_ms=0,
            updated_at_ms=0,
        )
    )


@pytest.fixture
def stores(store_uri: str) -> Iterator[Stores]:
    engine = assay.db.create_engine(store_uri)
    assay.db.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(tables.experiments.insert().values(id="e1", name="e1", created_at_ms=0))
        for trace_id, (request, response) in TEXTS.items():
            _insert(conn, trace_id, request, response)
    try:
        yield Stores(engine, TraceStore(engine))
    finally:
        engine.dispose()


def _filter(column: str, op: Op, pattern: str) -> str:
    return format_filter(Comparison(Field("trace", column), op, pattern))


def _current_texts(engine: sa.Engine) -> dict[str, tuple[str | None, str | None]]:
    t = tables.traces
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.trace_id, t.c.request_preview, t.c.response_preview))
        return {r[0]: (r[1], r[2]) for r in rows}


def _check_all(stores: Stores, patterns: list[str] = PATTERNS) -> int:
    """Every pattern, operator and column: the same ids with and without the index, and (where
    every database folds case alike) those of the reference. Returns how many searches the
    index served."""
    texts = _current_texts(stores.engine)
    failures, served = [], 0
    for column in COLUMNS:
        at = COLUMNS.index(column)
        for pattern in patterns:
            for op in OPS:
                text = _filter(column, op, pattern)
                expr = parse_filter(text)
                if text_lookups(expr, tables.traces, tables.traces_fts):
                    served += 1
                got = stores.ids(text, index=True)
                if got != stores.ids(text, index=False):
                    failures.append(f"{text!r}: the index changed the result to {got}")
                if "ILIKE" in op.value and not pattern.isascii():
                    continue  # SQLite folds ASCII only, the others Unicode
                expected = sorted(
                    trace_id
                    for trace_id, values in texts.items()
                    if values[at] is not None and compare(values[at], op, pattern)
                )
                if got != expected:
                    failures.append(f"{text!r}: got {got}, expected {expected}")
    assert not failures, "\n".join(failures)
    return served


def test_patterns_mean_the_same_with_the_index(stores: Stores) -> None:
    served = _check_all(stores)
    assert served > 0  # text_lookups is pure; the store uses them on SQLite only


def test_index_follows_updates_and_deletes(stores: Stores) -> None:
    t = tables.traces
    with stores.engine.begin() as conn:
        conn.execute(
            t.update()
            .where(t.c.trace_id == "t01")
            .values(request_preview="now about order 777000) only", response_preview=None)
        )
        conn.execute(t.update().where(t.c.trace_id == "t08").values(request_preview="fresh ABC"))
        conn.execute(t.update().where(t.c.trace_id == "t02").values(status="ERROR"))  # no text
        conn.execute(t.delete().where(t.c.trace_id.in_(["t05", "t13"])))
        _insert(conn, "t20", "a new order 501000) here", "straße")
    assert stores.ids(_filter("request_preview", Op.LIKE, "%order 501000)%"), index=True) == ["t20"]
    assert stores.ids(_filter("request_preview", Op.LIKE, "%777000)%"), index=True) == ["t01"]
    _check_all(stores)
    if stores.sqlite:
        _assert_index_intact(stores.engine)


def test_index_follows_ingest(stores: Stores) -> None:
    """The store's own write path (placeholder insert, then the summary update)."""
    trace_id = "ab" * 16

    def span(span_id: str, parent: str | None, attributes: dict[str, Any]) -> Span:
        return Span(
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=parent,
            name="root" if parent is None else "child",
            kind="INTERNAL",
            start_time_ns=1_000_000,
            end_time_ns=2_000_000,
            status_code="OK",
            status_message="",
            attributes=attributes,
            events=[],
            links=[],
            resource={},
        )

    stores.traces.spans_ingest({"e1": [span("01" * 8, None, {})]})
    stores.traces.spans_ingest(
        {
            "e1": [
                span(
                    "01" * 8,
                    None,
                    {"mlflow.spanInputs": "ingested order 424242)", "mlflow.spanOutputs": "Done."},
                )
            ]
        }
    )
    texts = _current_texts(stores.engine)
    assert "424242" in (texts[trace_id][0] or ""), texts[trace_id]
    found = stores.ids(_filter("request_preview", Op.LIKE, "%order 424242)%"), index=True)
    assert found == [trace_id]
    _check_all(stores, ["%order 424242)%", "%Done%", "%done.%", "%ingested%"])
    if stores.sqlite:
        _assert_index_intact(stores.engine)


def test_upgrade_indexes_existing_traces(tmp_path: Any) -> None:
    """0010 on a SQLite store that has traces already: they are in the index."""
    engine = assay.db.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        assay.db.upgrade(engine, "0009")
        with engine.begin() as conn:
            conn.execute(tables.experiments.insert().values(id="e1", name="e1", created_at_ms=0))
            for trace_id, (request, response) in TEXTS.items():
                _insert(conn, trace_id, request, response)
        assay.db.upgrade(engine)
        _assert_index_intact(engine)
        stores = Stores(engine, TraceStore(engine))
        assert stores.ids(_filter("request_preview", Op.LIKE, "%order 50100%"), index=True) == [
            "t01",
            "t02",
            "t13",
        ]
        _check_all(stores)
    finally:
        engine.dispose()


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_index_survives_vacuum(stores: Stores) -> None:
    """The index is keyed by the traces' rowid, which has no INTEGER PRIMARY KEY alias: VACUUM
    must keep it (SQLite's copy keeps rowids; this fails if a version ever did not)."""
    with stores.engine.begin() as conn:
        conn.execute(tables.traces.delete().where(tables.traces.c.trace_id.in_(["t01", "t03"])))
    stores.engine.dispose()
    raw = sqlite3.connect(str(stores.engine.url.database), isolation_level=None)
    try:
        raw.execute("VACUUM")
    finally:
        raw.close()
    _assert_index_intact(stores.engine)
    _check_all(stores)


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_the_plan_starts_from_the_index(stores: Stores) -> None:
    """A pattern with a run of three characters is looked up in traces_fts (EXPLAIN QUERY
    PLAN), one without it walks as before; NOT LIKE and LIKE under OR never use the index."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((statement, params))

    sa.event.listen(stores.engine, "before_cursor_execute", record)
    try:
        stores.ids(_filter("request_preview", Op.LIKE, "%order 501000)%"), index=True)
    finally:
        sa.event.remove(stores.engine, "before_cursor_execute", record)
    search = [(s, p) for s, p in seen if "FROM traces_fts" in s and "rarest" in s]
    assert len(search) == 1, seen
    statement, params = search[0]
    with stores.engine.connect() as conn:
        plan = " | ".join(
            row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)
        )
    assert "SCAN traces_fts VIRTUAL TABLE INDEX" in plan, plan

    def lookups(text: str) -> int:
        return len(text_lookups(parse_filter(text), tables.traces, tables.traces_fts))

    assert lookups("trace.request_preview LIKE '%ord%'") == 1
    assert lookups("trace.response_preview ILIKE '%ORD%' AND trace.status = 'OK'") == 1
    assert lookups("trace.request_preview LIKE '%or%d%'") == 0
    assert lookups("trace.request_preview NOT LIKE '%order%'") == 0
    assert lookups("trace.request_preview LIKE '%order%' OR trace.status = 'OK'") == 0
    assert lookups("NOT trace.request_preview LIKE '%order%'") == 0
    assert lookups("trace.session_id LIKE '%order%'") == 0  # not indexed


def test_literal_runs_and_match_query() -> None:
    assert literal_runs("%order 5\\_1%") == ["order 5_1"]
    assert literal_runs("a_bc%d") == ["a", "bc", "d"]
    assert literal_runs("100\\%") == ["100%"]
    assert literal_runs("\\\\x") == ["\\x"]
    assert literal_runs("%%") == []
    assert match_query("%ab%cd%") is None
    assert match_query("%🎉🎉%") is None  # two characters (eight bytes): no trigram
    assert match_query('%say "hi"%x_yz%') == '"say ""hi"""'
    assert match_query("%abc%def%") == '"abc" AND "def"'
    assert match_query("%abcd\x00ef%") == '"abcd"'


def _assert_index_intact(engine: sa.Engine) -> None:
    """The index holds exactly the entries an index rebuilt from ``traces`` holds: every
    (trigram, rowid, column, offset), read from the index itself with fts5vocab (FTS5's
    integrity-check of SQLite 3.40 does not compare an external-content index with its
    content)."""
    entries = "SELECT term, doc, col, offset FROM temp.traces_fts_v ORDER BY 1, 2, 3, 4"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.traces_fts_v "
            "USING fts5vocab(main, traces_fts, instance)"
        )
        kept = conn.exec_driver_sql(entries).all()
        conn.exec_driver_sql("INSERT INTO traces_fts(traces_fts) VALUES ('rebuild')")
        rebuilt = conn.exec_driver_sql(entries).all()
        conn.exec_driver_sql("DROP TABLE temp.traces_fts_v")
    assert rebuilt, "no entries: the check would prove nothing"
    assert kept == rebuilt
