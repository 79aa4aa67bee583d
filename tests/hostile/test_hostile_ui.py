"""The web UI under cross-site request forgery, against real servers.

Every state-changing UI route refuses a form sent from another site (``Origin:
http://evil.example``) with a 403 page and changes nothing, as read back through the API; a form
sent with neither Origin nor Referer is refused the same way (the documented rule: fail
closed); the same form from the server's own origin works. The login cookie: HttpOnly,
SameSite=Strict, a Max-Age, and Secure when the page was served over https (through uvicorn's
trusted loopback proxy, ``trust_proxy_headers`` or ``public_url``). Last, real Chromium: a page
on another origin that auto-submits a form to a server without auth queues nothing.
"""

from __future__ import annotations

import http.server
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from assay.config import Settings
from assay.db.engine import create_engine
from assay.scoring.service import BACKFILL_JOB
from assay.server.tokens import TokenStore
from assay.server.ui import experiments, jobs, pages
from assay.server.ui.csrf import SAFE_METHODS
from support.browser import ARGS, CHROMIUM, require_browser
from support.servers import ServerProcess, Servers, kinds_grouped, module_server

EXAMPLES = {"job_modules": ["assay.examples"]}
EVIL = "http://evil.example"
REFUSED = "cross-site request refused"
DAY = {"start": "2000-01-01T00:00", "end": "2100-01-01T00:00"}


@dataclass
class Site:
    """A server with auth and no worker loops (jobs stay PENDING), an admin token and an
    experiment."""

    server: ServerProcess
    token: str
    experiment: str

    def client(self, **headers: str) -> httpx.Client:
        """The UI as a logged-in browser would call it, sending ``headers`` with each form."""
        return httpx.Client(
            base_url=self.server.url,
            headers=headers,
            cookies={"assay_token": self.token},
            timeout=10,
        )

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        auth = {"Authorization": f"Bearer {self.token}"}
        response = httpx.request(
            method, f"{self.server.url}/api/v1{path}", headers=auth, timeout=10, **kwargs
        )
        assert response.is_success, response.text
        return response.json() if response.content else None


def _admin_token(uri: str) -> str:
    engine = create_engine(uri)
    try:
        return TokenStore(engine).create("root", "admin")[1]
    finally:
        engine.dispose()


def _start(servers: Servers, uri: str, **settings: Any) -> tuple[ServerProcess, str]:
    server = servers.start(uri, "--auth", "--workers", "0", **EXAMPLES, **settings)
    return server, _admin_token(uri)


@pytest.fixture(scope="module", params=kinds_grouped("hostile_ui"))
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    with module_server(
        request.param, tmp_path_factory, "hostile_ui", "--auth", "--workers", "0", **EXAMPLES
    ) as server:
        site = Site(server, _admin_token(server.store_uri), "")
        site.experiment = site.api("POST", "/experiments", json={"name": "hostile"})["id"]
        yield site


# -- every state-changing route --------------------------------------------------------------


@dataclass
class Form:
    """One UI form: where it posts, what it sends, and the state it changes (read by the API)."""

    path: str
    data: dict[str, str]
    state: Callable[[], Any]


def _scorer(site: Site) -> tuple[str, str]:
    """A fresh ACTIVE scorer: its name and its UI URL."""
    name = f"s{uuid.uuid4().hex[:8]}"
    spec = {"kind": "output_length", "definition": {"max_chars": 100}}
    site.api("PUT", f"/experiments/{site.experiment}/scorers/{name}", json={"scorer": spec})
    return name, f"/ui/experiments/{site.experiment}/scorers/{name}"


def _scorers(site: Site) -> dict[str, str]:
    """Name -> status of the experiment's scorers."""
    listed = site.api("GET", f"/experiments/{site.experiment}/scorers")["scorers"]
    return {s["name"]: s["status"] for s in listed}


def _count(site: Site, name: str) -> int:
    params = {"name": name, "limit": 1000, "include_internal": "true"}
    return len(site.api("GET", "/jobs", params=params)["jobs"])


def submit_form(site: Site) -> Form:
    return Form(
        "/ui/jobs", {"name": "add", "params": '{"a": 1, "b": 2}'}, lambda: _count(site, "add")
    )


def cancel_form(site: Site) -> Form:
    job = site.api("POST", "/jobs", json={"name": "add", "params": {"a": 1, "b": 2}})["id"]
    return Form(f"/ui/jobs/{job}/cancel", {}, lambda: site.api("GET", f"/jobs/{job}")["status"])


def save_scorer_form(site: Site) -> Form:
    name = f"s{uuid.uuid4().hex[:8]}"
    data = {"name": name, "kind": "output_length", "definition": '{"max_chars": 10}'}
    return Form(f"/ui/experiments/{site.experiment}/scorers", data, lambda: name in _scorers(site))


def status_form(site: Site) -> Form:
    name, url = _scorer(site)
    return Form(f"{url}/status", {"status": "PAUSED"}, lambda: _scorers(site)[name])


def delete_form(site: Site) -> Form:
    name, url = _scorer(site)
    return Form(f"{url}/delete", {}, lambda: name in _scorers(site))


def backfill_form(site: Site) -> Form:
    _, url = _scorer(site)
    data = {**DAY, "dry_run": "false"}
    return Form(f"{url}/backfill", data, lambda: _count(site, BACKFILL_JOB))


FORMS = {
    "/ui/jobs": submit_form,
    "/ui/jobs/{job_id}/cancel": cancel_form,
    "/ui/experiments/{experiment_id}/scorers": save_scorer_form,
    "/ui/experiments/{experiment_id}/scorers/{name}/status": status_form,
    "/ui/experiments/{experiment_id}/scorers/{name}/delete": delete_form,
    "/ui/experiments/{experiment_id}/scorers/{name}/backfill": backfill_form,
}
"""The UI's state-changing routes but login and logout (tested below), with their forms."""


def _unsafe_ui_routes() -> dict[str, set[str]]:
    """Path -> methods other than GET/HEAD of every UI route."""
    routes = [*pages.router.routes, *jobs.router.routes, *experiments.router.routes]
    unsafe = {r.path: set(r.methods) - SAFE_METHODS for r in routes if isinstance(r, APIRoute)}
    return {path: methods for path, methods in unsafe.items() if methods}


def test_every_state_changing_ui_route_is_tested_and_refuses_other_sites(plain: Site) -> None:
    routes = _unsafe_ui_routes()
    assert set(routes) == {*FORMS, "/ui/login", "/ui/logout"}
    with plain.client(Origin=EVIL) as ui:
        for path, methods in routes.items():
            for method in methods:
                _refused(ui.request(method, re.sub(r"\{\w+\}", "x", path)))


def _refused(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert REFUSED in response.text
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("route", sorted(FORMS))
def test_a_cross_site_form_is_refused_and_changes_nothing(site: Site, route: str) -> None:
    form = FORMS[route](site)
    before = form.state()
    cross_site = [{"Origin": EVIL}, {"Referer": f"{EVIL}/page"}, {}, {"Origin": "null"}]
    for headers in cross_site:  # the last two: neither header, a sandboxed page
        with site.client(**headers) as ui:
            _refused(ui.post(form.path, data=form.data))
        assert form.state() == before, headers
    with site.client(Origin=site.server.url) as ui:
        done = ui.post(form.path, data=form.data)
    assert done.status_code in (200, 303), done.text
    assert form.state() != before


def test_a_same_site_referer_is_enough_without_an_origin(site: Site) -> None:
    form = submit_form(site)
    before = form.state()
    with site.client(Referer=f"{site.server.url}/ui/jobs?status=PENDING") as ui:
        assert ui.post(form.path, data=form.data).status_code == 303
    assert form.state() == before + 1


def test_the_rest_api_does_not_accept_the_ui_cookie(site: Site) -> None:
    with site.client(Origin=site.server.url) as ui:
        refused = ui.post("/api/v1/jobs", json={"name": "add", "params": {"a": 1, "b": 2}})
    assert refused.status_code == 401


# -- login and logout ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A server on plain http, no proxy settings, a short session."""
    tmp = tmp_path_factory.mktemp("plain")
    servers = Servers(tmp)
    try:
        server, token = _start(servers, f"sqlite:///{tmp / 'a.db'}", ui_session_max_age_s=90)
        yield Site(server, token, "")
    finally:
        servers.close()


def _login(site: Site, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{site.server.url}/ui/login",
        data={"token": site.token, "next": "/ui/experiments"},
        headers=headers,
        timeout=10,
    )


def _cookie(response: httpx.Response) -> dict[str, str]:
    """The session cookie's attributes (lower-case names; the value under ``assay_token``)."""
    header = response.headers["set-cookie"]
    parts = [part.strip().partition("=") for part in header.split(";")]
    return {name.lower(): value for name, _, value in parts}


def test_login_sets_a_strict_httponly_cookie_with_an_expiry(plain: Site) -> None:
    response = _login(plain, Origin=plain.server.url)
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/experiments"
    cookie = _cookie(response)
    assert cookie["assay_token"] == plain.token
    assert cookie["max-age"] == "90"
    assert cookie["samesite"].lower() == "strict"
    assert "httponly" in cookie
    assert cookie["path"] == "/"
    assert "secure" not in cookie  # plain http: a Secure cookie would never come back
    assert Settings().ui_session_max_age_s == 12 * 3600


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": EVIL},
        {"Referer": f"{EVIL}/login.html"},
        {},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:1"},
        {"Origin": "http://127.0.0.1.evil.example"},
    ],
)
def test_a_cross_site_login_or_logout_is_refused(plain: Site, headers: dict[str, str]) -> None:
    _refused(_login(plain, **headers))
    with plain.client(**headers) as ui:
        _refused(ui.post("/ui/logout"))
        assert ui.get("/ui/experiments").status_code == 200  # still logged in


def test_logout_clears_the_cookie(plain: Site) -> None:
    same_site = {"Origin": plain.server.url}
    with httpx.Client(base_url=plain.server.url, headers=same_site, timeout=10) as ui:
        assert ui.post("/ui/login", data={"token": plain.token}).status_code == 303
        assert ui.get("/ui/experiments").status_code == 200
        response = ui.post("/ui/logout")
        assert response.status_code == 303
        cookie = _cookie(response)
        assert cookie["assay_token"] in ("", '""')
        assert cookie["max-age"] == "0"
        later = ui.get("/ui/experiments")
    assert later.status_code == 303
    assert later.headers["location"].startswith("/ui/login")


def test_over_https_the_cookie_is_secure(plain: Site) -> None:
    """uvicorn applies X-Forwarded-Proto from loopback peers (its FORWARDED_ALLOW_IPS), as a
    TLS-terminating proxy on the same host sends it: the page's origin is then https."""
    https = plain.server.url.replace("http://", "https://")
    response = _login(plain, Origin=https, **{"X-Forwarded-Proto": "https"})
    assert response.status_code == 303, response.text
    assert "secure" in _cookie(response)
    # Without the header the server is on http, and an https page is another origin.
    _refused(_login(plain, Origin=https))


PROXIED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "proxy.example.com"}


def test_forwarded_hosts_count_only_when_the_settings_trust_proxies(
    plain: Site, servers: Servers, tmp_path: Path
) -> None:
    _refused(_login(plain, Origin="https://proxy.example.com", **PROXIED))
    server, token = _start(
        servers,
        f"sqlite:///{tmp_path / 'proxied.db'}",
        trust_proxy_headers=True,
        public_url="https://public.example.com",
    )
    proxied = Site(server, token, "")
    behind = _login(proxied, Origin="https://proxy.example.com", **PROXIED)
    assert behind.status_code == 303, behind.text
    assert "secure" in _cookie(behind)
    public = _login(proxied, Origin="https://public.example.com")
    assert public.status_code == 303, public.text
    assert "secure" in _cookie(public)
    direct = _login(proxied, Origin=server.url)
    assert direct.status_code == 303, direct.text
    assert "secure" not in _cookie(direct)
    _refused(_login(proxied, Origin="https://proxy.example.com"))  # no header, no proxy


@pytest.mark.parametrize("target", ["//evil.example/", "/\\evil.example/", "/\t/evil.example/"])
def test_login_redirects_only_within_the_site(plain: Site, target: str) -> None:
    response = httpx.post(
        f"{plain.server.url}/ui/login",
        data={"token": plain.token, "next": target},
        headers={"Origin": plain.server.url},
        timeout=10,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/jobs"


# -- in a real browser -----------------------------------------------------------------------


class _Attacker(http.server.BaseHTTPRequestHandler):
    """Serves a page that posts a job-submit form to ``target`` as soon as it loads."""

    target = ""

    def do_GET(self) -> None:
        body = (
            f'<form id="f" method="post" action="{self.target}/ui/jobs">'
            '<input name="name" value="add"><input name="params" value=\'{"a": 1, "b": 2}\'>'
            '</form><script>document.getElementById("f").submit()</script>'
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.xdist_group("browser")
def test_a_page_on_another_origin_cannot_submit_a_job(servers: Servers, tmp_path: Path) -> None:
    """The default local set-up (auth off on loopback, every caller admin) is the one a
    cross-site form could use with no cookie at all: real Chromium, a real attacker page."""
    require_browser()
    from playwright.sync_api import sync_playwright

    server = servers.start(f"sqlite:///{tmp_path / 'b.db'}", "--workers", "0", **EXAMPLES)
    handler = type("Attacker", (_Attacker,), {"target": server.url})
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                page = browser.new_page()
                # localhost, not 127.0.0.1: another site, not merely another port
                page.goto(f"http://localhost:{attacker.server_port}/")
                page.wait_for_url(re.compile(re.escape(server.url) + "/ui/jobs$"))
                page.get_by_text(REFUSED).wait_for(timeout=15_000)
                # The same form from the server's own page works.
                page.goto(f"{server.url}/ui/jobs")
                page.select_option("#submit-name", "add")
                page.fill("#submit-params", '{"a": 1, "b": 2}')
                page.click("#submit-button")
                page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
            finally:
                browser.close()
    finally:
        attacker.shutdown()
        attacker.server_close()
    jobs = httpx.get(f"{server.url}/api/v1/jobs", params={"name": "add"}, timeout=10).json()
    assert len(jobs["jobs"]) == 1  # only the one from the server's own page
