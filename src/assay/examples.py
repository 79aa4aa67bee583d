"""Example jobs, used by the quickstart (`make run`) and the benchmarks.

Run a worker with them: ``assay worker --jobs-module assay.examples``.
"""

from __future__ import annotations

import time

from assay import current_job, job


@job(name="noop")
def noop() -> None:
    """Does nothing: measures the job system's own overhead."""


@job(name="add")
def add(a: float, b: float) -> float:
    return a + b


@job(name="count_to", timeout=600)
def count_to(n: int, delay_s: float = 0.1) -> int:
    """Counts slowly, reporting progress and honouring cancellation."""
    ctx = current_job()
    for i in range(1, n + 1):
        ctx.check_cancelled()
        time.sleep(delay_s)
        ctx.progress(i, n, f"counted to {i}")
    return n


@job(name="flaky", max_retries=3, retry_on=(ConnectionError,))
def flaky(fail_times: int = 1) -> str:
    """Fails with a transient error on the first ``fail_times`` attempts."""
    if current_job().attempt <= fail_times:
        raise ConnectionError(f"transient failure on attempt {current_job().attempt}")
    return "ok"
