"""``@job(python_env={"pip": [...]})``: jobs in cached virtualenvs (the ``venv`` executor).

Envs are real (pip from PyPI, ``tomli_w`` which the worker's own env does not have) and cost about
2 s each to create, so tests share them through a session-scoped env dir; tests about creation
itself (the lock, the count) use a fresh dir. Most tests use SQLite; one runs on all three DBs.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import assay
import jobmods_venv  # noqa: F401 - registers the venv_* jobs in this process
from assay import Job, JobStatus
from assay.errors import ConfigError
from assay.jobs import pyenv
from assay.jobs.backend import Backend
from assay.jobs.registry import Registry, job
from jobmods_venv import MISSING, PKG, PKG_OLD
from support.jobs import FAST, running_worker
from support.timing import scaled, wait_until


def venv_settings(env_dir: Path, **extra: Any) -> dict[str, Any]:
    return {**FAST, "python_env_dir": str(env_dir), **extra}


@pytest.fixture(scope="session")
def env_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Envs shared by every test of the session (never ~/.assay)."""
    return tmp_path_factory.mktemp("envs")


@pytest.fixture(scope="session")
def pkg_env(env_dir: Path) -> Path:
    """The env of ``tomli-w==1.1.0``, created up front so timing tests do not pay for it."""
    return pyenv.ensure_env([PKG], env_dir)


@pytest.fixture
def sqlite_backend(tmp_path: Path, env_dir: Path) -> Iterator[Backend]:
    with assay.connect(f"sqlite:///{tmp_path / 'assay.db'}", **venv_settings(env_dir)) as b:
        yield b


def run(backend: Backend, name: str, params: dict[str, Any] | None = None, **kw: Any) -> Job:
    job_ = backend.submit(name, params or {}, **kw)
    with running_worker(backend, concurrency=2):
        return backend.wait(job_.id, timeout=60)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0); it is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except (OSError, IndexError):  # it vanished in between
        return False


def pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_the_worker_itself_does_not_have_tomli_w() -> None:
    assert importlib.util.find_spec("tomli_w") is None  # else the tests below prove nothing


def test_job_runs_in_its_env_which_is_created_once_and_reused(
    sqlite_backend: Backend, env_dir: Path
) -> None:
    with running_worker(sqlite_backend, concurrency=2):
        first = sqlite_backend.wait(sqlite_backend.submit("venv_pkg", {"tag": "a"}).id, 60)
        second = sqlite_backend.wait(sqlite_backend.submit("venv_pkg", {"tag": "b"}).id, 60)
    assert first.status == second.status == JobStatus.SUCCEEDED, (first.error, second.error)
    expected_prefix = str((env_dir / pyenv.env_key([PKG])).resolve())
    assert first.result == {"version": "1.1.0", "prefix": expected_prefix, "tag": "a"}
    assert second.result == {"version": "1.1.0", "prefix": expected_prefix, "tag": "b"}
    assert pyenv.creations(env_dir, [PKG]) == 1
    assert second.log_tail is not None
    assert "hello from b" in second.log_tail
    assert "creating python env" not in second.log_tail


def test_envs_are_keyed_by_the_requirement_set(sqlite_backend: Backend, env_dir: Path) -> None:
    with running_worker(sqlite_backend, concurrency=2):
        new = sqlite_backend.wait(sqlite_backend.submit("venv_pkg").id, 60)
        old = sqlite_backend.wait(sqlite_backend.submit("venv_pkg_old").id, 60)
    assert new.status == old.status == JobStatus.SUCCEEDED, (new.error, old.error)
    assert new.result["version"] == "1.1.0"
    assert old.result["version"] == "1.0.0"
    assert new.result["prefix"] != old.result["prefix"]
    assert pyenv.creations(env_dir, [PKG]) == 1
    assert pyenv.creations(env_dir, [PKG_OLD]) == 1
    # Spelling does not matter; the set does.
    assert pyenv.env_key([" Tomli-W == 1.1.0", PKG]) == pyenv.env_key([PKG])
    assert pyenv.env_key([PKG, "attrs"]) != pyenv.env_key([PKG])


def test_concurrent_threads_create_the_env_once_and_a_half_env_is_rebuilt(
    tmp_path: Path,
) -> None:
    env_dir = tmp_path / "envs"
    leftover = env_dir / pyenv.env_key([PKG])
    (leftover / "bin").mkdir(parents=True)  # a crash mid-creation: no ready marker
    (leftover / "junk").write_text("half")
    barrier = threading.Barrier(4)
    results: list[Path] = []
    errors: list[BaseException] = []

    def create() -> None:
        barrier.wait()
        try:
            results.append(pyenv.ensure_env([PKG], env_dir))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len(results) == 4
    assert len(set(results)) == 1
    assert pyenv.creations(env_dir, [PKG]) == 1
    assert not (leftover / "junk").exists()
    assert (leftover / pyenv.READY_MARKER).exists()


def test_two_worker_processes_create_the_env_once(tmp_path: Path, worker_processes: Any) -> None:
    """Two workers need one new env at the same time: one creates it, the other waits on the
    lock and reuses it. The test holds the env's lock until each worker has claimed a job, so
    the two surely race: left alone, a worker that starts first on a busy machine can run both
    jobs before the other has imported anything."""
    env_dir = tmp_path / "fresh-envs"
    env_dir.mkdir()
    store_uri = f"sqlite:///{tmp_path / 'assay.db'}"
    with open(env_dir / f"{pyenv.env_key([PKG])}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with assay.connect(store_uri, **venv_settings(env_dir)) as backend:
            jobs = [backend.submit("venv_pkg", {"tag": str(i)}) for i in range(2)]
            for _ in range(2):
                worker_processes.start(
                    store_uri,
                    "--jobs-module",
                    "jobmods_venv",
                    worker_concurrency=1,
                    python_env_dir=str(env_dir),
                )
            # One job at a time per worker: both running means one on each, both at the lock.
            wait_until(
                lambda: all(backend.get(j.id).status == JobStatus.RUNNING for j in jobs),
                timeout=60,
            )
            lock.close()  # releases the flock: let them race
            done = [backend.wait(j.id, timeout=scaled(90)) for j in jobs]
    assert all(j.status == JobStatus.SUCCEEDED for j in done), [j.error for j in done]
    assert done[0].worker_id != done[1].worker_id
    assert pyenv.creations(env_dir, [PKG]) == 1
    created = [j for j in done if "creating python env" in (j.log_tail or "")]
    assert len(created) == 1  # the other worker waited on the lock and reused the env


def test_a_bad_requirement_fails_the_job_with_pips_error(
    sqlite_backend: Backend, env_dir: Path
) -> None:
    started = time.monotonic()
    failed = run(sqlite_backend, "venv_missing")
    elapsed = time.monotonic() - started
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None
    assert "creating the python env failed" in failed.error
    assert "No matching distribution found for assay-does-not-exist-pkg" in failed.error
    assert elapsed < scaled(60)
    assert not (env_dir / pyenv.env_key([MISSING])).exists()  # nothing half-made is left
    with pytest.raises(pyenv.PythonEnvError, match="assay-does-not-exist-pkg"):
        pyenv.ensure_env([MISSING], env_dir)


@pytest.mark.parametrize("end", ["cancel", "timeout"])
def test_cancel_and_timeout_kill_the_job_and_its_children(
    sqlite_backend: Backend, pkg_env: Path, tmp_path: Path, end: str
) -> None:
    pid_file = tmp_path / "pids"
    timeout = scaled(8.0) if end == "timeout" else None  # room for a slow start on a busy box
    with running_worker(sqlite_backend, concurrency=2):
        job_ = sqlite_backend.submit("venv_sleep", {"path": str(pid_file)}, timeout=timeout)
        wait_until(lambda: len(pids(pid_file)) == 2, timeout=20)
        child, grandchild = pids(pid_file)
        assert alive(child)
        assert alive(grandchild)
        progress = wait_until(lambda: sqlite_backend.get(job_.id).progress, timeout=5)
        assert (progress.completed, progress.total, progress.message) == (1, 10, "started")
        started = time.monotonic()
        if end == "cancel":
            sqlite_backend.cancel(job_.id)
        # The job's time limit was scaled by the load at submit; the load may have dropped
        # since, so the wait for its end covers that limit whatever the scale is now.
        wait_until(lambda: not alive(child) and not alive(grandchild), timeout=10 + (timeout or 0))
        done = sqlite_backend.wait(job_.id, timeout=scaled(10))
    expected = JobStatus.CANCELED if end == "cancel" else JobStatus.TIMEOUT
    assert done.status == expected
    if end == "cancel":
        assert time.monotonic() - started < scaled(3.0)


def test_the_job_dies_with_a_killed_worker(
    tmp_path: Path, env_dir: Path, pkg_env: Path, worker_processes: Any
) -> None:
    """The child's stdin is its lifeline: a SIGKILLed worker takes the job's group with it."""
    pid_file = tmp_path / "pids"
    store_uri = f"sqlite:///{tmp_path / 'assay.db'}"
    with assay.connect(store_uri, **venv_settings(env_dir)) as backend:
        worker = worker_processes.start(
            store_uri, "--jobs-module", "jobmods_venv", python_env_dir=str(env_dir)
        )
        backend.submit("venv_sleep", {"path": str(pid_file)})
        wait_until(lambda: len(pids(pid_file)) == 2, timeout=30)
        child, grandchild = pids(pid_file)
        os.kill(worker.pid, signal.SIGKILL)
        wait_until(lambda: not alive(child) and not alive(grandchild), timeout=10)


def test_errors_are_classified_by_retry_on(sqlite_backend: Backend, pkg_env: Path) -> None:
    with running_worker(sqlite_backend, concurrency=2):
        transient = sqlite_backend.submit("venv_raise", {"transient": True})
        permanent = sqlite_backend.submit("venv_raise", {"transient": False})
        flaky = sqlite_backend.wait(transient.id, timeout=60)
        bad = sqlite_backend.wait(permanent.id, timeout=60)
    assert flaky.status == JobStatus.FAILED
    assert flaky.attempt == 2
    assert flaky.error is not None
    assert "Flaky: try again" in flaky.error
    assert bad.status == JobStatus.FAILED
    assert bad.attempt == 1
    assert bad.error is not None
    assert "ValueError: bad input" in bad.error


def test_end_to_end_on_every_store(store_uri: str, env_dir: Path, pkg_env: Path) -> None:
    with assay.connect(store_uri, **venv_settings(env_dir)) as backend:
        done = run(backend, "venv_pkg", {"tag": "db"})
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.result["version"] == "1.1.0"
    assert pyenv.creations(env_dir, [PKG]) == 1


@pytest.mark.parametrize(
    ("python_env", "message"),
    [
        ({"pips": ["version"]}, "unknown python_env key 'pips'; did you mean 'pip'?"),
        ({"conda": ["version"]}, "unknown python_env key 'conda'"),
        ({"pip": "tomli-w==1.1.0"}, "must be a list of requirement strings"),
        ({"pip": [""]}, "non-empty requirement string"),
        ({"pip": [3]}, "non-empty requirement string"),
        ({"pip": ["--index-url=http://x"]}, "only requirement strings are accepted"),
        (["version"], "python_env must be a mapping"),
    ],
)
def test_python_env_is_validated_at_decoration(python_env: Any, message: str) -> None:
    def fn() -> None:
        return None

    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        job(name="bad_env", python_env=python_env, registry=Registry())(fn)


def test_python_env_is_kept_on_the_spec() -> None:
    def fn() -> None:
        return None

    registry = Registry()
    job(name="env_ok", python_env={"pip": [" tomli-w==1.1.0 "]}, registry=registry)(fn)
    assert registry.get("env_ok").python_env == {"pip": ["tomli-w==1.1.0"]}
    hash(registry.get("env_ok"))  # specs stay hashable


def test_python_env_jobs_cannot_name_another_executor() -> None:
    def fn() -> None:
        return None

    with pytest.raises(ConfigError, match="run on the 'venv' executor, not 'sandbox'"):
        job(name="env_sb", python_env={"pip": [PKG]}, executor="sandbox", registry=Registry())(fn)
    job(name="env_venv", python_env={"pip": [PKG]}, executor="venv", registry=Registry())(fn)
