"""The ``ray`` executor (plugin, ``pip install 'assay[ray]'``): each job runs as a Ray task.

- ``start()`` connects this worker process to a Ray cluster (``address``: ``"auto"`` for the
  cluster this machine belongs to, ``"ray://host:10001"``, or ``"local"`` to start a private
  local instance, as the tests do). Ray allows one connection per process: if Ray is already
  initialised, the executor uses that connection and leaves it alone at ``stop()``.
- The job is shipped by reference: the task imports the job's module on the Ray worker and calls
  the function by its qualified name with the job's params, so assay and the job modules must be
  importable there (install them in the cluster's image, or use ``runtime_env``). ``resources``
  (custom Ray resources per task, e.g. ``{"assay": 1}``) steers jobs to the nodes that offer
  them.
- Inside the task, ``current_job()`` works (job id, attempt, params, ``check_cancelled``, and
  ``api_token``/``api_url``: the execution's job token and the API's address, also set as
  ``ASSAY_API_TOKEN``/``ASSAY_API_URL`` in the environment while the task runs, so the job can
  call the API back).
- Progress reaches the job: the task is a Ray streaming generator. The job runs in a thread of
  the Ray worker process while the task's own thread yields its progress reports (the latest
  one, at most every 50 ms, and the last one before the outcome), then the outcome; the
  executor hands each report to the worker, which writes it like any executor's. Python-level
  ``print`` output of the task is captured and kept on the job as ``log_tail`` when the task
  ends.
- Cancel and timeout use Ray's own cancellation: ``ray.cancel(ref, force=True)`` kills the Ray
  worker process running the task (and, recursively, the tasks it started).
- Ray never retries a task itself (``max_retries=0``): retries are assay's. The failures Ray
  would have retried, its system failures (the node running the task died, the Ray worker
  process died, the object holding the result was lost, Ray's memory monitor killed it), come
  back as a retryable outcome: the worker re-queues the job under its ``max_retries``, as a new
  attempt, only once Ray has declared the task dead. An exception of the job is retried only if
  ``retry_on`` lists it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import threading
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

from assay.config import Settings
from assay.errors import ConfigError
from assay.jobs.context import LOG_TAIL_CHARS, JobContext
from assay.jobs.executors.base import (
    Executor,
    Failed,
    Outcome,
    Retry,
    call_job,
    environ_swapped,
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
_GET_TIMEOUT_S = 30.0
_PROGRESS_EVERY_S = 0.05
"""The task sends at most one progress report per this interval (the latest)."""


class RayExecutor(Executor):
    name = "ray"
    options = {
        "address": "auto",
        "namespace": "assay",
        "num_cpus": 1,
        "num_gpus": 0,
        "resources": {},
        "runtime_env": None,
        "init_options": {},
    }
    """``address`` and ``namespace`` go to ``ray.init``, with ``init_options`` (more ``ray.init``
    keyword arguments, e.g. ``{"num_cpus": 2, "object_store_memory": 100_000_000}`` for a local
    instance); ``num_cpus``, ``num_gpus``, ``resources`` (custom resources) and ``runtime_env``
    are requested for each task."""

    def __init__(
        self, settings: Settings, *, slots: int, options: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(settings, slots=slots, options=options)
        if not isinstance(self.config["init_options"], Mapping):
            raise ConfigError("ray executor: init_options must be a mapping of ray.init arguments")
        resources = self.config["resources"]
        if not isinstance(resources, Mapping) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
            for v in resources.values()
        ):
            raise ConfigError(
                "ray executor: resources must map custom resource names to amounts >= 0, "
                f"e.g. {{'assay': 1}}; got {resources!r}"
            )
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
                "num_returns": "streaming",
                "max_retries": 0,
                "retry_exceptions": False,
                "name": "assay-job",
            }
            if self.config["resources"]:
                task_options["resources"] = dict(self.config["resources"])
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

        if self._remote is None:
            return Failed("the ray executor is not started (or already stopped)")
        job = ctx.job
        fn = spec.fn
        try:
            options = {**self._task_options, "name": f"assay:{spec.name}:{job.id}"}
            stream = self._remote.options(**options).remote(
                fn.__module__, fn.__qualname__, job, spec.retry_on, ctx.api_env()
            )
        except Exception:
            return Failed(f"cannot submit job {spec.name!r} to Ray:\n{traceback.format_exc()}")
        while True:
            if ctx.cancelled:
                ray.cancel(stream, force=True, recursive=True)
                done, _ = ray.wait([stream], timeout=_CANCEL_GRACE_S)
                if not done:
                    log.warning("ray.cancel_unconfirmed job=%s after %ss", job.id, _CANCEL_GRACE_S)
                return stopped(ctx)
            ready, _ = ray.wait([stream], timeout=_POLL_S)
            if not ready:
                continue
            try:
                message = ray.get(next(stream), timeout=_GET_TIMEOUT_S)
            except StopIteration:
                return Failed(f"the Ray task of job {spec.name!r} ended without an outcome")
            except Exception as exc:
                return _failure(spec, exc)
            if message[0] == "progress":
                ctx.progress(*message[1:])
                continue
            _, status, payload, output = message
            ctx.append_log(output)
            return outcome_of(status, payload)


def _failure(spec: JobSpec, exc: Exception) -> Outcome:
    """The outcome of a task whose next message could not be read."""
    from ray import exceptions as rx

    # ObjectLostError covers OwnerDiedError, ObjectReconstructionFailedError, ...; a name an
    # older Ray does not have is skipped.
    names = ("NodeDiedError", "WorkerCrashedError", "LocalRayletDiedError", "ObjectLostError")
    lost = tuple(getattr(rx, name) for name in (*names, "OutOfMemoryError") if hasattr(rx, name))
    if isinstance(exc, lost):
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Retry(
            f"the Ray task of job {spec.name!r} was lost: {type(exc).__name__}: {first_line}"
        )
    if isinstance(exc, rx.RayTaskError):  # the task wrapper itself failed (e.g. cannot unpickle)
        return Failed(f"job {spec.name!r} failed on Ray:\n{exc}")
    if isinstance(exc, rx.GetTimeoutError):
        return Failed(f"a message of job {spec.name!r} was ready on Ray but could not be fetched")
    return Failed(f"job {spec.name!r} failed on Ray: {type(exc).__name__}: {exc}")


class _TaskContext(JobContext):
    """The job's context inside the Ray task. Cancellation is Ray's (the process is killed);
    ``changed`` wakes the task's thread when there is a report to send or the job is done."""

    def __init__(self, job: Job, api_env: Mapping[str, str]) -> None:
        super().__init__(
            job, api_token=api_env.get("ASSAY_API_TOKEN"), api_url=api_env.get("ASSAY_API_URL")
        )
        self.changed = threading.Event()
        self.finished = threading.Event()

    def progress(
        self, completed: float, total: float | None = None, message: str | None = None
    ) -> None:
        super().progress(completed, total, message)
        self.changed.set()


def _run_on_ray(
    module: str,
    qualname: str,
    job: Job,
    retry_on: tuple[type[BaseException], ...],
    api_env: Mapping[str, str],
) -> Iterator[tuple[Any, ...]]:
    """Runs on a Ray worker, as a streaming generator: imports the job and calls it in a thread;
    yields ``("progress", completed, total, message)`` reports while it runs, then
    ``("done", status, payload, output tail)``. A Ray worker process runs one task at a time
    and is reused, so the job's API variables are set for this call only."""
    output = io.StringIO()
    ctx = _TaskContext(job, api_env)
    outcome: list[tuple[str, str]] = []

    def body() -> None:
        try:
            outcome.append(_call(module, qualname, job, retry_on, ctx))
        finally:
            ctx.finished.set()
            ctx.changed.set()

    with (
        environ_swapped(api_env, api_env),
        contextlib.redirect_stdout(output),
        contextlib.redirect_stderr(output),
    ):
        thread = threading.Thread(target=body, name="assay-job", daemon=True)
        thread.start()
        while not ctx.finished.is_set():
            ctx.changed.wait()
            ctx.changed.clear()
            progress = ctx.take_progress()
            if progress is not None:
                yield ("progress", progress.completed, progress.total, progress.message)
            ctx.finished.wait(_PROGRESS_EVERY_S)
        thread.join()
    progress = ctx.take_progress()
    if progress is not None:
        yield ("progress", progress.completed, progress.total, progress.message)
    status, payload = (
        outcome[0] if outcome else ("fail", "the job's thread ended without an outcome")
    )
    yield ("done", status, payload, output.getvalue()[-LOG_TAIL_CHARS:])


def _call(
    module: str,
    qualname: str,
    job: Job,
    retry_on: tuple[type[BaseException], ...],
    ctx: JobContext,
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
    return call_job(target, ctx, retry_on)
