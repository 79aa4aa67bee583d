"""Periodic jobs for the scheduler's server tests (``job_modules=["jobmods", "jobmods_periodic"]``).

Only server subprocesses import this module: in the test process its schedules would fire from
any leader that uses the global registry.
"""

from __future__ import annotations

from assay import current_job, job, periodic


@periodic(every="1s")
@job(name="t_periodic_tick")
def t_periodic_tick() -> str:
    return current_job().job_id


@periodic(every="1s", params={"seconds": 2.5}, name="t_periodic_slow_every_1s")
@job(name="t_periodic_slow")
def t_periodic_slow(seconds: float) -> float:
    """Runs longer than its period: the slots in between coalesce."""
    current_job().wait_cancelled(seconds)
    return seconds
