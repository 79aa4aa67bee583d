"""The ``ray`` executor (plugin, ``pip install 'assay[ray]'``): each job runs as a Ray task.

- ``start()`` connects this worker process to a Ray cluster (``address``: ``"auto"`` for the
  cluster this machine belongs to, ``"ray://host:10001"``, or ``"local"`` to start a private
  local instance, as the tests do). Ray allows one connection per process: if Ray is already
  initialised, the executor uses that connection and leaves it alone at ``stop()``.
- The job is shipped by reference: the task imports the job's module on the Ray worker and calls
  the function by its qualified name with the job's params, so assay and the job modules must be
  importable there (install them in the cluster's image, or use ``runtime_env``).
- Inside the task, ``current_job()`` works (job id, attempt, params, ``check_cancelled``, and
  ``api_token``/``api_url``: the execution's job token and the API's address, also set as
  ``ASSAY_API_TOKEN``/``ASSAY_API_URL`` in the environment while the task runs, so the job can
  call the API back); progress reports stay on the Ray worker. Python-level ``print`` output
  of the task is captured and kept on the job as ``log_tail`` when the task ends.
- Cancel and timeout use Ray's own cancellation: ``ray.cancel(ref, force=True)`` kills the Ray
  worker process running the task (and, recursively, the tasks it started).
- Ray never retries a task itself (``max_retries=0``): retries are assay's (``retry_on``).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import threading
import traceback
from collections.abc import Mapping
from typing import Any

from assay.config import Settings
from assay.errors import ConfigError
from assay.jobs.context import LOG_TAIL_CHARS, JobContext
from assay.jobs.executors.base import (
    Executor,
    Failed,
    Outcome,
    call_job,
    outcome_of,
    stopped,
)
from assay.jobs.model import Job
from assay.jobs.registry import JobSpec

__all__ = ["RayExecutor"]

log = logging.getLogger("assay.executors.ray")

_POLL_S = 0.05
_CANCEL_GRACE_S = 10.0
"""How long ``run`` waits for Ray to confirm a forced cancel before reporting the outcome."""


class RayExecutor(Executor):
    name = "ray"
    options = {
        "address": "auto",
        "namespace": "assay",
        "num_cpus": 1,
        "num_gpus": 0,
        "runtime_env": None,
        "init_options": {},
    }
    """``address`` and ``namespace`` go to ``ray.init``, with ``init_options`` (more ``ray.init``
    keyword arguments, e.g. ``{"num_cpus": 2, "object_store_memory": 100_000_000}`` for a local
    instance); ``num_cpus``, ``num_gpus`` and ``runtime_env`` are requested for each task."""

    def __init__(
        self, settings: Settings, *, slots: int, options: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(settings, slots=slots, options=options)
        if not isinstance(self.config["init_options"], Mapping):
            raise ConfigError("ray executor: init_options must be a mapping of ray.init arguments")
        self._owns_connection = False
        self._lock = threading.Lock()
        self._remote: Any = None
        self._task_options: dict[str, Any] = {}

    def start(self) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ConfigError(
                "the ray executor needs the ray package: pip install 'assay[ray]'"
            ) from exc
        with self._lock:
            if ray.is_initialized():
                log.info("ray.reusing an existing Ray connection in this process")
            else:
                ray.init(
                    address=self.config["address"],
                    namespace=self.config["namespace"],
                    ignore_reinit_error=True,
                    **dict(self.config["init_options"]),
                )
                self._owns_connection = True
                log.info("ray.connected address=%s", self.config["address"])
            task_options: dict[str, Any] = {
                "num_cpus": self.config["num_cpus"],
                "num_gpus": self.config["num_gpus"],
                "max_retries": 0,
                "retry_exceptions": False,
                "name": "assay-job",
            }
            if self.config["runtime_env"] is not None:
                task_options["runtime_env"] = self.config["runtime_env"]
            self._task_options = task_options
            self._remote = ray.remote(_run_on_ray)

    def stop(self) -> None:
        with self._lock:
            if self._owns_connection:
                import ray

                ray.shutdown()
                self._owns_connection = False
            self._remote = None

    def run(self, spec: JobSpec, ctx: JobContext) -> Outcome:
        import ray
        from ray.exceptions import (
            GetTimeoutError,
            RayTaskError,
            TaskCancelledError,
            WorkerCrashedError,
        )

        if self._remote is None:
            return Failed("the ray executor is not started (or already stopped)")
        job = ctx.job
        fn = spec.fn
        try:
            options = {**self._task_options, "name": f"assay:{spec.name}:{job.id}"}
            ref = self._remote.options(**options).remote(
                fn.__module__, fn.__qualname__, job, spec.retry_on, ctx.api_env()
            )
        except Exception:
            return Failed(f"cannot submit job {spec.name!r} to Ray:\n{traceback.format_exc()}")
        while True:
            if ctx.cancelled:
                ray.cancel(ref, force=True, recursive=True)
                done, _ = ray.wait([ref], timeout=_CANCEL_GRACE_S)
                if not done:
                    log.warning("ray.cancel_unconfirmed job=%s after %ss", job.id, _CANCEL_GRACE_S)
                return stopped(ctx)
            done, _ = ray.wait([ref], timeout=_POLL_S)
            if done:
                break
        try:
            status, payload, output = ray.get(ref, timeout=30)
        except RayTaskError as exc:  # the task wrapper itself failed (e.g. cannot unpickle)
            return Failed(f"job {spec.name!r} failed on Ray:\n{exc}")
        except (TaskCancelledError, WorkerCrashedError) as exc:
            return Failed(f"the Ray worker running job {spec.name!r} died: {exc}")
        except GetTimeoutError:
            return Failed(f"job {spec.name!r} finished on Ray but its result could not be fetched")
        except Exception as exc:
            return Failed(f"job {spec.name!r} failed on Ray: {type(exc).__name__}: {exc}")
        ctx.append_log(output)
        return outcome_of(status, payload)


class _TaskContext(JobContext):
    """The job's context inside the Ray task. Cancellation is Ray's (the process is killed)."""


def _run_on_ray(
    module: str,
    qualname: str,
    job: Job,
    retry_on: tuple[type[BaseException], ...],
    api_env: Mapping[str, str],
) -> tuple[str, str, str]:
    """Runs on a Ray worker: import the job, call it; returns (status, payload, output tail).
    A Ray worker process runs one task at a time and is reused, so the job's API variables are
    set for this call only."""
    output = io.StringIO()
    saved = {key: os.environ.get(key) for key in api_env}
    os.environ.update(api_env)
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            status, payload = _call(module, qualname, job, retry_on, api_env)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return status, payload, output.getvalue()[-LOG_TAIL_CHARS:]


def _call(
    module: str,
    qualname: str,
    job: Job,
    retry_on: tuple[type[BaseException], ...],
    api_env: Mapping[str, str],
) -> tuple[str, str]:
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
    except Exception:
        return "fail", (
            f"cannot load job {job.name!r} ({module}.{qualname}) on the Ray worker:\n"
            f"{traceback.format_exc()}"
        )
    ctx = _TaskContext(
        job, api_token=api_env.get("ASSAY_API_TOKEN"), api_url=api_env.get("ASSAY_API_URL")
    )
    return call_job(target, ctx, retry_on)
