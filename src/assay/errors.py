"""The one exception tree of assay.

::

    AssayError
    ├── ConfigError              invalid settings or executor options
    ├── InvalidRequestError      bad input from a caller (HTTP 400, CLI exit 2)
    │   ├── UnknownJobError      no @job registered under that name
    │   └── InvalidParamsError   params that do not bind to the job's signature, or not JSON
    ├── NotFoundError            no such job (HTTP 404)
    ├── ConflictError            the request contradicts the current state (HTTP 409)
    ├── WaitTimeoutError         wait() gave up before the job finished
    ├── StoreError               the database failed or is unreachable (driver errors wrapped)
    │   └── MigrationError       the schema is missing or behind and cannot be upgraded
    └── JobCancelled             raised inside a running job that checks its cancel flag

Driver exceptions are translated at the store boundary (``raise StoreError(...) from exc``);
HTTP codes are mapped from this tree in one place, the server's error handler.
"""

from __future__ import annotations

__all__ = [
    "AssayError",
    "ConfigError",
    "ConflictError",
    "InvalidParamsError",
    "InvalidRequestError",
    "JobCancelled",
    "MigrationError",
    "NotFoundError",
    "StoreError",
    "UnknownJobError",
    "WaitTimeoutError",
]


class AssayError(Exception):
    """Root of every error assay raises on purpose."""

    code = "assay_error"


class ConfigError(AssayError):
    code = "invalid_config"


class InvalidRequestError(AssayError):
    code = "invalid_request"


class UnknownJobError(InvalidRequestError):
    code = "unknown_job"


class InvalidParamsError(InvalidRequestError):
    code = "invalid_params"


class NotFoundError(AssayError):
    code = "not_found"


class ConflictError(AssayError):
    code = "conflict"


class WaitTimeoutError(AssayError):
    code = "wait_timeout"


class StoreError(AssayError):
    code = "store_error"


class MigrationError(StoreError):
    code = "migration_error"


class JobCancelled(AssayError):
    """Raised by :meth:`JobContext.check_cancelled` when the job was cancelled or timed out."""

    code = "job_cancelled"
