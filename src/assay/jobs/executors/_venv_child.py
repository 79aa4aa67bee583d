"""The runner of one ``venv`` job (run as ``<env>/bin/python -I -B _venv_child.py``).

1. read ONE JSON line on stdin: the job, its module, the worker's ``sys.path`` and the message
   fd; stdin then stays open as a lifeline: when the worker dies it reads EOF and this process
   kills its whole session (a job never outlives its worker's lease unseen);
2. append the worker's ``sys.path`` after the env's own entries (the env's pins win), import the
   job's module and look the job up by name in assay's registry;
3. run it; progress and ONE final message go to the message fd as JSON lines; stdout and stderr
   are the worker's log capture.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from typing import Any


def _watch_lifeline(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 4096):
            pass
    os.killpg(0, signal.SIGKILL)


def main() -> int:
    line = sys.stdin.buffer.readline()
    request = json.loads(line)
    lifeline = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the job (and its children) must not read the lifeline
    os.close(devnull)
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True).start()
    for entry in request["sys_path"]:
        if entry not in sys.path:
            sys.path.append(entry)
    out = os.fdopen(request["message_fd"], "w", buffering=1, encoding="utf-8")
    lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(message) + "\n")
            out.flush()

    try:
        from assay.jobs.context import JobContext
        from assay.jobs.registry import REGISTRY

        if request["name"] not in REGISTRY:
            importlib.import_module(request["module"])
        spec = REGISTRY.get(request["name"])
        job = pickle.loads(base64.b64decode(request["job"]))
    except BaseException:
        send({"type": "error", "error": _load_error(request), "transient": False})
        return 0

    class _Context(JobContext):
        """Progress goes to the worker (throttled)."""

        last_sent = 0.0

        def progress(
            self, completed: float, total: float | None = None, message: str | None = None
        ) -> None:
            super().progress(completed, total, message)
            now = time.monotonic()
            if now - self.last_sent >= 0.05 or (total is not None and completed >= total):
                self.send_progress()

        def send_progress(self) -> None:
            """The latest report, unless sent already (also after the job, before its
            outcome, so the worker stores the last progress with the result)."""
            progress = self.take_progress()
            if progress is not None:
                self.last_sent = time.monotonic()
                send({"type": "progress", **progress.__dict__})

    env = os.environ
    ctx = _Context(job, api_token=env.get("ASSAY_API_TOKEN"), api_url=env.get("ASSAY_API_URL"))
    ctx.activate()
    try:
        try:
            result = spec.fn(**job.params)
        finally:
            ctx.send_progress()  # before the outcome, which ends what the worker reads
    except Exception as exc:
        transient = isinstance(exc, spec.retry_on)
        send({"type": "error", "error": traceback.format_exc(), "transient": transient})
        return 0
    except BaseException:  # SystemExit, KeyboardInterrupt raised by the job itself
        send({"type": "error", "error": traceback.format_exc(), "transient": False})
        return 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    try:
        payload = json.dumps({"type": "result", "value": result})
    except (TypeError, ValueError) as exc:
        error = f"the result of job {spec.name!r} is not JSON-serialisable: {exc}"
        send({"type": "error", "error": error, "transient": False})
        return 0
    with lock:
        out.write(payload + "\n")
        out.flush()
    return 0


def _load_error(request: dict[str, Any]) -> str:
    return (
        f"cannot load job {request['name']!r} (module {request['module']!r}) in its python env "
        f"({sys.prefix}):\n{traceback.format_exc()}"
    )


if __name__ == "__main__":
    sys.exit(main())
