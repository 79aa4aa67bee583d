"""The queueing tracking client, over REST to a real server and directly on the store, on SQLite,
PostgreSQL and MariaDB: nothing sent before flush, batching at the limits (requests counted as
they really go out), pending run ids, runs in parallel and each run in order, truncation,
aggregated partial failures, async flush, the context manager, bearer tokens."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from assay.db.engine import create_engine
from assay.db.migrate import upgrade
from assay.errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    FlushError,
    InvalidRequestError,
    NotFoundError,
    WaitTimeoutError,
)
from assay.server.tokens import TokenStore
from assay.tracking import (
    QueueingClient,
    RunInput,
    RunStatus,
    StoreTransport,
    TrackingStore,
)
from assay.tracking.queueing import MAX_FLUSH_THREADS, PENDING_PREFIX
from support.databases import empty_store
from support.servers import ServerProcess, Servers, module_server
from support.timing import wait_until

MISSING_EXPERIMENT = "00000000-0000-0000-0000-000000000000"

# -- counting what is really sent ---------------------------------------------------------------


@dataclass
class Call:
    """One request as it went out: ``op`` is create_run, log_batch, log_inputs or update_run;
    ``body`` keeps metrics as (key, step) pairs."""

    op: str
    run_id: str
    body: dict[str, Any]
    start: float
    end: float = 0.0
    thread: str = ""


@dataclass
class Recorder:
    """Records every request in the order they start. ``gate``: the first ``gate.parties``
    requests wait for each other (a broken barrier, i.e. requests that were not in flight
    together, fails them). ``hold``: every request waits for it first."""

    calls: list[Call] = field(default_factory=list)
    gate: threading.Barrier | None = None
    hold: threading.Event | None = None
    in_flight: int = 0
    most_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def around(
        self,
        op: str,
        run_id: str,
        body: dict[str, Any],
        send: Callable[[], Any],
        created: Callable[[Any], str | None] = lambda _: None,
    ) -> Any:
        """Record one request around ``send``; ``created`` reads a created run's id from the
        answer."""
        call = Call(op, run_id, body, time.monotonic(), thread=threading.current_thread().name)
        with self._lock:
            self.calls.append(call)
            gated = self.gate is not None and len(self.calls) <= self.gate.parties
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.hold is not None:
                assert self.hold.wait(30), "held request never released"
            if gated:
                assert self.gate is not None
                self.gate.wait()
            answer = send()
            call.run_id = created(answer) or call.run_id
            return answer
        finally:
            call.end = time.monotonic()
            with self._lock:
                self.in_flight -= 1

    def of(self, run_id: str, op: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.run_id == run_id and op in (None, c.op)]


def _batch_body(metrics: Any, params: Any, tags: Any) -> dict[str, Any]:
    return {"metrics": metrics, "params": dict(params), "tags": dict(tags)}


class CountingHTTP(httpx.BaseTransport):
    """httpx's real transport, recording each request that reaches the real server."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.removeprefix("/api/v1/runs").strip("/").split("/")
        body = json.loads(request.content or b"{}")
        run_id = parts[0]
        if request.method == "POST" and parts == [""]:
            op = "create_run"
        elif request.method == "PATCH":
            op = "update_run"
        else:
            op = {"log-batch": "log_batch", "inputs": "log_inputs"}[parts[1]]
        if op == "log_batch":
            metrics = [(m["key"], m["step"]) for m in body["metrics"]]
            body = _batch_body(metrics, body["params"], body["tags"])

        def send() -> httpx.Response:
            response = self.inner.handle_request(request)
            response.read()
            return response

        def created(response: httpx.Response) -> str | None:
            return str(response.json()["id"]) if response.status_code == 201 else None

        response: httpx.Response = self.recorder.around(op, run_id, body, send, created)
        return response

    def close(self) -> None:
        self.inner.close()


def count_store_calls(store: TrackingStore, recorder: Recorder) -> None:
    """Wrap the store methods a StoreTransport calls, recording each call."""
    create_run, log_batch = store.create_run, store.log_batch
    log_inputs, update_run = store.log_inputs, store.update_run

    def create(experiment_id: str, name: Any = None, start_time: Any = None, tags: Any = None):
        body = {"experiment_id": experiment_id, "name": name, "tags": dict(tags or {})}
        return recorder.around(
            "create_run",
            "",
            body,
            lambda: create_run(experiment_id, name, start_time, tags),
            lambda run: run.id,
        )

    def batch(run_id: str, metrics: Any = (), params: Any = None, tags: Any = None) -> None:
        body = _batch_body([(m.key, m.step) for m in metrics], params or {}, tags or {})
        recorder.around("log_batch", run_id, body, lambda: log_batch(run_id, metrics, params, tags))

    def inputs(run_id: str, items: Any) -> None:
        body = {"inputs": [i.name for i in items]}
        recorder.around("log_inputs", run_id, body, lambda: log_inputs(run_id, items))

    def update(run_id: str, status: Any = None, end_time: Any = None) -> Any:
        body = {"status": None if status is None else str(status), "end_time": end_time}
        return recorder.around(
            "update_run", run_id, body, lambda: update_run(run_id, status, end_time)
        )

    store.create_run = create  # type: ignore[method-assign]
    store.log_batch = batch  # type: ignore[method-assign]
    store.log_inputs = inputs  # type: ignore[method-assign]
    store.update_run = update  # type: ignore[method-assign]


@dataclass
class Target:
    """Where a test's client sends (a real server's URL, or the store URI itself), and a
    store on the same database to set up and check with."""

    mode: str
    uri: str
    store: TrackingStore
    experiment_id: str
    clients: list[QueueingClient] = field(default_factory=list)

    def client(self, recorder: Recorder | None = None, **kwargs: Any) -> QueueingClient:
        recorder = recorder if recorder is not None else Recorder()
        if self.mode == "rest":
            client = QueueingClient(self.uri, http_transport=CountingHTTP(recorder), **kwargs)
        else:
            client = QueueingClient(self.uri, **kwargs)
            assert isinstance(client.transport, StoreTransport)
            count_store_calls(client.transport.store, recorder)
        self.clients.append(client)
        return client

    def run(self, name: str | None = None) -> str:
        """A run made directly in the store (not counted)."""
        return self.store.create_run(self.experiment_id, name=name).id

    def steps(self, run_id: str, key: str) -> list[int]:
        """Every logged step of a metric (by step)."""
        found, token = [], None
        while True:
            page = self.store.metric_history(run_id, key, page_token=token)
            found += [m.step for m in page.metrics]
            token = page.next_page_token
            if token is None:
                return found


@pytest.fixture(scope="module")
def rest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module's REST cases (each makes its own experiment)."""
    with module_server("sqlite", tmp_path_factory, "queueing") as server:
        yield server


@pytest.fixture(params=["rest-sqlite", "direct-sqlite", "direct-postgresql", "direct-mysql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """The REST transport on one store (HTTP is the same whatever the database), the direct
    one on every store."""
    kind, db = str(request.param).split("-")
    if kind == "rest":
        server: ServerProcess = request.getfixturevalue("rest_server")
        store_uri, uri = server.store_uri, server.url
    else:
        store_uri = uri = empty_store(request, db, tmp_path)
    engine = create_engine(store_uri)
    upgrade(engine)
    store = TrackingStore(engine)
    experiment = store.create_experiment(f"queueing-{uuid.uuid4().hex[:8]}")
    made = Target(kind, uri, store, experiment.id)
    try:
        yield made
    finally:
        for client in made.clients:
            client.close()
        engine.dispose()


def _batch_shapes(calls: list[Call]) -> list[tuple[int, int, int]]:
    """(params, tags, metrics) of each log_batch call."""
    return [
        (len(c.body["params"]), len(c.body["tags"]), len(c.body["metrics"]))
        for c in calls
        if c.op == "log_batch"
    ]


# -- tests --------------------------------------------------------------------------------------


def test_nothing_is_sent_before_flush(target: Target):
    recorder = Recorder()
    client = target.client(recorder)
    existing = target.run("existing")
    pending = client.create_run(target.experiment_id, name="queued", tags={"t": "1"})
    assert pending.startswith(PENDING_PREFIX)
    for run_id in (pending, existing):
        client.log_params(run_id, {"lr": 0.1, "layers": 3, "fast": True})
        client.log_metrics(run_id, {"loss": 0.5, "acc": 0.9}, step=1)
        client.set_tags(run_id, {"owner": "me"})
        client.log_inputs(run_id, [RunInput("train", "sha1", "s3://x")])
        client.set_terminated(run_id)
    time.sleep(0.2)  # give a (wrong) background sender the chance to show itself
    assert recorder.calls == []
    assert [r.name for r in target.store.list_runs(target.experiment_id).runs] == ["existing"]
    assert target.store.get_run(existing).params == {}
    with pytest.raises(NotFoundError, match="not sent yet"):
        client.resolve(pending)

    client.flush()
    real = client.resolve(pending)
    assert [c.op for c in recorder.of(real)] == [
        "create_run",
        "log_batch",
        "log_inputs",
        "update_run",
    ]
    assert [c.op for c in recorder.of(existing)] == ["log_batch", "log_inputs", "update_run"]
    for run_id in (real, existing):
        run = target.store.get_run(run_id)
        assert run.params == {"fast": "True", "layers": "3", "lr": "0.1"}
        assert {k: (m.value, m.step) for k, m in run.metrics.items()} == {
            "acc": (0.9, 1),
            "loss": (0.5, 1),
        }
        assert run.inputs == [RunInput("train", "sha1", "s3://x")]
        assert run.status is RunStatus.FINISHED
        assert run.end_time_ms is not None
    assert target.store.get_run(real).tags == {"owner": "me", "t": "1"}
    assert target.store.get_run(real).name == "queued"
    client.flush()  # nothing left: nothing sent
    assert len(recorder.calls) == 7


# (what, params, tags, metrics, the (params, tags, metrics) of each request)
BATCHES: list[tuple[str, int, int, int, list[tuple[int, int, int]]]] = [
    ("100 params", 100, 0, 0, [(100, 0, 0)]),
    ("101 params", 101, 0, 0, [(100, 0, 0), (1, 0, 0)]),
    ("1000 metrics", 0, 0, 1000, [(0, 0, 1000)]),
    ("1001 metrics", 0, 0, 1001, [(0, 0, 1000), (0, 0, 1)]),
    ("params topped up to 1000", 100, 0, 900, [(100, 0, 900)]),
    ("one metric over", 100, 0, 901, [(100, 0, 900), (0, 0, 1)]),
    ("every chunk topped up", 150, 0, 1800, [(100, 0, 900), (50, 0, 900)]),
    ("params and tags share 100", 60, 60, 100, [(60, 40, 100), (0, 20, 0)]),
]


def test_flush_batches_within_the_limits(target: Target):
    recorder = Recorder()
    client = target.client(recorder)
    for what, n_params, n_tags, n_metrics, expected in BATCHES:
        run_id = target.run(what)
        for i in range(n_params):
            client.log_params(run_id, {f"p{i}": i})
        client.set_tags(run_id, {f"t{i}": str(i) for i in range(n_tags)})
        for i in range(n_metrics):
            client.log_metrics(run_id, {"m": float(i)}, step=i)
        client.flush()
        calls = recorder.of(run_id)
        assert len(calls) == len(expected), what
        assert _batch_shapes(calls) == expected, what
        run = target.store.get_run(run_id)
        assert run.params == {f"p{i}": str(i) for i in range(n_params)}, what
        assert run.tags == {f"t{i}": str(i) for i in range(n_tags)}, what
        assert target.steps(run_id, "m") == list(range(n_metrics)), what


def test_pending_run_ids_across_runs_and_flushes(target: Target):
    recorder = Recorder()
    client = target.client(recorder)
    pending = [
        client.create_run(target.experiment_id, name=f"r{i}", tags={"i": str(i)}) for i in range(4)
    ]
    assert len(set(pending)) == 4
    for i, run_id in enumerate(pending):
        client.log_params(run_id, {"i": i})
        client.log_metrics(run_id, {"loss": 1.0}, step=0)
    client.flush()
    real = [client.resolve(run_id) for run_id in pending]
    assert len(set(real)) == 4
    assert not any(r.startswith(PENDING_PREFIX) for r in real)
    for i, run_id in enumerate(real):
        run = target.store.get_run(run_id)
        assert (run.name, run.params, run.tags) == (f"r{i}", {"i": str(i)}, {"i": str(i)})
        # created once, then the batch went to the id the create answered
        assert [c.op for c in recorder.of(run_id)] == ["create_run", "log_batch"]

    # A second flush: by the pending id, and by the real one, which is the same run.
    first = len(recorder.calls)
    for i, run_id in enumerate(pending):
        client.log_metrics(run_id, {"loss": 0.5}, step=1)
        client.set_tags(real[i], {"done": "yes"})
        client.set_terminated(run_id, RunStatus.KILLED if i == 0 else "FINISHED")
    client.flush()
    later = recorder.calls[first:]
    assert {c.run_id for c in later} == set(real)
    assert [c.op for c in later if c.run_id == real[0]] == ["log_batch", "update_run"]
    for i, run_id in enumerate(real):
        run = target.store.get_run(run_id)
        assert run.status is (RunStatus.KILLED if i == 0 else RunStatus.FINISHED)
        assert run.tags == {"done": "yes", "i": str(i)}
        assert target.steps(run_id, "loss") == [0, 1]
    assert len(target.store.list_runs(target.experiment_id).runs) == 4

    with pytest.raises(InvalidRequestError, match="unknown pending run id"):
        client.log_params(f"{PENDING_PREFIX}0123", {"a": 1})
    with pytest.raises(NotFoundError, match="unknown pending run id"):
        client.resolve(f"{PENDING_PREFIX}0123")
    assert client.resolve(real[0]) == real[0]


def test_runs_are_sent_in_parallel(target: Target):
    # Three runs' first requests must be in flight together, or the barrier breaks them.
    recorder = Recorder(gate=threading.Barrier(3, timeout=30))
    client = target.client(recorder)
    runs = [target.run(f"r{i}") for i in range(3)]
    for run_id in runs:
        client.log_params(run_id, {"a": 1})
    client.flush()
    assert len(recorder.calls) == 3
    assert max(c.start for c in recorder.calls) < min(c.end for c in recorder.calls)
    assert len({c.thread for c in recorder.calls}) == 3
    assert all(c.thread.startswith("assay-flush") for c in recorder.calls)

    # Many runs, every request held: exactly as many in flight as the shared pool has threads.
    hold = threading.Event()
    recorder = Recorder(hold=hold)
    client = target.client(recorder)
    runs = [target.run(f"many{i}") for i in range(3 * MAX_FLUSH_THREADS)]
    for run_id in runs:
        for step in range(3):
            client.log_metrics(run_id, {"m": 1.0}, step=step)
    handle = client.flush(synchronous=False)
    wait_until(lambda: recorder.in_flight == MAX_FLUSH_THREADS, timeout=30)
    hold.set()
    handle.wait(60)
    assert len(recorder.calls) == len(runs)
    assert recorder.most_in_flight == MAX_FLUSH_THREADS
    for run_id in runs:
        assert target.steps(run_id, "m") == [0, 1, 2]


def test_each_runs_requests_keep_their_order(target: Target):
    recorder = Recorder()
    client = target.client(recorder)
    others = [target.run(f"other{i}") for i in range(3)]
    run = client.create_run(target.experiment_id, name="ordered")
    client.log_params(run, {f"p{i}": i for i in range(150)})
    for step in range(2500):
        client.log_metrics(run, {"m": float(step)}, step=step)
        if step % 500 == 0:
            for other in others:
                client.log_metrics(other, {"m": float(step)}, step=step)
    client.log_inputs(run, [RunInput(f"d{i}", "x") for i in range(150)])
    first = client.flush(synchronous=False)
    # Queued and flushed while the first flush may still be sending: sent after it.
    for step in range(2500, 3500):
        client.log_metrics(run, {"m": float(step)}, step=step)
    client.set_terminated(run, end_time=1_700_000_000_000)
    for other in others:
        client.set_terminated(other, "FAILED")
    second = client.flush(synchronous=False)
    second.wait(60)
    first.wait(60)

    real = client.resolve(run)
    ops = [c.op for c in recorder.of(real)]
    assert ops == ["create_run"] + ["log_batch"] * 3 + ["log_inputs"] * 2 + ["log_batch"] * 1 + [
        "update_run"
    ]
    steps = [step for c in recorder.of(real, "log_batch") for _, step in c.body["metrics"]]
    assert steps == list(range(3500))
    for earlier, later in zip(recorder.of(real), recorder.of(real)[1:], strict=False):
        assert earlier.end <= later.start
    stored = target.store.get_run(real)
    assert (stored.status, stored.end_time_ms) == (RunStatus.FINISHED, 1_700_000_000_000)
    assert len(stored.params) == 150
    assert len(stored.inputs) == 150
    for other in others:
        assert [c.op for c in recorder.of(other)] == ["log_batch", "update_run"]
        assert target.store.get_run(other).status is RunStatus.FAILED


def test_long_keys_and_values_are_truncated_when_queued(
    target: Target, caplog: pytest.LogCaptureFixture
):
    recorder = Recorder()
    client = target.client(recorder)
    run_id = target.run()
    param_key, tag_key, metric_key = "p" * 300, "t" * 260, "m" * 251
    spaced = "s" * 249 + " " + "x" * 10  # cut at 250: the trailing space goes too
    with caplog.at_level(logging.WARNING, logger="assay.tracking"):
        client.log_params(run_id, {param_key: "v" * 7000, "short": "w" * 6001, spaced: "1"})
        client.log_params(run_id, {param_key: "v" * 7000})  # the same again: no new warning
        client.set_tags(run_id, {tag_key: "😀" * 9000})
        for step in range(3):
            client.log_metrics(run_id, {metric_key: 1.0}, step=step)
        assert recorder.calls == []
    warnings = [r.getMessage() for r in caplog.records]
    warnings = [w for w in warnings if "tracking.truncated" in w]
    assert len(warnings) == 5, warnings  # one per key: 3 params, 1 tag, 1 metric
    assert any(
        "key of 300 characters to 250 and value of 7000 characters to 6000" in w for w in warnings
    )

    client.flush()
    run = target.store.get_run(run_id)
    assert run.params == {"p" * 250: "v" * 6000, "short": "w" * 6000, "s" * 249: "1"}
    assert run.tags == {"t" * 250: "😀" * 8000}
    assert target.steps(run_id, "m" * 250) == [0, 1, 2]
    assert len(recorder.calls) == 1


def test_failures_are_listed_and_everything_else_is_sent(target: Target):
    recorder = Recorder()
    client = target.client(recorder)
    clash, good, also_good = target.run("clash"), target.run("good"), target.run("also_good")
    doomed = client.create_run(MISSING_EXPERIMENT, name="doomed")
    client.log_params(clash, {"lr": "0.1"})
    client.log_metrics(clash, {"m": 1.0}, step=0)
    client.log_params(clash, {"lr": "0.2"})  # a param cannot change: this request is a 409
    client.set_terminated(clash)
    for run_id in (good, also_good):
        client.log_params(run_id, {"lr": "0.3"})
        client.log_metrics(run_id, {"m": 2.0}, step=0)
        client.set_terminated(run_id)
    client.log_params(doomed, {"lr": "0.4"})
    client.set_terminated(doomed)

    with pytest.raises(FlushError) as caught:
        client.flush()
    failures = caught.value.failures
    assert [(f.run_id, f.op) for f in failures] == [
        (doomed, "create_run"),
        (doomed, "log_batch (1 param)"),
        (doomed, "set_terminated (FINISHED)"),
        (clash, "log_batch (1 param)"),
    ]
    assert isinstance(failures[0].error, NotFoundError)
    assert all("not sent" in f.reason and "create_run failed" in f.reason for f in failures[1:3])
    assert all(f.error is None for f in failures[1:3])
    assert isinstance(failures[3].error, ConflictError)
    assert "'lr'" in failures[3].reason
    message = str(caught.value)
    assert message.startswith("4 of 10 queued tracking requests failed:")
    assert all(f"run {f.run_id}: {f.op}: {f.reason}" in message for f in failures)
    assert caught.value.code == "flush_failed"

    # everything else landed, in order: the clashing run still ended
    stored = target.store.get_run(clash)
    assert (stored.params, stored.status) == ({"lr": "0.1"}, RunStatus.FINISHED)
    assert target.steps(clash, "m") == [0]
    for run_id in (good, also_good):
        stored = target.store.get_run(run_id)
        assert (stored.params, stored.status) == ({"lr": "0.3"}, RunStatus.FINISHED)
        assert target.steps(run_id, "m") == [0]
    assert "doomed" not in {r.name for r in target.store.list_runs(target.experiment_id).runs}
    assert not any(c.op == "create_run" and c.run_id for c in recorder.calls)
    with pytest.raises(NotFoundError, match="create_run failed"):
        client.resolve(doomed)

    # A later flush of the run that was never created fails the same way, without sending.
    sent = len(recorder.calls)
    client.log_metrics(doomed, {"m": 1.0})
    with pytest.raises(FlushError, match=r"not sent: run .* was not created") as again:
        client.flush()
    assert len(again.value.failures) == 1
    assert len(recorder.calls) == sent


def test_async_flush_returns_a_handle(target: Target):
    hold = threading.Event()
    recorder = Recorder(hold=hold)
    client = target.client(recorder)
    run_id = target.run()
    target.store.log_param(run_id, "lr", "0.1")
    client.log_params(run_id, {"lr": "0.2"})
    client.log_metrics(target.run(), {"m": 1.0})
    handle = client.flush(synchronous=False)
    assert not handle.done()
    with pytest.raises(WaitTimeoutError):
        handle.wait(timeout=0.1)
    hold.set()
    with pytest.raises(FlushError, match="1 of 2 queued tracking requests failed") as caught:
        handle.wait(timeout=60)
    assert handle.done()
    assert handle.failures == caught.value.failures
    assert isinstance(handle.failures[0].error, ConflictError)

    empty = client.flush(synchronous=False)
    assert empty.done()
    empty.wait()


def test_context_manager_flushes_on_clean_exit_only(
    target: Target, caplog: pytest.LogCaptureFixture
):
    recorder = Recorder()
    with target.client(recorder) as client:
        run_id = client.create_run(target.experiment_id, name="clean")
        client.log_params(run_id, {"a": 1})
        client.set_terminated(run_id)
        assert recorder.calls == []
    assert [c.op for c in recorder.calls] == ["create_run", "log_batch", "update_run"]
    assert target.store.get_run(recorder.calls[0].run_id).params == {"a": "1"}
    with pytest.raises(InvalidRequestError, match="closed"):
        client.log_params(run_id, {"b": 2})

    recorder = Recorder()

    def crash() -> None:
        with target.client(recorder) as client:
            run_id = client.create_run(target.experiment_id, name="failed")
            client.log_params(run_id, {"a": 1})
            raise RuntimeError("boom")

    with (
        caplog.at_level(logging.WARNING, logger="assay.tracking"),
        pytest.raises(RuntimeError, match="boom"),
    ):
        crash()
    assert recorder.calls == []
    assert "failed" not in {r.name for r in target.store.list_runs(target.experiment_id).runs}
    assert any("tracking.dropped operations=2" in r.getMessage() for r in caplog.records)

    # A clean exit whose flush fails raises the FlushError.
    with pytest.raises(FlushError), target.client() as client:
        client.create_run(MISSING_EXPERIMENT)


@pytest.mark.parametrize("target", ["direct-sqlite"], indirect=True)
def test_bad_values_are_refused_when_queued(target: Target):
    recorder = Recorder()
    client = target.client(recorder)
    run_id = target.run()
    bad: list[Callable[[], Any]] = [
        lambda: client.log_metrics(run_id, {"ok": 1.0, "nan": math.nan}),
        lambda: client.log_metrics(run_id, {"m": 1.0}, step=2**63),
        lambda: client.log_params(run_id, {"": "x"}),
        lambda: client.log_params(run_id, {"ok": "1", " padded": "x"}),
        lambda: client.set_tags(run_id, {"t": "nul\x00"}),
        lambda: client.set_terminated(run_id, "RUNNING"),
        lambda: client.set_terminated(run_id, "DONE"),
        lambda: client.log_inputs(run_id, [RunInput("d", "")]),
        lambda: client.log_params("", {"a": "1"}),
        lambda: client.create_run(target.experiment_id, start_time=-1),
        lambda: client.create_run(target.experiment_id, name=" x"),
    ]
    for call in bad:
        with pytest.raises(InvalidRequestError):
            call()
    client.flush()
    assert recorder.calls == []
    with pytest.raises(ConfigError, match="for a server URL"):
        QueueingClient(target.uri, token="secret")


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_rest_with_a_bearer_token(servers: Servers, store_uri: str):
    server = servers.start(store_uri, "--auth")
    engine = create_engine(store_uri)
    try:
        _, token = TokenStore(engine).create("bob", "user")
        experiment = TrackingStore(engine).create_experiment("auth")
        with QueueingClient(server.url, token=token) as client:
            run_id = client.create_run(experiment.id)
            client.log_params(run_id, {"a": 1})
        assert TrackingStore(engine).get_run(client.resolve(run_id)).params == {"a": "1"}

        anonymous = QueueingClient(server.url)
        run_id = anonymous.create_run(experiment.id)
        anonymous.log_params(run_id, {"a": 1})
        with pytest.raises(FlushError) as caught:
            anonymous.flush()
        anonymous.close()
        assert isinstance(caught.value.failures[0].error, AuthenticationError)
        assert "not sent" in caught.value.failures[1].reason
    finally:
        engine.dispose()
