"""Concurrent claimers in real processes never take a job twice and never lose one."""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from assay import JobStatus
from assay.db.tables import job_locks, jobs
from jobmods_race import claim_until_empty
from support.timing import wait_until

pytestmark = pytest.mark.slow

N_JOBS = 1000
N_PROCS = 5


def _status_counts(engine: sa.Engine) -> Counter[str]:
    query = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
    with engine.connect() as conn:
        return Counter(dict(conn.execute(query).all()))


def _run_claimers(uri: str, names: list[str], limits: list[int]) -> dict[str, list[str]]:
    """Start one process per limit, release them together, collect what each claimed."""
    # A fork server that has imported assay once: a child starts in milliseconds, with none of
    # this process's threads or connections (a spawned one would import everything again).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["jobmods_race"])
    barrier = ctx.Barrier(len(limits))
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=claim_until_empty,
            args=(uri, f"claimer-{i}", names, limit, barrier, results),
            daemon=True,
        )
        for i, limit in enumerate(limits)
    ]
    for proc in procs:
        proc.start()
    claimed: dict[str, list[str]] = {}
    errors: list[str] = []
    try:
        # Drain the queue before joining: a child blocks on exit until its data is read.
        deadline = time.monotonic() + 180
        while len(claimed) + len(errors) < len(procs):
            try:
                worker_id, ids, error = results.get(timeout=1)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                assert not dead, f"claimer died: exit codes {[p.exitcode for p in dead]}"
                assert time.monotonic() < deadline, "claimers did not finish"
                continue
            claimed[worker_id] = ids
            if error:
                errors.append(f"{worker_id}: {error}")
        for proc in procs:
            proc.join(timeout=30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
    assert not errors, "\n".join(errors)
    return claimed


def test_store_claims_are_disjoint_and_complete(backend, store_uri):
    submitted = backend.submit_many("t_noop", [{} for _ in range(N_JOBS)])
    expected = {j.id for j in submitted}
    assert len(expected) == N_JOBS

    # Different batch sizes, so that claims of different shapes overlap.
    limits = [1, 3, 7, 10, 16, 25, 50, 100][:N_PROCS]
    claimed = _run_claimers(store_uri, ["t_noop"], limits)

    owner: dict[str, list[str]] = {}
    for worker_id, ids in claimed.items():
        for job_id in ids:
            owner.setdefault(job_id, []).append(worker_id)
    duplicates = {job_id: who for job_id, who in owner.items() if len(who) > 1}
    assert not duplicates, f"{len(duplicates)} jobs claimed twice, e.g. {list(duplicates)[:3]}"
    missing = expected - owner.keys()
    assert not missing, f"{len(missing)} jobs never claimed"
    assert owner.keys() == expected
    # The race is real: several processes got work.
    assert sum(1 for ids in claimed.values() if ids) >= 2, {k: len(v) for k, v in claimed.items()}

    stored = backend.store.jobs_get_many(sorted(expected))
    assert len(stored) == N_JOBS
    for job in stored:
        assert job.status == JobStatus.RUNNING, job
        assert job.attempt == 1, job
        assert job.worker_id == owner[job.id][0], job
        assert job.started_at is not None
    assert _status_counts(backend.engine) == Counter({"RUNNING": N_JOBS})


def test_store_claims_take_each_exclusive_lock_once(backend, store_uri):
    """Queue-policy jobs sharing keys: concurrent claimers start exactly one job per key."""
    n_keys, per_key = 20, 10
    params = [
        {"key": f"k{k}", "seconds": 0, "path": "-"} for _ in range(per_key) for k in range(n_keys)
    ]
    submitted = backend.submit_many("t_exclusive_queue", params)
    assert {j.status for j in submitted} == {JobStatus.PENDING}

    claimed = _run_claimers(store_uri, ["t_exclusive_queue"], [1, 3, 8, 21, 50])
    all_ids = [job_id for ids in claimed.values() for job_id in ids]
    assert len(all_ids) == len(set(all_ids)), "a job was claimed twice"

    by_id = {j.id: j for j in backend.store.jobs_get_many([j.id for j in submitted])}
    running = [by_id[i] for i in all_ids]
    keys = Counter(j.params["key"] for j in running)
    assert keys == Counter({f"k{k}": 1 for k in range(n_keys)}), keys
    assert all(j.status == JobStatus.RUNNING and j.attempt == 1 for j in running)
    counts = _status_counts(backend.engine)
    assert counts == Counter({"RUNNING": n_keys, "PENDING": n_keys * (per_key - 1)}), counts


def test_store_skip_duplicates_racing_in_claim(backend, store_uri):
    """Skip-policy duplicates that are all PENDING with no lock held (the submit normally
    prevents this state; the claim must hold the line anyway): concurrent claimers run one per
    key and cancel the rest with a reason."""
    n_keys, per_key = 20, 6
    params = [
        {"key": f"k{k}", "seconds": 0, "path": "-"} for _ in range(per_key) for k in range(n_keys)
    ]
    submitted = backend.submit_many("t_exclusive", params)
    ids = [j.id for j in submitted]
    # The submit skipped the in-batch duplicates (and may hold keys for the pending ones): put
    # every job back to PENDING with every key free, so that the claimers race for the locks.
    with backend.engine.begin() as conn:
        conn.execute(
            jobs.update()
            .where(jobs.c.id.in_(ids))
            .values(status="PENDING", error=None, finished_at_ms=None)
        )
        conn.execute(job_locks.delete())

    claimed = _run_claimers(store_uri, ["t_exclusive"], [1, 3, 8, 21, 50])
    all_ids = [job_id for got in claimed.values() for job_id in got]
    assert len(all_ids) == len(set(all_ids)), "a job was claimed twice"

    stored = backend.store.jobs_get_many(ids)
    by_key: dict[str, list] = {}
    for job in stored:
        by_key.setdefault(job.params["key"], []).append(job)
    for key, group in by_key.items():
        statuses = Counter(j.status for j in group)
        assert statuses == Counter({JobStatus.RUNNING: 1, JobStatus.CANCELED: per_key - 1}), (
            key,
            statuses,
        )
        for job in group:
            if job.status == JobStatus.CANCELED:
                assert "skipped" in (job.error or ""), job
                assert job.attempt == 0, job
    assert sorted(all_ids) == sorted(j.id for j in stored if j.status == JobStatus.RUNNING)


def test_workers_run_each_job_once(backend, store_uri, worker_processes, tmp_path):
    out = tmp_path / "record.txt"
    out.touch()
    # A long lease: this test is about claims, so an overloaded machine must not turn a slow
    # renewal into an (allowed, at-least-once) second run.
    for _ in range(N_PROCS):
        worker_processes.start(store_uri, "--concurrency", "4", lease_ttl_s=60)
    worker_processes.wait_ready(N_PROCS)

    started = time.monotonic()
    submitted = backend.submit_many("t_record", [{"path": str(out)} for _ in range(N_JOBS)])
    expected = {j.id for j in submitted}

    def all_done() -> bool:
        counts = _status_counts(backend.engine)
        assert not (counts.keys() - {"PENDING", "RUNNING", "SUCCEEDED"}), counts
        return counts["SUCCEEDED"] == N_JOBS

    try:
        wait_until(all_done, timeout=120, interval=0.2)
    except AssertionError:
        raise AssertionError(
            f"{_status_counts(backend.engine)}\n{worker_processes.logs()[-5000:]}"
        ) from None
    elapsed = time.monotonic() - started
    for proc in worker_processes.procs:
        assert proc.poll() is None, "a worker died"

    lines = Path(out).read_text().splitlines()
    runs = Counter(line.split()[0] for line in lines)
    twice = {job_id: n for job_id, n in runs.items() if n > 1}
    assert not twice, f"{len(twice)} jobs ran more than once, e.g. {list(twice.items())[:3]}"
    assert set(runs) == expected
    assert len(lines) == N_JOBS
    pids = Counter(line.split()[1] for line in lines)
    assert len(pids) >= 2, f"only {pids} ran jobs"
    assert pids.keys() <= {str(p.pid) for p in worker_processes.procs}
    print(f"{N_JOBS} jobs on {N_PROCS} workers in {elapsed:.1f}s; per pid: {sorted(pids.values())}")
