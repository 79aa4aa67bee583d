"""Registering online scorers from Python, on a server or directly on a store.

::

    from assay.scoring import Scorer

    polite = Scorer.llm_judge("polite", "Is this answer polite? {{ outputs }}")
    polite.register(experiment_id, sample_rate=0.1, filter_string="trace.status = 'OK'")

``target`` says where the scorer goes: an :class:`assay.Client`, an ``http(s)://`` URL (a client
is made, with the token from ``ASSAY_TOKEN``), a :class:`assay.Backend` or a store URI (the
scoring service on that store, as the server would run it), or None (``ASSAY_SERVER_URL`` if set,
else the default store). Either way the same checks run (on the server, or here for a store),
so a bad definition or filter is the same :class:`~assay.InvalidRequestError` both ways.

The REST/direct split lives in :func:`_connect` only: a :class:`~assay.Client` already has the
``*_scorer`` methods, and :class:`_DirectScorers` has the same ones on a store.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from assay.errors import InvalidRequestError

if TYPE_CHECKING:
    from assay.client import Client
    from assay.jobs.backend import Backend

__all__ = [
    "RegisteredScorer",
    "Scorer",
    "Target",
    "backfill_scorer",
    "delete_scorer",
    "list_scorers",
    "set_scorer_status",
]

Target: TypeAlias = "Client | Backend | str | None"
"""Where scorers are registered: a client, a backend, a server URL or store URI, or None."""

_DEFAULT_OUTPUT = {"type": "yes_no"}


@dataclass(frozen=True)
class RegisteredScorer:
    """A scorer as an experiment has it (the REST ``ScorerOut``, flattened)."""

    experiment_id: str
    name: str
    kind: str
    level: str
    version: int
    """Goes up by one whenever kind, level or definition change."""
    definition: dict[str, Any]
    """Normalised: defaults filled in by the kind's validation."""
    sample_rate: float
    filter_string: str | None
    status: str
    """ACTIVE, PAUSED or STOPPED."""
    status_reason: str | None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegisteredScorer:
        """From the JSON shape of ``GET /api/v1/experiments/{id}/scorers/{name}``."""
        spec = data["scorer"]
        return cls(
            experiment_id=str(data["experiment_id"]),
            name=str(data["name"]),
            kind=str(spec["kind"]),
            level=str(spec["level"]),
            version=int(spec["version"]),
            definition=dict(spec["definition"]),
            sample_rate=float(data["sample_rate"]),
            filter_string=data.get("filter_string"),
            status=str(data["status"]),
            status_reason=data.get("status_reason"),
        )


@dataclass(frozen=True)
class Scorer:
    """What a scorer is (name, kind, definition, level), before it is registered anywhere.

    ``kind`` is ``llm_judge``, ``custom`` or a heuristic (``regex``, ``keywords``,
    ``json_valid``, ``output_length``, ``latency``, ``token_budget``, ``pii``); ``level`` is
    ``trace`` or ``session``. The definition is checked when the scorer is registered.
    """

    name: str
    kind: str
    definition: dict[str, Any] = field(default_factory=dict)
    level: str = "trace"

    @classmethod
    def llm_judge(
        cls,
        name: str,
        instructions: str,
        *,
        output: Mapping[str, Any] | None = None,
        model: str | None = None,
        level: str = "trace",
    ) -> Scorer:
        """A judge asking the server's OpenAI-compatible endpoint ``instructions`` (with
        ``{{ inputs }}``, ``{{ outputs }}``, ``{{ trace }}`` or ``{{ conversation }}``).
        ``output`` defaults to ``{"type": "yes_no"}``; ``model`` to the server's judge model."""
        definition: dict[str, Any] = {
            "instructions": instructions,
            "output": dict(output or _DEFAULT_OUTPUT),
        }
        if model is not None:
            definition["model"] = model
        return cls(name, "llm_judge", definition, level)

    @classmethod
    def heuristic(cls, name: str, kind: str, /, **definition: Any) -> Scorer:
        """A built-in heuristic, e.g. ``Scorer.heuristic("no_sorry", "keywords",
        keywords=["sorry"], mode="none")``."""
        return cls(name, kind, definition)

    @classmethod
    def custom(
        cls, name: str, fn_or_source: Callable[..., Any] | str, *, level: str = "trace"
    ) -> Scorer:
        """Custom code, run in the server's sandbox (if it allows custom scorers): a function
        named ``score(inputs, outputs, trace)``, whose source is sent, or that source as text.
        The function must stand alone: only its own source travels, not its module."""
        if isinstance(fn_or_source, str):
            source = fn_or_source
        else:
            if getattr(fn_or_source, "__name__", None) != "score":
                raise InvalidRequestError(
                    f"a custom scorer function must be named 'score', not "
                    f"{getattr(fn_or_source, '__name__', fn_or_source)!r} (or pass its source)"
                )
            try:
                source = textwrap.dedent(inspect.getsource(fn_or_source))
            except (OSError, TypeError) as exc:
                raise InvalidRequestError(
                    f"cannot read the source of {fn_or_source!r}: {exc}; pass it as text"
                ) from None
        return cls(name, "custom", {"code": source}, level)

    def register(
        self,
        experiment_id: str,
        *,
        sample_rate: float = 1.0,
        filter_string: str | None = None,
        target: Target = None,
    ) -> RegisteredScorer:
        """Register this scorer on the experiment, or replace the one of the same name (which
        also resumes it if it was paused or stopped)."""
        with _connect(target) as api:
            return self._put(api, experiment_id, sample_rate, filter_string)

    def update(
        self,
        experiment_id: str,
        *,
        sample_rate: float | None = None,
        filter_string: str | None = None,
        target: Target = None,
    ) -> RegisteredScorer:
        """Register this scorer again, keeping the registered sample rate and filter unless
        given (``filter_string=""`` removes the filter)."""
        with _connect(target) as api:
            current = RegisteredScorer.from_dict(api.get_scorer(experiment_id, self.name))
            return self._put(
                api,
                experiment_id,
                current.sample_rate if sample_rate is None else sample_rate,
                current.filter_string if filter_string is None else filter_string,
            )

    def stop(self, experiment_id: str, target: Target = None) -> RegisteredScorer:
        """Stop scoring: what this scorer had queued is dropped; its assessments stay."""
        return set_scorer_status(experiment_id, self.name, "STOPPED", target=target)

    def _put(
        self,
        api: _ScorerAPI,
        experiment_id: str,
        sample_rate: float,
        filter_string: str | None,
    ) -> RegisteredScorer:
        data = api.put_scorer(
            experiment_id,
            self.name,
            kind=self.kind,
            definition=self.definition,
            level=self.level,
            sample_rate=sample_rate,
            filter_string=filter_string,
        )
        return RegisteredScorer.from_dict(data)


def list_scorers(experiment_id: str, target: Target = None) -> list[RegisteredScorer]:
    """The experiment's scorers, by name."""
    with _connect(target) as api:
        return [RegisteredScorer.from_dict(d) for d in api.list_scorers(experiment_id)]


def delete_scorer(experiment_id: str, name: str, target: Target = None) -> None:
    """Delete a scorer and what it has queued (its assessments stay); NotFoundError if none."""
    with _connect(target) as api:
        api.delete_scorer(experiment_id, name)


def set_scorer_status(
    experiment_id: str,
    name: str,
    status: str,
    target: Target = None,
) -> RegisteredScorer:
    """``PAUSED`` (keep queuing, stop scoring), ``ACTIVE`` (resume and catch up) or
    ``STOPPED`` (drop what is queued)."""
    with _connect(target) as api:
        return RegisteredScorer.from_dict(api.set_scorer_status(experiment_id, name, status))


def backfill_scorer(
    experiment_id: str,
    name: str,
    *,
    start_ms: int,
    end_ms: int,
    dry_run: bool = False,
    target: Target = None,
) -> dict[str, Any]:
    """Score past traces started in ``[start_ms, end_ms)`` through the online pipeline:
    ``{count, examined, estimated_tokens, cap, over_cap, job_id}`` (no job with ``dry_run``)."""
    with _connect(target) as api:
        return api.backfill_scorer(
            experiment_id, name, start_ms=start_ms, end_ms=end_ms, dry_run=dry_run
        )


# -- where scorers go ------------------------------------------------------------------------


class _ScorerAPI(Protocol):
    """The scorer methods of :class:`assay.Client`, which :class:`_DirectScorers` mirrors."""

    def put_scorer(
        self,
        experiment_id: str,
        name: str,
        *,
        kind: str,
        definition: Mapping[str, Any],
        level: str = "trace",
        sample_rate: float = 1.0,
        filter_string: str | None = None,
    ) -> dict[str, Any]: ...

    def get_scorer(self, experiment_id: str, name: str) -> dict[str, Any]: ...

    def list_scorers(self, experiment_id: str) -> list[dict[str, Any]]: ...

    def set_scorer_status(self, experiment_id: str, name: str, status: str) -> dict[str, Any]: ...

    def delete_scorer(self, experiment_id: str, name: str) -> None: ...

    def backfill_scorer(
        self, experiment_id: str, name: str, *, start_ms: int, end_ms: int, dry_run: bool = False
    ) -> dict[str, Any]: ...


class _DirectScorers:
    """The client's scorer methods, run on a store through :class:`ScoringService` (the
    service the server's routes call), answering the same JSON shapes."""

    def __init__(self, backend: Backend) -> None:
        from assay.scoring.service import ScoringService
        from assay.stores import Stores

        self._backend = backend
        self._service = ScoringService(Stores.on(backend.store, backend.settings), backend.settings)

    def put_scorer(
        self,
        experiment_id: str,
        name: str,
        *,
        kind: str,
        definition: Mapping[str, Any],
        level: str = "trace",
        sample_rate: float = 1.0,
        filter_string: str | None = None,
    ) -> dict[str, Any]:
        record = self._service.put(
            experiment_id,
            name,
            kind=kind,
            definition=definition,
            level=level,
            sample_rate=sample_rate,
            filter_string=filter_string,
        )
        return record.to_dict()

    def get_scorer(self, experiment_id: str, name: str) -> dict[str, Any]:
        return self._service.get(experiment_id, name).to_dict()

    def list_scorers(self, experiment_id: str) -> list[dict[str, Any]]:
        return [record.to_dict() for record in self._service.list(experiment_id)]

    def set_scorer_status(self, experiment_id: str, name: str, status: str) -> dict[str, Any]:
        return self._service.set_status(experiment_id, name, status).to_dict()

    def delete_scorer(self, experiment_id: str, name: str) -> None:
        self._service.delete(experiment_id, name)

    def backfill_scorer(
        self, experiment_id: str, name: str, *, start_ms: int, end_ms: int, dry_run: bool = False
    ) -> dict[str, Any]:
        """As ``POST …/backfill``: count first, then (unless ``dry_run``) queue the backfill
        job, which a worker on this store runs."""
        from assay.scoring import jobs

        jobs.install(self._backend.registry)
        return self._service.backfill(
            experiment_id,
            name,
            start_ms,
            end_ms,
            dry_run=dry_run,
            submit=lambda job, params: self._backend.submit(job, params).id,
        )


@contextlib.contextmanager
def _connect(target: Target) -> Iterator[_ScorerAPI]:
    """The scorer API of ``target``; what this opens (a client, a store) it also closes.

    Imports lazily: the client needs httpx and a store the server's packages, and a program
    that scores through one of them need not have the other installed.
    """
    from assay.client import Client
    from assay.config import load_settings
    from assay.jobs.backend import Backend

    if isinstance(target, Client):
        yield target
        return
    if isinstance(target, Backend):
        yield _DirectScorers(target)
        return
    where = target if target is not None else os.environ.get("ASSAY_SERVER_URL") or None
    if where is not None and where.lower().startswith(("http://", "https://")):
        with Client(where, os.environ.get("ASSAY_TOKEN") or None) as client:
            yield client
        return
    with Backend(load_settings(store_uri=where)) as backend:
        yield _DirectScorers(backend)
