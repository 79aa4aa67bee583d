"""trace search: a trigram index for LIKE on the request text (PostgreSQL)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

``trace.request_preview LIKE '%…%'`` has no prefix, so a b-tree cannot help: with a million
traces PostgreSQL read the whole table for every search (~600 ms; bench/scale.py). A GIN
index of pg_trgm trigrams answers it from the index (5-15 ms). pg_trgm ships with PostgreSQL
and is a trusted extension (a database owner may create it); where the migration's user may
not create it, the index is left out with a warning and such searches stay scans. SQLite and
MariaDB have no trigram index; their searches still walk the experiment newest first and stop
at a full page.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError as exc:
        logging.getLogger("assay.migrate").warning(
            "pg_trgm is not available (%s): LIKE on trace request text will scan; "
            "run CREATE EXTENSION pg_trgm as a superuser and recreate ix_traces_request_trgm",
            str(exc.orig).strip().splitlines()[0],
        )
        return
    op.create_index(
        "ix_traces_request_trgm",
        "traces",
        ["request_preview"],
        postgresql_using="gin",
        postgresql_ops={"request_preview": "gin_trgm_ops"},
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_traces_request_trgm", table_name="traces")
