"""Custom code scorers: user code, run only in the ``sandbox`` executor.

Off unless the server runs with ``--allow-custom-scorers``. The definition is
``{"code": "def score(inputs, outputs, trace): ..."}``; it is compiled (never run) when the
scorer is registered, to refuse syntax errors early. Items are scored in fresh sandbox processes
(:mod:`assay.jobs.executors.sandbox`: no network, no new processes, limited memory, CPU and
files), with ``assay_sandboxed.scorer.run`` as the entry point: one sandbox per chunk of items
(:data:`assay.scoring.engine.BATCH_CALL_ITEMS`), each item with its own time limit.
"""

from __future__ import annotations

import ast
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from assay.config import Settings
from assay.errors import AssayError, InvalidRequestError
from assay.jobs.context import JobContext
from assay.jobs.executors.base import Completed
from assay.jobs.executors.sandbox import SandboxExecutor
from assay.jobs.model import Job, JobStatus
from assay.jobs.registry import JobSpec
from assay.scoring.model import Feedback, ScoringItem
from assay_sandboxed import scorer as sandboxed

__all__ = ["MAX_CODE_CHARS", "SandboxedScorer", "validate_custom"]

MAX_CODE_CHARS = 100_000
_SPEC = JobSpec(name="assay.custom_scorer", fn=sandboxed.run, executor="sandbox")
_START_S = 10.0
"""A sandbox run's wall limit is every item's ``timeout_s`` plus this, for its start."""


def validate_custom(definition: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(definition) - {"code", "timeout_s"})
    if unknown:
        raise InvalidRequestError(f"custom scorer: unknown field {unknown[0]!r}")
    code = definition.get("code")
    if not isinstance(code, str) or not code.strip():
        raise InvalidRequestError("custom scorer: 'code' must be Python source defining score()")
    if len(code) > MAX_CODE_CHARS:
        raise InvalidRequestError(f"custom scorer: 'code' is over {MAX_CODE_CHARS} characters")
    try:
        tree = ast.parse(code, "<custom scorer>")
    except SyntaxError as exc:
        raise InvalidRequestError(
            f"custom scorer: 'code' does not compile: {exc.msg} (line {exc.lineno})"
        ) from None
    defines = any(isinstance(node, ast.FunctionDef) and node.name == "score" for node in tree.body)
    if not defines:
        raise InvalidRequestError(
            "custom scorer: 'code' must define score(inputs, outputs, trace) at top level"
        )
    timeout = definition.get("timeout_s", 30)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 600:
        raise InvalidRequestError("custom scorer: 'timeout_s' must be a number of seconds, 0-600")
    return {"code": code, "timeout_s": float(timeout)}


class SandboxedScorer:
    """A :data:`~assay.scoring.model.ScoreFn` that runs the code in a sandbox, and a
    :data:`~assay.scoring.model.ScoreManyFn` that runs it on many items in one sandbox (a
    sandbox costs a fresh interpreter; an item, microseconds). Each item has its own
    ``timeout_s``. A sandbox that dies as a whole (killed at its memory or CPU limit, stuck past
    every item's time) is retried one item per sandbox, so only the item to blame fails."""

    def __init__(self, definition: Mapping[str, Any], settings: Settings) -> None:
        self.code = str(definition["code"])
        self.timeout_s = float(definition.get("timeout_s", 30))
        self.executor = SandboxExecutor(settings, slots=settings.scoring_concurrency)

    def __call__(self, item: ScoringItem) -> Feedback:
        (result,) = self.score_many([item])
        if isinstance(result, Exception):
            raise result
        return result

    def score_many(self, items: Sequence[ScoringItem]) -> list[Feedback | Exception]:
        try:
            answers = self._sandbox(items)
        except AssayError as exc:
            if len(items) == 1:
                return [exc]
            return [result for item in items for result in self.score_many([item])]
        return [_feedback(answer) for answer in answers]

    def _sandbox(self, items: Sequence[ScoringItem]) -> list[Any]:
        """One sandbox run over ``items``: one answer per item, or AssayError for the run."""
        now = datetime.now(UTC)
        wall_s = self.timeout_s * len(items) + _START_S
        params = {
            "code": self.code,
            "items": [{"inputs": i.inputs, "outputs": i.outputs, "trace": i.trace} for i in items],
            "item_timeout_s": self.timeout_s,
        }
        job = Job(
            id=str(uuid.uuid4()),
            name=_SPEC.name,
            params=params,
            status=JobStatus.RUNNING,
            result=None,
            error=None,
            attempt=1,
            max_retries=0,
            timeout=wall_s,
            created_at=now,
            started_at=now,
            finished_at=None,
            worker_id=None,
            progress=None,
        )
        ctx = JobContext(job)
        timer = threading.Timer(
            wall_s, ctx.cancel, args=(f"timed out after {wall_s:g}s",), kwargs={"timed_out": True}
        )
        timer.start()
        try:
            outcome = self.executor.run(_SPEC, ctx)
        finally:
            timer.cancel()
        if not isinstance(outcome, Completed):
            message = getattr(outcome, "error", None) or getattr(outcome, "reason", None)
            raise AssayError(f"custom scorer failed: {message or type(outcome).__name__}")
        answers = outcome.result.get("results") if isinstance(outcome.result, dict) else None
        if not isinstance(answers, list) or len(answers) != len(items):
            raise AssayError("custom scorer failed: the sandbox returned no result per item")
        return answers

    def close(self) -> None:
        self.executor.stop()


def _feedback(answer: Any) -> Feedback | Exception:
    if isinstance(answer, dict) and "value" in answer:
        rationale = answer.get("rationale")
        return Feedback(answer["value"], rationale if isinstance(rationale, str) else None)
    error = answer.get("error") if isinstance(answer, dict) else None
    return AssayError(f"custom scorer failed: {error or 'the sandbox returned no value'}")
