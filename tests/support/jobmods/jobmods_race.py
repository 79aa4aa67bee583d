"""Jobs and process entry points for the race and crash tests.

Workers import it as ``--jobs-module jobmods_race`` (tests/support/jobmods/ is on their
PYTHONPATH). The functions below are also the targets of ``multiprocessing`` children (of a
fork server), which must be able to import them by module name.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from assay import current_job, job
from jobmods import record


@job(name="t_sleep_first")
def t_sleep_first(path: str, first_s: float, then_s: float) -> int:
    """Sleeps ``first_s`` on attempt 1 (long enough to be killed), ``then_s`` after that.

    Records ``start|end job_id attempt pid time`` lines.
    """
    ctx = current_job()
    record(path, f"start {ctx.job_id} {ctx.attempt} {os.getpid()} {time.time()}")
    ctx.wait_cancelled(first_s if ctx.attempt == 1 else then_s)
    ctx.check_cancelled()
    record(path, f"end {ctx.job_id} {ctx.attempt} {os.getpid()} {time.time()}")
    return ctx.attempt


@job(name="t_die")
def t_die(path: str) -> None:
    """Kills its own worker process (SIGKILL), as a crash would: no hand-back, no finish."""
    ctx = current_job()
    record(path, f"start {ctx.job_id} {ctx.attempt} {os.getpid()} {time.time()}")
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


# -- multiprocessing children ------------------------------------------------------------------


def claim_until_empty(
    uri: str,
    worker_id: str,
    names: list[str],
    limit: int,
    barrier: Any,
    results: Any,
    deadline_s: float = 120.0,
) -> None:
    """Claim jobs of ``names`` in a loop until none is claimable any more; report the ids.

    An empty claim alone does not end the loop: under ``SKIP LOCKED`` a claimer sees nothing
    while the remaining rows are locked by other claimers' open transactions. The loop ends once
    a claim is empty and no job of ``names`` is PENDING and claimable (or after ``deadline_s``,
    so that a job stuck PENDING shows up as missing instead of hanging the test).
    """
    import sqlalchemy as sa

    import assay.db
    from assay.db.tables import job_locks, jobs
    from assay.jobs.store import JobStore

    claimed: list[str] = []
    error: str | None = None
    engine = assay.db.create_engine(uri)
    try:
        store = JobStore(engine)
        store.now_ms()  # connect before the barrier, so that the claims start together
        barrier.wait(timeout=120)
        end = time.monotonic() + deadline_s
        held = sa.select(job_locks.c.lock_key).where(job_locks.c.lock_key == jobs.c.lock_key)
        # As the claim query: skip-policy jobs are always taken (to run or to be cancelled),
        # queue-policy ones only while their key is free.
        claimable = sa.select(sa.func.count()).where(
            jobs.c.name.in_(names),
            jobs.c.status == "PENDING",
            sa.or_(jobs.c.lock_key.is_(None), jobs.c.on_conflict == "skip", ~held.exists()),
        )
        while time.monotonic() < end:
            got = store.jobs_claim(worker_id, limit=limit, names=names, lease_ttl_s=30)
            if got:
                claimed += [j.id for j in got]
                # A worker runs what it claimed before it claims again. Without this pause, on
                # SQLite the process that holds the write lock takes it again at once, and the
                # others, polling on their busy timeout, may never get a claim in.
                time.sleep(0.005)
                continue
            with engine.connect() as conn:
                if conn.execute(claimable).scalar_one() == 0:
                    break
            time.sleep(0.005)
    except BaseException as exc:
        import traceback

        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    finally:
        engine.dispose()
        results.put((worker_id, claimed, error))
