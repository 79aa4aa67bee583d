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
import contextlib
import datetime as dt
import json
import math
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from assay import Backend, StoreError, load_settings

# Wide enough for the table when the output is piped to a file or a CI log.
console = Console(width=None if sys.stdout.isatty() else 160)

DEFAULT_URIS = {
    "sqlite": "",  # a fresh file in a temporary directory
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/test",
}
ENV_URIS = {"postgresql": "ASSAY_BENCH_PG_URI", "mysql": "ASSAY_BENCH_MYSQL_URI"}
TABLES = ("job_attempts", "jobs", "job_locks", "leader_leases")  # children first
UNFINISHED = "('PENDING', 'RUNNING')"

# Targets from the issue (a 2-core machine): throughput from ONE worker process, and pickup
# latency percentiles in milliseconds.
THROUGHPUT_TARGET = {"sqlite": 1500.0, "postgresql": 1000.0}
PICKUP_TARGET = {"sqlite": {"p50": 10.0, "p95": 25.0}, "postgresql": {"p50": 5.0, "p95": 10.0}}


class Unreachable(Exception):
    """The store cannot be used; the bench skips it with this reason."""


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


# -- stores ------------------------------------------------------------------------------------


class Store:
    """One kind of store. ``fresh()`` gives the URI of an empty queue (schema applied by the
    first Backend that connects)."""

    def __init__(self, kind: str, base_uri: str, tmp: Path) -> None:
        self.kind = kind
        self.base_uri = base_uri
        self.tmp = tmp
        self.version = ""
        self.database: str | None = None
        self._admin: sa.Engine | None = None
        self._uri = ""
        self._count = 0

    def open(self) -> None:
        if self.kind == "sqlite":
            self.version = sqlite3.sqlite_version
            return
        try:
            self._admin = sa.create_engine(self.base_uri, isolation_level="AUTOCOMMIT")
            with self._admin.connect() as conn:
                self.version = str(conn.execute(sa.text("SELECT version()")).scalar_one())
                self.database = f"assay_bench_{os.getpid()}"
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {self.database}"))
                conn.execute(sa.text(f"CREATE DATABASE {self.database}"))
        except (sa.exc.DBAPIError, ImportError) as exc:
            self.database = None
            raise Unreachable(f"{self.kind} unreachable at {self.base_uri}: {exc}") from exc
        self._uri = sa.make_url(self.base_uri).set(database=self.database).render_as_string(False)

    def fresh(self) -> str:
        """An empty queue: a new SQLite file, or the bench database with its job tables
        truncated (the schema stays)."""
        self._count += 1
        if self.kind == "sqlite":
            return f"sqlite:///{self.tmp / f'bench-{self._count}.db'}"
        engine = sa.create_engine(self._uri)
        try:
            with engine.begin() as conn:
                existing = set(sa.inspect(conn).get_table_names())
                names = [t for t in TABLES if t in existing]
                if names and self.kind == "postgresql":
                    conn.execute(sa.text(f"TRUNCATE TABLE {', '.join(names)}"))
                elif names:  # MySQL truncates a referenced table only without the checks
                    conn.execute(sa.text("SET FOREIGN_KEY_CHECKS = 0"))
                    for name in names:
                        conn.execute(sa.text(f"TRUNCATE TABLE {name}"))
                    conn.execute(sa.text("SET FOREIGN_KEY_CHECKS = 1"))
        finally:
            engine.dispose()
        return self._uri

    def close(self) -> None:
        if self._admin is None:
            return
        if self.database is not None:
            force = " WITH (FORCE)" if self.kind == "postgresql" else ""
            with self._admin.connect() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {self.database}{force}"))
        self._admin.dispose()


def open_backend(uri: str) -> Backend:
    return Backend(load_settings(store_uri=uri, job_modules=["assay.examples"], maintenance=False))


def scalar_row(backend: Backend, sql: str, **params: Any) -> tuple[Any, ...]:
    with backend.engine.connect() as conn:
        return tuple(conn.execute(sa.text(sql), params).one())


def unfinished(backend: Backend) -> int:
    sql = f"SELECT count(*) FROM jobs WHERE status IN {UNFINISHED}"
    return int(scalar_row(backend, sql)[0])


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


def wait_drained(backend: Backend, workers: WorkerProcs, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while unfinished(backend):
        workers.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs still unfinished after {timeout_s:.0f}s")
        time.sleep(0.25)


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
    with open_backend(uri) as backend:
        for done in range(0, n, batch):
            backend.submit_many("noop", [{}] * min(batch, n - done))
        procs = WorkerProcs(uri, workers, concurrency, store.tmp)
        try:
            wait_drained(backend, procs, timeout_s=max(120.0, n / 50))
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
            start = time.perf_counter()
            for i in range(count):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                before = time.perf_counter()
                ids.append(backend.submit("noop").id)
                submit_ms.append((time.perf_counter() - before) * 1000)
            achieved = count / (time.perf_counter() - start)
            wait_drained(backend, procs, timeout_s=60)
        finally:
            procs.stop()
        query = sa.text(
            "SELECT created_at_ms, started_at_ms, finished_at_ms FROM jobs WHERE id IN :ids"
        ).bindparams(sa.bindparam("ids", expanding=True))
        rows: list[tuple[Any, ...]] = []
        with backend.engine.connect() as conn:
            for chunk in range(0, len(ids), 500):
                rows += [tuple(r) for r in conn.execute(query, {"ids": ids[chunk : chunk + 500]})]
    pickup = sorted(float(r[1] - r[0]) for r in rows)
    end_to_end = sorted(float(r[2] - r[0]) for r in rows)
    return {
        "jobs": len(rows),
        "target_rate": sizes.latency_rate,
        "achieved_rate": achieved,
        "pickup_ms": percentiles(pickup),
        "end_to_end_ms": percentiles(end_to_end),
        "submit_call_ms": percentiles(sorted(submit_ms)),
        "samples_ms": pickup,
    }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(q / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def percentiles(sorted_values: Sequence[float]) -> dict[str, float]:
    out = {f"p{q}": percentile(sorted_values, q) for q in (50, 95, 99)}
    out["max"] = sorted_values[-1] if sorted_values else math.nan
    out["mean"] = statistics.fmean(sorted_values) if sorted_values else math.nan
    return out


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
                    f" {run['span_s']:.2f}s, {run['succeeded']} succeeded)"
                )
    for r in range(sizes.repeat):
        run = measure_pickup(store, sizes)
        result["pickup"].append(run)
        p = run["pickup_ms"]
        log(
            f"{store.kind}: pickup #{r + 1}: p50 {p['p50']:.0f} p95 {p['p95']:.0f}"
            f" p99 {p['p99']:.0f} max {p['max']:.0f} ms"
            f" ({run['jobs']} jobs at {run['achieved_rate']:.1f}/s)"
        )
    result["summary"] = summarize(store.kind, result)
    return result


def _spread(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    if len(values) < 2:
        return ""
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def summarize(kind: str, result: dict[str, Any]) -> list[dict[str, Any]]:
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

    by_config: dict[tuple[int, int], list[float]] = {}
    for run in result["throughput"]:
        by_config.setdefault((run["workers"], run["concurrency"]), []).append(run["jobs_per_s"])
    for workers in sorted({w for w, _ in by_config}):
        configs = {c: v for (w, c), v in by_config.items() if w == workers}
        best = max(configs, key=lambda c: statistics.median(configs[c]))
        tried = ", ".join(f"c={c}: {statistics.median(v):.0f}" for c, v in sorted(configs.items()))
        add(
            f"throughput: {workers} worker process{'es' if workers > 1 else ''}",
            configs[best],
            "jobs/s",
            THROUGHPUT_TARGET.get(kind) if workers == 1 else None,
            note=f"best concurrency {best} ({tried})",
        )

    pooled = sorted(s for run in result["pickup"] for s in run["samples_ms"])
    targets = PICKUP_TARGET.get(kind, {})
    per_run = [run["pickup_ms"] for run in result["pickup"]]
    rate = statistics.median(run["achieved_rate"] for run in result["pickup"])
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
                "note": f"{len(pooled)} jobs at {rate:.0f}/s (all runs pooled)",
            }
        )
    return rows


# -- report ------------------------------------------------------------------------------------


def machine_info(stores: dict[str, Store]) -> dict[str, Any]:
    versions = {kind: s.version for kind, s in stores.items()}
    commit = ""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": versions.get("postgresql", ""),
        "mysql": versions.get("mysql", ""),
        "git_commit": commit,
    }


def print_table(results: dict[str, Any]) -> None:
    table = Table(title="assay jobs benchmark")
    for col, justify in [
        ("store", "left"),
        ("metric", "left"),
        ("value", "right"),
        ("range", "right"),
        ("target", "right"),
        ("result", "center"),
        ("note", "left"),
    ]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for kind, store in results["stores"].items():
        if "skipped" in store:
            table.add_row(kind, "[yellow]skipped[/]", "", "", "", "", store["skipped"])
            continue
        for row in store["summary"]:
            target = "" if row["target"] is None else f"{row['target_op']} {row['target']:g}"
            verdict = {None: "", True: "[green]pass[/]", False: "[red]FAIL[/]"}[row["passed"]]
            table.add_row(
                kind,
                row["metric"],
                f"{row['value']:.0f} {row['unit']}",
                row["range"],
                target,
                verdict,
                row["note"],
            )
        table.add_section()
    console.print(table)
    info = results["machine"]
    load = results["load_average"]
    console.print(
        f"{info['nproc']} CPUs, Python {info['python']}, SQLite {info['sqlite']},"
        f" load average {load['before'][0]:.2f} before / {load['after'][0]:.2f} after"
    )


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="sqlite,postgresql", help="sqlite,postgresql,mysql")
    parser.add_argument("--jobs", type=int, help="jobs per throughput run (default 20000)")
    parser.add_argument("--concurrency", help="worker concurrencies to try (default 16,32,64)")
    parser.add_argument("--workers", help="worker process counts (default 1,2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every measurement")
    parser.add_argument("--latency-seconds", type=float, help="pickup test length (default 10)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a < 60 s smoke test")
    parser.add_argument("--out", type=Path, default=Path("bench/results/jobs.json"))
    parser.add_argument("--pg-uri", default=os.environ.get(ENV_URIS["postgresql"]))
    parser.add_argument("--mysql-uri", default=os.environ.get(ENV_URIS["mysql"]))
    return parser.parse_args(argv)


def _ints(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",")) if text else default


def sizes_from(args: argparse.Namespace) -> Sizes:
    if args.quick:
        return Sizes(
            single=200,
            batched=2000,
            batch=500,
            jobs=args.jobs or 2000,
            concurrencies=_ints(args.concurrency, (32,)),
            workers=_ints(args.workers, (1, 2)),
            latency_rate=50.0,
            latency_s=args.latency_seconds or 2.0,
            latency_concurrency=32,
            repeat=args.repeat,
        )
    return Sizes(
        single=2000,
        batched=20000,
        batch=500,
        jobs=args.jobs or 20000,
        concurrencies=_ints(args.concurrency, (16, 32, 64)),
        workers=_ints(args.workers, (1, 2)),
        latency_rate=50.0,
        latency_s=args.latency_seconds or 10.0,
        latency_concurrency=32,
        repeat=args.repeat,
    )


@contextlib.contextmanager
def opened(kind: str, uri: str, tmp: Path) -> Iterator[Store]:
    store = Store(kind, uri, tmp)
    try:
        store.open()
        yield store
    finally:
        store.close()


def run_benchmark(
    args: argparse.Namespace,
    sizes: dict[str, Any],
    bench_store: Callable[[Store], dict[str, Any]],
    print_table: Callable[[dict[str, Any]], None],
    *,
    name: str,
    machine: Callable[[dict[str, Store]], dict[str, Any]] = machine_info,
) -> int:
    """What every benchmark's ``main`` does once its options are checked: run ``bench_store``
    on each store of ``--stores`` (a new temp dir each; a store that cannot be reached is
    skipped, and said so), then print the table and write the JSON, with the load average
    before and after and the machine. Returns the exit code."""
    kinds = [k.strip() for k in args.stores.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in DEFAULT_URIS]
    if unknown:
        console.print(f"[red]unknown store(s): {', '.join(unknown)}[/]")
        return 2
    uris = dict(DEFAULT_URIS)
    uris["postgresql"] = args.pg_uri or uris["postgresql"]
    uris["mysql"] = args.mysql_uri or uris["mysql"]

    started = time.monotonic()
    results: dict[str, Any] = {
        "sizes": sizes,
        "load_average": {"before": os.getloadavg()},
        "stores": {},
    }
    seen: dict[str, Store] = {}
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix=f"assay-bench-{name}-{kind}-") as tmp:
            try:
                with opened(kind, uris[kind], Path(tmp)) as store:
                    seen[kind] = store
                    results["stores"][kind] = bench_store(store)
            except (Unreachable, StoreError) as exc:
                reason = str(exc).splitlines()[0]
                console.print(f"[yellow]skipping {kind}: {reason}[/]")
                results["stores"][kind] = {"skipped": reason}
    results["load_average"]["after"] = os.getloadavg()
    results["machine"] = machine(seen)
    results["elapsed_s"] = time.monotonic() - started
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    console.print(f"wrote {args.out} in {results['elapsed_s']:.0f}s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    return run_benchmark(
        args,
        sizes.__dict__,
        lambda store: bench_store(store, sizes, console.log),
        print_table,
        name="jobs",
    )


if __name__ == "__main__":
    sys.exit(main())
