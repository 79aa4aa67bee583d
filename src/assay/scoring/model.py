"""What scorers are and what they see and return, as typed values.

A :class:`Scorer` is pure data (name, kind, version, JSON definition, level); the code that
runs a kind lives in :mod:`assay.scoring.heuristics`, :mod:`assay.scoring.judge` and
:mod:`assay.scoring.custom`, looked up by :func:`assay.scoring.kinds.build`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Feedback", "Level", "ScoreFn", "ScoreManyFn", "ScoringItem"]


class Level(enum.StrEnum):
    TRACE = "trace"
    """Scores each completed trace on its own."""
    SESSION = "session"
    """Scores all traces of a session, in order, once the session has been idle long enough."""


@dataclass(frozen=True)
class ScoringItem:
    """What a scorer sees.

    For a trace: ``inputs``/``outputs`` are the trace's request and response (as derived from its
    root span), ``trace`` the JSON view of the trace summary with its ``spans``.
    For a session: ``inputs``/``outputs`` are the lists of the requests and responses of its
    traces in start order, ``trace`` is ``{"session_id": ..., "traces": [summary, ...]}``.
    """

    inputs: Any
    outputs: Any
    trace: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Feedback:
    """What a scorer returns: a value (bool, number, string or JSON object), an optional
    rationale, and metadata stored with the assessment (a judge puts ``model``,
    ``input_tokens``, ``output_tokens`` and ``cost`` there)."""

    value: Any
    rationale: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


ScoreFn = Callable[[ScoringItem], Feedback]
"""A scorer ready to run: built once per job from its definition, called once per item
(possibly from several threads at once)."""

ScoreManyFn = Callable[[Sequence[ScoringItem]], list[Feedback | Exception]]
"""A scorer that scores several items in one call, returning each item's feedback or the
error that item raised, in order (used where one call has a high fixed cost, like a sandbox)."""
