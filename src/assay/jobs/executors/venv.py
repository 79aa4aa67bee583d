"""The ``venv`` executor: a job with ``python_env`` runs in a cached virtualenv of its own.

Per job: make sure the env exists (:func:`assay.jobs.pyenv.ensure_env`; created once per
requirement set, under an inter-process lock; a failed install fails the job with the
installer's error), then start ``<env>/bin/python -I -B _venv_child.py`` in its own session. The
child imports the job's module from the worker's ``sys.path`` (placed after the env's own
packages), runs the job by name, and reports progress and one result as JSON lines on a pipe;
its stdout and stderr become the job's ``log_tail``. Cancel and timeout kill the whole process
group (SIGKILL), and so does the child itself when the worker dies (stdin is its lifeline).

Settings: ``python_env_dir`` (where envs live, ``~/.assay/envs``) and
``python_env_create_timeout_s`` (bounds one env creation).
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import json
import os
import pickle
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from assay.config import Settings
from assay.jobs import pyenv
from assay.jobs.context import JobContext
from assay.jobs.executors.base import (
    Completed,
    Executor,
    Failed,
    Outcome,
    Retry,
    describe_exit,
    kill_group,
    stopped,
)
from assay.jobs.registry import JobSpec

__all__ = ["VenvExecutor"]

CHILD = Path(__file__).with_name("_venv_child.py")
_POLL_S = 0.05
_EXIT_GRACE_S = 2.0


class _Stop(Exception):
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


class VenvExecutor(Executor):
    name = "venv"

    def __init__(
        self, settings: Settings, *, slots: int, options: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(settings, slots=slots, options=options)
        self._live: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    @property
    def env_dir(self) -> Path:
        return Path(self.settings.python_env_dir).expanduser()

    def stop(self) -> None:
        with self._lock:
            live = list(self._live)
        for proc in live:
            kill_group(proc.pid)

    def run(self, spec: JobSpec, ctx: JobContext) -> Outcome:
        module = getattr(spec.fn, "__module__", None)
        qualname = getattr(spec.fn, "__qualname__", "")
        if not module or module == "__main__" or "<locals>" in qualname:
            return Failed(
                f"venv: cannot run job {spec.name!r}: the function must be importable "
                "(a module-level function in a module other than __main__)"
            )
        requirements = list((spec.python_env or {}).get("pip", []))
        try:
            env = pyenv.ensure_env(
                requirements,
                self.env_dir,
                cancelled=lambda: ctx.cancelled,
                output=ctx.append_log,
                timeout_s=self.settings.python_env_create_timeout_s,
            )
        except pyenv.PythonEnvInterrupted:
            return stopped(ctx)
        except pyenv.PythonEnvError as exc:
            return Failed(f"venv: job {spec.name!r}: {exc}")
        except OSError as exc:
            return Failed(f"venv: job {spec.name!r}: cannot prepare the python env: {exc}")
        if ctx.cancelled:
            return stopped(ctx)
        return self._run_in(env, module, spec, ctx)

    def _run_in(self, env: Path, module: str, spec: JobSpec, ctx: JobContext) -> Outcome:
        read_fd, write_fd = os.pipe()
        request = {
            "name": spec.name,
            "module": module,
            "job": base64.b64encode(pickle.dumps(ctx.job)).decode(),
            "sys_path": [p for p in sys.path if p],
            "message_fd": write_fd,
        }
        try:
            proc = subprocess.Popen(
                [str(pyenv.env_python(env)), "-I", "-B", str(CHILD)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                start_new_session=True,
                env={**os.environ, **ctx.api_env()},
            )
        except OSError as exc:
            os.close(read_fd)
            return Failed(f"venv: cannot start the job's python ({env}): {exc}")
        finally:
            os.close(write_fd)
        with self._lock:
            self._live.add(proc)
        try:
            assert proc.stdin is not None
            assert proc.stdout is not None
            with contextlib.suppress(OSError):
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()  # stdin stays open: it is the child's lifeline
            try:
                outcome = self._collect(proc, proc.stdout.fileno(), read_fd, spec, ctx)
            except _Stop as stop:
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
        self,
        proc: subprocess.Popen[bytes],
        out_fd: int,
        msg_fd: int,
        spec: JobSpec,
        ctx: JobContext,
    ) -> Outcome:
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
                    raise _Stop(stopped(ctx))
                if final is not None and time.monotonic() - final_at > _EXIT_GRACE_S:
                    break  # the result is in; do not wait for stray output
                for key, _ in sel.select(_POLL_S):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fd)
                    elif key.fd == out_fd:
                        ctx.append_log(decoder.decode(chunk))
                    else:
                        pending += chunk
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            outcome = _message(line, spec, ctx)
                            if outcome is not None and final is None:
                                final, final_at = outcome, time.monotonic()
        finally:
            sel.close()
        ctx.append_log(decoder.decode(b"", final=True))
        if final is not None:
            return final
        try:
            code = proc.wait(timeout=_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            return Failed(f"venv: job {spec.name!r} closed its result pipe without a result")
        how = describe_exit(code)
        return Failed(f"venv: the process of job {spec.name!r} ended without a result ({how})")


def _message(line: bytes, spec: JobSpec, ctx: JobContext) -> Outcome | None:
    """A progress report (None) or the final outcome, from the child's message pipe."""
    try:
        message = json.loads(line)
    except ValueError:
        return Failed(f"venv: job {spec.name!r} sent a message that is not JSON: {line[:200]!r}")
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "progress":
        ctx.progress(message["completed"], message.get("total"), message.get("message"))
        return None
    if kind == "result":
        return Completed(message.get("value"))
    if kind == "error":
        error = str(message.get("error"))
        return Retry(error) if message.get("transient") else Failed(error)
    return Failed(f"venv: job {spec.name!r} sent an unexpected message: {line[:200]!r}")
