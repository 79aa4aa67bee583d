"""traces, spans, trace metadata and tags, assessments

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
Key = sa.String(250).with_variant(mysql.VARCHAR(250, collation="utf8mb4_bin"), "mysql", "mariadb")
Value = sa.String(500).with_variant(mysql.VARCHAR(500, collation="utf8mb4_bin"), "mysql", "mariadb")
UTF8: dict[str, Any] = {"mysql_charset": "utf8mb4"}


def upgrade() -> None:
    op.create_table(
        "traces",
        sa.Column("trace_id", sa.String(32), primary_key=True),
        sa.Column("experiment_id", sa.String(36), sa.ForeignKey("experiments.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request_preview", sa.String(1000), nullable=True),
        sa.Column("response_preview", sa.String(1000), nullable=True),
        sa.Column("request", LongText, nullable=True),
        sa.Column("response", LongText, nullable=True),
        sa.Column("start_time_ms", sa.BigInteger, nullable=False),
        sa.Column("duration_ms", sa.BigInteger, nullable=True),
        sa.Column("completed_at_ms", sa.BigInteger, nullable=True),
        sa.Column("session_id", Key, nullable=True),
        sa.Column("input_tokens", sa.BigInteger, nullable=True),
        sa.Column("output_tokens", sa.BigInteger, nullable=True),
        sa.Column("total_tokens", sa.BigInteger, nullable=True),
        sa.Column("cost", sa.Double, nullable=True),
        sa.Column("metadata_json", LongText, nullable=False),
        sa.Column("tags_json", LongText, nullable=False),
        sa.Column("root_span_id", sa.String(16), nullable=True),
        sa.Column("span_count", sa.Integer, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint("status IN ('IN_PROGRESS', 'OK', 'ERROR')", name="ck_traces_status"),
        **UTF8,
    )
    op.create_index("ix_traces_experiment_start", "traces", ["experiment_id", "start_time_ms"])
    op.create_index(
        "ix_traces_experiment_completed", "traces", ["experiment_id", "completed_at_ms"]
    )
    op.create_index("ix_traces_experiment_session", "traces", ["experiment_id", "session_id"])
    for name in ("trace_metadata", "trace_tags"):
        op.create_table(
            name,
            sa.Column(
                "trace_id", sa.String(32), sa.ForeignKey("traces.trace_id"), primary_key=True
            ),
            sa.Column("key", Key, primary_key=True),
            sa.Column("value", Value, nullable=False),
            **UTF8,
        )
        op.create_index(f"ix_{name}_key_value", name, ["key", "value"])
    op.create_table(
        "spans",
        sa.Column("trace_id", sa.String(32), sa.ForeignKey("traces.trace_id"), primary_key=True),
        sa.Column("span_id", sa.String(16), primary_key=True),
        sa.Column("parent_span_id", sa.String(16), nullable=True),
        sa.Column("name", sa.String(1000), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status_code", sa.String(8), nullable=False),
        sa.Column("status_message", LongText, nullable=True),
        sa.Column("start_time_ns", sa.BigInteger, nullable=False),
        sa.Column("end_time_ns", sa.BigInteger, nullable=False),
        sa.Column("attributes", LongText, nullable=False),
        sa.Column("events", LongText, nullable=False),
        sa.Column("links", LongText, nullable=False),
        sa.Column("resource", LongText, nullable=False),
        **UTF8,
    )
    op.create_table(
        "assessments",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("trace_id", sa.String(32), sa.ForeignKey("traces.trace_id"), nullable=False),
        sa.Column("name", Key, nullable=False),
        sa.Column("value", LongText, nullable=True),
        sa.Column("rationale", LongText, nullable=True),
        sa.Column("source_type", sa.String(16), nullable=False),
        sa.Column("source_id", Key, nullable=False),
        sa.Column("error", LongText, nullable=True),
        sa.Column("metadata_json", LongText, nullable=True),
        sa.Column("idempotency_key", Key, nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "source_type IN ('HUMAN', 'LLM_JUDGE', 'CODE')", name="ck_assessments_source_type"
        ),
        sa.UniqueConstraint(
            "trace_id", "idempotency_key", name="uq_assessments_trace_idempotency_key"
        ),
        **UTF8,
    )
    op.create_index("ix_assessments_trace_created", "assessments", ["trace_id", "created_at_ms"])


def downgrade() -> None:
    # Dropping a table drops its indexes (MariaDB refuses to drop one a foreign key needs).
    for name in ("assessments", "spans", "trace_tags", "trace_metadata", "traces"):
        op.drop_table(name)
