"""MLflow SearchRuns benchmark: latency of ``POST /api/2.0/mlflow/runs/search`` as an
experiment's runs grow.

Run it from the repository root::

    .venv/bin/python bench/mlflow_runs.py [--stores sqlite,postgresql] [--runs 20000] [--quick]
                                          [--out bench/results/mlflow_runs.json]

A real ``assay server`` (``--workers 0``) on a fresh store; the runs (a metric, a param and a
tag each) are made through the store, to ``--small-runs`` and then ``--runs`` (PostgreSQL and
MySQL analysed after each, as their own statistics would be), and each search is timed at both
sizes. A search with no filter and no ``order_by`` (MLflow's default) reads one
page by the index, so it should not grow with the runs. A filter is evaluated over the runs the
store could not rule out in SQL (a param's or tag's value, a key, a metric's values, an
attribute), so it grows with the runs that may match. See bench/README.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from assay.db.engine import create_engine
from assay.db.migrate import upgrade
from assay.tracking.model import Metric
from assay.tracking.store import TrackingStore
from common import (
    SMALL_LARGE_COLUMNS,
    Store,
    add_run_options,
    add_skipped,
    analyze,
    console,
    load_average,
    new_parser,
    new_table,
    percentiles,
    run_benchmark,
    server,
    small_vs_large,
)

SEARCH = "/api/2.0/mlflow/runs/search"
RUN_TABLES = ("runs", "run_params", "run_metrics", "run_tags", "run_inputs")
START_MS = 1_700_000_000_000


@dataclass
class Sizes:
    small_runs: int
    runs: int
    samples: int


def seed(store: TrackingStore, experiment_id: str, first: int, count: int) -> float:
    """``count`` more runs (numbered from ``first``); returns the seconds it took."""
    started = time.monotonic()
    for i in range(first, first + count):
        run = store.create_run(experiment_id, name=f"run-{i}", start_time=START_MS + i)
        store.log_batch(
            run.id, [Metric("acc", (i % 1000) / 1000)], {"lr": str(i % 7)}, {"team": f"t{i % 5}"}
        )
    return time.monotonic() - started


def searches(experiment_id: str) -> dict[str, dict[str, Any]]:
    base = {"experiment_ids": [experiment_id], "max_results": 100}
    return {
        "newest page (MLflow's default)": base,
        "metrics.acc > 0.99": base | {"filter": "metrics.acc > 0.99"},
        "params.lr = '3', order by metrics.acc": base
        | {"filter": "params.lr = '3'", "order_by": ["metrics.acc DESC"]},
        "params.lr = '3' AND tags.team = 't1'": base
        | {"filter": "params.lr = '3' AND tags.team = 't1'"},
    }


def measure(client: httpx.Client, experiment_id: str, samples: int) -> dict[str, Any]:
    """p50/p95 of each search, and of the default search's second page (by its token)."""
    out: dict[str, Any] = {}

    def post(body: dict[str, Any]) -> Callable[[], httpx.Response]:
        return lambda: client.post(SEARCH, json=body)

    calls = {label: post(body) for label, body in searches(experiment_id).items()}
    first = client.post(SEARCH, json=searches(experiment_id)["newest page (MLflow's default)"])
    token = first.json().get("next_page_token")
    if token:
        second = {"experiment_ids": [experiment_id], "max_results": 100, "page_token": token}
        calls["its second page (token)"] = post(second)
    for label, call in calls.items():
        for _ in range(2):  # warm-up
            call()
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            answer = call()
            times.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                raise RuntimeError(f"{label}: {answer.status_code} {answer.text[:300]}")
        out[label] = percentiles(sorted(times)) | {"returned": len(answer.json().get("runs", []))}
    return out


def bench_store(store: Store, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    uri = store.fresh()
    engine = create_engine(uri)
    try:
        upgrade(engine)
        tracking = TrackingStore(engine)
        experiment_id = tracking.create_experiment(f"runs-{time.time_ns()}").id
        result: dict[str, Any] = {"version": store.version, "sizes": []}
        with server(uri, store.tmp) as url, httpx.Client(base_url=url, timeout=600) as client:
            made = 0
            for runs in (sizes.small_runs, sizes.runs):
                seconds = seed(tracking, experiment_id, made, runs - made)
                analyze(engine, RUN_TABLES)
                log(f"{store.kind}: {runs:,} runs ({runs - made:,} made in {seconds:.0f} s)")
                made = runs
                timed = measure(client, experiment_id, sizes.samples)
                for label, p in timed.items():
                    log(f"{store.kind}: {runs:,} runs: {label}: p50 {p['p50']:.1f} ms")
                result["sizes"].append({"runs": runs, "seed_s": seconds, "searches": timed})
    finally:
        engine.dispose()
    return result


def print_table(results: dict[str, Any]) -> None:
    table = new_table("assay: MLflow SearchRuns as the runs grow", SMALL_LARGE_COLUMNS)
    for kind, store in results["stores"].items():
        if "skipped" in store:
            add_skipped(table, kind, reason=store["skipped"], reason_column=2)
            continue
        small, large = store["sizes"][0]["searches"], store["sizes"][-1]["searches"]
        for label, s in small.items():
            if label in large:
                table.add_row(kind, label, *small_vs_large(s, large[label]))
        table.add_section()
    console.print(table)
    sizes = results["sizes"]
    console.print(
        f"small = {sizes['small_runs']:,} runs, large = {sizes['runs']:,} runs in one"
        f" experiment, 100 per page; {load_average(results)}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--runs", type=int, help="the large experiment (default 20000)")
    parser.add_argument("--small-runs", type=int, help="the small one (default 1000)")
    parser.add_argument("--samples", type=int, help="timed requests per search (default 30)")
    add_run_options(parser, "mlflow_runs", quick_help="200 and 2,000 runs: a ~30 s smoke test")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes(
        small_runs=args.small_runs or (200 if args.quick else 1000),
        runs=args.runs or (2000 if args.quick else 20_000),
        samples=args.samples or (10 if args.quick else 30),
    )
    if not 0 < sizes.small_runs < sizes.runs:
        console.print("[red]need 0 < --small-runs < --runs[/]")
        return 2
    return run_benchmark(
        args,
        sizes.__dict__,
        lambda store: bench_store(store, sizes, console.log),
        print_table,
        name="mlflow_runs",
    )


if __name__ == "__main__":
    raise SystemExit(main())
