"""Waits and bounds that stretch with the machine's load: tests wait on conditions, never on
fixed sleeps, and a busy machine is slower rather than failing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def time_scale() -> float:
    """How many times longer than on a quiet machine a wait may take right now: the load per
    core (the 1-minute load average over the CPU count), at least 1, or ASSAY_TEST_TIME_SCALE
    when that is larger. A 2-core box running four test processes and other people's work
    starts a server in 30 s instead of 3."""
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    return max(1.0, load, float(os.environ.get("ASSAY_TEST_TIME_SCALE") or 1))


def scaled(seconds: float) -> float:
    """``seconds`` on a quiet machine, stretched by :func:`time_scale` on a busy one. For
    timeouts and for bounds on how long something may take; never for how long to wait."""
    return seconds * time_scale()


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` (on a quiet
    machine: it is :func:`scaled` by the load, so a busy machine is not a failure)."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {limit:.1f}s ({timeout}s scaled)")
        time.sleep(interval)
