"""How tracking writes reach a store: the four calls a queueing client makes, and two ways to
make them.

- :class:`StoreTransport`: directly on a :class:`TrackingStore` (a store URI, migrated on open).
- :class:`RestTransport`: over HTTP to an ``assay server``, with an optional bearer token.
  Errors answered as ``{"error": {"code", "message"}}`` become the same :class:`AssayError`
  subclasses the store raises (the mapping of :class:`assay.client.Client`).

:func:`open_transport` picks one from a URI.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from assay.client import Client
from assay.errors import ConfigError, StoreError
from assay.tracking.model import Metric, RunInput, RunStatus

if TYPE_CHECKING:  # the store (SQLAlchemy, Alembic) loads for a store URI only
    from assay.tracking.store import TrackingStore

__all__ = ["RestTransport", "StoreTransport", "Transport", "open_transport"]


class Transport(Protocol):
    """The writes a queueing client sends; each is one request (one transaction)."""

    def create_run(
        self,
        experiment_id: str,
        name: str | None = None,
        start_time: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """A new RUNNING run; its id."""
        ...

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric],
        params: Mapping[str, str],
        tags: Mapping[str, str],
    ) -> None: ...

    def log_inputs(self, run_id: str, inputs: Sequence[RunInput]) -> None: ...

    def update_run(
        self, run_id: str, status: RunStatus | None = None, end_time: int | None = None
    ) -> None: ...

    def close(self) -> None: ...


class StoreTransport:
    """Writes straight to a :class:`TrackingStore`. :meth:`open` makes one from a store URI
    (applying migrations) and closes its engine on :meth:`close`; a store passed in is the
    caller's."""

    def __init__(self, store: TrackingStore, *, owns_engine: bool = False) -> None:
        self.store = store
        self._owns_engine = owns_engine

    @classmethod
    def open(cls, store_uri: str) -> StoreTransport:
        from assay.db.engine import create_engine
        from assay.db.migrate import upgrade
        from assay.tracking.store import TrackingStore

        engine = create_engine(store_uri)
        try:
            upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(TrackingStore(engine), owns_engine=True)

    def create_run(
        self,
        experiment_id: str,
        name: str | None = None,
        start_time: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        return self.store.create_run(experiment_id, name, start_time, tags).id

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric],
        params: Mapping[str, str],
        tags: Mapping[str, str],
    ) -> None:
        self.store.log_batch(run_id, metrics, params, tags)

    def log_inputs(self, run_id: str, inputs: Sequence[RunInput]) -> None:
        self.store.log_inputs(run_id, inputs)

    def update_run(
        self, run_id: str, status: RunStatus | None = None, end_time: int | None = None
    ) -> None:
        self.store.update_run(run_id, status, end_time)

    def close(self) -> None:
        if self._owns_engine:
            self.store.engine.dispose()

    def __repr__(self) -> str:
        return f"StoreTransport({self.store.engine.url.render_as_string(hide_password=True)!r})"


class RestTransport:
    """Writes to an assay server's ``/api/v1/runs`` routes. ``token`` is sent as a bearer
    token; ``timeout`` is seconds per request; ``transport`` replaces httpx's."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # The jobs client owns the HTTP session and the one error mapping; this reuses both.
        self._client = Client(url, token, timeout=timeout, transport=transport)
        self.url = self._client.url

    def create_run(
        self,
        experiment_id: str,
        name: str | None = None,
        start_time: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        body = {
            "experiment_id": experiment_id,
            "name": name,
            "start_time": start_time,
            "tags": dict(tags or {}),
        }
        data = self._call("POST", "/api/v1/runs", body)
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise StoreError(f"the assay server at {self.url} answered a run without an id")
        return str(data["id"])

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric],
        params: Mapping[str, str],
        tags: Mapping[str, str],
    ) -> None:
        body = {
            "metrics": [
                {"key": m.key, "value": m.value, "step": m.step, "timestamp": m.timestamp_ms}
                for m in metrics
            ],
            "params": dict(params),
            "tags": dict(tags),
        }
        self._call("POST", f"/api/v1/runs/{_segment(run_id)}/log-batch", body)

    def log_inputs(self, run_id: str, inputs: Sequence[RunInput]) -> None:
        body = {
            "inputs": [{"name": i.name, "digest": i.digest, "source": i.source} for i in inputs]
        }
        self._call("POST", f"/api/v1/runs/{_segment(run_id)}/inputs", body)

    def update_run(
        self, run_id: str, status: RunStatus | None = None, end_time: int | None = None
    ) -> None:
        body = {"status": None if status is None else status.value, "end_time": end_time}
        self._call("PATCH", f"/api/v1/runs/{_segment(run_id)}", body)

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RestTransport({self.url!r})"

    def _call(self, method: str, path: str, body: dict[str, Any]) -> Any:
        """One request; a write is only retried when it was never sent."""
        return self._client.request(method, path, json=body)


def open_transport(
    uri: str,
    *,
    token: str | None = None,
    timeout: float = 30.0,
    http_transport: httpx.BaseTransport | None = None,
) -> Transport:
    """A :class:`RestTransport` for an ``http(s)://`` server URL, else a :class:`StoreTransport`
    on the store URI (migrated)."""
    if uri.lower().startswith(("http://", "https://")):
        return RestTransport(uri, token, timeout=timeout, transport=http_transport)
    if token is not None or http_transport is not None:
        raise ConfigError("token and http_transport are for a server URL, not a store URI")
    return StoreTransport.open(uri)


def _segment(run_id: str) -> str:
    """``run_id`` quoted as one path segment."""
    return urllib.parse.quote(run_id, safe="")
