"""A real `assay server` per store and OTLP JSON helpers, for the hostile-data tests
(``test_hostile_data.py``, ``test_hostile_fuzz.py``)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from assay.db.engine import create_engine
from assay.tracking.store import TrackingStore
from support.databases import server_database
from support.servers import Servers

START_NS = 1_700_000_000_000_000_000
STORES = ["sqlite", "postgresql", "mysql"]


def deep(levels: int, leaf: Any = "bottom") -> Any:
    """``leaf`` inside ``levels`` nested lists."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


def depth_of(value: Any) -> int:
    """How many lists ``value`` is, one inside the other, from the top."""
    levels = 0
    while isinstance(value, list) and value:
        value, levels = value[0], levels + 1
    return levels


class Target:
    """A running server, an engine on its store, and an HTTP client to the server."""

    def __init__(self, url: str, engine: sa.Engine) -> None:
        self.url = url
        self.engine = engine
        self.http = httpx.Client(base_url=url, timeout=60)

    def experiment(self) -> str:
        return TrackingStore(self.engine).create_experiment(f"hostile-{uuid.uuid4().hex[:8]}").id

    def ingest(self, experiment_id: str, spans: list[dict[str, Any]]) -> httpx.Response:
        """One OTLP/HTTP JSON request with ``spans`` (OTLP JSON) in the experiment."""
        return self.http.post("/v1/traces", json=otlp_document(experiment_id, spans))


@contextlib.contextmanager
def running_target(kind: str, tmp: Path) -> Iterator[Target]:
    """A server (no workers) on a new ``kind`` store, for a whole test module."""
    with _database(kind, tmp) as uri:
        servers = Servers(tmp)
        engine = create_engine(uri)
        try:
            server = servers.start(uri, "--workers", "0")
            target = Target(server.url, engine)
            try:
                yield target
            finally:
                target.http.close()
        finally:
            servers.close()
            engine.dispose()


def _database(kind: str, tmp: Path) -> contextlib.AbstractContextManager[str]:
    if kind == "sqlite":
        return contextlib.nullcontext(f"sqlite:///{tmp / 'hostile.db'}")
    return server_database(kind, prefix="assay_hostile")


def target_fixture(request: pytest.FixtureRequest, tmp: Path) -> Iterator[Target]:
    with running_target(str(request.param), tmp) as target:
        yield target


def otlp_document(experiment_id: str, spans: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [kv("assay.experiment_id", experiment_id)]},
                "scopeSpans": [{"spans": spans}],
            }
        ]
    }


def kv(key: str, value: Any) -> dict[str, Any]:
    """An OTLP JSON attribute: a string value, or an AnyValue dict as it is."""
    return {"key": key, "value": value if isinstance(value, dict) else {"stringValue": value}}


def span(
    trace_id: str,
    span_id: str,
    parent: str | None = None,
    offset_ms: int = 0,
    **attributes: Any,
) -> dict[str, Any]:
    """One OTLP JSON span; attribute names with ``_`` for ``.`` (``input_value``)."""
    out: dict[str, Any] = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": f"span-{span_id}",
        "startTimeUnixNano": str(START_NS + offset_ms * 1_000_000),
        "endTimeUnixNano": str(START_NS + (offset_ms + 1) * 1_000_000),
        "attributes": [kv(k.replace("_", "."), v) for k, v in attributes.items()],
    }
    if parent is not None:
        out["parentSpanId"] = parent
    return out


def reads_ok(target: Target, experiment_id: str, trace_id: str | None) -> dict[str, Any] | None:
    """Every read of the experiment (and of the trace, if given) answers 200; the trace as
    ``GET /api/v1/traces/{trace_id}`` shows it."""
    paths = [
        f"/api/v1/experiments/{experiment_id}/scorers",
        f"/ui/experiments/{experiment_id}",
        f"/ui/experiments/{experiment_id}/scorers",
    ]
    if trace_id is not None:
        paths += [f"/api/v1/traces/{trace_id}/assessments", f"/ui/traces/{trace_id}"]
    listed = target.http.get("/api/v1/traces", params={"experiment_id": experiment_id})
    assert listed.status_code == 200, listed.text[:500]
    for path in paths:
        answer = target.http.get(path)
        assert answer.status_code == 200, (path, answer.text[:500])
    if trace_id is None:
        return None
    detail = target.http.get(f"/api/v1/traces/{trace_id}")
    assert detail.status_code == 200, detail.text[:500]
    found: dict[str, Any] = detail.json()
    return found
