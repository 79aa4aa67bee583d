"""trace search indexes: a session's traces and a status filter in the search's order

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

Searches are newest first; with the order in the index, a session's traces or the ERROR
traces of an experiment with a million traces are an index range, not a walk of the whole
experiment (SQLite, which has no statistics, otherwise walks ix_traces_experiment_start).
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_traces_experiment_session", table_name="traces")
    op.create_index(
        "ix_traces_experiment_session", "traces", ["experiment_id", "session_id", "start_time_ms"]
    )
    op.create_index(
        "ix_traces_experiment_status", "traces", ["experiment_id", "status", "start_time_ms"]
    )


def downgrade() -> None:
    op.drop_index("ix_traces_experiment_status", table_name="traces")
    op.drop_index("ix_traces_experiment_session", table_name="traces")
    op.create_index("ix_traces_experiment_session", "traces", ["experiment_id", "session_id"])
