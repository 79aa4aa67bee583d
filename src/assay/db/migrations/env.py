"""Alembic environment: assay passes its own connection in ``config.attributes``."""

from __future__ import annotations

from alembic import context

from assay.db.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through assay.db.upgrade() or `assay db upgrade`")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
