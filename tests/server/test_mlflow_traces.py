"""MLflow's trace reads against a real ``assay server``, with the real ``mlflow`` client: what
``@mlflow.trace`` wrote is read back by ``mlflow.get_trace`` and ``mlflow.search_traces``,
assessed with ``mlflow.log_feedback``/``log_expectation`` (and seen by assay's own REST), and
kept from a token scoped to another experiment.

Each client script runs in a fresh interpreter (its own tracer provider and tracking URI), as
a user's script would.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("mlflow")

from assay.db.engine import create_engine
from assay.jobs.tokens import JobTokens
from assay.server.mlflow_trace_wire import mlflow_filter, mlflow_order_by
from assay.server.tokens import TokenStore
from assay.tracking.store import TrackingStore
from support.servers import ServerProcess, kinds_grouped, module_server

TRACES = "/api/3.0/mlflow/traces"


@dataclass
class Assay:
    """A real server with auth on, a user token for it, and what the write script traced."""

    server: ServerProcess
    token: str
    store_uri: str
    experiment_id: str
    ok_id: str
    error_id: str

    def run(self, code: str, tmp_path: Path, **config: Any) -> Any:
        """Run ``code`` (``CONFIG`` holds ``config``) with the mlflow client pointed at the
        server; the JSON it printed last."""
        script = tmp_path / f"client_{uuid.uuid4().hex[:6]}.py"
        prelude = f"import json\nCONFIG = json.loads({json.dumps(json.dumps(config))})\n"
        script.write_text(prelude + textwrap.dedent(code))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MLFLOW_"))}
        env.update(
            MLFLOW_TRACKING_URI=self.server.url,
            MLFLOW_TRACKING_TOKEN=self.token,
            MLFLOW_DISABLE_TELEMETRY="true",
            DO_NOT_TRACK="true",
            MLFLOW_HTTP_REQUEST_TIMEOUT="60",
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        )
        done = subprocess.run(
            [sys.executable, str(script)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        return json.loads(done.stdout.strip().splitlines()[-1])

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.get(f"{self.server.url}{path}", headers=headers, timeout=30)


WRITE = """
import mlflow

@mlflow.trace(span_type="LLM")
def generate(question):
    mlflow.get_current_active_span().set_attribute(
        "mlflow.chat.tokenUsage", {"input_tokens": 7, "output_tokens": 5, "total_tokens": 12}
    )
    return "Paris"

@mlflow.trace
def answer(question):
    mlflow.get_current_active_span().set_attribute("assay.tags.team", "search")
    return generate(question)

@mlflow.trace
def fail(question):
    raise ValueError("no answer")

experiment = mlflow.set_experiment(CONFIG["experiment"])
answer("capital of France?")
ok_id = mlflow.get_last_active_trace_id()
try:
    fail("anything?")
except ValueError:
    pass
error_id = mlflow.get_last_active_trace_id()
mlflow.flush_trace_async_logging(terminate=True)
print(json.dumps({"experiment_id": experiment.experiment_id, "ok": ok_id, "error": error_id}))
"""


@pytest.fixture(scope="module", params=kinds_grouped("mltr"))
def assay(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Assay]:
    """One server per database for the module, with two traces written by MLflow: one OK
    (tagged team=search, two spans), one ERROR."""
    tmp = tmp_path_factory.mktemp("mlflow-traces")
    with module_server(request.param, tmp_path_factory, "mltr", "--auth") as server:
        store_uri = server.store_uri
        engine = create_engine(store_uri)
        try:
            _, token = TokenStore(engine).create("ana", "user")
        finally:
            engine.dispose()
        blank = Assay(server, token, store_uri, "", "", "")
        out = blank.run(WRITE, tmp, experiment=f"traces-{uuid.uuid4().hex[:8]}")
        written = Assay(server, token, store_uri, out["experiment_id"], out["ok"], out["error"])
        for trace_id in (written.ok_id, written.error_id):  # both whole in assay's store
            response = written.get(f"/api/v1/traces/{trace_id}")
            assert response.status_code == 200, response.text
            assert response.json()["trace"]["status"] != "IN_PROGRESS"
        yield written


READ = """
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

def error_of(call):
    try:
        call()
    except MlflowException as exc:
        return [exc.error_code, exc.get_http_status_code()]
    return None

where = [CONFIG["experiment_id"]]
trace = mlflow.get_trace(CONFIG["ok"])
spans = [
    {"name": s.name, "type": s.span_type, "inputs": s.inputs, "outputs": s.outputs,
     "parent": s.parent_id, "id": s.span_id, "trace_id": s.trace_id}
    for s in trace.data.spans
]
info = trace.info
frame = mlflow.search_traces(locations=where)
listed = mlflow.search_traces(locations=where, return_type="list")

def ids(filter_string):
    found = mlflow.search_traces(
        locations=where, filter_string=filter_string, return_type="list", include_spans=False
    )
    return [t.info.trace_id for t in found]

client = MlflowClient()
first = client.search_traces(locations=where, max_results=1)
second = client.search_traces(locations=where, max_results=1, page_token=first.token)
oldest = client.search_traces(locations=where, order_by=["timestamp_ms ASC"])
print(json.dumps({
    "info": {
        "trace_id": info.trace_id, "state": str(info.state), "experiment": info.experiment_id,
        "request_time": info.request_time, "duration": info.execution_duration,
        "request_preview": info.request_preview, "response_preview": info.response_preview,
        "tags": info.tags, "metadata": info.trace_metadata, "token_usage": info.token_usage,
    },
    "request": trace.data.request, "response": trace.data.response, "spans": spans,
    "frame": {"ids": list(frame["trace_id"]), "columns": list(frame.columns),
              "states": [str(s) for s in frame["state"]]},
    "listed": [[t.info.trace_id, len(t.data.spans)] for t in listed],
    "ok": ids("trace.status = 'OK'"),
    "error": ids("attributes.status = 'ERROR'"),
    "bare": ids("status = 'ERROR'"),
    "tagged": ids("tags.team = 'search'"),
    "untagged": ids("tags.team = 'other'"),
    "since": ids(f"trace.timestamp_ms >= {info.request_time}"),
    "pages": [[t.info.trace_id for t in first], first.token is not None,
              [t.info.trace_id for t in second]],
    "oldest": [t.info.trace_id for t in oldest],
    "bad_filter": error_of(lambda: client.search_traces(locations=where, filter_string="x = 1")),
    "missing": error_of(lambda: client.get_trace("tr-" + "0" * 32)),
}))
"""


def test_traces_read_back_through_the_mlflow_client(assay: Assay, tmp_path: Path) -> None:
    out = assay.run(READ, tmp_path, experiment_id=assay.experiment_id, ok=assay.ok_id)
    info = out["info"]
    assert info["trace_id"] == assay.ok_id
    assert (info["state"], info["experiment"]) == ("OK", assay.experiment_id)
    assert info["duration"] is not None
    assert info["request_time"] > 0
    assert info["request_preview"] == '{"question": "capital of France?"}'
    assert info["response_preview"] == "Paris"
    assert info["tags"]["team"] == "search"
    assert info["tags"]["mlflow.traceName"] == "answer"
    assert info["token_usage"] == {"input_tokens": 7, "output_tokens": 5, "total_tokens": 12}
    assert json.loads(out["request"]) == {"question": "capital of France?"}  # as MLflow: JSON
    assert json.loads(out["response"]) == "Paris"
    spans = {s["name"]: s for s in out["spans"]}
    assert spans["answer"]["parent"] is None
    assert spans["generate"]["parent"] == spans["answer"]["id"]
    assert spans["generate"]["type"] == "LLM"
    assert spans["generate"]["inputs"] == {"question": "capital of France?"}
    assert spans["generate"]["outputs"] == "Paris"
    assert {s["trace_id"] for s in out["spans"]} == {assay.ok_id}

    newest_first = [assay.error_id, assay.ok_id]
    assert out["frame"]["ids"] == newest_first
    assert {"trace_id", "request", "response", "spans", "assessments"} <= set(
        out["frame"]["columns"]
    )
    assert out["listed"] == [[assay.error_id, 1], [assay.ok_id, 2]]
    assert out["ok"] == [assay.ok_id]
    assert out["error"] == [assay.error_id]
    assert out["bare"] == [assay.error_id]
    assert out["tagged"] == [assay.ok_id]
    assert out["untagged"] == []
    assert out["since"] == newest_first
    assert out["pages"] == [[assay.error_id], True, [assay.ok_id]]
    assert out["oldest"] == [assay.ok_id, assay.error_id]
    assert out["bad_filter"] == ["INVALID_PARAMETER_VALUE", 400]
    assert out["missing"] == ["RESOURCE_DOES_NOT_EXIST", 404]


ASSESS = """
import mlflow
from mlflow.entities import AssessmentSource

trace_id = CONFIG["ok_id"]
feedback = mlflow.log_feedback(
    trace_id=trace_id, name="correct", value=True, rationale="matches the reference",
    source=AssessmentSource(source_type="LLM_JUDGE", source_id="gpt-judge"),
    metadata={"run": "r1"},
)
expected = mlflow.log_expectation(trace_id=trace_id, name="expected", value={"answer": 1})
judged = mlflow.search_traces(
    locations=[CONFIG["experiment_id"]], filter_string="feedback.correct = TRUE",
    return_type="list", include_spans=False,
)
read = mlflow.get_assessment(trace_id, feedback.assessment_id)
on_trace = mlflow.get_trace(trace_id).info.assessments
mlflow.delete_assessment(trace_id=trace_id, assessment_id=expected.assessment_id)
after = mlflow.get_trace(trace_id).info.assessments
print(json.dumps({
    "feedback": feedback.assessment_id,
    "read": [read.name, read.value, read.rationale, read.source.source_type,
             read.source.source_id, read.metadata],
    "on_trace": sorted([a.name, a.value] for a in on_trace),
    "expectation_type": type(next(a for a in on_trace if a.name == "expected")).__name__,
    "after": [a.assessment_id for a in after],
    "judged": [t.info.trace_id for t in judged],
}))
"""


def test_assessments_from_mlflow_are_assays(assay: Assay, tmp_path: Path) -> None:
    out = assay.run(ASSESS, tmp_path, ok_id=assay.ok_id, experiment_id=assay.experiment_id)
    assert out["read"] == [
        "correct",
        True,
        "matches the reference",
        "LLM_JUDGE",
        "gpt-judge",
        {"run": "r1"},
    ]
    assert out["on_trace"] == [["correct", True], ["expected", {"answer": 1}]]
    assert out["expectation_type"] == "Expectation"
    assert out["after"] == [out["feedback"]]
    assert out["judged"] == [assay.ok_id]
    # assay's own REST sees what MLflow wrote
    response = assay.get(f"/api/v1/traces/{assay.ok_id}/assessments")
    assert response.status_code == 200, response.text
    (stored,) = response.json()["assessments"]
    assert stored["id"] == out["feedback"]
    assert (stored["name"], stored["value"], stored["rationale"]) == (
        "correct",
        True,
        "matches the reference",
    )
    assert stored["source"] == {"type": "LLM_JUDGE", "id": "gpt-judge"}
    assert stored["trace_id"] == assay.ok_id.removeprefix("tr-")
    # and MLflow reads it back by id through the raw route too
    raw = assay.get(f"{TRACES}/{assay.ok_id}/assessments/{out['feedback']}")
    assert raw.json()["assessment"]["feedback"]["value"] is True


def test_a_token_of_another_experiment_reads_nothing(assay: Assay) -> None:
    """A job token scoped to another experiment gets MLflow's PERMISSION_DENIED on every read
    and write of the trace; one scoped to the trace's experiment reads it."""
    engine = create_engine(assay.store_uri)
    try:
        other = TrackingStore(engine).create_experiment(f"other-{uuid.uuid4().hex[:8]}").id
        tokens = JobTokens(TokenStore(engine))
        expires = int((time.time() + 600) * 1000)
        outsider = tokens.mint("j-out", 1, "ana", [f"experiment_id:{other}"], expires)
        insider = tokens.mint("j-in", 1, "ana", [f"experiment_id:{assay.experiment_id}"], expires)
    finally:
        engine.dispose()
    headers = {"Authorization": f"Bearer {outsider}"}
    search = {"locations": [{"mlflow_experiment": {"experiment_id": assay.experiment_id}}]}
    feedback = {
        "assessment": {"assessment_name": "x", "feedback": {"value": 1}, "trace_id": assay.ok_id}
    }
    refused = [
        assay.get(f"{TRACES}/{assay.ok_id}", outsider),
        assay.get(f"{TRACES}/get?trace_id={assay.ok_id}", outsider),
        assay.get(f"{TRACES}/batchGet?trace_ids={assay.ok_id}", outsider),
        httpx.post(f"{assay.server.url}{TRACES}/search", json=search, headers=headers),
        httpx.post(
            f"{assay.server.url}{TRACES}/{assay.ok_id}/assessments", json=feedback, headers=headers
        ),
    ]
    for response in refused:
        assert response.status_code == 403, response.text
        assert response.json()["error_code"] == "PERMISSION_DENIED"
    allowed = assay.get(f"{TRACES}/get?trace_id={assay.ok_id}", insider)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["trace"]["trace_info"]["trace_id"] == assay.ok_id


DELETE = """
import time
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

@mlflow.trace
def step(n):
    return n

experiment = mlflow.set_experiment(CONFIG["experiment"])
ids, times = [], []
for n in range(3):
    step(n)
    ids.append(mlflow.get_last_active_trace_id())
mlflow.flush_trace_async_logging(terminate=True)
client = MlflowClient()
e = experiment.experiment_id
times = [client.get_trace(t).info.request_time for t in ids]
refused = None
if CONFIG["user_token"]:
    import os
    os.environ["MLFLOW_TRACKING_TOKEN"] = CONFIG["user_token"]
    try:
        client.delete_traces(e, trace_ids=ids)
    except MlflowException as exc:
        refused = exc.error_code
    os.environ["MLFLOW_TRACKING_TOKEN"] = CONFIG["admin_token"]
by_time = client.delete_traces(e, max_timestamp_millis=times[1], max_traces=1)
by_id = client.delete_traces(e, trace_ids=[ids[2], "tr-" + "0" * 32])
left = [t.info.trace_id for t in client.search_traces(locations=[e])]
print(json.dumps({"ids": ids, "refused": refused, "by_time": by_time, "by_id": by_id,
                  "left": left}))
"""


def test_mlflow_client_deletes_traces_as_an_admin(assay: Assay, tmp_path: Path) -> None:
    """``MlflowClient.delete_traces`` by time (oldest first, at most ``max_traces``) and by
    ids; a user token is refused (a bulk deletion is an admin's)."""
    engine = create_engine(assay.store_uri)
    try:
        _, admin = TokenStore(engine).create("root", "admin")
    finally:
        engine.dispose()
    out = dataclasses.replace(assay, token=admin).run(
        DELETE,
        tmp_path,
        experiment=f"delete-{uuid.uuid4().hex[:8]}",
        user_token=assay.token,
        admin_token=admin,
    )
    first, second, third = out["ids"]
    assert out["refused"] == "PERMISSION_DENIED"
    assert (out["by_time"], out["by_id"]) == (1, 1)
    assert out["left"] == [second]
    for gone in (first, third):
        assert assay.get(f"/api/v1/traces/{gone}", admin).status_code == 404
    bad = httpx.post(
        f"{assay.server.url}/api/2.0/mlflow/traces/delete-traces",
        json={"experiment_id": "0", "max_timestamp_millis": 1, "request_ids": [first]},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    )
    assert (bad.status_code, bad.json()["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    assert "either max_timestamp_millis or request_ids" in bad.json()["message"]


def test_unknown_traces_and_routes_answer_in_mlflows_shape(assay: Assay) -> None:
    missing = assay.get(f"{TRACES}/tr-{'0' * 32}")
    assert (missing.status_code, missing.json()["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
    assert assay.get(f"{TRACES}/batchGet?trace_ids=tr-{'0' * 32}").json() == {"traces": []}
    tag = httpx.patch(
        f"{assay.server.url}/api/2.0/mlflow/traces/{assay.ok_id}/tags",
        json={"key": "k", "value": "v"},
        headers={"Authorization": f"Bearer {assay.token}"},
    )
    assert (tag.status_code, tag.json()["error_code"]) == (404, "ENDPOINT_NOT_FOUND")


def test_mlflow_filters_in_assays_grammar() -> None:
    assert mlflow_filter(None) is None
    assert mlflow_filter("attributes.status = 'OK'") == "trace.status = 'OK'"
    assert (
        mlflow_filter("attribute.timestamp > 5 AND request_metadata.`a.b` = 'attributes.x'")
        == "trace.timestamp_ms > 5 AND metadata.`a.b` = 'attributes.x'"
    )
    assert mlflow_filter("feedback.correct = 'yes'") == "assessment.correct = 'yes'"
    assert mlflow_filter('tags.attributes.x = "feedback.y"') == 'tags.attributes.x = "feedback.y"'
    assert mlflow_filter("status = 'OK' AND span.status = 'ERROR'") == (
        "trace.status = 'OK' AND span.status = 'ERROR'"
    )
    assert mlflow_filter("execution_time > 5 OR `status` = 1") == (
        "trace.execution_time_ms > 5 OR `status` = 1"
    )
    assert mlflow_order_by(["attributes.timestamp_ms DESC", "execution_time", "trace.status"]) == [
        "trace.timestamp_ms DESC",
        "trace.execution_time_ms",
        "trace.status",
    ]
