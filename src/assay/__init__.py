"""assay: a durable job backend and online-scoring engine for LLM and ML platforms.

``import assay`` is cheap: each name below is imported from its module on first use (PEP 562),
so a script that only logs metrics or sends traces never loads the server, the store or
their dependencies (SQLAlchemy, Alembic, FastAPI). Submodules (``assay.db``, ``assay.errors``,
``assay.tracking``, ...) load the same way on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from assay import tracing
    from assay.client import Client
    from assay.config import Settings, load_settings
    from assay.connection import connect
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
    from assay.jobs.backend import Backend
    from assay.jobs.context import JobContext, current_job
    from assay.jobs.model import Job, JobPage, JobStatus, Progress
    from assay.jobs.periodic import periodic
    from assay.jobs.registry import job
    from assay.jobs.worker import Worker
    from assay.tracing import trace

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "AssayError": "assay.errors",
    "AuthenticationError": "assay.errors",
    "Backend": "assay.jobs.backend",
    "Client": "assay.client",
    "ConfigError": "assay.errors",
    "ConflictError": "assay.errors",
    "FlushError": "assay.errors",
    "InvalidFilterError": "assay.errors",
    "InvalidParamsError": "assay.errors",
    "InvalidRequestError": "assay.errors",
    "Job": "assay.jobs.model",
    "JobCancelled": "assay.errors",
    "JobContext": "assay.jobs.context",
    "JobPage": "assay.jobs.model",
    "JobStatus": "assay.jobs.model",
    "MigrationError": "assay.errors",
    "NotFoundError": "assay.errors",
    "PermissionDeniedError": "assay.errors",
    "Progress": "assay.jobs.model",
    "RequestTooLargeError": "assay.errors",
    "Settings": "assay.config",
    "StoreError": "assay.errors",
    "UnknownJobError": "assay.errors",
    "UnsupportedMediaTypeError": "assay.errors",
    "WaitTimeoutError": "assay.errors",
    "Worker": "assay.jobs.worker",
    "connect": "assay.connection",
    "current_job": "assay.jobs.context",
    "job": "assay.jobs.registry",
    "load_settings": "assay.config",
    "periodic": "assay.jobs.periodic",
    "trace": "assay.tracing",
}
"""Public name -> the module that defines it."""

_SUBMODULES = frozenset(
    {
        "cli",
        "client",
        "config",
        "db",
        "demo",
        "errors",
        "examples",
        "jobs",
        "scoring",
        "server",
        "tracing",
        "tracking",
    }
)

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


def __getattr__(name: str) -> Any:
    """Import a public name (or a submodule) on first use, then keep it as a global."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"assay.{name}")
    else:
        raise AttributeError(f"module 'assay' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
