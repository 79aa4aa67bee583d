"""Table definitions. The schema changes only through the migrations in ``migrations/``."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = ["JOB_STATUSES", "job_locks", "jobs", "leader_leases", "metadata"]

metadata = sa.MetaData()

JOB_STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "TIMEOUT", "CANCELED")

# JSON payloads are stored as text; MySQL's TEXT stops at 64 KiB.
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
# Times are milliseconds since the epoch from the database clock, the same on every database.
Millis = sa.BigInteger

jobs = sa.Table(
    "jobs",
    metadata,
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
    sa.Column("created_at_ms", Millis, nullable=False),
    sa.Column("run_at_ms", Millis, nullable=False),
    sa.Column("started_at_ms", Millis, nullable=True),
    sa.Column("finished_at_ms", Millis, nullable=True),
    sa.Column("lease_expires_at_ms", Millis, nullable=True),
    sa.CheckConstraint(
        "status IN ({})".format(", ".join(f"'{s}'" for s in JOB_STATUSES)),
        name="ck_jobs_status",
    ),
    # The claim scans PENDING rows in run_at order; the rescuer scans RUNNING ones.
    sa.Index("ix_jobs_status_run_at", "status", "run_at_ms"),
    sa.Index("ix_jobs_created", "created_at_ms", "id"),
    sa.Index("ix_jobs_name_created", "name", "created_at_ms"),
)

job_locks = sa.Table(
    "job_locks",
    metadata,
    sa.Column("lock_key", sa.String(200), primary_key=True),
    sa.Column("job_id", sa.String(36), nullable=False),
    # The holder is one execution of a job: (job_id, attempt); attempt grows with every claim.
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("expires_at_ms", Millis, nullable=False),
    sa.Index("ix_job_locks_job_id", "job_id"),
)

leader_leases = sa.Table(
    "leader_leases",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires_at_ms", Millis, nullable=False),
)
