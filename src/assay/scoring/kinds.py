"""Scorer kinds: which code validates a definition and which runs it.

``llm_judge`` (:mod:`.judge`), ``custom`` (:mod:`.custom`, sandboxed) and the heuristics of
:mod:`.heuristics`. :func:`validate` runs when a scorer is registered (a bad definition is a
400 then, not a failure on every trace later); :func:`build` when a scoring job starts.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from assay.config import Settings
from assay.errors import InvalidRequestError, PermissionDeniedError
from assay.scoring import custom, heuristics, judge
from assay.scoring.model import Level, ScoreFn, ScoreManyFn
from assay.tracing.model import AssessmentSource

__all__ = ["JUDGE", "Built", "build", "kinds", "validate"]

JUDGE = "llm_judge"
CUSTOM = "custom"


@dataclass(frozen=True)
class Built:
    """A scorer ready to run."""

    fn: ScoreFn
    source_type: AssessmentSource
    slow: bool
    """Calls out (a judge, a sandbox): run on the job's thread pool, not inline."""
    needs_spans: bool
    """Reads ``item.trace["spans"]``, so the job loads them."""
    many: ScoreManyFn | None = None
    """Scores a list of items in one call (one result or error per item): the engine then
    calls it per chunk of items instead of ``fn`` per item."""


def kinds() -> list[str]:
    return sorted([JUDGE, CUSTOM, *heuristics.HEURISTICS])


def validate(
    kind: str, level: Level, definition: Mapping[str, Any], settings: Settings
) -> dict[str, Any]:
    """The normalised definition, or an error naming what is wrong with it."""
    if not isinstance(definition, Mapping):
        raise InvalidRequestError("scorer definition must be a JSON object")
    if kind == JUDGE:
        return judge.validate_judge(definition)
    if kind == CUSTOM:
        if not settings.allow_custom_scorers:
            raise PermissionDeniedError(
                "custom code scorers are disabled on this server; "
                "start it with --allow-custom-scorers (they then run in the sandbox executor)"
            )
        return custom.validate_custom(definition)
    spec = heuristics.HEURISTICS.get(kind)
    if spec is None:
        hint = difflib.get_close_matches(kind, kinds(), n=1)
        suffix = f"; did you mean {hint[0]!r}?" if hint else ""
        raise InvalidRequestError(
            f"unknown scorer kind {kind!r}{suffix} (known: {', '.join(kinds())})"
        )
    return spec.validate(definition)


def build(kind: str, definition: dict[str, Any], settings: Settings) -> Built:
    if kind == JUDGE:
        endpoint = judge.JudgeEndpoint(
            base_url=settings.judge_base_url,
            api_key=(settings.judge_api_key.get_secret_value() if settings.judge_api_key else None),
            model=settings.judge_model,
            timeout_s=settings.judge_timeout_s,
            max_retry_s=settings.judge_max_retry_s,
        )
        needs = "trace" in judge.placeholders(definition["instructions"])
        return Built(judge.Judge(definition, endpoint), AssessmentSource.LLM_JUDGE, True, needs)
    if kind == CUSTOM:
        sandboxed = custom.SandboxedScorer(definition, settings)
        return Built(sandboxed, AssessmentSource.CODE, True, True, many=sandboxed.score_many)
    return Built(heuristics.HEURISTICS[kind].build(definition), AssessmentSource.CODE, False, False)
