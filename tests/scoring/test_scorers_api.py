"""Registering scorers from Python (``assay.scoring.Scorer``), with ``assay.Client`` and with
``assay scorers``: against a real `assay server` and directly on a SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

import assay
from assay.cli import cli
from assay.db.engine import create_engine
from assay.db.migrate import upgrade
from assay.errors import InvalidFilterError, InvalidRequestError, NotFoundError
from assay.scoring import (
    RegisteredScorer,
    Scorer,
    backfill_scorer,
    delete_scorer,
    list_scorers,
    set_scorer_status,
)
from assay.tracking.store import TrackingStore
from support.jobs import fast_env
from support.servers import Servers

NO_SORRY = Scorer.heuristic("no_sorry", "keywords", keywords=["sorry"], mode="none")


@dataclass(frozen=True)
class Live:
    url: str
    store_uri: str
    """A second store, used directly (no server)."""

    def server_experiment(self) -> str:
        response = httpx.post(
            f"{self.url}/api/v1/experiments", json={"name": f"e-{uuid.uuid4().hex}"}, timeout=30
        )
        assert response.status_code == 201, response.text
        experiment_id: str = response.json()["id"]
        return experiment_id

    def store_experiment(self) -> str:
        engine = create_engine(self.store_uri)
        try:
            return TrackingStore(engine).create_experiment(f"e-{uuid.uuid4().hex}").id
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One `assay server` on SQLite for the module, plus a separate migrated SQLite store."""
    tmp = tmp_path_factory.mktemp("scorers_api")
    direct_uri = f"sqlite:///{tmp / 'direct.db'}"
    engine = create_engine(direct_uri)
    upgrade(engine)
    engine.dispose()
    started = Servers(tmp)
    try:
        yield Live(started.start(f"sqlite:///{tmp / 'server.db'}").url, direct_uri)
    finally:
        started.close()


@pytest.fixture(params=["url", "client", "env", "store"])
def where(
    request: pytest.FixtureRequest, live: Live, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, str]]:
    """(target, experiment id): a server by URL, by Client, by ASSAY_SERVER_URL, or a store."""
    monkeypatch.delenv("ASSAY_TOKEN", raising=False)
    if request.param == "store":
        yield live.store_uri, live.store_experiment()
    elif request.param == "client":
        with assay.Client(live.url) as client:
            yield client, live.server_experiment()
    elif request.param == "env":
        monkeypatch.setenv("ASSAY_SERVER_URL", live.url)
        yield None, live.server_experiment()
    else:
        yield live.url, live.server_experiment()


# -- constructors ------------------------------------------------------------------------------


def score(inputs: Any, outputs: Any, trace: Any) -> bool:
    return bool(outputs)


def not_named_score(inputs: Any, outputs: Any, trace: Any) -> bool:
    return True


def test_constructors_build_the_definitions():
    judge = Scorer.llm_judge("polite", "Polite? {{ outputs }}")
    assert judge == Scorer(
        "polite",
        "llm_judge",
        {"instructions": "Polite? {{ outputs }}", "output": {"type": "yes_no"}},
    )
    rated = Scorer.llm_judge(
        "rated",
        "Rate {{ outputs }}",
        output={"type": "number", "min": 1, "max": 5},
        model="m",
        level="session",
    )
    assert rated.definition["output"] == {"type": "number", "min": 1, "max": 5}
    assert (rated.definition["model"], rated.level) == ("m", "session")
    # Definition fields may be called name or kind: the heuristic's own are positional-only.
    odd = Scorer.heuristic("r", "regex", pattern="x", name="n", kind="k")
    assert odd.definition == {"pattern": "x", "name": "n", "kind": "k"}

    custom = Scorer.custom("c", score)
    assert custom.kind == "custom"
    assert custom.definition["code"].startswith("def score(inputs: Any, outputs: Any, trace")
    assert Scorer.custom("c", "def score(i, o, t):\n    return 1\n").definition == {
        "code": "def score(i, o, t):\n    return 1\n"
    }
    with pytest.raises(InvalidRequestError, match="'not_named_score'"):
        Scorer.custom("c", not_named_score)


# -- Python API, on a server and on a store ----------------------------------------------------


def test_register_update_stop_list_delete(where: tuple[Any, str]):
    target, experiment = where
    registered = NO_SORRY.register(
        experiment, sample_rate=0.5, filter_string="trace.status = 'OK'", target=target
    )
    assert registered == RegisteredScorer(
        experiment_id=experiment,
        name="no_sorry",
        kind="keywords",
        level="trace",
        version=1,
        definition={
            "keywords": ["sorry"],
            "mode": "none",
            "target": "outputs",
            "ignore_case": True,
        },
        sample_rate=0.5,
        filter_string="trace.status = 'OK'",
        status="ACTIVE",
        status_reason=None,
    )

    updated = NO_SORRY.update(experiment, sample_rate=0.25, target=target)
    assert (updated.sample_rate, updated.filter_string) == (0.25, "trace.status = 'OK'")
    assert updated.version == 1  # same definition: same version
    unfiltered = NO_SORRY.update(experiment, filter_string="", target=target)
    assert (unfiltered.sample_rate, unfiltered.filter_string) == (0.25, None)
    stricter = Scorer.heuristic("no_sorry", "keywords", keywords=["sorry", "apolog"])
    assert stricter.update(experiment, target=target).version == 2

    stopped = NO_SORRY.stop(experiment, target=target)
    assert (stopped.status, stopped.status_reason) == ("STOPPED", "stopped by request")
    paused = set_scorer_status(experiment, "no_sorry", "PAUSED", target=target)
    assert paused.status == "PAUSED"
    assert NO_SORRY.register(experiment, target=target).status == "ACTIVE"  # a PUT resumes

    Scorer.heuristic("a_json", "json_valid").register(experiment, target=target)
    assert [s.name for s in list_scorers(experiment, target=target)] == ["a_json", "no_sorry"]
    delete_scorer(experiment, "no_sorry", target=target)
    assert [s.name for s in list_scorers(experiment, target=target)] == ["a_json"]
    with pytest.raises(NotFoundError, match="no_sorry"):
        delete_scorer(experiment, "no_sorry", target=target)
    with pytest.raises(NotFoundError, match="no_sorry"):
        NO_SORRY.update(experiment, target=target)


def test_bad_input_is_the_same_error_on_a_server_and_a_store(where: tuple[Any, str]):
    target, experiment = where
    with pytest.raises(InvalidRequestError, match="'keywords'"):
        Scorer.heuristic("k", "keywords").register(experiment, target=target)
    with pytest.raises(InvalidRequestError, match="did you mean 'keywords'"):
        Scorer.heuristic("k", "keyword", keywords=["a"]).register(experiment, target=target)
    with pytest.raises(InvalidFilterError, match=r"trace\.bogus"):
        NO_SORRY.register(experiment, filter_string="trace.bogus = 1", target=target)
    with pytest.raises(InvalidRequestError, match="sample_rate"):
        NO_SORRY.register(experiment, sample_rate=1.5, target=target)
    with pytest.raises(NotFoundError, match="nope"):
        NO_SORRY.register("nope", target=target)
    assert list_scorers(experiment, target=target) == []


def test_backfill_dry_run_and_job(where: tuple[Any, str]):
    target, experiment = where
    Scorer.llm_judge("polite", "Polite? {{ outputs }}").register(experiment, target=target)
    planned = backfill_scorer(
        experiment, "polite", start_ms=0, end_ms=2**41, dry_run=True, target=target
    )
    assert planned == {
        "count": 0,
        "examined": 0,
        "estimated_tokens": 0,
        "cap": 100_000,
        "over_cap": False,
        "job_id": None,
    }
    queued = backfill_scorer(experiment, "polite", start_ms=0, end_ms=2**41, target=target)
    assert queued["job_id"]
    with pytest.raises(InvalidRequestError, match="end must be after start"):
        backfill_scorer(experiment, "polite", start_ms=5, end_ms=5, target=target)


# -- assay.Client ------------------------------------------------------------------------------


def _ingest(url: str, experiment_id: str, trace_id: str) -> None:
    span = {
        "traceId": trace_id,
        "spanId": trace_id[:16],
        "name": "root",
        "kind": 2,
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000000005000000",
        "attributes": [{"key": "output.value", "value": {"stringValue": "ok"}}],
        "status": {"code": 1},
    }
    resource = {
        "attributes": [{"key": "assay.experiment_id", "value": {"stringValue": experiment_id}}]
    }
    body = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": [span]}]}]}
    response = httpx.post(f"{url}/v1/traces", json=body, timeout=30)
    assert response.status_code == 200, response.text


def test_client_scorer_methods_and_decision_log(live: Live):
    experiment = live.server_experiment()
    with assay.Client(live.url) as client:
        put = client.put_scorer(
            experiment, "never", kind="output_length", definition={"max_chars": 10}, sample_rate=0
        )
        assert put["scorer"]["definition"]["max_chars"] == 10
        assert client.get_scorer(experiment, "never") == put
        assert [s["name"] for s in client.list_scorers(experiment)] == ["never"]
        assert client.set_scorer_status(experiment, "never", "PAUSED")["status"] == "PAUSED"

        trace_id = uuid.uuid4().hex
        _ingest(live.url, experiment, trace_id)
        [decision] = client.trace_scoring(trace_id)
        assert (decision["scorer"], decision["state"]) == ("never", "not_sampled")

        counted = client.backfill_scorer(
            experiment, "never", start_ms=0, end_ms=2**41, dry_run=True
        )
        assert (counted["examined"], counted["count"]) == (1, 0)  # examined, not sampled
        client.delete_scorer(experiment, "never")
        assert client.list_scorers(experiment) == []
        with pytest.raises(NotFoundError):
            client.get_scorer(experiment, "never")
        with pytest.raises(NotFoundError):
            client.trace_scoring(uuid.uuid4().hex)
        with pytest.raises(InvalidRequestError, match="status"):
            client.set_scorer_status(experiment, "never", "SLEEPING")


# -- assay scorers -----------------------------------------------------------------------------

NO_ENV = {"ASSAY_STORE_URI": None, "ASSAY_SERVER_URL": None, "ASSAY_TOKEN": None}


def _cli(*args: str) -> Result:
    """``assay scorers …`` in this process (click's runner), apart from the environment."""
    return CliRunner().invoke(cli, ["scorers", *args], env=NO_ENV)


def _ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def _usage_error(exit_code: int, stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert exit_code == 2, stderr
    assert len(lines) == 1, f"expected one stderr line, got: {stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def test_cli_bad_filter_is_one_line_and_exit_2_from_the_real_command(live: Live):
    """Through the installed entry point and the server's 400: one line, exit 2, no traceback."""
    env = fast_env()
    for key in NO_ENV:
        env.pop(key, None)
    args = ["scorers", "add", live.server_experiment(), "x", "--kind", "keywords"]
    args += ["--definition", '{"keywords": ["a"]}', "--server", live.url]
    args += ["--filter", "trace.status = 'OK' AND trace.bogus = 1"]
    proc = subprocess.run(
        [sys.executable, "-m", "assay", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "trace.bogus" in _usage_error(proc.returncode, proc.stderr)
    assert proc.stdout == ""


def test_cli_add_list_pause_resume_backfill_remove(live: Live, tmp_path: Path):
    on_server, on_store = live.server_experiment(), live.store_experiment()
    server, store = ["--server", live.url], ["--store", live.store_uri]
    keywords = ["--kind", "keywords", "--definition", '{"keywords": ["sorry"]}']

    added = _cli("add", on_server, "no_sorry", *keywords, "--sample-rate", "0.5", *server)
    shown = json.loads(_ok(added))
    assert (shown["name"], shown["sample_rate"], shown["status"]) == ("no_sorry", 0.5, "ACTIVE")
    bad_filter = _cli("add", on_server, "x", *keywords, "--filter", "trace.bogus = 1", *server)
    assert "trace.bogus" in _usage_error(bad_filter.exit_code, bad_filter.stderr)
    bad_json = _cli(
        "add", on_server, "x", "--kind", "keywords", "--definition", "{keywords: a}", *server
    )
    assert "--definition is not valid JSON" in _usage_error(bad_json.exit_code, bad_json.stderr)
    not_object = _cli("add", on_store, "x", "--kind", "keywords", "--definition", "[1]", *store)
    assert "must be a JSON object" in _usage_error(not_object.exit_code, not_object.stderr)

    definition = tmp_path / "pii.json"
    definition.write_text(json.dumps({"types": ["email"]}))
    pii = ["--kind", "pii", "--definition-file", str(definition), "--level", "session"]
    shown = json.loads(_ok(_cli("add", on_store, "pii", *pii, *store)))
    assert (shown["level"], shown["definition"]["types"]) == ("session", ["email"])

    table = _ok(_cli("list", on_server, *server))
    assert "no_sorry" in table
    assert "keywords" in table
    assert json.loads(_ok(_cli("pause", on_store, "pii", *store)))["status"] == "PAUSED"
    assert json.loads(_ok(_cli("resume", on_store, "pii", *store)))["status"] == "ACTIVE"
    window = ["--start", "2020-01-01T00:00Z", "--end", str(2**41)]
    counted = json.loads(
        _ok(_cli("backfill", on_server, "no_sorry", *window, "--dry-run", *server))
    )
    assert (counted["count"], counted["job_id"]) == (0, None)
    naive = _cli("backfill", on_server, "no_sorry", "--start", "2020-01-01", "--end", "1", *server)
    assert "time zone" in _usage_error(naive.exit_code, naive.stderr)

    assert json.loads(_ok(_cli("remove", on_server, "no_sorry", *server))) == {
        "experiment_id": on_server,
        "name": "no_sorry",
        "deleted": True,
    }
    assert json.loads(_ok(_cli("list", on_server, "--json", *server))) == []
    assert [s["name"] for s in json.loads(_ok(_cli("list", on_store, "--json", *store)))] == ["pii"]
    again = _cli("remove", on_server, "no_sorry", *server)
    assert "'no_sorry' not found" in _usage_error(again.exit_code, again.stderr)
    both = _cli("list", on_server, *server, *store)
    assert "not both" in _usage_error(both.exit_code, both.stderr)
