"""Where a job's pickup time goes: one idle worker process, one job every 20 ms, timestamps
(``time.perf_counter_ns``, CLOCK_MONOTONIC: one clock for every process on the machine) at
every step from the submit to the job's start.

Not a test: a tool for profiling the wake-up path. It wraps methods of a real worker process
(the listener's ``wake``, the fetch loop's event, the claim, the job thread's start) and of the
submitting backend (its COMMIT), and prints the median and p95 of each step:

    PYTHONPATH=src python bench/pickup_trace.py --store postgresql+psycopg://postgres@127.0.0.1/scratch

The store must be a scratch one, migrated: its job tables are emptied first.

Steps, per job:
  submit: submit() called -> INSERT sent (it stamps created_at) -> COMMIT sent -> COMMIT
          returned (= submit() returned)
  worker: COMMIT sent -> notification received (the listener's wake()) -> the fetch loop sees
          the wake-up -> claim statement sent -> claim statement returned -> claim committed
          -> the job thread starts the execution.
The database's own stamps (created_at_ms, started_at_ms; integer milliseconds) are printed
beside them, as the bench computes them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from assay.config import load_settings
from assay.jobs.backend import Backend

ns = time.perf_counter_ns


def _settings(uri: str) -> Any:
    return load_settings(
        store_uri=uri,
        job_modules=["assay.examples"],
        maintenance=False,
        default_executor="inline",
        worker_concurrency=32,
    )


# -- the worker process -----------------------------------------------------------------------


class _TimedEvent(threading.Event):
    def __init__(self, log: list[tuple[str, int, Any]]) -> None:
        super().__init__()
        self._log = log

    def wait(self, timeout: float | None = None) -> bool:
        woke = super().wait(timeout)
        if woke:
            self._log.append(("seen", ns(), None))
        return woke


def run_worker(uri: str, out: Path) -> None:
    from assay.jobs.store import JobStore
    from assay.jobs.worker import Worker

    events: list[tuple[str, int, Any]] = []
    real_claim = JobStore.jobs_claim
    real_execute = Worker._execute
    real_wake = Worker.wake

    def jobs_claim(self: JobStore, *args: Any, **kwargs: Any) -> Any:
        events.append(("claim_call", ns(), None))
        jobs = real_claim(self, *args, **kwargs)
        events.append(("claim_ret", ns(), [j.id for j in jobs]))
        return jobs

    def execute(self: Worker, execution: Any) -> None:
        events.append(("exec", ns(), execution.job.id))
        real_execute(self, execution)

    def wake(self: Worker) -> None:
        if threading.current_thread().name == "assay-watcher":
            events.append(("wake", ns(), None))
        real_wake(self)

    JobStore.jobs_claim = jobs_claim  # type: ignore[method-assign]
    Worker._execute = execute  # type: ignore[method-assign]
    Worker.wake = wake  # type: ignore[method-assign]
    with Backend(_settings(uri)) as backend:

        @sa.event.listens_for(backend.engine, "before_cursor_execute")
        def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            if "ORDER BY jobs.run_at_ms" in statement:
                events.append(("stmt_sent", ns(), None))

        @sa.event.listens_for(backend.engine, "after_cursor_execute")
        def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            if "ORDER BY jobs.run_at_ms" in statement:
                events.append(("stmt_ret", ns(), None))

        worker = backend.worker()
        worker._wake = _TimedEvent(events)
        signal.signal(signal.SIGTERM, lambda *_: worker.stop(now=True))
        worker.run()
    out.write_text(json.dumps(events))


# -- the submitting process -------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(int(q * len(values)), len(values) - 1)] if values else float("nan")


def run_bench(uri: str, count: int, rate: float, out: Path) -> dict[str, Any]:
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--store", uri, "--worker-out", str(out)], env=env
    )
    submits: dict[str, dict[str, int]] = {}
    commits: list[int] = []
    inserts: list[int] = []
    try:
        with Backend(_settings(uri)) as backend:
            with backend.engine.begin() as conn:
                for table in ("job_attempts", "job_locks", "jobs"):
                    conn.execute(sa.text(f"DELETE FROM {table}"))

            @sa.event.listens_for(backend.engine, "commit")
            def on_commit(conn: Any) -> None:
                commits.append(ns())

            @sa.event.listens_for(backend.engine, "before_cursor_execute")
            def on_insert(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
                if statement.startswith("INSERT INTO jobs"):
                    inserts.append(ns())

            for _ in range(5):  # warm up
                warm = backend.submit("noop")
                deadline = time.monotonic() + 60
                while not backend.get(warm.id).status.is_terminal:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("the worker did not run the warm-up jobs")
                    time.sleep(0.05)
            time.sleep(0.5)
            load = os.getloadavg()[0]
            start = time.perf_counter()
            for i in range(count):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                commits.clear()
                called = ns()
                job = backend.submit("noop")
                returned = ns()
                submits[job.id] = {
                    "call": called,
                    "insert": inserts[-1],
                    "commit": commits[-1],
                    "ret": returned,
                }
            deadline = time.monotonic() + 30
            while any(not backend.get(j).status.is_terminal for j in list(submits)[-3:]):
                if time.monotonic() > deadline:
                    raise RuntimeError("jobs left unfinished")
                time.sleep(0.1)
            with backend.engine.connect() as conn:
                stamps = {
                    r.id: (r.created_at_ms, r.started_at_ms)
                    for r in conn.execute(
                        sa.text("SELECT id, created_at_ms, started_at_ms FROM jobs")
                    )
                }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    events = json.loads(out.read_text())
    return breakdown(submits, events, stamps, load)


def breakdown(
    submits: dict[str, dict[str, int]],
    events: list[list[Any]],
    stamps: dict[str, tuple[int, int]],
    load: float,
) -> dict[str, Any]:
    def first(kind: str, after: int) -> int | None:
        return next((t for k, t, _ in events if k == kind and t >= after), None)

    claims: dict[str, tuple[int, int]] = {}
    for i, (kind, t, ids) in enumerate(events):
        if kind == "claim_ret":
            call = next(t0 for k, t0, _ in reversed(events[:i]) if k == "claim_call")
            for job_id in ids:
                claims[job_id] = (call, t)
    execs = {ids: t for kind, t, ids in events if kind == "exec"}
    steps: dict[str, list[float]] = {}

    def add(name: str, a: int | None, b: int | None) -> None:
        if a is not None and b is not None:
            steps.setdefault(name, []).append((b - a) / 1e6)

    for job_id, s in submits.items():
        wake = first("wake", s["commit"])
        claim_call, claim_ret = claims[job_id]
        seen = first("seen", wake) if wake is not None else None
        sent = first("stmt_sent", claim_call)
        got = first("stmt_ret", claim_call)
        add("submit: call -> INSERT sent", s["call"], s["insert"])
        add("submit: INSERT sent -> COMMIT sent", s["insert"], s["commit"])
        add("submit: COMMIT sent -> returned", s["commit"], s["ret"])
        add("COMMIT sent -> listener wake()", s["commit"], wake)
        add("listener wake() -> fetch loop sees it", wake, seen)
        add("fetch loop sees it -> claim call", seen, claim_call)
        add("claim call -> statement sent", claim_call, sent)
        add("claim statement sent -> returned", sent, got)
        add("claim statement returned -> committed", got, claim_ret)
        add("claim call -> returned (whole transaction)", claim_call, claim_ret)
        add("claim returned -> execution starts", claim_ret, execs[job_id])
        add("TOTAL submit() call -> execution starts", s["call"], execs[job_id])
        add("TOTAL COMMIT sent -> execution starts", s["commit"], execs[job_id])
        add("TOTAL submit() returned -> execution starts", s["ret"], execs[job_id])
        created, started = stamps[job_id]
        steps.setdefault("DB stamps: started_at_ms - created_at_ms", []).append(started - created)
    return {
        "load": load,
        "jobs": len(submits),
        "steps": {k: {"p50": pct(v, 0.5), "p95": pct(v, 0.95)} for k, v in steps.items()},
        "wakes_missing": len(submits) - len(steps.get("COMMIT sent -> listener wake()", [])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a scratch store: its jobs are deleted")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write the breakdown here too")
    args = parser.parse_args()
    if args.worker_out is not None:
        run_worker(args.store, args.worker_out)
        return
    out = Path(f"/tmp/pickup_trace_{os.getpid()}.json")
    result = run_bench(args.store, args.jobs, args.rate, out)
    print(f"{args.store}: {result['jobs']} jobs, load {result['load']:.1f}")
    for name, p in result["steps"].items():
        print(f"  {name:48s} p50 {p['p50']:7.3f} ms   p95 {p['p95']:7.3f} ms")
    if args.json is not None:
        args.json.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
