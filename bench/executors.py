"""Executor benchmark: throughput, per-job overhead and cancel-to-killed latency per executor.

Run it from the repository root::

    .venv/bin/python bench/executors.py [--stores sqlite,postgresql]
                                        [--executors inline,process,sandbox] [--quick]
                                        [--repeat R] [--out bench/results/executors.json]

Every job runs in a real ``python -m assay worker --executor E`` process on the jobs of
``bench/benchjobs.py``. Throughput and overhead come from the jobs table (database clock,
milliseconds); cancel-to-killed is timed by the bench, from the ``cancel()`` call until the
job's process is gone. See bench/README.md for what each metric means.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from assay import Backend, load_settings
from assay.jobs.executors import create_executor
from common import (
    Store,
    add_run_options,
    add_skipped,
    job_rows,
    load_average,
    names,
    new_parser,
    new_table,
    open_backend,
    percentile,
    percentiles,
    run_benchmark,
    verdict,
    wait_drained,
)

console = Console(width=None if sys.stdout.isatty() else 180)

BENCH_DIR = Path(__file__).resolve().parent
JOBS_MODULE = "benchjobs"
EXECUTORS = ("inline", "process", "sandbox")
SLEEP_MS = 50.0  # bench_sleep50's own time

# Targets from the issue (a 2-core machine).
NOOP_THROUGHPUT_TARGET = {"process": 100.0}  # jobs/s
OVERHEAD_TARGET_MS = {"process": 20.0, "sandbox": 150.0}  # p50, one job at a time
CANCEL_TARGET_S = 2.0  # every trial, for executors that can kill
KILLS = ("process", "sandbox")  # executors whose jobs run in a process of their own


@dataclass(frozen=True)
class Sizes:
    noop_jobs: int
    sleep_jobs: int
    sandbox_jobs: int  # the sandbox starts a process per job: smaller batches
    serial_jobs: int
    cancels: int
    concurrency: int
    repeat: int

    def batch(self, executor: str, kind: str) -> int:
        if executor == "sandbox":
            return self.sandbox_jobs
        return self.noop_jobs if kind == "noop" else self.sleep_jobs


# -- the worker process ----------------------------------------------------------------------------


class WorkerProc:
    """One real ``assay worker`` process with the bench's jobs module and a chosen executor.

    Its ``TMPDIR`` is a directory of the bench, so the sandbox's per-job temp dirs (where a
    sandboxed job may write) are found under it. It is short on purpose: the forkserver of the
    process executor binds a unix socket below it, and such paths are limited to 107 bytes."""

    def __init__(self, uri: str, executor: str, concurrency: int, tmp: Path) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="abw-"))
        env = dict(os.environ, ASSAY_MAINTENANCE="false", TMPDIR=str(self.tmpdir))
        for name in ("ASSAY_STORE_URI", "ASSAY_JOB_MODULES", "ASSAY_DEFAULT_EXECUTOR"):
            env.pop(name, None)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH", "")) if p
        )
        cmd = [
            sys.executable,
            "-m",
            "assay",
            "worker",
            "--store",
            uri,
            "--jobs-module",
            JOBS_MODULE,
            "--executor",
            executor,
            "--concurrency",
            str(concurrency),
            "--log-level",
            "WARNING",
        ]
        self.log = tmp / f"worker-{executor}-{time.time_ns()}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"worker exited early with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def timed_rows(backend: Backend, ids: Sequence[str]) -> list[tuple[int, int, int, str]]:
    """(created_at_ms, started_at_ms, finished_at_ms, status) of the given jobs."""
    rows = job_rows(backend, ids, "created_at_ms, started_at_ms, finished_at_ms, status")
    return [(int(r[0]), int(r[1] or 0), int(r[2] or 0), str(r[3])) for r in rows]


def stats(values: Sequence[float]) -> dict[str, float]:
    return percentiles(sorted(values), qs=(50, 95))


# -- measurements ----------------------------------------------------------------------------------


def throughput(
    backend: Backend, worker: WorkerProc | None, ids: list[str], own_ms: float
) -> dict[str, Any]:
    """Stats of a batch of jobs that were all claimable at once."""
    if worker is not None:
        wait_drained(backend, worker.check_alive, timeout_s=max(120.0, len(ids) / 2), poll_s=0.1)
    rows = timed_rows(backend, ids)
    first_start = min(r[1] for r in rows)
    last_finish = max(r[2] for r in rows)
    span_ms = max(last_finish - first_start, 1)
    claim_to_finish = [float(r[2] - r[1]) for r in rows]
    return {
        "jobs": len(rows),
        "succeeded": sum(r[3] == "SUCCEEDED" for r in rows),
        "span_s": span_ms / 1000,
        "jobs_per_s": len(rows) / span_ms * 1000,
        "claim_to_finish_ms": stats(claim_to_finish),
        "overhead_ms": stats([v - own_ms for v in claim_to_finish]),
        "overhead_samples_ms": sorted(v - own_ms for v in claim_to_finish),
    }


def wait_terminal(backend: Backend, worker: WorkerProc, job_id: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not backend.get(job_id).status.is_terminal:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} not finished after {timeout_s:.0f}s")
        time.sleep(0.002)


def serial(backend: Backend, worker: WorkerProc, count: int) -> dict[str, Any]:
    """No-op jobs one at a time on an idle worker: the executor's own cost per job."""
    ids = []
    for _ in range(count):
        job = backend.submit("bench_noop")
        wait_terminal(backend, worker, job.id, 60)
        ids.append(job.id)
    rows = timed_rows(backend, ids)
    overhead = [float(r[2] - r[1]) for r in rows]
    return {
        "jobs": len(rows),
        "succeeded": sum(r[3] == "SUCCEEDED" for r in rows),
        "overhead_ms": stats(overhead),
        "overhead_samples_ms": sorted(overhead),
        "pickup_ms": stats([float(r[1] - r[0]) for r in rows]),
        "submit_to_finish_ms": stats([float(r[2] - r[0]) for r in rows]),
    }


def process_gone(pid: int) -> bool:
    """Gone: no such process, or a zombie (dead, only not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def find_pid(where: Path, name: str, executor: str) -> int | None:
    """The pid the job wrote; a sandboxed job wrote it in its temp dir, below ``where``."""
    paths = list(where.glob(f"assay-sandbox-*/{name}")) if executor == "sandbox" else [where / name]
    for path in paths:
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text())
    return None


def cancel_trial(
    backend: Backend, worker: WorkerProc, executor: str, trial: int, tmp: Path
) -> dict[str, Any]:
    """Submit a job that sleeps without checking for cancellation, wait until its process runs
    it, cancel it, and time until that process is gone."""
    name = f"cancel-{time.time_ns()}-{trial}.pid"
    # A sandboxed job can write only in its own temp dir (its working directory).
    pid_file = name if executor == "sandbox" else str(tmp / name)
    where = worker.tmpdir if executor == "sandbox" else tmp
    # Inline cannot stop the code: keep its sleep short so the worker can stop afterwards.
    seconds = 2.0 if executor == "inline" else 600.0
    job = backend.submit("bench_sleep_forever", {"pid_file": pid_file, "seconds": seconds})
    deadline = time.monotonic() + 60
    pid = None
    while pid is None or backend.get(job.id).status.value != "RUNNING":
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"cancel trial: job {job.id} did not start within 60 s")
        pid = pid or find_pid(where, name, executor)
        time.sleep(0.005)
    time.sleep(0.05)  # the job is now in its sleep
    start = time.perf_counter()
    backend.cancel(job.id)
    cancel_call_s = time.perf_counter() - start
    result: dict[str, Any] = {
        "pid": pid,
        "cancel_call_ms": cancel_call_s * 1000,
        "status_after_cancel": backend.get(job.id).status.value,
    }
    if executor not in KILLS:
        result["killed_s"] = None  # the code runs in the worker's own thread
        return result
    limit = time.monotonic() + 10
    while not process_gone(pid):
        if time.monotonic() > limit:
            result["killed_s"] = None
            result["error"] = f"process {pid} still alive 10 s after cancel()"
            return result
        time.sleep(0.001)
    result["killed_s"] = time.perf_counter() - start
    result["status_after_kill"] = backend.get(job.id).status.value
    return result


def session(store: Store, executor: str, sizes: Sizes, log: Any) -> dict[str, Any]:
    """One worker process on a fresh queue; every measurement for one (store, executor)."""
    load_before = os.getloadavg()
    uri = store.fresh()
    out: dict[str, Any] = {"concurrency": sizes.concurrency}
    with open_backend(uri, JOBS_MODULE) as backend:
        # No-op batch enqueued BEFORE the worker starts (it is claimable from the first poll).
        n = sizes.batch(executor, "noop")
        noop_ids = [j.id for j in backend.submit_many("bench_noop", [{}] * n)]
        worker = WorkerProc(uri, executor, sizes.concurrency, store.tmp)
        try:
            out["noop"] = throughput(backend, worker, noop_ids, 0.0)
            log(
                f"{store.kind}/{executor}: no-op {out['noop']['jobs_per_s']:.0f} jobs/s,"
                f" overhead p50 {out['noop']['overhead_ms']['p50']:.0f} ms"
            )
            # 50 ms batch: one transaction on the now idle worker, so all are claimable at once.
            n = sizes.batch(executor, "sleep")
            ids = [j.id for j in backend.submit_many("bench_sleep50", [{}] * n)]
            out["sleep50"] = throughput(backend, worker, ids, SLEEP_MS)
            log(
                f"{store.kind}/{executor}: 50 ms jobs {out['sleep50']['jobs_per_s']:.0f} jobs/s,"
                f" overhead p50 {out['sleep50']['overhead_ms']['p50']:.0f} ms"
            )
            time.sleep(0.3)  # let the worker go idle
            out["serial"] = serial(backend, worker, sizes.serial_jobs)
            log(
                f"{store.kind}/{executor}: one at a time: overhead p50"
                f" {out['serial']['overhead_ms']['p50']:.0f} p95"
                f" {out['serial']['overhead_ms']['p95']:.0f} ms"
            )
            out["cancel"] = [
                cancel_trial(backend, worker, executor, t, store.tmp) for t in range(sizes.cancels)
            ]
            killed = [c["killed_s"] for c in out["cancel"]]
            log(f"{store.kind}/{executor}: cancel-to-killed {killed}")
        finally:
            worker.stop()
    out["load_average"] = {"before": load_before, "after": os.getloadavg()}
    return out


# -- summary ---------------------------------------------------------------------------------------


def _row(
    metric: str,
    value: str,
    target: str = "",
    passed: bool | None = None,
    note: str = "",
    number: float | None = None,
) -> dict[str, Any]:
    return {
        "metric": metric,
        "value": value,
        "number": number,
        "target": target,
        "passed": passed,
        "note": note,
    }


def _range(values: Sequence[float]) -> str:
    return f" ({min(values):,.0f}-{max(values):,.0f})" if len(values) > 1 else ""


def summarize(executor: str, sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rates: median over repeats (range in brackets). Percentiles: all repeats pooled."""
    rows = []
    c = sessions[0]["concurrency"]
    for kind, label in (("noop", "no-op"), ("sleep50", "50 ms")):
        rates = [s[kind]["jobs_per_s"] for s in sessions]
        rate = statistics.median(rates)
        target = NOOP_THROUGHPUT_TARGET.get(executor) if kind == "noop" else None
        jobs = sessions[0][kind]["jobs"]
        failed = sum(s[kind]["jobs"] - s[kind]["succeeded"] for s in sessions)
        note = f"{jobs} jobs" + (f", {failed} NOT succeeded" if failed else "")
        if kind == "sleep50":
            note += f"; ideal c/50ms = {c / 0.05:.0f}/s"
        rows.append(
            _row(
                f"throughput, {label} jobs (c={c})",
                f"{rate:,.0f} jobs/s{_range(rates)}",
                "" if target is None else f">= {target:g}",
                None if target is None else rate >= target,
                note,
                rate,
            )
        )
    for kind, label in (("noop", "no-op"), ("sleep50", "50 ms"), ("serial", "one at a time")):
        pooled = sorted(v for s in sessions for v in s[kind]["overhead_samples_ms"])
        p50, p95 = percentile(pooled, 50), percentile(pooled, 95)
        target = OVERHEAD_TARGET_MS.get(executor) if kind == "serial" else None
        if kind == "serial":
            e2e = statistics.median(s["serial"]["submit_to_finish_ms"]["p50"] for s in sessions)
            note = f"no-op jobs; submit->finish p50 {e2e:.0f} ms"
        elif kind == "sleep50":
            note = f"claim->finish p50 {p50 + SLEEP_MS:.0f} ms, minus the 50 ms sleep"
        else:
            note = "claim->finish of a no-op job while the batch drains"
        rows.append(
            _row(
                f"overhead p50 / p95, {label}" + ("" if kind == "serial" else f" (c={c})"),
                f"{p50:.0f} / {p95:.0f} ms",
                "" if target is None else f"p50 <= {target:g} ms",
                None if target is None else p50 <= target,
                note,
                p50,
            )
        )
    trials = [t for s in sessions for t in s["cancel"]]
    if executor not in KILLS:
        calls = sorted(t["cancel_call_ms"] for t in trials)
        rows.append(
            _row(
                "cancel -> killed",
                "n/a",
                note=(
                    "the job runs in a worker thread and cannot be killed; status CANCELED"
                    f" when cancel() returns ({percentile(calls, 50):.0f} ms)"
                ),
            )
        )
        return rows
    killed = [t["killed_s"] for t in trials]
    stuck = [k for k in killed if k is None]
    done = sorted(k for k in killed if k is not None)
    worst = float("inf") if stuck else max(done)
    value = f"{percentile(done, 50):.2f} / {worst:.2f} s" if done else "never"
    rows.append(
        _row(
            "cancel -> killed p50 / max",
            value,
            f"max <= {CANCEL_TARGET_S:g} s",
            worst <= CANCEL_TARGET_S,
            f"{len(trials)} trials" + (f", {len(stuck)} NOT killed within 10 s" if stuck else ""),
            worst,
        )
    )
    return rows


# -- report ----------------------------------------------------------------------------------------


def print_table(results: dict[str, Any]) -> None:
    table = new_table(
        "assay executors benchmark",
        {
            "store": "left",
            "executor": "left",
            "metric": "left",
            "value": "right",
            "target": "right",
            "result": "center",
            "note": "left",
        },
    )
    for kind, store in results["stores"].items():
        if "skipped" in store:
            add_skipped(table, kind, "", reason=store["skipped"])
            table.add_section()
            continue
        for executor, ex in store["executors"].items():
            if "skipped" in ex:
                add_skipped(table, kind, executor, reason=ex["skipped"])
                table.add_section()
                continue
            for row in ex["summary"]:
                table.add_row(
                    kind,
                    executor,
                    row["metric"],
                    row["value"],
                    row["target"],
                    verdict(row["passed"]),
                    row["note"],
                )
            table.add_section()
    console.print(table)
    info = results["machine"]
    console.print(
        f"{info['nproc']} CPUs, Python {info['python']}, SQLite {info['sqlite']},"
        f" concurrency {results['sizes']['concurrency']}, {load_average(results)}"
    )


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--executors", default=",".join(EXECUTORS), help="inline,process,sandbox")
    parser.add_argument("--concurrency", type=int, help="worker --concurrency (default 2 x CPUs)")
    parser.add_argument("--jobs", type=int, help="no-op jobs per throughput run (default 3000)")
    parser.add_argument("--sleep-jobs", type=int, help="50 ms jobs per run (default 800)")
    parser.add_argument("--sandbox-jobs", type=int, help="jobs per sandbox run (default 200)")
    parser.add_argument("--serial-jobs", type=int, help="one-at-a-time jobs (default 50)")
    parser.add_argument("--cancels", type=int, help="cancel trials per executor (default 5)")
    parser.add_argument("--repeat", type=int, default=1, help="sessions per store and executor")
    add_run_options(parser, "executors", quick_help="small sizes: a < 90 s smoke test")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    quick = args.quick
    return Sizes(
        noop_jobs=args.jobs or (500 if quick else 3000),
        sleep_jobs=args.sleep_jobs or (200 if quick else 800),
        sandbox_jobs=args.sandbox_jobs or (40 if quick else 200),
        serial_jobs=args.serial_jobs or (15 if quick else 50),
        cancels=args.cancels or (2 if quick else 5),
        concurrency=args.concurrency or 2 * (os.cpu_count() or 1),
        repeat=args.repeat,
    )


def sandbox_unavailable() -> str | None:
    """Why the sandbox executor cannot be used here, or None."""
    try:
        create_executor("sandbox", load_settings(), slots=1)
    except Exception as exc:
        return f"create_executor('sandbox') raised {type(exc).__name__}: {exc}"
    return None


def bench_store(store: Store, executors: list[str], sizes: Sizes) -> dict[str, Any]:
    result: dict[str, Any] = {"version": store.version, "executors": {}}
    for executor in executors:
        if executor == "sandbox" and (why := sandbox_unavailable()):
            console.print(f"[yellow]skipping sandbox: {why}[/]")
            result["executors"][executor] = {"skipped": why}
            continue
        sessions = []
        try:
            for _ in range(sizes.repeat):
                sessions.append(session(store, executor, sizes, console.log))
        except RuntimeError as exc:
            reason = str(exc)
            console.print(f"[red]{store.kind}/{executor} failed: {reason}[/]")
            result["executors"][executor] = {"skipped": f"failed: {reason.splitlines()[0]}"}
            result["executors"][executor]["error"] = reason
            continue
        result["executors"][executor] = {
            "sessions": sessions,
            "summary": summarize(executor, sessions),
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    executors = names(args.executors)
    unknown = [e for e in executors if e not in EXECUTORS]
    if unknown:
        console.print(f"[red]unknown executor(s): {', '.join(unknown)}[/]")
        return 2
    return run_benchmark(
        args,
        sizes.__dict__,
        lambda store: bench_store(store, executors, sizes),
        print_table,
        name="exec",
    )


if __name__ == "__main__":
    sys.exit(main())
