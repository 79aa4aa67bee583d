"""Jobs for the process-executor tests (``--jobs-module jobmods_proc``)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from assay import current_job, job
from jobmods import record


class ProcTransient(Exception):
    pass


@job(name="p_pid", executor="process")
def p_pid() -> int:
    return os.getpid()


@job(name="p_grow", executor="process")
def p_grow(mb: int) -> int:
    """Keeps ``mb`` MiB alive in the pool process (to trip the memory ceiling)."""
    globals().setdefault("_ballast", []).append(bytearray(mb * 1024 * 1024))
    return os.getpid()


@job(name="p_family", executor="process")
def p_family(path: str, seconds: float = 60) -> None:
    """Starts a grandchild, records both pids, then sleeps (to be cancelled or timed out)."""
    child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    record(path, f"{os.getpid()} {child.pid}")
    time.sleep(seconds)


@job(name="p_die", executor="process")
def p_die(how: str) -> None:
    if how == "exit":
        os._exit(3)
    if how == "segv":
        ctypes.string_at(0)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise ValueError(how)


@job(name="p_talk", executor="process")
def p_talk(gate: str) -> str:
    """Prints from Python and from a subprocess, reports progress, waits for the gate file."""
    print("hello from the job")
    print("to stderr", file=sys.stderr)
    subprocess.run(["echo", "from a grandchild"], check=True)
    current_job().progress(1, 2, "halfway")
    while not Path(gate).exists():
        time.sleep(0.01)
    print("bye")
    return "talked"


@job(name="p_flaky", executor="process", max_retries=2, retry_on=(ProcTransient,))
def p_flaky(fail_times: int) -> int:
    attempt = current_job().attempt
    if attempt <= fail_times:
        raise ProcTransient(f"attempt {attempt}")
    return attempt


@job(name="p_not_json", executor="process")
def p_not_json() -> object:
    return {1, 2}
