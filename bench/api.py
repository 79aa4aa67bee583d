"""REST API benchmark: submit rate over HTTP, and get/search latency as the jobs table grows.

Run it from the repository root::

    .venv/bin/python bench/api.py [--stores sqlite,postgresql] [--rows 100000] [--quick]
                                  [--out bench/results/api.json]

A real ``assay server`` (uvicorn, ``--workers 0``: nothing runs the jobs) serves each phase on a
fresh store. Submits are ``POST /api/v1/jobs`` from 1 and from 8 concurrent clients (threads,
one keep-alive ``httpx.Client`` each). Reads are timed at the small size, then the table is
grown directly through the store (``Backend.submit_many``) to the large size and timed again:
with the indexes doing their job the two columns match. See bench/README.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa

from assay import Backend
from assay.db.tables import jobs as jobs_table
from common import (
    SMALL_LARGE_COLUMNS,
    Store,
    add_run_options,
    add_skipped,
    console,
    ints,
    load_average,
    new_parser,
    new_table,
    open_backend,
    percentiles,
    run_benchmark,
    run_together,
    server,
    small_vs_large,
)

API = "/api/v1/jobs"
# The seeded table: names and final statuses in these proportions (weights), so that filters
# select a common, a rarer and a very rare slice of the rows.
NAMES = {"noop": 40, "add": 30, "count_to": 20, "flaky": 10}
STATUSES = {"SUCCEEDED": 85, "FAILED": 9, "CANCELED": 4, "PENDING": 2}
RARE_RUNNING = 10  # RUNNING rows at any size: a filter that matches almost nothing
PAGE = 100


@dataclass(frozen=True)
class Sizes:
    submits: int
    clients: tuple[int, ...]
    small_rows: int
    rows: int
    samples: int
    seed_batch: int


# -- submits -----------------------------------------------------------------------------------


def measure_submits(url: str, total: int, clients: int) -> dict[str, Any]:
    """``total`` POSTs split over ``clients`` threads started together; rate over the wall."""
    per_client = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []

    def run(index: int, ready: threading.Barrier) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(5):  # warm up the connection
                client.post(API, json={"name": "noop"})
            ready.wait()
            for n in range(per_client[index]):
                start = time.perf_counter()
                answer = client.post(API, json={"name": "add", "params": {"a": n, "b": index}})
                latencies[index].append((time.perf_counter() - start) * 1000)
                if answer.status_code != 201:
                    errors.append(f"{answer.status_code} {answer.text[:200]}")

    wall_s = run_together(clients, run)
    if errors:
        raise RuntimeError(f"{len(errors)} submits failed, first: {errors[0]}")
    pooled = sorted(x for per in latencies for x in per)
    return {
        "clients": clients,
        "requests": total,
        "wall_s": wall_s,
        "requests_per_s": total / wall_s,
        "latency_ms": percentiles(pooled),
    }


# -- seeding -----------------------------------------------------------------------------------


def _weighted(weights: dict[str, int], n: int, rng: random.Random) -> list[str]:
    return rng.choices(list(weights), weights=list(weights.values()), k=n)


def seed(backend: Backend, count: int, batch: int, rng: random.Random) -> list[str]:
    """Insert ``count`` jobs through the store, then give them their final statuses."""
    ids: list[str] = []
    params: dict[str, dict[str, Any]] = {
        "noop": {},
        "add": {"a": 1, "b": 2},
        "count_to": {"n": 3},
        "flaky": {},
    }
    for done in range(0, count, batch):
        names = _weighted(NAMES, min(batch, count - done), rng)
        for name in NAMES:
            n = names.count(name)
            if n:
                ids += [j.id for j in backend.submit_many(name, [params[name]] * n)]
    statuses = _weighted(STATUSES, len(ids), rng)
    with backend.engine.begin() as conn:
        for status in STATUSES:
            if status == "PENDING":
                continue
            chosen = [i for i, s in zip(ids, statuses, strict=True) if s == status]
            for start in range(0, len(chosen), 1000):
                conn.execute(
                    jobs_table.update()
                    .where(jobs_table.c.id.in_(chosen[start : start + 1000]))
                    .values(
                        status=status,
                        attempt=1,
                        started_at_ms=jobs_table.c.created_at_ms + 5,
                        finished_at_ms=jobs_table.c.created_at_ms + 10,
                        result="3" if status == "SUCCEEDED" else None,
                        error=None if status == "SUCCEEDED" else "bench: seeded",
                    )
                )
    return ids


def mark_running(backend: Backend, ids: Sequence[str]) -> None:
    with backend.engine.begin() as conn:
        conn.execute(
            jobs_table.update()
            .where(jobs_table.c.id.in_(list(ids)))
            .values(status="RUNNING", attempt=1, worker_id="bench", started_at_ms=1)
        )


def analyze(backend: Backend) -> None:
    """Fresh planner statistics, as autovacuum / a real deployment would have them."""
    kind = backend.engine.dialect.name
    statement = {"postgresql": "ANALYZE jobs", "sqlite": "ANALYZE"}.get(kind, "ANALYZE TABLE jobs")
    with backend.engine.begin() as conn:
        conn.execute(sa.text(statement))


# -- reads -------------------------------------------------------------------------------------


def deep_token(client: httpx.Client, rows: int) -> str:
    """The page token about half way down the table (found by paging, as a client would)."""
    token: str | None = None
    seen = 0
    while seen < rows // 2:
        query: dict[str, Any] = {"limit": 1000}
        if token:
            query["page_token"] = token
        answer = client.get(API, params=query)
        if answer.status_code != 200:
            raise RuntimeError(f"paging: {answer.status_code} {answer.text[:300]}")
        page = answer.json()
        seen += len(page["jobs"])
        token = page["next_page_token"]
        if token is None:
            break
    assert token is not None, "the table has fewer rows than expected"
    return token


def measure_reads(url: str, ids: Sequence[str], rows: int, samples: int) -> dict[str, Any]:
    rng = random.Random(rows)
    out: dict[str, Any] = {"rows": rows}
    with httpx.Client(base_url=url, timeout=30) as client:
        token = deep_token(client, rows)
        queries: dict[str, Callable[[], httpx.Response]] = {
            "get by id": lambda: client.get(f"{API}/{rng.choice(ids)}"),
            "search: first page": lambda: client.get(API, params={"limit": PAGE}),
            "search: name=count_to (20%)": lambda: client.get(
                API, params={"name": "count_to", "limit": PAGE}
            ),
            "search: status=FAILED (9%)": lambda: client.get(
                API, params={"status": "FAILED", "limit": PAGE}
            ),
            f"search: status=RUNNING ({RARE_RUNNING} rows)": lambda: client.get(
                API, params={"status": "RUNNING", "limit": PAGE}
            ),
            "search: deep page (page_token at 50%)": lambda: client.get(
                API, params={"limit": PAGE, "page_token": token}
            ),
        }
        for label, call in queries.items():
            for _ in range(5):
                call()  # warm up caches and the connection
            times: list[float] = []
            for _ in range(samples):
                start = time.perf_counter()
                answer = call()
                times.append((time.perf_counter() - start) * 1000)
                if answer.status_code != 200:
                    raise RuntimeError(f"{label}: {answer.status_code} {answer.text[:200]}")
            out[label] = percentiles(sorted(times))
    return out


# -- one store ---------------------------------------------------------------------------------


def bench_store(store: Store, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    result: dict[str, Any] = {"version": store.version, "submit": [], "reads": []}
    with server(store.fresh(), store.tmp) as url:
        for clients in sizes.clients:
            run = measure_submits(url, sizes.submits, clients)
            result["submit"].append(run)
            lat = run["latency_ms"]
            log(
                f"{store.kind}: submit, {clients} client(s): {run['requests_per_s']:.0f} req/s"
                f" (p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms)"
            )
    uri = store.fresh()
    rng = random.Random(42)
    with open_backend(uri) as backend:
        ids = seed(backend, sizes.small_rows - RARE_RUNNING, sizes.seed_batch, rng)
        running = seed(backend, RARE_RUNNING, RARE_RUNNING, rng)
        mark_running(backend, running)
        analyze(backend)
        with server(uri, store.tmp) as url:
            for rows in (sizes.small_rows, sizes.rows):
                if rows > sizes.small_rows:
                    started = time.perf_counter()
                    ids += seed(backend, rows - sizes.small_rows, sizes.seed_batch, rng)
                    analyze(backend)
                    log(f"{store.kind}: seeded {rows} rows in {time.perf_counter() - started:.0f}s")
                reads = measure_reads(url, ids, rows, sizes.samples)
                result["reads"].append(reads)
                for label, p in reads.items():
                    if label != "rows":
                        log(f"{store.kind}: {rows} rows: {label}: p50 {p['p50']:.1f} ms")
    return result


# -- report ------------------------------------------------------------------------------------


def print_table(results: dict[str, Any]) -> None:
    table = new_table("assay REST API benchmark", SMALL_LARGE_COLUMNS)
    for kind, store in results["stores"].items():
        if "skipped" in store:
            add_skipped(table, kind, reason=store["skipped"], reason_column=2)
            continue
        for run in store["submit"]:
            lat = run["latency_ms"]
            table.add_row(
                kind,
                f"submit, {run['clients']} client(s): [bold]{run['requests_per_s']:.0f} req/s[/]",
                "",
                f"{lat['p50']:.1f} / {lat['p95']:.1f} ms",
                "",
            )
        small, large = store["reads"][0], store["reads"][-1]
        for label in small:
            if label == "rows":
                continue
            table.add_row(kind, label, *small_vs_large(small[label], large[label]))
        table.add_section()
    console.print(table)
    small_rows = results["sizes"]["small_rows"]
    rows = results["sizes"]["rows"]
    console.print(f"small = {small_rows:,} rows, large = {rows:,} rows; {load_average(results)}")


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--submits", type=int, help="POSTs per client count (default 2000)")
    parser.add_argument("--clients", default="1,8", help="concurrent clients to try")
    parser.add_argument("--rows", type=int, help="the large table (default 100000)")
    parser.add_argument("--small-rows", type=int, help="the small table (default 1000)")
    parser.add_argument("--samples", type=int, help="timed requests per read query (default 200)")
    add_run_options(parser, "api", quick_help="small sizes: a < 60 s smoke test")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    quick = args.quick
    return Sizes(
        submits=args.submits or (200 if quick else 2000),
        clients=ints(args.clients),
        small_rows=args.small_rows or 1000,
        rows=args.rows or (10_000 if quick else 100_000),
        samples=args.samples or (30 if quick else 200),
        seed_batch=5000,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    if sizes.rows <= sizes.small_rows or sizes.small_rows <= RARE_RUNNING:
        console.print(f"[red]need {RARE_RUNNING} < --small-rows < --rows[/]")
        return 2
    return run_benchmark(
        args,
        sizes.__dict__,
        lambda store: bench_store(store, sizes, console.log),
        print_table,
        name="api",
    )


if __name__ == "__main__":
    sys.exit(main())
