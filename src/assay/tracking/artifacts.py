"""Files behind the MLflow-compatible API: artifacts and MLflow's logged models, in one directory.

::

    <root>/artifacts/<path>                      what MLflow clients upload, by artifact path:
                                                 a run's at <experiment>/<run>/artifacts/...,
                                                 a model's at <experiment>/models/<id>/artifacts/...
    <root>/logged-models/<experiment>/<id>.json  one logged model's record

Like MLflow's own artifact store this is plain files: every replica must see the same
directory (a shared volume), and a record is rewritten whole (atomically, by rename) when a
model's status, tags or params change; two replicas changing one model at the same instant
may lose one change. Paths are checked to stay inside the root.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from assay.errors import InvalidRequestError, NotFoundError

__all__ = ["ArtifactStore", "FileEntry", "LoggedModel", "artifact_root_for"]

MODEL_STATUSES = ("LOGGED_MODEL_PENDING", "LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED")
_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")
_SAFE_EXPERIMENT = re.compile(r"[\w\-]{1,64}")


def artifact_root_for(store_uri: str, configured: str | None) -> Path:
    """The artifact root: the configured one, else ``<database file>.artifacts`` beside a
    SQLite store, else ``~/.assay/artifacts``."""
    if configured:
        return Path(configured).expanduser()
    prefix = "sqlite:///"
    if store_uri.startswith(prefix) and store_uri[len(prefix) :] not in ("", ":memory:"):
        database = Path(store_uri[len(prefix) :].split("?", 1)[0]).expanduser()
        return database.with_name(database.name + ".artifacts")
    return Path("~/.assay/artifacts").expanduser()


@dataclass(frozen=True)
class FileEntry:
    """One entry of a directory listing: its name, whether it is a directory, its size."""

    path: str
    is_dir: bool
    file_size: int | None


@dataclass(frozen=True)
class LoggedModel:
    """An MLflow logged model: a named, versionless model whose files live at
    ``<experiment>/models/<model_id>/artifacts``."""

    model_id: str
    experiment_id: str
    name: str
    creation_timestamp_ms: int
    last_updated_timestamp_ms: int
    status: str = "LOGGED_MODEL_PENDING"
    model_type: str = ""
    source_run_id: str = ""
    status_message: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    @property
    def artifact_path(self) -> str:
        return f"{self.experiment_id}/models/{self.model_id}/artifacts"


class ArtifactStore:
    """Artifacts and logged models under ``root`` (made on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "artifacts"
        self.models = root / "logged-models"
        self._lock = threading.Lock()

    # -- artifacts ------------------------------------------------------------------------------

    def resolve(self, artifact_path: str) -> Path:
        """Where ``artifact_path`` (``a/b/c``) lives; a path that would leave the root, or
        that no file system could hold, is an :class:`InvalidRequestError`."""
        parts = artifact_path.strip("/").split("/") if artifact_path.strip("/") else []
        for part in parts:
            if part in ("", ".", "..") or "\x00" in part or "\\" in part or len(part) > 255:
                raise InvalidRequestError(f"invalid artifact path {artifact_path!r}")
        return self.files.joinpath(*parts)

    def write(self, artifact_path: str) -> tuple[Any, Path]:
        """A temporary file to write an upload into, and where it goes when complete
        (:meth:`commit`): a half-sent upload never replaces the file."""
        target = self.resolve(artifact_path)
        if not artifact_path.strip("/"):
            raise InvalidRequestError("an upload needs a file path")
        if target.is_dir():
            raise InvalidRequestError(f"artifact path {artifact_path!r} is a directory")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidRequestError(
                f"artifact path {artifact_path!r} runs through a file"
            ) from None
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed by commit or abort)
            dir=target.parent, prefix=".upload-", delete=False
        )
        return handle, target

    @staticmethod
    def commit(handle: Any, target: Path) -> None:
        handle.close()
        os.replace(handle.name, target)

    @staticmethod
    def abort(handle: Any) -> None:
        handle.close()
        Path(handle.name).unlink(missing_ok=True)

    def file(self, artifact_path: str) -> Path:
        """The stored file; :class:`NotFoundError` if there is none (or it is a directory)."""
        path = self.resolve(artifact_path)
        if not path.is_file():
            raise NotFoundError(f"no artifact at {artifact_path!r}")
        return path

    def entries(self, artifact_path: str) -> list[FileEntry]:
        """The entries of a directory, by name; [] for a file or nothing."""
        path = self.resolve(artifact_path)
        if not path.is_dir():
            return []
        entries = []
        for child in sorted(path.iterdir(), key=lambda p: p.name):
            if child.name.startswith(".upload-"):
                continue
            is_dir = child.is_dir()
            entries.append(FileEntry(child.name, is_dir, None if is_dir else child.stat().st_size))
        return entries

    # -- logged models --------------------------------------------------------------------------

    def _record(self, experiment_id: str, model_id: str) -> Path:
        return self.models / experiment_id / f"{model_id}.json"

    def _save(self, model: LoggedModel) -> None:
        path = self._record(model.experiment_id, model.model_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=".record-", delete=False, encoding="utf-8"
        ) as handle:
            json.dump(asdict(model), handle)
        os.replace(handle.name, path)

    def create_model(
        self,
        experiment_id: str,
        name: str,
        *,
        model_type: str = "",
        source_run_id: str = "",
        tags: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> LoggedModel:
        if not _SAFE_EXPERIMENT.fullmatch(experiment_id):
            raise InvalidRequestError(f"invalid experiment id {experiment_id!r}")
        now = int(time.time() * 1000)
        model = LoggedModel(
            model_id=f"m-{uuid.uuid4().hex}",
            experiment_id=experiment_id,
            name=name,
            creation_timestamp_ms=now,
            last_updated_timestamp_ms=now,
            model_type=model_type,
            source_run_id=source_run_id,
            tags=dict(tags or {}),
            params=dict(params or {}),
        )
        with self._lock:
            self._save(model)
        return model

    def get_model(self, model_id: str) -> LoggedModel:
        if not _MODEL_ID.fullmatch(model_id):
            raise NotFoundError(f"logged model {model_id!r} not found")
        found = list(self.models.glob(f"*/{model_id}.json")) if self.models.is_dir() else []
        if not found:
            raise NotFoundError(f"logged model {model_id!r} not found")
        return LoggedModel(**json.loads(found[0].read_text(encoding="utf-8")))

    def update_model(
        self,
        model_id: str,
        *,
        status: str | None = None,
        tags: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> LoggedModel:
        """A new status, more tags (replacing same keys) or more params."""
        if status is not None and status not in MODEL_STATUSES:
            raise InvalidRequestError(
                f"unknown logged model status {status!r} (expected one of "
                f"{', '.join(MODEL_STATUSES)})"
            )
        with self._lock:
            model = self.get_model(model_id)
            model = replace(
                model,
                status=status or model.status,
                tags={**model.tags, **(tags or {})},
                params={**model.params, **(params or {})},
                last_updated_timestamp_ms=int(time.time() * 1000),
            )
            self._save(model)
        return model

    def models_of(self, experiment_id: str) -> list[LoggedModel]:
        """The logged models of one experiment, newest first."""
        folder = self.models / experiment_id
        if not _SAFE_EXPERIMENT.fullmatch(experiment_id) or not folder.is_dir():
            return []
        found = [
            LoggedModel(**json.loads(path.read_text(encoding="utf-8")))
            for path in folder.glob("m-*.json")
        ]
        return sorted(found, key=lambda m: (-m.creation_timestamp_ms, m.model_id))
