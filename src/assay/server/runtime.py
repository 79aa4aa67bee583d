"""What one server process runs besides the API: worker loops and the leader services."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from assay.config import Settings
from assay.jobs.backend import Backend
from assay.jobs.services import Leadership, maintenance
from assay.jobs.worker import Worker
from assay.scoring import jobs as scoring
from assay.scoring.service import ScoringService
from assay.stores import Stores

__all__ = ["Runtime"]

log = logging.getLogger("assay.server")


class Runtime:
    """The backend of a server process, its ``server_workers`` worker loops and its leadership.

    Workers run in threads of this process and skip their own leadership: the runtime runs one
    for the whole process, so an API-only replica (no workers) still competes for it.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.backend = Backend(settings)
        self.stores = Stores.on(self.backend.store, settings)
        self.scoring = ScoringService(self.stores, settings)
        scoring.install(self.backend.registry)
        worker_settings = settings.model_copy(
            update={"maintenance": False, "public_url": settings.public_url or _own_url(settings)}
        )
        self.workers: list[Worker] = [
            self.backend.worker(settings=worker_settings, worker_id=f"{self.id}/w{n}")
            for n in range(settings.server_workers)
        ]
        self.leadership: Leadership | None = (
            maintenance(self.backend.store, settings, self.id, self.backend.registry)
            if settings.maintenance
            else None
        )
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for worker in self.workers:
            thread = threading.Thread(target=worker.run, name=f"assay-{worker.id}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.leadership is not None:
            self.leadership.start()
        log.info("server.started id=%s workers=%s", self.id, len(self.workers))

    def workers_alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming; running jobs get the grace period, then are handed back."""
        for worker in self.workers:
            worker.stop(now=now)
        for thread in self._threads:
            thread.join(timeout=self.settings.shutdown_grace_s + 10)
        if self.leadership is not None:
            self.leadership.stop()
        self.backend.close()
        log.info("server.stopped id=%s", self.id)


def _own_url(settings: Settings) -> str | None:
    """The server's own address, for jobs its workers run to call back (None on port 0)."""
    if settings.port == 0:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"
