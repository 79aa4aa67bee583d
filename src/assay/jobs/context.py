"""What a running job can see and do: its own row, a cancel flag and a progress report."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from assay.errors import AssayError, JobCancelled
from assay.jobs.model import Job, Progress

if TYPE_CHECKING:
    from assay.config import Settings
    from assay.jobs.store import JobStore

__all__ = ["LOG_TAIL_CHARS", "JobContext", "Resources", "current_job"]

T = TypeVar("T")

LOG_TAIL_CHARS = 8192
"""How much of a job's output (the end of it) is kept on the job as ``log_tail``."""

_current: ContextVar[JobContext | None] = ContextVar("assay_current_job", default=None)


class Resources:
    """What the jobs of one backend's workers share across executions (assay's own online
    scoring keeps its engine here: a thread pool and the scorers it has built). Each is made
    by its factory on first use and closed (when it has ``close()``) with the backend."""

    def __init__(self) -> None:
        self._made: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: str, factory: Callable[[], T]) -> T:
        with self._lock:
            if key not in self._made:
                self._made[key] = factory()
            made: T = self._made[key]
            return made

    def close(self) -> None:
        with self._lock:
            made, self._made = list(self._made.values()), {}
        for value in made:
            close = getattr(value, "close", None)
            if callable(close):
                close()


class JobContext:
    """Handed to the executor for one execution of one job.

    Cancellation and timeouts set :attr:`cancelled`; code that runs in the worker process (the
    ``inline`` executor) should call :meth:`check_cancelled` at safe points. Progress is kept in
    memory and written to the store by the worker at its next cancel poll.

    :attr:`api_token` is this execution's job token for calling the API back (it may read its
    own job and use the scopes its ``@job(token_scopes=...)`` names, until it expires);
    :attr:`api_url` is where the API is, when the worker knows it. With ``mint_token`` the
    token is minted on first use instead (most jobs never call the API back).

    :attr:`store`, :attr:`settings` and :attr:`resources` are the worker's, for assay's own
    inline jobs (online scoring) that work on the database directly; None outside a worker.
    """

    def __init__(
        self,
        job: Job,
        *,
        api_token: str | None = None,
        api_url: str | None = None,
        store: JobStore | None = None,
        settings: Settings | None = None,
        resources: Resources | None = None,
        mint_token: Callable[[], str | None] | None = None,
    ) -> None:
        self.job = job
        self._api_token = api_token
        self._mint_token = mint_token
        self.api_url = api_url
        self.store = store
        self.settings = settings
        self.resources = resources
        self._cancel = threading.Event()
        self._reason: str | None = None
        self._timed_out = False
        self._progress: Progress | None = None
        self._progress_dirty = False
        self._log_tail = ""
        self._log_dirty = False
        self._lock = threading.Lock()

    @property
    def api_token(self) -> str | None:
        mint = self._mint_token
        if mint is not None:
            token = mint()
            with self._lock:
                if self._mint_token is not None:
                    self._api_token, self._mint_token = token, None
        return self._api_token

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def attempt(self) -> int:
        return self.job.attempt

    def api_env(self) -> dict[str, str]:
        """``ASSAY_API_TOKEN`` and ``ASSAY_API_URL`` (those that are set), for a job's process."""
        env = {"ASSAY_API_TOKEN": self.api_token, "ASSAY_API_URL": self.api_url}
        return {key: value for key, value in env.items() if value is not None}

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def cancel_reason(self) -> str | None:
        return self._reason

    @property
    def timed_out(self) -> bool:
        return self._timed_out

    def cancel(self, reason: str, *, timed_out: bool = False) -> None:
        """Set the cancel flag (first reason wins)."""
        with self._lock:
            if not self._cancel.is_set():
                self._reason = reason
                self._timed_out = timed_out
                self._cancel.set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block until cancelled (True) or ``timeout`` passes (False)."""
        return self._cancel.wait(timeout)

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if this job was cancelled or timed out."""
        if self._cancel.is_set():
            raise JobCancelled(self._reason or "cancelled")

    def progress(
        self, completed: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress (``completed`` of ``total``); readers see it within a cancel poll."""
        with self._lock:
            self._progress = Progress(completed=completed, total=total, message=message)
            self._progress_dirty = True

    @property
    def last_progress(self) -> Progress | None:
        """The latest progress reported (flushed or not): the worker writes it with the job's
        result, so a finished job shows where it ended, not the last periodic flush."""
        with self._lock:
            return self._progress

    def take_progress(self) -> Progress | None:
        """The progress reported since the last call, if any (used by the worker)."""
        with self._lock:
            if not self._progress_dirty:
                return None
            self._progress_dirty = False
            return self._progress

    def append_log(self, text: str) -> None:
        """Add captured output (used by executors that capture stdout/stderr)."""
        if not text:
            return
        with self._lock:
            self._log_tail = (self._log_tail + text)[-LOG_TAIL_CHARS:]
            self._log_dirty = True

    @property
    def log_tail(self) -> str | None:
        return self._log_tail or None

    def take_log_tail(self) -> str | None:
        """The log tail if output arrived since the last call (used by the worker)."""
        with self._lock:
            if not self._log_dirty:
                return None
            self._log_dirty = False
            return self._log_tail

    def activate(self) -> object:
        """Make this the context :func:`current_job` returns in this thread; returns a token."""
        return _current.set(self)

    @staticmethod
    def deactivate(token: object) -> None:
        _current.reset(token)  # type: ignore[arg-type]


def current_job() -> JobContext:
    """The context of the job running in this thread; an error outside a job."""
    ctx = _current.get()
    if ctx is None:
        raise AssayError("current_job() called outside a running job")
    return ctx
