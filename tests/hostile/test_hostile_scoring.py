"""Hostile scorers (issue 12): a regex that backtracks for ever, and custom code slower than its
time limit. Each fails its own assessments, with the reason, and holds back nothing else: the
server keeps answering, and the other scorers' assessments land without waiting for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

import assay
from assay.db.tables import assessments, scoring_tasks
from assay.scoring.engine import ScoringEngine
from assay.scoring.service import ScoringService
from assay.stores import Stores
from support.scoring import (
    drain,
    experiment,
    ingest,
    ledger,
    new_trace_id,
    register,
    scored,
    settings_for,
    trace_spans,
)
from support.servers import Servers
from support.timing import wait_until

# What is under test is the scoring engine's time limits, not a store: SQLite only (the
# ledger's states on each database are tested in tests/scoring).
pytestmark = pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)

ISSUE_PATTERN = r"^(\w+\s?)*$"
"""The issue's pattern: with ``re``, a 29-character output that does not match froze the
server for 40 s. ``regex`` matches it at once."""
HOSTILE_PATTERN = r"^(a|a)*$"
"""Backtracks exponentially in any backtracking engine: only the time limit stops it."""
HOSTILE_OUTPUTS = ["a" * 28 + "!", "a" * 40 + "b"]
REGEX_TIMEOUT_S = 5
HEALTH_MAX_S = REGEX_TIMEOUT_S * 0.6
"""Slowest /health allowed while the matches run. A match that held the GIL would block it for
its whole time limit (5 s); the other 2 s are the margin for a loaded machine (a 2-core box at a
load of 20 answered in 1.5 s), not for the match."""


@pytest.fixture
def engine(store_uri: str) -> Iterator[sa.Engine]:
    engine = assay.db.create_engine(store_uri)
    assay.db.upgrade(engine)
    yield engine
    engine.dispose()


def _ledger_of(engine: sa.Engine, scorer: str) -> list[str]:
    return [state for _, name, state in ledger(engine) if name == scorer]


def _reasons(service: ScoringService, trace_ids: list[str], scorer: str) -> list[str]:
    out = []
    for trace_id in trace_ids:
        trace = service.traces.trace_get(trace_id)
        assert trace is not None
        (decision,) = [d for d in service.decisions(trace) if d["scorer"] == scorer]
        out.append(str(decision["reason"]))
    return out


# -- regex -------------------------------------------------------------------------------------


def test_a_catastrophic_regex_fails_its_assessment_and_the_server_keeps_answering(
    servers: Servers, store_uri: str, engine: sa.Engine
) -> None:
    server = servers.start(
        store_uri, scoring_interval_s=0.2, scoring_regex_timeout_s=REGEX_TIMEOUT_S
    )
    settings = settings_for(store_uri)
    service = ScoringService(Stores.open(engine, settings), settings)
    e = experiment(engine)
    scorer_path = f"{server.url}/api/v1/experiments/{e}/scorers"
    bad = httpx.put(
        f"{scorer_path}/broken",
        json={"scorer": {"kind": "regex", "definition": {"pattern": "(unclosed"}}},
        timeout=30,
    )
    assert bad.status_code == 400, bad.text
    assert "(unclosed" in bad.text  # the refusal names the pattern
    for name, pattern in (("issue", ISSUE_PATTERN), ("hostile", HOSTILE_PATTERN)):
        body = {"scorer": {"kind": "regex", "definition": {"pattern": pattern}}}
        answer = httpx.put(f"{scorer_path}/{name}", json=body, timeout=30)
        assert answer.status_code == 200, answer.text

    latencies: list[float] = []
    stop = threading.Event()

    def poll_health() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                started = time.monotonic()
                client.get(f"{server.url}/health").raise_for_status()
                latencies.append(time.monotonic() - started)
                stop.wait(0.05)

    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    ids = [new_trace_id() for _ in HOSTILE_OUTPUTS]
    try:
        ingest(service.traces, e, [
            s for t, output in zip(ids, HOSTILE_OUTPUTS, strict=True)
            for s in trace_spans(t, output=output)
        ])  # fmt: skip

        def settled() -> bool:
            return _ledger_of(engine, "hostile") == ["FAILED"] * len(ids) and len(
                scored(engine, "issue")
            ) == len(ids)

        try:
            wait_until(settled, timeout=120, interval=0.1)
        except AssertionError:
            raise AssertionError(
                f"not settled: {ledger(engine)}\n{server.logs()[-3000:]}"
            ) from None
    finally:
        stop.set()
        poller.join(timeout=120)
    assert not poller.is_alive(), "a /health call hung"

    print(f"/health: {len(latencies)} calls while scoring, slowest {max(latencies):.3f}s")
    # The server answered all along, while the matches ran (each one 3 s of CPU at least).
    assert len(latencies) > 10
    assert max(latencies) < HEALTH_MAX_S, f"/health took {max(latencies):.2f}s while scoring"
    # The hostile pattern failed both assessments, with the reason; the issue's pattern scored.
    for reason in _reasons(service, ids, "hostile"):
        assert f"regex timed out after {REGEX_TIMEOUT_S} s" in reason, reason
    values = {
        a.trace_id: a.value
        for t in ids
        for a in service.traces.assessments_list(t) or []
        if a.name == "issue"
    }
    assert values == {ids[0]: False, ids[1]: True}
    assert scored(engine, "hostile") == []


# -- slow custom code --------------------------------------------------------------------------

SLEEPS = """
import time

def score(inputs, outputs, trace):
    time.sleep(600)
    return 1
"""

IGNORES_THE_ALARM = """
import time

def score(inputs, outputs, trace):
    while True:
        try:
            time.sleep(600)
        except Exception:  # swallows the sandbox's time-limit exception
            pass
"""

CUSTOM_TIMEOUT_S = 3


@pytest.mark.parametrize("code", [SLEEPS, IGNORES_THE_ALARM], ids=["sleeps", "ignores-alarm"])
def test_a_slow_custom_scorer_fails_alone_and_holds_back_no_other_scorer(
    store_uri: str, engine: sa.Engine, code: str
) -> None:
    settings = settings_for(store_uri, allow_custom_scorers=True, scoring_interval_s=0.1)
    stores = Stores.open(engine, settings)
    service, scoring = ScoringService(stores, settings), ScoringEngine(stores, settings)
    e = experiment(engine)
    register(service, e, "slow", kind="custom",
             definition={"code": code, "timeout_s": CUSTOM_TIMEOUT_S})  # fmt: skip
    register(service, e, "fast", kind="output_length", definition={"max_chars": 1000})
    ids = [new_trace_id() for _ in range(3)]
    ingest(service.traces, e, [s for t in ids for s in trace_spans(t)])

    stop = threading.Event()
    errors: list[BaseException] = []

    def schedule() -> None:
        """What the leader's scheduler does: run the scoring job again while rows come due
        (the slow scorer's rows not run are retried later)."""
        try:
            while not stop.is_set():
                drain(scoring, e)
                stop.wait(0.1)
        except BaseException as exc:
            errors.append(exc)

    job = threading.Thread(target=schedule, daemon=True)
    started = time.monotonic()
    job.start()
    try:
        wait_until(lambda: len(scored(engine, "fast")) == 3 or errors, timeout=60)
        fast_after_s = time.monotonic() - started
        wait_until(lambda: _ledger_of(engine, "slow") == ["FAILED"] * 3 or errors, timeout=180)
        slow_after_s = time.monotonic() - started
    finally:
        stop.set()
        job.join(timeout=120)
    scoring.close()
    assert not errors, errors
    print(f"fast scorer done after {fast_after_s:.1f}s, slow one failed after {slow_after_s:.1f}s")

    # The fast scorer's assessments were committed before the slow one decided anything
    # (times of the database's clock, so no race with this test's polling).
    with engine.connect() as conn:
        fast_last = conn.execute(
            sa.select(sa.func.max(assessments.c.created_at_ms)).where(assessments.c.name == "fast")
        ).scalar_one()
        slow_first = conn.execute(
            sa.select(sa.func.min(scoring_tasks.c.updated_at_ms)).where(
                scoring_tasks.c.scorer_name == "slow"
            )
        ).scalar_one()
    assert fast_last < slow_first, (fast_last, slow_first)
    # The slow one failed alone, every trace with the time limit as the reason; one assessment
    # per (trace, fast scorer), none for the slow one.
    for reason in _reasons(service, ids, "slow"):
        assert f"timed out after {CUSTOM_TIMEOUT_S}s" in reason, reason
    assert scored(engine) == sorted((t, "fast") for t in ids)
