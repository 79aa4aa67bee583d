"""`assay jobs … --server URL`: the CLI against a real `assay server` (SQLite store)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import assay
from assay import JobStatus
from assay.jobs.store import NewJob
from assay.server.tokens import TokenStore
from support.jobs import FAST, JOB_KEYS, fast_env
from support.servers import Servers, free_port
from support.timing import wait_until


def _popen(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    base = fast_env()
    for key in ("ASSAY_STORE_URI", "ASSAY_SERVER_URL", "ASSAY_TOKEN"):
        base.pop(key, None)
    return subprocess.Popen(
        [sys.executable, "-m", "assay", *args],
        env={**base, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_many(
    commands: list[list[str] | tuple[list[str], dict[str, str]]], timeout: float = 120
) -> list[subprocess.CompletedProcess[str]]:
    """Run CLI invocations at once; an item is ``args`` or ``(args, extra_env)``."""
    specs = [(c, {}) if isinstance(c, list) else c for c in commands]
    procs = [_popen(args, env) for args, env in specs]
    done = []
    try:
        for (args, _), proc in zip(specs, procs, strict=True):
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_many([(list(args), env or {})])[0]


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got: {proc.stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(server URL, store URI): one `assay server` with a worker loop for the whole module."""
    tmp = tmp_path_factory.mktemp("cli_server")
    uri = f"sqlite:///{tmp / 'assay.db'}"
    started = Servers(tmp)
    try:
        yield started.start(uri).url, uri
    finally:
        started.close()


@pytest.fixture
def direct(live: tuple[str, str]) -> Iterator[Any]:
    with assay.connect(live[1], **FAST) as backend:
        yield backend


def test_submit_wait_exits_0_on_success_and_1_on_failure(live):
    url, _ = live
    ok, failed = run_many(
        [
            ["jobs", "submit", "t_add", "-p", "a=1", "-p", "b=2", "--wait", "--server", url],
            ["jobs", "submit", "t_fail", "--wait", "--server", url],
        ]
    )
    assert ok.returncode == 0, ok.stderr
    shown = json.loads(ok.stdout)
    assert (shown["status"], shown["result"], shown["params"]) == ("SUCCEEDED", 3, {"a": 1, "b": 2})
    assert set(shown) == set(JOB_KEYS)
    assert f"submitted {shown['id']}" in ok.stderr

    assert failed.returncode == 1, failed.stderr
    shown = json.loads(failed.stdout)
    assert shown["status"] == "FAILED"
    assert "ValueError: permanent failure" in shown["error"]


def test_submit_wait_shows_progress_from_the_server(live, tmp_path):
    url, _ = live
    gate = tmp_path / "gate"
    # A terminal as far as rich can tell, so the live progress bar is drawn.
    env = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120"}
    args = ["jobs", "submit", "t_progress", "-p", "steps=3", "-p", f"gate={gate}", "--wait"]
    proc = _popen([*args, "--server", url], env)
    assert proc.stderr is not None
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(1), "")))
    reader.start()
    try:
        wait_until(lambda: "step 3" in "".join(seen) and "3/3" in "".join(seen), timeout=60)
        gate.touch()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    assert proc.returncode == 0, "".join(seen)
    assert json.loads(out)["result"] == 3
    assert "RUNNING" in "".join(seen)


def test_show_list_cancel(live, direct):
    url, _ = live
    submitted = run("jobs", "submit", "t_sleep", "-p", "seconds=60", "--server", url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert str(uuid.UUID(job_id)) == job_id
    assert direct.get(job_id).name == "t_sleep"

    show, listed, table, by_env = run_many(
        [
            ["jobs", "show", job_id, "--server", url],
            ["jobs", "list", "--json", "--name", "t_sleep", "--server", url],
            (["jobs", "list", "--limit", "1", "--server", url], {"COLUMNS": "200"}),
            (["jobs", "list", "--json", "--name", "t_sleep"], {"ASSAY_SERVER_URL": url}),
        ]
    )
    for proc in (show, listed, table, by_env):
        assert proc.returncode == 0, proc.stderr
    shown = json.loads(show.stdout)
    assert set(shown) == set(JOB_KEYS)
    assert shown["id"] == job_id
    assert shown["params"] == {"seconds": 60}
    assert json.loads(listed.stdout)["jobs"][0]["id"] == job_id
    assert [j["id"] for j in json.loads(by_env.stdout)["jobs"]] == [
        j["id"] for j in json.loads(listed.stdout)["jobs"]
    ]
    assert job_id in table.stdout
    assert "next page: --page-token " in table.stdout

    cancel = run("jobs", "cancel", job_id, "--server", url)
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.strip() == f"{job_id} CANCELED"
    assert direct.get(job_id).status == JobStatus.CANCELED


def test_errors_are_one_line(live, direct, tmp_path):
    url, store = live
    down = f"http://127.0.0.1:{free_port()}"
    other_store = f"sqlite:///{tmp_path / 'other.db'}"
    before = len(direct.search(limit=1000).jobs)
    usage: dict[str, tuple[list[str] | tuple[list[str], dict[str, str]], str]] = {
        "unknown job": (["jobs", "submit", "t_nope", "--server", url], "t_nope"),
        "missing param": (["jobs", "submit", "t_add", "-p", "a=1", "--server", url], "'b'"),
        "show unknown id": (["jobs", "show", "no-such-id", "--server", url], "no-such-id"),
        "cancel unknown id": (["jobs", "cancel", "no-such-id", "--server", url], "no-such-id"),
        "bad status": (["jobs", "list", "--status", "DONE", "--server", url], "status"),
        "bad page token": (["jobs", "list", "--page-token", "xyz", "--server", url], "xyz"),
        "store and server": (
            ["jobs", "list", "--store", store, "--server", url],
            "a store or a server, not both",
        ),
        "both in the environment": (
            (["jobs", "list"], {"ASSAY_STORE_URI": store, "ASSAY_SERVER_URL": url}),
            "ASSAY_SERVER_URL and ASSAY_STORE_URI",
        ),
        "jobs module with a server": (
            ["jobs", "submit", "t_add", "--jobs-module", "jobmods", "--server", url],
            "--jobs-module",
        ),
        "token with a store": (["jobs", "list", "--store", store, "--token", "t"], "--token"),
        "not an http URL": (["jobs", "list", "--server", "ftp://example"], "http://"),
    }
    failures: dict[str, tuple[list[str] | tuple[list[str], dict[str, str]], str]] = {
        "server down": (
            ["jobs", "list", "--server", down],
            f"cannot reach the assay server at {down}",
        ),
        "server down on submit": (
            ["jobs", "submit", "t_noop", "--wait", "--server", down],
            down,
        ),
    }
    # The command line wins over the environment.
    precedence = [
        (["jobs", "list", "--json", "--server", url], {"ASSAY_STORE_URI": other_store}),
        (["jobs", "list", "--json", "--store", other_store], {"ASSAY_SERVER_URL": down}),
    ]
    cases = {**usage, **failures}
    results = run_many([args for args, _ in cases.values()] + precedence)
    for (case, (_, needle)), proc in zip(cases.items(), results, strict=False):
        expected = 2 if case in usage else 1
        assert proc.returncode == expected, f"{case}: exit {proc.returncode}: {proc.stderr!r}"
        assert needle in one_error_line(proc), f"{case}: {proc.stderr!r}"
        assert proc.stdout == "", case
    on_server, on_store = results[len(cases) :]
    assert on_server.returncode == 0, on_server.stderr
    assert len(json.loads(on_server.stdout)["jobs"]) == before
    assert on_store.returncode == 0, on_store.stderr
    assert json.loads(on_store.stdout)["jobs"] == []
    assert len(direct.search(limit=1000).jobs) == before  # no failed submit queued a job


def test_token_from_the_option_or_the_environment(servers, tmp_path):
    uri = f"sqlite:///{tmp_path / 'auth.db'}"
    server = servers.start(uri, "--auth")
    with assay.connect(uri, **FAST) as backend:
        _, token = TokenStore(backend.engine).create("alice", "admin")
    refused, by_option, wrong = run_many(
        [
            ["jobs", "submit", "t_noop", "--server", server.url],
            ["jobs", "submit", "t_noop", "--server", server.url, "--token", token],
            ["jobs", "list", "--server", server.url, "--token", "assay_wrong"],
        ]
    )
    by_env = run(
        "jobs", "list", "--json", env={"ASSAY_SERVER_URL": server.url, "ASSAY_TOKEN": token}
    )
    assert refused.returncode == 1
    assert "Bearer" in one_error_line(refused)
    assert wrong.returncode == 1
    one_error_line(wrong)
    assert by_option.returncode == 0, by_option.stderr
    job_id = by_option.stdout.strip()
    assert by_env.returncode == 0, by_env.stderr
    listed = json.loads(by_env.stdout)["jobs"]
    assert [(j["id"], j["owner"]) for j in listed] == [(job_id, "alice")]


def test_prefixes_and_assay_s_own_jobs_over_the_server(live, direct):
    url, _ = live
    job = direct.submit("t_sleep", {"seconds": 60})
    hidden = str(uuid.uuid4())
    direct.store.jobs_insert(
        [NewJob(id=hidden, name="assay.newcomer.hidden", params={}, max_retries=0, timeout_s=60)]
    )
    shown, listed, every, typo = run_many(
        [
            ["jobs", "show", job.id[:8], "--server", url],
            ["jobs", "list", "--json", "--limit", "1000", "--server", url],
            ["jobs", "list", "--json", "--limit", "1000", "--all", "--server", url],
            ["jobs", "submit", "assay.scoring.trace", "--server", url],
        ]
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == job.id
    assert hidden not in {j["id"] for j in json.loads(listed.stdout)["jobs"]}
    assert hidden in {j["id"] for j in json.loads(every.stdout)["jobs"]}
    # The server registers the online-scoring jobs; an unknown name is not offered them.
    assert typo.returncode == 2
    assert "assay." not in one_error_line(typo).replace("'assay.scoring.trace'", "")

    cancel = run("jobs", "cancel", job.id[:6], "--server", url)
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.strip() == f"{job.id} CANCELED"
    found = run("jobs", "show", hidden[:8], "--server", url)  # an id asked for is shown
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["name"] == "assay.newcomer.hidden"
