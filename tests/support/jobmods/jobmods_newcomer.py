"""Jobs for the newcomer tests (``--jobs-module jobmods_newcomer``)."""

from __future__ import annotations

from assay import current_job, job


@job(name="n_burst")
def n_burst(steps: int, total: bool = True) -> int:
    """Reports progress ``steps`` times as fast as it can, then returns: the last report lands
    between two of the worker's progress flushes (and, without a total, inside the process
    pool's throttle)."""
    ctx = current_job()
    for i in range(1, steps + 1):
        ctx.progress(i, steps if total else None, f"step {i}")
    return steps
