"""The job of the Ray cluster benchmark (bench/ray_cluster.py) and of its tests.

It is in a registry of its own (:data:`RAY_CLUSTER_JOBS`), not the process-wide one, so that
importing it never makes other workers in the same process build a Ray executor. The Ray nodes
import it by name (``PYTHONPATH`` includes bench/).

Every execution appends a ``start`` line when it begins and an ``end`` line when it returns to
a shared record file, one ``os.write`` each on an ``O_APPEND`` descriptor (whole lines, never
interleaved): ``<start|end> <job id> <attempt> <node> <pid> <unix time>``. The node is the
``ASSAY_RAY_NODE`` variable its Ray node was started with. bench/ray_cluster.py reads them back
to find executions of one job that overlapped in time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from assay import current_job, job
from assay.jobs.registry import Registry

RAY_CLUSTER_JOBS = Registry()
NODE_VARIABLE = "ASSAY_RAY_NODE"


def record(path: str, event: str) -> None:
    """Append one ``event`` line for the current execution to the record file ``path``."""
    ctx = current_job()
    node = os.environ.get(NODE_VARIABLE, "?")
    line = f"{event} {ctx.job_id} {ctx.attempt} {node} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@job(name="rc_step", executor="ray", max_retries=2, timeout=300, registry=RAY_CLUSTER_JOBS)
def rc_step(
    record_path: str,
    steps: int,
    step_s: float,
    gate: str | None = None,
    slow_node: str | None = None,
    slowdown: float = 1.0,
) -> dict[str, Any]:
    """``steps`` steps of ``step_s`` seconds, reporting progress after each; records its start
    and end. With ``gate``, waits after the first step until that file exists (a test holds
    the job there to read its progress while it runs). On ``slow_node``, each step takes
    ``slowdown`` times longer."""
    if slow_node is not None and os.environ.get(NODE_VARIABLE) == slow_node:
        step_s *= slowdown
    ctx = current_job()
    record(record_path, "start")
    for step in range(1, steps + 1):
        time.sleep(step_s)
        ctx.progress(step, steps, f"step {step} of {steps}")
        while gate is not None and step == 1 and not Path(gate).exists():
            time.sleep(0.02)
    record(record_path, "end")
    return {"node": os.environ.get(NODE_VARIABLE, "?"), "pid": os.getpid()}


@job(name="rc_die_once", executor="ray", max_retries=1, registry=RAY_CLUSTER_JOBS)
def rc_die_once(record_path: str) -> int:
    """For the tests: the Ray worker process running the first attempt exits at once (as if
    its machine went away); the next attempt returns its number."""
    record(record_path, "start")
    if current_job().attempt == 1:
        os._exit(1)
    record(record_path, "end")
    return current_job().attempt
