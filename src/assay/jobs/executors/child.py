"""A job in a child process of the executor's own (the sandbox and venv executors).

The child gets a request on stdin and a message pipe (its fd in the request); what it prints
goes to the job's log, and it sends progress reports and one result as JSON lines on the pipe.
:class:`Children` spawns it, sends the request, reads both until the child closes them or the
executor stops it (:class:`Stop`), kills its process group and reaps it. Each executor
supplies a :class:`Reader`: its message parser, its names, and (for an untrusted child) its
:class:`ChildLimits`.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import os
import selectors
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from assay.jobs.context import JobContext
from assay.jobs.executors.base import (
    Failed,
    Outcome,
    TimedOut,
    describe_exit,
    kill_group,
    stopped,
)

__all__ = ["EXIT_GRACE_S", "ChildLimits", "Children", "Reader", "Stop"]

_POLL_S = 0.05
EXIT_GRACE_S = 2.0
"""How long a child may take to exit (or to go quiet) once its result is in."""


class Stop(Exception):
    """Stop the child now and report this outcome."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


@dataclass(frozen=True)
class ChildLimits:
    """What an untrusted child may do before it is stopped: run ``wall_s`` seconds, write
    ``output_bytes`` of output, send a message line of ``result_bytes``. A child under limits
    must also send exactly one result, as a complete line."""

    wall_s: float
    output_bytes: int
    result_bytes: int


@dataclass(frozen=True)
class Reader:
    """How an executor reads its child: ``parse`` makes an outcome of one message line (None
    for a progress report; it may raise :class:`Stop`); ``executor`` and ``who`` (``the job``,
    ``job 'x'``) name them in the errors; ``describe`` words an exit status."""

    parse: Callable[[bytes], Outcome | None]
    executor: str
    who: str
    limits: ChildLimits | None = None
    describe: Callable[[int], str] = describe_exit


class Children:
    """The live child processes of one executor, so that :meth:`kill_all` reaches them."""

    def __init__(self) -> None:
        self._live: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def kill_all(self) -> None:
        with self._lock:
            live = list(self._live)
        for proc in live:
            kill_group(proc.pid)

    def run(
        self,
        argv: Sequence[str],
        request: Callable[[int], bytes],
        ctx: JobContext,
        reader: Reader,
        *,
        env: Mapping[str, str],
        cwd: str | None = None,
        keep_stdin: bool = False,
    ) -> Outcome:
        """Start ``argv`` in a session of its own, write ``request(message_fd)`` (made before
        the start) to its stdin and return the outcome ``reader`` reads. With ``keep_stdin``
        stdin stays open until the child is reaped: it is the child's lifeline. Raises OSError
        if the child cannot be started."""
        read_fd, write_fd = os.pipe()
        try:
            data = request(write_fd)
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        with self._lock:
            self._live.add(proc)
        try:
            assert proc.stdin is not None
            assert proc.stdout is not None
            with contextlib.suppress(OSError):  # the child died at once; its exit status tells
                proc.stdin.write(data)
                proc.stdin.flush()
                if not keep_stdin:
                    proc.stdin.close()
            try:
                outcome = _collect(proc, ctx, proc.stdout.fileno(), read_fd, reader)
            except Stop as stop:
                outcome = stop.outcome
            kill_group(proc.pid)  # the leader is not reaped yet, so its group id cannot be reused
            proc.wait()
            with contextlib.suppress(OSError):
                proc.stdin.close()
            proc.stdout.close()
            return outcome
        finally:
            os.close(read_fd)
            with self._lock:
                self._live.discard(proc)


def _collect(
    proc: subprocess.Popen[bytes], ctx: JobContext, out_fd: int, msg_fd: int, reader: Reader
) -> Outcome:
    """The child's result, or why there is none."""
    final, pending = _read(ctx, out_fd, msg_fd, reader)
    if final is not None:
        return final
    if pending and reader.limits is not None:
        return Failed(
            f"{reader.executor}: {reader.who}'s result message is incomplete (no newline)"
        )
    try:
        code = proc.wait(timeout=EXIT_GRACE_S)
    except subprocess.TimeoutExpired:
        return Failed(f"{reader.executor}: {reader.who} closed its result pipe without a result")
    how = reader.describe(code)
    return Failed(f"{reader.executor}: the process of {reader.who} ended without a result ({how})")


def _read(
    ctx: JobContext, out_fd: int, msg_fd: int, reader: Reader
) -> tuple[Outcome | None, bytes]:
    """Read the child's output (into the job's log) and messages until it closes both, or
    :data:`EXIT_GRACE_S` after its result. Returns the result (the first outcome
    ``reader.parse`` makes; None if none came) and what is left of an unfinished message line.

    Raises :class:`Stop` when the job is cancelled or the child breaks one of its limits.
    """
    limits = reader.limits
    wall_end = time.monotonic() + limits.wall_s if limits is not None else math.inf
    output_read = 0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = b""
    final: Outcome | None = None
    final_at = 0.0
    sel = selectors.DefaultSelector()
    sel.register(out_fd, selectors.EVENT_READ)
    sel.register(msg_fd, selectors.EVENT_READ)
    try:
        while sel.get_map():
            if ctx.cancelled:
                raise Stop(stopped(ctx))
            if limits is not None and time.monotonic() >= wall_end:
                raise Stop(TimedOut(f"{reader.executor} wall-clock limit of {limits.wall_s:g}s"))
            if final is not None and time.monotonic() - final_at > EXIT_GRACE_S:
                break  # the result is in; do not wait for stray output
            for key, _ in sel.select(_POLL_S):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                elif key.fd == out_fd:
                    ctx.append_log(decoder.decode(chunk))
                    output_read += len(chunk)
                    if limits is not None and output_read > limits.output_bytes:
                        raise Stop(
                            Failed(
                                f"{reader.executor}: {reader.who} wrote more than "
                                f"{limits.output_bytes} bytes to stdout/stderr and was stopped "
                                "(output limit)"
                            )
                        )
                else:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    if limits is not None and len(pending) > limits.result_bytes:
                        raise Stop(
                            Failed(
                                f"{reader.executor}: {reader.who}'s result exceeds "
                                f"{limits.result_bytes} bytes (result size limit)"
                            )
                        )
                    for line in lines:
                        if final is not None and limits is not None:
                            raise Stop(
                                Failed(f"{reader.executor}: {reader.who} sent more than one result")
                            )
                        outcome = reader.parse(line)
                        if outcome is not None and final is None:
                            final, final_at = outcome, time.monotonic()
    finally:
        sel.close()
    ctx.append_log(decoder.decode(b"", final=True))
    return final, pending
