"""Zero skips, zero duplicates: traces arrive in bursts while real `assay worker` processes
score them and are killed with SIGKILL mid-way; afterwards every sampled, matching, completed
(trace, scorer) has exactly one assessment and nothing else has one."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import assay
from assay.config import Settings
from assay.db.tables import job_locks, jobs
from assay.scoring.sampler import sampled
from assay.scoring.service import ScoringService
from assay.scoring.standin import StandInJudge
from assay.stores import Stores
from support.databases import empty_store
from support.jobs import WorkerProcesses
from support.scoring import experiment, ingest, ledger, new_trace_id, scored, trace_spans
from support.timing import scaled, wait_until

# About 45 CPU-seconds for the 10k case, shared with PostgreSQL and three workers: a minute and
# a half on a busy 2-core box, three on a very busy one. Its own limit, well above the
# suite's 300 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# (name, kind, definition, sample rate, filter, Python twin of the filter)
SCORERS: list[tuple[str, str, dict[str, Any], float, str | None, Any]] = [
    ("length", "output_length", {"max_chars": 1000}, 1.0, None, lambda env: True),
    ("prod_regex", "regex", {"pattern": "answer"}, 0.5, "tags.env = 'prod'",
     lambda env: env == "prod"),
    ("judge", "llm_judge",
     {"instructions": "Is it good? {{ outputs }}", "output": {"type": "yes_no"}}, 0.1,
     "tags.env IN ('prod', 'staging')", lambda env: env in ("prod", "staging")),
    ("staging_kw", "keywords", {"keywords": ["fine"]}, 0.02, "tags.env != 'prod'",
     lambda env: env != "prod"),
    ("rare", "json_valid", {}, 0.001, None, lambda env: True),
]  # fmt: skip
ENVS = ("prod", "staging", "dev")


@pytest.fixture(
    params=[
        pytest.param(("postgresql", int(os.environ.get("ASSAY_TEST_SCORING_TRACES", "10000"))),
                     id="postgresql-10k"),
        pytest.param(("sqlite", 3000), id="sqlite-3k"),
        pytest.param(("mysql", 3000), id="mysql-3k"),
    ]
)  # fmt: skip
def case(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, int]:
    kind, size = request.param
    return empty_store(request, kind, tmp_path), size


def test_bursts_and_kill_9_leave_exactly_one_assessment_per_sampled_pair(
    case: tuple[str, int], worker_processes: WorkerProcesses
) -> None:
    uri, total = case
    rng = random.Random(7)
    engine = assay.db.create_engine(uri)
    assay.db.upgrade(engine)
    service = ScoringService(Stores.open(engine, settings := Settings(store_uri=uri)), settings)
    e = experiment(engine)
    for name, kind, definition, rate, filter_string, _ in SCORERS:
        service.put(
            e, name, kind=kind, definition=definition, sample_rate=rate,
            filter_string=filter_string,
        )  # fmt: skip
    with StandInJudge() as judge:
        judge.latency_s = 0.005
        judge.fail_next([429, 500] * 5)
        settings = {
            "judge_base_url": judge.url,
            "judge_max_retry_s": 5,
            "scoring_interval_s": 0.2,
            "scoring_lease_s": 3,
            "scoring_batch_size": 100,
        }
        workers = [worker_processes.start(uri, **settings) for _ in range(3)]
        worker_processes.wait_ready(3)

        envs: dict[str, str] = {}
        evaluation: set[str] = set()
        late: list[str] = []
        kills = 0
        burst = max(total // 10, 1)
        for start in range(0, total, burst):
            batch = []
            for _ in range(min(burst, total - start)):
                trace_id = new_trace_id()
                envs[trace_id] = rng.choice(ENVS)
                roll = rng.random()
                if roll < 0.01:
                    evaluation.add(trace_id)
                    batch += trace_spans(trace_id, env=envs[trace_id],
                                         metadata={"assay.source_run": "run-1"})  # fmt: skip
                elif roll < 0.05:  # long-running: its root comes in a later burst
                    late.append(trace_id)
                    batch += trace_spans(trace_id, env=envs[trace_id], root=False)
                else:
                    batch += trace_spans(trace_id, env=envs[trace_id])
            for chunk in range(0, len(batch), 1000):
                ingest(service.traces, e, batch[chunk : chunk + 1000])
            finishing, late = late[: len(late) // 2], late[len(late) // 2 :]
            ingest(service.traces, e, [
                s for t in finishing for s in trace_spans(t, env=envs[t], child=False)
            ])  # fmt: skip
            # Kill a worker that is busy scoring (SIGKILL: no cleanup), start a new one.
            if _running_scoring_job(engine):
                victim = workers.pop(rng.randrange(len(workers)))
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
                kills += 1
                workers.append(worker_processes.start(uri, **settings))
        ingest(
            service.traces, e, [s for t in late for s in trace_spans(t, env=envs[t], child=False)]
        )

        def settled() -> bool:
            return all(state == "FILTERED" for _, _, state in ledger(engine))

        try:
            wait_until(settled, timeout=120, interval=0.5)
        except AssertionError:
            states = Counter((name, state) for _, name, state in ledger(engine))
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(jobs.c.name, jobs.c.status, jobs.c.attempt, jobs.c.error)
                ).all()
                locks = conn.execute(sa.select(job_locks)).all()
            raise AssertionError(
                f"ledger not settled: {dict(states)}\njobs: {Counter(map(tuple, rows))}\n"
                f"locks: {locks}\n{worker_processes.logs()[-3000:]}"
            ) from None

    expected = sorted(
        (t, name)
        for t, env in envs.items()
        if t not in evaluation
        for name, _, _, rate, _, matches in SCORERS
        if sampled(t, rate) and matches(env)
    )
    got = scored(engine)
    assert len(got) == len(set(got)), "a (trace, scorer) has two assessments"
    assert set(got) == set(expected), (
        f"missing {len(set(expected) - set(got))}, unexpected {len(set(got) - set(expected))}"
    )
    assert kills >= 3, "no worker was killed while scoring: the test proved nothing"
    with engine.connect() as conn:
        canceled = conn.execute(
            sa.select(jobs.c.name, jobs.c.error).where(jobs.c.status == "CANCELED")
        ).all()
    assert canceled == []  # ticks that found a scoring job (even a lost one) coalesced into it
    engine.dispose()


def _running_scoring_job(engine: sa.Engine) -> bool:
    query = sa.select(sa.func.count()).where(
        jobs.c.name == "assay.scoring.traces", jobs.c.status == "RUNNING"
    )
    deadline = time.monotonic() + scaled(5)
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(query).scalar_one():
                return True
        time.sleep(0.02)
    return False
