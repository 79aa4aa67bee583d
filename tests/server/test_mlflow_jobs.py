"""MLflow's jobs API (``/ajax-api/3.0/jobs``) on a real ``assay server``: submit, get,
cancel and search with MLflow's field names and statuses. Requests are built, and answers
parsed, with the ``mlflow`` package's own models of that API (its server's pydantic models),
so a field MLflow renames is caught here; each job is checked in assay's own API too.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytest.importorskip("mlflow")

from mlflow.server.job_api import (
    Job,
    SearchJobPayload,
    SearchJobsResponse,
    SubmitJobPayload,
)

from support.servers import ServerProcess
from support.timing import wait_until

JOBS = "/ajax-api/3.0/jobs"
FINAL = ("SUCCEEDED", "FAILED", "TIMEOUT", "CANCELED")


def _submit(server: ServerProcess, name: str, params: dict[str, Any], **kw: Any) -> Job:
    payload = SubmitJobPayload(job_name=name, params=params, **kw)
    answer = httpx.post(f"{server.url}{JOBS}/", json=payload.model_dump(), timeout=30)
    assert answer.status_code == 200, answer.text
    return Job.model_validate(answer.json())


def _get(server: ServerProcess, job_id: str) -> Job:
    answer = httpx.get(f"{server.url}{JOBS}/{job_id}", timeout=30)
    assert answer.status_code == 200, answer.text
    return Job.model_validate(answer.json())


def _search(server: ServerProcess, **filters: Any) -> list[Job]:
    payload = SearchJobPayload(**filters).model_dump(mode="json", exclude_none=True)
    answer = httpx.post(f"{server.url}{JOBS}/search", json=payload, timeout=30)
    assert answer.status_code == 200, answer.text
    return SearchJobsResponse.model_validate(answer.json()).jobs


def _status(job: Job) -> str:
    return str(job.status.value)


def test_submit_get_cancel_search(server: ServerProcess):
    first = _submit(server, "t_add", {"a": 2, "b": 3}, timeout=30)
    assert (first.job_name, first.params, first.timeout) == ("t_add", {"a": 2, "b": 3}, 30)
    assert _status(first) in ("PENDING", "RUNNING", "SUCCEEDED")
    assert first.retry_count == 0
    assert first.creation_time > 0

    done = wait_until(lambda: (j := _get(server, first.job_id)) and _status(j) in FINAL and j)
    assert _status(done) == "SUCCEEDED"
    assert done.result == 5
    assert done.error_message is None
    assert done.last_update_time >= done.creation_time
    # The same job, seen through assay's own API.
    own = httpx.get(f"{server.url}/api/v1/jobs/{first.job_id}", timeout=30).json()
    assert (own["name"], own["params"], own["status"], own["result"], own["timeout"]) == (
        "t_add",
        {"a": 2, "b": 3},
        "SUCCEEDED",
        5,
        30.0,
    )

    second = _submit(server, "t_add", {"a": 2, "b": 40})
    wait_until(lambda: _status(_get(server, second.job_id)) == "SUCCEEDED")
    sleeper = _submit(server, "t_sleep", {"seconds": 120})
    wait_until(lambda: _status(_get(server, sleeper.job_id)) == "RUNNING", timeout=60)
    answer = httpx.patch(f"{server.url}{JOBS}/cancel/{sleeper.job_id}", timeout=30)
    assert answer.status_code == 200, answer.text
    assert Job.model_validate(answer.json()).job_id == sleeper.job_id
    canceled = wait_until(
        lambda: (j := _get(server, sleeper.job_id)) and _status(j) == "CANCELED" and j, timeout=60
    )
    assert canceled.error_message
    own = httpx.get(f"{server.url}/api/v1/jobs/{sleeper.job_id}", timeout=30).json()
    assert own["status"] == "CANCELED"

    # Search: every match, oldest first; params match jobs holding those keys and values.
    ids = [j.job_id for j in _search(server, job_name="t_add")]
    assert ids == [first.job_id, second.job_id]
    assert [j.job_id for j in _search(server, job_name="t_add", params={"b": 40})] == [
        second.job_id
    ]
    assert _search(server, job_name="t_add", params={"c": 1}) == []
    assert [j.job_id for j in _search(server, statuses=["CANCELED"])] == [sleeper.job_id]
    succeeded = _search(server, statuses=["SUCCEEDED", "TIMEOUT"])
    assert [j.job_id for j in succeeded] == [first.job_id, second.job_id]
    assert _search(server, statuses=["NEEDS_RECOVERY"]) == []
    everything = [j.job_id for j in _search(server)]
    assert everything == [first.job_id, second.job_id, sleeper.job_id]


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_errors_in_mlflow_shape(server: ServerProcess):
    """MLflow's error code and message, plus FastAPI's ``detail`` (what MLflow's jobs API
    answers), never a 5xx."""
    url = f"{server.url}{JOBS}"
    missing = "00000000-0000-0000-0000-000000000000"
    cases = [
        (httpx.post(f"{url}/", json={"job_name": "nope", "params": {}}), 400, "unknown job"),
        (httpx.post(url, json={"job_name": "t_add", "params": {"a": 1}}), 400, "b"),
        (httpx.post(url, json={"job_name": "t_add", "params": [1]}), 400, "params"),
        (httpx.post(url, json={"params": {}}), 400, "job_name"),
        (httpx.get(f"{url}/{missing}"), 404, "not found"),
        (httpx.patch(f"{url}/cancel/{missing}"), 404, "not found"),
        (httpx.post(f"{url}/search", json={"statuses": ["LOST"]}), 400, "LOST"),
    ]
    for answer, status, words in cases:
        assert answer.status_code == status, answer.text
        body = answer.json()
        assert set(body) == {"error_code", "message", "detail"}, body
        assert body["detail"] == body["message"]
        assert words in body["message"]
        expected = "RESOURCE_DOES_NOT_EXIST" if status == 404 else "INVALID_PARAMETER_VALUE"
        assert body["error_code"] == expected
    assert "request.crashed" not in server.logs()
