"""The life of a job on every database: cancel, timeout, retry, late results, progress,
per-name caps, graceful stop, pruning and search."""

from __future__ import annotations

import base64
import itertools
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import assay
import jobmods_life  # noqa: F401 - registers the life_* jobs in this process
from assay import InvalidRequestError, JobStatus, Progress
from assay.jobs.services import Leadership, Pruner
from assay.jobs.store import Finish
from support.jobs import FAST, running_worker
from support.timing import scaled, wait_until

LIFE_MODULE = ("--jobs-module", "jobmods_life")


def _lines(path: Path, kind: str, job_id: str | None = None) -> list[list[str]]:
    """The recorded lines of one kind (``start``, ``end``, ``returning``), split in words."""
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r[0] == kind and (job_id is None or r[1] == job_id)]


def _intervals(path: Path) -> dict[str, tuple[float, float]]:
    """job id -> (start, end) from a t_sleep record file."""
    starts = {r[1]: float(r[2]) for r in _lines(path, "start")}
    ends = {r[1]: float(r[2]) for r in _lines(path, "end")}
    assert starts.keys() == ends.keys(), (starts, ends)
    return {job_id: (starts[job_id], ends[job_id]) for job_id in starts}


def _finish_logged(caplog: pytest.LogCaptureFixture, job_id: str, status: str) -> bool:
    wanted = f"job.finished id={job_id} status={status} applied=False"
    return any(wanted in r.getMessage() for r in caplog.records)


# -- cancel --------------------------------------------------------------------------------------


def test_cancel_pending_job(backend):
    job = backend.submit("t_sleep", {"seconds": 30})
    assert job.status == JobStatus.PENDING
    canceled = backend.cancel(job.id)
    assert canceled.status == JobStatus.CANCELED
    assert canceled.finished_at is not None
    assert canceled.error
    assert backend.get(job.id).status == JobStatus.CANCELED
    # A worker never runs it (it runs another job meanwhile), and a second cancel is a no-op.
    with running_worker(backend):
        other = backend.submit("t_add", {"a": 1, "b": 1})
        assert backend.wait(other.id, timeout=20).status == JobStatus.SUCCEEDED
    after = backend.get(job.id)
    assert after.status == JobStatus.CANCELED
    assert after.attempt == 0
    assert after.started_at is None
    assert backend.cancel(job.id).status == JobStatus.CANCELED
    # Cancelling a finished job leaves it as it was.
    assert backend.cancel(other.id).status == JobStatus.SUCCEEDED
    with pytest.raises(assay.NotFoundError):
        backend.cancel("no-such-job")


@pytest.mark.slow
def test_cancel_running_job_from_another_process(backend, store_uri, worker_processes, tmp_path):
    path = tmp_path / "sleep.log"
    worker = worker_processes.start(store_uri)
    job = backend.submit("t_sleep", {"seconds": 30, "path": str(path)})
    wait_until(lambda: _lines(path, "start", job.id), timeout=60)
    running = backend.get(job.id)
    assert running.status == JobStatus.RUNNING
    assert running.worker_id is not None

    canceled_at = time.time()
    canceled = backend.cancel(job.id)
    assert canceled.status == JobStatus.CANCELED

    # The worker notices within its cancel poll and the cooperative job stops (bound: 2 s).
    end = wait_until(lambda: _lines(path, "end", job.id), timeout=15)
    stopped_after = float(end[0][2]) - canceled_at
    assert stopped_after < scaled(3.0), f"the job stopped {stopped_after:.2f}s after the cancel"
    # The worker's own (CANCELED) finish is refused: the row is the cancel's.
    refused = f"job.finished id={job.id} status=CANCELED applied=False"
    wait_until(
        lambda: (
            refused in worker_processes.logs() or backend.get(job.id).status != JobStatus.CANCELED
        ),
        timeout=15,
    )
    final = backend.get(job.id)
    assert final.status == JobStatus.CANCELED
    assert final.error == canceled.error
    assert final.result is None
    assert worker.poll() is None, worker_processes.logs()


# -- timeout -------------------------------------------------------------------------------------


def test_timeout_stops_a_cooperative_job(backend, tmp_path):
    path = tmp_path / "sleep.log"
    with running_worker(backend):
        job = backend.submit("t_sleep", {"seconds": 30, "path": str(path)}, timeout=0.5)
        done = backend.wait(job.id, timeout=30)
        wait_until(lambda: _lines(path, "end", job.id), timeout=15)
    assert done.status == JobStatus.TIMEOUT
    assert done.timeout == 0.5
    assert "timed out" in done.error
    assert "0.5s" in done.error
    assert done.result is None
    ran_for = (done.finished_at - done.started_at).total_seconds()
    assert 0.45 <= ran_for < 20, ran_for


def test_timeout_precedence(store_uri):
    with assay.connect(store_uri, **FAST, job_timeout_s=99) as backend:
        default = backend.submit("t_add", {"a": 1, "b": 2})
        declared = backend.submit("life_timed")
        per_job_over_declared = backend.submit("life_timed", timeout=5)
        per_job_over_default = backend.submit("t_add", {"a": 1, "b": 2}, timeout=7)
        expected = {
            default.id: 99,
            declared.id: 42,
            per_job_over_declared.id: 5,
            per_job_over_default.id: 7,
        }
        for job_id, timeout in expected.items():
            assert backend.get(job_id).timeout == timeout  # as stored
        for bad in (0, -1):
            with pytest.raises(InvalidRequestError, match="timeout"):
                backend.submit("t_add", {"a": 1, "b": 2}, timeout=bad)


# -- retries -------------------------------------------------------------------------------------


@pytest.mark.parametrize("child", [False, True], ids=["class", "subclass"])
def test_retry_transient_errors_then_succeed(backend, child):
    with running_worker(backend):
        job = backend.submit("t_flaky", {"fail_times": 2, "child": child})
        done = backend.wait(job.id, timeout=30)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.attempt == 3
    assert done.result == 3
    assert done.error is None
    # Two back-offs: base 0.05 s * 2**(attempt-1), each at least (1 - jitter 0.2) of that.
    minimal = sum(FAST["retry_backoff_base_s"] * 2**i * 0.8 for i in range(2))
    took = (done.finished_at - done.created_at).total_seconds()
    assert took >= minimal - 0.002, (took, minimal)


def test_retry_backoff_spacing(store_uri, tmp_path):
    path = tmp_path / "attempts.log"
    base = 0.15
    settings = {**FAST, "retry_backoff_base_s": base}
    with assay.connect(store_uri, **settings) as backend, running_worker(backend):
        job = backend.submit("life_flaky", {"path": str(path), "fail_times": 2})
        done = backend.wait(job.id, timeout=30)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.attempt == 3
    times = {int(a): float(t) for a, t in (line.split() for line in path.read_text().splitlines())}
    assert sorted(times) == [1, 2, 3]
    for attempt in (1, 2):
        gap = times[attempt + 1] - times[attempt]
        minimal = base * 2 ** (attempt - 1) * 0.8
        assert gap >= minimal - 0.01, f"retry {attempt} came after {gap:.3f}s < {minimal:.3f}s"


def test_non_transient_error_fails_at_once(backend):
    with running_worker(backend):
        job = backend.submit("t_fail")
        done = backend.wait(job.id, timeout=30)
    assert done.status == JobStatus.FAILED
    assert done.attempt == 1
    assert "Traceback" in done.error
    assert "ValueError: permanent failure" in done.error
    assert done.result is None


def test_retries_exhausted(backend):
    with running_worker(backend):
        job = backend.submit("t_flaky", {"fail_times": 10})
        done = backend.wait(job.id, timeout=30)
    assert done.status == JobStatus.FAILED
    assert done.attempt == 4  # max_retries=3 -> 4 attempts
    assert "gave up" in done.error
    assert "Transient: attempt 4" in done.error


# -- late results --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_late_result_never_overwrites(backend, tmp_path, caplog, how):
    caplog.set_level(logging.INFO, logger="assay.worker")
    path = tmp_path / "late.log"
    expected = JobStatus.CANCELED if how == "cancel" else JobStatus.TIMEOUT
    with running_worker(backend):
        params = {"path": str(path), "seconds": 1.0}
        if how == "cancel":
            job = backend.submit("life_late", params)
            wait_until(lambda: _lines(path, "start", job.id), timeout=30)
            assert backend.cancel(job.id).status == JobStatus.CANCELED
        else:
            job = backend.submit("life_late", params, timeout=0.3)
            wait_until(lambda: backend.get(job.id).status == JobStatus.TIMEOUT, timeout=30)
        assert not _lines(path, "returning", job.id), "the job returned too early for this test"
        # The job's thread returns 'late'; the worker tries to record SUCCEEDED and is refused.
        wait_until(lambda: _lines(path, "returning", job.id), timeout=30)
        wait_until(
            lambda: (
                _finish_logged(caplog, job.id, "SUCCEEDED")
                or backend.get(job.id).status != expected
            ),
            timeout=30,
        )
        final = backend.get(job.id)
    assert final.status == expected
    assert final.result is None
    assert final.attempt == 1


def test_store_finish_is_guarded_on_status(backend):
    store = backend.store

    def claim(name: str) -> assay.Job:
        claimed = store.jobs_claim("w-test", limit=1, names=[name], lease_ttl_s=60)
        assert len(claimed) == 1
        return claimed[0]

    def finish(job: assay.Job, status: JobStatus, **kw: object) -> list[bool]:
        return store.jobs_finish([Finish(job.id, "w-test", job.attempt, status, **kw)])

    # A live execution may finish (control).
    backend.submit("t_add", {"a": 1, "b": 2})
    live = claim("t_add")
    assert live.status == JobStatus.RUNNING
    assert live.attempt == 1
    assert finish(live, JobStatus.SUCCEEDED, result=3) == [True]
    assert backend.get(live.id).result == 3

    # A canceled one never takes a late result.
    backend.submit("t_noop")
    canceled = claim("t_noop")
    backend.cancel(canceled.id)
    assert finish(canceled, JobStatus.SUCCEEDED, result="late") == [False]
    after = backend.get(canceled.id)
    assert after.status == JobStatus.CANCELED
    assert after.result is None

    # Nor does a timed-out one; and a stale execution (wrong attempt or worker) is refused too.
    backend.submit("t_sleep", {"seconds": 1})
    timed = claim("t_sleep")
    stale = Finish(timed.id, "w-test", timed.attempt + 1, JobStatus.SUCCEEDED, result=1)
    other = Finish(timed.id, "w-other", timed.attempt, JobStatus.SUCCEEDED, result=1)
    assert store.jobs_finish([stale, other]) == [False, False]
    assert finish(timed, JobStatus.TIMEOUT, error="timed out") == [True]
    assert finish(timed, JobStatus.SUCCEEDED, result=1) == [False]
    after = backend.get(timed.id)
    assert after.status == JobStatus.TIMEOUT
    assert after.result is None


# -- progress ------------------------------------------------------------------------------------


def test_progress_is_visible_while_running(backend, tmp_path):
    gate = tmp_path / "gate"
    with running_worker(backend):
        job = backend.submit("t_progress", {"steps": 3, "gate": str(gate)})
        seen = wait_until(
            lambda: (j := backend.get(job.id)).progress == Progress(3, 3, "step 3") and j,
            timeout=30,
        )
        assert seen.status == JobStatus.RUNNING
        assert seen.to_dict()["progress"] == {"completed": 3, "total": 3, "message": "step 3"}
        gate.touch()
        done = backend.wait(job.id, timeout=30)
    assert done.status == JobStatus.SUCCEEDED
    assert done.result == 3


# -- per-name caps -------------------------------------------------------------------------------


def test_max_workers_caps_one_name(backend, tmp_path):
    capped_path = tmp_path / "capped.log"
    free_path = tmp_path / "free.log"
    with running_worker(backend, concurrency=4):
        capped = backend.submit_many(
            "t_capped", [{"seconds": 0.2, "path": str(capped_path)} for _ in range(4)]
        )
        free = backend.submit_many(
            "t_sleep", [{"seconds": 0.8, "path": str(free_path)} for _ in range(2)]
        )
        for job in capped + free:
            assert backend.wait(job.id, timeout=60).status == JobStatus.SUCCEEDED
    runs = sorted(_intervals(capped_path).values())
    assert len(runs) == 4
    for (_, prev_end), (next_start, _) in itertools.pairwise(runs):
        assert next_start >= prev_end, f"t_capped runs overlap: {runs}"
    # Control: the same worker does run uncapped jobs at the same time.
    (s1, e1), (s2, e2) = _intervals(free_path).values()
    assert max(s1, s2) < min(e1, e2), "uncapped jobs did not overlap"


# -- graceful stop -------------------------------------------------------------------------------


@pytest.mark.slow
def test_graceful_stop_hands_back_or_finishes(backend, store_uri, worker_processes, tmp_path):
    """SIGTERM: a job that ends within the grace period SUCCEEDS; jobs that do not are handed
    back to PENDING (no worker) and another worker runs them; the process exits 0."""
    path = tmp_path / "attempt.log"
    short_path = tmp_path / "short.log"
    proc = worker_processes.start(store_uri, *LIFE_MODULE, shutdown_grace_s=1.5)
    longs = backend.submit_many(
        "life_attempt", [{"path": str(path), "first_s": 60, "then_s": 0.1} for _ in range(3)]
    )
    for job in longs:
        wait_until(lambda job=job: _lines(path, "start", job.id), timeout=60)
    short = backend.submit("t_sleep", {"seconds": 0.3, "path": str(short_path)})
    wait_until(lambda: _lines(short_path, "start", short.id), timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, worker_processes.logs()

    finished = backend.get(short.id)
    assert finished.status == JobStatus.SUCCEEDED, finished.error
    assert finished.result == 0.3
    for job in longs:
        handed = backend.get(job.id)
        assert handed.status == JobStatus.PENDING, f"{handed.status}: {handed.error}"
        assert handed.worker_id is None
        assert handed.started_at is None
        assert handed.finished_at is None
        assert handed.result is None

    with running_worker(backend):
        done = [backend.wait(job.id, timeout=60) for job in longs]
    for job in done:
        assert job.status == JobStatus.SUCCEEDED, job.error
        assert job.attempt == 2
        assert job.result == 2
        pids = {int(r[2]): r[3] for r in _lines(path, "start", job.id)}
        assert pids == {1: str(proc.pid), 2: str(os.getpid())}


def test_stop_hands_back_every_unfinished_job(store_uri):
    """Past the grace period every unfinished job goes back to PENDING; none ends CANCELED by
    the worker's own shutdown (that would lose the job)."""
    settings = {**FAST, "shutdown_grace_s": 0.0}
    with assay.connect(store_uri, **settings) as backend:
        worker = backend.worker(concurrency=20)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            jobs = backend.submit_many("t_sleep", [{"seconds": 60} for _ in range(20)])
            ids = [j.id for j in jobs]
            wait_until(
                lambda: all(
                    j.status == JobStatus.RUNNING for j in backend.store.jobs_get_many(ids)
                ),
                timeout=30,
            )
        finally:
            worker.stop()
            thread.join(timeout=30)
        assert not thread.is_alive()
        after = backend.store.jobs_get_many(ids)
    wrong = [(j.status.value, j.error) for j in after if j.status != JobStatus.PENDING]
    assert wrong == [], f"{len(wrong)} of 20 jobs not handed back: {wrong[:3]}"
    assert all(j.worker_id is None for j in after)


# -- wake-ups ------------------------------------------------------------------------------------


@pytest.mark.parametrize("store_uri", ["sqlite", "postgresql"], indirect=True)
def test_submit_from_elsewhere_wakes_an_idle_worker(store_uri):
    """SQLite (data_version) and PostgreSQL (LISTEN/NOTIFY) wake workers before their poll; the
    submit comes from another backend, so no in-process wake-up helps."""
    slow_poll = {**FAST, "poll_interval_s": 30.0}
    with (
        assay.connect(store_uri, **slow_poll) as worker_side,
        assay.connect(store_uri, **FAST) as submitter,
        running_worker(worker_side),
    ):
        # The worker is up (a local submit wakes it at once); after this job it goes idle.
        first = worker_side.submit("t_add", {"a": 1, "b": 1})
        assert worker_side.wait(first.id, timeout=30).status == JobStatus.SUCCEEDED
        time.sleep(0.3)  # settle: the worker's claim after that job has passed; it now waits
        job = submitter.submit("t_add", {"a": 2, "b": 2})
        done = submitter.wait(job.id, timeout=10)
    assert done.status == JobStatus.SUCCEEDED
    assert done.result == 4


# -- pruning -------------------------------------------------------------------------------------


def _make_finished_and_live(backend) -> tuple[set[str], set[str]]:
    """Four finished jobs (three SUCCEEDED, one CANCELED) and two live ones (PENDING, RUNNING)."""
    with running_worker(backend):
        jobs = backend.submit_many("t_add", [{"a": i, "b": 1} for i in range(3)])
        for job in jobs:
            assert backend.wait(job.id, timeout=30).status == JobStatus.SUCCEEDED
    canceled = backend.cancel(backend.submit("t_noop").id)
    pending = backend.submit("t_noop")
    backend.submit("t_sleep", {"seconds": 1})
    running = backend.store.jobs_claim("w-prune", limit=1, names=["t_sleep"], lease_ttl_s=60)
    assert [j.status for j in running] == [JobStatus.RUNNING]
    return {j.id for j in jobs} | {canceled.id}, {pending.id, running[0].id}


def _existing(backend, ids: set[str]) -> set[str]:
    return {j.id for j in backend.store.jobs_get_many(sorted(ids))}


def test_prune_deletes_only_old_finished_jobs(backend):
    finished, live = _make_finished_and_live(backend)
    assert backend.prune(3600) == 0
    assert _existing(backend, finished | live) == finished | live
    deleted = [0]

    def pruned_all() -> bool:
        deleted[0] += backend.prune(0)
        return not _existing(backend, finished)

    wait_until(pruned_all, timeout=10)
    assert deleted[0] == len(finished)
    assert _existing(backend, live) == live
    statuses = {j.status for j in backend.store.jobs_get_many(sorted(live))}
    assert statuses == {JobStatus.PENDING, JobStatus.RUNNING}
    with pytest.raises(InvalidRequestError):
        backend.prune(-1)


def test_pruner_service_runs_on_the_leader(backend):
    finished, live = _make_finished_and_live(backend)
    store = backend.store
    Pruner(store, interval_s=1, retention_s=3600).tick()
    assert _existing(backend, finished) == finished
    leadership = Leadership(
        store, "pruner-test", ttl_s=2, services=[Pruner(store, interval_s=0.05, retention_s=0.01)]
    )
    leadership.start()
    try:
        wait_until(lambda: not _existing(backend, finished), timeout=20)
        assert leadership.is_leader
    finally:
        leadership.stop()
    assert _existing(backend, live) == live


# -- search --------------------------------------------------------------------------------------


def test_search_filters_and_pages(backend):
    adds = backend.submit_many("t_add", [{"a": i, "b": 0} for i in range(7)])
    noops = [backend.submit("t_noop") for _ in range(3)]
    canceled = {backend.cancel(adds[0].id).id, backend.cancel(adds[3].id).id}
    all_ids = {j.id for j in adds + noops}

    def ids(**kw: object) -> set[str]:
        return {j.id for j in backend.search(**kw).jobs}

    assert ids() == all_ids
    assert ids(name="t_noop") == {j.id for j in noops}
    assert ids(name=["t_noop", "t_add"]) == all_ids
    assert ids(name="t_none") == set()
    assert ids(status="CANCELED") == canceled
    assert ids(status="canceled") == canceled
    assert ids(status=JobStatus.CANCELED) == canceled
    assert ids(name="t_add", status="PENDING") == {j.id for j in adds} - canceled
    assert ids(status=["PENDING", "CANCELED"]) == all_ids
    assert ids(status="SUCCEEDED") == set()

    # Pagination: every job exactly once, newest first (several share a creation time).
    for limit in (1, 3, 10):
        seen: list[assay.Job] = []
        token = None
        for _ in range(20):
            page = backend.search(limit=limit, page_token=token)
            assert len(page.jobs) <= limit
            seen += page.jobs
            token = page.next_page_token
            if token is None:
                break
        assert token is None
        assert sorted(j.id for j in seen) == sorted(all_ids), f"limit={limit}"
        keys = [(j.created_at, j.id) for j in seen]
        assert keys == sorted(keys, reverse=True)
    filtered = backend.search(name="t_add", limit=2)
    rest = backend.search(name="t_add", limit=10, page_token=filtered.next_page_token)
    assert {j.id for j in filtered.jobs + rest.jobs} == {j.id for j in adds}
    assert len(filtered.jobs) + len(rest.jobs) == len(adds)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"status": "DONE"},
        {"status": ["PENDING", "nope"]},
        {"limit": 0},
        {"limit": 1001},
        {"page_token": "!!not a token!!"},
        {"page_token": base64.urlsafe_b64encode(b'{"a": 1}').decode()},
        {"page_token": base64.urlsafe_b64encode(b'["x", "y"]').decode()},
        {"page_token": base64.urlsafe_b64encode(b"[null, 1]").decode()},
    ],
    ids=lambda kw: next(iter(kw)),
)
def test_search_rejects_bad_input(backend, kwargs):
    with pytest.raises(InvalidRequestError):
        backend.search(**kwargs)


def test_errors_with_nul_bytes_and_lone_surrogates_are_stored(backend):
    """Such text once left a job RUNNING for good on PostgreSQL (its finish kept failing)."""
    with running_worker(backend):
        jobs = [backend.submit("t_nul"), backend.submit("t_nul", {"lone": True})]
        done = [backend.wait(j.id, timeout=30) for j in jobs]
        bad = backend.wait(backend.submit("t_bad_result").id, timeout=30)
    for job_ in done:
        assert job_.status == JobStatus.FAILED
        assert "bad \ufffd byte" in (job_.error or "")
    assert bad.status == JobStatus.FAILED
    assert "NaN" in (bad.error or "")
