"""assay: a durable job backend and online-scoring engine for LLM and ML platforms."""

from assay.config import Settings, load_settings
from assay.errors import (
    AssayError,
    ConfigError,
    ConflictError,
    InvalidParamsError,
    InvalidRequestError,
    JobCancelled,
    MigrationError,
    NotFoundError,
    StoreError,
    UnknownJobError,
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

__version__ = "0.1.0"

__all__ = [
    "AssayError",
    "Backend",
    "ConfigError",
    "ConflictError",
    "InvalidParamsError",
    "InvalidRequestError",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobPage",
    "JobStatus",
    "MigrationError",
    "NotFoundError",
    "Progress",
    "Settings",
    "StoreError",
    "UnknownJobError",
    "WaitTimeoutError",
    "Worker",
    "__version__",
    "connect",
    "current_job",
    "job",
    "load_settings",
]
