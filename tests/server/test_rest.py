"""The REST contract of docs/contract.md on every store: against the server's app in this
process (its lifespan, worker loops and all), and against a real `assay server` where a socket
matters."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import httpx
import pytest

from assay.util import GC_YOUNG_THRESHOLD
from support.jobs import JOB_KEYS
from support.servers import InProcessServers, Servers
from support.timing import wait_until


def _api(server: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return server.request(method, f"/api/v1{path}", **kwargs)


def _error(response: httpx.Response, status: int) -> str:
    """The response is ``status`` with the one error shape; returns its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    message: str = body["error"]["message"]
    return message


def _wait_status(server: httpx.Client, job_id: str, *statuses: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = _api(server, "GET", f"/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    result: dict[str, Any] = wait_until(done, timeout=20)
    return result


def test_submit_get_and_finish(api: httpx.Client) -> None:
    created = _api(api, "POST", "/jobs", json={"name": "t_add", "params": {"a": 2, "b": 3}})
    assert created.status_code == 201, created.text
    job = created.json()
    assert list(job) == JOB_KEYS
    assert job["status"] in ("PENDING", "RUNNING", "SUCCEEDED")
    assert job["params"] == {"a": 2, "b": 3}
    assert job["created_at"].endswith("Z")
    done = _wait_status(api, job["id"], "SUCCEEDED")
    assert done["result"] == 5
    assert done["attempt"] == 1
    assert done["started_at"] is not None
    assert done["finished_at"] is not None
    assert done["worker_id"]


def test_submit_with_timeout_times_out(api: httpx.Client) -> None:
    body = {"name": "t_sleep", "params": {"seconds": 30}, "timeout": 0.5}
    job = _api(api, "POST", "/jobs", json=body).json()
    assert job["timeout"] == 0.5
    assert _wait_status(api, job["id"], "TIMEOUT")["status"] == "TIMEOUT"


def test_search_filters_and_pages(apps: InProcessServers, store_uri: str) -> None:
    server = apps.start(store_uri, workers=0)
    ids = [
        _api(server, "POST", "/jobs", json={"name": "t_add", "params": {"a": i, "b": 0}}).json()[
            "id"
        ]
        for i in range(7)
    ]
    noop = _api(server, "POST", "/jobs", json={"name": "t_noop"}).json()["id"]
    cancelled = _api(server, "POST", f"/jobs/{ids[0]}/cancel").json()
    assert cancelled["status"] == "CANCELED"

    seen: list[str] = []
    token = None
    while True:
        params: dict[str, Any] = {"name": "t_add", "limit": 3}
        if token:
            params["page_token"] = token
        page = _api(server, "GET", "/jobs", params=params).json()
        assert len(page["jobs"]) <= 3
        seen += [j["id"] for j in page["jobs"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == list(reversed(ids))  # newest first, every job exactly once

    pending = _api(server, "GET", "/jobs", params={"status": "PENDING"}).json()["jobs"]
    assert {j["id"] for j in pending} == {*ids[1:], noop}
    both = _api(server, "GET", "/jobs", params=[("status", "CANCELED"), ("name", "t_add")])
    assert [j["id"] for j in both.json()["jobs"]] == [ids[0]]
    names = _api(server, "GET", "/jobs", params=[("name", "t_noop"), ("name", "t_add")])
    assert len(names.json()["jobs"]) == 8


def test_cancel_pending_running_and_finished(api: httpx.Client) -> None:
    running = _api(api, "POST", "/jobs", json={"name": "t_sleep", "params": {"seconds": 60}})
    job_id = running.json()["id"]
    _wait_status(api, job_id, "RUNNING")
    cancelled = _api(api, "POST", f"/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELED"
    assert _wait_status(api, job_id, "CANCELED")["finished_at"] is not None

    done = _api(api, "POST", "/jobs", json={"name": "t_noop"}).json()
    _wait_status(api, done["id"], "SUCCEEDED")
    again = _api(api, "POST", f"/jobs/{done['id']}/cancel")
    assert again.status_code == 200
    assert again.json()["status"] == "SUCCEEDED"  # a finished job is returned unchanged


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_bad_input_is_4xx_naming_the_problem(apps: InProcessServers, store_uri: str) -> None:
    server = apps.start(store_uri, workers=0, max_params_bytes=1000)
    message = _error(_api(server, "POST", "/jobs", json={"name": "t_addd"}), 400)
    assert "t_addd" in message
    assert "t_add" in message  # did you mean
    message = _error(_api(server, "POST", "/jobs", json={"name": "t_add", "params": {}}), 400)
    assert "'a'" in message
    message = _error(
        _api(server, "POST", "/jobs", json={"name": "t_add", "params": {"a": 1, "b": 2, "c": 3}}),
        400,
    )
    assert "'c'" in message
    big = {"name": "t_record", "params": {"path": "/dev/null", "tag": "x" * 2000}}
    assert "max_params_bytes" in _error(_api(server, "POST", "/jobs", json=big), 400)
    assert "timeout" in _error(
        _api(server, "POST", "/jobs", json={"name": "t_noop", "timeout": -1}), 422
    )
    assert "colour" in _error(
        _api(server, "POST", "/jobs", json={"name": "t_noop", "colour": "red"}), 422
    )
    _error(
        _api(
            server,
            "POST",
            "/jobs",
            content=b"{not json",
            headers={"content-type": "application/json"},
        ),
        422,
    )
    _error(_api(server, "POST", "/jobs", json=[1, 2]), 422)
    assert "nope" in _error(_api(server, "GET", "/jobs/nope"), 404)
    _error(_api(server, "POST", "/jobs/nope/cancel"), 404)
    assert "status" in _error(_api(server, "GET", "/jobs", params={"status": "DONE"}), 422)
    assert "limit" in _error(_api(server, "GET", "/jobs", params={"limit": 0}), 422)
    assert "page_token" in _error(_api(server, "GET", "/jobs", params={"page_token": "x"}), 400)
    _error(_api(server, "DELETE", "/jobs"), 405)
    _error(server.get("/no/such/route"), 404)


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_request_and_result_size_limits(servers: Servers, store_uri: str, tmp_path: Path) -> None:
    """On a real server: the request limit applies to a body read from a socket, streamed."""
    started = servers.start(store_uri, max_request_bytes=4096, max_result_bytes=100)
    with httpx.Client(base_url=started.url, timeout=10) as server:
        huge = b'{"name": "t_noop", "params": {"x": "' + b"y" * 10_000 + b'"}}'
        headers = {"content-type": "application/json"}
        message = _error(_api(server, "POST", "/jobs", content=huge, headers=headers), 413)
        assert "max_request_bytes" in message

        def chunks() -> Any:  # no Content-Length: the limit applies while reading
            yield huge[:3000]
            yield huge[3000:]

        _error(_api(server, "POST", "/jobs", content=chunks(), headers=headers), 413)

        body = {"name": "t_record", "params": {"path": str(tmp_path / "rec"), "tag": "z" * 200}}
        job = _api(server, "POST", "/jobs", json=body).json()
        failed = _wait_status(server, job["id"], "FAILED")
        assert "max_result_bytes" in failed["error"]
        assert failed["result"] is None


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)  # the process, not the store
def test_serving_tunes_the_garbage_collector_and_stopping_restores_it(
    apps: InProcessServers, store_uri: str
) -> None:
    """While an app serves, what start-up made is frozen out of the collector's sight and the
    youngest generation is collected less often (the ingest's CPU, bench/README.md); once it
    stops, the process's collector is as it was."""
    before = gc.get_threshold()
    apps.start(store_uri, workers=0)
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    assert gc.get_freeze_count() > 10_000
    apps.close()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_openapi_docs_and_health(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"post", "get"} <= set(paths["/api/v1/jobs"])
    assert "get" in paths["/api/v1/jobs/{job_id}"]
    assert "post" in paths["/api/v1/jobs/{job_id}/cancel"]
    assert api.get("/docs").status_code == 200
    health = api.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["checks"]["database"] == "ok"
