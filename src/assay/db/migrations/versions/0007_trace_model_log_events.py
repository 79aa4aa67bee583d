"""trace model, GenAI log events

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
Key = sa.String(250).with_variant(mysql.VARCHAR(250, collation="utf8mb4_bin"), "mysql", "mariadb")
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTF8: dict[str, Any] = {"mysql_charset": "utf8mb4"}


def upgrade() -> None:
    with op.batch_alter_table("traces") as batch:
        batch.add_column(sa.Column("model", Key, nullable=True))
    op.create_index(
        "ix_traces_experiment_model", "traces", ["experiment_id", "model", "start_time_ms"]
    )
    op.create_table(
        "span_log_events",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("experiment_id", sa.String(36), sa.ForeignKey("experiments.id"), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("span_id", sa.String(16), nullable=False),
        sa.Column("name", Key, nullable=False),
        sa.Column("time_unix_nano", sa.BigInteger, nullable=False),
        sa.Column("attributes", LongText, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        **UTF8,
    )
    op.create_index("ix_span_log_events_span", "span_log_events", ["trace_id", "span_id"])


def downgrade() -> None:
    op.drop_index("ix_span_log_events_span", table_name="span_log_events")
    op.drop_table("span_log_events")
    op.drop_index("ix_traces_experiment_model", table_name="traces")
    with op.batch_alter_table("traces") as batch:
        batch.drop_column("model")
