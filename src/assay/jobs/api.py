"""What a :class:`~assay.jobs.backend.Backend` (a store) and a :class:`~assay.client.Client`
(a server) both offer: the :class:`JobsAPI` protocol, waiting on a job, and finding a job by a
prefix of its id (as git finds a commit).

This module imports nothing heavy: the HTTP client uses it without the store's dependencies.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, Self, TypeVar

from assay.errors import InvalidRequestError, NotFoundError, WaitTimeoutError
from assay.jobs.model import Attempt, Job, JobPage, JobStatus

__all__ = [
    "INTERNAL_PREFIX",
    "MIN_ID_PREFIX",
    "JobsAPI",
    "check_id_prefix",
    "find_job",
    "is_internal",
    "one_or_many",
    "wait_for",
]

INTERNAL_PREFIX = "assay."
"""Job names starting with this are assay's own jobs (online scoring): left out of job lists
unless asked for (``include_internal``, ``--all``) or named, and out of "did you mean" hints."""

MIN_ID_PREFIX = 4
"""The shortest id prefix looked up (as git's shortest abbreviation)."""

S = TypeVar("S", bound=str)

_ID_PREFIX = re.compile(r"^[0-9a-f-]+$")
_ID_LENGTH = 36  # str(uuid4())
_CANDIDATES_SHOWN = 10


def is_internal(name: str) -> bool:
    """Whether ``name`` is one of assay's own jobs (see :data:`INTERNAL_PREFIX`)."""
    return name.startswith(INTERNAL_PREFIX)


def one_or_many(value: S | Sequence[S] | None) -> list[S]:
    """A search filter given as one value, several or none (``name="a"``, ``name=["a", "b"]``)
    as a list."""
    return [value] if isinstance(value, str) else list(value or [])


def check_id_prefix(prefix: str) -> str:
    """``prefix`` as looked up (lower case); :class:`InvalidRequestError` if it cannot start a
    job id: ids are UUIDs, so hex digits and dashes, at least :data:`MIN_ID_PREFIX` of them."""
    text = prefix.strip().lower()
    if len(text) < MIN_ID_PREFIX or not _ID_PREFIX.match(text):
        raise InvalidRequestError(
            f"id_prefix {prefix!r} must be at least {MIN_ID_PREFIX} hex digits of a job id"
        )
    return text


class JobsAPI(Protocol):
    """What :func:`assay.connect` returns: a :class:`~assay.jobs.backend.Backend` on a store,
    or an :class:`assay.client.Client` of a server. Both have these methods and raise the same
    errors."""

    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...
    def close(self) -> None: ...
    def submit(
        self,
        name: str | Callable[..., Any],
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Job: ...
    def submit_many(
        self,
        name: str | Callable[..., Any],
        params_list: Iterable[dict[str, Any]],
        *,
        timeout: float | None = None,
    ) -> list[Job]: ...
    def get(self, job_id: str) -> Job: ...
    def attempts(self, job_id: str) -> list[Attempt]: ...
    def search(
        self,
        *,
        name: str | Sequence[str] | None = None,
        status: str | JobStatus | Sequence[str | JobStatus] | None = None,
        owner: str | None = None,
        limit: int = 100,
        page_token: str | None = None,
        id_prefix: str | None = None,
        include_internal: bool = False,
    ) -> JobPage: ...
    def cancel(self, job_id: str) -> Job: ...
    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        poll_s: float = ...,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job: ...


def find_job(api: JobsAPI, id_or_prefix: str) -> Job:
    """The job whose id is ``id_or_prefix``, or the only one whose id starts with it.

    :class:`NotFoundError` when none matches; :class:`InvalidRequestError` naming the
    candidates when several do. Internal jobs count (an id is asked for explicitly)."""
    try:
        return api.get(id_or_prefix)
    except NotFoundError as exc:
        text = id_or_prefix.strip().lower()
        if len(text) >= _ID_LENGTH or not _ID_PREFIX.match(text):
            raise
        if len(text) < MIN_ID_PREFIX:
            raise NotFoundError(
                f"{exc}; give at least {MIN_ID_PREFIX} characters to look an id up by prefix"
            ) from None
    page = api.search(id_prefix=text, include_internal=True, limit=_CANDIDATES_SHOWN + 1)
    if not page.jobs:
        raise NotFoundError(f"no job id starts with {id_or_prefix!r}")
    if len(page.jobs) > 1:
        shown = page.jobs[:_CANDIDATES_SHOWN]
        listed = ", ".join(f"{j.id} ({j.name})" for j in shown)
        more = " and more" if len(page.jobs) > len(shown) else ""
        raise InvalidRequestError(
            f"job id prefix {id_or_prefix!r} is ambiguous: {listed}{more}; give more of the id"
        )
    return page.jobs[0]


def wait_for(
    get: Callable[[str], Job],
    job_id: str,
    timeout: float | None,
    *,
    poll_s: float,
    on_update: Callable[[Job], None] | None = None,
) -> Job:
    """Poll ``get(job_id)`` until the job is finished (the ``wait`` of the direct backend and
    of the HTTP client); :class:`WaitTimeoutError` after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = get(job_id)
        if on_update is not None:
            on_update(job)
        if job.status.is_terminal:
            return job
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeoutError(f"job {job_id} still {job.status} after {timeout}s")
        time.sleep(poll_s)
