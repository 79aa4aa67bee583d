"""Job-system benchmark: enqueue rate, worker throughput and pickup latency, per store.

Run it from the repository root::

    .venv/bin/python bench/jobs.py [--stores sqlite,postgresql] [--jobs N] [--quick]
                                   [--repeat R] [--out bench/results/jobs.json]

Every number about the worker comes from the jobs table (database clock, milliseconds), so the
start-up of worker processes and the bench's own polling are never part of a measurement.
See bench/README.md for what each metric means.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from assay import Backend
from common import (
    Store,
    add_run_options,
    add_skipped,
    console,
    ints,
    job_rows,
    load_average,
    new_parser,
    new_table,
    open_backend,
    percentile,
    percentiles,
    run_benchmark,
    verdict,
    wait_drained,
)

# Targets from the issues (a 2-core machine): throughput by number of worker processes, and
# pickup latency percentiles in milliseconds.
THROUGHPUT_TARGET = {"sqlite": {1: 1500.0}, "postgresql": {1: 5000.0, 2: 10000.0}}
PICKUP_TARGET = {"sqlite": {"p50": 1.0, "p95": 25.0}, "postgresql": {"p50": 1.0, "p95": 10.0}}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sizes:
    single: int
    batched: int
    batch: int
    jobs: int
    concurrencies: tuple[int, ...]
    workers: tuple[int, ...]
    latency_rate: float
    latency_s: float
    latency_concurrency: int
    repeat: int
    notify_url: str | None


def scalar_row(backend: Backend, sql: str, **params: Any) -> tuple[Any, ...]:
    with backend.engine.connect() as conn:
        return tuple(conn.execute(sa.text(sql), params).one())


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None if it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def server_pids(backend: Backend) -> set[int]:
    """PostgreSQL backends connected to the bench database (their CPU is the database's
    share of a run); empty for other stores."""
    if backend.store.dialect != "postgresql":
        return set()
    with backend.engine.connect() as conn:
        sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        return {int(pid) for pid in conn.execute(sa.text(sql)).scalars()}


def finished_count(backend: Backend) -> int:
    with backend.engine.connect() as conn:
        sql = "SELECT count(*) FROM jobs WHERE status NOT IN ('PENDING', 'RUNNING')"
        return int(conn.execute(sa.text(sql)).scalar_one())


@dataclass
class CpuSnapshot:
    """CPU seconds used so far by the worker processes and the database's backends."""

    finished: int
    workers: float | None
    database: dict[int, float]

    @classmethod
    def take(cls, backend: Backend, procs: WorkerProcs, bench_pids: set[int]) -> CpuSnapshot:
        workers = [cpu_seconds(p.pid) for p in procs.procs]
        database = {
            pid: cpu
            for pid in server_pids(backend) - bench_pids
            if (cpu := cpu_seconds(pid)) is not None
        }
        return cls(
            finished=finished_count(backend),
            workers=None if None in workers else sum(w or 0.0 for w in workers),
            database=database,
        )

    def per_job_us(self, later: CpuSnapshot) -> dict[str, float | None]:
        """CPU microseconds per job finished between this snapshot and ``later``."""
        jobs = later.finished - self.finished
        if jobs <= 0:
            return {"workers": None, "database": None}
        workers = None
        if self.workers is not None and later.workers is not None:
            workers = (later.workers - self.workers) / jobs * 1e6
        database = None
        if self.database:
            used = sum(later.database.get(pid, cpu) - cpu for pid, cpu in self.database.items())
            database = used / jobs * 1e6
        return {"workers": workers, "database": database}


# -- worker processes --------------------------------------------------------------------------


class WorkerProcs:
    """Real ``assay worker`` processes (inline executor, no maintenance)."""

    def __init__(self, uri: str, count: int, concurrency: int, log_dir: Path) -> None:
        env = dict(os.environ, ASSAY_MAINTENANCE="false", ASSAY_DEFAULT_EXECUTOR="inline")
        env.pop("ASSAY_STORE_URI", None)
        cmd = [
            sys.executable,
            "-m",
            "assay",
            "worker",
            "--store",
            uri,
            "--jobs-module",
            "assay.examples",
            "--concurrency",
            str(concurrency),
            "--log-level",
            "WARNING",
        ]
        self.logs: list[Path] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        for _ in range(count):
            log = log_dir / f"worker-{time.time_ns()}.log"
            self.logs.append(log)
            with log.open("wb") as out:
                self.procs.append(
                    subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
                )

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"worker exited early with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- measurements ------------------------------------------------------------------------------


def measure_enqueue(store: Store, sizes: Sizes) -> dict[str, Any]:
    with open_backend(store.fresh()) as backend:
        backend.submit("noop")  # warm up: connection pool, statement cache
        start = time.perf_counter()
        for _ in range(sizes.single):
            backend.submit("noop")
        single_s = time.perf_counter() - start
        start = time.perf_counter()
        for done in range(0, sizes.batched, sizes.batch):
            backend.submit_many("noop", [{}] * min(sizes.batch, sizes.batched - done))
        batched_s = time.perf_counter() - start
    return {
        "single_jobs": sizes.single,
        "single_s": single_s,
        "single_jobs_per_s": sizes.single / single_s,
        "batched_jobs": sizes.batched,
        "batch_size": sizes.batch,
        "batched_s": batched_s,
        "batched_jobs_per_s": sizes.batched / batched_s,
    }


def measure_throughput(
    store: Store, n: int, workers: int, concurrency: int, batch: int
) -> dict[str, Any]:
    uri = store.fresh()
    load = os.getloadavg()[0]
    with open_backend(uri) as backend:
        for done in range(0, n, batch):
            backend.submit_many("noop", [{}] * min(batch, n - done))
        bench_pids = server_pids(backend)
        procs = WorkerProcs(uri, workers, concurrency, store.tmp)
        try:
            # CPU is counted from the first finished job (after the workers' start-up) to the
            # last, so it is the cost of the jobs alone, whatever else shares the machine.
            deadline = time.monotonic() + 120
            while not finished_count(backend):
                procs.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError("no job finished within 120 s")
                time.sleep(0.005)
            first = CpuSnapshot.take(backend, procs, bench_pids)
            wait_drained(backend, procs.check_alive, timeout_s=max(120.0, n / 50), poll_s=0.25)
            cpu = first.per_job_us(CpuSnapshot.take(backend, procs, bench_pids))
        finally:
            procs.stop()
        total = scalar_row(
            backend,
            "SELECT count(*), sum(CASE WHEN status = 'SUCCEEDED' THEN 1 ELSE 0 END),"
            " min(started_at_ms), max(finished_at_ms) FROM jobs",
        )
        with backend.engine.connect() as conn:
            per_worker = conn.execute(
                sa.text(
                    "SELECT worker_id, count(*), min(started_at_ms), max(finished_at_ms)"
                    " FROM jobs GROUP BY worker_id ORDER BY 3"
                )
            ).all()
    count, succeeded, first_start, last_finish = (int(v or 0) for v in total)
    span_ms = max(last_finish - first_start, 1)
    starts = [int(r[2]) for r in per_worker]
    return {
        "jobs": count,
        "succeeded": succeeded,
        "workers": workers,
        "concurrency": concurrency,
        "span_s": span_ms / 1000,
        "jobs_per_s": count / span_ms * 1000,
        "cpu_us_per_job": cpu,
        "load_average": load,
        "worker_start_skew_s": (max(starts) - min(starts)) / 1000 if starts else 0.0,
        "per_worker": [
            {"jobs": int(r[1]), "span_s": (int(r[3]) - int(r[2])) / 1000} for r in per_worker
        ],
    }


def measure_pickup(store: Store, sizes: Sizes) -> dict[str, Any]:
    uri = store.fresh()
    count = max(int(sizes.latency_rate * sizes.latency_s), 1)
    interval = 1 / sizes.latency_rate
    with open_backend(uri) as backend:
        procs = WorkerProcs(uri, 1, sizes.latency_concurrency, store.tmp)
        try:
            # Warm up: wait until the worker runs jobs, then let it go idle.
            deadline = time.monotonic() + 60
            for _ in range(5):
                warm = backend.submit("noop")
                while not backend.get(warm.id).status.is_terminal:
                    procs.check_alive()
                    if time.monotonic() > deadline:
                        raise RuntimeError("worker did not start within 60 s")
                    time.sleep(0.05)
            time.sleep(0.5)
            ids: list[str] = []
            submit_ms: list[float] = []
            returned_ms: dict[str, float] = {}
            load = os.getloadavg()[0]
            start = time.perf_counter()
            for i in range(count):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                before = time.perf_counter()
                job_id = backend.submit("noop").id
                returned_ms[job_id] = time.time() * 1000
                ids.append(job_id)
                submit_ms.append((time.perf_counter() - before) * 1000)
            achieved = count / (time.perf_counter() - start)
            wait_drained(backend, procs.check_alive, timeout_s=60, poll_s=0.25)
        finally:
            procs.stop()
        rows = job_rows(backend, ids, "created_at_ms, started_at_ms, finished_at_ms, id")
    pickup = sorted(float(r[1] - r[0]) for r in rows)
    end_to_end = sorted(float(r[2] - r[0]) for r in rows)
    # The submit's transaction is part of the pickup (created_at is stamped by its INSERT, the
    # job can be claimed from its COMMIT on): from submit() returning to the claim is the
    # worker's part alone (the same clock on one machine; started_at has ms resolution).
    after_submit = sorted(float(r[1]) - returned_ms[r[3]] for r in rows)
    return {
        "jobs": len(rows),
        "target_rate": sizes.latency_rate,
        "achieved_rate": achieved,
        "load_average": load,
        "pickup_ms": percentiles(pickup),
        "end_to_end_ms": percentiles(end_to_end),
        "submit_call_ms": percentiles(sorted(submit_ms)),
        "submit_returned_to_claim_ms": percentiles(after_submit),
        "samples_ms": pickup,
    }


# -- one store ---------------------------------------------------------------------------------


def bench_store(store: Store, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    result: dict[str, Any] = {"version": store.version, "enqueue": [], "throughput": []}
    result["pickup"] = []
    for r in range(sizes.repeat):
        enq = measure_enqueue(store, sizes)
        result["enqueue"].append(enq)
        log(
            f"{store.kind}: enqueue #{r + 1}: single {enq['single_jobs_per_s']:.0f}/s,"
            f" batched {enq['batched_jobs_per_s']:.0f}/s"
        )
    for workers in sizes.workers:
        for concurrency in sizes.concurrencies:
            for r in range(sizes.repeat):
                run = measure_throughput(store, sizes.jobs, workers, concurrency, sizes.batch)
                result["throughput"].append(run)
                log(
                    f"{store.kind}: throughput #{r + 1}: {workers} worker(s) x {concurrency}:"
                    f" {run['jobs_per_s']:.0f} jobs/s ({run['jobs']} jobs in"
                    f" {run['span_s']:.2f}s, {run['succeeded']} succeeded;"
                    f" CPU per job {_cpu_note(run['cpu_us_per_job'])};"
                    f" load {run['load_average']:.1f})"
                )
    for r in range(sizes.repeat):
        run = measure_pickup(store, sizes)
        result["pickup"].append(run)
        p = run["pickup_ms"]
        after = run["submit_returned_to_claim_ms"]
        log(
            f"{store.kind}: pickup #{r + 1}: p50 {p['p50']:.0f} p95 {p['p95']:.0f}"
            f" p99 {p['p99']:.0f} max {p['max']:.0f} ms"
            f" ({run['jobs']} jobs at {run['achieved_rate']:.1f}/s;"
            f" submit call p50 {run['submit_call_ms']['p50']:.1f} ms, submit returned to claim"
            f" p50 {after['p50']:.1f} ms; load {run['load_average']:.1f})"
        )
    result["summary"] = summarize(store.kind, result, wakeups=sizes.notify_url is not None)
    return result


def _cpu_note(cpu: dict[str, float | None]) -> str:
    parts = [f"{who} {us:.0f} us" for who, us in cpu.items() if us is not None]
    return ", ".join(parts) or "n/a"


def _spread(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    if len(values) < 2:
        return ""
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def summarize(kind: str, result: dict[str, Any], *, wakeups: bool = False) -> list[dict[str, Any]]:
    """Rows of the report: median over repeats, with the min-max range when repeated."""
    rows: list[dict[str, Any]] = []

    def add(
        metric: str,
        values: Sequence[float],
        unit: str,
        target: float | None = None,
        higher_is_better: bool = True,
        note: str = "",
    ) -> None:
        value = statistics.median(values)
        passed = None
        if target is not None:
            passed = value >= target if higher_is_better else value <= target
        rows.append(
            {
                "metric": metric,
                "value": value,
                "unit": unit,
                "range": _spread(values),
                "target": target,
                "target_op": ">=" if higher_is_better else "<=",
                "passed": passed,
                "note": note,
            }
        )

    enqueue = result["enqueue"]
    add("enqueue: submit() one at a time", [e["single_jobs_per_s"] for e in enqueue], "jobs/s")
    batch = enqueue[0]["batch_size"]
    add(f"enqueue: submit_many() x{batch}", [e["batched_jobs_per_s"] for e in enqueue], "jobs/s")

    by_config: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for run in result["throughput"]:
        by_config.setdefault((run["workers"], run["concurrency"]), []).append(run)
    for workers in sorted({w for w, _ in by_config}):
        configs = {c: runs for (w, c), runs in by_config.items() if w == workers}
        rates = {c: [run["jobs_per_s"] for run in runs] for c, runs in configs.items()}
        best = max(rates, key=lambda c: statistics.median(rates[c]))
        tried = ", ".join(f"c={c}: {statistics.median(v):.0f}" for c, v in sorted(rates.items()))
        cpu = {
            who: statistics.median(us)
            for who in ("workers", "database")
            if (us := [u for run in configs[best] if (u := run["cpu_us_per_job"][who])])
        }
        load = statistics.median(run["load_average"] for run in configs[best])
        add(
            f"throughput: {workers} worker process{'es' if workers > 1 else ''}",
            rates[best],
            "jobs/s",
            THROUGHPUT_TARGET.get(kind, {}).get(workers),
            note=f"best concurrency {best} ({tried}); CPU per job {_cpu_note(cpu)};"
            f" load {load:.1f}",
        )

    pooled = sorted(s for run in result["pickup"] for s in run["samples_ms"])
    targets = PICKUP_TARGET.get(kind, {})
    per_run = [run["pickup_ms"] for run in result["pickup"]]
    rate = statistics.median(run["achieved_rate"] for run in result["pickup"])
    load = statistics.median(run["load_average"] for run in result["pickup"])
    submit = statistics.median(run["submit_call_ms"]["p50"] for run in result["pickup"])
    after = statistics.median(run["submit_returned_to_claim_ms"]["p50"] for run in result["pickup"])
    for q in ("p50", "p95", "p99", "max"):
        value = percentile(pooled, float(q[1:])) if q != "max" else pooled[-1]
        target = targets.get(q)
        rows.append(
            {
                "metric": f"pickup latency {q}",
                "value": value,
                "unit": "ms",
                "range": _spread([p[q] for p in per_run]),
                "target": target,
                "target_op": "<=",
                "passed": None if target is None else value <= target,
                "note": f"{len(pooled)} jobs at {rate:.0f}/s (all runs pooled)"
                + (", Redis wake-ups" if wakeups else "")
                + (
                    f"; submit() p50 {submit:.1f} ms, submit() returned to claim p50"
                    f" {after:.1f} ms; load {load:.1f}"
                    if q == "p50"
                    else ""
                ),
            }
        )
    return rows


# -- report ------------------------------------------------------------------------------------


def print_table(results: dict[str, Any]) -> None:
    table = new_table(
        "assay jobs benchmark",
        {
            "store": "left",
            "metric": "left",
            "value": "right",
            "range": "right",
            "target": "right",
            "result": "center",
            "note": "left",
        },
    )
    for kind, store in results["stores"].items():
        if "skipped" in store:
            add_skipped(table, kind, reason=store["skipped"])
            continue
        for row in store["summary"]:
            target = "" if row["target"] is None else f"{row['target_op']} {row['target']:g}"
            table.add_row(
                kind,
                row["metric"],
                f"{row['value']:.0f} {row['unit']}",
                row["range"],
                target,
                verdict(row["passed"]),
                row["note"],
            )
        table.add_section()
    console.print(table)
    info = results["machine"]
    console.print(
        f"{info['nproc']} CPUs, Python {info['python']}, SQLite {info['sqlite']},"
        f" {load_average(results)}"
    )


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--jobs", type=int, help="jobs per throughput run (default 20000)")
    parser.add_argument("--concurrency", help="worker concurrencies to try (default 32,64,128)")
    parser.add_argument("--workers", help="worker process counts (default 1,2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every measurement")
    parser.add_argument("--latency-seconds", type=float, help="pickup test length (default 10)")
    parser.add_argument(
        "--notify-url",
        help="Redis URL for pub/sub wake-ups (ASSAY_NOTIFY_URL) in the bench and its workers",
    )
    add_run_options(parser, "jobs", quick_help="small sizes: a < 60 s smoke test")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    quick = args.quick
    return Sizes(
        single=200 if quick else 2000,
        batched=2000 if quick else 20000,
        batch=500,
        jobs=args.jobs or (2000 if quick else 20000),
        concurrencies=ints(args.concurrency or ("64" if quick else "32,64,128")),
        workers=ints(args.workers or "1,2"),
        latency_rate=50.0,
        latency_s=args.latency_seconds or (2.0 if quick else 10.0),
        latency_concurrency=32,
        repeat=args.repeat,
        notify_url=args.notify_url,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    if sizes.notify_url:  # read by load_settings here and by the worker processes
        os.environ["ASSAY_NOTIFY_URL"] = sizes.notify_url
    return run_benchmark(
        args,
        sizes.__dict__,
        lambda store: bench_store(store, sizes, console.log),
        print_table,
        name="jobs",
    )


if __name__ == "__main__":
    sys.exit(main())
