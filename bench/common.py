"""What the benchmarks in bench/ share: the stores, the ``assay`` server and backend, percentiles,
the machine, the command line, the report table and the ``main`` harness (``run_benchmark``)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from rich.console import Console, JustifyMethod
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
JOB_TABLES = ("job_attempts", "jobs", "job_locks", "leader_leases")  # children first
UNFINISHED = "('PENDING', 'RUNNING')"
SKIPPED = "[yellow]skipped[/]"


class Unreachable(Exception):
    """The store cannot be used; the bench skips it with this reason."""


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
                names = [t for t in JOB_TABLES if t in existing]
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


@contextlib.contextmanager
def opened(kind: str, uri: str, tmp: Path) -> Iterator[Store]:
    store = Store(kind, uri, tmp)
    try:
        store.open()
        yield store
    finally:
        store.close()


# -- jobs --------------------------------------------------------------------------------------


def open_backend(uri: str, jobs_module: str = "assay.examples") -> Backend:
    return Backend(load_settings(store_uri=uri, job_modules=[jobs_module], maintenance=False))


def unfinished(backend: Backend) -> int:
    with backend.engine.connect() as conn:
        sql = f"SELECT count(*) FROM jobs WHERE status IN {UNFINISHED}"
        return int(conn.execute(sa.text(sql)).scalar_one())


def wait_drained(
    backend: Backend, check_alive: Callable[[], None], timeout_s: float, poll_s: float
) -> None:
    """Wait until no job is pending or running; ``check_alive`` raises if the workers died."""
    deadline = time.monotonic() + timeout_s
    while unfinished(backend):
        check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs still unfinished after {timeout_s:.0f}s")
        time.sleep(poll_s)


def job_rows(backend: Backend, ids: Sequence[str], columns: str) -> list[tuple[Any, ...]]:
    """``columns`` (SQL) of the given jobs, asked 500 ids at a time."""
    query = sa.text(f"SELECT {columns} FROM jobs WHERE id IN :ids").bindparams(
        sa.bindparam("ids", expanding=True)
    )
    rows: list[tuple[Any, ...]] = []
    with backend.engine.connect() as conn:
        for chunk in range(0, len(ids), 500):
            rows += [tuple(r) for r in conn.execute(query, {"ids": list(ids[chunk : chunk + 500])})]
    return rows


# -- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def server(
    uri: str,
    log_dir: Path,
    *options: str,
    env: dict[str, str] | None = None,
    processes: int = 1,
) -> Iterator[str]:
    """A real ``assay server`` on a free port, with extra command-line ``options`` and
    environment, serving with ``processes`` processes; yields its base URL once /health
    answers. The default (no options) is an API-only replica: ``--workers 0``, no leader
    services, the example jobs."""
    port = free_port()
    if not options:
        options = ("--workers", "0", "--jobs-module", "assay.examples")
        env = {"ASSAY_MAINTENANCE": "false", **(env or {})}
    options = (*options, "--processes", str(processes))
    environ = dict(os.environ, **(env or {}))
    environ.pop("ASSAY_STORE_URI", None)
    cmd = [sys.executable, "-m", "assay", "server", "--store", uri, "--port", str(port)]
    cmd += [*options, "--log-level", "WARNING"]
    log = log_dir / f"server-{time.time_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environ)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"server exited with {proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server not healthy within 60 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- numbers -----------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(q / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def percentiles(
    sorted_values: Sequence[float], qs: Sequence[int] = (50, 95, 99)
) -> dict[str, float]:
    """``p<q>`` for each of ``qs``, then ``max`` and ``mean``, of already sorted values."""
    out = {f"p{q}": percentile(sorted_values, q) for q in qs}
    out["max"] = sorted_values[-1] if sorted_values else math.nan
    out["mean"] = statistics.fmean(sorted_values) if sorted_values else math.nan
    return out


def run_together(count: int, run: Callable[[int, threading.Barrier], None]) -> float:
    """Run ``run(index, ready)`` in ``count`` threads; each calls ``ready.wait()`` once warmed
    up. Returns the seconds from when all are ready until the last one is done."""
    ready = threading.Barrier(count + 1)
    threads = [threading.Thread(target=run, args=(i, ready)) for i in range(count)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


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


# -- command line ------------------------------------------------------------------------------


def names(text: str) -> list[str]:
    """The items of a comma-separated option, blanks dropped."""
    return [x.strip() for x in text.split(",") if x.strip()]


def ints(text: str) -> tuple[int, ...]:
    """The integers of a comma-separated option."""
    return tuple(int(x) for x in text.split(","))


def new_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc``, with ``--stores``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--stores", default="sqlite,postgresql", help="sqlite,postgresql,mysql")
    return parser


def add_run_options(parser: argparse.ArgumentParser, name: str, quick_help: str) -> None:
    """The options every benchmark ends with: ``--quick``, ``--out`` (default
    ``bench/results/<name>.json``), ``--pg-uri`` and ``--mysql-uri``."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=Path(f"bench/results/{name}.json"))
    parser.add_argument("--pg-uri", default=os.environ.get(ENV_URIS["postgresql"]))
    parser.add_argument("--mysql-uri", default=os.environ.get(ENV_URIS["mysql"]))


def analyze(engine: sa.Engine, tables: Sequence[str]) -> None:
    """Fresh planner statistics, as a real deployment has them: autovacuum's auto-analyze on
    PostgreSQL (off on some machines: then nothing else would), InnoDB's own on MySQL. SQLite
    keeps none unless someone runs ANALYZE, and assay never does, so it is left alone (the
    server's open connections would also keep statistics of a small store while it grows: see
    bench/README.md)."""
    kind = engine.dialect.name
    if kind == "sqlite":
        return
    with engine.begin() as conn:
        if kind == "postgresql":
            conn.execute(sa.text("ANALYZE"))
        else:
            for name in tables:
                conn.execute(sa.text(f"ANALYZE TABLE {name}"))


# -- report ------------------------------------------------------------------------------------


# The columns of a table that compares a small store with a large one (api.py, ingest.py).
SMALL_LARGE_COLUMNS: dict[str, JustifyMethod] = {
    "store": "left",
    "metric": "left",
    "small p50 / p95": "right",
    "large p50 / p95": "right",
    "large / small (p50)": "right",
}


def new_table(title: str, columns: Mapping[str, JustifyMethod]) -> Table:
    """A rich table with these columns (name: justification)."""
    table = Table(title=title)
    for name, justify in columns.items():
        table.add_column(name, justify=justify)
    return table


def add_skipped(table: Table, *lead: str, reason: str, reason_column: int = -1) -> None:
    """A row for what was skipped: the ``lead`` cells, "skipped", and ``reason`` in column
    ``reason_column`` (the last by default)."""
    cells = [*lead, SKIPPED] + [""] * (len(table.columns) - len(lead) - 1)
    cells[reason_column] = reason
    table.add_row(*cells)


def small_vs_large(small: dict[str, float], large: dict[str, float]) -> list[str]:
    """The last three cells of a SMALL_LARGE_COLUMNS row, from two ``percentiles`` dicts."""
    return [
        f"{small['p50']:.1f} / {small['p95']:.1f} ms",
        f"{large['p50']:.1f} / {large['p95']:.1f} ms",
        f"{large['p50'] / small['p50']:.2f}x",
    ]


def verdict(passed: bool | None) -> str:
    """The result cell: pass, FAIL, or empty where there is no target."""
    return {None: "", True: "[green]pass[/]", False: "[red]FAIL[/]"}[passed]


def load_average(results: dict[str, Any]) -> str:
    load = results["load_average"]
    return f"load average {load['before'][0]:.2f} before / {load['after'][0]:.2f} after"


# -- main --------------------------------------------------------------------------------------


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
    kinds = names(args.stores)
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
