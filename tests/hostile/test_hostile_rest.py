"""The REST, MLflow and OTLP APIs under attack from web pages, against real servers.

A server without auth (the loopback default: every caller is an admin) is reachable from any
page the user's browser opens. Two things the app's gate refuses (``assay.server.app.Gate``):

* an unsafe request (POST, PUT, PATCH, DELETE) sent from another origin, e.g. a bodiless
  ``fetch(".../cancel", {method: "POST", mode: "no-cors"})``, or a text/plain or form body:
  403 "cross-site request refused", and nothing changes, as read back through the API. The
  same request from the server's own origin, or from a program (no ``Origin``), works;
* a ``Host`` the server is not known by (DNS rebinding: ``evil.example`` resolving to
  127.0.0.1, so the attacker's Origin and Host agree): 403 "host not allowed" while auth is
  off; with auth on only when ``allowed_hosts`` is set.

And the MLflow routes refuse a nested or long page token and a nested ``model_json`` with a
400 in MLflow's error shape (a 500 before); artifact downloads are ``nosniff``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from assay.db.engine import create_engine
from assay.server.tokens import TokenStore
from support.servers import ServerProcess, Servers, kinds_grouped, module_server

EVIL = "http://evil.example"
REFUSED = "cross-site request refused"
HOST_REFUSED = "host not allowed"
ALLOWED = "assay.internal"
MLFLOW = "/api/2.0/mlflow"
DEEP = 3000
"""Levels of nesting past what ``json.loads`` recurses through (a RecursionError: a 500)."""


@pytest.fixture(scope="module", params=kinds_grouped("rest"))
def open_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server without auth on loopback and without worker loops (jobs stay PENDING), that
    also answers to the name ``assay.internal`` (``allowed_hosts``)."""
    artifacts = tmp_path_factory.mktemp("rest-artifacts")
    with module_server(
        request.param,
        tmp_path_factory,
        "rest",
        "--workers",
        "0",
        allowed_hosts=[ALLOWED],
        artifact_root=str(artifacts),
    ) as server:
        yield server


def _submit(server: ServerProcess) -> str:
    answer = httpx.post(
        f"{server.url}/api/v1/jobs", json={"name": "t_add", "params": {"a": 1, "b": 2}}
    )
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def _status(server: ServerProcess, job_id: str) -> str:
    answer = httpx.get(f"{server.url}/api/v1/jobs/{job_id}", timeout=10)
    assert answer.status_code == 200, answer.text
    status: str = answer.json()["status"]
    return status


def _count(server: ServerProcess, name: str) -> int:
    params: dict[str, str | int] = {"name": name, "limit": 1000}
    answer = httpx.get(f"{server.url}/api/v1/jobs", params=params, timeout=10)
    assert answer.status_code == 200, answer.text
    return len(answer.json()["jobs"])


def _refused_json(answer: httpx.Response, reason: str) -> None:
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["code"] == "permission_denied"
    assert reason in answer.json()["error"]["message"]


def _refused_mlflow(answer: httpx.Response, reason: str) -> None:
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert set(body) == {"error_code", "message"}, body
    assert body["error_code"] == "PERMISSION_DENIED"
    assert reason in body["message"]


def _port(server: ServerProcess) -> int:
    port = urlsplit(server.url).port
    assert port is not None
    return port


# -- cross-site requests -----------------------------------------------------------------------


def test_a_cross_site_cancel_is_refused_and_the_job_stays_queued(
    open_server: ServerProcess,
) -> None:
    job_id = _submit(open_server)
    cancel = f"{open_server.url}/api/v1/jobs/{job_id}/cancel"
    other_port = f"http://127.0.0.1:{_port(open_server) + 1}"
    cross_site = [
        {"Origin": EVIL},
        {"Origin": EVIL, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
        {"Origin": "null"},  # a sandboxed page, or one a redirect went through
        {"Origin": other_port},  # another server on this machine: another origin
        {"Sec-Fetch-Site": "cross-site"},  # a browser that left Origin out
    ]
    for headers in cross_site:
        _refused_json(httpx.post(cancel, headers=headers, timeout=10), REFUSED)
        assert _status(open_server, job_id) == "PENDING", headers
    assert "request.crashed" not in open_server.logs()

    # From one of this server's own pages, the same request works...
    own = {"Origin": open_server.url, "Sec-Fetch-Site": "same-origin"}
    answer = httpx.post(cancel, headers=own, timeout=10)
    assert answer.status_code == 200, answer.text
    assert _status(open_server, job_id) == "CANCELED"
    # ...and from a program, which sends no Origin.
    job_id = _submit(open_server)
    answer = httpx.post(f"{open_server.url}/api/v1/jobs/{job_id}/cancel", timeout=10)
    assert answer.status_code == 200, answer.text
    assert _status(open_server, job_id) == "CANCELED"


def test_cross_site_bodies_are_refused_on_every_api(open_server: ServerProcess) -> None:
    """What a form or ``fetch(…, {mode: "no-cors"})`` can send: text/plain and form bodies,
    on the REST, MLflow and OTLP routes; refused before the body is read."""
    url, name = open_server.url, f"x-{uuid.uuid4().hex[:8]}"
    text = {"Origin": EVIL, "Content-Type": "text/plain"}
    jobs_before = _count(open_server, "t_add")
    submit = '{"name": "t_add", "params": {"a": 1, "b": 2}}'
    _refused_json(httpx.post(f"{url}/api/v1/jobs", content=submit, headers=text), REFUSED)
    form = {"Origin": EVIL}
    _refused_json(httpx.post(f"{url}/api/v1/jobs", data={"name": "t_add"}, headers=form), REFUSED)
    experiment = f'{{"name": "{name}"}}'
    _refused_json(
        httpx.post(f"{url}/api/v1/experiments", content=experiment, headers=text), REFUSED
    )
    assert _count(open_server, "t_add") == jobs_before

    created = httpx.post(f"{url}{MLFLOW}/experiments/create", content=experiment, headers=text)
    _refused_mlflow(created, REFUSED)
    found = httpx.get(f"{url}{MLFLOW}/experiments/get-by-name", params={"experiment_name": name})
    assert found.status_code == 404, found.text
    artifact = f"{url}/api/2.0/mlflow-artifacts/artifacts/0/{name}.html"
    _refused_mlflow(httpx.put(artifact, content=b"<script>", headers=text), REFUSED)
    assert httpx.get(artifact).status_code == 404

    otlp = httpx.post(f"{url}/v1/traces", content="{}", headers={**text, "Origin": "null"})
    assert otlp.status_code == 403, otlp.text
    assert REFUSED in otlp.json()["message"]  # OTLP's google.rpc.Status, as JSON
    assert "request.crashed" not in open_server.logs()


# -- DNS rebinding -------------------------------------------------------------------------------


def test_a_rebinding_host_is_refused_while_auth_is_off(open_server: ServerProcess) -> None:
    """A page at ``http://evil.example:<port>`` whose name now resolves to 127.0.0.1: its
    Origin and Host agree, so only the name gives it away."""
    url, port = open_server.url, _port(open_server)
    job_id = _submit(open_server)
    evil = {"Host": f"evil.example:{port}"}
    _refused_json(httpx.get(f"{url}/api/v1/jobs", headers=evil), HOST_REFUSED)
    same_site = {**evil, "Origin": f"{EVIL}:{port}"}
    cancel = httpx.post(f"{url}/api/v1/jobs/{job_id}/cancel", headers=same_site)
    _refused_json(cancel, HOST_REFUSED)
    assert _status(open_server, job_id) == "PENDING"
    search = httpx.post(f"{url}{MLFLOW}/experiments/search", json={}, headers=evil)
    _refused_mlflow(search, HOST_REFUSED)
    page = httpx.get(f"{url}/ui/jobs", headers=evil)
    assert page.status_code == 403, page.text
    assert HOST_REFUSED in page.text
    _refused_json(httpx.get(f"{url}/health", headers={"Host": "evil.example"}), HOST_REFUSED)

    # The names and addresses the server is known by, with any port or none.
    for host in [f"localhost:{port}", "LOCALHOST", f"127.0.0.2:{port}", f"[::1]:{port}",
                 f"{ALLOWED}:{port}", "10.1.2.3:80"]:  # fmt: skip
        answer = httpx.get(f"{url}/api/v1/jobs/{job_id}", headers={"Host": host})
        assert answer.status_code == 200, (host, answer.text)
    own = {"Host": f"{ALLOWED}:{port}", "Origin": f"http://{ALLOWED}:{port}"}
    answer = httpx.post(f"{url}/api/v1/jobs/{job_id}/cancel", headers=own)
    assert answer.status_code == 200, answer.text
    assert _status(open_server, job_id) == "CANCELED"


def _auth_server(servers: Servers, uri: str, **settings: Any) -> tuple[ServerProcess, str]:
    server = servers.start(uri, "--auth", "--workers", "0", **settings)
    engine = create_engine(uri)
    try:
        _, token = TokenStore(engine).create("root", "admin")
    finally:
        engine.dispose()
    return server, token


def test_with_auth_any_host_unless_allowed_hosts_is_set(servers: Servers, tmp_path: Path) -> None:
    """With auth on, a rebinding page has no token to send: no Host check, unless the
    operator lists the names (then it applies to every caller)."""
    server, token = _auth_server(servers, f"sqlite:///{tmp_path / 'any.db'}")
    bearer = {"Authorization": f"Bearer {token}"}
    evil = {**bearer, "Host": f"evil.example:{_port(server)}"}
    answer = httpx.get(f"{server.url}/api/v1/jobs", headers=evil)
    assert answer.status_code == 200, answer.text
    assert (
        httpx.get(f"{server.url}/api/v1/jobs", headers={"Host": "evil.example"}).status_code == 401
    )

    listed, token = _auth_server(
        servers, f"sqlite:///{tmp_path / 'listed.db'}", allowed_hosts=[ALLOWED, "other.example"]
    )
    bearer = {"Authorization": f"Bearer {token}"}
    evil = {**bearer, "Host": f"evil.example:{_port(listed)}"}
    _refused_json(httpx.get(f"{listed.url}/api/v1/jobs", headers=evil), HOST_REFUSED)
    for host in [ALLOWED, f"OTHER.example:{_port(listed)}", f"127.0.0.1:{_port(listed)}"]:
        answer = httpx.get(f"{listed.url}/api/v1/jobs", headers={**bearer, "Host": host})
        assert answer.status_code == 200, (host, answer.text)


def test_the_public_url_host_is_allowed(servers: Servers, tmp_path: Path) -> None:
    server = servers.start(
        f"sqlite:///{tmp_path / 'pub.db'}", "--workers", "0", public_url="https://assay.example.org"
    )
    answer = httpx.get(f"{server.url}/api/v1/jobs", headers={"Host": "assay.example.org"})
    assert answer.status_code == 200, answer.text
    _refused_json(
        httpx.get(f"{server.url}/api/v1/jobs", headers={"Host": "evil.example.org"}), HOST_REFUSED
    )


# -- MLflow: page tokens, model_json, downloads -------------------------------------------------


def _mlflow_error(answer: httpx.Response, status: int, code: str) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error_code", "message"}, body
    assert body["error_code"] == code
    message: str = body["message"]
    return message


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def test_a_nested_mlflow_page_token_is_400(open_server: ServerProcess) -> None:
    token = _token("[" * DEEP + "]" * DEEP)
    url = f"{open_server.url}{MLFLOW}"
    for path, body in [
        ("/experiments/search", {"page_token": token}),
        ("/runs/search", {"experiment_ids": ["0"], "page_token": token}),
        ("/logged-models/search", {"experiment_ids": ["0"], "page_token": token}),
    ]:
        answer = httpx.post(f"{url}{path}", json=body, timeout=30)
        assert "invalid page_token" in _mlflow_error(answer, 400, "INVALID_PARAMETER_VALUE")
    assert "request.crashed" not in open_server.logs()


def test_log_model_refuses_nested_model_json(open_server: ServerProcess) -> None:
    url = f"{open_server.url}{MLFLOW}"
    created = httpx.post(f"{url}/runs/create", json={"experiment_id": "0"})
    assert created.status_code == 200, created.text
    run_id = created.json()["run"]["info"]["run_id"]
    log_model = f"{url}/runs/log-model"

    deep = "[" * DEEP + "]" * DEEP
    answer = httpx.post(log_model, json={"run_id": run_id, "model_json": deep})
    assert "nests deeper" in _mlflow_error(answer, 400, "INVALID_PARAMETER_VALUE")
    answer = httpx.post(log_model, json={"run_id": run_id, "model_json": '{"a": NaN}'})
    _mlflow_error(answer, 400, "INVALID_PARAMETER_VALUE")
    answer = httpx.post(log_model, json={"run_id": run_id, "model_json": "[" + "1," * 5000 + "1]"})
    assert "character limit" in _mlflow_error(answer, 400, "INVALID_PARAMETER_VALUE")

    # The history tag is anyone's to set: a nested one is started afresh, not a 500.
    tag = {"run_id": run_id, "key": "mlflow.log-model.history", "value": deep}
    assert httpx.post(f"{url}/runs/set-tag", json=tag).status_code == 200
    model = '{"artifact_path": "model", "flavors": {"sklearn": {}}}'
    answer = httpx.post(log_model, json={"run_id": run_id, "model_json": model})
    assert answer.status_code == 200, answer.text
    run = httpx.get(f"{url}/runs/get", params={"run_id": run_id}).json()["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert (
        tags["mlflow.log-model.history"]
        == '[{"artifact_path": "model", "flavors": {"sklearn": {}}}]'
    )
    assert "request.crashed" not in open_server.logs()


def test_artifact_downloads_are_not_sniffed(open_server: ServerProcess) -> None:
    path = f"{open_server.url}/api/2.0/mlflow-artifacts/artifacts/0/{uuid.uuid4().hex}/page.html"
    assert httpx.put(path, content=b"<html><script>alert(1)</script>").status_code == 200
    answer = httpx.get(path)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["x-content-type-options"] == "nosniff"
