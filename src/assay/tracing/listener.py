"""What an ingest tells the code that follows traces (the scoring ledger), inside its
transaction.

Tracing defines the protocol and scoring implements it
(:meth:`assay.scoring.store.ScoringStore.on_ingest`), so tracing never imports scoring: the
runtime hands the listener to the trace store (:class:`assay.stores.Stores`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

__all__ = ["Completed", "IngestListener"]


@dataclass(frozen=True)
class Completed:
    """A trace that became complete in an ingest transaction (or has a session to touch)."""

    trace_id: str
    experiment_id: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    complete: bool = True


class IngestListener(Protocol):
    """Called once per ingest transaction, on its connection, before it commits: what it
    writes commits (or rolls back) with the spans; and likewise when traces are pruned."""

    def on_ingest(
        self, conn: sa.Connection, now: int, items: Sequence[Completed], idle_ms: int
    ) -> None: ...

    def on_prune(self, conn: sa.Connection, experiment_id: str, trace_ids: Sequence[str]) -> None:
        """The traces (of one experiment) are being deleted, in this transaction."""
