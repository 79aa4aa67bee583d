"""UI pages: experiments, their traces, one trace, and the scorers of an experiment.

The pages call the same stores and services as the REST routes (:mod:`.routes.traces`,
:mod:`.routes.scoring`, :mod:`.routes.tracking`) and apply their permission checks: reading
needs access to the experiment, changing scorers needs an admin. The only SQL here reads
assessments for many traces at once (a trace page's scorer columns, the scorers' charts),
which no store offers as one query.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from assay import jsonvalue
from assay.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from assay.scoring import kinds
from assay.scoring.service import ScoringService
from assay.scoring.store import ScorerRecord
from assay.server.auth import Principal, require_admin, require_api_token, require_scope
from assay.server.deps import scoring_service, stores, trace_store, tracking_store
from assay.server.errors import status_for
from assay.server.ui.pages import UiCaller, is_fragment, render, templates
from assay.tracing.model import Span, Trace, trace_id_of

__all__ = ["Chart", "Timeline", "bucket_size", "charts", "latest_values", "router", "span_tree"]

router = APIRouter()

PAGE_SIZE = 50
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MAX_POINTS = 48
"""A chart has at most this many buckets: an hour each, or longer for long ranges."""
FORM_ERRORS = (InvalidRequestError, PermissionDeniedError, NotFoundError, ConflictError)
"""Errors a form shows inline (bad input, not allowed, gone); anything else is the server's."""
_PASS = frozenset({"yes", "true", "pass", "passed"})
_FAIL = frozenset({"no", "false", "fail", "failed"})


# -- experiments -----------------------------------------------------------------------------------


@router.get("/ui/experiments", response_class=HTMLResponse)
def experiments_page(request: Request, caller: UiCaller) -> Response:
    require_api_token(caller, "list experiments")
    page = tracking_store(request).list_experiments(limit=200)
    return render(request, "experiments.html", section="experiments", experiments=page.experiments)


@router.get("/ui/experiments/{experiment_id}", response_class=HTMLResponse)
def experiment_page(
    request: Request,
    experiment_id: str,
    caller: UiCaller,
    filter_string: Annotated[str, Query(alias="filter", max_length=10_000)] = "",
    order_by: Annotated[str, Query(max_length=1000)] = "",
    page_token: Annotated[str | None, Query(max_length=4000)] = None,
) -> Response:
    """The experiment's traces (newest first, or ``order_by``) matching ``filter``, with one
    column per scorer holding the trace's latest value of it."""
    require_scope(caller, "experiment_id", experiment_id)
    experiment = tracking_store(request).get_experiment(experiment_id)
    scorers = scoring_service(request).list(experiment_id)
    context: dict[str, Any] = {
        "section": "experiments",
        "experiment": experiment,
        "scorers": scorers,
        "filter": filter_string,
        "order_by": order_by,
        "traces": [],
        "values": {},
        "next_url": None,
        "filter_error": None,
    }
    try:
        page = trace_store(request).traces_search(
            [experiment_id],
            filter_string=filter_string.strip() or None,
            order_by=order_by.strip() or None,
            max_results=PAGE_SIZE,
            page_token=page_token or None,
        )
    except InvalidRequestError as exc:
        context["filter_error"] = str(exc)
        return render(request, "experiment.html", status_code=400, **context)
    ids = [t.trace_id for t in page.traces]
    context["traces"] = page.traces
    context["values"] = latest_values(request, ids, [s.name for s in scorers])
    if page.next_page_token:
        query = {"filter": filter_string, "order_by": order_by, "page_token": page.next_page_token}
        context["next_url"] = f"?{urlencode(query)}"
    query_string = request.url.query
    context["refresh_url"] = request.url.path + (f"?{query_string}" if query_string else "")
    if is_fragment(request):
        return render(request, "traces_table.html", **context)
    return render(request, "experiment.html", **context)


def latest_values(
    request: Request, trace_ids: Sequence[str], names: Sequence[str]
) -> dict[tuple[str, str], Any]:
    """``(trace_id, name) -> value`` of the latest assessment of that name, in one query."""
    found = stores(request).scoring.latest_values(trace_ids, names)
    return {key: _decode(value) for key, value in found.items()}


# -- one trace -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """One row of the span tree: the span, its depth, and its bar in percent of the trace."""

    span: Span
    depth: int
    left: float
    width: float

    @property
    def duration_ms(self) -> float:
        return (self.span.end_time_ns - self.span.start_time_ns) / 1e6


def span_tree(spans: Sequence[Span]) -> list[Timeline]:
    """Spans depth-first (children in start order) with bars relative to the whole trace; a
    span whose parent never arrived (or that sits in a parent cycle) starts a tree of its
    own, so every span is shown exactly once."""
    if not spans:
        return []
    start = min(s.start_time_ns for s in spans)
    total = max(max(s.end_time_ns for s in spans) - start, 1)
    ordered = sorted(spans, key=lambda s: (s.start_time_ns, s.span_id))
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[Span]] = defaultdict(list)
    for span in ordered:
        children[span.parent_span_id if span.parent_span_id in ids else None].append(span)
    rows: list[Timeline] = []
    seen: set[str] = set()
    for top in children[None] + ordered:
        # Depth-first with a stack of its own (a chain of thousands of spans is no deeper for
        # it): children pushed in reverse, so the earliest is shown first.
        stack = [(top, 0)]
        while stack:
            span, depth = stack.pop()
            if span.span_id in seen:
                continue
            seen.add(span.span_id)
            left = (span.start_time_ns - start) / total * 100
            width = max((span.end_time_ns - span.start_time_ns) / total * 100, 0.5)
            rows.append(Timeline(span, depth, round(left, 2), round(min(width, 100 - left), 2)))
            stack.extend((child, depth + 1) for child in reversed(children[span.span_id]))
    return rows


UNSETTLED = frozenset({"pending", "scoring", "retrying", "waiting"})
"""Decision states that change without anybody acting: the trace page refreshes while one is
shown."""


@router.get("/ui/traces/{trace_id}", response_class=HTMLResponse)
def trace_page(request: Request, trace_id: str, caller: UiCaller) -> Response:
    """A trace: summary, span timeline, inputs/outputs, assessments and the decision log."""
    store = trace_store(request)
    trace = store.trace_get(trace_id_of(trace_id))
    if trace is None:
        raise NotFoundError(f"trace {trace_id[:64]!r} not found")
    require_scope(caller, "experiment_id", trace.experiment_id)
    decisions = scoring_service(request).decisions(trace)
    # Read after the decisions, so an assessment they count as done is in the list: the live
    # part stops refreshing once every decision has settled, and must not stop without it.
    detail = store.trace_detail(trace.trace_id)
    assert detail is not None  # traces are never deleted
    context: dict[str, Any] = {
        "trace": detail.trace,
        "assessments": detail.assessments,
        "decisions": decisions,
        "live": any(d["state"] in UNSETTLED for d in decisions),
    }
    if is_fragment(request):
        return render(request, "trace_scoring.html", **context)
    return render(
        request, "trace.html", section="experiments", tree=span_tree(detail.spans), **context
    )


# -- scorers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chart:
    """A scorer's values over time: pass rate (yes/no and booleans) or mean (numbers) per
    bucket, as an inline SVG polyline."""

    label: str
    points: list[tuple[int, float]]
    """(bucket start in epoch ms, value) for the buckets that have assessments."""
    since_ms: int
    until_ms: int
    bucket_ms: int
    rate: bool

    WIDTH = 240
    HEIGHT = 60
    PAD = 4

    @property
    def latest(self) -> str:
        if not self.points:
            return "no assessments"
        value = self.points[-1][1]
        return f"{value:.0%}" if self.rate else f"{value:.3g}"

    def xy(self) -> list[tuple[float, float]]:
        """SVG coordinates of the points (y grows downwards)."""
        low, high = (0.0, 1.0) if self.rate else self._range()
        span_x = max(self.until_ms - self.since_ms, 1)
        inner_w, inner_h = self.WIDTH - 2 * self.PAD, self.HEIGHT - 2 * self.PAD
        out = []
        for at, value in self.points:
            x = self.PAD + (at + self.bucket_ms / 2 - self.since_ms) / span_x * inner_w
            y = self.PAD + (1 - (value - low) / (high - low)) * inner_h
            out.append((round(x, 1), round(y, 1)))
        return out

    def polyline(self) -> str:
        return " ".join(f"{x},{y}" for x, y in self.xy())

    def _range(self) -> tuple[float, float]:
        values = [v for _, v in self.points]
        low, high = min(*values, 0.0), max(values)
        return (low, high) if high > low else (low, low + 1)


def bucket_size(days: int) -> int:
    """An hour, or the whole hours that keep a chart of ``days`` under :data:`MAX_POINTS`."""
    return max(HOUR_MS, math.ceil(days * DAY_MS / MAX_POINTS / HOUR_MS) * HOUR_MS)


def charts(
    request: Request, experiment_id: str, names: Sequence[str], days: int, now_ms: int
) -> dict[str, Chart]:
    """Per scorer name, its chart over the last ``days``: counted per (bucket, value) in SQL so
    the rows read stay few however many traces were scored."""
    bucket = bucket_size(days)
    since = now_ms - days * DAY_MS
    counts: dict[str, list[tuple[int, Any, int]]] = defaultdict(list)
    for name, at, value, n in stores(request).scoring.value_counts(
        experiment_id, names, since, bucket
    ):
        counts[name].append((at, _decode(value), n))
    return {name: _chart(counts[name], since, now_ms, bucket) for name in names}


def _chart(counts: list[tuple[int, Any, int]], since: int, until: int, bucket: int) -> Chart:
    verdicts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    numbers: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for at, value, n in counts:
        verdict = _verdict(value)
        if verdict is not None:
            verdicts[at][0 if verdict else 1] += n
        elif isinstance(value, int | float) and math.isfinite(value):
            numbers[at][0] += value * n
            numbers[at][1] += n
    if verdicts or not numbers:
        points = [(at, ok / (ok + bad)) for at, (ok, bad) in sorted(verdicts.items())]
        return Chart("pass rate", points, since, until, bucket, rate=True)
    means = [(at, total / n) for at, (total, n) in sorted(numbers.items())]
    return Chart("mean", means, since, until, bucket, rate=False)


def _verdict(value: Any) -> bool | None:
    """True for a pass (yes/true), False for a fail (no/false), None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        return True if word in _PASS else False if word in _FAIL else None
    return None


@router.get("/ui/experiments/{experiment_id}/scorers", response_class=HTMLResponse)
def scorers_page(
    request: Request,
    experiment_id: str,
    caller: UiCaller,
    edit: Annotated[str | None, Query(max_length=100)] = None,
    days: Annotated[int, Query(ge=1, le=90)] = 7,
) -> Response:
    """Scorers with their status, charts, actions and backfill forms, and the add/edit form
    (``edit`` fills it with that scorer)."""
    require_scope(caller, "experiment_id", experiment_id)
    form = _form_of(scoring_service(request).get(experiment_id, edit)) if edit else _empty_form()
    return _scorers(request, experiment_id, form=form, days=days)


@router.post("/ui/experiments/{experiment_id}/scorers", response_class=HTMLResponse)
def save_scorer(
    request: Request,
    experiment_id: str,
    caller: UiCaller,
    name: Annotated[str, Form(max_length=200)] = "",
    kind: Annotated[str, Form(max_length=50)] = "",
    level: Annotated[str, Form(max_length=20)] = "trace",
    sample_rate: Annotated[str, Form(max_length=50)] = "1",
    filter_string: Annotated[str, Form(alias="filter", max_length=10_000)] = "",
    definition: Annotated[str, Form(max_length=100_000)] = "{}",
) -> Response:
    """Register or replace a scorer (as ``PUT …/scorers/{name}``); bad input re-renders the
    form with the error and the values as typed."""
    form = {
        "name": name.strip(),
        "kind": kind,
        "level": level,
        "sample_rate": sample_rate,
        "filter": filter_string,
        "definition": definition,
    }
    try:
        require_admin(caller, "register scorers")
        scoring_service(request).put(
            experiment_id,
            form["name"],
            kind=kind,
            level=level,
            definition=_json_object(definition),
            sample_rate=_rate(sample_rate),
            filter_string=filter_string,
        )
    except FORM_ERRORS as exc:
        return _scorers(
            request, experiment_id, form=form, form_error=str(exc), status_code=status_for(exc)
        )
    return _back(experiment_id)


@router.post("/ui/experiments/{experiment_id}/scorers/{name}/status", response_class=HTMLResponse)
def set_scorer_status(
    request: Request,
    experiment_id: str,
    name: str,
    caller: UiCaller,
    status: Annotated[str, Form(max_length=20)],
) -> Response:
    """Pause, resume (``ACTIVE``) or stop a scorer."""
    return _act(request, experiment_id, caller, "change scorers", name, status)


@router.post("/ui/experiments/{experiment_id}/scorers/{name}/delete", response_class=HTMLResponse)
def delete_scorer(request: Request, experiment_id: str, name: str, caller: UiCaller) -> Response:
    """Delete a scorer and what it has queued; its assessments stay."""
    return _act(request, experiment_id, caller, "delete scorers", name, None)


@router.post("/ui/experiments/{experiment_id}/scorers/{name}/backfill", response_class=HTMLResponse)
def backfill(
    request: Request,
    experiment_id: str,
    name: str,
    caller: UiCaller,
    start: Annotated[str, Form(max_length=40)] = "",
    end: Annotated[str, Form(max_length=40)] = "",
    dry_run: Annotated[bool, Form()] = False,
) -> Response:
    """Count (``dry_run``) or submit a backfill of past traces, as
    ``POST …/scorers/{name}/backfill`` does; the answer shows beside the scorer."""
    result: dict[str, Any] = {"start": start, "end": end}
    try:
        require_admin(caller, "backfill scorers")
        service = scoring_service(request)
        backend = request.app.state.runtime.backend

        def submit(job: str, params: dict[str, Any]) -> str:
            return str(backend.submit(job, params, owner=caller.subject).id)

        result.update(
            service.backfill(
                experiment_id,
                name,
                _local_ms(start, "start"),
                _local_ms(end, "end"),
                dry_run=dry_run,
                submit=submit,
            )
        )
    except FORM_ERRORS as exc:
        result["error"] = str(exc)
        return _scorers(
            request, experiment_id, backfills={name: result}, status_code=status_for(exc)
        )
    return _scorers(request, experiment_id, backfills={name: result})


def _act(
    request: Request,
    experiment_id: str,
    caller: Principal,
    action: str,
    name: str,
    status: str | None,
) -> Response:
    """A scorer button: change the status, or delete (``status`` None); back to the page."""
    try:
        require_admin(caller, action)
        service = scoring_service(request)
        if status is None:
            service.delete(experiment_id, name)
        else:
            service.set_status(experiment_id, name, status)
    except FORM_ERRORS as exc:
        return _scorers(request, experiment_id, action_error=str(exc), status_code=status_for(exc))
    return _back(experiment_id)


def _scorers(
    request: Request,
    experiment_id: str,
    *,
    form: dict[str, str] | None = None,
    form_error: str | None = None,
    action_error: str | None = None,
    backfills: dict[str, dict[str, Any]] | None = None,
    days: int = 7,
    status_code: int = 200,
) -> Response:
    experiment = tracking_store(request).get_experiment(experiment_id)
    service: ScoringService = scoring_service(request)
    scorers = service.list(experiment_id)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return render(
        request,
        "scorers.html",
        status_code=status_code,
        section="experiments",
        experiment=experiment,
        scorers=scorers,
        kinds=kinds.kinds(),
        form=form or _empty_form(),
        form_error=form_error,
        action_error=action_error,
        backfills=backfills or {},
        default_start=(now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
        default_end=(now + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M"),
        charts=charts(request, experiment_id, [s.name for s in scorers], days, _now_ms()),
        days=days,
    )


def _empty_form() -> dict[str, str]:
    return {
        "name": "",
        "kind": "",
        "level": "trace",
        "sample_rate": "1",
        "filter": "",
        "definition": "{}",
    }


def _form_of(scorer: ScorerRecord) -> dict[str, str]:
    return {
        "name": scorer.name,
        "kind": scorer.kind,
        "level": scorer.level.value,
        "sample_rate": f"{scorer.sample_rate:g}",
        "filter": scorer.filter_string or "",
        "definition": json.dumps(scorer.definition, indent=2, ensure_ascii=False),
    }


def _back(experiment_id: str) -> Response:
    return RedirectResponse(f"/ui/experiments/{experiment_id}/scorers", status_code=303)


# -- parsing form values ---------------------------------------------------------------------------


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"scorer definition is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequestError("scorer definition must be a JSON object")
    return value


def _rate(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidRequestError(
            f"sample_rate must be a number from 0 to 1, not {text!r}"
        ) from None


def _local_ms(text: str, what: str) -> int:
    """A ``datetime-local`` input's value, read as UTC, in epoch milliseconds."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequestError(
            f"backfill {what} must be a date and time like 2026-11-23T00:00, not {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return round(when.timestamp() * 1000)


# -- shared ----------------------------------------------------------------------------------------


def _now_ms() -> int:
    return round(time.time() * 1000)


def _decode(text: str | None) -> Any:
    """An assessment value as stored (JSON text) back to its value (never failing on an old
    row that is not plain JSON: see :func:`assay.jsonvalue.loads`)."""
    return jsonvalue.loads(text)


def _show(value: Any) -> str:
    """A value for a table cell: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _value_class(value: Any) -> str:
    """``value-yes``/``value-no`` (the CSS colours) for pass/fail values, else nothing."""
    verdict = _verdict(value)
    return "" if verdict is None else ("value-yes" if verdict else "value-no")


def _tokens(trace: Trace) -> int | None:
    if trace.total_tokens is not None:
        return trace.total_tokens
    if trace.input_tokens is None and trace.output_tokens is None:
        return None
    return (trace.input_tokens or 0) + (trace.output_tokens or 0)


templates.env.filters["show"] = _show
templates.env.filters["pretty"] = _pretty
templates.env.filters["value_class"] = _value_class
templates.env.filters["tokens"] = _tokens
