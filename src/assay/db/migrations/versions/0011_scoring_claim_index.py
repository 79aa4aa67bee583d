"""scoring ledger: the scorer in the claim index; the prune's index covers decided rows only

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

A claim picks due rows of the experiment's active scorers oldest first. ``ix_scoring_tasks_claim``
was (experiment_id, level, state, due_at_ms): a paused scorer's rows (they keep arriving while
it is paused) sat in the same range, due earlier than everyone else's, and every claim of the
other scorers read through all of them (PostgreSQL: a scan of 100,000 rows per claim, 16 ms,
growing with the pause). Claims now read one scorer at a time, on (experiment_id, level,
scorer_name, state, due_at_ms).

``ix_scoring_tasks_due`` (state, due_at_ms) served the prune of decided rows; when PostgreSQL's
statistics said no row was PENDING (autovacuum analyses a drained ledger) the planner chose it
for claims too, reading the PENDING rows of every experiment. It is replaced by
``ix_scoring_tasks_decided``, partial (``state IN ('FAILED', 'FILTERED')``) on PostgreSQL and
SQLite; MariaDB has no partial index and keeps the whole one (its optimizer counts the rows of
a range in the index itself, so it is not misled by statistics).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_DECIDED = "state IN ('FAILED', 'FILTERED')"


def upgrade() -> None:
    op.drop_index("ix_scoring_tasks_claim", table_name="scoring_tasks")
    op.create_index(
        "ix_scoring_tasks_claim",
        "scoring_tasks",
        ["experiment_id", "level", "scorer_name", "state", "due_at_ms"],
    )
    op.drop_index("ix_scoring_tasks_due", table_name="scoring_tasks")
    op.create_index(
        "ix_scoring_tasks_decided",
        "scoring_tasks",
        ["state", "due_at_ms"],
        postgresql_where=sa.text(_DECIDED),
        sqlite_where=sa.text(_DECIDED),
    )


def downgrade() -> None:
    op.drop_index("ix_scoring_tasks_decided", table_name="scoring_tasks")
    op.create_index("ix_scoring_tasks_due", "scoring_tasks", ["state", "due_at_ms"])
    op.drop_index("ix_scoring_tasks_claim", table_name="scoring_tasks")
    op.create_index(
        "ix_scoring_tasks_claim",
        "scoring_tasks",
        ["experiment_id", "level", "state", "due_at_ms"],
    )
