"""The ``inline`` executor: the job runs in a thread of the worker process.

No isolation and no forced stop: cancellation and timeouts set the job's cancel flag, which the
job sees through ``current_job().check_cancelled()``. For trusted, fast jobs and tests.
"""

from __future__ import annotations

import json
import traceback

from assay.errors import JobCancelled
from assay.jobs.context import JobContext
from assay.jobs.executors.base import (
    Cancelled,
    Completed,
    Executor,
    Failed,
    Outcome,
    Retry,
    TimedOut,
)
from assay.jobs.registry import JobSpec

__all__ = ["InlineExecutor"]


class InlineExecutor(Executor):
    name = "inline"

    def run(self, spec: JobSpec, ctx: JobContext) -> Outcome:
        token = ctx.activate()
        try:
            result = spec.fn(**ctx.job.params)
        except JobCancelled as exc:
            reason = ctx.cancel_reason or str(exc)
            return TimedOut(reason) if ctx.timed_out else Cancelled(reason)
        except Exception as exc:
            text = traceback.format_exc()
            return Retry(text) if isinstance(exc, spec.retry_on) else Failed(text)
        finally:
            ctx.deactivate(token)
        try:
            return Completed(json.loads(json.dumps(result)))
        except (TypeError, ValueError) as exc:
            return Failed(f"the result of job {spec.name!r} is not JSON-serialisable: {exc}")
