"""Jobs used by the tests (imported by test workers as ``--jobs-module jobmods``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from assay import current_job, job


class Transient(Exception):
    pass


class TransientChild(Transient):
    pass


def record(path: str, line: str) -> None:
    """Append a line to a file durably (shared by the test job modules)."""
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@job(name="t_add")
def t_add(a: int, b: int) -> int:
    return a + b


@job(name="t_noop")
def t_noop() -> None:
    return None


@job(name="t_record")
def t_record(path: str, tag: str = "") -> str:
    """Appends `job_id pid` to a file: proves which process ran which job, and how often."""
    record(path, f"{current_job().job_id} {os.getpid()} {tag}")
    return tag


@job(name="t_sleep")
def t_sleep(seconds: float, path: str | None = None) -> float:
    """Sleeps cooperatively (stops when cancelled); records start/end times when given a path."""
    ctx = current_job()
    if path:
        record(path, f"start {ctx.job_id} {time.time()}")
    ctx.wait_cancelled(seconds)
    if path:
        record(path, f"end {ctx.job_id} {time.time()}")
    ctx.check_cancelled()
    return seconds


@job(name="t_exclusive", exclusive=["key"])
def t_exclusive(key: str, seconds: float, path: str) -> None:
    t_sleep(seconds, path)


@job(name="t_exclusive_queue", exclusive=["key"], on_conflict="queue")
def t_exclusive_queue(key: str, seconds: float, path: str) -> None:
    t_sleep(seconds, path)


@job(name="t_ignore_cancel")
def t_ignore_cancel(seconds: float) -> str:
    """Ignores its cancel flag: the late result must not overwrite CANCELED/TIMEOUT."""
    time.sleep(seconds)
    return "late"


@job(name="t_flaky", max_retries=3, retry_on=(Transient,))
def t_flaky(fail_times: int, child: bool = False) -> int:
    attempt = current_job().attempt
    if attempt <= fail_times:
        raise (TransientChild if child else Transient)(f"attempt {attempt}")
    return attempt


@job(name="t_fail", max_retries=3, retry_on=(Transient,))
def t_fail() -> None:
    raise ValueError("permanent failure")


@job(name="t_progress")
def t_progress(steps: int, gate: str) -> int:
    """Reports progress, then waits until the file `gate` exists."""
    ctx = current_job()
    for i in range(steps):
        ctx.progress(i + 1, steps, f"step {i + 1}")
    while not Path(gate).exists():
        ctx.check_cancelled()
        time.sleep(0.01)
    return steps


@job(name="t_capped", max_workers=1)
def t_capped(seconds: float, path: str) -> None:
    t_sleep(seconds, path)


@job(name="t_nul")
def t_nul(lone: bool = False) -> str:
    """Fails with text no database stores as it is: a NUL byte (PostgreSQL), a lone surrogate."""
    raise ValueError("bad \x00 byte" + ("\ud800" if lone else ""))


@job(name="t_bad_result")
def t_bad_result() -> object:
    return {"x": float("nan")}
