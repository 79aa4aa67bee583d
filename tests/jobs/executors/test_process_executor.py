"""The ``process`` executor: warm pool, kills whole process groups, survives dying processes,
captures output, recycles processes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import assay
from assay import JobStatus
from assay.jobs.backend import Backend
from support.jobs import FAST, running_worker
from support.timing import scaled, wait_until

PROCESS = {**FAST, "default_executor": "process", "job_modules": ["jobmods", "jobmods_proc"]}


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    with assay.connect(f"sqlite:///{tmp_path / 'assay.db'}", **PROCESS) as b:
        yield b


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_runs_in_a_warm_pool_process_on_every_store(store_uri):
    with assay.connect(store_uri, **PROCESS) as backend, running_worker(backend, concurrency=2):
        first = backend.wait(backend.submit("p_pid").id, timeout=30)
        second = backend.wait(backend.submit("t_add", {"a": 2, "b": 3}).id, timeout=30)
    assert first.status == JobStatus.SUCCEEDED
    assert first.result not in (None, os.getpid())
    assert (second.status, second.result) == (JobStatus.SUCCEEDED, 5)


@pytest.mark.parametrize("end", ["cancel", "timeout"])
def test_cancel_and_timeout_kill_the_whole_process_group(sqlite_backend, tmp_path, end):
    pids_file = tmp_path / "pids"
    with running_worker(sqlite_backend, concurrency=1):
        timeout = scaled(1.0) if end == "timeout" else None
        job = sqlite_backend.submit("p_family", {"path": str(pids_file)}, timeout=timeout)
        wait_until(lambda: len(_pids(pids_file)) == 2, timeout=30)
        pool_pid, grandchild = _pids(pids_file)
        assert _alive(pool_pid)
        assert _alive(grandchild)
        if end == "cancel":
            started = time.monotonic()
            sqlite_backend.cancel(job.id)
            wait_until(lambda: not _alive(pool_pid) and not _alive(grandchild), timeout=5)
            assert time.monotonic() - started < scaled(3.0)  # the 2 s bound, with slack
        else:  # the limit was scaled by the load at submit, which may have dropped since
            wait_until(lambda: not (_alive(pool_pid) or _alive(grandchild)), timeout=10 + timeout)
        done = sqlite_backend.wait(job.id, timeout=scaled(10))
        assert done.status == (JobStatus.CANCELED if end == "cancel" else JobStatus.TIMEOUT)
        # The pool replaced the killed process: the next job runs.
        after = sqlite_backend.wait(sqlite_backend.submit("p_pid").id, timeout=30)
        assert after.status == JobStatus.SUCCEEDED
        assert after.result != pool_pid


@pytest.mark.parametrize(
    ("how", "expected"),
    [("exit", "exit status 3"), ("segv", "killed by SIGSEGV"), ("kill", "killed by SIGKILL")],
)
def test_a_dying_process_fails_the_job_with_a_clear_error(sqlite_backend, how, expected):
    with running_worker(sqlite_backend, concurrency=1):
        died = sqlite_backend.wait(sqlite_backend.submit("p_die", {"how": how}).id, timeout=30)
        after = sqlite_backend.wait(sqlite_backend.submit("p_pid").id, timeout=30)
    assert died.status == JobStatus.FAILED
    assert "p_die" in died.error
    assert expected in died.error
    assert after.status == JobStatus.SUCCEEDED


def test_output_is_captured_and_readable_while_running(sqlite_backend, tmp_path):
    gate = tmp_path / "gate"
    with running_worker(sqlite_backend, concurrency=1):
        job = sqlite_backend.submit("p_talk", {"gate": str(gate)})
        running = wait_until(
            lambda: (
                (j := sqlite_backend.get(job.id)).log_tail
                and "grandchild" in j.log_tail
                and j.progress
                and j
            ),
            timeout=30,
        )
        assert running.status == JobStatus.RUNNING
        assert "hello from the job" in running.log_tail
        assert "to stderr" in running.log_tail
        assert running.progress.message == "halfway"
        gate.touch()
        done = sqlite_backend.wait(job.id, timeout=30)
    assert done.status == JobStatus.SUCCEEDED
    assert done.result == "talked"
    assert done.log_tail.rstrip().endswith("bye")
    assert "assay-end-of-output" not in done.log_tail


def test_errors_retries_and_bad_results_are_classified_in_the_child(sqlite_backend):
    with running_worker(sqlite_backend, concurrency=2):
        flaky = sqlite_backend.wait(sqlite_backend.submit("p_flaky", {"fail_times": 1}).id, 30)
        wrong = sqlite_backend.wait(sqlite_backend.submit("p_die", {"how": "raise"}).id, 30)
        not_json = sqlite_backend.wait(sqlite_backend.submit("p_not_json").id, 30)
    assert (flaky.status, flaky.attempt, flaky.result) == (JobStatus.SUCCEEDED, 2, 2)
    assert wrong.status == JobStatus.FAILED
    assert "ValueError: raise" in wrong.error
    assert wrong.attempt == 1
    assert not_json.status == JobStatus.FAILED
    assert "not JSON-serialisable" in not_json.error


def test_processes_are_recycled_after_n_jobs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'assay.db'}"
    settings = {**PROCESS, "process_max_jobs": 2}
    with assay.connect(uri, **settings) as backend, running_worker(backend, concurrency=1):
        pids = [backend.wait(backend.submit("p_pid").id, timeout=30).result for _ in range(6)]
    assert pids[0] == pids[1]
    assert pids[2] == pids[3]
    assert pids[4] == pids[5]
    assert len({pids[0], pids[2], pids[4]}) == 3


def test_processes_are_recycled_above_the_memory_ceiling(tmp_path):
    uri = f"sqlite:///{tmp_path / 'assay.db'}"
    settings = {**PROCESS, "process_max_rss_mb": 200}
    with assay.connect(uri, **settings) as backend, running_worker(backend, concurrency=1):
        small = [backend.wait(backend.submit("p_grow", {"mb": 1}).id, 30).result for _ in "ab"]
        big = backend.wait(backend.submit("p_grow", {"mb": 300}).id, timeout=30)
        after = backend.wait(backend.submit("p_pid").id, timeout=30)
    assert small[0] == small[1]  # under the ceiling: reused
    assert big.status == JobStatus.SUCCEEDED
    assert big.result == small[0]
    assert after.result != big.result  # the process that grew past 200 MB was replaced


def test_pool_processes_die_with_a_killed_worker(store_uri, worker_processes, tmp_path):
    pids_file = tmp_path / "pids"
    with assay.connect(store_uri, **PROCESS) as backend:
        worker = worker_processes.start(
            store_uri, "--jobs-module", "jobmods_proc", default_executor="process"
        )
        worker_processes.wait_ready(1)
        backend.submit("p_family", {"path": str(pids_file)})
        wait_until(lambda: len(_pids(pids_file)) == 2, timeout=30)
        pool_pid, grandchild = _pids(pids_file)
        os.kill(worker.pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pool_pid) and not _alive(grandchild), timeout=10)
