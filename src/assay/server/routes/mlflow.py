"""MLflow's tracking REST API (``/api/2.0/mlflow/...``) on assay's tracking store.

The MLflow client (``mlflow.set_tracking_uri(<assay server>)``) logs experiments, runs, params,
metrics, tags and datasets into the same store as ``/api/v1``: a run logged with
``mlflow.log_metric`` is an assay run. Served: ``/version``, ``/api/3.0/mlflow/server-info``
(no optional features); ``experiments/`` create, get,
get-by-name, search; ``runs/`` create, get, update, search, log-metric, log-parameter, set-tag,
log-batch, log-inputs; ``metrics/get-history``. Wire format: :mod:`assay.server.schemas.mlflow`;
errors: :mod:`assay.server.errors`; the search grammar: :mod:`assay.tracking.mlflow_search`.

How MLflow's ideas map onto assay's:

- Experiment and run ids are assay's (UUIDs); the default experiment is ``"0"``, named
  ``Default``, made on first use. A run id given as 32 hex digits (MLflow's shape) is taken
  with its dashes put back.
- A log-batch may carry MLflow's limits (1000 metrics, 100 params, 100 tags, 1000 in all);
  assay stores at most 100 params and tags together per transaction, so a batch over that is
  stored in two: everything is checked first, and the second holds only tags, so only a
  database failure between the two can leave it half stored.
- Metric values: infinities are clipped to the largest double (as MLflow does); NaN is refused.
- A run's name is its ``mlflow.runName`` tag when set, else assay's name (a run created
  without one gets a random one, as from MLflow); renaming a run sets that tag. Nothing is
  deleted: runs and experiments are always ``active``.
- Search runs by MLflow's filter grammar (AND of comparisons) and ``order_by``, evaluated on
  the runs of the named experiments; page tokens are offsets.

Auth is assay's: ``MLFLOW_TRACKING_TOKEN`` carries an assay API token (``Bearer``); job tokens
reach only the experiments they are scoped to, as on ``/api/v1``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse

from assay.errors import ConflictError, InvalidRequestError
from assay.pagetoken import decode_parts, decode_token, encode_parts, encode_token
from assay.server.auth import Caller, Principal, require_api_token, require_scope
from assay.server.deps import tracking_store
from assay.server.errors import MlflowRoute, mlflow_error
from assay.server.schemas.mlflow import (
    MLFLOW_VERSION,
    CreateExperimentBody,
    CreateRunBody,
    LogBatchBody,
    LogInputsBody,
    LogMetricBody,
    LogParamBody,
    SearchExperimentsBody,
    SearchRunsBody,
    SetTagBody,
    UpdateRunBody,
    experiment_json,
    metric_json,
    metric_value,
    run_info_json,
    run_json,
    run_name,
    run_status,
)
from assay.tracking import limits, mlflow_search
from assay.tracking.mlflow_search import EXPERIMENT_FIELDS, RUN_FIELDS, Clause, Entity, OrderKey
from assay.tracking.model import Experiment, Metric, Run, RunInput
from assay.tracking.store import DEFAULT_EXPERIMENT_ID, MAX_PAGE, TrackingStore

__all__ = ["pairs", "router", "search_page", "version_router", "writable_run"]

router = APIRouter(
    prefix="/api/2.0/mlflow", route_class=MlflowRoute, include_in_schema=False, tags=["mlflow"]
)
version_router = APIRouter(include_in_schema=False)

MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS = 100
MAX_BATCH_TAGS = 100
MAX_BATCH_ENTITIES = 1000
_HEX_ID = re.compile(r"[0-9a-f]{32}")
T = TypeVar("T")


@version_router.get("/version", response_class=PlainTextResponse)
def version() -> str:
    """The MLflow version this surface answers as (the MLflow client asks)."""
    return MLFLOW_VERSION


@version_router.get("/api/3.0/mlflow/server-info")
def server_info() -> dict[str, Any]:
    """What the MLflow client asks a server before using optional features: none here."""
    return {
        "store_type": "SqlStore",
        "workspaces_enabled": False,
        "trace_archival_enabled": False,
        "multipart_uploads_enabled": False,
        "multipart_downloads_enabled": False,
        "presigned_upload_run_id_supported": False,
        "presigned_upload_model_id_supported": False,
        "features_enabled": {"gateway": False},
    }


_ADJECTIVES = ("amber", "brisk", "calm", "deft", "eager", "fond", "gentle", "keen", "lucid")
_NOUNS = ("otter", "heron", "lynx", "finch", "badger", "moth", "crane", "newt", "wren")


def _random_name() -> str:
    """A name for a run created without one, in MLflow's style (``keen-heron-417``)."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(1000)}"


def _run_id(text: str) -> str:
    """A run id as assay stores it: MLflow's 32-hex shape gets its dashes back."""
    if not text:
        raise InvalidRequestError("missing run_id")
    if _HEX_ID.fullmatch(text):
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
    return text


def writable_run(caller: Principal, store: TrackingStore, run_id: str) -> str:
    """The run id, once the caller may write to it (job tokens: their experiments only)."""
    run_id = _run_id(run_id)
    if caller.is_job:
        require_scope(caller, "experiment_id", store.run_experiment_id(run_id))
    return run_id


def pairs(items: list[Any], what: str) -> dict[str, str]:
    """``[{key, value}]`` as a dict; one key twice with two values is refused."""
    found: dict[str, str] = {}
    for item in items:
        if found.get(item.key, item.value) != item.value:
            raise InvalidRequestError(
                f"{what} {item.key!r} is given twice with different values in one request"
            )
        found[item.key] = item.value
    return found


# -- offsets as page tokens -------------------------------------------------------------------


MAX_TOKEN_CHARS = 1000
"""The longest page token read (the ones :func:`_offset_page` makes are about 20 characters)."""


def _offset(token: str) -> int:
    """The offset in a page token made by :func:`_offset_page`: ``{"offset": n}``, base64. A
    long or nested token is refused before it is parsed (the parser recurses)."""
    if not token:
        return 0
    shown = repr(token if len(token) <= 60 else token[:60] + "...")
    try:
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError("too long")
        offset = decode_token(token, 1)["offset"]
        if type(offset) is not int or offset < 0:
            raise ValueError(token)
        return offset
    except (ValueError, TypeError, KeyError):
        raise InvalidRequestError(f"invalid page_token {shown}") from None


class PageBody(Protocol):
    """The paging fields of a search body."""

    @property
    def page_token(self) -> str: ...

    @property
    def max_results(self) -> int: ...


def _offset_page(items: list[T], token: str, size: int) -> tuple[list[T], str | None]:
    start = _offset(token)
    end = start + size
    more = end < len(items)
    next_token = encode_token({"offset": end})
    return items[start:end], next_token if more else None


def _paged(name: str, items: list[dict[str, Any]], token: str | None) -> dict[str, Any]:
    """MLflow's answer of a page: ``{name: items}``, with ``next_page_token`` if more follow."""
    answer: dict[str, Any] = {name: items}
    if token:
        answer["next_page_token"] = token
    return answer


def search_page(
    name: str,
    candidates: Iterable[T],
    lookup: Callable[[T], mlflow_search.Lookup],
    clauses: Sequence[Clause],
    order: Sequence[OrderKey],
    body: PageBody,
    to_json: Callable[[T], dict[str, Any]],
) -> dict[str, Any]:
    """The answer to an MLflow search: the candidates ``clauses`` match, sorted by ``order``,
    one page of ``body.max_results`` from ``body.page_token`` on (an offset)."""
    found = [c for c in candidates if mlflow_search.matches(clauses, lookup(c))]
    found.sort(key=lambda c: mlflow_search.sort_key(order, lookup(c)))
    page, token = _offset_page(found, body.page_token, body.max_results)
    return _paged(name, [to_json(c) for c in page], token)


def _active_only(view_type: str | int, what: str) -> bool:
    """Whether a view type asks for live entities (assay deletes none)."""
    names = {1: "ACTIVE_ONLY", 2: "DELETED_ONLY", 3: "ALL"}
    name = names.get(view_type, str(view_type)) if isinstance(view_type, int) else view_type
    if name.upper() not in ("ACTIVE_ONLY", "DELETED_ONLY", "ALL"):
        raise InvalidRequestError(
            f"unknown {what} {view_type!r} (expected ACTIVE_ONLY, DELETED_ONLY or ALL)"
        )
    return name.upper() != "DELETED_ONLY"


# -- experiments ------------------------------------------------------------------------------


@router.post("/experiments/create")
def create_experiment(body: CreateExperimentBody, request: Request, caller: Caller) -> Any:
    require_api_token(caller, "create experiments")
    tags = pairs(body.tags, "tag")
    try:
        experiment = tracking_store(request).create_experiment(body.name, tags)
    except ConflictError:
        return mlflow_error("RESOURCE_ALREADY_EXISTS", f"Experiment {body.name!r} already exists.")
    return {"experiment_id": experiment.id}


@router.get("/experiments/get")
def get_experiment(
    request: Request, caller: Caller, experiment_id: Annotated[str, Query(max_length=1000)]
) -> dict[str, Any]:
    require_scope(caller, "experiment_id", experiment_id)
    return {"experiment": experiment_json(tracking_store(request).get_experiment(experiment_id))}


@router.get("/experiments/get-by-name")
def get_experiment_by_name(
    request: Request, caller: Caller, experiment_name: Annotated[str, Query(max_length=1000)]
) -> dict[str, Any]:
    experiment = tracking_store(request).get_experiment_by_name(experiment_name)
    require_scope(caller, "experiment_id", experiment.id)
    return {"experiment": experiment_json(experiment)}


def _all_experiments(store: TrackingStore) -> Iterator[Experiment]:
    store.default_experiment()  # as in MLflow, every store shows its default experiment
    token = None
    while True:
        page = store.list_experiments(limit=MAX_PAGE, page_token=token)
        yield from page.experiments
        token = page.next_page_token
        if token is None:
            return


def _experiment_lookup(experiment: Experiment) -> mlflow_search.Lookup:
    def lookup(entity: Entity, key: str) -> Any:
        if entity == "tag":
            return experiment.tags.get(key)
        return {
            "experiment_id": experiment.id,
            "name": experiment.name,
            "creation_time": experiment.created_at_ms,
            "last_update_time": experiment.created_at_ms,
        }.get(key)

    return lookup


@router.post("/experiments/search")
def search_experiments(
    body: SearchExperimentsBody, request: Request, caller: Caller
) -> dict[str, Any]:
    """Experiments matching MLflow's filter (``name LIKE 'x%'``, ``tags.k = 'v'``), newest
    first unless ``order_by`` says otherwise."""
    require_api_token(caller, "list experiments")
    clauses = mlflow_search.parse_filter(body.filter, EXPERIMENT_FIELDS)
    order = [
        *mlflow_search.parse_order_by(body.order_by, EXPERIMENT_FIELDS),
        OrderKey("attribute", "creation_time", ascending=False),
        OrderKey("attribute", "experiment_id", ascending=True),
    ]
    store = tracking_store(request)
    active = _active_only(body.view_type, "view_type")
    candidates = _all_experiments(store) if active else iter(())
    return search_page(
        "experiments", candidates, _experiment_lookup, clauses, order, body, experiment_json
    )


# -- runs -------------------------------------------------------------------------------------


@router.post("/runs/create")
def create_run(body: CreateRunBody, request: Request, caller: Caller) -> dict[str, Any]:
    """A new RUNNING run; no ``experiment_id``: the default experiment (``"0"``); no name:
    a random one, as MLflow gives."""
    experiment_id = body.experiment_id or DEFAULT_EXPERIMENT_ID
    require_scope(caller, "experiment_id", experiment_id)
    tags = pairs(body.tags, "tag")
    if body.user_id and "mlflow.user" not in tags:
        tags["mlflow.user"] = body.user_id
    name = body.run_name or tags.get("mlflow.runName") or _random_name()
    run = tracking_store(request).create_run(
        experiment_id, name=name, start_time=body.start_time, tags=tags
    )
    return {"run": run_json(run)}


@router.get("/runs/get")
def get_run(
    request: Request,
    caller: Caller,
    run_id: Annotated[str, Query(max_length=1000)] = "",
    run_uuid: Annotated[str, Query(max_length=1000)] = "",
) -> dict[str, Any]:
    run = tracking_store(request).get_run(_run_id(run_id or run_uuid))
    require_scope(caller, "experiment_id", run.experiment_id)
    return {"run": run_json(run)}


@router.post("/runs/update")
def update_run(body: UpdateRunBody, request: Request, caller: Caller) -> dict[str, Any]:
    """Status and end time (ending a run without one stamps it now); a new ``run_name`` is
    kept as the run's ``mlflow.runName`` tag."""
    store = tracking_store(request)
    run_id = writable_run(caller, store, body.run)
    status = run_status(body.status) if body.status is not None else None
    if body.run_name:
        store.set_tag(run_id, "mlflow.runName", body.run_name)
    run = store.update_run(run_id, status=status, end_time=body.end_time)
    return {"run_info": run_info_json(run)}


@router.post("/runs/log-metric")
def log_metric(body: LogMetricBody, request: Request, caller: Caller) -> dict[str, Any]:
    store = tracking_store(request)
    run_id = writable_run(caller, store, body.run)
    value = metric_value(body.key, body.value)
    store.log_metric(run_id, body.key, value, step=body.step, timestamp_ms=body.timestamp)
    return {}


@router.post("/runs/log-parameter")
def log_param(body: LogParamBody, request: Request, caller: Caller) -> dict[str, Any]:
    """A param is logged once: the same value again is fine, another one is refused."""
    store = tracking_store(request)
    store.log_param(writable_run(caller, store, body.run), body.key, body.value)
    return {}


@router.post("/runs/set-tag")
def set_tag(body: SetTagBody, request: Request, caller: Caller) -> dict[str, Any]:
    store = tracking_store(request)
    store.set_tag(writable_run(caller, store, body.run), body.key, body.value)
    return {}


def _check_batch_counts(metrics: int, params: int, tags: int) -> None:
    """MLflow's limits of one log-batch."""
    for count, limit, what in (
        (metrics, MAX_BATCH_METRICS, "metrics"),
        (params, MAX_BATCH_PARAMS, "params"),
        (tags, MAX_BATCH_TAGS, "tags"),
    ):
        if count > limit:
            raise InvalidRequestError(
                f"{count} {what} in one log-batch: over MLflow's limit of {limit} {what} per batch"
            )
    if metrics + params + tags > MAX_BATCH_ENTITIES:
        raise InvalidRequestError(
            f"{metrics + params + tags} metrics, params and tags in one log-batch: over "
            f"MLflow's limit of {MAX_BATCH_ENTITIES} per batch"
        )


@router.post("/runs/log-batch")
def log_batch(body: LogBatchBody, request: Request, caller: Caller) -> dict[str, Any]:
    """Metrics, params and tags of one run within MLflow's limits (see the module's notes on
    batches over assay's 100 params and tags per transaction)."""
    store = tracking_store(request)
    params = pairs(body.params, "param")
    tags = pairs(body.tags, "tag")
    _check_batch_counts(len(body.metrics), len(params), len(tags))
    metrics = [
        Metric(m.key, metric_value(m.key, m.value), m.step, m.timestamp) for m in body.metrics
    ]
    run_id = writable_run(caller, store, body.run_id)
    room = limits.MAX_PARAMS_TAGS_PER_BATCH - len(params)
    first = dict(list(tags.items())[:room])
    rest = dict(list(tags.items())[room:])
    limits.check_tags(rest)  # so the second write can only fail in the database
    store.log_batch(run_id, metrics=metrics, params=params, tags=first)
    if rest:
        store.log_batch(run_id, tags=rest)
    return {}


@router.post("/runs/log-inputs")
def log_inputs(body: LogInputsBody, request: Request, caller: Caller) -> dict[str, Any]:
    """Datasets the run read: name, digest and source are kept (MLflow's schema, profile and
    input tags are not)."""
    store = tracking_store(request)
    run_id = writable_run(caller, store, body.run_id)
    inputs = [
        RunInput(d.dataset.name, d.dataset.digest, d.dataset.source or None) for d in body.datasets
    ]
    store.log_inputs(run_id, inputs)
    return {}


def _run_lookup(run: Run) -> mlflow_search.Lookup:
    def lookup(entity: Entity, key: str) -> Any:
        if entity == "metric":
            metric = run.metrics.get(key)
            return None if metric is None else metric.value
        if entity == "param":
            return run.params.get(key)
        if entity == "tag":
            if key == "mlflow.runName":
                return run_name(run) or None
            return run.tags.get(key)
        if entity == "dataset":
            return [i.name if key == "name" else i.digest for i in run.inputs]
        return {
            "run_id": run.id,
            "run_name": run_name(run),
            "status": run.status.value,
            "user_id": run.tags.get("mlflow.user", ""),
            "artifact_uri": f"mlflow-artifacts:/{run.experiment_id}/{run.id}/artifacts",
            "start_time": run.start_time_ms,
            "end_time": run.end_time_ms,
        }.get(key)

    return lookup


def _runs_of(
    store: TrackingStore, caller: Principal, experiment_ids: list[str], clauses: Sequence[Clause]
) -> Iterator[Run]:
    """The runs of the experiments that may match ``clauses`` (the store leaves out, in SQL,
    those that cannot), each experiment once the caller may read it."""
    for experiment_id in dict.fromkeys(experiment_ids):
        require_scope(caller, "experiment_id", experiment_id)
        token = None
        while True:
            page = store.list_runs(
                experiment_id, limit=MAX_PAGE, page_token=token, narrowed_by=clauses
            )
            yield from page.runs
            token = page.next_page_token
            if token is None:
                break


@router.post("/runs/search")
def search_runs(body: SearchRunsBody, request: Request, caller: Caller) -> dict[str, Any]:
    """Runs of the experiments matching MLflow's filter, ordered by ``order_by`` then the
    latest start first. With no filter and no ``order_by`` (MLflow's UI and ``search_runs()``
    by default) one page is read by the index, with a keyset page token; otherwise the filter
    and order are evaluated on every run of those experiments that the store could not rule
    out in SQL (see ``TrackingStore.list_runs``)."""
    clauses = mlflow_search.parse_filter(body.filter, RUN_FIELDS)
    order = [
        *mlflow_search.parse_order_by(body.order_by, RUN_FIELDS),
        OrderKey("attribute", "start_time", ascending=False),
        OrderKey("attribute", "run_id", ascending=True),
    ]
    store = tracking_store(request)
    active = _active_only(body.run_view_type, "run_view_type")
    if active and not clauses and not body.order_by and not _is_offset_token(body.page_token):
        return _newest_runs(store, caller, body)
    candidates = _runs_of(store, caller, body.experiment_ids, clauses) if active else iter(())
    return search_page("runs", candidates, _run_lookup, clauses, order, body, run_json)


def _newest_runs(store: TrackingStore, caller: Principal, body: SearchRunsBody) -> dict[str, Any]:
    """One page of the runs in the default order, from the store's index."""
    if len(body.page_token) > MAX_TOKEN_CHARS:
        raise InvalidRequestError("invalid page_token (too long)")
    after = decode_parts(body.page_token, int, str) if body.page_token else None
    for experiment_id in body.experiment_ids:
        require_scope(caller, "experiment_id", experiment_id)
    if not body.experiment_ids:
        return _paged("runs", [], None)
    found = store.runs_newest(body.experiment_ids, limit=body.max_results + 1, after=after)
    page = found[: body.max_results]
    token = encode_parts(page[-1].start_time_ms, page[-1].id) if len(found) > len(page) else None
    return _paged("runs", [run_json(r) for r in page], token)


def _is_offset_token(token: str) -> bool:
    """A page token of a search evaluated in full (``{"offset": n}``), not a keyset one."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return False
    try:
        return isinstance(decode_token(token, 1), dict)
    except ValueError:
        return False


@router.get("/metrics/get-history")
def get_metric_history(
    request: Request,
    caller: Caller,
    metric_key: Annotated[str, Query(max_length=limits.MAX_KEY_CHARS)],
    run_id: Annotated[str, Query(max_length=1000)] = "",
    run_uuid: Annotated[str, Query(max_length=1000)] = "",
    max_results: Annotated[int | None, Query(ge=1)] = None,
    page_token: Annotated[str, Query(max_length=1000)] = "",
) -> dict[str, Any]:
    """Every value of one metric by step: ``max_results`` of them (read from the store 1000
    at a time) and a ``next_page_token`` when there are more, or all of them."""
    store = tracking_store(request)
    run = _run_id(run_id or run_uuid)
    require_scope(caller, "experiment_id", store.run_experiment_id(run))
    metrics: list[Metric] = []
    token: str | None = page_token or None
    while True:
        wanted = MAX_PAGE if max_results is None else max_results - len(metrics)
        page = store.metric_history(run, metric_key, limit=min(wanted, MAX_PAGE), page_token=token)
        metrics += page.metrics
        token = page.next_page_token
        if token is None or (max_results is not None and len(metrics) >= max_results):
            break
    return _paged("metrics", [metric_json(m) for m in metrics], token)
