"""The direct backend: submit, get, search, cancel and wait on jobs in a store."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from assay.config import Settings
from assay.db.engine import create_engine
from assay.db.migrate import is_current, upgrade
from assay.errors import (
    ConfigError,
    InvalidParamsError,
    InvalidRequestError,
    MigrationError,
    NotFoundError,
)
from assay.jobs.api import JobsAPI, check_id_prefix, one_or_many, wait_for
from assay.jobs.context import Resources
from assay.jobs.executors import check_executor
from assay.jobs.model import Attempt, Job, JobPage, JobStatus
from assay.jobs.notifier import RedisWakeups
from assay.jobs.registry import REGISTRY, JobSpec, Registry
from assay.jobs.store import JobStore, NewJob
from assay.jobs.worker import Worker
from assay.pagetoken import decode_parts, encode_parts

__all__ = ["Backend", "JobsAPI", "wait_for"]

MAX_PAGE = 1000


class Backend:
    """Jobs in one store. Create it with :func:`connect`; close it (or use ``with``) when done."""

    def __init__(self, settings: Settings, *, registry: Registry = REGISTRY) -> None:
        self.settings = settings
        self.registry = registry
        self.wakeups = (
            RedisWakeups(settings.notify_url, settings.notify_channel)
            if settings.notify_url
            else None
        )
        self.engine = create_engine(settings.store_uri)
        if settings.auto_migrate:
            upgrade(self.engine)
        elif not is_current(self.engine):
            raise MigrationError("the store schema is not current: run `assay db upgrade`")
        registry.load(settings.job_modules)
        self.store = JobStore(self.engine, wakeups=self.wakeups)
        self._local_workers: list[Worker] = []
        self.resources = Resources()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.resources.close()
        self.engine.dispose()
        if self.wakeups is not None:
            self.wakeups.close()

    # -- jobs ----------------------------------------------------------------------------------

    def submit(
        self,
        name: str | Callable[..., Any],
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        owner: str | None = None,
    ) -> Job:
        """Queue one job; unknown names and params that do not bind fail here, not later."""
        return self.submit_many(name, [params or {}], timeout=timeout, owner=owner)[0]

    def submit_many(
        self,
        name: str | Callable[..., Any],
        params_list: Iterable[dict[str, Any]],
        *,
        timeout: float | None = None,
        owner: str | None = None,
    ) -> list[Job]:
        """Queue many jobs of one name in one transaction."""
        spec = self._spec(name)
        if spec.executor is not None:
            try:
                check_executor(spec.executor)
            except ConfigError as exc:
                raise InvalidRequestError(f"job {spec.name!r}: {exc}") from exc
        if timeout is not None and timeout <= 0:
            raise InvalidRequestError(f"timeout must be a positive number of seconds: {timeout}")
        timeout_s = timeout or spec.timeout or self.settings.job_timeout_s
        new_jobs = []
        for params in params_list:
            bound = spec.bind(params)
            size = len(json.dumps(bound))
            if size > self.settings.max_params_bytes:
                raise InvalidParamsError(
                    f"params of job {spec.name!r} are {size} bytes of JSON, over the "
                    f"{self.settings.max_params_bytes}-byte limit (max_params_bytes)"
                )
            new_jobs.append(
                NewJob(
                    id=str(uuid.uuid4()),
                    name=spec.name,
                    params=bound,
                    max_retries=spec.max_retries,
                    timeout_s=timeout_s,
                    lock_key=spec.lock_key(bound),
                    on_conflict=spec.on_conflict,
                    owner=owner,
                )
            )
        jobs = self.store.jobs_insert(new_jobs)
        for worker in self._local_workers:
            worker.wake()
        return jobs

    def get(self, job_id: str) -> Job:
        job = self.store.job_get(job_id)
        if job is None:
            raise NotFoundError(f"job {job_id!r} not found")
        return job

    def attempts(self, job_id: str) -> list[Attempt]:
        """The job's ended executions, first to last: its attempt history."""
        self.get(job_id)
        return self.store.job_attempts(job_id)

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
        one page at a time. assay's own jobs (online scoring, named ``assay.…``) are left out
        unless ``include_internal`` or named in ``name``."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequestError(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
        names = one_or_many(name)
        statuses = [_parse_status(s) for s in one_or_many(status)]
        before = decode_parts(page_token, int, str) if page_token else None
        jobs = self.store.jobs_search(
            names=names,
            statuses=statuses,
            owner=owner,
            limit=limit,
            before=before,
            id_prefix=None if id_prefix is None else check_id_prefix(id_prefix),
            include_internal=include_internal or bool(names),
        )
        token = None
        if len(jobs) == limit:
            last = jobs[-1]
            token = encode_parts(int(last.created_at.timestamp() * 1000), last.id)
        return JobPage(jobs=jobs, next_page_token=token)

    def cancel(self, job_id: str) -> Job:
        """Cancel a PENDING or RUNNING job; a finished job is returned unchanged."""
        job = self.store.job_cancel(job_id)
        if job is None:
            raise NotFoundError(f"job {job_id!r} not found")
        return job

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        poll_s: float = 0.05,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Block until the job is finished; ``on_update`` sees every poll (for progress)."""
        return wait_for(self.get, job_id, timeout, poll_s=poll_s, on_update=on_update)

    def prune(self, older_than_s: float) -> int:
        """Delete jobs that finished more than ``older_than_s`` seconds ago."""
        if older_than_s < 0:
            raise InvalidRequestError("older_than must not be negative")
        return self.store.jobs_prune(older_than_s)

    def worker(self, *, settings: Settings | None = None, **kwargs: Any) -> Worker:
        """A worker on this store that is woken at once by this backend's submits."""
        worker = Worker(
            self.store,
            settings or self.settings,
            registry=self.registry,
            resources=self.resources,
            **kwargs,
        )
        self._local_workers.append(worker)
        return worker

    def _spec(self, name: str | Callable[..., Any]) -> JobSpec:
        if callable(name):
            spec = getattr(name, "__assay_job__", None)
            if not isinstance(spec, JobSpec):
                raise InvalidRequestError(f"{name!r} is not decorated with @job")
            return spec
        return self.registry.get(name)


def _parse_status(value: str | JobStatus) -> JobStatus:
    try:
        return JobStatus(str(value).upper())
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise InvalidRequestError(f"unknown status {value!r} (expected one of {known})") from None
