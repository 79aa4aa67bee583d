"""SQLite workers learn of commits by other processes from the database's WAL file (inotify) and
then ``PRAGMA data_version``; without inotify they poll data_version."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import assay
from assay.jobs import notifier
from assay.jobs.notifier import FileWatch
from support.jobs import FAST
from support.timing import wait_until

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[FileWatch]:
    opened = FileWatch.open(tmp_path / "db-wal")
    assert opened is not None
    try:
        yield opened
    finally:
        opened.close()


@linux_only
def test_a_file_watch_sees_writes_to_its_file_only(watch: FileWatch, tmp_path: Path) -> None:
    (tmp_path / "other.log").write_text("not the file")
    assert watch.wait(0.05) is False
    (tmp_path / "db-wal").write_text("frame")  # created, then written
    assert watch.wait(5.0) is True
    assert watch.wait(0.05) is False  # the events were read
    with (tmp_path / "db-wal").open("a") as wal:
        wal.write("another frame")
    assert watch.wait(5.0) is True


@linux_only
def test_a_file_watch_survives_the_file_being_deleted(watch: FileWatch, tmp_path: Path) -> None:
    wal = tmp_path / "db-wal"
    wal.write_text("frame")
    assert watch.wait(5.0) is True
    wal.unlink()  # SQLite deletes its WAL when the last connection closes
    watch.wait(0.05)
    wal.write_text("new frame")
    assert watch.wait(5.0) is True


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "polling"])
@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_sqlite_watch_wakes_on_a_commit_of_another_connection(
    store_uri: str, inotify: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the WAL watch (or, without inotify, the data_version poll) can wake the watcher
    # here: its periodic check is pushed out of the test's reach.
    monkeypatch.setattr(notifier, "_WATCH_TIMEOUT_S", 600.0)
    if inotify and not sys.platform.startswith("linux"):
        pytest.skip("inotify")
    if not inotify:
        monkeypatch.setattr(FileWatch, "open", classmethod(lambda cls, path: None))
    woke = threading.Event()
    stop = threading.Event()
    with assay.connect(store_uri, **FAST) as backend:
        watcher = threading.Thread(
            target=backend.store.watch, args=(woke.set, stop, 0.002), daemon=True
        )
        watcher.start()
        try:
            # Submit until woken: a commit before the watcher read its first version is
            # (rightly) not news to it.
            wait_until(lambda: backend.submit("t_noop") and woke.wait(0.2), timeout=20)
        finally:
            stop.set()
            backend.submit("t_noop")  # a write, so that a watcher waiting on the WAL sees stop
            watcher.join(timeout=30)
    assert not watcher.is_alive()
