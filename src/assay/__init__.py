"""assay: a durable job backend and online-scoring engine for LLM and ML platforms."""

from assay import tracing
from assay.client import Client
from assay.config import Settings, load_settings
from assay.errors import (
    AssayError,
    AuthenticationError,
    ConfigError,
    ConflictError,
    FlushError,
    InvalidFilterError,
    InvalidParamsError,
    InvalidRequestError,
    JobCancelled,
    MigrationError,
    NotFoundError,
    PermissionDeniedError,
    RequestTooLargeError,
    StoreError,
    UnknownJobError,
    UnsupportedMediaTypeError,
    WaitTimeoutError,
)
from assay.jobs import (
    Backend,
    Job,
    JobContext,
    JobPage,
    JobStatus,
    Progress,
    Worker,
    connect,
    current_job,
    job,
)
from assay.jobs.periodic import periodic
from assay.tracing import trace

__version__ = "0.1.0"

__all__ = [
    "AssayError",
    "AuthenticationError",
    "Backend",
    "Client",
    "ConfigError",
    "ConflictError",
    "FlushError",
    "InvalidFilterError",
    "InvalidParamsError",
    "InvalidRequestError",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobPage",
    "JobStatus",
    "MigrationError",
    "NotFoundError",
    "PermissionDeniedError",
    "Progress",
    "RequestTooLargeError",
    "Settings",
    "StoreError",
    "UnknownJobError",
    "UnsupportedMediaTypeError",
    "WaitTimeoutError",
    "Worker",
    "__version__",
    "connect",
    "current_job",
    "job",
    "load_settings",
    "periodic",
    "trace",
    "tracing",
]
