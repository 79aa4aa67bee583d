"""Custom code scorers: user code, run only in the ``sandbox`` executor.

Off unless the server runs with ``--allow-custom-scorers``. The definition is
``{"code": "def score(inputs, outputs, trace): ..."}``; it is compiled (never run) when the
scorer is registered, to refuse syntax errors early. Items are scored in fresh sandbox processes
(:mod:`assay.jobs.executors.sandbox`: no network, no new processes, limited memory, CPU and
files), with ``assay_sandboxed.scorer.run`` as the entry point: one sandbox per chunk of items
(:data:`assay.scoring.engine.BATCH_CALL_ITEMS`), each item with its own time limit.

A chunk costs at most :data:`TIMEOUTS_PER_CHUNK` time limits, whatever the code does: the
sandbox stops once that many items timed out (the items after them are retried later, see
:class:`~assay.errors.ScorerTimeoutError`), and an item that runs past its limit without being
stopped by the sandbox's alarm (code that swallows the alarm's exception, or blocks in C) has
its sandbox killed by the parent's watchdog a moment later, which ends the chunk too.
"""

from __future__ import annotations

import ast
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from assay.config import Settings
from assay.errors import AssayError, InvalidRequestError, ScorerTimeoutError
from assay.jobs.context import JobContext
from assay.jobs.executors.base import Completed
from assay.jobs.executors.sandbox import SandboxExecutor
from assay.jobs.model import Job, JobStatus
from assay.jobs.registry import JobSpec
from assay.scoring.model import Feedback, ScoringItem
from assay_sandboxed import scorer as sandboxed

__all__ = ["MAX_CODE_CHARS", "TIMEOUTS_PER_CHUNK", "SandboxedScorer", "validate_custom"]

MAX_CODE_CHARS = 100_000
_SPEC = JobSpec(name="assay.custom_scorer", fn=sandboxed.run, executor="sandbox")
TIMEOUTS_PER_CHUNK = 2
"""A chunk stops after this many items timed out: one is an accident, two a slow scorer."""
_START_S = 10.0
"""A sandbox has this long (plus one item's ``timeout_s``, for the code's own imports) to start
its first item; its whole run, every item's ``timeout_s`` plus this."""
_GRACE_S = 2.0
"""How long past its ``timeout_s`` an item may run before the parent kills its sandbox (the
sandbox's own alarm normally stops it at ``timeout_s``)."""


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
    ``timeout_s``; once :data:`TIMEOUTS_PER_CHUNK` items timed out the chunk ends, and the items
    after them come back as ``ScorerTimeoutError(ran=False)`` (retried later). A sandbox that
    dies as a whole (killed at its memory or CPU limit) is retried one item per sandbox, so
    only the item to blame fails."""

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
        except _Overran as exc:
            # Killed while on item ``exc.index``: the items before it were scored, but their
            # answers went with the sandbox, so they are scored again.
            timed_out = ScorerTimeoutError(
                f"custom scorer timed out after {self.timeout_s:g}s (it ignored the time "
                "limit, so its sandbox was stopped)"
            )
            before = self.score_many(items[: exc.index]) if exc.index else []
            return [*before, timed_out, *_not_run(timed_out, len(items) - exc.index - 1)]
        except _StartFailed as exc:
            return [AssayError(str(exc)) for _ in items]
        except AssayError as exc:
            if len(items) == 1:
                return [exc]
            return [result for item in items for result in self.score_many([item])]
        results = [self._result(answer) for answer in answers]
        if len(results) < len(items):
            results += _not_run(results[-1], len(items) - len(results))
        return results

    def _result(self, answer: Any) -> Feedback | Exception:
        if _timed_out(answer):
            return ScorerTimeoutError(f"custom scorer timed out after {self.timeout_s:g}s")
        return _feedback(answer)

    def _sandbox(self, items: Sequence[ScoringItem]) -> list[Any]:
        """One sandbox run over ``items``: an answer per item up to the first that timed out,
        or AssayError for the run (:class:`_Overran` when the watchdog stopped it)."""
        now = datetime.now(UTC)
        wall_s = self.timeout_s * len(items) + _START_S
        params = {
            "code": self.code,
            "items": [{"inputs": i.inputs, "outputs": i.outputs, "trace": i.trace} for i in items],
            "item_timeout_s": self.timeout_s,
            "max_timeouts": TIMEOUTS_PER_CHUNK,
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
        ctx = _Watched(job, len(items), self.timeout_s)
        timer = threading.Timer(
            wall_s, ctx.cancel, args=(f"timed out after {wall_s:g}s",), kwargs={"timed_out": True}
        )
        timer.start()
        try:
            outcome = self.executor.run(_SPEC, ctx)
        finally:
            timer.cancel()
            ctx.disarm()
        result = outcome.result if isinstance(outcome, Completed) else None
        answers = result.get("results") if isinstance(result, dict) else None
        if isinstance(answers, list) and (
            len(answers) == len(items)
            or (0 < len(answers) < len(items) and _timed_out(answers[-1]))
        ):
            return answers
        if ctx.overran is not None and ctx.overran < 0:
            raise _StartFailed(
                "custom scorer failed: the code did not start scoring within "
                f"{_START_S + self.timeout_s:g}s (does it run something slow at import?)"
            )
        if ctx.overran is not None:
            raise _Overran(ctx.overran)
        if not isinstance(outcome, Completed):
            message = getattr(outcome, "error", None) or getattr(outcome, "reason", None)
            raise AssayError(f"custom scorer failed: {message or type(outcome).__name__}")
        raise AssayError("custom scorer failed: the sandbox returned no result per item")

    def close(self) -> None:
        self.executor.stop()


class _Overran(AssayError):
    """The watchdog stopped the sandbox while it ran item ``index``."""

    def __init__(self, index: int) -> None:
        super().__init__(f"item {index} ran past its time limit")
        self.index = index


class _StartFailed(AssayError):
    """The sandbox did not start its first item in time."""


class _Watched(JobContext):
    """A sandbox run's context that follows which item runs (the sandbox reports each start as
    progress) and cancels the run, which kills the sandbox, once an item is ``_GRACE_S`` past
    its ``timeout_s`` (or the first item has not started ``_START_S`` after the run began).
    Progress is the untrusted child's word: a report that is not an item index is ignored."""

    def __init__(self, job: Job, items: int, timeout_s: float) -> None:
        super().__init__(job)
        self.items = items
        self.timeout_s = timeout_s
        self.overran: int | None = None
        """The item the watchdog stopped the run at (-1: before the first item started)."""
        self._running = -1
        self._timer: threading.Timer | None = None
        self._watch = threading.Lock()
        self._arm(-1, _START_S + timeout_s)

    def progress(
        self, completed: float, total: float | None = None, message: str | None = None
    ) -> None:
        super().progress(completed, total, message)
        index = int(completed)
        if index == completed and 0 <= index < self.items:
            self._arm(index, self.timeout_s + _GRACE_S)

    def disarm(self) -> None:
        with self._watch:
            if self._timer is not None:
                self._timer.cancel()
            self._running = self.items  # no item runs any more: a late timer does nothing

    def _arm(self, index: int, after_s: float) -> None:
        with self._watch:
            if self._timer is not None:
                self._timer.cancel()
            self._running = index
            self._timer = threading.Timer(after_s, self._expired, args=(index,))
            self._timer.daemon = True
            self._timer.start()

    def _expired(self, index: int) -> None:
        with self._watch:
            if self._running != index or self.overran is not None:
                return
            self.overran = index
        self.cancel(f"item {index} ran past its time limit", timed_out=True)


def _timed_out(answer: Any) -> bool:
    return isinstance(answer, dict) and answer.get("timeout") is True


def _not_run(cause: object, count: int) -> list[Feedback | Exception]:
    """Results for the ``count`` items of a chunk that were not run after ``cause``."""
    reason = f"not scored yet: an earlier item of its chunk timed out ({cause})"
    return [ScorerTimeoutError(reason, ran=False) for _ in range(count)]


def _feedback(answer: Any) -> Feedback | Exception:
    if isinstance(answer, dict) and "value" in answer:
        rationale = answer.get("rationale")
        return Feedback(answer["value"], rationale if isinstance(rationale, str) else None)
    error = answer.get("error") if isinstance(answer, dict) else None
    return AssayError(f"custom scorer failed: {error or 'the sandbox returned no value'}")
