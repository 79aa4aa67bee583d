"""Jobs for ``bench/executors.py``.

None of them names an executor, so the worker's ``--executor`` decides where they run. The
bench puts ``bench/`` on the workers' ``PYTHONPATH`` and passes ``--jobs-module benchjobs``.
"""

from __future__ import annotations

import os
import time

from assay import job


@job(name="bench_noop")
def bench_noop() -> None:
    """Does nothing: the whole run time is the executor's and the job system's."""


@job(name="bench_sleep50")
def bench_sleep50() -> None:
    """Sleeps 50 ms and returns (a job whose own time is known)."""
    time.sleep(0.05)


@job(name="bench_sleep_forever", timeout=900)
def bench_sleep_forever(pid_file: str, seconds: float = 600.0) -> None:
    """Writes its pid to ``pid_file``, then sleeps without ever checking for cancellation: only
    an executor that can kill the process stops it. In the sandbox the only writable place is
    the job's private temp dir (its working directory), so the bench passes a relative name
    there and looks for the file under the worker's ``TMPDIR``."""
    tmp = f"{pid_file}.tmp"
    with open(tmp, "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(tmp, pid_file)  # the bench never reads a half-written file
    time.sleep(seconds)
