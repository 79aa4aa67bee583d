"""The `assay` command, run for real as subprocesses (SQLite, plus one PostgreSQL smoke test)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import assay
from assay import JobStatus
from assay.jobs.store import NewJob
from support.jobs import FAST, JOB_KEYS, fast_env
from support.timing import wait_until


def _popen(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "assay", *args],
        env={**fast_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_many([list(args)], timeout=timeout)[0]


def run_with(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One invocation with extra environment variables."""
    return run_many([(args, env)])[0]


def run_many(
    commands: list[list[str] | tuple[list[str], dict[str, str]]], timeout: float = 120
) -> list[subprocess.CompletedProcess[str]]:
    """Run several CLI invocations at once (each is a fresh interpreter: ~1 s to start); an
    item is ``args`` or ``(args, extra_env)``."""
    specs = [(c, {}) if isinstance(c, list) else c for c in commands]
    procs = [_popen(*args, env=env) for args, env in specs]
    done = []
    for (args, _), proc in zip(specs, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got: {proc.stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def worker_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SQLite store with one `assay worker` process serving it for the whole module."""
    tmp = tmp_path_factory.mktemp("cli")
    uri = f"sqlite:///{tmp / 'assay.db'}"
    log_path = tmp / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "assay", "worker", "--store", uri],
            env=fast_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: b"running" in log_path.read_bytes() or proc.poll() is not None, 60)
        assert proc.poll() is None, log_path.read_text()
        yield uri
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def idle_store(tmp_path: Path) -> Iterator[tuple[str, assay.Backend]]:
    """A fresh SQLite store with no worker, and a backend on it."""
    uri = f"sqlite:///{tmp_path / 'idle.db'}"
    with assay.connect(uri, **FAST) as backend:
        yield uri, backend


def test_submit_wait_prints_the_result(worker_store):
    proc = run(
        "jobs", "submit", "t_add", "-p", "a=1", "-p", "b=2", "--wait", "--store", worker_store
    )
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["status"] == "SUCCEEDED"
    assert shown["result"] == 3
    assert shown["params"] == {"a": 1, "b": 2}
    assert f"submitted {shown['id']}" in proc.stderr


def test_submit_wait_on_a_failing_job_exits_1(worker_store):
    proc = run("jobs", "submit", "t_fail", "--wait", "--store", worker_store)
    assert proc.returncode == 1, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["status"] == "FAILED"
    assert "ValueError: permanent failure" in shown["error"]


def test_submit_without_wait_prints_the_id_then_show(idle_store):
    uri, backend = idle_store
    proc = run("jobs", "submit", "t_add", "-p", "a=1", "-p", 'b={"x": [1, 2]}', "--store", uri)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert str(uuid.UUID(job_id)) == job_id
    stored = backend.get(job_id)
    assert stored.status == JobStatus.PENDING
    assert stored.params == {"a": 1, "b": {"x": [1, 2]}}  # values parse as JSON

    shown = run("jobs", "show", job_id, "--store", uri)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert set(data) == set(JOB_KEYS)
    assert data["id"] == job_id
    assert data["status"] == "PENDING"


def test_usage_errors_exit_2_with_a_readable_message(idle_store, tmp_path):
    uri, backend = idle_store
    job = backend.submit("t_noop")
    cases: dict[str, tuple[list[str], str, bool]] = {
        # name: (args, text stderr must contain, exactly one 'error:' line)
        "unknown job": (["jobs", "submit", "t_nope", "--store", uri], "t_nope", True),
        "missing param": (["jobs", "submit", "t_add", "-p", "a=1", "--store", uri], "'b'", True),
        "param without =": (
            ["jobs", "submit", "t_add", "-p", "a", "--store", uri],
            "key=value",
            False,
        ),
        "show unknown id": (["jobs", "show", "no-such-id", "--store", uri], "no-such-id", True),
        "bad status": (["jobs", "list", "--status", "DONE", "--store", uri], "DONE", True),
        "bad duration": (["jobs", "prune", "--older-than", "7x", "--store", uri], "7x", False),
        "bad scheme": (["jobs", "list", "--store", "redis://localhost/0"], "redis", True),
    }
    results = run_many([args for args, _, _ in cases.values()])
    for (case, (_, needle, one_line)), proc in zip(cases.items(), results, strict=True):
        assert proc.returncode == 2, f"{case}: exit {proc.returncode}, stderr {proc.stderr!r}"
        assert "Traceback" not in proc.stderr, f"{case}: {proc.stderr}"
        assert needle in proc.stderr, f"{case}: {proc.stderr!r}"
        if one_line:
            _one_error_line(proc)
    # Nothing was submitted by the failed submits.
    assert [j.id for j in backend.search().jobs] == [job.id]
    assert "unsupported store URI scheme" in results[-1].stderr


def test_list_json(idle_store):
    uri, backend = idle_store
    adds = backend.submit_many("t_add", [{"a": i, "b": 1} for i in range(2)])
    noop = backend.submit("t_noop")
    backend.cancel(adds[0].id)
    token = backend.search(limit=2).next_page_token
    assert token
    everything, filtered, page1, page2 = run_many(
        [
            ["jobs", "list", "--json", "--store", uri],
            ["jobs", "list", "--json", "--name", "t_add", "--status", "PENDING", "--store", uri],
            ["jobs", "list", "--json", "--limit", "2", "--store", uri],
            ["jobs", "list", "--json", "--limit", "2", "--page-token", token, "--store", uri],
        ]
    )
    for proc in (everything, filtered, page1, page2):
        assert proc.returncode == 0, proc.stderr
    data = json.loads(everything.stdout)
    assert data["next_page_token"] is None
    assert {j["id"] for j in data["jobs"]} == {adds[0].id, adds[1].id, noop.id}
    for item in data["jobs"]:
        assert set(item) == set(JOB_KEYS)
        assert item["created_at"].endswith("Z")
    assert [j["id"] for j in json.loads(filtered.stdout)["jobs"]] == [adds[1].id]
    first, second = json.loads(page1.stdout), json.loads(page2.stdout)
    assert first["next_page_token"] == token
    assert second["next_page_token"] is None
    paged = [j["id"] for j in first["jobs"] + second["jobs"]]
    assert paged == [j["id"] for j in data["jobs"]]


def test_cancel(idle_store):
    uri, backend = idle_store
    job = backend.submit("t_sleep", {"seconds": 30})
    proc = run("jobs", "cancel", job.id, "--store", uri)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{job.id} CANCELED"
    assert backend.get(job.id).status == JobStatus.CANCELED


def test_prune(idle_store):
    uri, backend = idle_store
    finished = backend.cancel(backend.submit("t_noop").id)
    pending = backend.submit("t_noop")
    keep = run("jobs", "prune", "--older-than", "7d", "--store", uri)
    assert keep.returncode == 0, keep.stderr
    assert keep.stdout.strip() == "deleted 0 jobs"
    assert backend.get(finished.id).status == JobStatus.CANCELED
    # The finished job is older than 0 s by the time the command runs (a second later).
    wait_until(
        lambda: backend.store.now_ms() > backend.get(finished.id).finished_at.timestamp() * 1000
    )
    drop = run("jobs", "prune", "--older-than", "0s", "--store", uri)
    assert drop.returncode == 0, drop.stderr
    assert drop.stdout.strip() == "deleted 1 jobs"
    assert [j.id for j in backend.search().jobs] == [pending.id]


@pytest.mark.parametrize("store_uri", ["postgresql"], indirect=True)
def test_postgresql_smoke(store_uri, worker_processes):
    worker_processes.start(store_uri)
    submit = run(
        "jobs", "submit", "t_add", "-p", "a=20", "-p", "b=22", "--wait", "--store", store_uri
    )
    assert submit.returncode == 0, submit.stderr + worker_processes.logs()
    shown = json.loads(submit.stdout)
    assert shown["status"] == "SUCCEEDED"
    assert shown["result"] == 42
    listed = run("jobs", "list", "--json", "--store", store_uri)
    assert listed.returncode == 0, listed.stderr
    assert [j["id"] for j in json.loads(listed.stdout)["jobs"]] == [shown["id"]]


def _insert(backend: assay.Backend, job_id: str, name: str = "t_noop") -> None:
    """A job with an id of our choosing (submits draw random ones)."""
    backend.store.jobs_insert(
        [NewJob(id=job_id, name=name, params={}, max_retries=0, timeout_s=60)]
    )


def test_show_and_cancel_take_a_unique_id_prefix(idle_store):
    uri, backend = idle_store
    first, second = (
        "abcd0001-0000-4000-8000-000000000001",
        "abcd0002-0000-4000-8000-000000000002",
    )
    for job_id in (first, second):
        _insert(backend, job_id, "t_sleep")
    shown, cancelled, ambiguous, short, unknown = run_many(
        [
            ["jobs", "show", "abcd0001", "--store", uri],
            ["jobs", "cancel", "ABCD0002", "--store", uri],
            ["jobs", "show", "abcd", "--store", uri],
            ["jobs", "show", "abc", "--store", uri],
            ["jobs", "cancel", "ffff", "--store", uri],
        ]
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == first
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"{second} CANCELED"
    assert backend.get(second).status == JobStatus.CANCELED
    for proc in (ambiguous, short, unknown):
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
    line = _one_error_line(ambiguous)
    assert "ambiguous" in line
    assert first in line
    assert second in line
    assert "at least 4" in _one_error_line(short)
    assert "no job id starts with 'ffff'" in _one_error_line(unknown)


def test_list_prints_whole_ids_and_leaves_assay_s_own_jobs_out(idle_store):
    uri, backend = idle_store
    jobs = backend.submit_many("t_add", [{"a": i, "b": 1} for i in range(3)])
    hidden = str(uuid.uuid4())
    _insert(backend, hidden, "assay.scoring.traces")
    # A terminal of 80 columns, as rich sees it.
    tty = {"TTY_COMPATIBLE": "1", "COLUMNS": "80"}
    table, every, as_json = run_many(
        [
            (["jobs", "list", "--store", uri], tty),
            (["jobs", "list", "--all", "--store", uri], tty),
            (["jobs", "list", "--json", "--store", uri], {}),
        ]
    )
    for proc in (table, every, as_json):
        assert proc.returncode == 0, proc.stderr
    for job in jobs:
        assert job.id in table.stdout
    assert hidden not in table.stdout
    assert "assay.scoring" not in table.stdout
    assert hidden in every.stdout
    assert hidden not in as_json.stdout
    assert max(len(line) for line in _plain(table.stdout).splitlines()) <= 80


def _plain(text: str) -> str:
    """Text without terminal escape sequences (colours)."""
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", text)


def test_wait_ends_on_the_final_progress_printed_as_integers(tmp_path, worker_processes):
    uri = f"sqlite:///{tmp_path / 'progress.db'}"
    # No progress flush while the job runs: its last report arrives with its result.
    worker_processes.start(
        uri, cancel_poll_s=60.0, lease_ttl_s=180.0, job_modules=["jobmods", "jobmods_newcomer"]
    )
    worker_processes.wait_ready(1)
    tty = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120"}
    submit = ["jobs", "submit", "n_burst", "-p", "steps=30", "--wait", "--store", uri]
    waited = run_with([*submit, "--jobs-module", "jobmods_newcomer"], tty)
    assert waited.returncode == 0, waited.stderr + worker_processes.logs()
    shown = json.loads(waited.stdout)
    assert shown["progress"] == {"completed": 30, "total": 30, "message": "step 30"}
    # The bar stays; its last frame is the job's end.
    frames = [line for line in _plain(waited.stderr).splitlines() if "SUCCEEDED" in line]
    assert frames, waited.stderr
    assert "30/30" in frames[-1]
    assert "step 30" in frames[-1]

    listed = run_with(["jobs", "list", "--store", uri], {"COLUMNS": "120"})
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if shown["id"] in line)
    assert re.search(r"\b30/30\b", row), row
    assert ".0" not in row


def test_server_with_a_bad_jobs_module_is_one_line_and_exit_2(tmp_path):
    uri = f"sqlite:///{tmp_path / 'server.db'}"
    proc = run("server", "--store", uri, "--port", "0", "--jobs-module", "nosuchmod")
    assert proc.returncode == 2, proc.stderr
    assert "nosuchmod" in _one_error_line(proc)
    assert proc.stdout == ""


def test_server_processes_get_the_parents_settings_secrets_included() -> None:
    """``assay server --processes N`` hands its settings to its processes as JSON: every
    setting makes the same value again, the judge's API key included (``model_dump`` alone
    would hand over ``**********``)."""
    from assay.cli.run import _revealed
    from assay.config import Settings

    settings = Settings(
        judge_api_key="sk-secret", server_processes=3, job_modules=["mod.a"], lease_ttl_s=7.5
    )
    handed = json.loads(json.dumps(_revealed(settings)))
    assert Settings(**handed) == settings
    key = Settings(**handed).judge_api_key
    assert key is not None
    assert key.get_secret_value() == "sk-secret"
