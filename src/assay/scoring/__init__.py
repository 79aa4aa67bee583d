"""Online scoring: scorers registered on experiments score completed traces and sessions.

The public API is :class:`Scorer` and the functions of :mod:`assay.scoring.scorers`; the
other modules (store, service, engine, judges, heuristics) are what the server runs.

Names are imported from :mod:`.scorers` on first use, so importing a submodule (the stores
import :mod:`.store`) does not load the public API and what it opens (client, backend).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    """Import a public name on first use (submodules import as usual)."""
    if name not in __all__:
        raise AttributeError(f"module 'assay.scoring' has no attribute {name!r}")
    value = getattr(importlib.import_module("assay.scoring.scorers"), name)
    globals()[name] = value
    return value
