"""Attempt history: every end of an execution leaves one record (finish, retry, cancel, rescue,
hand-back), written in the transaction that ends it, on each database."""

from __future__ import annotations

import sqlalchemy as sa

from assay import JobStatus
from assay.db.tables import jobs
from assay.jobs.backend import Backend
from support.jobs import running_worker


def _ended(backend: Backend, job_id: str) -> list[tuple[int, str]]:
    return [(a.attempt, a.status) for a in backend.attempts(job_id)]


def test_retries_and_the_final_success_each_leave_a_record(backend: Backend) -> None:
    with running_worker(backend):
        job = backend.submit("t_flaky", {"fail_times": 2})
        done = backend.wait(job.id, timeout=30)
    assert done.status == JobStatus.SUCCEEDED
    attempts = backend.attempts(job.id)
    assert [(a.attempt, a.status) for a in attempts] == [(1, "RETRIED"), (2, "RETRIED"),
                                                         (3, "SUCCEEDED")]  # fmt: skip
    assert attempts[0].error is not None
    assert "attempt 1" in attempts[0].error
    assert attempts[2].error is None
    assert all(a.worker_id and a.started_at and a.started_at <= a.finished_at for a in attempts)


def test_cancel_rescue_and_hand_back_each_leave_a_record(backend: Backend) -> None:
    store = backend.store
    cancelled, lost, handed = (backend.submit("t_noop").id for _ in range(3))
    claimed = store.jobs_claim("w1", limit=10, names=["t_noop"], lease_ttl_s=60)
    assert {j.id for j in claimed} == {cancelled, lost, handed}

    store.job_cancel(cancelled, "stop it")
    # The canceled execution's worker finishing later changes nothing (its finish is refused).
    from assay.jobs.store import Finish

    assert store.jobs_finish([Finish(cancelled, "w1", 1, JobStatus.SUCCEEDED)]) == [False]
    assert _ended(backend, cancelled) == [(1, "CANCELED")]

    with backend.engine.begin() as conn:  # w1 died: its lease ran out
        conn.execute(jobs.update().where(jobs.c.id == lost).values(lease_expires_at_ms=0))
    rescued = store.jobs_rescue_expired(min_attempts=3)
    assert rescued.requeued == [lost]
    (record,) = backend.attempts(lost)
    assert (record.status, record.worker_id) == ("LOST", "w1")
    assert record.error is not None
    assert "lease expired" in record.error

    assert store.jobs_hand_back("w1", [(handed, 1)]) == [handed]
    assert _ended(backend, handed) == [(1, "HANDED_BACK")]

    # The next execution of the re-queued job adds its own record.
    again = store.jobs_claim("w2", limit=10, names=["t_noop"], lease_ttl_s=60)
    assert {j.id for j in again} == {lost, handed}
    assert store.jobs_finish([Finish(lost, "w2", 2, JobStatus.SUCCEEDED)]) == [True]
    assert _ended(backend, lost) == [(1, "LOST"), (2, "SUCCEEDED")]


def test_prune_removes_the_records_with_their_jobs(backend: Backend) -> None:
    with running_worker(backend):
        job = backend.submit("t_flaky", {"fail_times": 1})
        backend.wait(job.id, timeout=30)
    assert len(backend.attempts(job.id)) == 2
    with backend.engine.begin() as conn:  # finished long ago
        conn.execute(
            jobs.update().where(jobs.c.id == job.id).values(created_at_ms=1, finished_at_ms=1)
        )
    assert backend.store.jobs_prune(3600) == 1
    with backend.engine.connect() as conn:
        left = conn.execute(sa.text("SELECT COUNT(*) FROM job_attempts")).scalar_one()
    assert left == 0


def test_history_over_rest_client_and_ui(servers, tmp_path) -> None:
    import httpx

    import assay

    server = servers.start(f"sqlite:///{tmp_path / 'attempts.db'}")
    with assay.Client(server.url) as client:
        job = client.submit("t_flaky", {"fail_times": 1})
        client.wait(job.id, timeout=30)
        assert [(a.attempt, a.status) for a in client.attempts(job.id)] == [
            (1, "RETRIED"),
            (2, "SUCCEEDED"),
        ]
    page = httpx.get(f"{server.url}/ui/jobs/{job.id}").text
    assert 'data-attempt="1"' in page
    assert "RETRIED" in page
    missing = httpx.get(f"{server.url}/api/v1/jobs/nope/attempts")
    assert missing.status_code == 404
