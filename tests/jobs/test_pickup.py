"""The pickup path, from a submit to a worker's claim: a submit's NOTIFY comes with its INSERT,
once per transaction, and a job submitted while a worker claims is picked up at once (no
wake-up is lost)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import assay
from assay import JobStatus
from assay.jobs.notifier import NOTIFY_CHANNEL
from support.jobs import FAST, running_worker
from support.timing import wait_until

postgresql_only = pytest.mark.parametrize("store_uri", ["postgresql"], indirect=True)


def _libpq_dsn(store_uri: str) -> str:
    return sa.make_url(store_uri).set(drivername="postgresql").render_as_string(False)


@postgresql_only
def test_a_submit_notifies_once_per_transaction(store_uri: str) -> None:
    with (
        psycopg.connect(_libpq_dsn(store_uri), autocommit=True) as listener,
        psycopg.connect(_libpq_dsn(store_uri), autocommit=True) as marker,
        assay.connect(store_uri, **FAST) as backend,
    ):
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        backend.submit_many("t_noop", [{}] * 3)  # one transaction
        backend.submit("t_noop")  # another
        # Notifications come in commit order: the marker's is the last of them.
        marker.execute("SELECT pg_notify(%s, 'end')", (NOTIFY_CHANNEL,))
        payloads = []
        for note in listener.notifies(timeout=30):
            if note.payload == "end":
                break
            payloads.append(note.payload)
    assert payloads == ["", ""]


@pytest.mark.parametrize("store_uri", ["sqlite", "postgresql"], indirect=True)
def test_a_job_submitted_during_a_claim_is_picked_up_at_once(store_uri: str) -> None:
    """The second job commits (and notifies) while the worker's claim of the first is open,
    so that claim cannot see it: only the wake-up that came during the claim brings it to
    the worker before its 30 s poll (the first job is still running, so no job's end does)."""
    slow_poll = {**FAST, "poll_interval_s": 30.0}
    late: list[str] = []
    armed = threading.Event()
    with (
        assay.connect(store_uri, **slow_poll) as worker_side,
        assay.connect(store_uri, **FAST) as submitter,
    ):
        sqlite = worker_side.store.dialect == "sqlite"

        def submit_late() -> None:
            late.append(submitter.submit("t_noop").id)

        def starts_jobs(cursor: Any, statement: str) -> bool:
            """A claim's statement that started jobs (not an empty claim's)."""
            if sqlite:  # the start UPDATE, run only for claimed rows
                return statement.startswith("UPDATE jobs SET status") and "RETURNING" in statement
            return "ORDER BY jobs.run_at_ms" in statement and cursor.rowcount > 0

        @sa.event.listens_for(worker_side.engine, "after_cursor_execute")
        def during_claim(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            if not armed.is_set() or not starts_jobs(cursor, statement):
                return
            armed.clear()
            thread = threading.Thread(target=submit_late)
            thread.start()
            if not sqlite:  # SQLite: the submit waits for the claim's write lock
                thread.join()

        with running_worker(worker_side):
            warm = worker_side.submit("t_noop")
            assert worker_side.wait(warm.id, timeout=30).status == JobStatus.SUCCEEDED
            armed.set()
            # Still running when the late job is due: its end cannot wake the worker either.
            first = submitter.submit("t_sleep", {"seconds": 30})
            wait_until(lambda: bool(late), timeout=10)
            assert submitter.wait(late[0], timeout=10).status == JobStatus.SUCCEEDED
            assert submitter.get(first.id).status == JobStatus.RUNNING
