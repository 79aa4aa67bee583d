"""Registering scorers, backfills and the decision log: what the REST API, the CLI and the
Python API call (checks first, then :mod:`assay.scoring.store`)."""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from assay.config import Settings
from assay.errors import InvalidRequestError, NotFoundError
from assay.scoring import judge, kinds
from assay.scoring.engine import session_key, trace_key
from assay.scoring.model import Level, ScoringItem
from assay.scoring.sampler import sampled, uniform
from assay.scoring.store import (
    ACTIVE,
    FAILED,
    FILTERED,
    PAUSED,
    PENDING,
    SOURCE_RUN_KEY,
    STOPPED,
    ScorerRecord,
)
from assay.tracing.filters import parse_filter
from assay.tracing.model import Trace

if TYPE_CHECKING:
    from assay.stores import Stores

__all__ = ["BACKFILL_JOB", "BackfillPlan", "ScoringService"]

BACKFILL_JOB = "assay.scoring.backfill"

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")
_SCAN_LIMIT = 1_000_000
_ESTIMATE_SAMPLE = 50
_JUDGE_OUTPUT_TOKENS = 80


@dataclass(frozen=True)
class BackfillPlan:
    """The traces a backfill would queue."""

    trace_ids: list[str]
    """In the range, complete, not from an evaluation run, sampled, matching the filter and
    without this scorer's assessment yet."""
    examined: int
    estimated_tokens: int | None
    """For a judge: prompt tokens (about 4 characters each) plus an answer per trace."""

    def to_dict(self, cap: int) -> dict[str, Any]:
        return {
            "count": len(self.trace_ids),
            "examined": self.examined,
            "estimated_tokens": self.estimated_tokens,
            "cap": cap,
            "over_cap": len(self.trace_ids) > cap,
        }


class ScoringService:
    """Scorers of experiments on one store."""

    def __init__(self, stores: Stores, settings: Settings) -> None:
        self.settings = settings
        self.traces = stores.traces
        self.store = stores.scoring

    # -- scorers ----------------------------------------------------------------------------

    def put(
        self,
        experiment_id: str,
        name: str,
        *,
        kind: str,
        definition: Mapping[str, Any] | None = None,
        level: str = "trace",
        sample_rate: float = 1.0,
        filter_string: str | None = None,
    ) -> ScorerRecord:
        """Register (or replace) a scorer; every check runs before anything is written."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise InvalidRequestError(
                f"scorer name {name!r} must be 1 to 100 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        try:
            scorer_level = Level(level)
        except ValueError:
            raise InvalidRequestError(
                f"scorer level must be 'trace' or 'session', not {level!r}"
            ) from None
        if (
            isinstance(sample_rate, bool)
            or not isinstance(sample_rate, int | float)
            or not math.isfinite(sample_rate)
            or not 0 <= sample_rate <= 1
        ):
            raise InvalidRequestError(
                f"sample_rate must be a number from 0 to 1, not {sample_rate!r}"
            )
        if filter_string is not None and not filter_string.strip():
            filter_string = None
        parse_filter(filter_string)  # InvalidFilterError (400) names the token and position
        checked = kinds.validate(kind, scorer_level, definition or {}, self.settings)
        return self.store.scorer_put(
            experiment_id,
            name,
            kind=kind,
            level=scorer_level,
            definition=checked,
            sample_rate=float(sample_rate),
            filter_string=filter_string,
        )

    def get(self, experiment_id: str, name: str) -> ScorerRecord:
        found = self.store.scorer_get(experiment_id, name)
        if found is None:
            raise NotFoundError(f"scorer {name!r} not found in experiment {experiment_id!r}")
        return found

    def list(self, experiment_id: str) -> list[ScorerRecord]:
        return self.store.scorers_list(experiment_id)

    def delete(self, experiment_id: str, name: str) -> None:
        if not self.store.scorer_delete(experiment_id, name):
            raise NotFoundError(f"scorer {name!r} not found in experiment {experiment_id!r}")

    def set_status(self, experiment_id: str, name: str, status: str) -> ScorerRecord:
        """``ACTIVE`` (resume), ``PAUSED`` (stop scoring, keep queuing) or ``STOPPED``."""
        if status not in (ACTIVE, PAUSED, STOPPED):
            raise InvalidRequestError(f"status must be ACTIVE, PAUSED or STOPPED, not {status!r}")
        reason = {PAUSED: "paused by request", STOPPED: "stopped by request"}.get(status)
        found = self.store.scorer_set_status(experiment_id, name, status, reason)
        if found is None:
            raise NotFoundError(f"scorer {name!r} not found in experiment {experiment_id!r}")
        return found

    # -- backfill ---------------------------------------------------------------------------

    def backfill_plan(
        self, experiment_id: str, name: str, start_ms: int, end_ms: int
    ) -> BackfillPlan:
        """Which past traces (started in [start_ms, end_ms)) a backfill would score."""
        scorer = self.get(experiment_id, name)
        if scorer.level != Level.TRACE:
            raise InvalidRequestError("backfill scores traces; session scorers are not supported")
        if end_ms <= start_ms:
            raise InvalidRequestError("backfill end must be after start")
        condition = f"metadata.`{SOURCE_RUN_KEY}` IS NULL"
        if scorer.filter_string:
            condition = f"({scorer.filter_string}) AND {condition}"
        ids = self.traces.trace_ids_completed(
            experiment_id, start_ms, end_ms, condition, limit=_SCAN_LIMIT
        )
        chosen = [t for t in ids if sampled(t, scorer.sample_rate)]
        keys = {t: trace_key(t, scorer) for t in chosen}
        done = self.traces.assessments_by_key(list(keys.values()))
        todo = [t for t in chosen if keys[t] not in done]
        return BackfillPlan(todo, len(ids), self._estimate_tokens(scorer, todo))

    def backfill(
        self,
        experiment_id: str,
        name: str,
        start_ms: int,
        end_ms: int,
        *,
        dry_run: bool,
        submit: Callable[[str, dict[str, Any]], str],
    ) -> dict[str, Any]:
        """Count a backfill (``dry_run``), or queue its job with ``submit(job name, params)``
        (which returns the job id): ``{count, examined, estimated_tokens, cap, over_cap,
        job_id}``. Over ``backfill_max_traces`` nothing is queued (400)."""
        plan = self.backfill_plan(experiment_id, name, start_ms, end_ms)
        cap = self.settings.backfill_max_traces
        out: dict[str, Any] = {**plan.to_dict(cap), "job_id": None}
        if dry_run:
            return out
        if out["over_cap"]:
            raise InvalidRequestError(
                f"backfill would score {out['count']} traces, over the cap of {cap}; "
                "narrow the time range (or raise ASSAY_BACKFILL_MAX_TRACES)"
            )
        params = {"experiment_id": experiment_id, "scorer": name, "start_ms": start_ms,
                  "end_ms": end_ms}  # fmt: skip
        out["job_id"] = submit(BACKFILL_JOB, params)
        return out

    def _estimate_tokens(self, scorer: ScorerRecord, trace_ids: Sequence[str]) -> int | None:
        if scorer.kind != kinds.JUDGE or not trace_ids:
            return None if scorer.kind != kinds.JUDGE else 0
        step = max(len(trace_ids) // _ESTIMATE_SAMPLE, 1)
        sample = self.traces.traces_get_many(list(trace_ids)[::step][:_ESTIMATE_SAMPLE])
        chars = [
            len(
                judge.render(
                    scorer.definition["instructions"],
                    ScoringItem(t.request, t.response, {"trace_id": t.trace_id}),
                )
            )
            for t in sample
        ]
        per_trace = sum(chars) / max(len(chars), 1) / 4 + _JUDGE_OUTPUT_TOKENS
        return round(per_trace * len(trace_ids))

    # -- decision log -----------------------------------------------------------------------

    def decisions(self, trace: Trace) -> builtins.list[dict[str, Any]]:
        """Per scorer of the trace's experiment: what online scoring did or will do with this
        trace, and why."""
        scorers = self.store.scorers_list(trace.experiment_id)
        targets = [(Level.TRACE, trace.trace_id)]
        if trace.session_id:
            targets.append((Level.SESSION, trace.session_id))
        rows = {
            (d.level, d.scorer_name): d for d in self.store.decisions(trace.experiment_id, targets)
        }
        keys: dict[str, str] = {}
        for scorer in scorers:
            if scorer.level == Level.TRACE:
                keys[scorer.name] = trace_key(trace.trace_id, scorer)
            elif trace.session_id:
                keys[scorer.name] = session_key(trace.session_id, scorer)
        done = self.traces.assessments_by_key(list(keys.values()))
        now_ms = self.store.now_ms()
        retention_ms = self.settings.scoring_retention_s * 1000
        out = []
        for scorer in scorers:
            target = trace.trace_id if scorer.level == Level.TRACE else trace.session_id
            entry: dict[str, Any] = {
                "scorer": scorer.name,
                "level": scorer.level.value,
                "scorer_status": scorer.status,
                "sample_rate": scorer.sample_rate,
            }
            assessment = done.get(keys.get(scorer.name, ""))
            row = rows.get((scorer.level, scorer.name))
            if target is None:
                entry.update(state="not_applicable", reason="the trace has no session")
            elif assessment is not None:
                entry.update(
                    state="done",
                    reason=f"assessed (value {assessment.value!r})",
                    assessment_id=assessment.id,
                    trace_id=assessment.trace_id,
                )
            elif row is not None:
                entry.update(_ledger_state(row.state, row.leased, scorer, row.attempts))
                entry.update(reason=row.last_error or entry.get("reason"), attempts=row.attempts)
                if row.state == PENDING:
                    entry["due_at_ms"] = row.due_at_ms
            elif SOURCE_RUN_KEY in trace.metadata:
                entry.update(state="skipped", reason="trace of an evaluation run")
            elif not sampled(target, scorer.sample_rate):
                entry.update(
                    state="not_sampled",
                    reason=f"sample draw {uniform(target):.4f} >= rate {scorer.sample_rate:g}",
                )
            elif scorer.level == Level.TRACE and trace.completed_at_ms is None:
                entry.update(state="waiting", reason="the trace is still in progress")
            elif (trace.completed_at_ms or 0) <= scorer.created_at_ms:
                entry.update(
                    state="before_scorer",
                    reason="completed before the scorer was registered; backfill scores it",
                )
            elif (trace.completed_at_ms or 0) < now_ms - retention_ms:
                entry.update(
                    state="pruned",
                    reason="no ledger entry: decided without an assessment (filtered out or "
                    f"failed) over {self.settings.scoring_retention_s:g} s ago and pruned, or "
                    "never queued; backfill scores it",
                )
            else:
                entry.update(
                    state="not_queued",
                    reason="no ledger entry (the scorer was stopped or deleted meanwhile); "
                    "backfill scores it",
                )
            out.append(entry)
        return out


def _ledger_state(state: str, leased: bool, scorer: ScorerRecord, attempts: int) -> dict[str, Any]:
    if state == FILTERED:
        return {"state": "filtered_out"}
    if state == FAILED:
        return {"state": "failed"}
    if scorer.status == PAUSED:
        return {"state": "paused", "reason": f"scorer paused: {scorer.status_reason}"}
    if attempts > 0:
        return {"state": "retrying"}
    return {"state": "scoring" if leased else "pending", "reason": "sampled, queued"}
