"""MLflow client into assay vs into `mlflow server`: logging 10,000 metrics, side by side.

Run it from the repository root (needs ``pip install 'assay[mlflow]'``)::

    .venv/bin/python bench/mlflow_compat.py [--stores sqlite] [--metrics 10000] [--repeat 1]
                                            [--quick] [--out bench/results/mlflow_compat.json]

For each store kind, two servers on the same kind of store, one after the other: a real
``assay server`` (API only: ``--workers 0``, no leader services) and a real ``mlflow server``
(one uvicorn worker, its job runner off: ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``), each on
a fresh database. The same ``MlflowClient`` in this process then, against each:

1. ``log_metric``: N calls, one metric per call (one request each), as a training loop does;
2. ``log_batch``: N metrics in one call (the client sends requests of 1,000);
3. ``get_metric_history`` of the N points logged in 1, which are counted: every point must be
   there, on both servers.

Rates are metrics per second of wall clock in this process; per-call latency percentiles for
1. With ``--repeat`` each server gets R fresh runs and the table shows the median.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from common import (
    Store,
    add_run_options,
    add_skipped,
    console,
    free_port,
    load_average,
    new_parser,
    new_table,
    percentiles,
    run_benchmark,
    server,
)

TARGETS = ("assay", "mlflow")
HEALTH_TIMEOUT_S = 180.0


# -- the servers -------------------------------------------------------------------------------


@contextlib.contextmanager
def mlflow_server(backend_uri: str, tmp: Path) -> Iterator[str]:
    """A real ``mlflow server`` on a free port; yields its URL once /health answers. It runs
    in its own process group, which is ended as a whole (uvicorn runs as its child)."""
    port = free_port()
    env = dict(
        os.environ,
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
    )
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(tmp / "mlflow-artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = tmp / f"mlflow-server-{time.time_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy within {HEALTH_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def mlflow_database(store: Store, run: int) -> Iterator[str]:
    """A fresh, empty database for ``mlflow server`` of the store's kind (MLflow's tables
    would clash with assay's in one database)."""
    if store.kind == "sqlite":
        yield f"sqlite:///{store.tmp / f'mlflow-{run}.db'}"
        return
    admin = sa.create_engine(store.base_uri, isolation_level="AUTOCOMMIT")
    name = f"mlflow_bench_{os.getpid()}_{run}"
    force = " WITH (FORCE)" if store.kind == "postgresql" else ""
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        yield sa.make_url(store.base_uri).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
        admin.dispose()


@contextlib.contextmanager
def target_server(target: str, store: Store, run: int) -> Iterator[str]:
    if target == "assay":
        with server(store.fresh(), store.tmp) as url:
            yield url
        return
    with mlflow_database(store, run) as uri, mlflow_server(uri, store.tmp) as url:
        yield url


# -- one run -----------------------------------------------------------------------------------


def measure(url: str, count: int) -> dict[str, Any]:
    """The three measurements against one server, with the MLflow client."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=url)
    experiment_id = client.create_experiment(f"bench-{time.time_ns()}")
    run_id = client.create_run(experiment_id).info.run_id

    latencies: list[float] = []
    started = time.perf_counter()
    for step in range(count):
        begin = time.perf_counter()
        client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
        latencies.append((time.perf_counter() - begin) * 1000)
    single_s = time.perf_counter() - started

    now = int(time.time() * 1000)
    batch = [Metric("batch_loss", 1.0 / (i + 1), now, i) for i in range(count)]
    started = time.perf_counter()
    client.log_batch(run_id, metrics=batch)
    batch_s = time.perf_counter() - started

    started = time.perf_counter()
    history = client.get_metric_history(run_id, "loss")
    read_s = time.perf_counter() - started
    steps = sorted(m.step for m in history)
    if steps != list(range(count)):
        raise RuntimeError(f"{url}: {len(steps)} of {count} logged points read back")
    batched = client.get_metric_history(run_id, "batch_loss")
    if len(batched) != count:
        raise RuntimeError(f"{url}: {len(batched)} of {count} batched points read back")
    client.set_terminated(run_id)
    return {
        "log_metric": {
            "seconds": single_s,
            "metrics_per_s": count / single_s,
            "latency_ms": percentiles(sorted(latencies)),
        },
        "log_batch": {"seconds": batch_s, "metrics_per_s": count / batch_s},
        "get_metric_history": {"seconds": read_s, "points": len(history)},
    }


def bench_store(
    store: Store, count: int, repeat: int, log: Callable[[str], None]
) -> dict[str, Any]:
    result: dict[str, Any] = {"version": store.version}
    for target in TARGETS:
        runs = []
        for run in range(repeat):
            with target_server(target, store, run) as url:
                runs.append(measure(url, count))
            one = runs[-1]
            log(
                f"{store.kind} / {target}: log_metric {one['log_metric']['metrics_per_s']:.0f}/s, "
                f"log_batch {one['log_batch']['metrics_per_s']:.0f}/s, history "
                f"{one['get_metric_history']['seconds'] * 1000:.0f} ms"
            )
        result[target] = {"runs": runs, "median": _median(runs)}
    return result


def _median(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    def med(pick: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(pick(r) for r in runs)

    return {
        "log_metric_per_s": med(lambda r: r["log_metric"]["metrics_per_s"]),
        "log_metric_p50_ms": med(lambda r: r["log_metric"]["latency_ms"]["p50"]),
        "log_metric_p95_ms": med(lambda r: r["log_metric"]["latency_ms"]["p95"]),
        "log_batch_per_s": med(lambda r: r["log_batch"]["metrics_per_s"]),
        "history_ms": med(lambda r: r["get_metric_history"]["seconds"] * 1000),
    }


# -- report ------------------------------------------------------------------------------------


def print_table(results: dict[str, Any]) -> None:
    count = results["sizes"]["metrics"]
    table = new_table(
        f"MLflow client, {count:,} metrics: assay vs mlflow server",
        {
            "store": "left",
            "measurement": "left",
            "assay": "right",
            "mlflow server": "right",
            "assay / mlflow": "right",
        },
    )
    rows: list[tuple[str, str, str, Callable[[float], str], bool]] = [
        ("log_metric, one call each", "log_metric_per_s", "metrics/s", "{:,.0f}".format, True),
        ("  per call p50", "log_metric_p50_ms", "ms", "{:.1f}".format, False),
        ("  per call p95", "log_metric_p95_ms", "ms", "{:.1f}".format, False),
        ("log_batch (1,000 per request)", "log_batch_per_s", "metrics/s", "{:,.0f}".format, True),
        (f"get_metric_history ({count:,} points)", "history_ms", "ms", "{:.0f}".format, False),
    ]
    for kind, store in results["stores"].items():
        if "skipped" in store:
            add_skipped(table, kind, reason=store["skipped"])
            continue
        ours, theirs = store["assay"]["median"], store["mlflow"]["median"]
        for label, key, unit, fmt, higher_is_better in rows:
            ratio = ours[key] / theirs[key] if theirs[key] else float("nan")
            better = ratio > 1 if higher_is_better else ratio < 1
            colour = "green" if better else "red"
            table.add_row(
                kind,
                label,
                f"{fmt(ours[key])} {unit}",
                f"{fmt(theirs[key])} {unit}",
                f"[{colour}]{ratio:.2f}x[/]",
            )
        table.add_section()
    console.print(table)
    console.print(
        f"median of {results['sizes']['repeat']} run(s) per server; {load_average(results)}"
    )


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.set_defaults(stores="sqlite")
    parser.add_argument("--metrics", type=int, help="metrics logged per measurement (10000)")
    parser.add_argument("--repeat", type=int, default=1, help="fresh runs per server")
    add_run_options(parser, "mlflow_compat", quick_help="1,000 metrics: a quick smoke test")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    count = args.metrics or (1000 if args.quick else 10_000)
    try:
        import mlflow
    except ImportError:
        console.print("[red]needs the MLflow client: pip install 'assay[mlflow]'[/]")
        return 2
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    sizes = {"metrics": count, "repeat": args.repeat, "mlflow": mlflow.__version__}
    return run_benchmark(
        args,
        sizes,
        lambda store: bench_store(store, count, args.repeat, console.log),
        print_table,
        name="mlflow_compat",
    )


if __name__ == "__main__":
    sys.exit(main())
