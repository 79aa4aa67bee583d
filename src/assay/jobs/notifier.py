"""Wake-ups: how a worker learns that new jobs may be claimable before its next poll.

One :class:`Notifier` per store: PostgreSQL's LISTEN for the NOTIFY every submit sends
(:class:`PostgresListen`), SQLite's ``PRAGMA data_version`` read when its WAL file is written
(:class:`SqliteDataVersion`), or Redis pub/sub (:class:`RedisWakeups`, ``notify_url``), which
replaces either. :func:`watch` runs one until stopped.

MySQL and MariaDB have no LISTEN/NOTIFY, so their workers find new jobs by polling
(``poll_interval_s``, 100 ms by default: about 50 ms of pickup latency on average). With
``notify_url`` set (``ASSAY_NOTIFY_URL=redis://host:6379/0``; ``pip install 'assay[redis]'``),
every submit publishes on ``notify_channel`` after its transaction commits, and every worker
subscribes and claims at once. It is only a speed-up: a lost message (Redis down, a worker
subscribing late) costs one poll interval, never a job. On any store it replaces the store's own
wake-up (PostgreSQL's LISTEN, SQLite's data_version check) for the workers.

SQLite workers of other processes learn of a commit from ``PRAGMA data_version``. Polling it
often enough for sub-millisecond pickup costs a tenth of a core per idle worker, so on Linux a
:class:`FileWatch` (inotify) says when the database's write-ahead log is written, and the
version is read then.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import select
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from assay.db.dialects import MYSQL, POSTGRESQL, dialect_of
from assay.errors import ConfigError

__all__ = [
    "NOTIFY_CHANNEL",
    "FileWatch",
    "Notifier",
    "PostgresListen",
    "RedisWakeups",
    "SqliteDataVersion",
    "database_notifier",
    "watch",
]

log = logging.getLogger("assay.notify")

NOTIFY_CHANNEL = "assay_jobs"
"""The PostgreSQL channel every submit of PENDING jobs notifies (in its transaction)."""
# SQLite watcher: how long a WAL write may precede its commit's data_version, and how often the
# watch returns to check for stop.
_SETTLE_S = 0.005
_WATCH_TIMEOUT_S = 0.5
_QUIET_AFTER_ERROR_S = 5.0
"""After a failed publish, submits skip publishing this long (polling covers the gap), so a
Redis that is down never slows submits down by its connect timeout."""


class RedisWakeups:
    """Publishes "new jobs" and lets a worker wait for that message."""

    def __init__(self, url: str, channel: str) -> None:
        try:
            import redis
        except ImportError:
            raise ConfigError(
                "ASSAY_NOTIFY_URL needs the redis client: pip install 'assay[redis]'"
            ) from None
        try:
            self._client: Any = redis.Redis.from_url(
                url, socket_timeout=2.0, socket_connect_timeout=1.0, health_check_interval=30
            )
        except ValueError as exc:
            raise ConfigError(f"invalid ASSAY_NOTIFY_URL {url!r}: {exc}") from None
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.channel = channel
        self._quiet_until = 0.0

    def publish(self) -> None:
        """Tell the subscribed workers that jobs may be claimable; never raises."""
        if time.monotonic() < self._quiet_until:
            return
        try:
            self._client.publish(self.channel, b"")
        except self._errors as exc:
            self._quiet_until = time.monotonic() + _QUIET_AFTER_ERROR_S
            log.warning("notify.publish_failed channel=%s: %s", self.channel, exc)

    def listen(self, wake: Callable[[], None], stop: threading.Event) -> None:
        """Call ``wake()`` for every message until ``stop``. Raises on connection errors (the
        caller logs them and subscribes again)."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            while not stop.is_set():
                if pubsub.get_message(timeout=0.5) is not None:
                    wake()
        finally:
            pubsub.close()

    def close(self) -> None:
        self._client.close()


_IN_MODIFY = 0x2
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class FileWatch:
    """Writes to one file, seen through Linux inotify on its directory (so the watch survives
    the file being deleted and created again, as SQLite does with its ``-wal`` file)."""

    def __init__(self, fd: int, name: bytes) -> None:
        self._fd = fd
        self._name = name
        self._poll = select.poll()  # not select(): a server may have fds past FD_SETSIZE
        self._poll.register(fd, select.POLLIN)

    @classmethod
    def open(cls, path: Path) -> FileWatch | None:
        """A watch on ``path``; None where inotify is not available (not Linux, or the
        per-user limit of inotify instances is reached): the caller polls instead."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        if libc.inotify_add_watch(fd, os.fsencode(path.parent), _IN_MODIFY) < 0:
            os.close(fd)
            return None
        return cls(fd, os.fsencode(path.name))

    def wait(self, timeout: float) -> bool:
        """Block until the file is written or ``timeout`` passes; True if it was written."""
        ready = self._poll.poll(math.ceil(timeout * 1000))
        written = False
        while ready:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):
                length = _EVENT.unpack_from(data, offset)[3]
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                written = written or name == self._name
                offset += _EVENT.size + length
        return written

    def close(self) -> None:
        os.close(self._fd)


class Notifier(Protocol):
    def listen(self, wake: Callable[[], None], stop: threading.Event) -> None:
        """Call ``wake()`` whenever new jobs may be claimable, until ``stop``. May raise (the
        caller logs the error and listens again)."""


def watch(notifier: Notifier, wake: Callable[[], None], stop: threading.Event) -> None:
    """Block until ``stop``, listening with ``notifier``. Workers poll in any case: this is
    only a speed-up, so errors are logged and retried, never fatal."""
    while not stop.is_set():
        try:
            notifier.listen(wake, stop)
        except Exception:
            log.warning("store.watch_failed", exc_info=True)
            stop.wait(1.0)


def database_notifier(engine: sa.Engine, interval_s: float) -> Notifier | None:
    """The database's own wake-ups; None for MySQL/MariaDB, which have none (workers poll)."""
    dialect = dialect_of(engine)
    if dialect == MYSQL:
        return None
    if dialect == POSTGRESQL:
        return PostgresListen(engine)
    return SqliteDataVersion(engine, interval_s)


def _raw_connection(engine: sa.Engine) -> Any:
    """A DBAPI connection of our own, taken out of the pool (closed by the caller)."""
    pooled = engine.raw_connection()
    driver = pooled.driver_connection
    pooled.detach()
    return driver


class PostgresListen:
    """LISTEN on :data:`NOTIFY_CHANNEL`."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def listen(self, wake: Callable[[], None], stop: threading.Event) -> None:
        pg = _raw_connection(self._engine)
        try:
            pg.rollback()
            pg.autocommit = True
            pg.execute(f"LISTEN {NOTIFY_CHANNEL}")
            while not stop.is_set():
                for _ in pg.notifies(timeout=0.5, stop_after=1):
                    wake()
        finally:
            pg.close()


class SqliteDataVersion:
    """``PRAGMA data_version``: it changes when another connection commits."""

    def __init__(self, engine: sa.Engine, interval_s: float) -> None:
        self._engine = engine
        self._interval_s = interval_s

    def listen(self, wake: Callable[[], None], stop: threading.Event) -> None:
        """Wake when ``PRAGMA data_version`` changes (another connection committed). It is read
        when the database's WAL file is written (inotify, :class:`FileWatch`), and then every
        ``interval_s / 8`` until the commit shows (the frames are written before the commit is
        visible) or ``_SETTLE_S`` passes; without inotify, every ``interval_s``."""
        raw = _raw_connection(self._engine)
        interval = self._interval_s
        database = self._engine.url.database or ""
        wal = None
        if database not in ("", ":memory:") and not database.startswith("file:"):
            wal = FileWatch.open(Path(f"{Path(database).absolute()}-wal"))
        try:
            cursor = raw.cursor()
            last = cursor.execute("PRAGMA data_version").fetchone()[0]
            while not stop.is_set():
                settle_until = 0.0
                if wal is None:
                    stop.wait(interval)
                elif wal.wait(_WATCH_TIMEOUT_S):
                    settle_until = time.monotonic() + _SETTLE_S
                while True:
                    version = cursor.execute("PRAGMA data_version").fetchone()[0]
                    if version != last:
                        last = version
                        wake()
                        break
                    if time.monotonic() >= settle_until or stop.is_set():
                        break
                    time.sleep(interval / 8)
        finally:
            raw.close()
            if wal is not None:
                wal.close()
