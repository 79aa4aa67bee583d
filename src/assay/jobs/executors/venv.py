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
import json
import os
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from assay.config import Settings
from assay.jobs import pyenv
from assay.jobs.context import JobContext
from assay.jobs.executors.base import (
    Completed,
    Executor,
    Failed,
    Outcome,
    Retry,
    stopped,
)
from assay.jobs.executors.child import Children, Reader
from assay.jobs.registry import JobSpec

__all__ = ["VenvExecutor"]

CHILD = Path(__file__).with_name("_venv_child.py")


class VenvExecutor(Executor):
    name = "venv"
    settings_options: ClassVar[Mapping[str, str]] = {
        "env_dir": "python_env_dir",
        "create_timeout_s": "python_env_create_timeout_s",
    }

    def __init__(
        self, settings: Settings, *, slots: int, options: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(settings, slots=slots, options=options)
        self._children = Children()

    @property
    def env_dir(self) -> Path:
        return Path(self.config["env_dir"]).expanduser()

    def stop(self) -> None:
        self._children.kill_all()

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
                timeout_s=self.config["create_timeout_s"],
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
        def request(message_fd: int) -> bytes:
            message = {
                "name": spec.name,
                "module": module,
                "job": base64.b64encode(pickle.dumps(ctx.job)).decode(),
                "sys_path": [p for p in sys.path if p],
                "message_fd": message_fd,
            }
            return json.dumps(message).encode() + b"\n"

        reader = Reader(
            lambda line: _message(line, spec, ctx), executor="venv", who=f"job {spec.name!r}"
        )
        try:
            return self._children.run(
                [str(pyenv.env_python(env)), "-I", "-B", str(CHILD)],
                request,
                ctx,
                reader,
                env={**os.environ, **ctx.api_env()},
                keep_stdin=True,
            )
        except OSError as exc:
            return Failed(f"venv: cannot start the job's python ({env}): {exc}")


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
