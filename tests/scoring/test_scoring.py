"""Online scoring on each database: the ledger filled at completion, sampling, filters, the
claim under racing processors, crash and retry without duplicates, sessions, judge errors,
custom scorers, backfill and the decision log."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import assay
from assay.db.tables import scorers as scorers_table
from assay.db.tables import scoring_tasks
from assay.errors import InvalidFilterError, InvalidRequestError, PermissionDeniedError
from assay.jobs.store import JobStore
from assay.scoring.engine import RunStats, ScoringEngine
from assay.scoring.jobs import LedgerPruner
from assay.scoring.model import Level
from assay.scoring.sampler import sampled, uniform
from assay.scoring.service import ScoringService
from assay.scoring.standin import StandInJudge
from assay.scoring.store import Done
from assay.stores import Stores
from assay.tracing.store import TraceStore
from support.databases import empty_store
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
from support.timing import wait_until


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def uri(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    return empty_store(request, str(request.param), tmp_path)


@pytest.fixture
def engine(uri: str) -> Iterator[sa.Engine]:
    engine = assay.db.create_engine(uri)
    assay.db.upgrade(engine)
    yield engine
    engine.dispose()


def _parts(
    uri: str, engine: sa.Engine, **overrides: Any
) -> tuple[ScoringService, ScoringEngine, TraceStore]:
    settings = settings_for(uri, **overrides)
    stores = Stores.open(engine, settings)
    return ScoringService(stores, settings), ScoringEngine(stores, settings), stores.traces


# -- sampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.001, 0.01, 0.1, 0.2, 0.5, 0.9])
def test_realised_sample_rate_is_within_one_percent(rate: float) -> None:
    ids = [f"{n:032x}" for n in range(100_000)]
    realised = sum(sampled(t, rate) for t in ids) / len(ids)
    assert abs(realised - rate) <= 0.01


def test_samples_nest_and_are_deterministic() -> None:
    ids = [new_trace_id() for _ in range(5000)]
    low = {t for t in ids if sampled(t, 0.05)}
    high = {t for t in ids if sampled(t, 0.3)}
    assert low <= high
    assert all(sampled(t, 1.0) for t in ids)
    assert not any(sampled(t, 0.0) for t in ids)
    assert [uniform(t) for t in ids[:50]] == [uniform(t) for t in ids[:50]]


# -- the ledger --------------------------------------------------------------------------------


def test_completed_sampled_traces_are_scored_once_and_nothing_else(uri, engine) -> None:
    service, scoring, traces = _parts(uri, engine)
    e = experiment(engine)
    register(service, e, "all")
    register(service, e, "some", sample_rate=0.3)
    register(service, e, "prod", filter_string="tags.env = 'prod'")
    ids = [new_trace_id() for _ in range(60)]
    envs = {t: ("prod" if n % 3 else "dev") for n, t in enumerate(ids)}
    late = set(ids[:10])  # their root arrives later: in progress at the first run
    ingest(traces, e, [s for t in ids for s in trace_spans(t, env=envs[t], root=t not in late)])
    evaluation = new_trace_id()
    ingest(traces, e, trace_spans(evaluation, metadata={"assay.source_run": "r1"}))
    drain(scoring, e)
    ingest(traces, e, [s for t in late for s in trace_spans(t, env=envs[t], child=False)])
    drain(scoring, e)
    drain(scoring, e)  # nothing left: a second pass changes nothing

    expected = sorted(
        [(t, "all") for t in ids]
        + [(t, "some") for t in ids if sampled(t, 0.3)]
        + [(t, "prod") for t in ids if envs[t] == "prod"]
    )
    assert scored(engine) == expected
    assert ledger(engine) == sorted((t, "prod", "FILTERED") for t in ids if envs[t] == "dev")


def test_scorer_registered_later_does_not_score_earlier_traces(uri, engine) -> None:
    service, scoring, traces = _parts(uri, engine)
    e = experiment(engine)
    before = new_trace_id()
    ingest(traces, e, trace_spans(before))
    register(service, e, "late")
    after = new_trace_id()
    ingest(traces, e, trace_spans(after))
    drain(scoring, e)
    assert scored(engine) == [(after, "late")]


def _lock_waits(engine: sa.Engine) -> int:
    """Sessions of this test's database waiting for a row lock. (MariaDB refreshes INNODB_TRX
    only when it was last read over 100 ms ago: poll it more slowly than that.)"""
    query = {
        "postgresql": "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()",
        "mysql": "SELECT count(*) FROM information_schema.INNODB_TRX t"
        " JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id"
        " WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()",
    }[engine.dialect.name.replace("mariadb", "mysql")]
    with engine.connect() as conn:
        return int(conn.execute(sa.text(query)).scalar_one())


@pytest.mark.parametrize("uri", ["postgresql", "mysql"], indirect=True)
def test_a_scorer_registered_while_a_trace_completes_never_misses_it(uri, engine) -> None:
    """The registration stalls inside its transaction (a third transaction holds the scorer's
    key) while an ingest completes a trace. Either the ingest waits for the registration and
    queues the trace, or it finished first and the trace counts as completed before the scorer:
    never a trace completed after the registration and missing from the ledger. (SQLite runs
    one write transaction at a time, so the two cannot interleave there.)"""
    service, _, traces = _parts(uri, engine)
    e = experiment(engine)
    trace_id = new_trace_id()
    with engine.connect() as blocker:
        blocker.execute(
            sa.insert(scorers_table).values(
                experiment_id=e,
                name="late",
                kind="output_length",
                level="trace",
                version=1,
                definition="{}",
                sample_rate=1.0,
                status="ACTIVE",
                created_at_ms=0,
                updated_at_ms=0,
            )
        )
        registration = threading.Thread(target=register, args=(service, e, "late"))
        registration.start()
        wait_until(lambda: _lock_waits(engine) >= 1, interval=0.15)
        ingested = threading.Event()
        completion = threading.Thread(
            target=lambda: (ingest(traces, e, trace_spans(trace_id)), ingested.set())
        )
        completion.start()
        wait_until(lambda: ingested.is_set() or _lock_waits(engine) >= 2, interval=0.15)
        blocker.rollback()
    registration.join(10)
    completion.join(10)
    trace = traces.trace_get(trace_id)
    assert trace is not None
    (decision,) = service.decisions(trace)
    assert decision["state"] in ("pending", "before_scorer"), decision


def test_replaced_and_deleted_scorers_are_not_kept_built(uri, engine) -> None:
    service, scoring, traces = _parts(uri, engine)
    e = experiment(engine)
    register(service, e, "a", definition={"max_chars": 10})
    register(service, e, "b")
    ingest(traces, e, trace_spans(new_trace_id()))
    drain(scoring, e)
    assert sorted(k[1:] for k in scoring._built) == [("a", 1), ("b", 1)]

    register(service, e, "a", definition={"max_chars": 20})  # version 2
    service.delete(e, "b")
    ingest(traces, e, trace_spans(new_trace_id()))
    drain(scoring, e)
    assert sorted(k[1:] for k in scoring._built) == [("a", 2)]


def test_racing_claims_take_disjoint_rows(uri, engine) -> None:
    service, scoring, traces = _parts(uri, engine)
    e = experiment(engine)
    register(service, e, "s")
    ids = [new_trace_id() for _ in range(400)]
    ingest(traces, e, [s for t in ids for s in trace_spans(t)])
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def claimer(owner: str) -> None:
        try:
            start.wait()
            mine = claimed.setdefault(owner, [])
            while True:
                tasks = scoring.store.tasks_claim(e, Level.TRACE, owner, limit=7, lease_ms=60_000)
                if not tasks:
                    return
                mine.extend(t.target_id for t in tasks)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"w{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    every = [t for owner in claimed.values() for t in owner]
    assert sorted(every) == sorted(ids)  # each row claimed exactly once
    assert sum(1 for owner in claimed.values() if owner) > 1


def test_a_crashed_batch_is_redone_after_its_lease_without_duplicates(uri, engine) -> None:
    service, scoring, traces = _parts(uri, engine, scoring_lease_s=0.2)
    e = experiment(engine)
    register(service, e, "s")
    ids = [new_trace_id() for _ in range(20)]
    ingest(traces, e, [s for t in ids for s in trace_spans(t)])
    # Processor A claims and "dies" before committing.
    lost = scoring.store.tasks_claim(e, Level.TRACE, "A", limit=100, lease_ms=200)
    assert len(lost) == 20
    assert drain(scoring, e, owner="B").claimed == 0  # leased: not taken yet
    time.sleep(0.25)
    assert drain(scoring, e, owner="B").scored == 20
    # A wakes up, scores what it had claimed and commits: its results replace, never add.
    late = scoring._score_traces(lost, {"s": service.get(e, "s")}, RunStats())
    assert all(isinstance(outcome, Done) for outcome in late)
    scoring.store.tasks_finish("A", late)
    assert scored(engine) == sorted((t, "s") for t in ids)
    assert ledger(engine) == []


# -- sessions ----------------------------------------------------------------------------------


def test_sessions_wait_for_idle_and_a_new_turn_rescores_and_replaces(uri, engine) -> None:
    service, scoring, traces = _parts(uri, engine, session_idle_s=0.3)
    e = experiment(engine)
    register(
        service, e, "turns", kind="output_length", level="session", definition={"max_chars": 10_000}
    )
    first, second = new_trace_id(), new_trace_id()
    ingest(traces, e, trace_spans(first, session="s1", start_ns=1_700_000_000_000_000_000))
    ingest(traces, e, trace_spans(second, session="s1", start_ns=1_700_000_001_000_000_000))
    assert drain(scoring, e, Level.SESSION).claimed == 0  # not idle yet
    time.sleep(0.35)
    assert drain(scoring, e, Level.SESSION).scored == 1
    assert scored(engine) == [(first, "turns")]
    # A turn that started before the others arrives late: the result moves to it, replaced.
    earliest = new_trace_id()
    ingest(traces, e, trace_spans(earliest, session="s1", start_ns=1_699_999_999_000_000_000))
    time.sleep(0.35)
    assert drain(scoring, e, Level.SESSION).scored == 1
    assert scored(engine) == [(earliest, "turns")]


# -- judges ------------------------------------------------------------------------------------


@pytest.fixture
def judge_server() -> Iterator[StandInJudge]:
    with StandInJudge() as server:
        yield server


JUDGE = {"instructions": "Is this answer good? {{ outputs }}", "output": {"type": "yes_no"}}


def test_judge_429_and_500_are_retried_then_scored(uri, engine, judge_server) -> None:
    service, scoring, traces = _parts(
        uri, engine, judge_base_url=judge_server.url, judge_max_retry_s=10
    )
    e = experiment(engine)
    register(service, e, "judge", kind="llm_judge", definition=JUDGE)
    judge_server.fail_next([429, 500, 503], retry_after=0.01)
    ids = [new_trace_id() for _ in range(5)]
    ingest(
        traces,
        e,
        [s for t in ids for s in trace_spans(t, output="bad answer" if t == ids[0] else "ok")],
    )
    stats = drain(scoring, e)
    assert stats.scored == 5
    assert stats.retrying == 0
    rows = TraceStore(engine).assessments_list(ids[0])
    assert rows is not None
    assert [a.value for a in rows] == ["no"]
    assert rows[0].metadata is not None
    assert rows[0].metadata["input_tokens"] > 0
    assert judge_server.by_status.get(429) == 1
    assert judge_server.by_status.get(500) == 1


def test_judge_401_pauses_the_scorer_and_keeps_its_traces(uri, engine, judge_server) -> None:
    service, scoring, traces = _parts(uri, engine, judge_base_url=judge_server.url)
    e = experiment(engine)
    register(service, e, "judge", kind="llm_judge", definition=JUDGE)
    register(service, e, "length")
    ids = [new_trace_id() for _ in range(6)]
    ingest(traces, e, [s for t in ids for s in trace_spans(t)])
    judge_server.always_status = 401
    stats = drain(scoring, e)
    assert stats.paused == ["judge"]
    paused = service.get(e, "judge")
    assert paused.status == "PAUSED"
    assert "401" in (paused.status_reason or "")
    calls = judge_server.requests
    assert drain(scoring, e).claimed == 0  # paused: its traces wait, the judge is not called
    assert judge_server.requests == calls
    assert all(state == "PENDING" for _, _, state in ledger(engine))
    assert scored(engine, "length") == sorted((t, "length") for t in ids)
    assert scored(engine, "judge") == []
    decisions = {d["scorer"]: d for d in service.decisions(traces.trace_get(ids[0]))}
    assert decisions["judge"]["state"] == "paused"
    assert "401" in decisions["judge"]["reason"]
    # The key is fixed; registering again resumes the scorer and it catches up.
    judge_server.always_status = None
    register(service, e, "judge", kind="llm_judge", definition=JUDGE)
    drain(scoring, e)
    assert scored(engine, "judge") == sorted((t, "judge") for t in ids)


# -- registration checks -------------------------------------------------------------------------


def test_bad_registrations_are_refused_with_the_reason(uri, engine) -> None:
    service, _, _ = _parts(uri, engine)
    e = experiment(engine)
    with pytest.raises(InvalidFilterError) as bad_filter:
        register(service, e, "s", filter_string="tags.env = 'prod' AND")
    assert bad_filter.value.position is not None
    with pytest.raises(InvalidRequestError, match="sample_rate"):
        register(service, e, "s", sample_rate=1.5)
    with pytest.raises(
        InvalidRequestError, match="unknown scorer kind 'regexp'; did you mean 'regex'"
    ):
        register(service, e, "s", kind="regexp")
    with pytest.raises(InvalidRequestError, match="name"):
        register(service, e, "bad name!")
    with pytest.raises(PermissionDeniedError, match="--allow-custom-scorers"):
        register(
            service, e, "c", kind="custom", definition={"code": "def score(i, o, t): return 1"}
        )
    assert service.list(e) == []


# -- backfill and the decision log ---------------------------------------------------------------


def test_backfill_plan_counts_unscored_sampled_matching_traces(uri, engine) -> None:
    service, scoring, traces = _parts(uri, engine)
    e = experiment(engine)
    ids = [new_trace_id() for _ in range(30)]
    ingest(
        traces,
        e,
        [s for n, t in enumerate(ids) for s in trace_spans(t, env="prod" if n % 2 else "dev")],
    )
    register(service, e, "s", filter_string="tags.env = 'prod'", sample_rate=0.5)
    plan = service.backfill_plan(e, "s", 0, 2**62)
    expected = sorted(t for n, t in enumerate(ids) if n % 2 and sampled(t, 0.5))
    assert sorted(plan.trace_ids) == expected
    assert plan.examined == 15
    scoring.store.tasks_enqueue(e, "s", plan.trace_ids)
    drain(scoring, e)
    assert scored(engine) == [(t, "s") for t in expected]
    assert service.backfill_plan(e, "s", 0, 2**62).trace_ids == []
    decisions = {t: service.decisions(traces.trace_get(t))[0]["state"] for t in ids}
    for _n, t in enumerate(ids):
        if t in expected:
            assert decisions[t] == "done"
        elif not sampled(t, 0.5):
            assert decisions[t] == "not_sampled"
        else:
            assert decisions[t] == "before_scorer"  # sampled, never queued


def test_decided_rows_are_pruned_after_the_retention_and_pending_ones_never(uri, engine) -> None:
    week = 7 * 24 * 3600
    service, scoring, traces = _parts(uri, engine, scoring_retention_s=week)
    e = experiment(engine)
    register(service, e, "prod", filter_string="tags.env = 'prod'")
    dev = [new_trace_id() for _ in range(6)]
    ingest(traces, e, [s for t in dev for s in trace_spans(t, env="dev")])
    drain(scoring, e)  # all six FILTERED
    old, recent = dev[:3], dev[3:]
    failed = new_trace_id()  # a pair that failed long ago
    waiting = new_trace_id()  # queued long ago and still pending
    ingest(traces, e, [s for t in (failed, waiting) for s in trace_spans(t, env="prod")])
    t = scoring_tasks
    eight_days_ms = 8 * 24 * 3600 * 1000
    with engine.begin() as conn:
        conn.execute(t.update().where(t.c.target_id == failed).values(state="FAILED"))
        conn.execute(
            t.update()
            .where(t.c.target_id.in_([*old, failed, waiting]))
            .values(due_at_ms=t.c.due_at_ms - eight_days_ms)
        )

    LedgerPruner(JobStore(engine), settings_for(uri, scoring_retention_s=week)).tick()
    assert ledger(engine) == sorted(
        [(x, "prod", "FILTERED") for x in recent] + [(waiting, "prod", "PENDING")]
    )
    assert scoring.store.tasks_prune(week) == 0  # nothing more is old enough

    # Once the trace itself is older than the retention, the decision log says why it has no
    # ledger row instead of claiming it was never queued.
    service, scoring, traces = _parts(uri, engine, scoring_retention_s=0.001)
    assert scoring.store.tasks_prune(0.001) == 3
    for x in recent:  # they completed well over a millisecond ago
        decision = service.decisions(traces.trace_get(x))[0]
        assert decision["state"] == "pruned", decision
        assert "pruned" in decision["reason"]


# -- custom code -------------------------------------------------------------------------------

CUSTOM = """
import os

def score(inputs, outputs, trace):
    if "network" in outputs:
        import socket
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    return {"value": len(outputs), "rationale": f"pid {os.getpid()}"}
"""


def test_custom_scorer_runs_sandboxed_when_allowed(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'custom.db'}"
    engine = assay.db.create_engine(uri)
    assay.db.upgrade(engine)
    service, scoring, traces = _parts(uri, engine, allow_custom_scorers=True)
    e = experiment(engine)
    with pytest.raises(InvalidRequestError, match="does not compile"):
        register(service, e, "c", kind="custom", definition={"code": "def score(:"})
    register(service, e, "c", kind="custom", definition={"code": CUSTOM})
    fine, network = new_trace_id(), new_trace_id()
    ingest(traces, e, trace_spans(fine, output="twelve chars"))
    ingest(traces, e, trace_spans(network, output="try the network"))
    stats = drain(scoring, e)
    assert (stats.scored, stats.failed) == (1, 1)
    (result,) = traces.assessments_list(fine) or []
    assert result.value == 12
    assert result.rationale != f"pid {os.getpid()}"  # scored in another process
    (failed,) = [row for row in ledger(engine) if row[0] == network]
    assert failed[2] == "FAILED"
    decision = service.decisions(traces.trace_get(network))[0]
    assert decision["state"] == "failed"
    assert "custom scorer failed" in decision["reason"]
    engine.dispose()


BATCHED = """
import os, time

def score(inputs, outputs, trace):
    if "hang" in outputs:
        time.sleep(60)
    if "die" in outputs:
        os._exit(3)
    return {"value": len(outputs), "rationale": f"pid {os.getpid()}"}
"""


def _custom_run(tmp_path, outputs: list[str]) -> tuple[dict[str, Any], dict[str, str], Any]:
    """Score one trace per output with BATCHED (1 s per item); per output: the assessment's
    rationale, or the ledger's failure reason."""
    uri = f"sqlite:///{tmp_path / 'batched.db'}"
    engine = assay.db.create_engine(uri)
    assay.db.upgrade(engine)
    service, scoring, traces = _parts(uri, engine, allow_custom_scorers=True)
    e = experiment(engine)
    register(service, e, "c", kind="custom", definition={"code": BATCHED, "timeout_s": 1})
    ids = {new_trace_id(): output for output in outputs}
    ingest(traces, e, [s for t, output in ids.items() for s in trace_spans(t, output=output)])
    stats = drain(scoring, e)
    rationales = {ids[t]: a.rationale for t in ids for a in traces.assessments_list(t) or []}
    reasons = {
        ids[t]: service.decisions(traces.trace_get(t))[0]["reason"]
        for t in ids
        if ids[t] not in rationales
    }
    engine.dispose()
    return rationales, reasons, stats


def test_custom_scorer_scores_many_items_per_sandbox_and_times_out_each_alone(tmp_path) -> None:
    fine = [f"fine {n}" for n in range(12)]
    rationales, reasons, stats = _custom_run(tmp_path, [*fine, "hang"])
    assert (stats.scored, stats.failed) == (12, 1)
    assert set(rationales) == set(fine)
    assert len(set(rationales.values())) == 1  # one sandbox scored all of them
    assert "timed out after 1s" in reasons["hang"]


def test_a_sandbox_that_dies_is_retried_item_by_item(tmp_path) -> None:
    fine = [f"fine {n}" for n in range(4)]
    rationales, reasons, stats = _custom_run(tmp_path, [*fine, "die"])
    assert (stats.scored, stats.failed) == (4, 1)
    assert set(rationales) == set(fine)
    assert len(set(rationales.values())) == 4  # the retry: one sandbox per item
    assert "custom scorer failed" in reasons["die"]
    assert "exit status 3" in reasons["die"]
