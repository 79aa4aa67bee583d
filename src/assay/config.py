"""One typed, frozen settings object.

It is read from the environment (prefix ``ASSAY_``) only where a program starts: the CLI, the
server, or an explicit :func:`load_settings` call. Nothing in assay reads the environment at
import time; library code receives a :class:`Settings` instance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from assay.db.dialects import MYSQL_NAMES, POSTGRESQL, SQLITE
from assay.errors import ConfigError

DEFAULT_STORE_URI = f"sqlite:///{Path.home() / '.assay' / 'assay.db'}"

__all__ = ["DEFAULT_STORE_URI", "Settings", "load_settings"]


class Settings(BaseSettings):
    """Every knob of assay, with units in the names."""

    model_config = SettingsConfigDict(env_prefix="ASSAY_", frozen=True, extra="forbid")

    store_uri: str = DEFAULT_STORE_URI
    """SQLAlchemy URL of the store: sqlite:///path, postgresql+psycopg://…, mysql+pymysql://…"""
    auto_migrate: bool = True
    """Apply pending migrations when a backend or worker connects."""

    job_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Modules imported to register @job functions (comma separated in the environment)."""
    default_executor: str = "process"
    executor_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-executor options, JSON in the environment: {"ray": {"address": "auto"}}."""
    job_timeout_s: float = Field(3600.0, gt=0)
    """Timeout of a job whose submit call and @job declaration name none."""

    process_max_jobs: int = Field(1000, ge=1)
    """A ``process`` executor pool process is replaced after this many jobs..."""
    process_max_rss_mb: float = Field(1024.0, gt=0)
    """...or once its resident memory passes this."""

    sandbox_memory_bytes: int = Field(512 * 2**20, gt=0)
    """``sandbox`` executor limits: address space (RLIMIT_AS)..."""
    sandbox_cpu_s: int = Field(60, gt=0)
    sandbox_file_size_bytes: int = Field(64 * 2**20, gt=0)
    sandbox_open_files: int = Field(64, gt=0)
    sandbox_processes: int = Field(64, gt=0)
    """RLIMIT_NPROC, enforced for non-root workers (seccomp forbids forks in any case)."""
    sandbox_wall_s: float = Field(600.0, gt=0)
    sandbox_output_bytes: int = Field(2**20, gt=0)
    sandbox_result_bytes: int = Field(2**20, gt=0)

    python_env_dir: str = "~/.assay/envs"
    """Where the cached virtualenvs of ``@job(python_env=…)`` jobs live."""
    python_env_create_timeout_s: float = Field(1800.0, gt=0)

    worker_concurrency: int = Field(10, ge=1)
    claim_batch_max: int = Field(100, ge=1)
    poll_interval_s: float = Field(0.1, gt=0)
    """Fallback polling for new jobs; PostgreSQL LISTEN/NOTIFY and SQLite's data_version wake
    workers sooner."""
    sqlite_watch_interval_s: float = Field(0.002, gt=0)
    notify_url: str | None = None
    """Redis URL (``redis://host:6379/0``) for wake-ups by pub/sub: submits publish, workers
    subscribe. For MySQL/MariaDB, which have no LISTEN/NOTIFY (``pip install 'assay[redis]'``)."""
    notify_channel: str = Field("assay:jobs", min_length=1)
    cancel_poll_s: float = Field(0.5, gt=0)
    """How often a worker checks its running jobs for cancellation and timeouts."""
    lease_ttl_s: float = Field(15.0, gt=0)
    """A claimed job's lease; renewed every third of it while the job runs."""
    shutdown_grace_s: float = Field(30.0, ge=0)
    """On SIGTERM running jobs get this long to finish before they are handed back."""

    retry_backoff_base_s: float = Field(1.0, ge=0)
    retry_backoff_max_s: float = Field(300.0, ge=0)
    retry_jitter: float = Field(0.2, ge=0, le=1)
    rescue_min_attempts: int = Field(3, ge=1)
    """A job whose worker died is re-queued while attempt < max(max_retries + 1, this)."""

    leader_ttl_s: float = Field(15.0, gt=0)
    rescue_interval_s: float = Field(5.0, gt=0)
    prune_interval_s: float = Field(3600.0, gt=0)
    job_retention_s: float = Field(7 * 24 * 3600.0, gt=0)
    """Finished jobs older than this are deleted by the leader's pruner."""
    maintenance: bool = True
    """Whether this process competes for leadership and runs the rescuer, pruner and
    scheduler."""

    max_params_bytes: int = Field(1 * 2**20, gt=0)
    """Largest JSON-encoded params one job may be submitted with."""
    max_result_bytes: int = Field(8 * 2**20, gt=0)
    """Largest JSON-encoded result a job may return; a bigger one fails the job."""

    host: str = "127.0.0.1"
    """``assay server`` listens here..."""
    port: int = Field(8400, ge=0, le=65535)
    """...on this port."""
    otlp_grpc_port: int | None = Field(None, ge=0, le=65535)
    """OTLP/gRPC receiver port, on ``host`` (needs ``assay[grpc]``). None: 4317 when grpcio is
    installed, skipped with a warning when that port is taken; 0: off."""
    server_workers: int = Field(1, ge=0)
    """Worker loops the server runs in its own process (0: an API-only replica)."""
    server_processes: int = Field(1, ge=1, le=64)
    """Processes ``assay server`` serves with on its one address (each with its own
    ``server_workers`` loops, as replicas): Python runs one core's worth of work per process,
    so N processes use N cores for the API and OTLP ingest."""
    max_request_bytes: int = Field(16 * 2**20, gt=0)
    """Requests with a larger body are refused with 413 before they are read."""
    max_request_items: int = Field(20_000, gt=0)
    """An OTLP export (traces or logs) with more spans or log records is refused with 413
    before any is decoded: tiny spans cost ~40x the CPU per byte of real ones, so this, not
    the byte limit, is what bounds the work one request makes."""
    artifact_root: str | None = None
    """Where the MLflow-compatible API keeps artifacts and logged models (a directory all
    replicas share). None: ``<database file>.artifacts`` beside a SQLite store, else
    ``~/.assay/artifacts``."""
    auth: bool | None = None
    """Require API tokens (``Authorization: Bearer``) on every API request. None: required
    unless the server listens on a loopback address only (the local quickstart)."""
    job_token_ttl_s: float = Field(3600.0, gt=0)
    """Lifetime of the token each running job gets to call the API back (capped by the job's
    timeout)."""
    public_url: str | None = None
    """The API's address as running jobs should call it (``current_job().api_url``,
    ``ASSAY_API_URL``). Default in ``assay server``: its own host and port. The web UI also
    accepts forms sent from pages at this address (its CSRF check)."""
    trust_proxy_headers: bool = False
    """Behind a reverse proxy: the web UI takes the scheme and host browsers use from
    ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` (its CSRF check, the cookie's ``Secure``).
    Turn on only when every request comes through a proxy that sets both: anyone reaching the
    server directly could."""
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Host names (no port; comma separated in the environment; ``*``: any) requests may be
    addressed to, besides ``localhost``, IP addresses, ``host`` and the host of
    ``public_url``. Checked (403 "host not allowed", against DNS rebinding) whenever auth is
    off; with auth on, only when this is set."""
    ui_session_max_age_s: float = Field(12 * 3600.0, gt=0)
    """How long a browser keeps the web UI's login cookie (its ``Max-Age``)."""

    # Online scoring.
    scoring_interval_s: float = Field(1.0, gt=0)
    """How often the leader looks for experiments with traces or sessions due for scoring."""
    scoring_batch_size: int = Field(200, ge=1)
    """Ledger rows one scoring job claims (and commits) at a time."""
    scoring_concurrency: int = Field(16, ge=1)
    """Judge (and custom scorer) calls one scoring job runs at once."""
    scoring_regex_timeout_s: float = Field(1.0, gt=0, le=60)
    """A regex scorer's match is stopped after this many seconds of CPU time, and that one
    assessment fails ("regex timed out after ... s")."""
    scoring_lease_s: float = Field(120.0, gt=0)
    """A claimed batch is someone else's to retry after this long (its job died or stalled)."""
    scoring_job_budget_s: float = Field(60.0, gt=0)
    """A scoring job stops claiming after this long and lets the leader start the next one."""
    scoring_retry_max_age_s: float = Field(3600.0, gt=0)
    """A trace whose judge keeps failing is retried (with backoff) until it is this old, then
    marked failed with the last error."""
    session_idle_s: float = Field(300.0, gt=0)
    """A session is scored once no trace of it arrived for this long."""
    allow_custom_scorers: bool = False
    """Accept custom code scorers (they run in the ``sandbox`` executor only)."""
    scoring_retention_s: float = Field(7 * 24 * 3600.0, gt=0)
    """Ledger rows of (trace, scorer) pairs decided without an assessment (filtered out or
    failed) are deleted this long after the decision by the leader's pruner, every
    ``prune_interval_s``; the decision log then reports them as ``pruned``."""
    trace_retention_s: float | None = Field(None, gt=0)
    """Traces that started longer ago than this are deleted, with their spans, assessments and
    ledger rows, by the leader's pruner every ``prune_interval_s``; unset (the default):
    traces are kept."""
    backfill_max_traces: int = Field(100_000, ge=1)
    """The most traces one backfill request may queue."""
    judge_base_url: str = "https://api.openai.com/v1"
    """The OpenAI-compatible endpoint LLM judges call."""
    judge_api_key: SecretStr | None = None
    """Its API key (never stored in a scorer definition)."""
    judge_model: str = "gpt-4o-mini"
    """The model a judge uses unless its definition names one."""
    judge_timeout_s: float = Field(30.0, gt=0)
    """One judge request's timeout."""
    judge_max_retry_s: float = Field(30.0, ge=0)
    """How long one judge call keeps retrying 429s, 5xx and timeouts before the trace is put
    back in the ledger for later."""

    @field_validator("job_modules", "allowed_hosts", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @field_validator("store_uri")
    @classmethod
    def _check_uri(cls, value: str) -> str:
        scheme = value.split(":", 1)[0]
        if not scheme.startswith((SQLITE, POSTGRESQL, *MYSQL_NAMES)):
            raise ValueError(
                f"unsupported store URI scheme {scheme!r}: "
                "use sqlite:///path, postgresql+psycopg://… or mysql+pymysql://…"
            )
        return value

    @model_validator(mode="after")
    def _check_lease(self) -> Settings:
        if self.cancel_poll_s >= self.lease_ttl_s:
            raise ValueError("cancel_poll_s must be shorter than lease_ttl_s")
        return self


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, with explicit overrides (None values ignored)."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {where}: {message}") from exc
