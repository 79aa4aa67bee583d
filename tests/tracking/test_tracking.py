"""Experiment tracking: the store on SQLite, PostgreSQL and MariaDB, and the REST API of a real
server (experiments, runs, log-batch limits, param immutability, metric history, inputs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from assay.db.engine import create_engine
from assay.db.migrate import upgrade
from assay.errors import ConflictError, InvalidRequestError, NotFoundError
from assay.jobs.tokens import JobTokens, scope
from assay.server.tokens import TokenStore
from assay.tracking import Metric, RunInput, RunStatus, TrackingStore, mlflow_search
from support.servers import InProcessServers, ServerProcess, Servers

# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def tracking(store_uri: str) -> Iterator[TrackingStore]:
    engine = create_engine(store_uri)
    upgrade(engine)  # the fixture migrates the server databases; SQLite starts empty
    try:
        yield TrackingStore(engine)
    finally:
        engine.dispose()


@dataclass
class Batch:
    """One log-batch request, for the store and for REST."""

    metrics: list[Metric] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def log(self, store: TrackingStore, run_id: str) -> None:
        store.log_batch(run_id, self.metrics, self.params, self.tags)

    def json(self) -> dict[str, Any]:
        return {
            "metrics": [
                {"key": m.key, "value": m.value, "step": m.step, "timestamp": m.timestamp_ms}
                for m in self.metrics
            ],
            "params": self.params,
            "tags": self.tags,
        }


def _metrics(n: int) -> list[Metric]:
    return [Metric("loss", 1.0 / (i + 1), step=i) for i in range(n)]


def _params(n: int) -> dict[str, str]:
    return {f"p{i}": str(i) for i in range(n)}


def _tags(n: int) -> dict[str, str]:
    return {f"t{i}": str(i) for i in range(n)}


# Non-ASCII values (4 bytes each in UTF-8) check that the columns hold them whole on every
# database, not only that the counting is right.
WIDE = "😀"
# (name, a batch exactly at the limit, the same one over it, what the 400 must name)
LIMITS: list[tuple[str, Batch, Batch, str]] = [
    ("metrics", Batch(_metrics(1000)), Batch(_metrics(1001)), "1000 metrics per request"),
    (
        "params_and_tags",
        Batch(params=_params(60), tags=_tags(40)),
        Batch(params=_params(61), tags=_tags(40)),
        "100 params and tags",
    ),
    (
        "entities",
        Batch(_metrics(900), _params(100)),
        Batch(_metrics(901), _params(100)),
        "1000 entities per request",
    ),
    (
        "metric_key",
        Batch([Metric("m" * 250, 1.0)]),
        Batch([Metric("m" * 251, 1.0)]),
        "250 characters per key",
    ),
    (
        "param_key",
        Batch(params={WIDE * 250: "v"}),
        Batch(params={WIDE * 251: "v"}),
        "250 characters per key",
    ),
    (
        "tag_key",
        Batch(tags={"k" * 250: "v"}),
        Batch(tags={"k" * 251: "v"}),
        "250 characters per key",
    ),
    (
        "param_value",
        Batch(params={"p": WIDE * 6000}),
        Batch(params={"p": WIDE * 6001}),
        "6000 characters per param value",
    ),
    (
        "tag_value",
        Batch(tags={"t": WIDE * 8000}),
        Batch(tags={"t": WIDE * 8001}),
        "8000 characters per tag value",
    ),
]


def _stored(run: Any, batch: Batch) -> None:
    """Everything of ``batch`` is in ``run`` (a store Run or a REST answer)."""
    if isinstance(run, dict):
        params, tags = run["params"], run["tags"]
        metric_keys = {m["key"] for m in run["metrics"]}
    else:
        params, tags, metric_keys = run.params, run.tags, set(run.metrics)
    assert params == batch.params
    assert tags == batch.tags
    assert metric_keys == {m.key for m in batch.metrics}


# -- store: experiments -------------------------------------------------------------------------


def test_experiments_create_get_list(tracking: TrackingStore):
    first = tracking.create_experiment("churn ☃", tags={"team": "ml", "note": WIDE * 8000})
    assert first.name == "churn ☃"
    assert first.tags == {"note": WIDE * 8000, "team": "ml"}
    assert tracking.get_experiment(first.id) == first
    assert tracking.get_experiment_by_name("churn ☃") == first
    # Names compare exactly on every database (MySQL's default collation ignores case).
    other = tracking.create_experiment("Churn ☃")
    assert tracking.get_experiment_by_name("Churn ☃") == other

    with pytest.raises(ConflictError, match="'churn ☃' already exists"):
        tracking.create_experiment("churn ☃")
    with pytest.raises(NotFoundError, match="experiment 'nope' not found"):
        tracking.get_experiment("nope")
    with pytest.raises(NotFoundError):
        tracking.get_experiment("nul\x00id")
    with pytest.raises(NotFoundError, match="no experiment named 'CHURN ☃'"):
        tracking.get_experiment_by_name("CHURN ☃")
    for bad in ["", "   ", " padded", "padded ", "x" * 251, "nul\x00"]:
        with pytest.raises(InvalidRequestError, match="experiment name"):
            tracking.create_experiment(bad)

    names = [f"e{i}" for i in range(5)]
    for name in names:
        tracking.create_experiment(name)
    seen: list[str] = []
    token = None
    while True:
        page = tracking.list_experiments(limit=2, page_token=token)
        seen += [e.name for e in page.experiments]
        token = page.next_page_token
        if token is None:
            break
    # Every experiment once, newest first (ties within a millisecond broken by id).
    everything = tracking.list_experiments().experiments
    assert sorted(seen) == sorted([*names, "Churn ☃", "churn ☃"])
    assert seen == [e.name for e in everything]
    assert everything == sorted(everything, key=lambda e: (e.created_at_ms, e.id), reverse=True)
    assert [e.id for e in tracking.list_experiments(name="e3").experiments] == [
        tracking.get_experiment_by_name("e3").id
    ]
    assert tracking.list_experiments(name="none").experiments == []
    with pytest.raises(InvalidRequestError, match="page_token"):
        tracking.list_experiments(page_token="garbage")


def _race(
    stores: list[TrackingStore], action: Callable[[TrackingStore, int], object]
) -> list[Exception | None]:
    """``action(store, i)`` in one thread per store, all released at once by a barrier; what
    each raised (None: it succeeded)."""
    barrier = threading.Barrier(len(stores))
    raised: list[Exception | None] = [None] * len(stores)

    def run(i: int) -> None:
        barrier.wait()
        try:
            action(stores[i], i)
        except Exception as exc:
            raised[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return raised


@pytest.fixture
def racers(store_uri: str) -> Iterator[list[TrackingStore]]:
    """Six stores on one database, each with its own engine (its own connections)."""
    stores = [TrackingStore(create_engine(store_uri)) for _ in range(6)]
    upgrade(stores[0].engine)
    try:
        yield stores
    finally:
        for s in stores:
            s.engine.dispose()


def test_concurrent_creates_of_one_name_make_one_experiment(racers: list[TrackingStore]):
    raised = _race(racers, lambda store, _i: store.create_experiment("contended"))
    assert raised.count(None) == 1, raised
    assert all(isinstance(e, ConflictError) for e in raised if e is not None), raised
    assert [e.name for e in racers[0].list_experiments().experiments] == ["contended"]


# -- store: runs --------------------------------------------------------------------------------


def test_run_lifecycle(tracking: TrackingStore):
    exp = tracking.create_experiment("lifecycle")
    run = tracking.create_run(exp.id, name="first", tags={"git": "abc"})
    assert (run.experiment_id, run.name, run.status) == (exp.id, "first", RunStatus.RUNNING)
    assert run.end_time_ms is None
    assert run.tags == {"git": "abc"}
    assert abs(run.start_time_ms - time.time() * 1000) < 60_000  # the database clock
    assert tracking.get_run(run.id) == run

    finished = tracking.update_run(run.id, RunStatus.FINISHED)
    assert finished.status == RunStatus.FINISHED
    assert finished.end_time_ms is not None
    assert finished.end_time_ms >= run.start_time_ms
    failed = tracking.update_run(run.id, "FAILED", end_time=run.start_time_ms + 5)
    assert (failed.status, failed.end_time_ms) == (RunStatus.FAILED, run.start_time_ms + 5)
    resumed = tracking.update_run(run.id, "RUNNING")
    assert (resumed.status, resumed.end_time_ms) == (RunStatus.RUNNING, None)
    only_end = tracking.update_run(run.id, end_time=123)
    assert (only_end.status, only_end.end_time_ms) == (RunStatus.RUNNING, 123)
    assert tracking.update_run(run.id) == only_end

    with pytest.raises(InvalidRequestError, match="unknown run status 'DONE'"):
        tracking.update_run(run.id, "DONE")
    with pytest.raises(InvalidRequestError, match="end_time"):
        tracking.update_run(run.id, end_time=-1)
    with pytest.raises(NotFoundError, match="run 'nope' not found"):
        tracking.update_run("nope", "KILLED")
    with pytest.raises(NotFoundError, match="run 'nope' not found"):
        tracking.get_run("nope")
    with pytest.raises(NotFoundError, match="experiment 'nope' not found"):
        tracking.create_run("nope")
    for bad_call in [
        lambda: tracking.log_batch("nope", params={"a": "1"}),
        lambda: tracking.log_inputs("nope", [RunInput("d", "x")]),
        lambda: tracking.metric_history("nope", "loss"),
        lambda: tracking.list_runs("nope"),
    ]:
        with pytest.raises(NotFoundError, match="'nope' not found"):
            bad_call()

    early = tracking.create_run(exp.id, start_time=1000)
    assert early.start_time_ms == 1000
    assert early.name is None
    listed = tracking.list_runs(exp.id, limit=1)
    assert [r.id for r in listed.runs] == [run.id]  # latest start first
    assert listed.next_page_token is not None
    rest = tracking.list_runs(exp.id, limit=1, page_token=listed.next_page_token)
    assert [r.id for r in rest.runs] == [early.id]


@pytest.mark.parametrize(("limit", "at", "over", "message"), LIMITS, ids=[c[0] for c in LIMITS])
def test_log_batch_limits(tracking: TrackingStore, limit, at, over, message):
    exp = tracking.create_experiment("limits")
    run = tracking.create_run(exp.id)
    with pytest.raises(InvalidRequestError, match=message):
        over.log(tracking, run.id)
    assert tracking.get_run(run.id) == run  # nothing of the refused batch was stored
    at.log(tracking, run.id)
    _stored(tracking.get_run(run.id), at)


def test_log_batch_validation(tracking: TrackingStore):
    run = tracking.create_run(tracking.create_experiment("validation").id)
    cases: list[tuple[Batch, str]] = [
        (Batch([Metric("loss", float("nan"))]), "must be finite"),
        (Batch([Metric("loss", float("inf"))]), "must be finite"),
        (Batch([Metric("loss", 1.0, step=2**63)]), "64-bit integer"),
        (Batch([Metric("loss", 1.0, timestamp_ms=-5)]), "milliseconds since the epoch"),
        (Batch([Metric("", 1.0)]), "metric key must not be empty"),
        (Batch(params={"lr ": "1"}), "starts or ends with whitespace"),
        (Batch(params={"lr": "a\x00b"}), "NUL"),
        (Batch(tags={"t": "\ud800"}), "not valid Unicode"),
    ]
    for batch, message in cases:
        with pytest.raises(InvalidRequestError, match=message):
            batch.log(tracking, run.id)
    assert tracking.get_run(run.id) == run


def test_params_are_immutable(tracking: TrackingStore):
    run = tracking.create_run(tracking.create_experiment("params").id)
    tracking.log_batch(run.id, params={"lr": "0.1", "layers": 3, "dropout": 0.5, "bn": True})
    assert tracking.get_run(run.id).params == {
        "bn": "True",
        "dropout": "0.5",
        "layers": "3",
        "lr": "0.1",
    }
    tracking.log_batch(run.id, params={"lr": "0.1"})  # the same value again is fine
    tracking.log_param(run.id, "layers", 3)
    with pytest.raises(ConflictError, match=r"param 'lr' .* already logged as '0.1'.*got '0.2'"):
        tracking.log_batch(
            run.id,
            metrics=[Metric("acc", 0.9)],
            params={"lr": "0.2", "new": "x"},
            tags={"t": "1"},
        )
    # The whole batch was refused: no metric, no new param, no tag.
    after = tracking.get_run(run.id)
    assert (after.metrics, after.tags, "new" in after.params) == ({}, {}, False)
    assert after.params["lr"] == "0.1"

    tracking.set_tag(run.id, "stage", "train")
    tracking.set_tag(run.id, "stage", "eval")  # tags, unlike params, change
    assert tracking.get_run(run.id).tags == {"stage": "eval"}


def test_racing_writers_of_one_param_one_wins(racers: list[TrackingStore]):
    """Writers of different values race behind a barrier: exactly one succeeds, on every
    database, and the stored value is the winner's; writers of the same value all succeed."""
    store = racers[0]
    exp = store.create_experiment("race")
    for _ in range(3):
        run_id = store.create_run(exp.id).id
        raised = _race(
            racers,
            lambda s, i, run_id=run_id: s.log_batch(
                run_id, params={"seed": str(i), f"own{i}": str(i)}
            ),
        )
        assert raised.count(None) == 1, raised
        assert all(isinstance(e, ConflictError) for e in raised if e is not None), raised
        winner = str(raised.index(None))
        assert store.get_run(run_id).params == {"seed": winner, f"own{winner}": winner}

    run_id = store.create_run(exp.id).id
    assert _race(racers, lambda s, _i: s.log_param(run_id, "seed", "42")) == [None] * 6
    assert store.get_run(run_id).params == {"seed": "42"}


def test_metric_history_is_kept(tracking: TrackingStore):
    run = tracking.create_run(tracking.create_experiment("history").id)
    tracking.log_batch(
        run.id,
        [
            Metric("loss", 0.9, step=1, timestamp_ms=1000),
            Metric("loss", 1.5, step=0, timestamp_ms=1000),
            Metric("acc", 0.5, step=0),
        ],
    )
    tracking.log_metric(run.id, "loss", 0.7, step=2, timestamp_ms=2000)
    tracking.log_metric(run.id, "loss", 0.8, step=2, timestamp_ms=1500)  # older, same step
    tracking.log_metric(run.id, "loss", 0.75, step=2, timestamp_ms=2000)  # logged last
    history = tracking.metric_history(run.id, "loss")
    assert [(m.step, m.value) for m in history.metrics] == [
        (0, 1.5),
        (1, 0.9),
        (2, 0.8),
        (2, 0.7),
        (2, 0.75),
    ]
    assert history.next_page_token is None
    latest = tracking.get_run(run.id).metrics
    assert latest["loss"] == Metric("loss", 0.75, step=2, timestamp_ms=2000)
    assert latest["acc"].value == 0.5
    assert latest["acc"].timestamp_ms is not None
    assert abs(latest["acc"].timestamp_ms - time.time() * 1000) < 60_000

    pages: list[float] = []
    token = None
    while True:
        page = tracking.metric_history(run.id, "loss", limit=2, page_token=token)
        pages += [m.value for m in page.metrics]
        token = page.next_page_token
        if token is None:
            break
    assert pages == [m.value for m in history.metrics]
    assert tracking.metric_history(run.id, "missing").metrics == []

    big = [Metric("curve", float(i), step=i) for i in range(1000)]
    tracking.log_batch(run.id, big)
    assert [m.value for m in tracking.metric_history(run.id, "curve").metrics] == [
        float(i) for i in range(1000)
    ]


def test_inputs(tracking: TrackingStore):
    run = tracking.create_run(tracking.create_experiment("inputs").id)
    tracking.log_inputs(
        run.id,
        [RunInput("train", "d1", "s3://bucket/train"), RunInput("eval", "d2")],
    )
    tracking.log_inputs(run.id, [RunInput("train", "d1", "s3://bucket/train-v2")])  # same one
    tracking.log_inputs(run.id, [RunInput("train", "d3")])  # new content, new input
    inputs = tracking.get_run(run.id).inputs
    assert sorted(inputs, key=lambda i: (i.name, i.digest)) == [
        RunInput("eval", "d2", None),
        RunInput("train", "d1", "s3://bucket/train-v2"),
        RunInput("train", "d3", None),
    ]
    with pytest.raises(InvalidRequestError, match="101 inputs in one request"):
        tracking.log_inputs(run.id, [RunInput(f"d{i}", "x") for i in range(101)])
    with pytest.raises(InvalidRequestError, match="digest"):
        tracking.log_inputs(run.id, [RunInput("d", "")])


# -- REST ---------------------------------------------------------------------------------------


def _api(server: ServerProcess, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=30)


@pytest.fixture
def rest(apps: InProcessServers, store_uri: str) -> httpx.Client:
    """The tracking API of an in-process server with no worker loops, auth off."""
    client = apps.start(store_uri, workers=0)
    client.base_url = client.base_url.join("/api/v1")
    return client


def _error(answer: httpx.Response, status: int, code: str | None = None) -> str:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    if code is not None:
        assert error["code"] == code
    message: str = error["message"]
    return message


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_rest_experiments(rest: httpx.Client):
    created = rest.post("/experiments", json={"name": "rest ☃", "tags": {"a": "b"}})
    assert created.status_code == 201, created.text
    exp = created.json()
    assert set(exp) == {"id", "name", "creation_time", "tags"}
    assert (exp["name"], exp["tags"]) == ("rest ☃", {"a": "b"})
    assert rest.get(f"/experiments/{exp['id']}").json() == exp
    assert rest.get("/experiments", params={"name": "rest ☃"}).json() == {
        "experiments": [exp],
        "next_page_token": None,
    }
    assert rest.get("/experiments", params={"name": "other"}).json()["experiments"] == []

    message = _error(rest.post("/experiments", json={"name": "rest ☃"}), 409, "conflict")
    assert "already exists" in message
    _error(rest.get("/experiments/nope"), 404, "not_found")
    _error(rest.post("/experiments", json={"name": ""}), 422)
    _error(rest.post("/experiments", json={"name": "x" * 251}), 422)
    _error(rest.post("/experiments", json={"name": "x", "color": "red"}), 422)
    assert "starts or ends" in _error(rest.post("/experiments", json={"name": "x "}), 400)
    _error(rest.post("/experiments", json={"name": "t", "tags": {"k": "v" * 8001}}), 400)

    for i in range(3):
        assert rest.post("/experiments", json={"name": f"page{i}"}).status_code == 201
    everything = rest.get("/experiments").json()["experiments"]
    first = rest.get("/experiments", params={"max_results": 2}).json()
    second = rest.get(
        "/experiments", params={"max_results": 2, "page_token": first["next_page_token"]}
    ).json()
    assert first["experiments"] + second["experiments"] == everything
    assert {e["name"] for e in everything} == {"rest ☃", "page0", "page1", "page2"}
    assert everything == sorted(
        everything, key=lambda e: (e["creation_time"], e["id"]), reverse=True
    )
    _error(rest.get("/experiments", params={"max_results": 0}), 422)
    _error(rest.get("/experiments", params={"page_token": "bad"}), 400)


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_rest_runs(rest: httpx.Client):
    exp = rest.post("/experiments", json={"name": "runs"}).json()
    created = rest.post(
        "/runs", json={"experiment_id": exp["id"], "name": "r", "tags": {"git": "abc"}}
    )
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["status"] == "RUNNING"
    assert (run["name"], run["tags"], run["end_time"]) == ("r", {"git": "abc"}, None)
    assert (run["params"], run["metrics"], run["inputs"]) == ({}, [], [])
    rid = run["id"]
    assert rest.get(f"/runs/{rid}").json() == run

    batch = {
        "params": {"lr": "0.1"},
        "metrics": [
            {"key": "loss", "value": 1.0, "step": 0, "timestamp": 1000},
            {"key": "loss", "value": 0.5, "step": 1},
            {"key": "loss", "value": 0.25, "step": 2, "timestamp": 3000},
        ],
        "tags": {"stage": "train"},
    }
    answer = rest.post(f"/runs/{rid}/log-batch", json=batch)
    assert answer.status_code == 204, answer.text
    again = rest.post(f"/runs/{rid}/log-batch", json={"params": {"lr": "0.1"}})
    assert again.status_code == 204, again.text
    message = _error(
        rest.post(f"/runs/{rid}/log-batch", json={"params": {"lr": "0.2"}}), 409, "conflict"
    )
    assert "'lr'" in message
    assert "'0.1'" in message
    assert "'0.2'" in message
    _error(rest.post(f"/runs/{rid}/log-batch", json={"params": {"lr": 0.1}}), 422)
    _error(rest.post(f"/runs/{rid}/log-batch", json={"metrics": [{"key": "x"}]}), 422)
    nan = '{"metrics": [{"key": "x", "value": NaN}]}'
    headers = {"content-type": "application/json"}
    _error(rest.post(f"/runs/{rid}/log-batch", content=nan, headers=headers), 422)

    history = rest.get(f"/runs/{rid}/metric-history", params={"key": "loss"}).json()
    assert [(m["step"], m["value"]) for m in history["metrics"]] == [
        (0, 1.0),
        (1, 0.5),
        (2, 0.25),
    ]
    assert history["metrics"][2]["timestamp"] == 3000
    page = rest.get(f"/runs/{rid}/metric-history", params={"key": "loss", "max_results": 2}).json()
    assert len(page["metrics"]) == 2
    remaining = rest.get(
        f"/runs/{rid}/metric-history",
        params={"key": "loss", "page_token": page["next_page_token"]},
    ).json()
    assert [m["step"] for m in remaining["metrics"]] == [2]

    inputs = {"inputs": [{"name": "train", "digest": "d1", "source": "s3://b/t"}]}
    assert rest.post(f"/runs/{rid}/inputs", json=inputs).status_code == 204
    _error(rest.post(f"/runs/{rid}/inputs", json={"inputs": [{"name": "x"}]}), 422)

    got = rest.get(f"/runs/{rid}").json()
    assert got["params"] == {"lr": "0.1"}
    assert got["tags"] == {"git": "abc", "stage": "train"}
    assert got["metrics"] == [{"key": "loss", "value": 0.25, "step": 2, "timestamp": 3000}]
    assert got["inputs"] == inputs["inputs"]

    ended = rest.patch(f"/runs/{rid}", json={"status": "FINISHED"})
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "FINISHED"
    assert ended.json()["end_time"] >= run["start_time"]
    killed = rest.patch(f"/runs/{rid}", json={"status": "KILLED", "end_time": 5})
    assert (killed.json()["status"], killed.json()["end_time"]) == ("KILLED", 5)
    assert "status" in _error(rest.patch(f"/runs/{rid}", json={"status": "DONE"}), 422)
    _error(rest.patch(f"/runs/{rid}", json={"end_time": -1}), 422)
    _error(rest.patch(f"/runs/{rid}", json={"status": "FINISHED", "x": 1}), 422)

    listed = rest.get("/runs", params={"experiment_id": exp["id"]}).json()
    assert [r["id"] for r in listed["runs"]] == [rid]

    for answer in [
        rest.get("/runs/nope"),
        rest.patch("/runs/nope", json={"status": "FAILED"}),
        rest.post("/runs/nope/log-batch", json={"params": {"a": "b"}}),
        rest.post("/runs/nope/inputs", json=inputs),
        rest.get("/runs/nope/metric-history", params={"key": "loss"}),
        rest.post("/runs", json={"experiment_id": "nope"}),
        rest.get("/runs", params={"experiment_id": "nope"}),
    ]:
        _error(answer, 404, "not_found")
    assert "NUL" in _error(rest.get("/runs/nul%00id"), 400, "invalid_request")


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_rest_log_batch_limits(rest: httpx.Client):
    exp = rest.post("/experiments", json={"name": "limits"}).json()
    for name, at, over, message in LIMITS:
        rid = rest.post("/runs", json={"experiment_id": exp["id"]}).json()["id"]
        refused = rest.post(f"/runs/{rid}/log-batch", json=over.json())
        assert message in _error(refused, 400, "invalid_request"), name
        accepted = rest.post(f"/runs/{rid}/log-batch", json=at.json())
        assert accepted.status_code == 204, (name, accepted.text[:300])
        _stored(rest.get(f"/runs/{rid}").json(), at)
    too_many = {"inputs": [{"name": f"d{i}", "digest": "x"} for i in range(101)]}
    assert "100 inputs per request" in _error(rest.post(f"/runs/{rid}/inputs", json=too_many), 400)


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_rest_auth(servers: Servers, store_uri: str):
    """With auth on: no token is a 401; API tokens may track; a job token only within the
    experiments its job is scoped to, and it may not create or list experiments."""
    server = servers.start(store_uri, "--auth")
    engine = create_engine(store_uri)
    try:
        tokens = TokenStore(engine)
        _, user = tokens.create("bob", "user")

        def job_token(*experiment_ids: str) -> str:
            scopes = [scope("experiment_id", e) for e in experiment_ids]
            expires = int(time.time() * 1000) + 600_000
            return JobTokens(tokens).mint("job-1", 1, "bob", scopes, expires)

        with _api(server) as anonymous:
            _error(anonymous.post("/experiments", json={"name": "x"}), 401)
            _error(anonymous.get("/experiments"), 401)
        with _api(server, user) as bob:
            mine = bob.post("/experiments", json={"name": "mine"}).json()
            other = bob.post("/experiments", json={"name": "other"}).json()
            other_run = bob.post("/runs", json={"experiment_id": other["id"]}).json()
            assert len(bob.get("/experiments").json()["experiments"]) == 2

        with _api(server, job_token(mine["id"])) as job:
            run = job.post("/runs", json={"experiment_id": mine["id"]})
            assert run.status_code == 201, run.text
            rid = run.json()["id"]
            logged = job.post(f"/runs/{rid}/log-batch", json={"params": {"a": "1"}})
            assert logged.status_code == 204, logged.text
            assert job.patch(f"/runs/{rid}", json={"status": "FINISHED"}).status_code == 200
            assert job.get(f"/runs/{rid}").json()["params"] == {"a": "1"}
            assert job.get(f"/experiments/{mine['id']}").status_code == 200

            calls: list[Callable[[], httpx.Response]] = [
                lambda: job.post("/experiments", json={"name": "new"}),
                lambda: job.get("/experiments"),
                lambda: job.get(f"/experiments/{other['id']}"),
                lambda: job.post("/runs", json={"experiment_id": other["id"]}),
                lambda: job.get(f"/runs/{other_run['id']}"),
                lambda: job.post(f"/runs/{other_run['id']}/log-batch", json={"tags": {"a": "b"}}),
                lambda: job.patch(f"/runs/{other_run['id']}", json={"status": "KILLED"}),
                lambda: job.post(f"/runs/{other_run['id']}/inputs", json={"inputs": []}),
            ]
            for call in calls:
                _error(call(), 403, "permission_denied")
        with _api(server, user) as bob:
            untouched = bob.get(f"/runs/{other_run['id']}").json()
            assert (untouched["status"], untouched["tags"]) == ("RUNNING", {})
    finally:
        engine.dispose()


def test_search_runs_narrowed_in_sql_finds_exactly_what_the_filter_matches(
    tracking: TrackingStore, api: httpx.Client
):
    """The store leaves out in SQL the runs a filter rules out (a key a clause needs, the
    value of ``=``, a metric value, attribute columns), so a selective search reads few runs; the
    answer is still MLflow's: MySQL's ``=`` ignoring case and trailing spaces, or a value
    that SQL cannot compare, never changes which runs match."""
    exp = tracking.create_experiment("narrowed")
    a, b, c, d = (tracking.create_run(exp.id, start_time=1000 + i).id for i in range(4))
    acc_a = [Metric("acc", 0.95, step=0), Metric("acc", 0.9, step=1)]  # the latest: 0.9
    tracking.log_batch(a, acc_a, {"model": "gpt", "lr": "0.1"}, {"env": "prod"})
    tracking.log_batch(b, [Metric("acc", 0.5)], {"model": "GPT"}, {"env": "Prod"})
    tracking.log_batch(c, [], {"model": "gpt "}, {"env": "prod "})
    tracking.log_batch(d, [Metric("loss", 1.0)], {}, {"env": "dev"})
    tracking.update_run(a, RunStatus.FINISHED, end_time=2000)
    tracking.update_run(c, RunStatus.FAILED, end_time=3000)
    tracking.update_run(d, RunStatus.FINISHED, end_time=2500)

    def search(filter_string: str) -> set[str]:
        answer = api.post(
            "/api/2.0/mlflow/runs/search",
            json={"experiment_ids": [exp.id], "filter": filter_string},
        )
        assert answer.status_code == 200, answer.text
        return {run["info"]["run_id"] for run in answer.json().get("runs", [])}

    expected = {
        "params.model = 'gpt'": {a},
        "params.model != 'gpt'": {b, c},
        "params.model LIKE 'gpt%'": {a, c},
        "params.model ILIKE 'GPT'": {a, b},
        "params.model IS NULL": {d},
        "params.model IS NOT NULL": {a, b, c},
        "tags.env = 'prod'": {a},
        "tags.env != 'dev'": {a, b, c},
        "metrics.acc > 0.6": {a},
        "metrics.acc <= 0.9": {a, b},
        "metrics.acc > 0.92": set(),  # a had 0.95 once; its latest value is 0.9
        "metrics.acc = 0.9": {a},
        "metrics.acc < 1e400": {a, b},  # infinity: left to Python
        "metrics.acc < 100000000000000000001": {a, b},  # an integer no double holds
        "tags.missing IS NULL": {a, b, c, d},
        "attributes.status = 'FINISHED'": {a, d},
        "attributes.status IN ('FAILED', 'RUNNING')": {b, c},
        "attributes.end_time > 2000": {c, d},
        "attributes.end_time != 2000": {c, d},
        "attributes.start_time >= 1001 AND params.model = 'GPT'": {b},
        "attributes.start_time > 1001.5": {c, d},  # a fraction: left to Python
        "attributes.start_time = 1001.0": {b},
        f"attributes.run_id = '{a}'": {a},
        f"attributes.run_id IN ('{b}', '{c}')": {b, c},
        "attributes.start_time < 1e400": {a, b, c, d},  # infinity: left to Python
        "attributes.start_time < 100000000000000000000000": {a, b, c, d},  # past 64 bits
    }
    assert {f: search(f) for f in expected} == expected
    # Nearly as many clauses as the longest filter holds (10,000 characters): PostgreSQL
    # planned a query with all of them for many minutes; a few narrow it, Python checks all.
    many = " AND ".join(f"tags.env != '{i}'" for i in range(400))
    assert search(many) == {a, b, c, d}
    assert search(f"{many} AND params.model = 'GPT'") == {b}
    assert search(f"{many} AND attributes.start_time < 1002 AND metrics.acc < 0.7") == {b}

    def narrowed(filter_string: str) -> set[str]:
        clauses = mlflow_search.parse_filter(filter_string, mlflow_search.RUN_FIELDS)
        return {run.id for run in tracking.list_runs(exp.id, narrowed_by=clauses).runs}

    assert narrowed("attributes.status = 'FINISHED' AND attributes.end_time > 2000") == {d}
    assert narrowed("metrics.acc > 0") == {a, b}  # c and d have no acc
    assert narrowed("metrics.acc > 0.92") == {a}  # one of a's values passes; Python decides
    assert {a} <= narrowed("params.model = 'gpt'") <= {a, b, c}  # MySQL keeps b and c
    assert narrowed("params.model LIKE 'x%'") == {a, b, c}  # LIKE is Python's: the key only
