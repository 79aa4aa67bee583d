"""A worker keeps the leases of the jobs it runs: it renews them every third of lease_ttl_s."""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa

import assay
from assay import JobStatus
from assay.db.tables import jobs
from assay.jobs.backend import Backend
from support.jobs import FAST, running_worker
from support.timing import scaled, wait_until


def _lease_left_ms(backend: Backend, job_id: str) -> int:
    """How long the job's lease has still to run, on the database clock."""
    store = backend.store
    with store.engine.connect() as conn:
        left = conn.execute(
            sa.select(jobs.c.lease_expires_at_ms - store._now).where(jobs.c.id == job_id)
        ).scalar_one()
    return int(left)


def test_a_running_jobs_lease_is_renewed_every_third_of_it(store_uri: str, tmp_path: Path) -> None:
    """Also when the cancel poll is slower than that: renewals used to wait for the next poll,
    so with a 0.5 s poll and a 2 s lease a job kept only half of its lease, and a worker that
    stalled for 1 s on a busy machine lost a job it was running (which then ran twice)."""
    ttl = scaled(1.5)
    settings = {**FAST, "lease_ttl_s": ttl, "cancel_poll_s": ttl * 0.9}
    with assay.connect(store_uri, **settings) as backend:
        job = backend.submit("t_sleep", {"seconds": 120})
        with running_worker(backend, concurrency=1):
            wait_until(lambda: backend.get(job.id).status == JobStatus.RUNNING)
            left = []
            watch_until = time.monotonic() + 1.2 * ttl
            while time.monotonic() < watch_until:  # samples: nothing to wait for
                left.append(_lease_left_ms(backend, job.id))
                time.sleep(0.02)
            backend.cancel(job.id)
        assert backend.get(job.id).attempt == 1
    # Renewed every ttl/3, a lease never gets below two thirds of it (less a round trip).
    assert min(left) > ttl * 1000 / 2, f"lease left (ms): min {min(left)}, ttl {ttl * 1000:.0f}"
