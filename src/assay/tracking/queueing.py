"""A tracking client that queues writes and sends them in batches when flushed.

::

    with QueueingClient("http://localhost:8000", token=...) as client:
        run = client.create_run(experiment_id, name="sweep-1")   # a pending run id
        client.log_params(run, {"lr": 0.01})
        for step in range(1000):
            client.log_metrics(run, {"loss": loss(step)}, step=step)
        client.set_terminated(run)
    # flushed here (on a clean exit only)

Nothing is sent until :meth:`QueueingClient.flush`. A flush:

- cuts each run's queue into requests within :mod:`assay.tracking.limits`: params and tags in
  chunks of at most 100, each topped up with metrics to 1000 entities, then the remaining
  metrics 1000 at a time; ``log_inputs`` and ``set_terminated`` are sent where they were queued;
- sends one run's requests in order (a pending run's ``create_run`` first: later requests use
  the id it answers) and different runs in parallel on one thread pool shared by every client
  of the process (:data:`MAX_FLUSH_THREADS` threads);
- keeps sending after a failure and then raises one :class:`FlushError` listing every failed
  request. When ``create_run`` fails, the rest of that run fails without being sent.

Keys over 250 characters, param values over 6000 and tag values over 8000 are truncated when
queued, with one warning per key (event ``tracking.truncated``). Everything else a request would
be refused for (an empty key, a NaN metric, an unknown status) is an
:class:`InvalidRequestError` when queued, so one bad value cannot sink a whole batch.

Times default to the client's clock when queued, not when sent: a run starts when
``create_run`` is called, a metric is stamped when it is logged, a run ends at
``set_terminated``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple

import httpx

from assay.errors import (
    ConfigError,
    FlushError,
    InvalidRequestError,
    NotFoundError,
    WaitTimeoutError,
)
from assay.tracking import limits
from assay.tracking.model import Metric, RunInput, RunStatus
from assay.tracking.transport import Transport, open_transport

if TYPE_CHECKING:
    from assay.tracking.store import ParamValue  # the store (SQLAlchemy) loads on use only

__all__ = [
    "MAX_FLUSH_THREADS",
    "PENDING_PREFIX",
    "FailedOperation",
    "FlushHandle",
    "QueueingClient",
]

log = logging.getLogger("assay.tracking")

MAX_FLUSH_THREADS = 10
"""Threads of the pool every queueing client of a process sends on: at most this many
requests are in flight at once, however many clients there are."""
PENDING_PREFIX = "pending-"
"""How the run ids :meth:`QueueingClient.create_run` returns start."""


class _SharedPool:
    """The process's flush pool, made on first use and forgotten in a forked child (whose copy
    has no threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(MAX_FLUSH_THREADS, "assay-flush")
            return self._pool

    def forget(self) -> None:
        self._lock = threading.Lock()
        self._pool = None


_POOL = _SharedPool()
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_POOL.forget)


class FailedOperation(NamedTuple):
    """One request of a flush that failed: the run id the caller used, what it was (e.g.
    ``log_batch (2 params, 10 metrics)``), why, and the error (None when it was not sent)."""

    run_id: str
    op: str
    reason: str
    error: Exception | None = None


# -- what is queued, and what is sent ---------------------------------------------------------


@dataclass(frozen=True)
class _CreateRun:
    experiment_id: str
    name: str | None
    start_time: int
    tags: dict[str, str]


@dataclass(frozen=True)
class _Params:
    items: list[tuple[str, str]]


@dataclass(frozen=True)
class _Tags:
    items: list[tuple[str, str]]


@dataclass(frozen=True)
class _Metrics:
    metrics: list[Metric]


@dataclass(frozen=True)
class _Inputs:
    inputs: list[RunInput]


@dataclass(frozen=True)
class _Terminate:
    status: RunStatus
    end_time: int


@dataclass(frozen=True)
class _Batch:
    metrics: list[Metric]
    params: dict[str, str]
    tags: dict[str, str]


_Op = _CreateRun | _Params | _Tags | _Metrics | _Inputs | _Terminate
_Request = _CreateRun | _Batch | _Inputs | _Terminate


def _plan(ops: Sequence[_Op]) -> list[_Request]:
    """One run's queued operations as requests within the limits, in order."""
    requests: list[_Request] = []
    entries: list[tuple[bool, str, str]] = []  # (is a param, key, value), in queued order
    metrics: list[Metric] = []

    def cut() -> None:
        requests.extend(_batches(entries, metrics))
        entries.clear()
        metrics.clear()

    for op in ops:
        if isinstance(op, _Params):
            entries.extend((True, key, value) for key, value in op.items)
        elif isinstance(op, _Tags):
            entries.extend((False, key, value) for key, value in op.items)
        elif isinstance(op, _Metrics):
            metrics.extend(op.metrics)
        elif isinstance(op, _CreateRun):
            cut()
            tags = list(op.tags.items())
            first = dict(tags[: limits.MAX_PARAMS_TAGS_PER_BATCH])
            requests.append(_CreateRun(op.experiment_id, op.name, op.start_time, first))
            entries.extend((False, key, value) for key, value in tags[len(first) :])
        elif isinstance(op, _Inputs):
            cut()
            inputs = list(op.inputs)
            last = requests[-1] if requests else None
            if isinstance(last, _Inputs):  # top up the previous log_inputs
                room = limits.MAX_INPUTS_PER_REQUEST - len(last.inputs)
                last.inputs.extend(inputs[:room])
                inputs = inputs[room:]
            for start in range(0, len(inputs), limits.MAX_INPUTS_PER_REQUEST):
                requests.append(_Inputs(inputs[start : start + limits.MAX_INPUTS_PER_REQUEST]))
        else:
            cut()
            requests.append(op)
    cut()
    return requests


def _batches(entries: Sequence[tuple[bool, str, str]], metrics: Sequence[Metric]) -> list[_Batch]:
    """Params and tags in chunks of at most 100, each topped up with metrics to 1000 entities,
    then the other metrics 1000 at a time. A param queued again with another value starts a
    new request (where the store refuses it, as it would have unqueued); the same value again
    is dropped; a tag set again keeps its last value."""
    batches: list[_Batch] = []
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    taken = 0

    def cut() -> None:
        nonlocal taken
        room = min(
            limits.MAX_METRICS_PER_BATCH,
            limits.MAX_ENTITIES_PER_BATCH - len(params) - len(tags),
        )
        batches.append(_Batch(list(metrics[taken : taken + room]), dict(params), dict(tags)))
        taken = min(len(metrics), taken + room)
        params.clear()
        tags.clear()

    for is_param, key, value in entries:
        full = len(params) + len(tags) >= limits.MAX_PARAMS_TAGS_PER_BATCH
        if is_param:
            if key in params:
                if params[key] == value:
                    continue
                cut()
            elif full:
                cut()
            params[key] = value
        else:
            if key not in tags and full:
                cut()
            tags[key] = value
    if params or tags:
        cut()
    while taken < len(metrics):
        cut()
    return batches


def _describe(request: _Request) -> str:
    if isinstance(request, _CreateRun):
        return "create_run"
    if isinstance(request, _Batch):
        parts = [
            _count(len(request.params), "param"),
            _count(len(request.metrics), "metric"),
            _count(len(request.tags), "tag"),
        ]
        return f"log_batch ({', '.join(p for p in parts if p)})"
    if isinstance(request, _Inputs):
        return f"log_inputs ({_count(len(request.inputs), 'input')})"
    return f"set_terminated ({request.status.value})"


def _count(n: int, noun: str) -> str:
    return "" if n == 0 else f"{n} {noun}{'' if n == 1 else 's'}"


def _send(transport: Transport, run_id: str, request: _Batch | _Inputs | _Terminate) -> None:
    if isinstance(request, _Batch):
        transport.log_batch(run_id, request.metrics, request.params, request.tags)
    elif isinstance(request, _Inputs):
        transport.log_inputs(run_id, request.inputs)
    else:
        transport.update_run(run_id, request.status, request.end_time)


def _reason(exc: Exception) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- flushing ---------------------------------------------------------------------------------


class FlushHandle:
    """One flush on its way. :meth:`wait` blocks until every request of it was sent or failed,
    then raises :class:`FlushError` listing the failures (if any)."""

    def __init__(self, runs: int, requests: int) -> None:
        self._lock = threading.Lock()
        self._remaining = runs
        self._requests = requests
        self._failures: list[tuple[int, int, FailedOperation]] = []
        self._done = threading.Event()
        if runs == 0:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    @property
    def failures(self) -> list[FailedOperation]:
        """The failed requests so far, by the run's place in the flush, then in run order."""
        with self._lock:
            return [failure for _, _, failure in sorted(self._failures, key=lambda f: f[:2])]

    def wait(self, timeout: float | None = None) -> None:
        """Block until done; :class:`WaitTimeoutError` after ``timeout`` seconds,
        :class:`FlushError` if any request failed."""
        if not self._done.wait(timeout):
            raise WaitTimeoutError(f"flush still sending after {timeout}s")
        failures = self.failures
        if failures:
            lines = "".join(f"\n- run {f.run_id}: {f.op}: {f.reason}" for f in failures)
            raise FlushError(
                f"{len(failures)} of {self._requests} queued tracking requests failed:{lines}",
                failures,
            )

    def _run_done(self, order: int, failures: Sequence[tuple[int, FailedOperation]]) -> bool:
        """Record one run's outcome; whether the flush is now done."""
        with self._lock:
            self._failures.extend((order, index, failure) for index, failure in failures)
            self._remaining -= 1
            done = self._remaining == 0
        if done:
            self._done.set()
        return done

    def __repr__(self) -> str:
        state = "done" if self.done() else "sending"
        return f"<FlushHandle {state}, {self._requests} requests>"


@dataclass
class _Segment:
    """What one flush sends for one run."""

    handle: FlushHandle
    order: int
    requests: list[_Request]


@dataclass
class _Lane:
    """One run's requests, sent in order by at most one pool thread at a time."""

    key: str
    real_id: str | None
    create_failure: str | None = None
    segments: deque[_Segment] = field(default_factory=deque)
    active: bool = False


class QueueingClient:
    """Queues tracking writes and sends them, batched, on :meth:`flush`.

    ``target`` is a server URL (``http(s)://``; ``token``, ``timeout`` and ``http_transport``
    apply), a store URI (opened directly, migrated), or a :class:`Transport`, which stays the
    caller's to close. Thread-safe. As a context manager it flushes on a clean exit only, and
    closes either way.
    """

    def __init__(
        self,
        target: str | Transport,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        http_transport: httpx.BaseTransport | None = None,
    ) -> None:
        if isinstance(target, str):
            self.transport = open_transport(
                target, token=token, timeout=timeout, http_transport=http_transport
            )
            self._owns_transport = True
        else:
            if token is not None or http_transport is not None:
                raise ConfigError("token and http_transport are for a URL, not a Transport")
            self.transport = target
            self._owns_transport = False
        self._lock = threading.Lock()
        self._queued: dict[str, list[_Op]] = {}
        self._lanes: dict[str, _Lane] = {}
        self._aliases: dict[str, str] = {}  # real id -> the pending id it was created for
        self._inflight: set[FlushHandle] = set()
        self._warned: set[tuple[str, str]] = set()
        self._closed = False

    def __enter__(self) -> QueueingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.flush(synchronous=True)
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"QueueingClient({self.transport!r})"

    # -- queueing ------------------------------------------------------------------------------

    def create_run(
        self,
        experiment_id: str,
        name: str | None = None,
        start_time: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Queue a new run; a pending run id for later calls (see :meth:`resolve`).
        ``start_time`` defaults to now."""
        if not isinstance(experiment_id, str) or not experiment_id:
            raise InvalidRequestError("experiment_id must be a non-empty string")
        if name is not None:
            limits.check_name("run name", name)
        limits.check_time("start_time", start_time)
        op = _CreateRun(
            experiment_id,
            name,
            _now_ms() if start_time is None else start_time,
            dict(self._tag_items(tags or {})),
        )
        pending = f"{PENDING_PREFIX}{uuid.uuid4().hex}"
        with self._lock:
            self._check_open()
            self._lanes[pending] = _Lane(pending, None)
            self._queued[pending] = [op]
        return pending

    def log_params(self, run_id: str, params: Mapping[str, ParamValue]) -> None:
        """Queue params (numbers and booleans are stored as their ``str``)."""
        items = []
        for name, value in params.items():
            text = value if isinstance(value, str) else str(value)
            key, text = self._truncate("param", name, text, limits.MAX_PARAM_VALUE_CHARS)
            limits.check_batch((), {key: text}, {})
            items.append((key, text))
        self._enqueue(run_id, _Params(items))

    def log_metrics(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        *,
        step: int = 0,
        timestamp_ms: int | None = None,
    ) -> None:
        """Queue one value per metric key at ``step``; ``timestamp_ms`` defaults to now."""
        stamp = _now_ms() if timestamp_ms is None else timestamp_ms
        queued = []
        for name, value in metrics.items():
            key, _ = self._truncate("metric", name, "", 0)
            metric = Metric(key, value, step, stamp)
            limits.check_batch([metric], {}, {})
            queued.append(metric)
        self._enqueue(run_id, _Metrics(queued))

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Queue tags (a tag set again keeps the last value)."""
        self._enqueue(run_id, _Tags(self._tag_items(tags)))

    def log_inputs(self, run_id: str, inputs: Sequence[RunInput]) -> None:
        """Queue datasets the run read."""
        items = list(inputs)
        for item in items:
            limits.check_inputs([item])
        self._enqueue(run_id, _Inputs(items))

    def set_terminated(
        self,
        run_id: str,
        status: RunStatus | str = RunStatus.FINISHED,
        end_time: int | None = None,
    ) -> None:
        """Queue the end of a run: FINISHED, FAILED or KILLED; ``end_time`` defaults to now."""
        try:
            parsed = RunStatus(status)
        except ValueError:
            parsed = None
        if parsed is None or not parsed.is_terminal:
            raise InvalidRequestError(
                f"set_terminated needs FINISHED, FAILED or KILLED, not {status!r}"
            )
        limits.check_time("end_time", end_time)
        self._enqueue(run_id, _Terminate(parsed, _now_ms() if end_time is None else end_time))

    # -- flushing ------------------------------------------------------------------------------

    def flush(self, synchronous: bool = True) -> FlushHandle:
        """Send everything queued. Synchronously: return when all of it was sent, or raise
        :class:`FlushError` listing what failed. Otherwise: return at once with a
        :class:`FlushHandle` to :meth:`~FlushHandle.wait` on."""
        to_start: list[_Lane] = []
        with self._lock:
            self._check_open()
            queued, self._queued = self._queued, {}
            # Planned and appended under the lock, so that flushes are sent in flush order.
            plans = []
            for key, ops in queued.items():
                lane = self._lanes.get(key)
                if lane is None:
                    lane = self._lanes[key] = _Lane(key, key)
                plans.append((lane, _plan(ops)))
            handle = FlushHandle(len(plans), sum(len(requests) for _, requests in plans))
            if plans:
                self._inflight.add(handle)
            for order, (lane, requests) in enumerate(plans):
                lane.segments.append(_Segment(handle, order, requests))
                if not lane.active:
                    lane.active = True
                    to_start.append(lane)
        for lane in to_start:
            try:
                _POOL.get().submit(self._drain, lane)
            except RuntimeError:  # the interpreter is shutting down: send from here
                self._drain(lane)
        if synchronous:
            handle.wait()
        return handle

    def resolve(self, run_id: str) -> str:
        """The real id of a pending run once its ``create_run`` was sent (any other id as is);
        :class:`NotFoundError` if it was not (yet) created."""
        if not run_id.startswith(PENDING_PREFIX):
            return run_id
        with self._lock:
            lane = self._lanes.get(run_id)
        if lane is None:
            raise NotFoundError(f"unknown pending run id {run_id!r}")
        if lane.real_id is None:
            why = lane.create_failure or "its create_run was not sent yet"
            raise NotFoundError(f"run {run_id} was not created: {why}")
        return lane.real_id

    def close(self) -> None:
        """Wait for flushes on their way, then close the transport (if this client opened it).
        Whatever is still queued is dropped, with a warning."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            dropped = sum(len(ops) for ops in self._queued.values())
            self._queued.clear()
            inflight = list(self._inflight)
        if dropped:
            log.warning("tracking.dropped operations=%d: closed without a flush", dropped)
        for handle in inflight:
            handle._done.wait()
        if self._owns_transport:
            self.transport.close()

    # -- internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidRequestError("this QueueingClient is closed")

    def _enqueue(self, run_id: str, op: _Op) -> None:
        if not isinstance(run_id, str) or not run_id:
            raise InvalidRequestError(f"run_id must be a non-empty string, not {run_id!r}")
        with self._lock:
            self._check_open()
            key = self._aliases.get(run_id, run_id)
            if key.startswith(PENDING_PREFIX) and key not in self._lanes:
                raise InvalidRequestError(
                    f"unknown pending run id {run_id!r}: not returned by this client's create_run"
                )
            self._queued.setdefault(key, []).append(op)

    def _tag_items(self, tags: Mapping[str, str]) -> list[tuple[str, str]]:
        items = []
        for name, value in tags.items():
            key, text = self._truncate("tag", name, value, limits.MAX_TAG_VALUE_CHARS)
            limits.check_tags({key: text})
            items.append((key, text))
        return items

    def _truncate(self, kind: str, key: str, value: str, value_limit: int) -> tuple[str, str]:
        """``key`` and ``value`` cut to the limits (a cut key loses trailing whitespace, which
        the store refuses); one warning per ``kind`` and original key."""
        cut_key = isinstance(key, str) and len(key) > limits.MAX_KEY_CHARS
        cut_value = isinstance(value, str) and len(value) > value_limit
        if not (cut_key or cut_value):
            return key, value
        what = []
        if cut_key:
            what.append(f"key of {len(key)} characters to {limits.MAX_KEY_CHARS}")
            key_out = key[: limits.MAX_KEY_CHARS].rstrip()
        else:
            key_out = key
        if cut_value:
            what.append(f"value of {len(value)} characters to {value_limit}")
            value = value[:value_limit]
        with self._lock:
            first = (kind, key) not in self._warned
            self._warned.add((kind, key))
        if first:
            text = str(key)
            shown = repr(text[:40]) + ("…" if len(text) > 40 else "")
            log.warning("tracking.truncated %s %s: %s", kind, shown, " and ".join(what))
        return key_out, value

    def _drain(self, lane: _Lane) -> None:
        """Send a run's segments, oldest first, until none is left."""
        while True:
            with self._lock:
                if not lane.segments:
                    lane.active = False
                    return
                segment = lane.segments.popleft()
            failures: list[tuple[int, FailedOperation]] = []
            try:
                self._send_segment(lane, segment, failures)
            finally:
                if segment.handle._run_done(segment.order, failures):
                    with self._lock:
                        self._inflight.discard(segment.handle)

    def _send_segment(
        self, lane: _Lane, segment: _Segment, failures: list[tuple[int, FailedOperation]]
    ) -> None:
        for index, request in enumerate(segment.requests):
            op = _describe(request)
            if isinstance(request, _CreateRun):
                try:
                    real_id = self.transport.create_run(
                        request.experiment_id, request.name, request.start_time, request.tags
                    )
                except Exception as exc:
                    lane.create_failure = f"create_run failed: {_reason(exc)}"
                    failures.append((index, FailedOperation(lane.key, op, _reason(exc), exc)))
                    continue
                with self._lock:
                    lane.real_id = real_id
                    self._aliases[real_id] = lane.key
                continue
            if lane.real_id is None:
                why = lane.create_failure or "its create_run was never sent"
                reason = f"not sent: run {lane.key} was not created ({why})"
                failures.append((index, FailedOperation(lane.key, op, reason)))
                continue
            try:
                _send(self.transport, lane.real_id, request)
            except Exception as exc:
                failures.append((index, FailedOperation(lane.key, op, _reason(exc), exc)))
