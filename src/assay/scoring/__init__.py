"""Online scoring: scorers registered on experiments score completed traces and sessions.

The public API is :class:`Scorer` and the functions of :mod:`assay.scoring.scorers`; the
other modules (store, service, engine, judges, heuristics) are what the server runs.
"""

from assay.scoring.scorers import (
    RegisteredScorer,
    Scorer,
    Target,
    backfill_scorer,
    delete_scorer,
    list_scorers,
    set_scorer_status,
)

__all__ = [
    "RegisteredScorer",
    "Scorer",
    "Target",
    "backfill_scorer",
    "delete_scorer",
    "list_scorers",
    "set_scorer_status",
]
