"""Custom code scorers: user code, run only in the ``sandbox`` executor.

Off unless the server runs with ``--allow-custom-scorers``. The definition is
``{"code": "def score(inputs, outputs, trace): ..."}``; it is compiled (never run) when the
scorer is registered, to refuse syntax errors early. Each item is scored in a fresh sandbox
process (:mod:`assay.jobs.executors.sandbox`: no network, no new processes, limited memory, CPU
and files), with ``assay_sandboxed.scorer.run`` as its entry point.
"""

from __future__ import annotations

import ast
import threading
import uuid
from collections.abc import Mapping
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
    """A :data:`~assay.scoring.model.ScoreFn` that runs the code in a sandbox per item."""

    def __init__(self, definition: Mapping[str, Any], settings: Settings) -> None:
        self.code = str(definition["code"])
        self.timeout_s = float(definition.get("timeout_s", 30))
        self.executor = SandboxExecutor(settings, slots=settings.scoring_concurrency)

    def __call__(self, item: ScoringItem) -> Feedback:
        now = datetime.now(UTC)
        job = Job(
            id=str(uuid.uuid4()),
            name=_SPEC.name,
            params={
                "code": self.code,
                "inputs": item.inputs,
                "outputs": item.outputs,
                "trace": item.trace,
            },
            status=JobStatus.RUNNING,
            result=None,
            error=None,
            attempt=1,
            max_retries=0,
            timeout=self.timeout_s,
            created_at=now,
            started_at=now,
            finished_at=None,
            worker_id=None,
            progress=None,
        )
        ctx = JobContext(job)
        timer = threading.Timer(
            self.timeout_s,
            ctx.cancel,
            args=(f"timed out after {self.timeout_s:g}s",),
            kwargs={"timed_out": True},
        )
        timer.start()
        try:
            outcome = self.executor.run(_SPEC, ctx)
        finally:
            timer.cancel()
        if not isinstance(outcome, Completed):
            message = getattr(outcome, "error", None) or getattr(outcome, "reason", None)
            raise AssayError(f"custom scorer failed: {message or type(outcome).__name__}")
        result = outcome.result
        if not isinstance(result, dict) or "value" not in result:
            raise AssayError("custom scorer failed: the sandbox returned no value")
        return Feedback(value=result["value"], rationale=result.get("rationale"))

    def close(self) -> None:
        self.executor.stop()
