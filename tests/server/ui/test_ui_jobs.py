"""The jobs pages of the web UI, against a real server (SQLite, one worker loop, the example
jobs of :mod:`assay.examples`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import assay
from assay.db.engine import create_engine
from assay.jobs.model import JobStatus
from assay.server.tokens import TokenStore
from support.jobs import FAST
from support.servers import ServerProcess, Servers
from support.timing import wait_until

EXAMPLES = {"job_modules": ["assay.examples"]}
FRAGMENT = {"X-Fragment": "1"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerProcess]]:
    """One server for the module's tests without auth (each starts its own jobs)."""
    tmp = tmp_path_factory.mktemp("ui_jobs")
    uri = f"sqlite:///{tmp / 'assay.db'}"
    started = Servers(tmp)
    try:
        yield uri, started.start(uri, **EXAMPLES)
    finally:
        started.close()


@pytest.fixture
def ui(store: tuple[str, ServerProcess]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=store[1].url, headers=same_site(store[1]), timeout=10) as client:
        yield client


def submit(ui: httpx.Client, name: str, params: str = "{}", timeout: str = "") -> str:
    """Submit through the form; the new job's id, from the redirect to its page."""
    response = ui.post("/ui/jobs", data={"name": name, "params": params, "timeout": timeout})
    assert response.status_code == 303, response.text
    match = re.fullmatch(r"/ui/jobs/([0-9a-f-]{36})", response.headers["location"])
    assert match, response.headers["location"]
    return match.group(1)


def live_status(ui: httpx.Client, job_id: str) -> str:
    """The status the job page's live fragment shows."""
    response = ui.get(f"/ui/jobs/{job_id}", headers=FRAGMENT)
    assert response.status_code == 200
    match = re.search(r'id="job-status"[^>]*>(\w+)<', response.text)
    assert match, response.text
    return match.group(1)


def same_site(server: ServerProcess) -> dict[str, str]:
    """The header a browser sends with a form of the server's own pages (the CSRF check)."""
    return {"Origin": server.url}


def row_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-job-id="([^"]+)"', html)


def test_list_page_has_filters_submit_form_and_live_table(ui: httpx.Client) -> None:
    page = ui.get("/ui/jobs")
    assert page.status_code == 200
    for element_id in (
        "job-filter-name",
        "job-filter-status",
        "job-filter-apply",
        "submit-name",
        "submit-params",
        "submit-timeout",
        "submit-button",
    ):
        assert f'id="{element_id}"' in page.text, element_id
    for status in JobStatus:
        assert f'<option value="{status.value}"' in page.text
    for name in ("add", "count_to", "noop"):  # the anonymous admin may submit every job
        assert f'<option value="{name}"' in page.text
    assert 'data-refresh="/ui/jobs" data-every="2"' in page.text
    fragment = ui.get("/ui/jobs", headers=FRAGMENT)
    assert fragment.status_code == 200
    assert fragment.text.startswith('<section id="jobs-live"')
    assert "<html" not in fragment.text


def test_submit_runs_the_job_and_its_page_shows_the_result(ui: httpx.Client) -> None:
    job_id = submit(ui, "add", '{"a": 2, "b": 40}')
    wait_until(lambda: live_status(ui, job_id) == "SUCCEEDED")
    page = ui.get(f"/ui/jobs/{job_id}")
    assert page.status_code == 200
    assert '<pre id="job-params">{\n  &#34;a&#34;: 2,\n  &#34;b&#34;: 40\n}</pre>' in page.text
    assert re.search(r'<pre id="job-result">42(\.0)?</pre>', page.text)
    assert 'id="cancel-button"' not in page.text  # finished: nothing to cancel...
    assert "data-refresh" not in page.text  # ...and nothing left to refresh
    listed = ui.get("/ui/jobs")
    assert job_id in row_ids(listed.text)
    assert f'href="/ui/jobs/{job_id}"' in listed.text
    assert 'class="status status-SUCCEEDED"' in listed.text


def test_filters_by_name_and_status_and_keep_them_in_the_refresh(ui: httpx.Client) -> None:
    noop = submit(ui, "noop")
    add = submit(ui, "add", '{"a": 1, "b": 1}')
    for job_id in (noop, add):
        wait_until(lambda job_id=job_id: live_status(ui, job_id) == "SUCCEEDED")
    by_name = ui.get("/ui/jobs", params={"name": "noop", "status": "SUCCEEDED"})
    assert by_name.status_code == 200
    assert noop in row_ids(by_name.text)
    assert add not in row_ids(by_name.text)
    assert '<option value="SUCCEEDED" selected>' in by_name.text
    assert 'value="noop"' in by_name.text
    refresh = 'data-refresh="/ui/jobs?name=noop&amp;status=SUCCEEDED"'
    assert refresh in by_name.text
    fragment = ui.get("/ui/jobs?name=noop&status=SUCCEEDED", headers=FRAGMENT)
    assert refresh in fragment.text
    assert noop in row_ids(fragment.text)
    assert row_ids(ui.get("/ui/jobs", params={"name": "noop", "status": "FAILED"}).text) == []
    bad = ui.get("/ui/jobs", params={"status": "DONE"})
    assert bad.status_code == 400
    assert '<p class="error" role="alert">unknown status' in bad.text


def test_the_list_pages_by_fifty_newest_first(store: tuple[str, ServerProcess]) -> None:
    uri, server = store
    with assay.connect(uri, **{**FAST, **EXAMPLES}) as backend:
        submitted = [j.id for j in backend.submit_many("flaky", [{"fail_times": 0}] * 55)]
    with httpx.Client(base_url=server.url, headers=same_site(server), timeout=10) as ui:
        first = ui.get("/ui/jobs", params={"name": "flaky"})
        next_url = re.search(r'id="jobs-next-page" href="([^"]+)"', first.text)
        assert next_url, first.text
        second = ui.get(next_url.group(1).replace("&amp;", "&"))
    assert second.status_code == 200
    assert 'data-refresh="/ui/jobs?name=flaky&amp;page_token=' in second.text
    assert len(row_ids(first.text)) == 50
    # One transaction: the same creation time, so only the set is fixed, split 50 + 5.
    assert len(row_ids(second.text)) == 5
    assert set(row_ids(first.text) + row_ids(second.text)) == set(submitted)
    assert 'id="jobs-next-page"' not in second.text


@pytest.mark.parametrize(
    ("name", "params", "timeout", "message"),
    [
        ("add", '{"a": 1,', "", "params are not valid JSON"),
        ("add", "[1, 2]", "", "params must be a JSON object"),
        ("add", '{"a": NaN, "b": 1}', "", "NaN is not a JSON number"),
        ("add", '{"a": 1}', "", "missing a required argument"),
        ("ad", '{"a": 1, "b": 2}', "", "unknown job &#39;ad&#39;; did you mean &#39;add&#39;?"),
        ("add", '{"a": 1, "b": 2}', "soon", "timeout must be a number of seconds"),
        ("add", '{"a": 1, "b": 2}', "-5", "timeout must be a positive number"),
    ],
)
def test_bad_submissions_show_the_form_again_with_the_error(
    store: tuple[str, ServerProcess], name: str, params: str, timeout: str, message: str
) -> None:
    uri, server = store
    with assay.connect(uri, **{**FAST, **EXAMPLES}) as backend:
        before = len(backend.search(limit=1000).jobs)
        response = httpx.post(
            f"{server.url}/ui/jobs",
            data={"name": name, "params": params, "timeout": timeout},
            headers=same_site(server),
            timeout=10,
        )
        assert len(backend.search(limit=1000).jobs) == before  # nothing was queued
    assert response.status_code == 400
    error = re.search(r'<p class="error" role="alert">([^<]*)</p>', response.text)
    assert error, response.text
    assert message in error.group(1)
    escaped = params.replace('"', "&#34;")
    assert f'<textarea id="submit-params" name="params" rows="4" spellcheck="false">{escaped}<' in (
        response.text
    )
    assert f'id="submit-timeout" name="timeout" value="{timeout}"' in response.text
    if name == "add":
        assert '<option value="add" selected>' in response.text


def test_cancel_stops_a_running_job(ui: httpx.Client) -> None:
    job_id = submit(ui, "count_to", '{"n": 1000, "delay_s": 0.02}', timeout="60")
    wait_until(lambda: 'id="job-progress"' in ui.get(f"/ui/jobs/{job_id}", headers=FRAGMENT).text)
    running = ui.get(f"/ui/jobs/{job_id}", headers=FRAGMENT).text
    assert f'data-refresh="/ui/jobs/{job_id}" data-every="1"' in running
    assert 'id="cancel-button"' in running
    assert re.search(r"counted to \d+", running)
    page = ui.get(f"/ui/jobs/{job_id}").text
    assert "<dd>60.0 s</dd>" in page  # the timeout given

    response = ui.post(f"/ui/jobs/{job_id}/cancel")
    assert response.status_code == 303
    assert response.headers["location"] == f"/ui/jobs/{job_id}"
    wait_until(lambda: live_status(ui, job_id) == "CANCELED")
    done = ui.get(f"/ui/jobs/{job_id}", headers=FRAGMENT).text
    assert 'id="cancel-button"' not in done
    assert "data-refresh" not in done
    assert '<pre id="job-error" class="error">' in done
    again = ui.post(f"/ui/jobs/{job_id}/cancel")  # a finished job is left as it is
    assert again.status_code == 303
    assert live_status(ui, job_id) == "CANCELED"


def test_an_unknown_job_is_a_404_page(ui: httpx.Client) -> None:
    for response in (
        ui.get("/ui/jobs/no-such-job"),
        ui.get("/ui/jobs/no-such-job", headers=FRAGMENT),
        ui.post("/ui/jobs/no-such-job/cancel"),
    ):
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/html")
        assert '<p class="error" role="alert">job &#39;no-such-job&#39; not found</p>' in (
            response.text
        )


def test_with_auth_the_pages_need_a_login_and_users_see_their_own_jobs(
    servers: Servers, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'auth.db'}"
    server = servers.start(uri, "--auth", "--workers", "0", **EXAMPLES)
    engine = create_engine(uri)
    try:
        _, admin = TokenStore(engine).create("root", "admin")
        _, alice = TokenStore(engine).create("alice", "user")
    finally:
        engine.dispose()
    api = httpx.post(
        f"{server.url}/api/v1/jobs",
        json={"name": "noop", "params": {}},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert api.status_code == 201
    admins_job = api.json()["id"]

    with httpx.Client(base_url=server.url, headers=same_site(server), timeout=10) as ui:
        anonymous = ui.get("/ui/jobs")
        assert anonymous.status_code == 303
        assert anonymous.headers["location"].startswith("/ui/login")
        assert ui.get(f"/ui/jobs/{admins_job}").status_code == 303
        assert ui.post("/ui/jobs", data={"name": "noop"}).status_code == 303
        assert ui.post(f"/ui/jobs/{admins_job}/cancel").status_code == 303

        wrong = ui.post("/ui/login", data={"token": "assay_" + "x" * 43})
        assert wrong.status_code == 401
        assert "assay_token" not in wrong.cookies
        login = ui.post("/ui/login", data={"token": alice, "next": "/ui/jobs"})
        assert login.status_code == 303
        assert login.headers["location"] == "/ui/jobs"
        assert login.cookies["assay_token"] == alice

        own = ui.get("/ui/jobs")
        assert own.status_code == 200
        assert admins_job not in row_ids(own.text)  # a user lists its own jobs only
        assert "There are no jobs you may submit." in own.text  # no example job is public
        assert ui.get(f"/ui/jobs/{admins_job}").status_code == 404
        assert ui.post(f"/ui/jobs/{admins_job}/cancel").status_code == 404
        refused = ui.post("/ui/jobs", data={"name": "noop", "params": "{}"})
        assert refused.status_code == 403
        assert '<p class="error" role="alert">job &#39;noop&#39; is not public' in refused.text

    with httpx.Client(base_url=server.url, headers=same_site(server), timeout=10) as ui:
        assert ui.post("/ui/login", data={"token": admin}).status_code == 303
        listed = ui.get("/ui/jobs")
        assert row_ids(listed.text) == [admins_job]
        assert "<td>root</td>" in listed.text
        assert 'id="cancel-button"' in ui.get(f"/ui/jobs/{admins_job}").text  # still PENDING
