"""Jobs for the multi-replica tests (servers import it as ``jobmods_replicas``).

Every job appends lines to a file given as ``path`` (with :func:`jobmods.record`), naming the
process that ran it, so a test can tell which replica ran which attempt and whether the code
is still running.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from assay import current_job, job
from jobmods import record


@job(name="rep_run")
def rep_run(path: str, first_s: float, then_s: float = 0.0) -> int:
    """Runs ``first_s`` on attempt 1 and ``then_s`` afterwards, stopping early when cancelled.

    Records ``start|end job_id attempt pid time``.
    """
    ctx = current_job()
    record(path, f"start {ctx.job_id} {ctx.attempt} {os.getpid()} {time.time()}")
    ctx.wait_cancelled(first_s if ctx.attempt == 1 else then_s)
    record(path, f"end {ctx.job_id} {ctx.attempt} {os.getpid()} {time.time()}")
    ctx.check_cancelled()
    return ctx.attempt


@job(name="rep_gate")
def rep_gate(path: str, gate: str) -> str:
    """Records ``start``, then runs until the file ``gate`` exists (ignoring cancellation)."""
    ctx = current_job()
    record(path, f"start {ctx.job_id} {ctx.attempt} {os.getpid()} {time.time()}")
    while not Path(gate).exists():
        time.sleep(0.02)
    record(path, f"end {ctx.job_id} {ctx.attempt} {os.getpid()} {time.time()}")
    return "opened"


@job(name="rep_beat")
def rep_beat(path: str, seconds: float, cooperative: bool) -> None:
    """Appends ``beat pid time`` every 50 ms for ``seconds``. A cooperative one stops when
    cancelled; the other ignores its cancel flag, so only killing its process stops it."""
    ctx = current_job()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        record(path, f"beat {os.getpid()} {time.time()}")
        if cooperative:
            if ctx.wait_cancelled(0.05):
                return
        else:
            time.sleep(0.05)
