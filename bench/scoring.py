"""Online-scoring benchmark: heuristic, sandboxed custom-code and LLM-judge throughput of the
scoring processor, and the completion → assessment latency of a real ``assay server``, per
store.

Run it from the repository root::

    .venv/bin/python bench/scoring.py [--stores sqlite,postgresql] [--traces N]
                                      [--custom-traces N] [--judge-traces N]
                                      [--concurrency 16,32,64] [--quick]
                                      [--out bench/results/scoring.json]

Throughput runs ``ScoringEngine.run`` in-process on a ledger filled beforehand (through
``TraceStore.spans_ingest``, not timed). The latency phase sends OTLP traces at a steady rate
to a real server (workers and scheduler in its process) and reads every trace's
``completed_at_ms`` and its assessments' ``created_at_ms`` from the database at the end, so the
bench's own polling is never part of a number. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from rich.console import JustifyMethod
from rich.table import Table

from assay.config import load_settings
from assay.db.engine import create_engine
from assay.db.migrate import upgrade
from assay.db.tables import assessments, scoring_tasks, traces
from assay.scoring import judge as judge_module
from assay.scoring.engine import RunStats, ScoringEngine
from assay.scoring.model import Level
from assay.scoring.service import ScoringService
from assay.scoring.standin import StandInJudge
from assay.stores import Stores
from assay.tracing.model import Span
from assay.tracing.otlp import PROTOBUF
from assay.tracking.store import TrackingStore
from common import (
    Store,
    add_run_options,
    console,
    ints,
    load_average,
    machine_info,
    new_parser,
    new_table,
    percentile,
    run_benchmark,
    verdict,
)
from common import server as api_server
from ingest import TraceFactory, create_experiment
from ingest import fresh as fresh_traces

SCORING_TABLES = ("scoring_tasks", "scorers")
HEURISTICS: dict[str, tuple[str, dict[str, Any]]] = {
    "length": ("output_length", {"max_chars": 1000}),
    "refund": ("regex", {"pattern": r"\brefund\b", "ignore_case": True}),
}
CUSTOM: dict[str, tuple[str, dict[str, Any]]] = {
    "mentions_refund": (
        "custom",
        {"code": "def score(inputs, outputs, trace):\n    return 'refund' in str(outputs)\n"},
    ),
}
JUDGE = {"instructions": "Is this answer good? {{ outputs }}", "output": {"type": "yes_no"}}
DRAIN_TIMEOUT_S = 600.0
SENDERS = 4

# Targets from the issue (a 2-core machine).
HEURISTIC_TARGET = 2000.0  # traces/s, 2 heuristic scorers
JUDGE_TARGET = 100.0  # traces/s, one judge answering in 100 ms
LATENCY_P95_TARGET_S = 30.0


@dataclass(frozen=True)
class Sizes:
    traces: int
    custom_traces: int
    judge_traces: int
    ingest_batch: int
    concurrencies: tuple[int, ...]
    judge_latency_s: float
    rate: float
    seconds: float
    request_traces: int


# -- stores and traces -------------------------------------------------------------------------


def fresh(store: Store) -> str:
    """An empty store: the trace tables (and, on a server, the scoring tables) emptied."""
    uri = fresh_traces(store)
    if store.kind == "sqlite":
        return uri
    engine = sa.create_engine(uri)
    try:
        with engine.begin() as conn:
            existing = set(sa.inspect(conn).get_table_names())
            for name in SCORING_TABLES:
                if name in existing:
                    conn.execute(sa.text(f"DELETE FROM {name}"))
    finally:
        engine.dispose()
    return uri


@contextmanager
def opened_engine(uri: str) -> Iterator[sa.Engine]:
    engine = create_engine(uri)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def two_spans(trace_id: str, start_ns: int, output: str) -> list[Span]:
    """An agent root with inputs and outputs, and an LLM child: the shape the scorers read."""
    root_id, child_id = trace_id[:16], trace_id[16:]
    return [
        Span(
            trace_id=trace_id,
            span_id=root_id,
            parent_span_id=None,
            name="agent",
            kind="SERVER",
            status_code="OK",
            status_message=None,
            start_time_ns=start_ns,
            end_time_ns=start_ns + 800_000_000,
            attributes={
                "openinference.span.kind": "AGENT",
                "input.value": json.dumps(
                    {"question": f"What is the refund policy? {trace_id[:6]}"}
                ),
                "output.value": output,
                "assay.tags.env": "prod",
            },
        ),
        Span(
            trace_id=trace_id,
            span_id=child_id,
            parent_span_id=root_id,
            name="llm",
            kind="CLIENT",
            status_code="OK",
            status_message=None,
            start_time_ns=start_ns + 10_000_000,
            end_time_ns=start_ns + 700_000_000,
            attributes={"llm.token_count.prompt": 900, "llm.token_count.completion": 120},
        ),
    ]


_OUTPUTS = (
    "Annual plans cancelled within 30 days get a full refund, minus used add-ons.",
    "I could not find that in the knowledge base; a colleague will follow up by email.",
    "This is a bad answer.",
)


def seed(stores: Stores, experiment_id: str, count: int, batch: int) -> float:
    """``count`` completed two-span traces through ``TraceStore.spans_ingest``, ``batch``
    traces per transaction (this fills the ledger); returns the seconds it took."""
    store = stores.traces
    start_ns = time.time_ns()
    started = time.perf_counter()
    for done in range(0, count, batch):
        spans = [
            span
            for n in range(done, min(done + batch, count))
            for span in two_spans(uuid.uuid4().hex, start_ns + n * 1_000_000, _OUTPUTS[n % 3])
        ]
        store.spans_ingest({experiment_id: spans})
    return time.perf_counter() - started


def count(engine: sa.Engine, table: sa.Table, experiment_id: str | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(table)
    if experiment_id is not None and "experiment_id" in table.c:
        query = query.where(table.c.experiment_id == experiment_id)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def assessment_times(engine: sa.Engine) -> list[int]:
    """Every assessment's ``created_at_ms``, sorted."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(assessments.c.created_at_ms)).scalars()
        return sorted(int(r) for r in rows)


# -- in-process throughput ---------------------------------------------------------------------


def drain(scoring: ScoringEngine, engine: sa.Engine, experiment_id: str, expected: int) -> RunStats:
    """Run the processor until ``expected`` assessments exist (rows put back for a retry are
    not due at once, so an empty claim alone does not mean done)."""
    total = RunStats()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        stats = scoring.run(experiment_id, Level.TRACE, owner="bench")
        for name in ("claimed", "scored", "filtered", "retrying", "failed", "released"):
            setattr(total, name, getattr(total, name) + getattr(stats, name))
        if stats.claimed == 0:
            if count(engine, assessments) >= expected or total.failed:
                return total
            if time.monotonic() > deadline:
                raise RuntimeError(f"not drained within {DRAIN_TIMEOUT_S:.0f} s: {total}")
            time.sleep(0.2)


def measure_throughput(
    store: Store,
    sizes: Sizes,
    scorers: dict[str, tuple[str, dict[str, Any]]],
    traces: int,
    **overrides: Any,
) -> dict[str, Any]:
    """``traces`` seeded traces scored in-process by ``scorers`` (settings ``overrides``)."""
    uri = fresh(store)
    with opened_engine(uri) as engine:
        settings = load_settings(store_uri=uri, **overrides)
        stores = Stores.open(engine, settings)
        service = ScoringService(stores, settings)
        experiment_id = TrackingStore(engine).create_experiment(f"bench-{time.time_ns()}").id
        for name, (kind, definition) in scorers.items():
            service.put(experiment_id, name, kind=kind, definition=definition)
        ingest_s = seed(stores, experiment_id, traces, sizes.ingest_batch)
        queued = count(engine, scoring_tasks, experiment_id)
        scoring = ScoringEngine(stores, settings)
        try:
            started = time.perf_counter()
            stats = drain(scoring, engine, experiment_id, queued)
            wall_s = time.perf_counter() - started
        finally:
            scoring.close()
        made = count(engine, assessments)
    return {
        "traces": traces,
        "scorers": list(scorers),
        "ingest_s": ingest_s,
        "queued_pairs": queued,
        "assessments": made,
        "stats": stats.to_dict(),
        "wall_s": wall_s,
        "traces_per_s": traces / wall_s,
        "pairs_per_s": made / wall_s,
        "batch_size": settings.scoring_batch_size,
    }


def measure_judge(store: Store, sizes: Sizes, concurrency: int) -> dict[str, Any]:
    """One judge scorer against a fresh stand-in (so a fresh rate limiter: the limiter is
    process-wide per endpoint URL and model, and every stand-in has its own port)."""
    uri = fresh(store)
    with StandInJudge() as standin, opened_engine(uri) as engine:
        standin.latency_s = sizes.judge_latency_s
        settings = load_settings(
            store_uri=uri, judge_base_url=standin.url, scoring_concurrency=concurrency
        )
        stores = Stores.open(engine, settings)
        service = ScoringService(stores, settings)
        experiment_id = TrackingStore(engine).create_experiment(f"bench-{time.time_ns()}").id
        service.put(experiment_id, "judge", kind="llm_judge", definition=JUDGE)
        seed(stores, experiment_id, sizes.judge_traces, sizes.ingest_batch)
        scoring = ScoringEngine(stores, settings)
        try:
            started = time.perf_counter()
            stats = drain(scoring, engine, experiment_id, sizes.judge_traces)
            wall_s = time.perf_counter() - started
        finally:
            scoring.close()
        endpoint = judge_module.JudgeEndpoint(base_url=standin.url, model=settings.judge_model)
        limiter_rps = judge_module.limiter_for(endpoint).rate
        times = assessment_times(engine)
        requests, by_status = standin.requests, standin.by_status
    return {
        "concurrency": concurrency,
        "traces": sizes.judge_traces,
        "judge_latency_s": sizes.judge_latency_s,
        "assessments": len(times),
        "stats": stats.to_dict(),
        "wall_s": wall_s,
        "traces_per_s": sizes.judge_traces / wall_s,
        "last_quarter_per_s": tail_rate(times),
        "ideal_per_s": concurrency / sizes.judge_latency_s,
        "limiter_rps_at_end": limiter_rps,
        "judge_requests": requests,
        "judge_by_status": by_status,
    }


def tail_rate(times_ms: Sequence[int]) -> float:
    """Assessments per second over about the last quarter of the run, with the limiter's
    slow start left out. A batch's assessments share one commit time, so the window starts
    at a commit and counts only what was committed after it."""
    if not times_ms:
        return float("nan")
    start = times_ms[len(times_ms) * 3 // 4]
    if start == times_ms[-1]:  # the last commit holds the whole quarter: start one earlier
        start = max((t for t in times_ms if t < start), default=start)
    after = sum(1 for t in times_ms if t > start)
    span_s = (times_ms[-1] - start) / 1000
    return after / span_s if after and span_s > 0 else float("nan")


# -- end to end: a real server -----------------------------------------------------------------


@contextmanager
def server(uri: str, log_dir: Path) -> Iterator[str]:
    """A real ``assay server`` (default workers, scheduler every second) on a free port."""
    with api_server(uri, log_dir, "--workers", "1", env={"ASSAY_SCORING_INTERVAL_S": "1"}) as url:
        yield url


def register_over_rest(url: str, experiment_id: str) -> None:
    for name, (kind, definition) in HEURISTICS.items():
        answer = httpx.put(
            f"{url}/api/v1/experiments/{experiment_id}/scorers/{name}",
            json={"scorer": {"kind": kind, "definition": definition}, "sample_rate": 1.0},
            timeout=30,
        )
        if answer.status_code not in (200, 201):
            raise RuntimeError(f"register {name}: {answer.status_code} {answer.text[:300]}")


def send_steadily(url: str, experiment_id: str, sizes: Sizes) -> dict[str, Any]:
    """Requests of ``sizes.request_traces`` traces, request ``n`` due ``n * request_traces /
    rate`` seconds after the start, for ``sizes.seconds``. Senders (threads, one keep-alive
    client each) take every ``SENDERS``-th request, so one slow answer does not hold back
    the rate; a request past its time is sent at once (catching up) and counted as late."""
    factory = TraceFactory(experiment_id, seed=7, start_ms=time.time_ns() // 1_000_000)
    requests = max(round(sizes.rate * sizes.seconds / sizes.request_traces), 1)
    bodies = [factory.request(sizes.request_traces)[0] for _ in range(requests)]
    step_s = sizes.request_traces / sizes.rate
    late = [0] * SENDERS
    errors: list[str] = []
    started = time.perf_counter() + 0.2  # every sender is waiting by then

    def send(index: int) -> None:
        headers = {"content-type": PROTOBUF}
        with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
            for n in range(index, requests, SENDERS):
                wait = started + n * step_s - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                else:
                    late[index] += 1
                answer = client.post("/v1/traces", content=bodies[n])
                if answer.status_code != 200:
                    errors.append(f"{answer.status_code} {answer.content[:200]!r}")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} exports failed, first: {errors[0]}")
    sent = requests * sizes.request_traces
    return {
        "traces": sent,
        "requests": requests,
        "senders": SENDERS,
        "late_requests": sum(late),
        "send_s": wall_s,
        "sent_per_s": sent / wall_s,
    }


def wait_scored(engine: sa.Engine, expected: int, timeout_s: float) -> float:
    """Seconds until ``expected`` assessments exist (polled; the numbers come from the rows)."""
    started = time.monotonic()
    while count(engine, assessments) < expected:
        if time.monotonic() - started > timeout_s:
            break
        time.sleep(0.5)
    return time.monotonic() - started


def completion_to_assessment_s(engine: sa.Engine, experiment_id: str) -> tuple[list[float], int]:
    """Per completed trace: its last assessment's ``created_at_ms`` minus its
    ``completed_at_ms`` (both stamped by the server), sorted; and how many have none."""
    last = (
        sa.select(assessments.c.trace_id, sa.func.max(assessments.c.created_at_ms).label("at"))
        .group_by(assessments.c.trace_id)
        .subquery()
    )
    query = (
        sa.select(traces.c.completed_at_ms, last.c.at)
        .select_from(traces.outerjoin(last, last.c.trace_id == traces.c.trace_id))
        .where(traces.c.experiment_id == experiment_id, traces.c.completed_at_ms.is_not(None))
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    latencies = sorted((r.at - r.completed_at_ms) / 1000 for r in rows if r.at is not None)
    return latencies, sum(1 for r in rows if r.at is None)


def measure_latency(store: Store, sizes: Sizes) -> dict[str, Any]:
    uri = fresh(store)
    with server(uri, store.tmp) as url, opened_engine(uri) as engine:
        experiment_id = create_experiment(url)
        register_over_rest(url, experiment_id)
        sent = send_steadily(url, experiment_id, sizes)
        expected = sent["traces"] * len(HEURISTICS)
        waited_s = wait_scored(engine, expected, timeout_s=120 + sizes.seconds)
        latencies, unscored = completion_to_assessment_s(engine, experiment_id)
    return sent | {
        "scorers": list(HEURISTICS),
        "assessments_expected": expected,
        "scored_traces": len(latencies),
        "unscored_traces": unscored,
        "waited_after_send_s": waited_s,
        "latency_s": {f"p{q}": percentile(latencies, q) for q in (50, 95, 99)}
        | {"max": latencies[-1] if latencies else float("nan")},
    }


# -- one store ---------------------------------------------------------------------------------


def bench_store(store: Store, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    result: dict[str, Any] = {"version": store.version}
    log(f"{store.kind}: heuristics, {sizes.traces:,} traces")
    result["heuristics"] = measure_throughput(store, sizes, HEURISTICS, sizes.traces)
    log(f"{store.kind}: custom code scorer (sandboxed), {sizes.custom_traces:,} traces")
    result["custom"] = measure_throughput(
        store, sizes, CUSTOM, sizes.custom_traces, allow_custom_scorers=True
    )
    result["judge"] = []
    for concurrency in sizes.concurrencies:
        log(f"{store.kind}: judge, {sizes.judge_traces:,} traces, concurrency {concurrency}")
        result["judge"].append(measure_judge(store, sizes, concurrency))
    log(f"{store.kind}: latency, {sizes.rate:g} traces/s for {sizes.seconds:g} s")
    result["latency"] = measure_latency(store, sizes)
    return result


# -- report ------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (empty where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), ""
    )


def store_table(title: str, columns: Sequence[str]) -> Table:
    """A table of a store column (left) and number columns (right)."""
    justify: dict[str, JustifyMethod] = {"store": "left"}
    return new_table(title, justify | dict.fromkeys(columns, "right"))


def print_tables(results: dict[str, Any]) -> None:
    stores = {k: v for k, v in results["stores"].items() if "skipped" not in v}
    heuristics = store_table(
        "1. heuristic throughput (2 scorers, in-process ScoringEngine.run)",
        ("traces", "pairs", "wall", "traces/s", "pairs/s", "target", "result"),
    )
    for kind, store in stores.items():
        h = store["heuristics"]
        heuristics.add_row(
            kind,
            f"{h['traces']:,}",
            f"{h['assessments']:,}",
            f"{h['wall_s']:.1f} s",
            f"[bold]{h['traces_per_s']:,.0f}[/]",
            f"{h['pairs_per_s']:,.0f}",
            f"≥ {HEURISTIC_TARGET:,.0f}",
            verdict(h["traces_per_s"] >= HEURISTIC_TARGET),
        )
    console.print(heuristics)

    custom = store_table(
        "1b. custom code scorer throughput (sandboxed, in-process engine)",
        ("traces", "wall", "traces/s"),
    )
    for kind, store in stores.items():
        c = store["custom"]
        custom.add_row(
            kind, f"{c['traces']:,}", f"{c['wall_s']:.1f} s", f"[bold]{c['traces_per_s']:,.0f}[/]"
        )
    console.print(custom)

    judge = store_table(
        "2. judge throughput (stand-in judge, 100 ms per call, fresh limiter)",
        (
            "concurrency",
            "traces",
            "wall",
            "traces/s",
            "last 25 %/s",
            "ideal/s",
            "limiter at end",
            "target",
            "result",
        ),
    )
    for kind, store in stores.items():
        for j in store["judge"]:
            judge.add_row(
                kind,
                str(j["concurrency"]),
                f"{j['traces']:,}",
                f"{j['wall_s']:.1f} s",
                f"[bold]{j['traces_per_s']:,.1f}[/]",
                f"{j['last_quarter_per_s']:,.1f}",
                f"{j['ideal_per_s']:,.0f}",
                f"{j['limiter_rps_at_end']:.1f} rps",
                f"≥ {JUDGE_TARGET:,.0f}",
                verdict(j["traces_per_s"] >= JUDGE_TARGET),
            )
        judge.add_section()
    console.print(judge)

    latency = store_table(
        "3. completion → assessment, real server over OTLP (2 heuristics)",
        ("sent", "sent/s", "scored", "p50", "p95", "p99", "max", "target", "result"),
    )
    for kind, store in stores.items():
        lat = store["latency"]
        s = lat["latency_s"]
        latency.add_row(
            kind,
            f"{lat['traces']:,}",
            f"{lat['sent_per_s']:,.0f}",
            f"{lat['scored_traces']:,}"
            + (f" ({lat['unscored_traces']} not)" if lat["unscored_traces"] else ""),
            f"{s['p50']:.2f} s",
            f"[bold]{s['p95']:.2f} s[/]",
            f"{s['p99']:.2f} s",
            f"{s['max']:.2f} s",
            f"p95 ≤ {LATENCY_P95_TARGET_S:.0f} s",
            verdict(s["p95"] <= LATENCY_P95_TARGET_S and not lat["unscored_traces"]),
        )
    console.print(latency)
    machine = results["machine"]
    console.print(f"nproc {machine['nproc']}, Python {machine['python']}; {load_average(results)}")


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--traces", type=int, help="heuristic traces (default 20000; 2000 --quick)")
    parser.add_argument(
        "--custom-traces", type=int, help="custom-scorer traces (default 5000; 500 --quick)"
    )
    parser.add_argument("--judge-traces", type=int, help="judge traces (default 2000; 300 --quick)")
    parser.add_argument("--ingest-batch", type=int, default=500, help="traces per seed transaction")
    parser.add_argument(
        "--concurrency", default="16,32,64", help="judge scoring_concurrency values"
    )
    parser.add_argument(
        "--judge-latency", type=float, default=0.1, help="stand-in judge latency, s"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="traces/s of the latency phase")
    parser.add_argument("--seconds", type=float, help="length of the latency phase (20; 5 --quick)")
    parser.add_argument("--request-traces", type=int, default=10, help="traces per OTLP request")
    add_run_options(parser, "scoring", quick_help="small sizes: a smoke test")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    quick = args.quick
    return Sizes(
        traces=args.traces or (2000 if quick else 20_000),
        custom_traces=args.custom_traces or (500 if quick else 5000),
        judge_traces=args.judge_traces or (300 if quick else 2000),
        ingest_batch=args.ingest_batch,
        concurrencies=ints(args.concurrency),
        judge_latency_s=args.judge_latency,
        rate=args.rate,
        seconds=args.seconds or (5.0 if quick else 20.0),
        request_traces=args.request_traces,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    counts = (sizes.traces, sizes.custom_traces, sizes.judge_traces, sizes.ingest_batch)
    if min(*counts, sizes.request_traces) < 1:
        console.print("[red]sizes must be ≥ 1[/]")
        return 2
    return run_benchmark(
        args,
        sizes.__dict__,
        lambda store: bench_store(store, sizes, console.log),
        print_tables,
        name="scoring",
        machine=lambda seen: machine_info(seen) | {"cpu_model": cpu_model()},
    )


if __name__ == "__main__":
    sys.exit(main())
