"""The ``process`` executor (the default): a pool of warm worker processes.

The pool's processes are forked from a forkserver that has imported assay and the job modules
once, so a job pays no interpreter start-up. Each process runs one job at a time and sends back
its output, progress and outcome over a pipe; the worker still owns every state change.

- Every pool process leads its own process group; cancel and timeout kill the whole group
  (a job's own children die with it) and the pool starts a replacement.
- A process that dies mid-job (segfault, ``os._exit``, the OOM killer) fails the job with the
  exit code or signal, never hangs it.
- stdout and stderr of the process (and of anything it spawns) are captured per job and kept on
  the job as ``log_tail``, readable while it runs.
- A process is recycled after ``process_max_jobs`` jobs or once its resident memory passes
  ``process_max_rss_mb``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, ClassVar

from assay.config import Settings
from assay.errors import ConfigError
from assay.jobs.context import JobContext
from assay.jobs.executors.base import (
    Executor,
    Failed,
    Outcome,
    call_job,
    describe_exit,
    environ_swapped,
    kill_group,
    outcome_of,
    stopped,
)
from assay.jobs.model import Job
from assay.jobs.registry import REGISTRY, JobSpec

__all__ = ["ProcessExecutor"]

log = logging.getLogger("assay.executors.process")

_POLL_S = 0.05
_END_OF_OUTPUT = b"\x00assay-end-of-output\x00"


@dataclass(eq=False)
class _Child:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    lifeline: Connection  # closed when this worker dies: the child then kills its group
    jobs_run: int = 0

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid


class ProcessExecutor(Executor):
    name = "process"
    settings_options: ClassVar[Mapping[str, str]] = {
        "max_jobs": "process_max_jobs",
        "max_rss_mb": "process_max_rss_mb",
    }

    def __init__(
        self, settings: Settings, *, slots: int, options: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(settings, slots=slots, options=options)
        self._mp = multiprocessing.get_context("forkserver")
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()
        self._children: set[_Child] = set()
        self._lock = threading.Lock()
        self._closed = False

    # -- pool ----------------------------------------------------------------------------------

    def start(self) -> None:
        # Preload this module (what a pool process runs; ``assay`` alone imports nothing, its
        # names load lazily) and the job modules, so pool processes start with them imported.
        # Effective only if this process has not started its forkserver yet; the children
        # import the job modules themselves in any case.
        self._mp.set_forkserver_preload([__name__, *self.settings.job_modules])
        try:
            for _ in range(self.slots):
                self._idle.put(self._spawn())
        except OSError as exc:  # e.g. the forkserver's socket path under a long TMPDIR
            self.stop()
            raise ConfigError(f"cannot start the process pool: {exc}") from exc

    def stop(self) -> None:
        with self._lock:
            self._closed = True
            children = list(self._children)
        for child in children:
            self._kill(child)

    def _spawn(self) -> _Child:
        parent_end, child_end = self._mp.Pipe()
        life_read, life_write = self._mp.Pipe(duplex=False)
        process = self._mp.Process(
            target=_child_main,
            args=(child_end, life_read, list(self.settings.job_modules)),
            name="assay-pool",
            daemon=True,
        )
        process.start()
        child_end.close()
        life_read.close()
        child = _Child(process, parent_end, life_write)
        with self._lock:
            self._children.add(child)
        return child

    def _kill(self, child: _Child) -> None:
        kill_group(child.pid)
        with contextlib.suppress(ProcessLookupError):
            child.process.kill()
        child.process.join(timeout=5)
        child.conn.close()
        child.lifeline.close()
        with self._lock:
            self._children.discard(child)

    def _retire(self, child: _Child) -> None:
        """Stop a healthy process (recycling) and put a fresh one in the pool."""
        with contextlib.suppress(OSError):
            child.conn.send(("stop",))
        child.process.join(timeout=2)
        self._kill(child)

    def _replace(self) -> None:
        with self._lock:
            closed = self._closed
        if not closed:
            self._idle.put(self._spawn())

    # -- running -------------------------------------------------------------------------------

    def run(self, spec: JobSpec, ctx: JobContext) -> Outcome:
        child = self._idle.get()
        outcome, healthy = self._run_on(child, spec, ctx)
        if healthy and not self._worn_out(child):
            self._idle.put(child)
            return outcome
        if healthy:
            self._retire(child)
        else:
            self._kill(child)
        self._replace()
        return outcome

    def _worn_out(self, child: _Child) -> bool:
        return bool(child.jobs_run >= self.config["max_jobs"])

    def _run_on(self, child: _Child, spec: JobSpec, ctx: JobContext) -> tuple[Outcome, bool]:
        """Run one job on ``child``; returns the outcome and whether the process may be reused."""
        try:
            child.conn.send(("run", spec.name, spec.fn.__module__, ctx.job, ctx.api_env()))
        except OSError as exc:
            return Failed(
                f"the pool process was gone before job {spec.name!r} started: {exc}"
            ), False
        while True:
            if ctx.cancelled:
                self._kill(child)
                return stopped(ctx), False
            ready = wait([child.conn, child.process.sentinel], timeout=_POLL_S)
            if not ready:
                continue
            try:
                message = child.conn.recv() if child.conn.poll() else None
            except (EOFError, OSError):
                message = None
            if message is None:
                if child.process.is_alive() and child.conn in ready:
                    continue
                child.process.join(timeout=1)
                return Failed(_died(spec, child.process.exitcode)), False
            kind = message[0]
            if kind == "log":
                ctx.append_log(message[1])
            elif kind == "progress":
                ctx.progress(*message[1:])
            elif kind == "done":
                _, status, payload, rss_bytes = message
                child.jobs_run += 1
                too_big = rss_bytes > self.config["max_rss_mb"] * 1024 * 1024
                if too_big:
                    log.info("process.recycled pid=%s rss_mb=%.0f", child.pid, rss_bytes / 2**20)
                return outcome_of(status, payload), not too_big


def _died(spec: JobSpec, exitcode: int | None) -> str:
    return f"the process running job {spec.name!r} died ({describe_exit(exitcode)})"


# -- the pool process -----------------------------------------------------------------------------


class _ChildContext(JobContext):
    """The job's context inside a pool process: progress goes to the parent (throttled)."""

    def __init__(self, job: Job, send: Any, api_env: dict[str, str]) -> None:
        super().__init__(
            job, api_token=api_env.get("ASSAY_API_TOKEN"), api_url=api_env.get("ASSAY_API_URL")
        )
        self._send = send
        self._last_sent = 0.0

    def progress(
        self, completed: float, total: float | None = None, message: str | None = None
    ) -> None:
        super().progress(completed, total, message)
        now = time.monotonic()
        if now - self._last_sent >= 0.05 or (total is not None and completed >= total):
            self.send_progress()

    def send_progress(self) -> None:
        """Send the latest report unless it was sent already: also called after the job
        returns, so a report the throttle held back reaches the worker before the outcome."""
        progress = self.take_progress()
        if progress is not None:
            self._last_sent = time.monotonic()
            self._send(("progress", progress.completed, progress.total, progress.message))


class _OutputPump:
    """Points fds 1 and 2 at a pipe and forwards what arrives to the parent as log messages."""

    def __init__(self, send: Any) -> None:
        self._send = send
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", 0), write_through=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", 0), write_through=True)
        self._read_fd = read_fd
        self._drained = threading.Event()
        threading.Thread(target=self._pump, name="assay-output", daemon=True).start()

    def _pump(self) -> None:
        pending = b""
        while chunk := os.read(self._read_fd, 65536):
            pending += chunk
            while _END_OF_OUTPUT in pending:
                before, _, pending = pending.partition(_END_OF_OUTPUT)
                self._forward(before)
                self._drained.set()
            # Hold back only a tail that may be the start of a marker split across reads.
            start = pending.rfind(b"\x00", max(0, len(pending) - len(_END_OF_OUTPUT) + 1))
            if start != -1 and _END_OF_OUTPUT.startswith(pending[start:]):
                self._forward(pending[:start])
                pending = pending[start:]
            else:
                self._forward(pending)
                pending = b""

    def _forward(self, data: bytes) -> None:
        if data:
            self._send(("log", data.decode("utf-8", "replace")))

    def drain(self) -> None:
        """Wait until everything written so far has been forwarded (bounded)."""
        self._drained.clear()
        os.write(1, _END_OF_OUTPUT)
        self._drained.wait(1.0)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _resolve(name: str, module: str) -> JobSpec:
    if name not in REGISTRY:
        importlib.import_module(module)
    return REGISTRY.get(name)


def _die_with_worker(lifeline: Connection) -> None:
    """The worker holds the other end of ``lifeline``; when it dies (even by SIGKILL) the pipe
    reports EOF and we kill our whole group, so a job never keeps running beside its rescued
    re-run. (Our OS parent is the forkserver, which outlives the worker.)"""
    with contextlib.suppress(EOFError, OSError):
        while True:
            lifeline.recv()
    os.killpg(0, signal.SIGKILL)


def _child_main(conn: Connection, lifeline: Connection, job_modules: list[str]) -> None:
    os.setsid()  # our own process group: a cancel kills the job and everything it started
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when we stop
    threading.Thread(
        target=_die_with_worker, args=(lifeline,), name="assay-lifeline", daemon=True
    ).start()
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    REGISTRY.load(job_modules)
    pump = _OutputPump(send)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "stop":
            return
        _, name, module, job, api_env = message
        status, payload = _run_job(name, module, job, send, api_env)
        sys.stdout.flush()
        sys.stderr.flush()
        pump.drain()
        send(("done", status, payload, _rss_bytes()))


def _run_job(
    name: str, module: str, job: Job, send: Any, api_env: dict[str, str]
) -> tuple[str, str]:
    try:
        spec = _resolve(name, module)
    except Exception:
        return "fail", f"cannot load job {name!r} in the pool process:\n{traceback.format_exc()}"
    # The job's token and the API's address, also for programs the job starts; this process
    # runs one job at a time, so its environment is the job's.
    ctx = _ChildContext(job, send, api_env)
    with environ_swapped(api_env, ("ASSAY_API_TOKEN", "ASSAY_API_URL")):
        try:
            return call_job(spec.fn, ctx, spec.retry_on)
        finally:
            ctx.send_progress()
