"""What a newcomer meets first: a cheap `import assay`, a client-only install, a finished job's
progress, id prefixes, assay's own jobs kept out of the way, /docs without the network, and
`assay demo` checking for its extra before it starts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import assay
from assay import InvalidRequestError, JobStatus, NotFoundError, Progress
from assay.jobs.api import find_job
from assay.jobs.backend import Backend
from assay.jobs.store import NewJob
from support.jobs import FAST, fast_env, running_worker
from support.servers import ServerProcess, Servers

NEWCOMER = {**FAST, "job_modules": ["jobmods", "jobmods_newcomer"]}
# What `pip install assay` (the client) leaves out: the packages of `assay[server]`.
SERVER_PACKAGES = {
    "alembic",
    "croniter",
    "fastapi",
    "fastapi_offline",
    "jinja2",
    "multipart",
    "prometheus_client",
    "pydantic",
    "pydantic_settings",
    "regex",
    "sqlalchemy",
    "starlette",
    "uvicorn",
}
SLOW_FLUSH = {"cancel_poll_s": 60.0, "lease_ttl_s": 180.0}
"""No progress flush while a short job runs: what it reported last arrives with its result."""
HIDDEN = "assay.newcomer.hidden"
"""An internal job name (assay's own namespace) that no worker runs: its jobs stay PENDING."""

# Runs `-m module args…` or `-c code` with some top-level packages made unimportable, as on
# an install without them (a missing extra): importing one raises ModuleNotFoundError.
_WITHOUT = """
import importlib.abc, runpy, sys
blocked = set(sys.argv[1].split(","))
class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Missing())
mode, what, *rest = sys.argv[2:]
sys.argv = [what, *rest]
if mode == "-m":
    runpy.run_module(what, run_name="__main__", alter_sys=True)
else:
    exec(compile(what, "<client script>", "exec"), {"__name__": "__main__"})
"""


def run_without(
    blocked: set[str], mode: str, what: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = fast_env()
    for key in ("ASSAY_STORE_URI", "ASSAY_SERVER_URL", "ASSAY_TOKEN"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT, ",".join(sorted(blocked)), mode, what, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got: {proc.stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    """One real `assay server` (the tests' job modules) on a SQLite store, and the store."""
    uri = f"sqlite:///{tmp_path / 'assay.db'}"
    started = Servers(tmp_path)
    try:
        yield started.start(uri), uri
    finally:
        started.close()


def _insert(backend: Backend, job_id: str, name: str = "t_noop") -> None:
    """A job with an id of our choosing (submits draw random ones)."""
    backend.store.jobs_insert(
        [NewJob(id=job_id, name=name, params={}, max_retries=0, timeout_s=60)]
    )


# -- import assay ----------------------------------------------------------------------------


def test_import_assay_loads_neither_the_server_nor_the_store() -> None:
    code = "import json, sys, assay; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    modules = json.loads(done.stdout)
    loaded = {name.split(".")[0] for name in modules}
    assert not loaded & (SERVER_PACKAGES | {"httpx"}), sorted(loaded & SERVER_PACKAGES)
    # The interpreter alone loads about 40; the eager `import assay` loaded 750.
    assert len(modules) < 150, len(modules)
    assert [m for m in modules if m.startswith("assay")] == ["assay"]


def test_the_public_api_is_unchanged_and_loads_on_use() -> None:
    code = (
        "import assay, json\n"
        "names = {n: type(getattr(assay, n)).__name__ for n in assay.__all__}\n"
        "print(json.dumps({'all': names, 'db': assay.db.__name__}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    data = json.loads(done.stdout)
    assert set(data["all"]) == set(assay.__all__)
    assert data["all"]["Backend"] == "type"
    assert data["all"]["connect"] == "function"
    assert data["all"]["tracing"] == "module"
    assert data["db"] == "assay.db"  # submodules load on attribute access too
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = assay.no_such_name  # type: ignore[attr-defined]


# -- the client-only install -----------------------------------------------------------------


def test_a_client_only_install_submits_jobs_logs_metrics_and_lists_jobs(sqlite_server) -> None:
    server, _ = sqlite_server
    script = f"""
import assay
from assay.tracking import QueueingClient
with assay.Client({server.url!r}) as client:
    done = client.wait(client.submit("t_add", {{"a": 1, "b": 2}}).id, timeout=60)
    assert done.result == 3, done
    experiment = client.request("POST", "/api/v1/experiments", json={{"name": "client-only"}})
with QueueingClient({server.url!r}) as tracking:
    run = tracking.create_run(experiment["id"], name="train")
    for step in range(3):
        tracking.log_metrics(run, {{"loss": 1.0 / (step + 1)}}, step=step)
    tracking.set_terminated(run)
print(tracking.resolve(run))
"""
    logged = run_without(SERVER_PACKAGES, "-c", script)
    assert logged.returncode == 0, logged.stderr
    run_id = logged.stdout.strip()
    stored = httpx.get(f"{server.url}/api/v1/runs/{run_id}", timeout=10).json()
    assert stored["status"] == "FINISHED"

    listed = run_without(SERVER_PACKAGES, "-m", "assay", "jobs", "list", "--server", server.url)
    assert listed.returncode == 0, listed.stderr
    assert "t_add" in listed.stdout

    # What needs the server says so, in one line.
    served = run_without(SERVER_PACKAGES, "-m", "assay", "server", "--port", "0")
    assert served.returncode == 2
    assert "pip install 'assay[server]'" in one_error_line(served)


# -- progress --------------------------------------------------------------------------------


def test_a_finished_job_keeps_its_last_progress_on_every_store(store_uri: str) -> None:
    settings = {**NEWCOMER, **SLOW_FLUSH}
    with assay.connect(store_uri, **settings) as backend, running_worker(backend):
        done = backend.wait(backend.submit("n_burst", {"steps": 30}).id, timeout=60)
    assert done.status == JobStatus.SUCCEEDED
    assert done.progress == Progress(30, 30, "step 30")


def test_the_process_pool_sends_a_throttled_last_report_before_the_result(tmp_path) -> None:
    settings = {**NEWCOMER, **SLOW_FLUSH, "default_executor": "process"}
    with (
        assay.connect(f"sqlite:///{tmp_path / 'assay.db'}", **settings) as backend,
        running_worker(backend, concurrency=1),
    ):
        job = backend.submit("n_burst", {"steps": 500, "total": False})
        done = backend.wait(job.id, timeout=60)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.progress == Progress(500, None, "step 500")


# -- ids by prefix, internal jobs --------------------------------------------------------------


def test_jobs_are_found_by_a_unique_id_prefix_on_every_store(backend: Backend) -> None:
    first, second, other = (
        "abcd0001-0000-4000-8000-000000000001",
        "abcd0002-0000-4000-8000-000000000002",
        "ef010000-0000-4000-8000-000000000003",
    )
    for job_id in (first, second, other):
        _insert(backend, job_id)

    def ids(prefix: str) -> list[str]:
        return sorted(j.id for j in backend.search(id_prefix=prefix).jobs)

    assert ids("abcd") == [first, second]
    assert ids("ABCD0002") == [second]  # ids are lower case; so is the lookup
    assert ids(first) == [first]
    assert ids("abcd0003") == []
    assert find_job(backend, "abcd0002").id == second
    assert find_job(backend, other).id == other
    with pytest.raises(InvalidRequestError, match="ambiguous") as ambiguous:
        find_job(backend, "abcd")
    assert first in str(ambiguous.value)
    assert second in str(ambiguous.value)
    with pytest.raises(NotFoundError, match="no job id starts with '0000'"):
        find_job(backend, "0000")
    with pytest.raises(NotFoundError, match="at least 4"):
        find_job(backend, "abc")
    for bad in ("abc", "ab%d", "abcd_", "zzzz"):
        with pytest.raises(InvalidRequestError, match="id_prefix"):
            backend.search(id_prefix=bad)


def test_internal_jobs_are_left_out_unless_asked_for_on_every_store(backend: Backend) -> None:
    hidden = str(uuid.uuid4())
    _insert(backend, hidden, HIDDEN)
    shown = backend.submit("t_noop")

    def ids(**kw: object) -> list[str]:
        return [j.id for j in backend.search(**kw).jobs]  # type: ignore[arg-type]

    assert ids() == [shown.id]
    assert set(ids(include_internal=True)) == {hidden, shown.id}
    assert ids(name=HIDDEN) == [hidden]  # named: asked for
    assert find_job(backend, hidden[:8]).id == hidden  # an id is asked for, too


def test_the_api_the_ui_and_hints_leave_internal_jobs_out(sqlite_server) -> None:
    server, uri = sqlite_server
    with assay.connect(uri, **FAST) as backend:
        hidden = str(uuid.uuid4())
        _insert(backend, hidden, HIDDEN)
        shown = backend.submit("t_sleep", {"seconds": 0})
    with httpx.Client(base_url=server.url, timeout=30) as http:

        def listed(**params: str) -> list[str]:
            return [j["id"] for j in http.get("/api/v1/jobs", params=params).json()["jobs"]]

        assert hidden not in listed()
        assert shown.id in listed()
        assert hidden in listed(include_internal="true")
        assert listed(name=HIDDEN) == [hidden]
        assert listed(id_prefix=hidden[:6], include_internal="true") == [hidden]
        bad = http.get("/api/v1/jobs", params={"id_prefix": "xyz%"})
        assert bad.status_code == 400
        assert "id_prefix" in bad.json()["error"]["message"]

        page = http.get("/ui/jobs").text
        assert f'data-job-id="{shown.id}"' in page
        assert f'data-job-id="{hidden}"' not in page
        assert "assay.scoring" not in page  # not offered in the submit form either
        assert f'data-job-id="{hidden}"' in http.get("/ui/jobs", params={"all": "1"}).text

        # The server registers the online-scoring jobs; a typo is not offered them.
        typo = http.post("/api/v1/jobs", json={"name": "assay.scoring.trace", "params": {}})
        assert typo.status_code == 400
        message = typo.json()["error"]["message"]
        assert "assay." not in message.replace("'assay.scoring.trace'", "")
        assert "t_add" in message.split("(known:")[1]


# -- /docs -----------------------------------------------------------------------------------


def test_docs_and_redoc_load_their_assets_from_the_server(servers: Servers, tmp_path) -> None:
    # With auth on: the pages and their assets are open, as the UI's static files are.
    server = servers.start(f"sqlite:///{tmp_path / 'assay.db'}", "--auth")
    assert httpx.get(f"{server.url}/api/v1/jobs", timeout=30).status_code == 401
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for page in ("/docs", "/redoc"):
            html = http.get(page).text
            assets = re.findall(r'(?:src|href)="([^"]+)"', html)
            assert assets, html
            for asset in assets:
                assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
                answer = http.get(asset)
                assert answer.status_code == 200, asset
                assert len(answer.content) > 1000, asset
            assert "://" not in html.replace("window.location.origin", "")


# -- assay demo --------------------------------------------------------------------------------


def test_demo_without_the_tracing_extra_fails_before_creating_anything(tmp_path) -> None:
    db = tmp_path / "demo.db"
    args = ["demo", "--no-serve", "--store", f"sqlite:///{db}", "--port", "0", "--traces", "5"]
    done = run_without({"opentelemetry"}, "-m", "assay", *args)
    assert done.returncode == 2, done.stderr
    assert "pip install 'assay[tracing]'" in one_error_line(done)
    assert done.stdout == ""
    assert not db.exists()  # no server started, no experiment or scorer created
