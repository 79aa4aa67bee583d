"""experiment tracking: experiments, runs, params, metrics, tags and inputs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
# SQLite autoincrements only an INTEGER PRIMARY KEY.
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Names and keys compare exactly (MySQL's default collations ignore case).
Key = sa.String(250).with_variant(mysql.VARCHAR(250, collation="utf8mb4_bin"), "mysql", "mariadb")
# Tracking tables hold arbitrary user text, whatever the database's default character set.
UTF8: dict[str, Any] = {"mysql_charset": "utf8mb4"}


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", Key, nullable=False, unique=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        **UTF8,
    )
    op.create_index("ix_experiments_created", "experiments", ["created_at_ms", "id"])
    op.create_table(
        "experiment_tags",
        sa.Column(
            "experiment_id", sa.String(36), sa.ForeignKey("experiments.id"), primary_key=True
        ),
        sa.Column("key", Key, primary_key=True),
        sa.Column("value", LongText, nullable=False),
        **UTF8,
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("experiment_id", sa.String(36), sa.ForeignKey("experiments.id"), nullable=False),
        sa.Column("name", sa.String(250), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("start_time_ms", sa.BigInteger, nullable=False),
        sa.Column("end_time_ms", sa.BigInteger, nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "status IN ('RUNNING', 'FINISHED', 'FAILED', 'KILLED')", name="ck_runs_status"
        ),
        **UTF8,
    )
    op.create_index("ix_runs_experiment_start", "runs", ["experiment_id", "start_time_ms", "id"])
    op.create_table(
        "run_params",
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("key", Key, primary_key=True),
        sa.Column("value", LongText, nullable=False),
        **UTF8,
    )
    op.create_table(
        "run_metrics",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("key", Key, nullable=False),
        sa.Column("value", sa.Double, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger, nullable=False),
        **UTF8,
    )
    op.create_index("ix_run_metrics_run_key_step", "run_metrics", ["run_id", "key", "step"])
    op.create_table(
        "run_tags",
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("key", Key, primary_key=True),
        sa.Column("value", LongText, nullable=False),
        **UTF8,
    )
    op.create_table(
        "run_inputs",
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("name", Key, primary_key=True),
        sa.Column("digest", Key, primary_key=True),
        sa.Column("source", LongText, nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        **UTF8,
    )


def downgrade() -> None:
    # Dropping a table drops its indexes (MariaDB refuses to drop one a foreign key needs).
    for name in ("run_inputs", "run_tags", "run_metrics", "run_params", "runs"):
        op.drop_table(name)
    op.drop_table("experiment_tags")
    op.drop_table("experiments")
