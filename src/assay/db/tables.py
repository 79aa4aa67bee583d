"""Table definitions. The schema changes only through the migrations in ``migrations/``."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = [
    "ASSESSMENT_SOURCES",
    "JOB_STATUSES",
    "RUN_STATUSES",
    "SCORER_STATUSES",
    "SCORING_DECIDED",
    "SCORING_STATES",
    "TRACE_STATUSES",
    "api_tokens",
    "assessments",
    "experiment_tags",
    "experiments",
    "job_attempts",
    "job_locks",
    "jobs",
    "leader_leases",
    "metadata",
    "run_inputs",
    "run_metrics",
    "run_params",
    "run_tags",
    "runs",
    "schedules",
    "scorers",
    "scoring_tasks",
    "secrets",
    "span_log_events",
    "spans",
    "sqlite_metadata",
    "trace_metadata",
    "trace_tags",
    "traces",
    "traces_fts",
]

metadata = sa.MetaData()

JOB_STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "TIMEOUT", "CANCELED")
RUN_STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")
TRACE_STATUSES = ("IN_PROGRESS", "OK", "ERROR")
ASSESSMENT_SOURCES = ("HUMAN", "LLM_JUDGE", "CODE")

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
    sa.Column("owner", sa.String(200), nullable=True),
    sa.CheckConstraint(
        "status IN ({})".format(", ".join(f"'{s}'" for s in JOB_STATUSES)),
        name="ck_jobs_status",
    ),
    # The claim scans PENDING rows in run_at order; the rescuer scans RUNNING ones.
    sa.Index("ix_jobs_status_run_at", "status", "run_at_ms"),
    sa.Index("ix_jobs_created", "created_at_ms", "id"),
    sa.Index("ix_jobs_name_created", "name", "created_at_ms"),
    sa.Index("ix_jobs_owner_created", "owner", "created_at_ms"),
    # Listing by status, newest first (a few RUNNING jobs among millions).
    sa.Index("ix_jobs_status_created", "status", "created_at_ms"),
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

# API tokens: only the SHA-256 of a token is stored; the token itself is shown once.
api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at_ms", Millis, nullable=False),
    sa.Column("expires_at_ms", Millis, nullable=True),
    sa.Column("revoked_at_ms", Millis, nullable=True),
    sa.CheckConstraint("role IN ('admin', 'user')", name="ck_api_tokens_role"),
)

# Server-wide secrets shared by every replica (the key that signs job tokens).
secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)

# One row per ``@periodic`` schedule: its next fire time, claimed by a guarded UPDATE so that a
# slot fires once even when two leaders overlap, and kept across leader changes.
schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("next_run_at_ms", Millis, nullable=False),
)

# Experiment tracking (migration 0003). Keys are at most 250 characters, so composite keys stay
# under MySQL's 3072-byte index limit in utf8mb4.
# SQLite autoincrements only an INTEGER PRIMARY KEY.
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Names and keys compare exactly (MySQL's default collations ignore case).
Key = sa.String(250).with_variant(mysql.VARCHAR(250, collation="utf8mb4_bin"), "mysql", "mariadb")
# Tracking tables hold arbitrary user text, whatever the database's default character set.
UTF8: dict[str, Any] = {"mysql_charset": "utf8mb4"}

experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", Key, nullable=False, unique=True),
    sa.Column("created_at_ms", Millis, nullable=False),
    sa.Index("ix_experiments_created", "created_at_ms", "id"),
    **UTF8,
)

experiment_tags = sa.Table(
    "experiment_tags",
    metadata,
    sa.Column("experiment_id", sa.String(36), sa.ForeignKey("experiments.id"), primary_key=True),
    sa.Column("key", Key, primary_key=True),
    sa.Column("value", LongText, nullable=False),
    **UTF8,
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("experiment_id", sa.String(36), sa.ForeignKey("experiments.id"), nullable=False),
    sa.Column("name", sa.String(250), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("start_time_ms", Millis, nullable=False),
    sa.Column("end_time_ms", Millis, nullable=True),
    sa.Column("created_at_ms", Millis, nullable=False),
    sa.CheckConstraint(
        "status IN ({})".format(", ".join(f"'{s}'" for s in RUN_STATUSES)),
        name="ck_runs_status",
    ),
    sa.Index("ix_runs_experiment_start", "experiment_id", "start_time_ms", "id"),
    **UTF8,
)

# A param is written once: the primary key makes a second, concurrent write fail.
run_params = sa.Table(
    "run_params",
    metadata,
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("key", Key, primary_key=True),
    sa.Column("value", LongText, nullable=False),
    **UTF8,
)

# Every logged metric value is kept: one row per (key, step, timestamp) point.
run_metrics = sa.Table(
    "run_metrics",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("key", Key, nullable=False),
    sa.Column("value", sa.Double, nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("timestamp_ms", Millis, nullable=False),
    sa.Index("ix_run_metrics_run_key_step", "run_id", "key", "step"),
    **UTF8,
)

run_tags = sa.Table(
    "run_tags",
    metadata,
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("key", Key, primary_key=True),
    sa.Column("value", LongText, nullable=False),
    **UTF8,
)

run_inputs = sa.Table(
    "run_inputs",
    metadata,
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("name", Key, primary_key=True),
    sa.Column("digest", Key, primary_key=True),
    sa.Column("source", LongText, nullable=True),
    sa.Column("created_at_ms", Millis, nullable=False),
    **UTF8,
)

# Traces (migration 0004). A trace row is the summary of its spans, recomputed whenever spans
# arrive; metadata and tags are also kept one row per key so filters can search them in SQL.
# Values over 500 characters are indexed truncated (the full value stays in ``*_json``).
Value = sa.String(500).with_variant(mysql.VARCHAR(500, collation="utf8mb4_bin"), "mysql", "mariadb")


def _in(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(
        "{} IN ({})".format(column, ", ".join(f"'{v}'" for v in values)), name=name
    )


traces = sa.Table(
    "traces",
    metadata,
    sa.Column("trace_id", sa.String(32), primary_key=True),
    sa.Column("experiment_id", sa.String(36), sa.ForeignKey("experiments.id"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("request_preview", sa.String(1000), nullable=True),
    sa.Column("response_preview", sa.String(1000), nullable=True),
    sa.Column("request", LongText, nullable=True),
    sa.Column("response", LongText, nullable=True),
    sa.Column("start_time_ms", Millis, nullable=False),
    sa.Column("duration_ms", Millis, nullable=True),
    # Database time at which the root span arrived (the trace became complete).
    sa.Column("completed_at_ms", Millis, nullable=True),
    sa.Column("session_id", Key, nullable=True),
    sa.Column("input_tokens", sa.BigInteger, nullable=True),
    sa.Column("output_tokens", sa.BigInteger, nullable=True),
    sa.Column("total_tokens", sa.BigInteger, nullable=True),
    sa.Column("cost", sa.Double, nullable=True),
    sa.Column("metadata_json", LongText, nullable=False),
    sa.Column("tags_json", LongText, nullable=False),
    sa.Column("root_span_id", sa.String(16), nullable=True),
    sa.Column("span_count", sa.Integer, nullable=False),
    sa.Column("created_at_ms", Millis, nullable=False),
    sa.Column("updated_at_ms", Millis, nullable=False),
    # The LLM its spans name (migration 0007), searchable as ``trace.model``.
    sa.Column("model", Key, nullable=True),
    _in("status", TRACE_STATUSES, "ck_traces_status"),
    sa.Index("ix_traces_experiment_start", "experiment_id", "start_time_ms"),
    sa.Index("ix_traces_experiment_completed", "experiment_id", "completed_at_ms"),
    # A session's traces, and a status filter, in the search's order (migration 0008).
    sa.Index("ix_traces_experiment_session", "experiment_id", "session_id", "start_time_ms"),
    sa.Index("ix_traces_experiment_status", "experiment_id", "status", "start_time_ms"),
    sa.Index("ix_traces_experiment_model", "experiment_id", "model", "start_time_ms"),
    # LIKE '%…%' on the request text, from pg_trgm trigrams (migration 0009; PostgreSQL only).
    sa.Index(
        "ix_traces_request_trgm",
        "request_preview",
        postgresql_using="gin",
        postgresql_ops={"request_preview": "gin_trgm_ops"},
    ).ddl_if(dialect="postgresql"),
    **UTF8,
)

# SQLite only (migration 0010): an FTS5 table of trigrams of the two texts LIKE/ILIKE search
# most, external content of ``traces`` (keyed by its rowid, case folded), kept in step by
# triggers. It lives in its own MetaData: no other database has it and nothing creates it but
# the migration (which leaves it out where SQLite lacks FTS5). Its shadow tables
# (traces_fts_data, _idx, _config) are FTS5's.
sqlite_metadata = sa.MetaData()
traces_fts = sa.Table(
    "traces_fts",
    sqlite_metadata,
    sa.Column("rowid", sa.Integer, primary_key=True),
    sa.Column("request_preview", sa.Text),
    sa.Column("response_preview", sa.Text),
)

trace_metadata = sa.Table(
    "trace_metadata",
    metadata,
    sa.Column("trace_id", sa.String(32), sa.ForeignKey("traces.trace_id"), primary_key=True),
    sa.Column("key", Key, primary_key=True),
    sa.Column("value", Value, nullable=False),
    sa.Index("ix_trace_metadata_key_value", "key", "value"),
    **UTF8,
)

trace_tags = sa.Table(
    "trace_tags",
    metadata,
    sa.Column("trace_id", sa.String(32), sa.ForeignKey("traces.trace_id"), primary_key=True),
    sa.Column("key", Key, primary_key=True),
    sa.Column("value", Value, nullable=False),
    sa.Index("ix_trace_tags_key_value", "key", "value"),
    **UTF8,
)

# Spans as OTLP sent them; times in nanoseconds since the epoch, attributes and events as JSON.
spans = sa.Table(
    "spans",
    metadata,
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

# GenAI content events that arrived as OTLP log records (``POST /v1/logs``), kept apart from the
# spans they name (migration 0007): a span's events are read with them, whichever came first.
span_log_events = sa.Table(
    "span_log_events",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("experiment_id", sa.String(36), sa.ForeignKey("experiments.id"), nullable=False),
    sa.Column("trace_id", sa.String(32), nullable=False),
    sa.Column("span_id", sa.String(16), nullable=False),
    sa.Column("name", Key, nullable=False),
    sa.Column("time_unix_nano", sa.BigInteger, nullable=False),
    sa.Column("attributes", LongText, nullable=False),
    sa.Column("created_at_ms", Millis, nullable=False),
    sa.Index("ix_span_log_events_span", "trace_id", "span_id"),
    **UTF8,
)

# Writing an assessment with the idempotency key of an existing one on the same trace replaces
# it: the unique constraint makes the upsert safe against concurrent writers (NULL keys never
# conflict).
assessments = sa.Table(
    "assessments",
    metadata,
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
    sa.Column("created_at_ms", Millis, nullable=False),
    sa.Column("updated_at_ms", Millis, nullable=False),
    _in("source_type", ASSESSMENT_SOURCES, "ck_assessments_source_type"),
    sa.UniqueConstraint("trace_id", "idempotency_key", name="uq_assessments_trace_idempotency_key"),
    sa.Index("ix_assessments_trace_created", "trace_id", "created_at_ms"),
    **UTF8,
)

# One row per ended execution of a job (migration 0006), written in the transaction that ends
# it: finish, retry, cancel, rescue or hand-back. ``status`` is the job's status it ended with,
# or RETRIED (failed and re-queued), LOST (its worker's lease expired) or HANDED_BACK.
job_attempts = sa.Table(
    "job_attempts",
    metadata,
    sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("worker_id", sa.String(200), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", LongText, nullable=True),
    sa.Column("started_at_ms", Millis, nullable=True),
    sa.Column("finished_at_ms", Millis, nullable=False),
)

# Online scoring (migration 0005). A scorer is registered on an experiment; its definition is
# JSON and never holds a secret (judge keys come from the server's config).
SCORER_STATUSES = ("ACTIVE", "PAUSED", "STOPPED")
SCORING_STATES = ("PENDING", "FAILED", "FILTERED")
ScorerName = sa.String(100).with_variant(
    mysql.VARCHAR(100, collation="utf8mb4_bin"), "mysql", "mariadb"
)

scorers = sa.Table(
    "scorers",
    metadata,
    sa.Column("experiment_id", sa.String(36), sa.ForeignKey("experiments.id"), primary_key=True),
    sa.Column("name", ScorerName, primary_key=True),
    sa.Column("kind", sa.String(50), nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("definition", LongText, nullable=False),
    sa.Column("sample_rate", sa.Double, nullable=False),
    sa.Column("filter_string", sa.Text, nullable=True),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("status_reason", sa.Text, nullable=True),
    sa.Column("created_at_ms", Millis, nullable=False),
    sa.Column("updated_at_ms", Millis, nullable=False),
    _in("status", SCORER_STATUSES, "ck_scorers_status"),
    _in("level", ("trace", "session"), "ck_scorers_level"),
    **UTF8,
)

# The pending ledger: one row per (trace or session, scorer) that still has to be scored (or
# that ended FAILED or FILTERED, kept for the decision log). Rows are written in the ingest
# transaction that completes a trace (or touches a session), and deleted in the transaction
# that writes the assessment. ``generation`` counts session touches, so a scorer that scored
# an older state of a session never deletes the request to score the newer one.
# Claimed rows are updated by ``id``: an equality on a unique integer is the plan every database
# picks, even on a table whose statistics are stale (a composite key lost to the claim index on
# PostgreSQL right after a burst, scanning the experiment's rows once per row).
SCORING_DECIDED = "state IN ('FAILED', 'FILTERED')"
"""The ledger rows that wait only for the prune (the predicate of ix_scoring_tasks_decided)."""

scoring_tasks = sa.Table(
    "scoring_tasks",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("experiment_id", sa.String(36), nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("target_id", Key, nullable=False),
    sa.Column("scorer_name", ScorerName, nullable=False),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("due_at_ms", Millis, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_until_ms", Millis, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at_ms", Millis, nullable=False),
    sa.Column("updated_at_ms", Millis, nullable=False),
    _in("state", SCORING_STATES, "ck_scoring_tasks_state"),
    sa.UniqueConstraint(
        "experiment_id", "level", "target_id", "scorer_name", name="uq_scoring_tasks_target"
    ),
    # A claim reads one scorer's due rows, oldest first (ScoringStore.tasks_claim): with the
    # scorer in the key, a paused scorer's backlog is never read by the others' claims.
    sa.Index(
        "ix_scoring_tasks_claim", "experiment_id", "level", "scorer_name", "state", "due_at_ms"
    ),
    # The prune's: decided rows only (a partial index on PostgreSQL and SQLite; MariaDB has
    # none), so that no claim is planned on it when the statistics say nothing is PENDING.
    sa.Index(
        "ix_scoring_tasks_decided",
        "state",
        "due_at_ms",
        postgresql_where=sa.text(SCORING_DECIDED),
        sqlite_where=sa.text(SCORING_DECIDED),
    ),
    **UTF8,
)
