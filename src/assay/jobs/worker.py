"""The worker: claims jobs up to its free capacity, runs them on executors, and records results.

Threads of one worker, each with one job:

- the fetch loop (the caller of :meth:`Worker.run`) claims jobs when there is capacity and new
  work may exist (woken by the store's watch, by finished jobs, or by the poll interval);
- job threads (``concurrency`` of them) each run one execution on its executor;
- the completer writes finished executions in batches, one transaction per batch;
- the supervisor, every ``cancel_poll_s``, times out jobs past their deadline, notices jobs
  cancelled or taken away elsewhere, flushes progress, and renews leases and locks;
- the watcher turns database notifications into wake-ups;
- leadership (optional) runs the rescuer and pruner when this worker holds the leader lease.

The worker owns every state change; executors only report outcomes.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import socket
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from assay.config import Settings
from assay.errors import AssayError, StoreError
from assay.jobs.context import JobContext, Resources
from assay.jobs.executors import (
    Cancelled,
    Completed,
    Executor,
    Failed,
    Outcome,
    Retry,
    TimedOut,
    create_executor,
)
from assay.jobs.model import Job, JobStatus
from assay.jobs.payload import dumps_plain
from assay.jobs.registry import REGISTRY, JobSpec, Registry
from assay.jobs.services import Leadership, maintenance
from assay.jobs.store import Finish, JobStore
from assay.jobs.tokens import JobTokens, SecretStore

__all__ = ["Worker", "retry_delay_s"]

log = logging.getLogger("assay.worker")

_FINISH_BATCH_MAX = 500
"""Executions written by one finish transaction at most."""


def retry_delay_s(attempt: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Exponential back-off with jitter: base * 2**(attempt-1), capped, times 1 ± jitter."""
    growth: float = 2.0 ** max(attempt - 1, 0)
    base = min(settings.retry_backoff_base_s * growth, settings.retry_backoff_max_s)
    spread = settings.retry_jitter * base
    jitter: float = (rng or random).uniform(-spread, spread)
    return max(0.0, base + jitter)


@dataclass
class _Execution:
    job: Job
    spec: JobSpec
    ctx: JobContext
    deadline: float  # time.monotonic()
    done: bool = False
    timed_out: bool = False
    outcome: Outcome | None = field(default=None, repr=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.job.id, self.job.attempt)


class Worker:
    """One worker: ``run()`` blocks until :meth:`stop` (or until idle, for drains)."""

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        *,
        registry: Registry = REGISTRY,
        concurrency: int | None = None,
        executor: str | None = None,
        worker_id: str | None = None,
        resources: Resources | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.registry = registry
        self.resources = resources or Resources()
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.concurrency = concurrency or settings.worker_concurrency
        self._default_executor = executor or settings.default_executor
        self._executors: dict[str, Executor] = {}
        # Fail at start on an unknown executor name or option.
        self._executor_for(JobSpec(name="", fn=lambda: None))
        for spec_name in registry.names:
            self._executor_for(registry.get(spec_name))
        self._executing: dict[tuple[str, int], _Execution] = {}
        self._busy = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closing = threading.Event()
        self._hurry = threading.Event()
        # Hand-offs between threads go through C queues (no Future, no Condition per job).
        self._runnable: queue.SimpleQueue[_Execution | None] = queue.SimpleQueue()
        self._completions: queue.SimpleQueue[_Execution | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._job_tokens = JobTokens(SecretStore(store.engine))
        self._leadership: Leadership | None = None
        if settings.maintenance:
            self._leadership = maintenance(store, settings, self.id, registry)

    # -- public --------------------------------------------------------------------------------

    def wake(self) -> None:
        """New jobs may be claimable (called by the store watcher and by local submits)."""
        self._wake.set()

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming; running jobs get ``shutdown_grace_s`` to finish (none with ``now``),
        then are handed back."""
        self._stopping.set()
        self._wake.set()
        if now:
            self._hurry.set()
            with self._lock:
                self._idle.notify_all()

    def run(self, *, until_idle: bool = False) -> None:
        """Work until :meth:`stop`; with ``until_idle``, also return once nothing is claimable
        and nothing is running (used by tests and benchmarks to drain a queue)."""
        log.info("worker.started id=%s concurrency=%s", self.id, self.concurrency)
        for ex in self._executors.values():
            ex.start()
        for n in range(self.concurrency):  # not joined at shutdown: a job may still run
            threading.Thread(target=self._job_loop, name=f"assay-job_{n}", daemon=True).start()
        self._spawn("assay-completer", self._complete_loop)
        self._spawn("assay-supervisor", self._supervise_loop)
        self._spawn(
            "assay-watcher",
            lambda: self.store.watch(
                self.wake, self._closing, self.settings.sqlite_watch_interval_s
            ),
        )
        if self._leadership is not None:
            self._leadership.start()
        try:
            self._fetch_loop(until_idle)
        finally:
            self._shutdown()
        log.info("worker.stopped id=%s", self.id)

    # -- fetching ------------------------------------------------------------------------------

    def _fetch_loop(self, until_idle: bool) -> None:
        names = self.registry.names
        caps = {
            n: spec.max_workers
            for n in names
            if (spec := self.registry.get(n)).max_workers is not None
        }
        batch_max = self.settings.claim_batch_max
        while not self._stopping.is_set():
            self._wake.clear()
            with self._lock:
                free = self.concurrency - self._busy
                # Only names with a cap need the running count (a walk over every execution).
                running = Counter(
                    e.job.name
                    for e in self._executing.values()
                    if e.job.name in caps and not e.done
                )
            claimed: list[Job] = []
            limit = min(free, batch_max)
            if limit > 0:
                capped = {n: cap - running[n] for n, cap in caps.items()}
                try:
                    claimed = self.store.jobs_claim(
                        self.id,
                        limit=limit,
                        names=names,
                        capped=capped,
                        lease_ttl_s=self.settings.lease_ttl_s,
                    )
                except StoreError:
                    log.warning("worker.claim_failed id=%s", self.id, exc_info=True)
                    self._stopping.wait(1.0)
                    continue
                for job in claimed:
                    self._start(job)
                if len(claimed) == limit:
                    continue  # more may be waiting: claim again at once
            if until_idle and not claimed and self._drained():
                return
            self._wake.wait(self.settings.poll_interval_s)

    def _drained(self) -> bool:
        with self._lock:
            return not self._executing

    def _start(self, job: Job) -> None:
        spec = self.registry.get(job.name)
        execution = _Execution(
            job=job,
            spec=spec,
            ctx=JobContext(
                job,
                mint_token=self._token_minter(job, spec),
                api_url=self.settings.public_url,
                store=self.store,
                settings=self.settings,
                resources=self.resources,
            ),
            deadline=time.monotonic() + job.timeout,
        )
        with self._lock:
            self._executing[execution.key] = execution
            self._busy += 1
        log.debug("job.claimed id=%s name=%s attempt=%s", job.id, job.name, job.attempt)
        self._runnable.put(execution)

    def _token_minter(self, job: Job, spec: JobSpec) -> Callable[[], str | None]:
        """Mints the execution's job token when it is first asked for (an HMAC per job was a
        tenth of the claim loop's time), expiring as if minted at the claim."""
        claimed_at = time.time()
        valid_s = min(self.settings.job_token_ttl_s, job.timeout)

        def mint() -> str | None:
            left = valid_s - (time.time() - claimed_at)
            return self._job_tokens.mint_for(job, spec, max(left, 0.0))

        return mint

    def _executor_for(self, spec: JobSpec) -> Executor:
        name = "venv" if spec.python_env else (spec.executor or self._default_executor)
        executor = self._executors.get(name)
        if executor is None:
            executor = create_executor(name, self.settings, slots=self.concurrency)
            self._executors[name] = executor
        return executor

    def _job_loop(self) -> None:
        while (execution := self._runnable.get()) is not None:
            self._execute(execution)

    def _execute(self, execution: _Execution) -> None:
        executor = self._executor_for(execution.spec)
        started = time.monotonic()
        try:
            outcome = executor.run(execution.spec, execution.ctx)
        except BaseException:
            outcome = Failed(f"executor {executor.name!r} crashed:\n{traceback.format_exc()}")
        self.store.metrics.ran(execution.job.name, time.monotonic() - started)
        execution.outcome = outcome
        with self._lock:
            execution.done = True
            self._busy -= 1
            if self._stopping.is_set():  # only _shutdown waits on _idle
                self._idle.notify_all()
        self._completions.put(execution)
        if not self._wake.is_set():  # set() takes a lock and notifies: once per claim round
            self._wake.set()

    # -- completing ----------------------------------------------------------------------------

    def _encode_result(self, value: object) -> tuple[str | None, str | None]:
        """A job's return value as the JSON text to store (None for None) and why it cannot be
        stored (None when it can). Encoded once, here: the store writes this text."""
        if value is None:
            return None, None
        try:
            text = dumps_plain(value, "the job's result")
        except ValueError as exc:
            return None, str(exc)
        size, limit = len(text.encode()), self.settings.max_result_bytes
        if size > limit:
            problem = f"result is {size} bytes of JSON, over the {limit}-byte limit"
            return None, f"{problem} (max_result_bytes)"
        return text, None

    def _finish_for(self, execution: _Execution) -> Finish:
        job, outcome = execution.job, execution.outcome
        result, result_json, delay = None, None, 0.0
        error: str | None
        match outcome:
            case Completed(value):
                result_json, error = self._encode_result(value)
                status = JobStatus.SUCCEEDED if error is None else JobStatus.FAILED
                result = value if error is None else None
            case Retry(error) if job.attempt <= job.max_retries:
                status, delay = JobStatus.PENDING, retry_delay_s(job.attempt, self.settings)
            case Retry(error):
                status, error = JobStatus.FAILED, f"{error}\ngave up after {job.attempt} attempts"
            case Cancelled(error):
                status = JobStatus.CANCELED
            case TimedOut(error):
                status = JobStatus.TIMEOUT
            case Failed(error):
                status = JobStatus.FAILED
            case _:
                raise AssertionError(f"unknown outcome {outcome!r}")
        return Finish(
            job_id=job.id,
            worker_id=self.id,
            attempt=job.attempt,
            status=status,
            result=result,
            result_json=result_json,
            error=error,
            retry_delay_s=delay,
            release_lock=job.lock_key is not None,
            log_tail=execution.ctx.log_tail,
            progress=execution.ctx.last_progress,
        )

    def _complete_loop(self) -> None:
        while True:
            first = self._completions.get()
            if first is None:
                return
            batch = [first]
            stop_after = False
            while len(batch) < _FINISH_BATCH_MAX:
                try:
                    item = self._completions.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop_after = True
                    break
                batch.append(item)
            self._write_finishes(batch)
            if stop_after:
                return

    def _write_finishes(self, batch: list[_Execution]) -> None:
        finishes = [self._finish_for(e) for e in batch]
        while True:
            try:
                applied = self.store.jobs_finish(finishes)
                break
            except StoreError:
                # Outcomes are never dropped: keep trying (the lease runs out meanwhile only if
                # the store stays away longer than lease_ttl_s; then the rescuer re-runs them).
                log.warning("worker.finish_failed id=%s", self.id, exc_info=True)
                if self._closing.wait(0.5):
                    return
        with self._lock:
            for execution in batch:
                self._executing.pop(execution.key, None)
            self._idle.notify_all()
        for execution, finish, ok in zip(batch, finishes, applied, strict=True):
            if ok:
                self.store.metrics.finished(execution.job.name, finish.status)
            log.log(
                logging.DEBUG if ok else logging.INFO,
                "job.finished id=%s status=%s applied=%s",
                execution.job.id,
                finish.status,
                ok,
            )

    # -- supervising ---------------------------------------------------------------------------

    def _supervise_loop(self) -> None:
        poll = self.settings.cancel_poll_s
        renew_every = self.settings.lease_ttl_s / 3
        next_renew = time.monotonic() + renew_every
        while not self._closing.is_set():
            with self._lock:
                live = [e for e in self._executing.values() if not e.done]
                owned = list(self._executing.values())
            now = time.monotonic()
            try:
                # Renew first, on its own schedule (a third of the lease), not at the next
                # cancel poll after it: with the poll at 0.5 s and a 2 s lease that rounded
                # renewals up to every 1 s, so a 1 s stall on a busy machine lost the lease
                # and the rescuer ran the job a second time beside the first.
                if now >= next_renew:
                    next_renew = now + renew_every
                    self.store.jobs_renew(
                        self.id, [e.key for e in owned], self.settings.lease_ttl_s
                    )
                self._time_out([e for e in live if e.deadline <= now and not e.timed_out])
                self._check_ownership(live)
                self._flush_progress(live)
            except AssayError:
                log.warning("worker.supervise_failed id=%s", self.id, exc_info=True)
            wake_at = [next_renew, *(e.deadline for e in live if not e.timed_out)]
            wait = min([poll, *(t - time.monotonic() for t in wake_at)])
            self._closing.wait(max(wait, 0.001))

    def _time_out(self, expired: list[_Execution]) -> None:
        if not expired:
            return
        finishes = []
        for e in expired:
            reason = f"timed out after {e.job.timeout:g}s"
            e.timed_out = True
            e.ctx.cancel(reason, timed_out=True)
            finishes.append(
                Finish(
                    job_id=e.job.id,
                    worker_id=self.id,
                    attempt=e.job.attempt,
                    status=JobStatus.TIMEOUT,
                    error=reason,
                    release_lock=False,  # the code may still be running; its lock stays
                    progress=e.ctx.last_progress,
                )
            )
        applied = self.store.jobs_finish(finishes)
        for e, ok in zip(expired, applied, strict=True):
            if ok:
                self.store.metrics.finished(e.job.name, JobStatus.TIMEOUT)

    def _check_ownership(self, live: list[_Execution]) -> None:
        if not live:
            return
        states = self.store.jobs_running_state([e.job.id for e in live])
        for e in live:
            state = states.get(e.job.id)
            if state is None:
                e.ctx.cancel("the job was deleted")
            elif state.status == JobStatus.CANCELED:
                e.ctx.cancel("canceled")
            elif (state.status, state.worker_id, state.attempt) != (
                JobStatus.RUNNING,
                self.id,
                e.job.attempt,
            ) and not e.timed_out:
                e.ctx.cancel(f"this execution no longer owns the job (now {state.status})")

    def _flush_progress(self, live: list[_Execution]) -> None:
        updates = {}
        for e in live:
            progress, log_tail = e.ctx.take_progress(), e.ctx.take_log_tail()
            if progress is not None or log_tail is not None:
                updates[e.job.id] = (progress, log_tail)
        self.store.jobs_set_progress(self.id, updates)

    # -- stopping ------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        grace_end = time.monotonic() + self.settings.shutdown_grace_s
        with self._lock:
            while (
                self._busy
                and not self._hurry.is_set()
                and (left := grace_end - time.monotonic()) > 0
            ):
                self._idle.wait(left)
            unfinished = [e for e in self._executing.values() if not e.done]
        if unfinished:
            # Hand back first: a cooperative job told to stop would otherwise report Cancelled,
            # and the completer could write CANCELED before the hand-back.
            try:
                handed = self.store.jobs_hand_back(self.id, [e.key for e in unfinished])
                log.info("worker.handed_back id=%s jobs=%s", self.id, handed)
            except AssayError:
                log.warning("worker.hand_back_failed id=%s", self.id, exc_info=True)
            for e in unfinished:
                e.ctx.cancel("worker shutting down")
        self._completions.put(None)
        for thread in self._threads:
            if thread.name == "assay-completer":
                thread.join()
        self._closing.set()
        if self._leadership is not None:
            self._leadership.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        for _ in range(self.concurrency):  # each job thread ends after its current job
            self._runnable.put(None)
        for ex in self._executors.values():
            ex.stop()

    def _spawn(self, name: str, target: object) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)
