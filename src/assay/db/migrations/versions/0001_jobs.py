"""jobs, job locks and leader leases

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("params", LongText, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result", LongText, nullable=True),
        sa.Column("error", LongText, nullable=True),
        sa.Column("progress", sa.Text, nullable=True),
        sa.Column("log_tail", sa.Text, nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_retries", sa.Integer, nullable=False),
        sa.Column("timeout_s", sa.Float, nullable=False),
        sa.Column("lock_key", sa.String(200), nullable=True),
        sa.Column("on_conflict", sa.String(8), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("run_at_ms", sa.BigInteger, nullable=False),
        sa.Column("started_at_ms", sa.BigInteger, nullable=True),
        sa.Column("finished_at_ms", sa.BigInteger, nullable=True),
        sa.Column("lease_expires_at_ms", sa.BigInteger, nullable=True),
        sa.CheckConstraint(
            "status IN ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'TIMEOUT', 'CANCELED')",
            name="ck_jobs_status",
        ),
    )
    op.create_index("ix_jobs_status_run_at", "jobs", ["status", "run_at_ms"])
    op.create_index("ix_jobs_created", "jobs", ["created_at_ms", "id"])
    op.create_index("ix_jobs_name_created", "jobs", ["name", "created_at_ms"])

    op.create_table(
        "job_locks",
        sa.Column("lock_key", sa.String(200), primary_key=True),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_job_locks_job_id", "job_locks", ["job_id"])

    op.create_table(
        "leader_leases",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leader_leases")
    op.drop_table("job_locks")
    op.drop_table("jobs")
