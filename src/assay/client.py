"""The HTTP client of an ``assay server``, with the same job methods as the direct backend.

``Client(url, token=...)`` (or ``assay.connect("http://…")``) submits, reads, searches, cancels
and waits on jobs over the REST API, and registers online scorers (``put_scorer`` and friends,
which :mod:`assay.scoring.scorers` wraps). Errors come back as the same :class:`~assay.AssayError`
subclasses the direct backend raises: the server answers ``{"error": {"code", "message"}}`` and
the code names the class. A server that cannot be reached, or that fails (5xx), is a
:class:`~assay.StoreError` naming the URL.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from assay.errors import (
    AssayError,
    ConfigError,
    InvalidRequestError,
    StoreError,
)
from assay.jobs.api import one_or_many, wait_for
from assay.jobs.model import Attempt, Job, JobPage, JobStatus, Progress
from assay.jobs.registry import JobSpec

__all__ = ["Client", "error_class"]

_RETRIES = 2
"""Extra attempts after a transport error: any, for a GET; for other methods only a connection
that was never made."""
_RETRY_BACKOFF_S = 0.1


def error_class(code: str) -> type[AssayError]:
    """The :class:`AssayError` subclass whose ``code`` is ``code``; :class:`AssayError` if none.

    Read from the exception tree itself; a class that inherits its parent's code is not a
    separate entry (the parent wins).
    """
    queue: list[type[AssayError]] = [AssayError]
    while queue:
        cls = queue.pop(0)
        if vars(cls).get("code") == code:
            return cls
        queue.extend(cls.__subclasses__())
    return AssayError


class Client:
    """Jobs on an assay server at ``url``. Close it (or use ``with``) when done.

    ``token`` is sent as ``Authorization: Bearer <token>``; the client never reads it from the
    environment. ``timeout`` is seconds per HTTP request. ``transport`` replaces httpx's (for
    tests, proxies or custom TLS).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.lower().startswith(("http://", "https://")):
            raise ConfigError(f"server URL must start with http:// or https://, not {url!r}")
        if timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds: {timeout}")
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        self._http.close()

    # -- jobs ----------------------------------------------------------------------------------

    def submit(
        self,
        name: str | Callable[..., Any],
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Job:
        """Queue one job; unknown names and params that do not bind fail here, not later."""
        body: dict[str, Any] = {"name": _job_name(name), "params": params or {}}
        if timeout is not None:
            body["timeout"] = timeout
        return self._job(self._request("POST", "/api/v1/jobs", json=body))

    def submit_many(
        self,
        name: str | Callable[..., Any],
        params_list: Iterable[dict[str, Any]],
        *,
        timeout: float | None = None,
    ) -> list[Job]:
        """Queue many jobs of one name in one request and one transaction (all or none)."""
        items = list(params_list)
        if not items:
            return []
        body: dict[str, Any] = {"name": _job_name(name), "params_list": items}
        if timeout is not None:
            body["timeout"] = timeout
        return self._jobs(self._request("POST", "/api/v1/jobs:batch", json=body))

    def get(self, job_id: str) -> Job:
        return self._job(self._request("GET", f"/api/v1/jobs/{_segment(job_id)}"))

    def attempts(self, job_id: str) -> list[Attempt]:
        """The job's attempt history, as :meth:`assay.Backend.attempts`."""
        data = self._request("GET", f"/api/v1/jobs/{_segment(job_id)}/attempts")
        out = []
        for item in data["attempts"]:
            finished = _parse_time(item["finished_at"])
            assert finished is not None  # the server always sends it
            out.append(
                Attempt(
                    attempt=item["attempt"],
                    worker_id=item["worker_id"],
                    status=item["status"],
                    error=item["error"],
                    started_at=_parse_time(item["started_at"]),
                    finished_at=finished,
                )
            )
        return out

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
    ) -> JobPage:
        """Jobs newest first, filtered by name(s), status(es), owner and a prefix of the id,
        one page at a time; assay's own jobs only with ``include_internal`` (or named).

        A server with auth on shows a user token only its own jobs; ``owner`` is for admins.
        """
        query: list[tuple[str, str | int]] = [("name", n) for n in one_or_many(name)]
        query += [("status", str(s).upper()) for s in one_or_many(status)]
        if owner is not None:
            query.append(("owner", owner))
        query.append(("limit", limit))
        if page_token is not None:
            query.append(("page_token", page_token))
        if id_prefix is not None:
            query.append(("id_prefix", id_prefix))
        if include_internal:
            query.append(("include_internal", "true"))
        data = self._request("GET", "/api/v1/jobs", params=query)
        token = data.get("next_page_token")
        return JobPage(jobs=self._jobs(data), next_page_token=str(token) if token else None)

    def cancel(self, job_id: str) -> Job:
        """Cancel a PENDING or RUNNING job; a finished job is returned unchanged."""
        return self._job(self._request("POST", f"/api/v1/jobs/{_segment(job_id)}/cancel"))

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        poll_s: float = 0.2,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Block until the job is finished; ``on_update`` sees every poll (for progress)."""
        return wait_for(self.get, job_id, timeout, poll_s=poll_s, on_update=on_update)

    # -- scorers -------------------------------------------------------------------------------

    def put_scorer(
        self,
        experiment_id: str,
        name: str,
        *,
        kind: str,
        definition: Mapping[str, Any],
        level: str = "trace",
        sample_rate: float = 1.0,
        filter_string: str | None = None,
    ) -> dict[str, Any]:
        """Register (or replace, which resumes) a scorer; the server checks the definition and
        filter first and answers the scorer (``ScorerOut``) with its definition normalised."""
        body = {
            "scorer": {"kind": kind, "level": level, "definition": dict(definition)},
            "sample_rate": sample_rate,
            "filter_string": filter_string,
        }
        return self._request("PUT", _scorer_path(experiment_id, name), json=body)

    def get_scorer(self, experiment_id: str, name: str) -> dict[str, Any]:
        return self._request("GET", _scorer_path(experiment_id, name))

    def list_scorers(self, experiment_id: str) -> list[dict[str, Any]]:
        data = self._request("GET", f"/api/v1/experiments/{_segment(experiment_id)}/scorers")
        return self._list(data, "scorers")

    def set_scorer_status(self, experiment_id: str, name: str, status: str) -> dict[str, Any]:
        """``ACTIVE`` (resume), ``PAUSED`` (keep queuing, stop scoring) or ``STOPPED``."""
        path = _scorer_path(experiment_id, name)
        return self._request("PATCH", path, json={"status": status})

    def delete_scorer(self, experiment_id: str, name: str) -> None:
        """Delete a scorer and what it has queued; its assessments stay."""
        self.request("DELETE", _scorer_path(experiment_id, name))

    def backfill_scorer(
        self, experiment_id: str, name: str, *, start_ms: int, end_ms: int, dry_run: bool = False
    ) -> dict[str, Any]:
        """Score past traces started in ``[start_ms, end_ms)``; with ``dry_run`` only count
        them: ``{count, examined, estimated_tokens, cap, over_cap, job_id}``."""
        body = {"start": start_ms, "end": end_ms, "dry_run": dry_run}
        return self._request("POST", f"{_scorer_path(experiment_id, name)}/backfill", json=body)

    def trace_scoring(self, trace_id: str) -> list[dict[str, Any]]:
        """The decision log of a trace: per scorer, what online scoring did with it and why."""
        data = self._request("GET", f"/api/v1/traces/{_segment(trace_id)}/scoring")
        return self._list(data, "decisions")

    def _list(self, data: dict[str, Any], key: str) -> list[dict[str, Any]]:
        items = data.get(key)
        if not isinstance(items, list):
            raise StoreError(f"the assay server at {self.url} answered without a {key!r} list")
        return items

    # -- HTTP ----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One API call answered with a JSON object."""
        data = self.request(method, path, **kwargs)
        if not isinstance(data, dict):
            raise StoreError(
                f"the assay server at {self.url} answered {method} {path} without a JSON object"
            )
        return data

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call to any API path: the JSON answered (None for an empty answer), or the
        mapped :class:`AssayError`.

        GETs are retried after transport errors; other methods only when the connection was
        never made (so the request was not sent).
        """
        retryable: tuple[type[httpx.HTTPError], ...] = (
            (httpx.TransportError,)
            if method == "GET"
            else (httpx.ConnectError, httpx.ConnectTimeout)
        )
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
                break
            except retryable as exc:
                if attempt >= _RETRIES:
                    raise self._unreachable(exc) from exc
                time.sleep(_RETRY_BACKOFF_S * 2**attempt)
                attempt += 1
            except httpx.HTTPError as exc:
                raise self._unreachable(exc) from exc
        data = None
        if response.content:
            try:
                data = response.json()
            except ValueError:
                data = None
        if response.is_success:
            return data
        raise self._error(response, data)

    def _unreachable(self, exc: httpx.HTTPError) -> StoreError:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, httpx.TimeoutException):
            reason = f"no answer within the client timeout ({type(exc).__name__})"
        return StoreError(f"cannot reach the assay server at {self.url}: {reason}")

    def _error(self, response: httpx.Response, data: Any) -> AssayError:
        status = response.status_code
        body = data.get("error") if isinstance(data, dict) else None
        if isinstance(body, dict) and isinstance(body.get("code"), str):
            code = body["code"]
            message = str(body.get("message") or code)
        else:
            code = ""
            message = f"HTTP {status} {response.reason_phrase}".strip()
        cls = error_class(code) if code else AssayError
        if status >= 500:
            if not issubclass(cls, StoreError):
                cls = StoreError
            first = (message.strip().splitlines() or [code])[0]
            message = f"the assay server at {self.url} failed ({status}): {first}"
        error = cls(message)
        error.code = code or error.code
        return error

    def _job(self, data: dict[str, Any]) -> Job:
        try:
            return _parse_job(data)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(
                f"the assay server at {self.url} answered a job this client cannot read: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _jobs(self, data: dict[str, Any]) -> list[Job]:
        items = data.get("jobs")
        if not isinstance(items, list):
            raise StoreError(f"the assay server at {self.url} answered without a 'jobs' list")
        return [self._job(item) for item in items]


def _job_name(name: str | Callable[..., Any]) -> str:
    if isinstance(name, str):
        return name
    spec = getattr(name, "__assay_job__", None)
    if not isinstance(spec, JobSpec):
        raise InvalidRequestError(f"{name!r} is not decorated with @job")
    return spec.name


def _scorer_path(experiment_id: str, name: str) -> str:
    return f"/api/v1/experiments/{_segment(experiment_id)}/scorers/{_segment(name)}"


def _segment(job_id: str) -> str:
    """``job_id`` quoted as one path segment."""
    return urllib.parse.quote(job_id, safe="")


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _parse_job(data: dict[str, Any]) -> Job:
    """A :class:`Job` from its public JSON shape (the inverse of :meth:`Job.to_dict`)."""
    progress = data.get("progress")
    created_at = _parse_time(data["created_at"])
    if created_at is None:
        raise ValueError("created_at is null")
    return Job(
        id=str(data["id"]),
        name=str(data["name"]),
        params=dict(data["params"]),
        status=JobStatus(data["status"]),
        result=data.get("result"),
        error=data.get("error"),
        attempt=int(data["attempt"]),
        max_retries=int(data["max_retries"]),
        timeout=float(data["timeout"]),
        created_at=created_at,
        started_at=_parse_time(data.get("started_at")),
        finished_at=_parse_time(data.get("finished_at")),
        worker_id=data.get("worker_id"),
        progress=None
        if progress is None
        else Progress(
            completed=float(progress["completed"]),
            total=None if progress.get("total") is None else float(progress["total"]),
            message=progress.get("message"),
        ),
        log_tail=data.get("log_tail"),
        owner=data.get("owner"),
    )
