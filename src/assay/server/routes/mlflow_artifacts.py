"""What MLflow's ``log_model`` (and sklearn autologging) needs besides tracking: an artifact
proxy (``/api/2.0/mlflow-artifacts/artifacts``), logged models (``/api/2.0/mlflow/
logged-models``), a run's artifact listing, and the run-to-model links (``runs/outputs``,
``runs/log-model``).

Files and logged models live in :class:`~assay.tracking.artifacts.ArtifactStore` under
``artifact_root`` (see the settings). Uploads are bounded by ``max_request_bytes``, like any
request body. A job token may touch the files of the experiments it is scoped to (the first
component of an artifact path is the experiment id).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from assay import jsonvalue
from assay.errors import InvalidRequestError
from assay.server.auth import Caller, Principal, require_scope
from assay.server.deps import tracking_store
from assay.server.errors import MlflowRoute
from assay.server.routes.mlflow import pairs, search_page, writable_run
from assay.server.schemas.mlflow import (
    CreateLoggedModelBody,
    FinalizeLoggedModelBody,
    LoggedModelParamsBody,
    LoggedModelTagsBody,
    LogModelBody,
    LogOutputsBody,
    SearchLoggedModelsBody,
    model_json,
)
from assay.tracking import limits, mlflow_search
from assay.tracking.artifacts import ArtifactStore, FileEntry, LoggedModel, artifact_root_for
from assay.tracking.mlflow_search import MODEL_FIELDS, Entity, OrderKey

__all__ = ["artifacts_router", "router"]

router = APIRouter(
    prefix="/api/2.0/mlflow", route_class=MlflowRoute, include_in_schema=False, tags=["mlflow"]
)
artifacts_router = APIRouter(
    prefix="/api/2.0/mlflow-artifacts",
    route_class=MlflowRoute,
    include_in_schema=False,
    tags=["mlflow"],
)

_lock = threading.Lock()
LOG_MODEL_HISTORY_TAG = "mlflow.log-model.history"


def _artifacts(request: Request) -> ArtifactStore:
    state = request.app.state
    with _lock:
        found: ArtifactStore | None = getattr(state, "mlflow_artifacts", None)
        if found is None:
            settings = state.settings
            found = ArtifactStore(artifact_root_for(settings.store_uri, settings.artifact_root))
            state.mlflow_artifacts = found
    return found


def _scope(caller: Principal, artifact_path: str) -> None:
    """Job tokens: only the files of their experiments (the path's first component)."""
    if caller.is_job:
        require_scope(caller, "experiment_id", artifact_path.strip("/").split("/", 1)[0])


def _files_json(entries: list[FileEntry], prefix: str = "") -> list[dict[str, Any]]:
    files = []
    for entry in entries:
        item: dict[str, Any] = {"path": f"{prefix}{entry.path}", "is_dir": entry.is_dir}
        if entry.file_size is not None:
            item["file_size"] = entry.file_size
        files.append(item)
    return files


# -- the artifact proxy -----------------------------------------------------------------------


@artifacts_router.put("/artifacts/{artifact_path:path}")
async def upload_artifact(artifact_path: str, request: Request, caller: Caller) -> Any:
    """Store the request body as the file at ``artifact_path`` (replacing one there)."""
    _scope(caller, artifact_path)
    store = _artifacts(request)
    handle, target = await run_in_threadpool(store.write, artifact_path)
    try:
        async for chunk in request.stream():
            await run_in_threadpool(handle.write, chunk)
    except BaseException:
        await run_in_threadpool(store.abort, handle)
        raise
    await run_in_threadpool(store.commit, handle, target)
    return {}


@artifacts_router.get("/artifacts/{artifact_path:path}")
def download_artifact(artifact_path: str, request: Request, caller: Caller) -> Any:
    _scope(caller, artifact_path)
    path = _artifacts(request).file(artifact_path)
    # Never rendered as HTML or script by a browser that sniffs the bytes.
    return FileResponse(
        path, media_type="application/octet-stream", headers={"X-Content-Type-Options": "nosniff"}
    )


@artifacts_router.get("/artifacts")
def list_artifacts(
    request: Request,
    caller: Caller,
    path: Annotated[str, Query(max_length=4096)] = "",
) -> dict[str, Any]:
    """The entries of a directory, by name (``{}`` for a file or nothing)."""
    _scope(caller, path)
    entries = _artifacts(request).entries(path)
    return {"files": _files_json(entries)} if entries else {}


@router.get("/artifacts/list")
def list_run_artifacts(
    request: Request,
    caller: Caller,
    run_id: Annotated[str, Query(max_length=1000)] = "",
    run_uuid: Annotated[str, Query(max_length=1000)] = "",
    path: Annotated[str, Query(max_length=4096)] = "",
) -> dict[str, Any]:
    """A run's artifacts (paths relative to its artifact root)."""
    run = tracking_store(request).get_run(
        writable_run(caller, tracking_store(request), run_id or run_uuid)
    )
    root = f"{run.experiment_id}/{run.id}/artifacts"
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    entries = _artifacts(request).entries(f"{root}/{prefix}")
    answer: dict[str, Any] = {"root_uri": f"mlflow-artifacts:/{root}"}
    if entries:
        answer["files"] = _files_json(entries, prefix)
    return answer


# -- logged models ----------------------------------------------------------------------------


def _model(request: Request, caller: Caller, model_id: str) -> LoggedModel:
    model = _artifacts(request).get_model(model_id)
    require_scope(caller, "experiment_id", model.experiment_id)
    return model


@router.post("/logged-models")
def create_logged_model(
    body: CreateLoggedModelBody, request: Request, caller: Caller
) -> dict[str, Any]:
    experiment = tracking_store(request).get_experiment(body.experiment_id or "0")
    require_scope(caller, "experiment_id", experiment.id)
    tags, params = pairs(body.tags, "tag"), pairs(body.params, "param")
    limits.check_batch((), params, tags)
    model = _artifacts(request).create_model(
        experiment.id,
        body.name or "model",
        model_type=body.model_type,
        source_run_id=body.source_run_id,
        tags=tags,
        params=params,
    )
    return {"model": model_json(model)}


@router.post("/logged-models/search")
def search_logged_models(
    body: SearchLoggedModelsBody, request: Request, caller: Caller
) -> dict[str, Any]:
    """Logged models of the experiments, by MLflow's filter on their name, status, type,
    params and tags; newest first unless ``order_by`` names attributes."""

    clauses = mlflow_search.parse_filter(body.filter, MODEL_FIELDS)
    order = [
        *mlflow_search.parse_order_by(
            [f"{o.field_name} {'ASC' if o.ascending else 'DESC'}" for o in body.order_by],
            MODEL_FIELDS,
        ),
        OrderKey("attribute", "creation_timestamp", ascending=False),
        OrderKey("attribute", "model_id", ascending=True),
    ]
    models = _models_of(request, caller, body.experiment_ids)
    return search_page("models", models, _model_lookup, clauses, order, body, model_json)


def _models_of(
    request: Request, caller: Principal, experiment_ids: list[str]
) -> Iterator[LoggedModel]:
    """The logged models of the experiments, each experiment once the caller may read it."""
    for experiment_id in dict.fromkeys(experiment_ids):
        require_scope(caller, "experiment_id", experiment_id)
        yield from _artifacts(request).models_of(experiment_id)


def _model_lookup(model: LoggedModel) -> mlflow_search.Lookup:
    def lookup(entity: Entity, key: str) -> Any:
        if entity == "tag":
            return model.tags.get(key)
        if entity == "param":
            return model.params.get(key)
        return {
            "model_id": model.model_id,
            "name": model.name,
            "status": model.status,
            "model_type": model.model_type,
            "source_run_id": model.source_run_id,
            "creation_timestamp": model.creation_timestamp_ms,
            "last_updated_timestamp": model.last_updated_timestamp_ms,
        }.get(key)

    return lookup


@router.get("/logged-models/{model_id}")
def get_logged_model(model_id: str, request: Request, caller: Caller) -> dict[str, Any]:
    return {"model": model_json(_model(request, caller, model_id))}


@router.patch("/logged-models/{model_id}")
def finalize_logged_model(
    model_id: str, body: FinalizeLoggedModelBody, request: Request, caller: Caller
) -> dict[str, Any]:
    _model(request, caller, model_id)
    model = _artifacts(request).update_model(model_id, status=body.status)
    return {"model": model_json(model)}


@router.patch("/logged-models/{model_id}/tags")
def set_logged_model_tags(
    model_id: str, body: LoggedModelTagsBody, request: Request, caller: Caller
) -> dict[str, Any]:
    _model(request, caller, model_id)
    tags = pairs(body.tags, "tag")
    limits.check_batch((), {}, tags)
    model = _artifacts(request).update_model(model_id, tags=tags)
    return {"model": model_json(model)}


@router.post("/logged-models/{model_id}/params")
def log_logged_model_params(
    model_id: str, body: LoggedModelParamsBody, request: Request, caller: Caller
) -> dict[str, Any]:
    _model(request, caller, model_id)
    params = pairs(body.params, "param")
    limits.check_batch((), params, {})
    _artifacts(request).update_model(model_id, params=params)
    return {}


# -- links from runs to models ----------------------------------------------------------------


@router.post("/runs/outputs")
def log_outputs(body: LogOutputsBody, request: Request, caller: Caller) -> dict[str, Any]:
    """Accepted (the run must exist); a model's ``source_run_id`` already links the two."""
    store = tracking_store(request)
    store.run_experiment_id(writable_run(caller, store, body.run_id))
    return {}


@router.post("/runs/log-model")
def log_model(body: LogModelBody, request: Request, caller: Caller) -> dict[str, Any]:
    """Appends the model to the run's ``mlflow.log-model.history`` tag, as MLflow does
    (the oldest entries give way when the tag would pass its size limit)."""
    store = tracking_store(request)
    run_id = writable_run(caller, store, body.run_id)
    if len(body.model_json) > limits.MAX_TAG_VALUE_CHARS:
        raise InvalidRequestError(
            f"model_json is over the {limits.MAX_TAG_VALUE_CHARS}-character limit of the "
            f"{LOG_MODEL_HISTORY_TAG} tag"
        )
    try:
        entry = jsonvalue.loads_shallow(body.model_json, jsonvalue.MAX_DEPTH)
    except ValueError as exc:
        raise InvalidRequestError(f"model_json is not JSON: {exc}") from None
    jsonvalue.check(entry, "model_json")
    history_text = store.get_run(run_id).tags.get(LOG_MODEL_HISTORY_TAG, "[]")
    try:  # a tag anyone may have set: what is not a JSON list is started afresh
        history = jsonvalue.loads_shallow(history_text, jsonvalue.MAX_DEPTH)
    except ValueError:
        history = []
    history = [*(history if isinstance(history, list) else []), entry]
    text = json.dumps(history)
    while len(text) > limits.MAX_TAG_VALUE_CHARS and len(history) > 1:
        history = history[1:]
        text = json.dumps(history)
    if len(text) <= limits.MAX_TAG_VALUE_CHARS:
        store.set_tag(run_id, LOG_MODEL_HISTORY_TAG, text)
    return {}
