"""Scorer kinds: which code validates a definition and which runs it.

``llm_judge`` (:mod:`.judge`), ``custom`` (:mod:`.custom`, sandboxed) and the heuristics of
:mod:`.heuristics`. :func:`validate` runs when a scorer is registered (a bad definition is a
400 then, not a failure on every trace later); :func:`build` when a scoring job starts.

Scorers whose cost their author decides (a judge, custom code, a user's regular expression) are
``slow``: the engine runs them off the job's thread, each scorer on its own, so that one of them
cannot hold back the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from assay.config import Settings
from assay.errors import InvalidRequestError, PermissionDeniedError, ScorerTimeoutError
from assay.scoring import custom, heuristics, judge
from assay.scoring.model import Feedback, Level, ScoreFn, ScoreManyFn, ScoringItem
from assay.tracing.model import AssessmentSource
from assay.util import did_you_mean

__all__ = ["JUDGE", "Built", "build", "kinds", "validate"]

JUDGE = "llm_judge"
CUSTOM = "custom"
REGEX = "regex"


@dataclass(frozen=True)
class Built:
    """A scorer ready to run."""

    fn: ScoreFn
    source_type: AssessmentSource
    slow: bool
    """Its cost is its author's (a judge, a sandbox, a user's regex): run on the job's thread
    pool, apart from the other scorers, not inline."""
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
        suffix = did_you_mean(kind, kinds())
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
    limits = heuristics.Limits(regex_timeout_s=settings.scoring_regex_timeout_s)
    fn = heuristics.HEURISTICS[kind].build(definition, limits)
    if kind == REGEX:
        return Built(fn, AssessmentSource.CODE, True, False, many=_until_timeout(fn))
    return Built(fn, AssessmentSource.CODE, False, False)


def _until_timeout(fn: ScoreFn) -> ScoreManyFn:
    """Score items one after another, and stop once ``TIMEOUTS_PER_CHUNK`` of them timed out:
    the items after that are not scored now (``ScorerTimeoutError(ran=False)``, retried
    later), so a chunk costs a few time limits, not one per item."""

    def many(items: Sequence[ScoringItem]) -> list[Feedback | Exception]:
        results: list[Feedback | Exception] = []
        timeouts = 0
        for item in items:
            try:
                results.append(fn(item))
            except ScorerTimeoutError as exc:
                results.append(exc)
                timeouts += 1
                if timeouts >= custom.TIMEOUTS_PER_CHUNK:
                    break
            except Exception as exc:
                results.append(exc)
        return results + _not_run(results[-1] if results else None, len(items) - len(results))

    return many


def _not_run(cause: object, count: int) -> list[Feedback | Exception]:
    """``count`` results for items left unscored after ``cause`` (a timeout) in their chunk."""
    reason = f"not scored yet: an earlier item of its chunk timed out ({cause})"
    return [ScorerTimeoutError(reason, ran=False) for _ in range(count)]
