"""Jobs for the lifecycle tests (workers import it as ``--jobs-module jobmods_life``).

Names start with ``life_`` so that they never collide with the jobs of other test modules in the
process-wide registry.
"""

from __future__ import annotations

import os
import time

from assay import current_job, job
from jobmods import record


class LifeTransient(Exception):
    pass


@job(name="life_timed", timeout=42)
def life_timed() -> None:
    """Declares its own timeout (42 s) on @job."""


@job(name="life_attempt")
def life_attempt(path: str, first_s: float, then_s: float) -> int:
    """Sleeps cooperatively ``first_s`` on attempt 1 and ``then_s`` afterwards.

    Records ``start|end job_id attempt pid time`` lines.
    """
    ctx = current_job()
    record(path, f"start {ctx.job_id} {ctx.attempt} {os.getpid()} {time.time()}")
    ctx.wait_cancelled(first_s if ctx.attempt == 1 else then_s)
    record(path, f"end {ctx.job_id} {ctx.attempt} {os.getpid()} {time.time()}")
    ctx.check_cancelled()
    return ctx.attempt


@job(name="life_late")
def life_late(path: str, seconds: float) -> str:
    """Ignores its cancel flag; records ``returning job_id`` just before it returns."""
    ctx = current_job()
    record(path, f"start {ctx.job_id}")
    time.sleep(seconds)
    record(path, f"returning {ctx.job_id}")
    return "late"


@job(name="life_flaky", max_retries=3, retry_on=(LifeTransient,))
def life_flaky(path: str, fail_times: int) -> int:
    """Records ``attempt time`` per attempt; fails transiently ``fail_times`` times."""
    attempt = current_job().attempt
    record(path, f"{attempt} {time.time()}")
    if attempt <= fail_times:
        raise LifeTransient(f"attempt {attempt}")
    return attempt
