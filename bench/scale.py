"""Scale benchmark: what jobs and trace search cost once the tables hold months of history.

Run it from the repository root::

    .venv/bin/python bench/scale.py [--stores sqlite,postgresql] [--jobs N] [--traces N]
                                    [--only jobs|traces] [--quick] [--explain]
                                    [--out bench/results/scale.json]

Jobs: the same measurements on an empty queue and on one preloaded with ``--jobs`` finished
jobs (and their attempt records): no-op throughput from 1 and 2 worker processes (draining
``--pending`` jobs), pickup latency, ``GET /api/v1/jobs?status=FAILED`` and ``?name=`` (first
page) and ``GET /metrics`` through a real server; then a prune of 90 % of the history
(``--prune N``: the oldest N) while a worker keeps running jobs and a probe keeps claiming.

Traces: one experiment preloaded with ``--traces`` traces of 5 spans, and a small one as the
baseline; the UI's default page and REST searches (a metadata value, a status, LIKE on the
request text, a session) timed through a real server, with their query plans.

The preload writes straight into the tables with one INSERT ... SELECT per chunk (a recursive
CTE on SQLite, ``generate_series`` on PostgreSQL): it is the bench's setup, not a product path.
See bench/README.md ("scale.py").
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy import event

from assay import Backend, JobStatus
from assay.db.engine import create_engine
from assay.db.migrate import upgrade
from assay.jobs.store import Finish
from assay.tracing.store import TraceStore
from assay.tracking.store import TrackingStore
from common import (
    Store,
    add_run_options,
    add_skipped,
    console,
    job_rows,
    load_average,
    new_parser,
    new_table,
    open_backend,
    percentiles,
    run_benchmark,
    server,
    unfinished,
    verdict,
    wait_drained,
)
from jobs import WorkerProcs

API_JOBS = "/api/v1/jobs"
API_TRACES = "/api/v1/traces"
DAY_MS = 86_400_000
HISTORY_DAYS = 30
PRUNE_SHARE = 0.9
"""The oldest 90 % of the history is pruned (``--prune`` sets another count)."""
CONCURRENCY = 32
PICKUP_RATE = 50.0
BASELINE_ROWS = 1_000
"""The baseline ("empty") queue and experiment hold this many finished jobs and traces, so
that their list and search pages have rows to show, as the ones with history do."""
UI_PAGE = 50
"""Traces per page of the UI (``server/ui/experiments.py``); the REST searches ask as many."""
# The targets: throughput and pickup within 10 % of the empty table (pickup: or 1 ms,
# the resolution of the database clock); lists and /metrics at most 50 ms p95; a prune never
# blocks a claim for more than 100 ms; trace searches at most 100 ms p95.
RELATIVE = 0.10
CLOCK_MS = 1.0
LIST_P95_MS = 50.0
CLAIM_BLOCK_MS = 100.0
SEARCH_P95_MS = 100.0

# Preloaded jobs: names and final statuses as in bench/api.py (percent).
JOB_NAMES = (("noop", 40), ("add", 30), ("count_to", 20), ("flaky", 10))
JOB_STATUSES = (("SUCCEEDED", 85), ("FAILED", 9), ("CANCELED", 4), ("TIMEOUT", 2))

# Preloaded traces: 2 % ERROR; ~100 traces per user; 5 traces per session; the request text
# names one of 100 accounts (so LIKE '%account A7,%' matches 1 %) and the trace's own order
# number (so LIKE '%order 123)%' matches one trace).
QUESTIONS = (
    "How do I rotate the API keys of a workspace without downtime?",
    "Summarise the incident report from last Tuesday in three bullet points.",
    "What is the refund policy for annual plans cancelled within 30 days?",
    "Compare the latency of the EU and US clusters over the last week.",
    "Draft a reply to the customer asking about SSO with Okta.",
    "Which invoices are overdue by more than 60 days, and who owns them?",
    "Why did the nightly export fail for the analytics workspace?",
    "List the open tickets about billing that mention a double charge.",
)
ANSWER = (
    "You can rotate keys without downtime: create a second key, roll it out to every client, "
    "wait until traffic on the old key stops, then revoke it."
)
ERROR_PERCENT = 2
TRACES_PER_USER = 100
TRACES_PER_SESSION = 5
ACCOUNTS = 100
SPANS = (  # name, kind, start and end as fractions of the trace's duration
    ("agent.run", "SERVER", 0.0, 1.0),
    ("retrieve", "INTERNAL", 0.02, 0.2),
    ("llm.answer", "CLIENT", 0.21, 0.9),
    ("tool.search", "INTERNAL", 0.3, 0.5),
    ("format_output", "INTERNAL", 0.9, 0.99),
)
CHUNK = 200_000
"""Series numbers per preload statement."""

# A prune in its own process, as the leader's pruner runs beside the workers: it connects,
# says "ready", reads the retention (seconds) from stdin, prunes and reports its own timing.
PRUNE_SCRIPT = """
import json, sys, time
from assay import Backend, load_settings
with Backend(load_settings(store_uri=sys.argv[1], maintenance=False)) as backend:
    store = backend.store
    batch, held = store._prune_batch, []  # each transaction's rows and lock time, recorded
    def recorded(query):
        rows, held_s = batch(query)
        held.append((len(rows), held_s * 1000))
        return rows, held_s
    store._prune_batch = recorded
    store.now_ms()
    print("ready", flush=True)
    older_than_s = float(sys.stdin.readline())
    start = time.time()
    deleted = backend.prune(older_than_s)
    end = time.time()
print(json.dumps({"deleted": deleted, "start_ms": start * 1000, "end_ms": end * 1000,
                  "transactions": held}))
"""


@dataclass(frozen=True)
class Sizes:
    jobs: int
    pending: int
    traces: int
    baseline_traces: int
    samples: int
    pickup_s: float
    steady_s: float
    rounds: int
    prune: int
    only: tuple[str, ...]


# -- the preload -------------------------------------------------------------------------------


class Series:
    """SQL over a series of integers ``n`` in [lo, hi): per dialect, the CTE or function that
    makes it and hex formatting. ``h`` is a multiplicative hash of ``n`` (for spreading
    values), ``h2`` another one."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect

    def insert(self, table: str, columns: str, select: str, join: str = "") -> str:
        """INSERT INTO table (columns) SELECT select FROM the series (as ``x``) [, join]."""
        inner = (
            "SELECT n, (n * 2654435761) % 4294967296 AS h,"
            " (n * CAST(40503 AS BIGINT) + 7) % 65521 AS h2"
        )
        if self.dialect == "sqlite":
            prefix = "WITH RECURSIVE s(n) AS (SELECT :lo UNION ALL SELECT n + 1 FROM s"
            prefix += " WHERE n + 1 < :hi) "
            source = "s"
        else:  # bigint, so that n * step cannot overflow
            prefix = ""
            source = "generate_series(CAST(:lo AS BIGINT), CAST(:hi AS BIGINT) - 1) AS s(n)"
        return (
            f"{prefix}INSERT INTO {table} ({columns}) SELECT {select}"
            f" FROM ({inner} FROM {source}) AS x{join}"
        )

    def hex(self, expr: str, width: int) -> str:
        if self.dialect == "sqlite":
            return f"printf('%0{width}x', {expr})"
        return f"lpad(to_hex({expr}), {width}, '0')"

    def text(self, expr: str) -> str:
        return f"CAST({expr} AS TEXT)"


def _cases(expr: str, weighted: Sequence[tuple[str, int]]) -> str:
    """A CASE picking each value for its percent of ``expr % 100``."""
    parts, upto = [], 0
    for value, share in weighted[:-1]:
        upto += share
        parts.append(f"WHEN {expr} % 100 < {upto} THEN '{value}'")
    return f"CASE {' '.join(parts)} ELSE '{weighted[-1][0]}' END"


def _run_chunks(
    engine: sa.Engine, sql: str, lo: int, hi: int, params: dict[str, Any] | None = None
) -> None:
    statement = sa.text(sql)
    for start in range(lo, hi, CHUNK):
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA cache_size = -1000000")
            conn.execute(statement, {"lo": start, "hi": min(start + CHUNK, hi), **(params or {})})


def preload_jobs(engine: sa.Engine, count: int) -> dict[str, Any]:
    """``count`` finished jobs created over the last 30 days (oldest first), each with its
    attempt record. Returns the time base and step, to find the prune cutoff."""
    started = time.perf_counter()
    now = int(time.time() * 1000)
    step = (HISTORY_DAYS * DAY_MS - 3_600_000) // count
    base = now - HISTORY_DAYS * DAY_MS
    s = Series(engine.dialect.name)
    if s.dialect == "sqlite":
        job_id = "printf('%08x-%04x-4%03x-a%03x-%012x', h, h2, n % 4096, (n / 4096) % 4096, n)"
    else:
        job_id = "CAST(CAST(md5(CAST(n AS TEXT)) AS UUID) AS TEXT)"
    status = _cases("(h / 100)", JOB_STATUSES)
    created = ":base + n * :step"
    columns = (
        "id, name, params, status, result, error, attempt, max_retries, timeout_s, on_conflict,"
        " worker_id, created_at_ms, run_at_ms, started_at_ms, finished_at_ms"
    )
    select = (
        f"{job_id}, {_cases('h', JOB_NAMES)}, '{{}}', {status},"
        f" CASE WHEN {status} = 'SUCCEEDED' THEN '3' END,"
        f" CASE WHEN {status} = 'SUCCEEDED' THEN NULL ELSE 'bench: seeded' END,"
        " 1, 0, 60.0, 'skip', 'bench-w' || " + s.text("n % 4") + ","
        f" {created}, {created}, {created} + 5, {created} + 10 + h % 500"
    )
    _run_chunks(engine, s.insert("jobs", columns, select), 0, count, {"base": base, "step": step})
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO job_attempts"
                " (job_id, attempt, worker_id, status, error, started_at_ms, finished_at_ms)"
                " SELECT id, 1, worker_id, status, error, started_at_ms, finished_at_ms FROM jobs"
                " WHERE status NOT IN ('PENDING', 'RUNNING')"
            )
        )
    return {"base_ms": base, "step_ms": step, "seconds": time.perf_counter() - started}


def preload_traces(engine: sa.Engine, experiment_id: str, lo: int, count: int) -> float:
    """Traces ``lo`` .. ``lo + count`` of the series into one experiment, over the last 30
    days: their rows, 5 spans each, and ``user`` and ``env`` metadata."""
    started = time.perf_counter()
    s = Series(engine.dialect.name)
    hi = lo + count
    step = (HISTORY_DAYS * DAY_MS) // count
    base = int(time.time() * 1000) - HISTORY_DAYS * DAY_MS - lo * step
    trace_id = f"{s.hex('h', 8)} || {s.hex('n', 24)}"
    start = ":base + n * :step"
    duration = "(200 + h2 % 3000)"
    question = "CASE h % 8 " + " ".join(f"WHEN {i} THEN :q{i}" for i in range(8)) + " END"
    text = (
        f"{question} || ' (account A' || {s.text(f'(h / 8) % {ACCOUNTS}')}"
        f" || ', order ' || {s.text('n')} || ')'"
    )
    failed = f"(h / 800) % 100 < {ERROR_PERCENT}"
    users = max(count // TRACES_PER_USER, 1)
    params: dict[str, Any] = {"base": base, "step": step, "answer": ANSWER}
    params |= {f"q{i}": q for i, q in enumerate(QUESTIONS)}
    params |= {"req_open": '{"messages":[{"role":"user","content":"', "req_close": '"}]}'}
    params |= {"meta_user": '{"user":"u', "meta_env": '","env":"', "meta_close": '"}'}
    params |= {"experiment": experiment_id, "empty": "{}"}
    env = "CASE WHEN h2 % 10 < 6 THEN 'prod' WHEN h2 % 10 < 9 THEN 'staging' ELSE 'dev' END"
    user = f"'u' || {s.text(f'(h / 80000) % {users}')}"
    columns = (
        "trace_id, experiment_id, status, request_preview, response_preview, request, response,"
        " start_time_ms, duration_ms, completed_at_ms, session_id, input_tokens, output_tokens,"
        " total_tokens, cost, metadata_json, tags_json, root_span_id, span_count, created_at_ms,"
        " updated_at_ms, model"
    )
    select = (
        f"{trace_id}, :experiment, CASE WHEN {failed} THEN 'ERROR' ELSE 'OK' END,"
        f" {text}, CASE WHEN {failed} THEN NULL ELSE :answer END,"
        f" :req_open || {text} || :req_close, CASE WHEN {failed} THEN NULL ELSE :answer END,"
        f" {start}, {duration}, {start} + {duration} + 50,"
        f" 's-' || {s.text(f'n / {TRACES_PER_SESSION}')},"
        " 300 + h2 % 3000, 20 + h2 % 500, 320 + h2 % 3000 + h2 % 500, (h2 % 1000) / 100000.0,"
        f" :meta_user || {s.text(f'(h / 80000) % {users}')} || :meta_env || {env} || :meta_close,"
        f" :empty, {s.hex('n * 5', 16)}, {len(SPANS)}, {start}, {start}, 'gpt-4o-mini'"
    )
    _run_chunks(engine, s.insert("traces", columns, select), lo, hi, params)
    metadata = s.insert(
        "trace_metadata",
        "trace_id, key, value",
        f"{trace_id}, 'user', {user}",
    )
    _run_chunks(engine, metadata, lo, hi, params)
    env_rows = s.insert("trace_metadata", "trace_id, key, value", f"{trace_id}, 'env', {env}")
    _run_chunks(engine, env_rows, lo, hi, params)
    span_rows = " UNION ALL ".join(
        f"SELECT {k} AS k, '{name}' AS name, '{kind}' AS kind, {a} AS a, {b} AS b"
        for k, (name, kind, a, b) in enumerate(SPANS)
    )
    spans_sql = s.insert(
        "spans",
        "trace_id, span_id, parent_span_id, name, kind, status_code, status_message,"
        " start_time_ns, end_time_ns, attributes, events, links, resource",
        f"{trace_id}, {s.hex('n * 5 + k', 16)},"
        f" CASE WHEN k = 0 THEN NULL ELSE {s.hex('n * 5', 16)} END, name, kind,"
        f" CASE WHEN {failed} AND k IN (0, 3) THEN 'ERROR' ELSE 'OK' END,"
        f" CASE WHEN {failed} AND k IN (0, 3) THEN 'search 503' END,"
        f" ({start}) * 1000000 + CAST({duration} * a * 1000000 AS BIGINT),"
        f" ({start}) * 1000000 + CAST({duration} * b * 1000000 AS BIGINT),"
        " :span_attributes, '[]', '[]', :resource",
        f", ({span_rows}) AS kk",
    )
    span_attributes = json.dumps(
        {
            "openinference.span.kind": "CHAIN",
            "input.value": QUESTIONS[0],
            "output.value": ANSWER,
            "llm.model_name": "gpt-4o-mini",
        }
    )
    params |= {"span_attributes": span_attributes, "resource": '{"service.name":"support"}'}
    _run_chunks(engine, spans_sql, lo, hi, params)
    return time.perf_counter() - started


def analyze(engine: sa.Engine) -> None:
    """PostgreSQL: VACUUM ANALYZE, as autovacuum would have done on a table with months of
    history. SQLite: nothing (assay never runs ANALYZE, so a real store has no statistics)."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")


# -- query plans -------------------------------------------------------------------------------


def explain(engine: sa.Engine, call: Callable[[], Any]) -> list[str]:
    """The plans of the SELECTs ``call`` runs: EXPLAIN QUERY PLAN on SQLite, EXPLAIN ANALYZE
    (costs off) on PostgreSQL, each run again with the same parameters."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    out: list[str] = []
    sqlite = engine.dialect.name == "sqlite"
    prefix = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN (ANALYZE, COSTS OFF) "
    with engine.connect() as conn:
        for statement, parameters in seen:
            rows = conn.exec_driver_sql(prefix + statement, parameters).all()
            if sqlite:
                depth: dict[int, int] = {0: 0}
                lines = []
                for node, parent, _, detail in rows:
                    depth[node] = depth.get(parent, 0) + 1
                    lines.append("  " * (depth[node] - 1) + detail)
            else:
                lines = [row[0] for row in rows]
            out.append("\n".join(lines))
        conn.rollback()
    return out


# -- jobs --------------------------------------------------------------------------------------


def submit_noops(backend: Backend, count: int) -> list[str]:
    ids: list[str] = []
    for done in range(0, count, 1000):
        ids += [j.id for j in backend.submit_many("noop", [{}] * min(1000, count - done))]
    return ids


def measure_throughput(backend: Backend, uri: str, tmp: Path, count: int, workers: int) -> Any:
    """``count`` pending no-op jobs drained by ``workers`` processes; the rate from the jobs
    table (database clock): jobs / (last finish - first start)."""
    ids = submit_noops(backend, count)
    procs = WorkerProcs(uri, workers, CONCURRENCY, tmp)
    try:
        wait_drained(backend, procs.check_alive, timeout_s=max(300.0, count / 20), poll_s=0.25)
    finally:
        procs.stop()
    rows = job_rows(backend, ids, "status, started_at_ms, finished_at_ms")
    span_ms = max(max(r[2] for r in rows) - min(r[1] for r in rows), 1)
    return {
        "workers": workers,
        "jobs": len(rows),
        "succeeded": sum(r[0] == "SUCCEEDED" for r in rows),
        "jobs_per_s": len(rows) / span_ms * 1000,
    }


def measure_pickup(backend: Backend, uri: str, tmp: Path, seconds: float) -> dict[str, Any]:
    """One idle worker; a no-op submitted every 20 ms; ``started_at - created_at`` per job."""
    count = max(int(PICKUP_RATE * seconds), 1)
    procs = WorkerProcs(uri, 1, CONCURRENCY, tmp)
    try:
        deadline = time.monotonic() + 120
        for _ in range(5):  # warm up, then let the worker go idle
            warm = backend.submit("noop")
            while not backend.get(warm.id).status.is_terminal:
                procs.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError("worker did not start within 120 s")
                time.sleep(0.05)
        time.sleep(0.5)
        ids: list[str] = []
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / PICKUP_RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            ids.append(backend.submit("noop").id)
        wait_drained(backend, procs.check_alive, timeout_s=120, poll_s=0.25)
    finally:
        procs.stop()
    rows = job_rows(backend, ids, "created_at_ms, started_at_ms")
    samples = sorted(float(b - a) for a, b in rows)
    return {"jobs": len(rows), "pickup_ms": percentiles(samples), "samples_ms": samples}


def timed_gets(
    client: httpx.Client, queries: dict[str, tuple[str, dict[str, Any]]], samples: int
) -> dict[str, Any]:
    """p50/p95 of ``samples`` GETs of each query after 5 warm-ups, and what the last one
    returned (the number of jobs or traces on the page)."""
    out: dict[str, Any] = {}
    for label, (path, params) in queries.items():
        for _ in range(5):
            client.get(path, params=params)
        times: list[float] = []
        answer = None
        for _ in range(samples):
            start = time.perf_counter()
            answer = client.get(path, params=params)
            times.append((time.perf_counter() - start) * 1000)
            if answer.status_code != 200:
                raise RuntimeError(f"{label}: {answer.status_code} {answer.text[:300]}")
        returned = None
        if answer is not None and answer.headers["content-type"].startswith("application/json"):
            body = answer.json()
            returned = len(body.get("jobs", body.get("traces", [])))
        out[label] = percentiles(sorted(times)) | {"returned": returned, "samples_ms": times}
    return out


JOB_READS = {
    "GET /api/v1/jobs?status=FAILED": (API_JOBS, {"status": "FAILED"}),
    "GET /api/v1/jobs?name=count_to": (API_JOBS, {"name": "count_to"}),
    "GET /metrics": ("/metrics", {}),
}


class Probe:
    """A tiny worker in the bench process (its own engine): every 20 ms it claims one no-op
    (timed: the claim transaction, as a worker runs it) and finishes it (not timed). Its claim
    latency is how long a claim waits behind whatever else holds the database."""

    def __init__(self, uri: str) -> None:
        self.backend = open_backend(uri)
        self.samples: list[tuple[float, float]] = []  # (wall clock ms at start, latency ms)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        store = self.backend.store
        while not self.stop.wait(0.02):
            at = time.time() * 1000
            begin = time.perf_counter()
            claimed = store.jobs_claim("bench-probe", limit=1, names=["noop"], lease_ttl_s=60)
            self.samples.append((at, (time.perf_counter() - begin) * 1000))
            store.jobs_finish(
                [Finish(j.id, "bench-probe", j.attempt, JobStatus.SUCCEEDED) for j in claimed]
            )

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.backend.close()

    def latencies(self, lo_ms: float, hi_ms: float) -> list[float]:
        return [lat for at, lat in self.samples if lo_ms <= at < hi_ms]

    def between(self, lo_ms: float, hi_ms: float) -> dict[str, float]:
        return percentiles(sorted(self.latencies(lo_ms, hi_ms)))


class Feeder:
    """Keeps the queue topped up (submits 1,000 no-ops whenever fewer than 2,000 are
    unfinished), so workers always have work while the prune runs."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.ids: list[str] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                if unfinished(self.backend) < 2000:
                    self.ids += submit_noops(self.backend, 1000)
                else:
                    self.stop.wait(0.02)
        except BaseException as exc:  # reported by close()
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        if self.error is not None:
            raise RuntimeError("feeder failed") from self.error


def window(starts: Sequence[int], lo_ms: float, hi_ms: float) -> dict[str, float]:
    """Claims (distinct start times) in [lo, hi): jobs started per second and the longest gap
    between two consecutive claims."""
    inside = sorted(s for s in starts if lo_ms <= s < hi_ms)
    claims = sorted(set(inside))
    gaps = [b - a for a, b in itertools.pairwise(claims)]
    return {
        "seconds": (hi_ms - lo_ms) / 1000,
        "jobs_per_s": len(inside) / max(hi_ms - lo_ms, 1) * 1000,
        "max_claim_gap_ms": float(max(gaps, default=0)),
    }


def measure_prune(
    backend: Backend, uri: str, tmp: Path, preload: dict[str, Any], sizes: Sizes
) -> dict[str, Any]:
    """Prune the oldest ``sizes.prune`` jobs of the history in another process while one
    worker runs a steady supply of no-ops and the probe claims; compare a window before the
    prune with the prune."""
    cutoff = preload["base_ms"] + sizes.prune * preload["step_ms"]
    env = dict(os.environ, ASSAY_MAINTENANCE="false")
    env.pop("ASSAY_STORE_URI", None)
    pruner = subprocess.Popen(
        [sys.executable, "-c", PRUNE_SCRIPT, uri],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert pruner.stdin is not None
    assert pruner.stdout is not None
    feeder = Feeder(backend)
    procs = WorkerProcs(uri, 1, CONCURRENCY, tmp)
    probe = Probe(uri)
    try:
        if pruner.stdout.readline().strip() != "ready":
            raise RuntimeError("the prune process did not start")
        deadline = time.monotonic() + 120
        while not feeder.ids or backend.get(feeder.ids[0]).status.value == "PENDING":
            procs.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("worker did not start within 120 s")
            time.sleep(0.1)
        time.sleep(1.0)
        before = (time.time() * 1000, 0.0)
        time.sleep(sizes.steady_s)
        before = (before[0], time.time() * 1000)
        pruner.stdin.write(f"{(time.time() * 1000 - cutoff) / 1000:.3f}\n")
        pruner.stdin.flush()
        out, _ = pruner.communicate(timeout=3 * 3600)
        if pruner.returncode != 0:
            raise RuntimeError(f"prune failed with {pruner.returncode}")
        pruned = json.loads(out.strip().splitlines()[-1])
        after = (time.time() * 1000, 0.0)
        time.sleep(sizes.steady_s)
        after = (after[0], time.time() * 1000)
        feeder.close()
        wait_drained(backend, procs.check_alive, timeout_s=600, poll_s=0.25)
    finally:
        feeder.stop.set()
        procs.stop()
        probe.close()
        if pruner.poll() is None:
            pruner.kill()
            pruner.wait()
    starts = [int(r[0]) for r in job_rows(backend, feeder.ids, "started_at_ms")]
    windows = {
        "before": before,
        "during": (pruned["start_ms"], pruned["end_ms"]),
        "after": after,
    }
    held = sorted(ms for _, ms in pruned["transactions"])
    result: dict[str, Any] = {
        "deleted": pruned["deleted"],
        "seconds": (pruned["end_ms"] - pruned["start_ms"]) / 1000,
        "transactions": len(held),
        "jobs_per_transaction": percentiles(sorted(n for n, _ in pruned["transactions"])),
        "transaction_ms": percentiles(held),
    }
    for name, (lo, hi) in windows.items():
        result[name] = window(starts, lo, hi) | {"probe_ms": probe.between(lo, hi)}
    # Without the prune: the windows before and after it, together.
    steady = sorted(lat for lo, hi in (before, after) for lat in probe.latencies(lo, hi))
    result["steady"] = {
        "jobs_per_s": statistics.fmean(
            [result["before"]["jobs_per_s"], result["after"]["jobs_per_s"]]
        ),
        "max_claim_gap_ms": max(
            result["before"]["max_claim_gap_ms"], result["after"]["max_claim_gap_ms"]
        ),
        "probe_ms": percentiles(steady),
    }
    return result


def job_plans(backend: Backend) -> dict[str, list[str]]:
    store = backend.store
    calls: dict[str, Callable[[], Any]] = {
        "list status=FAILED": lambda: backend.search(status="FAILED"),
        "list name=count_to": lambda: backend.search(name="count_to"),
        "metrics (jobs_stats)": store.jobs_stats,
        "claim": lambda: store.jobs_claim("plan", limit=32, names=["bench.probe"], lease_ttl_s=1),
        "prune batch (nothing old enough)": lambda: store.jobs_prune(10 * 365 * 86400.0),
    }
    return {label: explain(backend.engine, call) for label, call in calls.items()}


@contextlib.contextmanager
def sibling(store: Store) -> Iterator[str]:
    """A second, empty store beside the bench's own: another SQLite file, or another database
    on the same server (dropped afterwards), so both queues can be measured in turns."""
    if store.kind == "sqlite":
        yield f"sqlite:///{store.tmp / 'empty-queue.db'}"
        return
    name = f"assay_bench_{os.getpid()}_empty"
    admin = sa.create_engine(store.base_uri, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        yield sa.make_url(store.base_uri).set(database=name).render_as_string(False)
    finally:
        force = " WITH (FORCE)" if store.kind == "postgresql" else ""
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
        admin.dispose()


def measure_round(
    store: Store, phase: str, uri: str, backend: Backend, sizes: Sizes, log: Callable[[str], None]
) -> dict[str, Any]:
    """Throughput (1 and 2 workers), pickup and the reads, once, on one queue."""
    result: dict[str, Any] = {"load_average": os.getloadavg(), "throughput": []}
    for workers in (1, 2):
        run = measure_throughput(backend, uri, store.tmp, sizes.pending, workers)
        result["throughput"].append(run)
        log(f"{store.kind} {phase}: {workers} worker(s): {run['jobs_per_s']:.0f} jobs/s")
    result["pickup"] = measure_pickup(backend, uri, store.tmp, sizes.pickup_s)
    p = result["pickup"]["pickup_ms"]
    log(f"{store.kind} {phase}: pickup p50 {p['p50']:.0f} p95 {p['p95']:.0f} ms")
    with server(uri, store.tmp) as url, httpx.Client(base_url=url, timeout=60) as client:
        result["reads"] = timed_gets(client, JOB_READS, sizes.samples)
    for label, q in result["reads"].items():
        log(f"{store.kind} {phase}: {label}: p50 {q['p50']:.1f} p95 {q['p95']:.1f} ms")
    return result


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one queue together: median throughput, pickup and read percentiles over
    every sample of every round."""
    out: dict[str, Any] = {"throughput": {}, "pickup_ms": {}, "reads": {}}
    for index, run in enumerate(rounds[0]["throughput"]):
        rates = [r["throughput"][index]["jobs_per_s"] for r in rounds]
        out["throughput"][run["workers"]] = {"median": statistics.median(rates), "runs": rates}
    out["pickup_ms"] = percentiles(sorted(x for r in rounds for x in r["pickup"]["samples_ms"]))
    for label in rounds[0]["reads"]:
        times = sorted(x for r in rounds for x in r["reads"][label]["samples_ms"])
        out["reads"][label] = percentiles(times) | {
            "returned": rounds[0]["reads"][label]["returned"]
        }
    return out


def bench_jobs(store: Store, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    """The empty queue and the one with history, measured in turns (``--rounds``), so that
    a change in the machine's load falls on both; then the prune, on the one with history."""
    history_uri = store.fresh()
    out: dict[str, Any] = {}
    with (
        sibling(store) as empty_uri,
        open_backend(empty_uri) as empty,
        open_backend(history_uri) as history,
    ):
        preload = preload_jobs(history.engine, sizes.jobs)
        log(f"{store.kind}: preloaded {sizes.jobs:,} jobs in {preload['seconds']:.0f} s")
        preload_jobs(empty.engine, BASELINE_ROWS)  # so its list pages are full pages too
        out["preload_s"] = preload["seconds"]
        for backend in (empty, history):
            analyze(backend.engine)
        queues = {"empty": (empty_uri, empty), "history": (history_uri, history)}
        rounds: dict[str, list[dict[str, Any]]] = {phase: [] for phase in queues}
        for _ in range(sizes.rounds):
            for phase, (uri, backend) in queues.items():
                rounds[phase].append(measure_round(store, phase, uri, backend, sizes, log))
        for phase in queues:
            out[phase] = pooled(rounds[phase]) | {"rounds": rounds[phase]}
        out["history"]["plans"] = job_plans(history)
        prune = measure_prune(history, history_uri, store.tmp, preload, sizes)
        out["history"]["prune"] = prune
        log(
            f"{store.kind}: pruned {prune['deleted']:,} jobs in {prune['seconds']:.1f} s;"
            f" 1 worker {prune['steady']['jobs_per_s']:.0f} -> "
            f"{prune['during']['jobs_per_s']:.0f} jobs/s; probe max"
            f" {prune['steady']['probe_ms']['max']:.0f} ->"
            f" {prune['during']['probe_ms']['max']:.0f} ms"
        )
    return out


# -- traces ------------------------------------------------------------------------------------


def trace_filters(lo: int, count: int) -> dict[str, str | None]:
    """The searches (None: the UI's default page), on values that exist in this experiment's
    part of the series."""
    middle = lo + count // 2
    return {
        "UI default page (GET /ui/experiments/E)": None,
        "metadata.user = 'u7' (~100 traces)": "metadata.user = 'u7'",
        f"trace.status = 'ERROR' ({ERROR_PERCENT} %)": "trace.status = 'ERROR'",
        "request LIKE '%account A7,%' (1 %)": "trace.request_preview LIKE '%account A7,%'",
        "request LIKE '%order N)%' (1 trace)": f"trace.request_preview LIKE '%order {middle})%'",
        "a session's traces (5)": f"trace.session_id = 's-{middle // TRACES_PER_SESSION}'",
    }


def trace_requests(
    experiment_id: str, filters: dict[str, str | None]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each search as a GET: the UI page, or ``GET /api/v1/traces`` with a page as the UI's."""
    base = {"experiment_id": experiment_id, "max_results": UI_PAGE}
    return {
        label: (f"/ui/experiments/{experiment_id}", {})
        if text is None
        else (API_TRACES, base | {"filter": text})
        for label, text in filters.items()
    }


def trace_plans(
    engine: sa.Engine, experiment_id: str, filters: dict[str, str | None]
) -> dict[str, list[str]]:
    store = TraceStore(engine)

    def search(text: str | None) -> Callable[[], Any]:
        return lambda: store.traces_search([experiment_id], text, max_results=UI_PAGE)

    return {label: explain(engine, search(text)) for label, text in filters.items()}


def bench_traces(store: Store, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    uri = store.fresh()
    out: dict[str, Any] = {"load_average": os.getloadavg()}
    engine = create_engine(uri)
    try:
        upgrade(engine)
        tracking = TrackingStore(engine)
        small = tracking.create_experiment(f"scale-baseline-{os.getpid()}").id
        large = tracking.create_experiment(f"scale-history-{os.getpid()}").id
        phases = (
            ("empty", small, 0, sizes.baseline_traces),
            ("history", large, sizes.baseline_traces, sizes.traces),
        )
        for phase, experiment_id, lo, count in phases:
            seconds = preload_traces(engine, experiment_id, lo, count)
            analyze(engine)
            log(
                f"{store.kind}: preloaded {count:,} traces ({count * 5:,} spans) in {seconds:.0f} s"
            )
            filters = trace_filters(lo, count)
            requests = trace_requests(experiment_id, filters)
            with server(uri, store.tmp) as url, httpx.Client(base_url=url, timeout=120) as client:
                reads = timed_gets(client, requests, sizes.samples)
            for label, q in reads.items():
                log(f"{store.kind} {phase}: {label}: p50 {q['p50']:.1f} p95 {q['p95']:.1f} ms")
            out[phase] = {"traces": count, "preload_s": seconds, "reads": reads}
            out[phase]["plans"] = trace_plans(engine, experiment_id, filters)
    finally:
        engine.dispose()
    return out


# -- one store ---------------------------------------------------------------------------------


def bench_store(store: Store, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    result: dict[str, Any] = {"version": store.version}
    if "jobs" in sizes.only:
        result["jobs"] = bench_jobs(store, sizes, log)
    if "traces" in sizes.only:
        result["traces"] = bench_traces(store, sizes, log)
    result["summary"] = summarize(result)
    return result


def _row(
    metric: str,
    empty: float | None,
    large: float | None,
    unit: str,
    target: str,
    passed: bool | None,
) -> dict[str, Any]:
    return {
        "metric": metric,
        "empty": empty,
        "history": large,
        "unit": unit,
        "target": target,
        "passed": passed,
    }


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's rows: each number on the empty store and with history, beside its target."""
    rows: list[dict[str, Any]] = []
    if "jobs" in result:
        empty, large = result["jobs"]["empty"], result["jobs"]["history"]
        for workers, e_run in empty["throughput"].items():
            e, h = e_run["median"], large["throughput"][workers]["median"]
            rows.append(
                _row(
                    f"throughput, {workers} worker{'s' if workers > 1 else ''} (median)",
                    e,
                    h,
                    "jobs/s",
                    "≥ 90 % of baseline",
                    h >= e * (1 - RELATIVE),
                )
            )
        for q in ("p50", "p95"):
            e, h = empty["pickup_ms"][q], large["pickup_ms"][q]
            rows.append(
                _row(
                    f"pickup {q}",
                    e,
                    h,
                    "ms",
                    "≤ 110 % of baseline (or +1 ms)",
                    h <= max(e * (1 + RELATIVE), e + CLOCK_MS),
                )
            )
        for label in JOB_READS:
            e, h = empty["reads"][label]["p95"], large["reads"][label]["p95"]
            rows.append(_row(f"{label} p95", e, h, "ms", f"≤ {LIST_P95_MS:g} ms", h <= LIST_P95_MS))
        prune = large["prune"]
        rows.append(_row(f"prune {prune['deleted']:,} jobs", None, prune["seconds"], "s", "", None))
        held = prune["transaction_ms"]
        rows.append(
            _row(
                f"prune: longest of {prune['transactions']:,} transactions (p99 → max)",
                held["p99"],
                held["max"],
                "ms",
                f"≤ {CLAIM_BLOCK_MS:g} ms",
                held["max"] <= CLAIM_BLOCK_MS,
            )
        )
        steady, during = prune["steady"], prune["during"]
        rows.append(
            _row(
                "1 worker: steady → while pruning",
                steady["jobs_per_s"],
                during["jobs_per_s"],
                "jobs/s",
                "≥ 90 % of steady",
                during["jobs_per_s"] >= steady["jobs_per_s"] * (1 - RELATIVE),
            )
        )
        for q in ("p99", "max"):
            rows.append(
                _row(
                    f"claim probe {q}: steady → while pruning",
                    steady["probe_ms"][q],
                    during["probe_ms"][q],
                    "ms",
                    "",
                    None,
                )
            )
        rows.append(
            _row(
                "longest gap between claims: steady → while pruning",
                steady["max_claim_gap_ms"],
                during["max_claim_gap_ms"],
                "ms",
                "",
                None,
            )
        )
    if "traces" in result:
        empty, large = result["traces"]["empty"]["reads"], result["traces"]["history"]["reads"]
        for label in large:
            e, h = empty[label]["p95"], large[label]["p95"]
            rows.append(
                _row(f"{label} p95", e, h, "ms", f"≤ {SEARCH_P95_MS:g} ms", h <= SEARCH_P95_MS)
            )
    return rows


# -- report ------------------------------------------------------------------------------------


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    return f"{value:,.0f} {unit}" if unit == "jobs/s" else f"{value:,.1f} {unit}"


def print_table(results: dict[str, Any]) -> None:
    sizes = results["sizes"]
    parts = {"jobs": f"{sizes['jobs']:,} finished jobs", "traces": f"{sizes['traces']:,} traces"}
    table = new_table(
        "assay at scale: " + ", ".join(parts[p] for p in sizes["only"]),
        {
            "store": "left",
            "metric": "left",
            "baseline (1k rows)": "right",
            "with history": "right",
            "target": "left",
            "result": "center",
        },
    )
    for kind, store in results["stores"].items():
        if "skipped" in store:
            add_skipped(table, kind, reason=store["skipped"])
            continue
        for row in store["summary"]:
            table.add_row(
                kind,
                row["metric"],
                _number(row["empty"], row["unit"]),
                _number(row["history"], row["unit"]),
                row["target"],
                verdict(row["passed"]),
            )
        table.add_section()
    console.print(table)
    console.print(load_average(results))
    if not results.get("explain"):
        return
    for kind, store in results["stores"].items():
        for part in ("jobs", "traces"):
            plans = store.get(part, {}).get("history", {}).get("plans", {})
            for label, texts in plans.items():
                console.rule(f"{kind}: {label}")
                for text in texts:
                    console.print(text, markup=False, highlight=False)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--jobs", type=int, help="finished jobs preloaded (default 1,000,000)")
    parser.add_argument("--pending", type=int, help="pending jobs per throughput run (10,000)")
    parser.add_argument("--traces", type=int, help="traces preloaded (default 1,000,000)")
    parser.add_argument("--samples", type=int, help="timed requests per query (default 100)")
    parser.add_argument("--rounds", type=int, help="turns of the job measurements (default 3)")
    parser.add_argument("--only", default="jobs,traces", help="jobs, traces or both")
    parser.add_argument("--explain", action="store_true", help="print the query plans")
    parser.add_argument("--prune", type=int, help="oldest jobs pruned (default 90 %% of --jobs)")
    add_run_options(
        parser, "scale", quick_help="20,000 jobs and 20,000 traces, 1 round: a smoke test (2-4 min)"
    )
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    quick = args.quick
    jobs = args.jobs or (20_000 if quick else 1_000_000)
    return Sizes(
        jobs=jobs,
        pending=args.pending or (1_000 if quick else 10_000),
        traces=args.traces or (20_000 if quick else 1_000_000),
        baseline_traces=BASELINE_ROWS,
        samples=args.samples or (10 if quick else 100),
        pickup_s=2.0 if quick else 10.0,
        steady_s=2.0 if quick else 10.0,
        rounds=args.rounds or (1 if quick else 3),
        prune=min(int(jobs * PRUNE_SHARE) if args.prune is None else max(args.prune, 0), jobs),
        only=tuple(x.strip() for x in args.only.split(",") if x.strip()),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    if not set(sizes.only) <= {"jobs", "traces"}:
        console.print("[red]--only takes jobs, traces or both[/]")
        return 2

    def print_results(results: dict[str, Any]) -> None:
        results["explain"] = args.explain
        print_table(results)

    return run_benchmark(
        args,
        sizes.__dict__,
        lambda store: bench_store(store, sizes, console.log),
        print_results,
        name="scale",
    )


if __name__ == "__main__":
    sys.exit(main())
