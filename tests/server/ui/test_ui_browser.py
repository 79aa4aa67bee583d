"""The web UI in a real browser: Playwright drives Debian's Chromium (headless) against a real
`assay server`. Opens every page, submits and cancels a job, sets a trace filter, watches an
assessment appear, and logs in with a token when auth is on.

Screenshots of each page go to ``ASSAY_SCREENSHOT_DIR`` (``make screenshots`` points it at
docs/screenshots/, which the README shows); by default to the test's temp dir.

Needs the ``playwright`` package (in the dev extra) and ``/usr/bin/chromium`` (Debian's
``chromium`` package; `.ci/run` installs it). Without them the tests skip with the reason, or
fail when ASSAY_TEST_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.browser import ARGS, CHROMIUM, require_browser
from support.servers import ServerProcess, Servers
from support.traces import build_agent, export, hex_trace_id, record

pytestmark = pytest.mark.xdist_group("browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("ASSAY_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def _experiment_with_traces(server: ServerProcess, traces: int) -> tuple[str, list[str]]:
    """An experiment with a heuristic scorer and ``traces`` traces sent over OTLP."""
    with httpx.Client(base_url=server.url, timeout=10) as http:
        experiment = http.post("/api/v1/experiments", json={"name": "support-bot"}).json()["id"]
        put = http.put(
            f"/api/v1/experiments/{experiment}/scorers/concise",
            json={"scorer": {"kind": "output_length", "definition": {"max_chars": 5000}}},
        )
        assert put.status_code == 200, put.text
    return experiment, [_send_trace(server, experiment) for _ in range(traces)]


def _send_trace(server: ServerProcess, experiment: str) -> str:
    spans = record(experiment, build_agent)
    export(server, spans)
    return hex_trace_id(spans[0])


def test_every_page_and_the_main_flows(servers: Servers, tmp_path: Path, page: Any, shots: Path):
    server = servers.start(
        f"sqlite:///{tmp_path / 'ui.db'}", job_modules=["assay.examples"], scoring_interval_s=0.2
    )
    experiment, trace_ids = _experiment_with_traces(server, 2)

    # Jobs: submit one from the form; it runs and its page shows it.
    page.goto(f"{server.url}/")
    page.wait_for_url(re.compile(r"/ui/jobs"))
    page.select_option("#submit-name", "add")
    page.fill("#submit-params", '{"a": 2, "b": 3}')
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
    page.locator("#job-status", has_text="SUCCEEDED").wait_for()
    assert "5" in page.inner_text("#job-result")
    page.screenshot(path=str(shots / "job.png"), full_page=True)

    # A long job, cancelled from its page.
    page.goto(f"{server.url}/ui/jobs")
    page.select_option("#submit-name", "count_to")
    page.fill("#submit-params", '{"n": 300}')
    page.click("#submit-button")
    page.locator("#job-status", has_text="RUNNING").wait_for()
    page.click("#cancel-button")
    page.locator("#job-status", has_text="CANCELED").wait_for()

    page.goto(f"{server.url}/ui/jobs")
    page.locator("tr[data-job-id]").first.wait_for()
    page.screenshot(path=str(shots / "jobs.png"), full_page=True)

    # Experiments -> traces: the table is live. A trace sent while the page is open appears,
    # and then its scorer's column fills in once online scoring ran, without a reload.
    page.goto(f"{server.url}/ui/experiments")
    page.click(f"a[href='/ui/experiments/{experiment}']")
    page.wait_for_url(re.compile(rf"/ui/experiments/{experiment}$"))
    page.locator(f"tr[data-trace-id='{trace_ids[0]}']").wait_for()
    page.evaluate("window.sameDocument = true")
    trace_ids.insert(0, _send_trace(server, experiment))
    cell = page.locator(f"tr[data-trace-id='{trace_ids[0]}'] td[data-scorer='concise']")
    cell.filter(has_text=re.compile("true", re.IGNORECASE)).wait_for(timeout=30_000)
    assert page.evaluate("window.sameDocument") is True
    page.screenshot(path=str(shots / "traces.png"), full_page=True)

    # A bad filter is shown inline; a good one narrows the table.
    page.fill("#filter", "trace.status = ")
    page.click("#filter-apply")
    page.locator("#filter-error").wait_for()
    assert "position" in page.inner_text("#filter-error")
    page.fill("#filter", f"trace.trace_id = '{trace_ids[1]}'")
    page.click("#filter-apply")
    page.locator(f"tr[data-trace-id='{trace_ids[1]}']").wait_for()
    assert page.locator("tr[data-trace-id]").count() == 1

    # The trace page: span tree, assessment, decision log.
    page.goto(f"{server.url}/ui/traces/{trace_ids[0]}")
    page.locator("#span-tree").wait_for()
    assert "concise" in page.inner_text("#assessments")
    assert "done" in page.inner_text("#decision-log")
    page.screenshot(path=str(shots / "trace.png"), full_page=True)

    # Scorers: add one from the form, see it listed; a bad definition is refused inline.
    page.goto(f"{server.url}/ui/experiments/{experiment}/scorers")
    page.fill("#scorer-name", "no_sorry")
    page.select_option("#scorer-kind", "keywords")
    page.fill("#scorer-definition", '{"keywords": ["sorry"], "mode": "none"}')
    page.fill("#scorer-rate", "0.5")
    page.click("#scorer-save")
    page.locator("tr[data-scorer='no_sorry']").wait_for()
    page.fill("#scorer-name", "broken")
    page.select_option("#scorer-kind", "regex")
    page.fill("#scorer-definition", '{"pattern": "("}')
    page.click("#scorer-save")
    page.locator("#scorer-error").wait_for()
    page.screenshot(path=str(shots / "scorers.png"), full_page=True)


def test_login_with_a_token_when_auth_is_on(servers: Servers, tmp_path: Path, page: Any):
    uri = f"sqlite:///{tmp_path / 'auth.db'}"
    server = servers.start(uri, "--auth")
    token = _admin_token(uri)
    page.goto(f"{server.url}/ui/jobs")
    page.wait_for_url(re.compile(r"/ui/login"))
    page.fill("input[name=token]", "not-a-token")
    page.click("form[action='/ui/login'] button")
    page.locator(".error").wait_for()
    page.fill("input[name=token]", token)
    page.click("form[action='/ui/login'] button")
    page.wait_for_url(re.compile(r"/ui/jobs$"))
    page.locator("#submit-name").wait_for()


def _admin_token(uri: str) -> str:
    import assay
    from assay.server.tokens import TokenStore

    engine = assay.db.create_engine(uri)
    try:
        _, plaintext = TokenStore(engine).create("ui-admin", "admin")
        return plaintext
    finally:
        engine.dispose()
