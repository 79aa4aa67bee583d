"""trace search: an FTS5 trigram index for LIKE on the request and response text (SQLite)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05

SQLite's counterpart of 0009's pg_trgm index. ``trace.request_preview LIKE '%…%'`` has no
prefix, so SQLite walked the experiment newest first and, for a pattern that few traces
match, read all of them (~600 ms at a million traces; bench/scale.py). ``traces_fts`` is an
FTS5 table of trigrams of ``request_preview`` and ``response_preview``, external content
(``content='traces'``: it stores only the index, keyed by the traces' rowid), folding case
(``case_sensitive 0``) so that one index serves LIKE and ILIKE: a search narrows to the traces
whose text holds the pattern's literal runs of three or more characters, then applies the
LIKE itself (``tracing.filters.textindex``).

Triggers keep it in step with ``traces`` on every insert, delete and change of either
column, whichever code (or hand-written SQL) makes it; the upgrade indexes the existing rows
(6.7 s for 200,000 traces with ~150 characters of text, load 17). They cost ~15-20 % of the
store's own ingest time (bench/README.md, scale.py).
A SQLite built without FTS5 or the trigram tokenizer (before 3.34) gets no index, with a
warning, and such searches stay walks. PostgreSQL and MariaDB: nothing to do.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_CREATE = """
CREATE VIRTUAL TABLE traces_fts USING fts5(
    request_preview, response_preview,
    content='traces', content_rowid='rowid',
    tokenize='trigram case_sensitive 0', columnsize=0
)"""

# The external-content triggers of the FTS5 documentation: 'delete' removes the entries of the
# values that were indexed (old.*), so every change of the two columns goes through them. An
# UPDATE that leaves both columns as they were skips them, and a row with neither text (a
# trace whose spans carry neither) is never in the index.
_TRIGGERS = (
    """
CREATE TRIGGER traces_fts_ai AFTER INSERT ON traces
WHEN new.request_preview IS NOT NULL OR new.response_preview IS NOT NULL BEGIN
    INSERT INTO traces_fts(rowid, request_preview, response_preview)
    VALUES (new.rowid, new.request_preview, new.response_preview);
END""",
    """
CREATE TRIGGER traces_fts_ad AFTER DELETE ON traces
WHEN old.request_preview IS NOT NULL OR old.response_preview IS NOT NULL BEGIN
    INSERT INTO traces_fts(traces_fts, rowid, request_preview, response_preview)
    VALUES ('delete', old.rowid, old.request_preview, old.response_preview);
END""",
    """
CREATE TRIGGER traces_fts_au AFTER UPDATE OF request_preview, response_preview ON traces
WHEN old.request_preview IS NOT new.request_preview
  OR old.response_preview IS NOT new.response_preview
BEGIN
    INSERT INTO traces_fts(traces_fts, rowid, request_preview, response_preview)
    SELECT 'delete', old.rowid, old.request_preview, old.response_preview
    WHERE old.request_preview IS NOT NULL OR old.response_preview IS NOT NULL;
    INSERT INTO traces_fts(rowid, request_preview, response_preview)
    SELECT new.rowid, new.request_preview, new.response_preview
    WHERE new.request_preview IS NOT NULL OR new.response_preview IS NOT NULL;
END""",
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    try:
        with bind.begin_nested():
            bind.exec_driver_sql(_CREATE)
    except sa.exc.DBAPIError as exc:
        logging.getLogger("assay.migrate").warning(
            "SQLite has no FTS5 trigram tokenizer (%s): LIKE on trace text will walk the "
            "experiment",
            str(exc.orig).strip().splitlines()[0],
        )
        return
    for trigger in _TRIGGERS:
        bind.exec_driver_sql(trigger)
    bind.exec_driver_sql(
        "INSERT INTO traces_fts(rowid, request_preview, response_preview) "
        "SELECT rowid, request_preview, response_preview FROM traces "
        "WHERE request_preview IS NOT NULL OR response_preview IS NOT NULL"
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for name in ("traces_fts_au", "traces_fts_ad", "traces_fts_ai"):
        bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
    bind.exec_driver_sql("DROP TABLE IF EXISTS traces_fts")
