"""Every store of one database, built once: :class:`Stores`.

A server process builds one in its runtime (:class:`assay.server.runtime.Runtime`) and hands it
to the routes through :mod:`assay.server.deps`; the Python API and the scoring jobs build one
for their engine. Nothing else constructs a store from a raw engine, so the trace store always
has its ingest listener (the scoring ledger) and the routes share one set of prepared
statements.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from assay.config import Settings
from assay.jobs.metrics import JobMetrics
from assay.jobs.store import JobStore
from assay.scoring.store import ScoringStore
from assay.server.tokens import TokenStore
from assay.tracing.store import TraceStore
from assay.tracking.store import TrackingStore

__all__ = ["Stores"]


@dataclass(frozen=True)
class Stores:
    """The stores of one database; ``metrics`` is the registry behind ``/metrics``."""

    jobs: JobStore
    traces: TraceStore
    scoring: ScoringStore
    tracking: TrackingStore
    tokens: TokenStore

    @property
    def metrics(self) -> JobMetrics:
        return self.jobs.metrics

    @classmethod
    def open(cls, engine: sa.Engine, settings: Settings) -> Stores:
        """The stores on ``engine`` (a migrated store), with a job store of their own."""
        return cls.on(JobStore(engine), settings)

    @classmethod
    def on(cls, jobs: JobStore, settings: Settings) -> Stores:
        """The stores on the job store's engine. The trace store's ingest fills the scoring
        ledger in its own transaction (the scoring store is its listener)."""
        engine = jobs.engine
        scoring = ScoringStore(engine)
        return cls(
            jobs=jobs,
            traces=TraceStore(engine, session_idle_s=settings.session_idle_s, listener=scoring),
            scoring=scoring,
            tracking=TrackingStore(engine),
            tokens=TokenStore(engine),
        )
