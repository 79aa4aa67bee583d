"""The one exception tree of assay.

::

    AssayError
    ├── ConfigError              invalid settings or executor options
    ├── InvalidRequestError      bad input from a caller (HTTP 400, CLI exit 2)
    │   ├── UnknownJobError      no @job registered under that name
    │   ├── InvalidParamsError   params that do not bind to the job's signature, or not JSON
    │   ├── InvalidFilterError   a filter string or order_by that does not parse
    │   ├── UnsupportedMediaTypeError  a body in a content type or encoding not accepted (415)
    │   └── RequestTooLargeError a body over max_request_bytes, e.g. once decompressed (413)
    ├── AuthenticationError      no, unknown, expired or revoked API token (HTTP 401)
    ├── PermissionDeniedError    a valid token that may not do this (HTTP 403)
    ├── NotFoundError            no such job (HTTP 404)
    ├── ConflictError            the request contradicts the current state (HTTP 409)
    ├── WaitTimeoutError         wait() gave up before the job finished
    ├── FlushError               queued tracking operations that failed to send (one per flush)
    ├── JudgeError               an LLM judge call that did not give a usable answer
    │   ├── JudgeUnavailableError  rate limited, 5xx, timeout, unreachable: retry later
    │   ├── JudgeConfigError     401/403/404, unknown model: pause the scorer, do not retry
    │   └── JudgeOutputError     an answer that does not parse as the scorer's output type
    ├── ScorerTimeoutError       a scorer call past its time limit (a regex match, custom code)
    ├── StoreError               the database failed or is unreachable (driver errors wrapped)
    │   └── MigrationError       the schema is missing or behind and cannot be upgraded
    └── JobCancelled             raised inside a running job that checks its cancel flag

Driver exceptions are translated at the store boundary (``raise StoreError(...) from exc``);
HTTP codes are mapped from this tree in one place, the server's error handler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from assay.tracking.queueing import FailedOperation

__all__ = [
    "AssayError",
    "AuthenticationError",
    "ConfigError",
    "ConflictError",
    "FlushError",
    "InvalidFilterError",
    "InvalidParamsError",
    "InvalidRequestError",
    "JobCancelled",
    "JudgeConfigError",
    "JudgeError",
    "JudgeOutputError",
    "JudgeUnavailableError",
    "MigrationError",
    "NotFoundError",
    "PermissionDeniedError",
    "RequestTooLargeError",
    "ScorerTimeoutError",
    "StoreError",
    "UnknownJobError",
    "UnsupportedMediaTypeError",
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


class InvalidFilterError(InvalidRequestError):
    """A filter string or order_by that does not parse or names an unknown field.

    ``position`` is the 0-based character offset of the offending token (None when the error
    is not about one place), ``token`` its text."""

    code = "invalid_filter"

    def __init__(self, message: str, *, position: int | None = None, token: str | None = None):
        super().__init__(message)
        self.position = position
        self.token = token


class UnsupportedMediaTypeError(InvalidRequestError):
    code = "unsupported_media_type"


class RequestTooLargeError(InvalidRequestError):
    code = "request_too_large"


class AuthenticationError(AssayError):
    code = "unauthenticated"


class PermissionDeniedError(AssayError):
    code = "permission_denied"


class NotFoundError(AssayError):
    code = "not_found"


class ConflictError(AssayError):
    code = "conflict"


class WaitTimeoutError(AssayError):
    code = "wait_timeout"


class FlushError(AssayError):
    """Raised by a queueing client's flush: every operation that failed, in ``failures``
    (:class:`assay.tracking.queueing.FailedOperation`); the others were still sent."""

    code = "flush_failed"

    def __init__(self, message: str, failures: Sequence[FailedOperation] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)


class JudgeError(AssayError):
    """An LLM judge call failed; the subclass says whether retrying can help."""

    code = "judge_error"


class JudgeUnavailableError(JudgeError):
    """Rate limited (429), a 5xx, a timeout or a connection error: worth retrying later.
    ``retry_after_s`` is the server's ``Retry-After`` when it sent one."""

    code = "judge_unavailable"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class JudgeConfigError(JudgeError):
    """The endpoint refuses the configuration (bad key, unknown model or path): retrying every
    trace would only repeat it, so the scorer is paused with this message as the reason."""

    code = "judge_config"


class JudgeOutputError(JudgeError):
    """The judge answered, but not with a value of the scorer's output type."""

    code = "judge_output"


class ScorerTimeoutError(AssayError):
    """A scorer call ran past its time limit: that assessment fails with this message.
    ``ran=False``: the call was not made, because an earlier call in the same chunk timed out;
    the engine retries it later (a few times, then it fails too)."""

    code = "scorer_timeout"

    def __init__(self, message: str, *, ran: bool = True) -> None:
        super().__init__(message)
        self.ran = ran


class StoreError(AssayError):
    code = "store_error"


class MigrationError(StoreError):
    code = "migration_error"


class JobCancelled(AssayError):
    """Raised by :meth:`JobContext.check_cancelled` when the job was cancelled or timed out."""

    code = "job_cancelled"
