"""online scoring: scorers and the pending ledger

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
Key = sa.String(250).with_variant(mysql.VARCHAR(250, collation="utf8mb4_bin"), "mysql", "mariadb")
ScorerName = sa.String(100).with_variant(
    mysql.VARCHAR(100, collation="utf8mb4_bin"), "mysql", "mariadb"
)
# SQLite autoincrements only an INTEGER PRIMARY KEY.
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTF8: dict[str, Any] = {"mysql_charset": "utf8mb4"}


def upgrade() -> None:
    op.create_table(
        "scorers",
        sa.Column(
            "experiment_id", sa.String(36), sa.ForeignKey("experiments.id"), primary_key=True
        ),
        sa.Column("name", ScorerName, primary_key=True),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("definition", LongText, nullable=False),
        sa.Column("sample_rate", sa.Double, nullable=False),
        sa.Column("filter_string", sa.Text, nullable=True),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("status_reason", sa.Text, nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint("status IN ('ACTIVE', 'PAUSED', 'STOPPED')", name="ck_scorers_status"),
        sa.CheckConstraint("level IN ('trace', 'session')", name="ck_scorers_level"),
        **UTF8,
    )
    op.create_table(
        "scoring_tasks",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("experiment_id", sa.String(36), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("target_id", Key, nullable=False),
        sa.Column("scorer_name", ScorerName, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("due_at_ms", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until_ms", sa.BigInteger, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "state IN ('PENDING', 'FAILED', 'FILTERED')",
            name="ck_scoring_tasks_state",
        ),
        sa.UniqueConstraint(
            "experiment_id", "level", "target_id", "scorer_name", name="uq_scoring_tasks_target"
        ),
        **UTF8,
    )
    op.create_index(
        "ix_scoring_tasks_claim",
        "scoring_tasks",
        ["experiment_id", "level", "state", "due_at_ms"],
    )
    op.create_index("ix_scoring_tasks_due", "scoring_tasks", ["state", "due_at_ms"])


def downgrade() -> None:
    op.drop_table("scoring_tasks")
    op.drop_table("scorers")
