"""Jobs and workers for the tests: the FAST settings, the job modules' folder, workers in a
thread of this process and as real `assay worker` processes, and the public JSON shape of a
job."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import assay
from assay.jobs.backend import Backend
from support.timing import scaled, wait_until

# The job modules workers import by name (``jobmods``, ``jobmods_life``, ...).
JOBMODS_DIR = Path(__file__).resolve().parent / "jobmods"
# bench/: the Ray tests reuse its local cluster and its jobs.
BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"

# Short leases and polls so crash and cancel paths finish in seconds.
FAST: dict[str, Any] = {
    "lease_ttl_s": 2.0,
    "leader_ttl_s": 2.0,
    "rescue_interval_s": 0.3,
    "cancel_poll_s": 0.1,
    "poll_interval_s": 0.05,
    "retry_backoff_base_s": 0.05,
    "retry_backoff_max_s": 1.0,
    "shutdown_grace_s": 2.0,
    "job_modules": ["jobmods"],
    "default_executor": "inline",
}

# The public JSON shape of a job (docs/contract.md), in order.
JOB_KEYS = [
    "id",
    "name",
    "params",
    "status",
    "result",
    "error",
    "attempt",
    "max_retries",
    "timeout",
    "created_at",
    "started_at",
    "finished_at",
    "worker_id",
    "progress",
    "log_tail",
    "owner",
]


def fast_env(**extra: Any) -> dict[str, str]:
    """Environment for a worker or server subprocess with the FAST settings (and ``extra``) and
    the job modules on its PYTHONPATH."""
    env = dict(os.environ)
    for key, value in {**FAST, **extra}.items():
        env[f"ASSAY_{key.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    env["PYTHONPATH"] = os.pathsep.join([str(JOBMODS_DIR), env.get("PYTHONPATH", "")])
    return env


@contextlib.contextmanager
def running(worker: assay.Worker) -> Iterator[assay.Worker]:
    """``worker`` running in a thread for the duration of the block, stopped at its end."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop(now=True)
        thread.join(timeout=scaled(15))
        assert not thread.is_alive(), "worker did not stop"


@contextlib.contextmanager
def running_worker(backend: Backend, **kwargs: Any) -> Iterator[assay.Worker]:
    """A worker of ``backend`` (``backend.worker(**kwargs)``) running in a thread for the
    duration of the block."""
    with running(backend.worker(**kwargs)) as worker:
        yield worker


class WorkerProcesses:
    """Real `assay worker` processes; all are killed at the end of the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp_path = tmp_path

    def start(self, store_uri: str, *args: str, **settings: Any) -> subprocess.Popen[bytes]:
        with open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "assay", "worker", "--store", store_uri, *args],
                env=fast_env(**settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def wait_ready(self, n: int, timeout: float = 60) -> None:
        """``n`` workers printed their start line (imported everything, connected)."""

        def ready() -> bool:
            logs = [p.read_text() for p in self.tmp_path.glob("worker-*.log")]
            return sum(1 for text in logs if " running " in text) >= n

        try:
            wait_until(ready, timeout=timeout, interval=0.05)
        except AssertionError:
            raise AssertionError(f"workers did not start:\n{self.logs()[-5000:]}") from None

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp_path.glob("worker-*.log")))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
