"""Durable jobs: the registry, the model, the store, the worker and the executors.

Names are imported from their modules on first use, so ``from assay.jobs.registry import job``
(what a job module needs) does not load the store, the worker or SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from assay.connection import connect
    from assay.jobs.backend import Backend
    from assay.jobs.context import JobContext, current_job
    from assay.jobs.model import Job, JobPage, JobStatus, Progress
    from assay.jobs.registry import REGISTRY, JobSpec, Registry, job
    from assay.jobs.worker import Worker

_EXPORTS: dict[str, str] = {
    "REGISTRY": "assay.jobs.registry",
    "Backend": "assay.jobs.backend",
    "Job": "assay.jobs.model",
    "JobContext": "assay.jobs.context",
    "JobPage": "assay.jobs.model",
    "JobSpec": "assay.jobs.registry",
    "JobStatus": "assay.jobs.model",
    "Progress": "assay.jobs.model",
    "Registry": "assay.jobs.registry",
    "Worker": "assay.jobs.worker",
    "connect": "assay.connection",
    "current_job": "assay.jobs.context",
    "job": "assay.jobs.registry",
}

__all__ = [
    "REGISTRY",
    "Backend",
    "Job",
    "JobContext",
    "JobPage",
    "JobSpec",
    "JobStatus",
    "Progress",
    "Registry",
    "Worker",
    "connect",
    "current_job",
    "job",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first use (submodules import as usual)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'assay.jobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
