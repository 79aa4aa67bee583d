"""Durable jobs: the registry, the model, the store, the worker and the executors."""

from assay.jobs.backend import Backend, connect
from assay.jobs.context import JobContext, current_job
from assay.jobs.model import Job, JobPage, JobStatus, Progress
from assay.jobs.registry import REGISTRY, JobSpec, Registry, job
from assay.jobs.worker import Worker

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
