"""A job in a child process of the executor's own (the sandbox and venv executors).

The child gets a request on stdin and a message pipe (its fd in the request); what it prints
goes to the job's log, and it sends progress reports and one result as JSON lines on the pipe.
:class:`Children` spawns it, sends the request, reads both until the child closes them or the
executor stops it (:class:`Stop`), kills its process group and reaps it; :func:`read_child`
is the read loop, each executor supplying its own limits and message parser.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import selectors
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from assay.jobs.context import JobContext
from assay.jobs.executors.base import Outcome, kill_group, stopped

__all__ = ["EXIT_GRACE_S", "Children", "Stop", "read_child"]

_POLL_S = 0.05
EXIT_GRACE_S = 2.0
"""How long a child may take to exit (or to go quiet) once its result is in."""


class Stop(Exception):
    """Stop the child now and report this outcome."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


Collect = Callable[[subprocess.Popen[bytes], int, int], Outcome]
"""Reads a started child: (process, its stdout fd, the message pipe's read fd) -> outcome."""


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
        collect: Collect,
        *,
        env: Mapping[str, str],
        cwd: str | None = None,
        keep_stdin: bool = False,
    ) -> Outcome:
        """Start ``argv`` in a session of its own, write ``request(message_fd)`` (made before
        the start) to its stdin and return what ``collect`` makes of it (or the outcome of a
        :class:`Stop` it raises). With ``keep_stdin`` stdin stays open until the child is
        reaped: it is the child's lifeline. Raises OSError if the child cannot be started."""
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
                outcome = collect(proc, proc.stdout.fileno(), read_fd)
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


def read_child(
    ctx: JobContext,
    out_fd: int,
    msg_fd: int,
    *,
    on_line: Callable[[bytes, Outcome | None], Outcome | None],
    on_output: Callable[[bytes], None] = lambda chunk: None,
    on_partial: Callable[[bytes], None] = lambda pending: None,
    check: Callable[[], None] = lambda: None,
) -> tuple[Outcome | None, bytes]:
    """Read the child's output (into the job's log) and messages until it closes both, or
    :data:`EXIT_GRACE_S` after its result. Returns the result (None if none came) and what
    is left of an unfinished message line.

    ``on_line(line, result so far)`` parses one message (None for a progress report), the
    first outcome being the result; ``on_output`` sees each chunk of output after it is
    logged, ``on_partial`` the unfinished line after each read, ``check`` runs every poll:
    any of them may raise :class:`Stop`. A cancelled job stops the child.
    """
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
            check()
            if final is not None and time.monotonic() - final_at > EXIT_GRACE_S:
                break  # the result is in; do not wait for stray output
            for key, _ in sel.select(_POLL_S):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                elif key.fd == out_fd:
                    ctx.append_log(decoder.decode(chunk))
                    on_output(chunk)
                else:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    on_partial(pending)
                    for line in lines:
                        outcome = on_line(line, final)
                        if outcome is not None and final is None:
                            final, final_at = outcome, time.monotonic()
    finally:
        sel.close()
    ctx.append_log(decoder.decode(b"", final=True))
    return final, pending
