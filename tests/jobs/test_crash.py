"""Workers that die: their jobs are rescued after the lease, retried, or failed when attempts
are spent, and their exclusive locks are freed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import jobmods_race  # noqa: F401  (registers t_sleep_first and t_die in this process too)
from assay import JobStatus
from assay.db.tables import job_locks
from support.jobs import FAST, WorkerProcesses
from support.timing import scaled, wait_until

pytestmark = pytest.mark.slow

RACE_MODULES = ("--jobs-module", "jobmods_race")
# Lease (2 s) + a rescue sweep (0.3 s) + a leader takeover (2 s) + claim and run, with room
# for a loaded 2-core machine.
RESCUE_BOUND_S = 20.0


def _lines(path: Path, kind: str) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.startswith(kind + " ")]


def _pid_of(worker_id: str | None) -> int:
    assert worker_id is not None
    return int(worker_id.rsplit(":", 2)[1])  # host:pid:suffix


def _wait_status(backend, job_id, statuses, procs: WorkerProcesses, timeout=RESCUE_BOUND_S):
    def reached():
        job = backend.get(job_id)
        return job if job.status in statuses else None

    try:
        return wait_until(reached, timeout=timeout, interval=0.05)
    except AssertionError:
        job = backend.get(job_id)
        raise AssertionError(
            f"job still {job.status} (attempt {job.attempt}, error {job.error!r}) "
            f"after {timeout}s\n{procs.logs()[-6000:]}"
        ) from None


def test_killed_worker_job_is_rescued_and_rerun(backend, store_uri, worker_processes, tmp_path):
    out = tmp_path / "runs.txt"
    first = worker_processes.start(store_uri, *RACE_MODULES)
    worker_processes.wait_ready(1)
    job = backend.submit("t_sleep_first", {"path": str(out), "first_s": 120, "then_s": 0.2})

    running = _wait_status(backend, job.id, {JobStatus.RUNNING}, worker_processes)
    assert _pid_of(running.worker_id) == first.pid
    wait_until(lambda: _lines(out, "start"), timeout=10)

    # A second worker, polling and competing for leadership while the first one holds the lease.
    second = worker_processes.start(store_uri, *RACE_MODULES)
    worker_processes.wait_ready(2)
    # The one fixed sleep: it checks that nothing happens while the lease is live, for longer
    # than a lease (renewals must keep it), and long enough for several rescue sweeps.
    time.sleep(FAST["lease_ttl_s"] * 1.5)
    still = backend.get(job.id)
    assert still.status == JobStatus.RUNNING, still
    assert (still.attempt, _pid_of(still.worker_id)) == (1, first.pid), still
    assert len(_lines(out, "start")) == 1, out.read_text()

    kill_time = time.time()
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)

    done = _wait_status(backend, job.id, {JobStatus.SUCCEEDED}, worker_processes)
    assert done.status == JobStatus.SUCCEEDED
    assert done.attempt == 2
    assert done.result == 2
    assert _pid_of(done.worker_id) == second.pid

    starts = _lines(out, "start")
    ends = _lines(out, "end")
    assert [(s[1], s[2], s[3]) for s in starts] == [
        (job.id, "1", str(first.pid)),
        (job.id, "2", str(second.pid)),
    ], starts
    assert float(starts[1][4]) > kill_time, "re-run started before the first worker died"
    # The first execution never finished; only the re-run did.
    assert [(e[1], e[2], e[3]) for e in ends] == [(job.id, "2", str(second.pid))], ends
    assert second.poll() is None, "the second worker died"


@pytest.mark.parametrize(
    ("name", "params", "min_attempts", "expected_attempts"),
    [
        ("t_noop", {}, 3, 3),  # max_retries 0: rescue_min_attempts decides
        ("t_noop", {}, 1, 1),  # no second chance at all
        ("t_flaky", {"fail_times": 0}, 2, 4),  # max_retries 3 + 1 beats min_attempts 2
    ],
)
def test_job_whose_worker_always_dies_fails_when_attempts_are_spent(
    backend, name, params, min_attempts, expected_attempts
):
    store = backend.store
    job = backend.submit(name, params)
    assert job.max_retries + 1 <= expected_attempts
    for attempt in range(1, expected_attempts + 1):
        dead = f"dead-worker-{attempt}"
        claimed = wait_until(
            lambda dead=dead: store.jobs_claim(dead, limit=5, names=[name], lease_ttl_s=0.2),
            timeout=10,
        )
        assert [(j.id, j.attempt, j.worker_id) for j in claimed] == [(job.id, attempt, dead)]

        # The "worker" never renews nor finishes: once the lease is over, a sweep takes it.
        def swept():
            r = store.jobs_rescue_expired(min_attempts=min_attempts)
            return r if (r.requeued or r.failed) else None

        result = wait_until(swept, timeout=10)
        after = backend.get(job.id)
        assert after.attempt == attempt
        assert after.worker_id is None
        assert "lost" in (after.error or ""), after.error
        assert dead in after.error
        if attempt < expected_attempts:
            assert (result.requeued, result.failed) == ([job.id], []), result
            assert after.status == JobStatus.PENDING, after
            assert "re-queued" in after.error
            assert after.finished_at is None
        else:
            assert (result.requeued, result.failed) == ([], [job.id]), result
            assert after.status == JobStatus.FAILED, after
            assert "no attempts left" in after.error
            assert after.finished_at is not None

    # Finished for good: nothing is claimable, and later sweeps do not touch it.
    assert store.jobs_claim("late-worker", limit=5, names=[name], lease_ttl_s=5) == []
    store.jobs_rescue_expired(min_attempts=min_attempts)
    final = backend.get(job.id)
    assert (final.status, final.attempt) == (JobStatus.FAILED, expected_attempts)


def test_real_workers_dying_every_time(backend, store_uri, worker_processes, tmp_path):
    """Each worker that claims ``t_die`` is SIGKILLed by it; the next one rescues the job. With
    rescue_min_attempts=2 the job ends FAILED after two lost attempts."""
    out = tmp_path / "runs.txt"
    job = backend.submit("t_die", {"path": str(out)})
    deadline = time.monotonic() + scaled(90)
    while not backend.get(job.id).status.is_terminal:
        assert time.monotonic() < deadline, f"{backend.get(job.id)}\n{worker_processes.logs()}"
        if all(p.poll() is not None for p in worker_processes.procs):
            assert len(worker_processes.procs) < 5, "too many workers died"
            worker_processes.start(store_uri, *RACE_MODULES, rescue_min_attempts=2)
        time.sleep(0.1)

    final = backend.get(job.id)
    assert final.status == JobStatus.FAILED, final
    assert final.attempt == 2
    assert "lost" in (final.error or ""), final.error
    assert "no attempts left" in final.error
    starts = _lines(out, "start")
    assert [(s[1], s[2]) for s in starts] == [(job.id, "1"), (job.id, "2")], starts
    died = [p for p in worker_processes.procs if p.poll() is not None]
    assert [p.returncode for p in died] == [-signal.SIGKILL] * 2
    assert {int(s[3]) for s in starts} == {p.pid for p in died}


def test_lock_of_dead_worker_is_freed_when_its_lease_expires(
    backend, store_uri, worker_processes, tmp_path
):
    out = tmp_path / "runs.txt"
    # rescue_min_attempts=1: the killed job is failed, not re-run, so the queued duplicate is
    # the only job that can take the lock next.
    first = worker_processes.start(store_uri, rescue_min_attempts=1)
    worker_processes.wait_ready(1)
    holder = backend.submit("t_exclusive_queue", {"key": "k", "seconds": 120, "path": str(out)})
    _wait_status(backend, holder.id, {JobStatus.RUNNING}, worker_processes)
    wait_until(lambda: _lines(out, "start"), timeout=10)
    queued = backend.submit("t_exclusive_queue", {"key": "k", "seconds": 0.1, "path": str(out)})
    assert queued.lock_key == holder.lock_key
    assert queued.status == JobStatus.PENDING

    second = worker_processes.start(store_uri, rescue_min_attempts=1)
    worker_processes.wait_ready(2)
    time.sleep(FAST["lease_ttl_s"] * 1.5)  # the lock is live: the duplicate must wait
    assert backend.get(queued.id).status == JobStatus.PENDING
    assert [s[1] for s in _lines(out, "start")] == [holder.id]

    kill_time = time.time()
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)

    done = _wait_status(backend, queued.id, {JobStatus.SUCCEEDED}, worker_processes)
    assert done.attempt == 1
    assert _pid_of(done.worker_id) == second.pid
    lost = _wait_status(backend, holder.id, {JobStatus.FAILED}, worker_processes)
    assert "lost" in lost.error, lost.error
    starts = _lines(out, "start")
    assert [s[1] for s in starts] == [holder.id, queued.id], starts
    assert float(starts[1][2]) > kill_time


def test_rescued_skip_job_keeps_its_key(backend):
    """A skip-policy exclusive job whose worker died is re-run (at-least-once), not lost: while
    it waits for its re-run it still holds its key, so a duplicate submitted meanwhile is the
    one skipped, and the rescued job is not cancelled in its place."""
    store = backend.store
    args = {"key": "k", "seconds": 0, "path": os.devnull}
    first = backend.submit("t_exclusive", args)
    claimed = store.jobs_claim("dead-worker", limit=5, names=["t_exclusive"], lease_ttl_s=0.2)
    assert [j.id for j in claimed] == [first.id]

    def swept():
        return store.jobs_rescue_expired(min_attempts=3).requeued

    assert wait_until(swept, timeout=10) == [first.id]
    assert backend.get(first.id).status == JobStatus.PENDING

    duplicate = backend.submit("t_exclusive", {**args, "seconds": 0.01})
    again = wait_until(
        lambda: store.jobs_claim("live-worker", limit=5, names=["t_exclusive"], lease_ttl_s=30),
        timeout=10,
    )
    rescued = backend.get(first.id)
    assert [j.id for j in again] == [first.id], (rescued.status, rescued.error)
    assert (rescued.status, rescued.attempt) == (JobStatus.RUNNING, 2)
    final_duplicate = backend.get(duplicate.id)
    assert final_duplicate.status == JobStatus.CANCELED, final_duplicate
    assert "skipped" in (final_duplicate.error or "")


def test_duplicate_of_a_lost_job_does_not_take_its_key_before_the_rescue(backend):
    """A skip-policy job whose worker died keeps its key even after its lock has expired, as
    long as the rescuer has not re-queued it yet: a duplicate submitted in that window is the
    one skipped, so the rescued job runs again instead of being cancelled at its next claim."""
    store = backend.store
    args = {"key": "k", "seconds": 0, "path": os.devnull}
    first = backend.submit("t_exclusive", args)
    claimed = store.jobs_claim("dead-worker", limit=5, names=["t_exclusive"], lease_ttl_s=0.01)
    assert [j.id for j in claimed] == [first.id]

    lock_expired = sa.select(sa.func.count()).where(
        job_locks.c.job_id == first.id, job_locks.c.expires_at_ms < store._now
    )

    def expired() -> bool:
        with store.engine.connect() as conn:
            return bool(conn.execute(lock_expired).scalar_one())

    wait_until(expired, timeout=10)
    duplicate = backend.submit("t_exclusive", {**args, "seconds": 0.01})
    assert duplicate.status == JobStatus.CANCELED, duplicate
    assert first.id in (duplicate.error or "")

    assert store.jobs_rescue_expired(min_attempts=3).requeued == [first.id]
    again = store.jobs_claim("live-worker", limit=5, names=["t_exclusive"], lease_ttl_s=30)
    assert [(j.id, j.attempt) for j in again] == [(first.id, 2)]
