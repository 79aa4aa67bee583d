"""Exclusive jobs: one execution per lock key at a time, across worker processes; ``skip``
cancels duplicates with a reason, ``queue`` runs them one after the other."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from pathlib import Path

import pytest

from assay import JobStatus
from support.jobs import WorkerProcesses, running_worker
from support.timing import wait_until

pytestmark = pytest.mark.slow


def _intervals(path: Path) -> dict[str, tuple[float, float]]:
    """job id -> (start, end) from t_sleep's records; each job must start and end once."""
    starts: dict[str, list[float]] = {}
    ends: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        kind, job_id, t = line.split()
        (starts if kind == "start" else ends).setdefault(job_id, []).append(float(t))
    assert all(len(v) == 1 for v in starts.values()), starts
    assert all(len(v) == 1 for v in ends.values()), ends
    assert starts.keys() == ends.keys()
    return {job_id: (starts[job_id][0], ends[job_id][0]) for job_id in starts}


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _wait_terminal(backend, ids, timeout, procs: WorkerProcesses | None = None):
    def done():
        found = backend.store.jobs_get_many(ids)
        return found if all(j.status.is_terminal for j in found) else None

    try:
        return wait_until(done, timeout=timeout, interval=0.1)
    except AssertionError:
        states = Counter(j.status for j in backend.store.jobs_get_many(ids))
        logs = procs.logs()[-5000:] if procs else ""
        raise AssertionError(f"jobs not finished within {timeout}s: {states}\n{logs}") from None


def test_queue_policy_serialises_one_key_across_processes(
    backend, store_uri, worker_processes, tmp_path
):
    out = tmp_path / "runs.txt"
    for _ in range(2):
        worker_processes.start(store_uri, "--concurrency", "4")
    worker_processes.wait_ready(2)

    keys, per_key = ["a", "b", "c"], 6
    params = [
        {"key": key, "seconds": 0.2, "path": str(out)} for _ in range(per_key) for key in keys
    ]
    submitted = backend.submit_many("t_exclusive_queue", params)
    assert {j.status for j in submitted} == {JobStatus.PENDING}
    assert len({j.lock_key for j in submitted}) == len(keys)
    key_of = {j.id: j.params["key"] for j in submitted}

    finished = _wait_terminal(backend, [j.id for j in submitted], 60, worker_processes)
    assert Counter(j.status for j in finished) == Counter({JobStatus.SUCCEEDED: len(submitted)})
    assert all(j.attempt == 1 for j in finished)

    spans = _intervals(out)
    assert spans.keys() == key_of.keys()
    for key in keys:
        chain = sorted(span for job_id, span in spans.items() if key_of[job_id] == key)
        assert len(chain) == per_key
        for before, after in itertools.pairwise(chain):
            assert before[1] <= after[0], f"key {key}: {before} overlaps {after}"
    # Different keys do not wait for each other.
    across = [
        (a, b)
        for a in spans
        for b in spans
        if key_of[a] < key_of[b] and _overlap(spans[a], spans[b])
    ]
    assert across, "jobs with different keys never ran at the same time"
    # Run by the worker processes of this test, each job once.
    pids = {_pid(j.worker_id) for j in finished}
    assert pids <= {p.pid for p in worker_processes.procs}


def test_different_keys_run_concurrently(backend, store_uri, worker_processes, tmp_path):
    out = tmp_path / "runs.txt"
    for _ in range(2):
        worker_processes.start(store_uri, "--concurrency", "4")
    worker_processes.wait_ready(2)
    params = [{"key": f"k{i}", "seconds": 1.5, "path": str(out)} for i in range(4)]
    submitted = backend.submit_many("t_exclusive_queue", params)
    finished = _wait_terminal(backend, [j.id for j in submitted], 60, worker_processes)
    assert {j.status for j in finished} == {JobStatus.SUCCEEDED}
    spans = list(_intervals(out).values())
    assert len(spans) == 4
    # All four were running at one moment (8 free slots, 1.5 s each).
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans


def _pid(worker_id: str | None) -> int:
    assert worker_id is not None
    return int(worker_id.rsplit(":", 2)[1])


def test_skip_policy_cancels_duplicates_with_a_reason(backend, tmp_path):
    out = tmp_path / "runs.txt"
    args = {"key": "k", "seconds": 3, "path": str(out)}
    first = backend.submit("t_exclusive", args)
    assert first.status == JobStatus.PENDING

    # While the first is PENDING.
    dup_pending = backend.submit("t_exclusive", {**args, "seconds": 0.01})
    assert dup_pending.status == JobStatus.CANCELED
    assert dup_pending.lock_key == first.lock_key
    assert "skipped" in dup_pending.error, dup_pending.error
    assert "lock" in dup_pending.error
    assert first.id in dup_pending.error
    assert dup_pending.finished_at is not None
    assert dup_pending.attempt == 0

    # A different key is not a duplicate.
    other = backend.submit("t_exclusive", {**args, "key": "other", "seconds": 0.01})
    assert other.status == JobStatus.PENDING

    with running_worker(backend, concurrency=4):
        running = wait_until(
            lambda: (j := backend.get(first.id)).status != JobStatus.PENDING and j, timeout=10
        )
        assert running.status == JobStatus.RUNNING, running
        # While the first is RUNNING.
        dup_running = backend.submit("t_exclusive", {**args, "seconds": 0.01})
        assert dup_running.status == JobStatus.CANCELED
        assert "skipped" in dup_running.error, dup_running.error
        assert first.id in dup_running.error

        assert backend.wait(first.id, timeout=20).status == JobStatus.SUCCEEDED
        assert backend.wait(other.id, timeout=20).status == JobStatus.SUCCEEDED

        # The lock is free again: the same key runs.
        again = backend.submit("t_exclusive", {**args, "seconds": 0.01})
        assert again.status == JobStatus.PENDING
        assert backend.wait(again.id, timeout=20).status == JobStatus.SUCCEEDED

    for dup in (dup_pending, dup_running):
        final = backend.get(dup.id)
        assert final.status == JobStatus.CANCELED, final
        assert final.attempt == 0, final
    ran = sorted(_intervals(out))
    assert ran == sorted([first.id, other.id, again.id])


def test_skip_duplicates_in_one_submit(backend, tmp_path):
    out = tmp_path / "runs.txt"
    args = {"key": "k", "seconds": 0.01, "path": str(out)}
    jobs = backend.submit_many("t_exclusive", [args, args, {**args, "key": "z"}])
    assert [j.status for j in jobs] == [JobStatus.PENDING, JobStatus.CANCELED, JobStatus.PENDING]
    assert jobs[0].id in jobs[1].error
    with running_worker(backend, concurrency=4):
        for job in (jobs[0], jobs[2]):
            assert backend.wait(job.id, timeout=20).status == JobStatus.SUCCEEDED
    assert backend.get(jobs[1].id).status == JobStatus.CANCELED
    assert sorted(_intervals(out)) == sorted([jobs[0].id, jobs[2].id])


def test_skip_submits_racing_from_threads(backend, tmp_path):
    """Submits of one key racing from several threads: exactly one runs, the others end
    CANCELED with a reason (at submit, or at claim when both landed PENDING)."""
    out = tmp_path / "runs.txt"
    rounds, threads = 8, 4
    ids_by_key: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    for r in range(rounds):
        key = f"race-{r}"
        barrier = threading.Barrier(threads)
        ids: list[str] = []

        def submit(key: str = key, barrier: threading.Barrier = barrier, ids=ids) -> None:
            try:
                barrier.wait(timeout=30)
                job = backend.submit("t_exclusive", {"key": key, "seconds": 0.05, "path": str(out)})
                ids.append(job.id)
            except BaseException as exc:
                errors.append(exc)

        pool = [threading.Thread(target=submit) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=60)
        assert not errors, errors
        assert len(ids) == threads
        ids_by_key[key] = ids

    all_ids = [i for ids in ids_by_key.values() for i in ids]
    # Two workers, so that duplicates which both landed PENDING can also meet in two claims.
    with running_worker(backend, concurrency=4), running_worker(backend, concurrency=4):
        finished = _wait_terminal(backend, all_ids, 60)
    by_id = {j.id: j for j in finished}

    ran = _intervals(out)
    for key, ids in ids_by_key.items():
        group = [by_id[i] for i in ids]
        statuses = Counter(j.status for j in group)
        assert statuses == Counter({JobStatus.SUCCEEDED: 1, JobStatus.CANCELED: threads - 1}), (
            key,
            statuses,
            [j.error for j in group],
        )
        for job in group:
            if job.status == JobStatus.CANCELED:
                assert "skipped" in (job.error or ""), job.error
                assert job.attempt == 0
        assert sum(1 for i in ids if i in ran) == 1, key
    assert len(ran) == rounds
