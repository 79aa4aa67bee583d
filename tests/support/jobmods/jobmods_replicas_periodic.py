"""A periodic job for the scheduler failover test (``jobmods_replicas_periodic``).

Only server subprocesses import it: in the test process its schedule would fire from any
leader that uses the global registry.
"""

from __future__ import annotations

import os

from assay import job, periodic


@periodic(every="1s", name="rep_tick_every_1s")
@job(name="rep_tick")
def rep_tick() -> int:
    """Returns the pid of the replica that ran it."""
    return os.getpid()
