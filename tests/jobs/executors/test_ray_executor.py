"""The ``ray`` executor against a real local Ray instance (started once for this module).

Needs the ``ray`` extra (``pip install 'assay[ray]'``; ``make test`` installs it, so CI runs
these). Without it the module is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import assay
from assay import ConfigError, JobStatus
from assay.jobs.backend import Backend
from assay.jobs.executors import available_executors, create_executor
from assay.jobs.model import Progress
from assay.jobs.tokens import JobTokens
from assay.server.tokens import TokenStore
from support.jobs import BENCH_DIR, FAST, JOBMODS_DIR, running_worker
from support.timing import scaled, wait_until

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'assay[ray]'")

from assay.jobs.executors.ray import RayExecutor, _run_on_ray  # noqa: E402
from jobmods_remote import RAY_JOBS  # noqa: E402

# The jobs of the Ray cluster benchmark (progress reports, a Ray worker that dies) are in bench/.
sys.path.append(str(BENCH_DIR))
from ray_cluster_jobs import RAY_CLUSTER_JOBS  # noqa: E402

# One xdist worker runs this whole module (its fixture is expensive and shared).
pytestmark = pytest.mark.xdist_group("ray")

RAY_OPTIONS: dict[str, Any] = {
    "address": "local",
    # The job modules live in tests/support/jobmods/ and bench/; Ray workers find them through
    # the task's runtime_env.
    "runtime_env": {
        "env_vars": {"PYTHONPATH": os.pathsep.join([str(JOBMODS_DIR), str(BENCH_DIR)])}
    },
    "init_options": {
        "num_cpus": 2,
        "object_store_memory": 100 * 1024 * 1024,
        "include_dashboard": False,
        "log_to_driver": False,
        # Ray lowers its task workers to nice 15: beside anything at nice 0 (the other test
        # processes, a loaded CI box) such a worker gets ~1 % of a core and takes minutes to
        # import a job module, so a job's timeout expired before its task's first line ran.
        "_system_config": {"worker_niceness": 0},
    },
}
SETTINGS = {**FAST, "job_modules": [], "executor_options": {"ray": RAY_OPTIONS}}
RAY_PROCESS_NAMES = ("raylet", "gcs_server", "ray::", "dashboard", "default_worker", "plasma")


def _ray_pids() -> set[int]:
    """Ray processes (raylet, GCS, Ray workers, ...) descended from this test process: the
    local instance started here, not any other Ray on the machine."""
    parents: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except (OSError, IndexError):
            continue
        if stat[0] != "Z":  # a zombie is dead for our purposes
            parents[int(entry.name)] = int(stat[1])
            cmdlines[int(entry.name)] = cmdline

    def ours(pid: int) -> bool:
        seen = set()
        while pid > 1 and pid not in seen:
            if pid == os.getpid():
                return True
            seen.add(pid)
            pid = parents.get(pid, 0)
        return False

    return {
        pid
        for pid, cmdline in cmdlines.items()
        if pid != os.getpid() and any(n in cmdline for n in RAY_PROCESS_NAMES) and ours(pid)
    }


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One local Ray instance for the module, started and stopped by a RayExecutor (the path
    ``address="local"`` takes in production); the tests' workers reuse the connection.

    Token authentication off, said explicitly: by default a local ``ray.init()`` turns it on
    for the rest of this process (``RAY_AUTH_MODE=token`` in ``os.environ``) and writes
    ``~/.ray/auth_token``, and a later connection of this process to a cluster without tokens
    (tests/jobs/executors/test_ray_cluster.py) then never receives its tasks' streamed results."""
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    owner = RayExecutor(assay.load_settings(), slots=1, options=RAY_OPTIONS)
    try:
        owner.start()
        assert ray.is_initialized()
        assert _ray_pids(), "the local Ray instance runs under this process"

        # The first task waits for Ray to start a worker process for its runtime_env (and its
        # runtime-env agent), tens of seconds on a loaded machine: once here, with its own
        # bound, not in the first test's.
        def pid() -> int:  # defined here, so that Ray sends it by value
            return os.getpid()

        ready = ray.remote(pid).options(runtime_env=RAY_OPTIONS["runtime_env"])
        assert ray.get(ready.remote(), timeout=scaled(120)) != os.getpid()
        yield
    finally:
        owner.stop()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved
        assert not ray.is_initialized()
        # No raylet, GCS or Ray worker process is left behind.
        wait_until(lambda: not _ray_pids(), timeout=30, interval=0.2)


@pytest.fixture
def ray_backend(ray_instance: None, tmp_path: Path) -> Iterator[Backend]:
    with assay.connect(f"sqlite:///{tmp_path / 'assay.db'}", **SETTINGS) as b:
        b.registry = RAY_JOBS
        yield b


def test_plugin_is_registered_and_declares_its_options() -> None:
    assert "ray" in available_executors()
    settings = assay.load_settings(executor_options={"ray": {"adress": "auto"}})
    with pytest.raises(
        ConfigError, match="unknown option 'adress' for executor 'ray'; did you mean 'address'"
    ):
        create_executor("ray", settings, slots=1)


def test_job_runs_as_a_ray_task(ray_backend: Backend) -> None:
    with running_worker(ray_backend, concurrency=2):
        done = ray_backend.wait(ray_backend.submit("r_where", {"x": 21}).id, timeout=scaled(60))
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.result["double"] == 42
    assert done.result["attempt"] == 1
    # It ran in a Ray worker process, not in the assay worker.
    assert done.result["pid"] != os.getpid()
    assert done.result["pid"] in _ray_pids()
    assert done.log_tail is not None
    assert "running x=21" in done.log_tail
    # The execution's job token reached the task, in current_job() and in the environment.
    claims = JobTokens(TokenStore(ray_backend.engine)).verify(done.result["token"])
    assert (claims.job_id, claims.attempt) == (done.id, 1)
    assert done.result["env_token"] == done.result["token"]


def test_a_reused_ray_worker_keeps_no_token_of_an_earlier_task(ray_backend: Backend) -> None:
    """The task body, run here: the job's API variables are set for its call only."""
    assert "ASSAY_API_TOKEN" not in os.environ
    queued = ray_backend.submit("r_env")
    *_, (kind, status, payload, _) = _run_on_ray(
        "jobmods_remote", "r_env", queued, (), {"ASSAY_API_TOKEN": "assayjob_t.s"}
    )
    assert (kind, status, json.loads(payload)) == ("done", "ok", "assayjob_t.s")
    assert "ASSAY_API_TOKEN" not in os.environ


def test_resources_must_be_amounts() -> None:
    settings = assay.load_settings(executor_options={"ray": {"resources": {"gpu_a": "one"}}})
    with pytest.raises(ConfigError, match="resources must map custom resource names"):
        create_executor("ray", settings, slots=1)


@pytest.fixture
def cluster_jobs_backend(ray_instance: None, tmp_path: Path) -> Iterator[Backend]:
    with assay.connect(f"sqlite:///{tmp_path / 'assay.db'}", **SETTINGS) as b:
        b.registry = RAY_CLUSTER_JOBS
        yield b


def test_progress_reaches_the_job_while_it_runs_and_when_it_ends(
    cluster_jobs_backend: Backend, tmp_path: Path
) -> None:
    backend = cluster_jobs_backend
    gate = tmp_path / "gate"
    params = {"record_path": str(tmp_path / "rec"), "steps": 3, "step_s": 0.01, "gate": str(gate)}
    with running_worker(backend, concurrency=1):
        job = backend.submit("rc_step", params)
        # The job holds after its first report: the report is on the RUNNING job's row.
        running = wait_until(lambda: (j := backend.get(job.id)).progress and j, timeout=90)
        assert running.status == JobStatus.RUNNING
        assert running.progress == Progress(1, 3, "step 1 of 3")
        gate.touch()
        done = backend.wait(job.id, timeout=scaled(60))
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.progress == Progress(3, 3, "step 3 of 3")


def test_a_ray_worker_that_dies_is_retried_by_assay(
    cluster_jobs_backend: Backend, tmp_path: Path
) -> None:
    """Ray does not re-run the task (max_retries=0); the lost attempt comes back to assay,
    which runs the job again as attempt 2."""
    backend = cluster_jobs_backend
    record = tmp_path / "rec"
    with running_worker(backend, concurrency=1):
        done = backend.wait(
            backend.submit("rc_die_once", {"record_path": str(record)}).id, scaled(90)
        )
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert (done.result, done.attempt) == (2, 2)
    first = backend.attempts(done.id)[0]
    assert first.status == "RETRIED"
    assert first.error is not None
    assert "was lost: WorkerCrashedError" in first.error
    # One execution per attempt: the first never ended, the second did.
    events = [line.split()[:3] for line in record.read_text().splitlines()]
    assert events == [["start", done.id, "1"], ["start", done.id, "2"], ["end", done.id, "2"]]


def test_exception_fails_the_job_with_its_traceback(ray_backend: Backend) -> None:
    with running_worker(ray_backend, concurrency=2):
        done = ray_backend.wait(
            ray_backend.submit("r_boom", {"message": "kaboom"}).id, timeout=scaled(60)
        )
    assert done.status == JobStatus.FAILED
    assert done.error is not None
    assert "Traceback" in done.error
    assert "ValueError: kaboom" in done.error
    assert "jobmods_remote.py" in done.error


def test_retry_on_is_retried_by_assay(ray_backend: Backend, tmp_path: Path) -> None:
    path = tmp_path / "attempts.txt"
    with running_worker(ray_backend, concurrency=2):
        job = ray_backend.submit("r_flaky", {"path": str(path), "fail_times": 1})
        done = ray_backend.wait(job.id, timeout=scaled(60))
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.result == 2
    assert done.attempt == 2
    lines = path.read_text().splitlines()
    assert [line.split(" pid ")[0] for line in lines] == ["attempt 1", "attempt 2"]


def test_cancel_stops_the_ray_task(ray_backend: Backend, tmp_path: Path) -> None:
    path = tmp_path / "sleep.txt"
    with running_worker(ray_backend, concurrency=2):
        job = ray_backend.submit("r_sleep", {"path": str(path), "seconds": 30})
        task_pid = wait_until(lambda: _started_pid(path), timeout=30)
        ray_backend.cancel(job.id)
        done = ray_backend.wait(job.id, timeout=scaled(30))
        assert done.status == JobStatus.CANCELED
        # Ray's forced cancel killed the Ray worker process that was running the task, so the
        # task can never reach its "finished" line.
        wait_until(lambda: task_pid not in _ray_pids(), timeout=15)
    assert path.read_text().splitlines() == [f"started {task_pid}"]


def test_timeout_stops_the_ray_task(ray_backend: Backend, tmp_path: Path) -> None:
    path = tmp_path / "slow.txt"
    with running_worker(ray_backend, concurrency=2):
        job = ray_backend.submit("r_slow", {"path": str(path)})
        task_pid = wait_until(lambda: _started_pid(path), timeout=30)
        done = ray_backend.wait(job.id, timeout=scaled(60))
        assert done.status == JobStatus.TIMEOUT
        assert done.error is not None
        wait_until(lambda: task_pid not in _ray_pids(), timeout=15)
    assert path.read_text().splitlines() == [f"started {task_pid}"]


def _started_pid(path: Path) -> int | None:
    """The task's pid once its "started" line is written whole (the file exists a moment
    before its line does)."""
    line = path.read_text() if path.exists() else ""
    return int(line.split()[1]) if line.endswith("\n") else None
