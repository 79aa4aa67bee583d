"""Jobs for the remote-executor tests (Ray, Kubernetes).

They register in their own registries (:data:`RAY_JOBS`, :data:`K8S_JOBS`), not the process-wide
one, so that importing this module never makes other tests' workers build a Ray or Kubernetes
executor (a worker builds one for every executor its registry's jobs name).
"""

from __future__ import annotations

import os
import time
from typing import Any

from assay import current_job, job
from assay.jobs.registry import Registry
from jobmods import record

RAY_JOBS = Registry()
K8S_JOBS = Registry()


class RemoteTransient(Exception):
    pass


@job(name="r_where", executor="ray", registry=RAY_JOBS)
def r_where(x: int) -> dict[str, Any]:
    """Returns where it ran and what it saw of its own job."""
    print(f"running x={x}")
    ctx = current_job()
    return {
        "pid": os.getpid(),
        "double": 2 * x,
        "attempt": ctx.attempt,
        "token": ctx.api_token,
        "env_token": os.environ.get("ASSAY_API_TOKEN"),
    }


@job(name="r_env", executor="ray", registry=RAY_JOBS)
def r_env() -> str | None:
    """The job token a later task sees in the environment of a reused Ray worker."""
    return os.environ.get("ASSAY_API_TOKEN")


@job(name="r_boom", executor="ray", registry=RAY_JOBS)
def r_boom(message: str) -> None:
    raise ValueError(message)


@job(name="r_flaky", executor="ray", max_retries=2, retry_on=RemoteTransient, registry=RAY_JOBS)
def r_flaky(path: str, fail_times: int) -> int:
    """Records each attempt; fails with a retryable error on the first ``fail_times`` ones."""
    attempt = current_job().attempt
    record(path, f"attempt {attempt} pid {os.getpid()}")
    if attempt <= fail_times:
        raise RemoteTransient(f"transient failure on attempt {attempt}")
    return attempt


@job(name="r_sleep", executor="ray", registry=RAY_JOBS)
def r_sleep(path: str, seconds: float) -> str:
    """Records that it started (with its pid), sleeps, records that it finished."""
    record(path, f"started {os.getpid()}")
    time.sleep(seconds)
    record(path, "finished")
    return "slept"


@job(name="r_slow", executor="ray", timeout=25, registry=RAY_JOBS)
def r_slow(path: str) -> None:
    """Outlives its 25 s timeout (generous: a new Ray worker took over 10 s to start on a busy
    CI box)."""
    record(path, f"started {os.getpid()}")
    time.sleep(60)
    record(path, "finished")


@job(name="k_add", executor="kubernetes", timeout=90.5, registry=K8S_JOBS)
def k_add(a: int, b: int) -> int:
    print(f"adding {a} and {b}")
    return a + b


@job(
    name="k_flaky",
    executor="kubernetes",
    max_retries=1,
    retry_on=RemoteTransient,
    registry=K8S_JOBS,
)
def k_flaky() -> None:
    raise RemoteTransient(f"transient on attempt {current_job().attempt}")


@job(name="k_big", executor="kubernetes", registry=K8S_JOBS)
def k_big(n: int) -> str:
    return "x" * n
