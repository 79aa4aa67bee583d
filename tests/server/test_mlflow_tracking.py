"""The MLflow-compatible tracking API, driven by the real ``mlflow`` client against a real
``assay server``: what MLflow logs is checked field by field in assay's own store.

Client scripts run in a subprocess (``MLFLOW_TRACKING_URI`` pointing at the server), as a
user's training script would; direct ``MlflowClient`` calls run in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric as MlflowMetric  # noqa: E402
from mlflow.entities import Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from assay.db.engine import create_engine  # noqa: E402
from assay.db.migrate import upgrade  # noqa: E402
from assay.errors import ConflictError  # noqa: E402
from assay.pagetoken import decode_token  # noqa: E402
from assay.server.schemas.mlflow import MLFLOW_VERSION  # noqa: E402
from assay.server.tokens import TokenStore  # noqa: E402
from assay.tracking import RunStatus, TrackingStore  # noqa: E402
from support.servers import ServerProcess, Servers  # noqa: E402

API = "/api/2.0/mlflow"


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process client sends no usage data anywhere."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")


@pytest.fixture
def tracking(store_uri: str) -> Iterator[TrackingStore]:
    """assay's own view of the store the server writes to."""
    engine = create_engine(store_uri)
    upgrade(engine)
    try:
        yield TrackingStore(engine)
    finally:
        engine.dispose()


def mlflow_env(url: str, token: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MLFLOW_TRACKING_URI=url,
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        MLFLOW_HTTP_REQUEST_TIMEOUT="60",
    )
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    if token:
        env["MLFLOW_TRACKING_TOKEN"] = token
    return env


def run_script(url: str, code: str, tmp_path: Path) -> tuple[dict[str, Any], str]:
    """Run ``code`` with the mlflow client in a fresh interpreter; the JSON it printed last,
    and everything it wrote to stderr (the client's warnings)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=mlflow_env(url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"script failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


# The client's own notice about pickling models, whatever the server: not a problem.
LOCAL_NOTICES = ("in the pickle or cloudpickle format",)


def client_errors(stderr: str) -> list[str]:
    """Lines where the mlflow client reports something went wrong."""
    return [
        line
        for line in stderr.splitlines()
        if (
            ("mlflow" in line and ("WARNING" in line or "ERROR" in line))
            or "Traceback" in line
            or "ENDPOINT_NOT_FOUND" in line
        )
        and not any(notice in line for notice in LOCAL_NOTICES)
    ]


# -- the default experiment (the store) -------------------------------------------------------


def test_default_experiment_is_made_on_first_use(tracking: TrackingStore):
    """ "0" names the default experiment ("Default", as in MLflow) wherever an experiment id
    is taken; a store starts without it and makes it once."""
    assert tracking.list_experiments().experiments == []
    run = tracking.create_run("0", name="first")
    default = tracking.default_experiment()
    assert (default.id, default.name) == ("0", "Default")
    assert run.experiment_id == "0"
    assert tracking.get_experiment("0") == default
    assert tracking.get_experiment_by_name("Default") == default
    assert [r.id for r in tracking.list_runs("0").runs] == [run.id]
    assert [e.id for e in tracking.list_experiments().experiments] == ["0"]
    with pytest.raises(ConflictError):
        tracking.create_experiment("Default")


def test_an_experiment_named_default_is_the_default(tracking: TrackingStore):
    mine = tracking.create_experiment("Default", tags={"made": "by hand"})
    run = tracking.create_run("0")
    assert run.experiment_id == mine.id
    assert tracking.get_experiment("0") == mine
    assert tracking.default_experiment() == mine
    assert [r.id for r in tracking.list_runs("0").runs] == [run.id]
    assert [e.id for e in tracking.list_experiments().experiments] == [mine.id]


def test_concurrent_first_uses_make_one_default(store_uri: str, tracking: TrackingStore):
    """Six stores (six engines) create their first run in "0" at once: one default."""
    stores = [TrackingStore(create_engine(store_uri)) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    made: list[str] = []
    raised: list[Exception] = []

    def first_run(store: TrackingStore) -> None:
        barrier.wait()
        try:
            made.append(store.create_run("0").experiment_id)
        except Exception as exc:
            raised.append(exc)

    threads = [threading.Thread(target=first_run, args=(s,)) for s in stores]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for s in stores:
            s.engine.dispose()
    assert raised == []
    assert made == ["0"] * 6
    assert [e.id for e in tracking.list_experiments().experiments] == ["0"]
    assert len(tracking.list_runs("0").runs) == 6


# -- a tracking script ------------------------------------------------------------------------

TRACKING_SCRIPT = """
import json
import mlflow
import pandas as pd

# No experiment named: the run lands in the default experiment, "0".
with mlflow.start_run() as default_run:
    mlflow.log_metric("warmup", 0.5)

mlflow.set_experiment("mlflow-compat")
with mlflow.start_run(run_name="parent", tags={"team": "ml"}) as parent:
    mlflow.log_param("lr", 0.01)
    mlflow.log_params({"layers": 3, "optimizer": "adam", "dropout": None})
    for step in range(5):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    mlflow.log_metrics({"acc": 0.91, "f1": 0.87}, step=4)
    mlflow.set_tag("stage", "dev")
    mlflow.set_tags({"owner": "ana ☃", "empty": ""})
    frame = pd.DataFrame({"x": [1, 2, 3], "y": [0, 1, 0]})
    dataset = mlflow.data.from_pandas(frame, source="s3://bucket/train.csv", name="train")
    mlflow.log_input(dataset, context="training")
    with mlflow.start_run(run_name="child", nested=True) as child:
        mlflow.log_metric("child_metric", 2.5, step=1)
        mlflow.log_param("fold", 1)
    with mlflow.start_run(run_name="failed-child", nested=True) as failed:
        pass
    mlflow.MlflowClient().set_terminated(failed.info.run_id, status="FAILED")

print(json.dumps({
    "default": default_run.info.run_id,
    "parent": parent.info.run_id,
    "child": child.info.run_id,
    "failed": failed.info.run_id,
    "experiment": parent.info.experiment_id,
    "digest": dataset.digest,
}))
"""


def test_tracking_script_lands_in_assay(
    server: ServerProcess, tracking: TrackingStore, tmp_path: Path
):
    """mlflow.log_*, set_tag(s), log_input and nested start_run: every field in assay."""
    ids, stderr = run_script(server.url, TRACKING_SCRIPT, tmp_path)
    assert client_errors(stderr) == []

    default = tracking.get_run(ids["default"])
    assert default.experiment_id == "0"
    assert tracking.get_experiment("0").name == "Default"
    assert default.status is RunStatus.FINISHED
    assert {k: (m.value, m.step) for k, m in default.metrics.items()} == {"warmup": (0.5, 0)}
    listed = [e.name for e in tracking.list_experiments().experiments]
    assert sorted(listed) == ["Default", "mlflow-compat"]

    experiment = tracking.get_experiment(ids["experiment"])
    assert experiment.name == "mlflow-compat"
    parent = tracking.get_run(ids["parent"])
    assert parent.experiment_id == experiment.id
    assert parent.name == "parent"
    assert parent.status is RunStatus.FINISHED
    assert parent.end_time_ms is not None
    assert parent.end_time_ms >= parent.start_time_ms
    assert parent.params == {
        "dropout": "None",
        "layers": "3",
        "lr": "0.01",
        "optimizer": "adam",
    }
    assert {k: (m.value, m.step) for k, m in parent.metrics.items()} == {
        "acc": (0.91, 4),
        "f1": (0.87, 4),
        "loss": (0.2, 4),
    }
    history = tracking.metric_history(parent.id, "loss").metrics
    assert [(m.step, m.value) for m in history] == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert all(m.timestamp_ms and m.timestamp_ms >= parent.start_time_ms for m in history)
    assert {k: v for k, v in parent.tags.items() if not k.startswith("mlflow.source")} == {
        "empty": "",
        "mlflow.runName": "parent",
        "mlflow.user": parent.tags["mlflow.user"],
        "owner": "ana ☃",
        "stage": "dev",
        "team": "ml",
    }
    assert parent.tags["mlflow.source.name"].endswith("script.py")
    assert parent.tags["mlflow.source.type"] == "LOCAL"
    [train] = parent.inputs
    assert (train.name, train.digest) == ("train", ids["digest"])
    assert train.source is not None
    assert "s3://bucket/train.csv" in train.source

    child = tracking.get_run(ids["child"])
    assert child.name == "child"
    assert child.experiment_id == experiment.id
    assert child.tags["mlflow.parentRunId"] == parent.id
    assert child.status is RunStatus.FINISHED
    assert child.params == {"fold": "1"}
    assert {k: (m.value, m.step) for k, m in child.metrics.items()} == {"child_metric": (2.5, 1)}
    failed = tracking.get_run(ids["failed"])
    assert failed.tags["mlflow.parentRunId"] == parent.id
    assert failed.status is RunStatus.FAILED
    assert failed.end_time_ms is not None

    # And the MLflow side reads the same runs back.
    client = MlflowClient(tracking_uri=server.url)
    seen = client.get_run(parent.id)
    assert seen.info.run_name == "parent"
    assert seen.info.status == "FINISHED"
    assert seen.info.lifecycle_stage == "active"
    assert seen.data.params == parent.params
    assert seen.data.metrics == {"acc": 0.91, "f1": 0.87, "loss": 0.2}
    assert [(d.dataset.name, d.dataset.digest) for d in seen.inputs.dataset_inputs] == [
        ("train", ids["digest"])
    ]
    assert [m.value for m in client.get_metric_history(parent.id, "loss")] == [
        1.0 / (s + 1) for s in range(5)
    ]


# -- log_batch at MLflow's limits -------------------------------------------------------------


def _metrics(n: int, key: str = "m") -> list[MlflowMetric]:
    now = int(time.time() * 1000)
    return [MlflowMetric(f"{key}{i}", float(i), now, i % 7) for i in range(n)]


def test_log_batch_at_mlflow_limits(server: ServerProcess, tracking: TrackingStore):
    """One request of 1000 metrics; one of 800 metrics, 100 params and 100 tags (MLflow's
    per-batch limits, over assay's own 100 params and tags per request); larger batches the
    client splits. All land, exactly."""
    client = MlflowClient(tracking_uri=server.url)
    experiment_id = client.create_experiment("batches")
    run_id = client.create_run(experiment_id).info.run_id

    client.log_batch(run_id, metrics=_metrics(1000, "a"))
    params = [Param(f"p{i}", f"v{i}") for i in range(100)]
    tags = [RunTag(f"t{i}", f"w{i}") for i in range(100)]
    client.log_batch(run_id, metrics=_metrics(800, "b"), params=params, tags=tags)
    # 2500 metrics and 250 params: the client sends several requests within the limits.
    big_params = [Param(f"q{i}", str(i)) for i in range(250)]
    client.log_batch(run_id, metrics=_metrics(2500, "c"), params=big_params)

    run = tracking.get_run(run_id)
    assert run.params == {
        **{f"p{i}": f"v{i}" for i in range(100)},
        **{f"q{i}": str(i) for i in range(250)},
    }
    user_tags = {k: v for k, v in run.tags.items() if not k.startswith("mlflow.")}
    assert user_tags == {f"t{i}": f"w{i}" for i in range(100)}
    expected = {f"a{i}": (float(i), i % 7) for i in range(1000)}
    expected |= {f"b{i}": (float(i), i % 7) for i in range(800)}
    expected |= {f"c{i}": (float(i), i % 7) for i in range(2500)}
    assert {k: (m.value, m.step) for k, m in run.metrics.items()} == expected

    # One metric's history over several store pages: all of it, or pages of max_results.
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[MlflowMetric("curve", i / 10, now, i) for i in range(2500)])
    assert [m.step for m in client.get_metric_history(run_id, "curve")] == list(range(2500))
    url = f"{server.url}{API}/metrics/get-history"
    query = {"run_id": run_id, "metric_key": "curve", "max_results": 1500}
    first = httpx.get(url, params=query, timeout=60).json()
    assert [m["step"] for m in first["metrics"]] == list(range(1500))
    query["page_token"] = first["next_page_token"]
    rest = httpx.get(url, params=query, timeout=60).json()
    assert [m["step"] for m in rest["metrics"]] == list(range(1500, 2500))
    assert "next_page_token" not in rest

    # A param is written once: the same value again is fine, another one is refused.
    client.log_param(run_id, "p0", "v0")
    with pytest.raises(MlflowException) as refused:
        client.log_param(run_id, "p0", "changed")
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert tracking.get_run(run_id).params["p0"] == "v0"


def _batch(run_id: str, metrics: int = 0, params: int = 0, tags: int = 0) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "run_id": run_id,
        "metrics": [
            {"key": f"x{i}", "value": 1.0, "timestamp": now, "step": 0} for i in range(metrics)
        ],
        "params": [{"key": f"xp{i}", "value": "1"} for i in range(params)],
        "tags": [{"key": f"xt{i}", "value": "1"} for i in range(tags)],
    }


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_log_batch_over_mlflow_limits_is_refused(server: ServerProcess, tracking: TrackingStore):
    """The client never sends more (it splits); sent raw, MLflow's limits are a 400
    INVALID_PARAMETER_VALUE naming the limit, and nothing of the batch is stored."""
    run = tracking.create_run(tracking.create_experiment("over").id)
    over = [
        (_batch(run.id, metrics=1001), "1000 metrics"),
        (_batch(run.id, params=101), "100 params"),
        (_batch(run.id, tags=101), "100 tags"),
        (_batch(run.id, metrics=801, params=100, tags=100), "limit of 1000"),
    ]
    for body, limit in over:
        answer = httpx.post(f"{server.url}{API}/runs/log-batch", json=body, timeout=60)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert limit in answer.json()["message"]
    stored = tracking.get_run(run.id)
    assert (stored.metrics, stored.params, stored.tags) == ({}, {}, {})


# -- sklearn autologging ----------------------------------------------------------------------

AUTOLOG_SCRIPT = """
import json
import mlflow
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

mlflow.set_experiment("autolog")
mlflow.sklearn.autolog()
X, y = load_iris(return_X_y=True)
with mlflow.start_run() as run:
    LogisticRegression(max_iter=300, C=0.5).fit(X, y)

client = mlflow.MlflowClient()
[model] = client.search_logged_models([run.info.experiment_id])
loaded = mlflow.sklearn.load_model(f"models:/{model.model_id}")
print(json.dumps({
    "run": run.info.run_id,
    "model_id": model.model_id,
    "model_run": model.source_run_id,
    "model_status": str(model.status),
    "accuracy": float((loaded.predict(X) == y).mean()),
    "artifacts": sorted(f.path for f in client.list_artifacts(run.info.run_id)),
    "model_files": sorted(
        f.path.rsplit("/", 1)[-1]
        for f in mlflow.artifacts.list_artifacts(artifact_uri=model.artifact_location)
    ),
}))
"""


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)  # the client, not the store
def test_sklearn_autolog(servers: Servers, store_uri: str, tracking: TrackingStore, tmp_path: Path):
    """The default ``mlflow.sklearn.autolog()`` (with model logging) runs without a client
    warning: params, training metrics, tags, the dataset and the model land in assay, and
    the model loads back from the server and predicts."""
    server = servers.start(store_uri, artifact_root=str(tmp_path / "artifacts"))
    out, stderr = run_script(server.url, AUTOLOG_SCRIPT, tmp_path)
    assert client_errors(stderr) == [], stderr

    run = tracking.get_run(out["run"])
    assert run.status is RunStatus.FINISHED
    assert tracking.get_experiment(run.experiment_id).name == "autolog"
    assert run.params["C"] == "0.5"
    assert run.params["max_iter"] == "300"
    assert {"training_accuracy_score", "training_f1_score", "training_score"} <= set(run.metrics)
    assert 0.9 < run.metrics["training_accuracy_score"].value <= 1.0
    assert run.tags["estimator_name"] == "LogisticRegression"
    assert run.tags["estimator_class"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert run.name  # MLflow-style random name when none is given
    assert len(run.inputs) == 1
    assert run.inputs[0].digest

    assert out["model_run"] == run.id
    assert out["model_status"] == "READY"
    assert out["accuracy"] > 0.9
    assert "training_confusion_matrix.png" in out["artifacts"]
    assert {"MLmodel", "model.pkl", "requirements.txt"} <= set(out["model_files"])
    model_dir = tmp_path / "artifacts" / "artifacts" / run.experiment_id / "models"
    assert (model_dir / out["model_id"] / "artifacts" / "MLmodel").is_file()


# -- errors, search, auth ---------------------------------------------------------------------


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_errors_in_mlflow_shape(server: ServerProcess):
    """The client sees MLflow's error codes (it branches on them, e.g. set_experiment)."""
    client = MlflowClient(tracking_uri=server.url)
    with pytest.raises(MlflowException) as missing:
        client.get_run("0123456789abcdef0123456789abcdef")
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as missing:
        client.get_experiment("no-such-experiment")
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert client.get_experiment_by_name("no such name") is None

    client.create_experiment("taken")
    with pytest.raises(MlflowException) as taken:
        client.create_experiment("taken")
    assert taken.value.error_code == "RESOURCE_ALREADY_EXISTS"
    with pytest.raises(MlflowException) as bad:
        client.search_runs(["0"], filter_string="metrics.acc > 'high'")
    assert bad.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "compares with a number" in bad.value.message

    # Metric values: MLflow stores infinities as the largest double; assay refuses NaN.
    run_id = client.create_run("0").info.run_id
    client.log_metric(run_id, "up", float("inf"))
    client.log_metric(run_id, "down", float("-inf"))
    biggest = 1.7976931348623157e308
    assert client.get_run(run_id).data.metrics == {"up": biggest, "down": -biggest}
    with pytest.raises(MlflowException) as nan:
        client.log_metric(run_id, "nan", float("nan"))
    assert nan.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "NaN" in nan.value.message

    url = f"{server.url}{API}"
    cases = [
        (httpx.get(f"{url}/runs/get", params={"run_id": "nope"}), 404, "RESOURCE_DOES_NOT_EXIST"),
        (httpx.post(f"{url}/runs/create", json={"start_time": "soon"}), 400, None),
        (httpx.post(f"{url}/runs/update", json={"run_id": ""}), 400, None),
        (httpx.get(f"{url}/experiments/get"), 400, "INVALID_PARAMETER_VALUE"),
        (httpx.post(f"{url}/experiments/create", json={"name": ""}), 400, None),
        (httpx.get(f"{url}/no/such/endpoint"), 404, "ENDPOINT_NOT_FOUND"),
        (httpx.post(f"{url}/runs/search", json={"page_token": "garbage"}), 400, None),
        (httpx.get(f"{url}/runs/get", params={"run_id": "a\x00b"}), 400, None),
    ]
    for answer, status, code in cases:
        assert answer.status_code == status, answer.text
        body = answer.json()
        assert set(body) == {"error_code", "message"}, body
        assert body["error_code"] == (code or "INVALID_PARAMETER_VALUE")
    assert httpx.get(f"{server.url}/version").text == MLFLOW_VERSION
    assert "request.crashed" not in server.logs()


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_search_runs_filter_and_order(server: ServerProcess):
    """MLflow's filter grammar for the common cases, order_by and page tokens."""
    client = MlflowClient(tracking_uri=server.url)
    experiment_id = client.create_experiment("search")
    other_id = client.create_experiment("search-other")
    made = {}
    start = 1_700_000_000_000  # distinct start times: a stable default order
    for i, (lr, acc, status) in enumerate(
        [("0.1", 0.70, "FINISHED"), ("0.01", 0.90, "FINISHED"), ("0.01", 0.95, "FAILED")]
    ):
        run = client.create_run(
            experiment_id, start_time=start + i, run_name=f"run-{i}", tags={"team": f"t{i % 2}"}
        )
        client.log_batch(
            run.info.run_id,
            metrics=[MlflowMetric("acc", acc, 1000 + i, 0)],
            params=[Param("lr", lr)],
        )
        client.set_terminated(run.info.run_id, status=status)
        made[i] = run.info.run_id
    untouched = client.create_run(other_id, start_time=start + 9, run_name="elsewhere")
    untouched_id = untouched.info.run_id

    def found(filter_string: str, order_by: list[str] | None = None, **kw: Any) -> list[str]:
        runs = client.search_runs(
            [experiment_id], filter_string=filter_string, order_by=order_by, **kw
        )
        return [r.info.run_id for r in runs]

    assert found("metrics.acc > 0.8", ["metrics.acc DESC"]) == [made[2], made[1]]
    assert found("params.lr = '0.01' and attributes.status = 'FINISHED'") == [made[1]]
    assert found("tags.team = 't0'", ["metrics.acc ASC"]) == [made[0], made[2]]
    assert found("attributes.run_name LIKE 'run-%'", ["attributes.run_name DESC"]) == [
        made[2],
        made[1],
        made[0],
    ]
    assert found("tags.`mlflow.runName` ILIKE 'RUN-1'") == [made[1]]
    assert found(f"attributes.run_id IN ('{made[0]}', '{untouched_id}')") == [made[0]]
    assert found("params.missing IS NULL", ["metrics.acc DESC"], max_results=1) == [made[2]]
    assert found("metrics.acc >= 0.95 AND metrics.acc <= 0.95") == [made[2]]
    both = client.search_runs([experiment_id, other_id], order_by=["attributes.start_time ASC"])
    assert [r.info.run_id for r in both] == [made[0], made[1], made[2], untouched_id]

    page = client.search_runs([experiment_id], max_results=2, order_by=["metrics.acc ASC"])
    assert [r.info.run_id for r in page] == [made[0], made[1]]
    rest = client.search_runs(
        [experiment_id], max_results=2, order_by=["metrics.acc ASC"], page_token=page.token
    )
    assert [r.info.run_id for r in rest] == [made[2]]
    assert rest.token is None

    named = client.search_experiments(filter_string="name LIKE 'search%'", order_by=["name"])
    assert [e.name for e in named] == ["search", "search-other"]


def test_search_runs_default_order_pages_from_the_index(server: ServerProcess):
    """A search with no filter and no order_by (the default of MLflow's UI and client) reads
    one page by the index with a keyset token; it pages exactly as the same order evaluated
    over every run does, ties on the start time included, across experiments."""
    client = MlflowClient(tracking_uri=server.url)
    first, second = client.create_experiment("newest-a"), client.create_experiment("newest-b")
    start = 1_700_000_000_000
    for i in range(7):  # start times 0, 0, 1, 1, 2, 2, 3: ties broken by run id
        client.create_run(first if i % 2 else second, start_time=start + i // 2)
    client.create_run(client.create_experiment("newest-c"), start_time=start + 10)  # elsewhere

    def pages(order_by: list[str] | None) -> tuple[list[list[str]], list[Any]]:
        out, tokens, token = [], [], None
        while True:
            page = client.search_runs(
                [first, second], order_by=order_by, max_results=2, page_token=token
            )
            out.append([r.info.run_id for r in page])
            token = page.token
            if token is None:
                return out, tokens
            tokens.append(decode_token(token, 1))

    by_index, keysets = pages(None)
    evaluated, offsets = pages(["attributes.start_time DESC"])  # over every run
    assert by_index == evaluated
    assert all(isinstance(k, list) for k in keysets)  # (start time, run id) of the last run
    assert offsets == [{"offset": 2}, {"offset": 4}, {"offset": 6}]
    assert [len(p) for p in by_index] == [2, 2, 2, 1]
    everything = client.search_runs([first, second])
    assert [r.info.run_id for r in everything] == [i for p in by_index for i in p]
    starts = [r.info.start_time for r in everything]
    assert starts == sorted(starts, reverse=True)
    assert client.search_runs([first], run_view_type=2) == []  # DELETED_ONLY: none
    url = f"{server.url}{API}/runs/search"
    unknown = httpx.post(url, json={"experiment_ids": [first, "nope"]})
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_tracking_token_is_an_assay_token(servers: Servers, store_uri: str, tmp_path: Path):
    """With auth on, MLFLOW_TRACKING_TOKEN carries an assay API token; without one the
    client gets MLflow's UNAUTHENTICATED."""
    server = servers.start(store_uri, "--auth")
    engine = create_engine(store_uri)
    try:
        _, token = TokenStore(engine).create("ana", "user")
    finally:
        engine.dispose()
    script = (
        "import json, mlflow\n"
        "mlflow.set_experiment('secured')\n"
        "with mlflow.start_run() as run:\n"
        "    mlflow.log_metric('m', 1.0)\n"
        "print(json.dumps({'run': run.info.run_id}))\n"
    )
    (tmp_path / "script.py").write_text(script)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "script.py")],
        env=mlflow_env(server.url, token),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    answer = httpx.get(f"{server.url}{API}/experiments/get-by-name?experiment_name=secured")
    assert answer.status_code == 401
    assert answer.json()["error_code"] == "UNAUTHENTICATED"
    with pytest.raises(MlflowException) as refused:
        MlflowClient(tracking_uri=server.url).search_experiments()
    assert refused.value.error_code == "UNAUTHENTICATED"
