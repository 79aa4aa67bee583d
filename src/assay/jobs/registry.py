"""The ``@job`` decorator and the registry of job names.

A job's name is what is stored; the function behind it may move or be renamed. Modules that
define jobs are imported by :meth:`Registry.load` from settings (``ASSAY_JOB_MODULES``) and the
``assay.jobs`` entry-point group.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from assay.errors import ConfigError, InvalidParamsError, UnknownJobError
from assay.jobs.api import is_internal
from assay.jobs.payload import dumps_plain
from assay.util import did_you_mean

if TYPE_CHECKING:
    from assay.config import Settings
    from assay.jobs.periodic import Schedule
    from assay.jobs.services import Service
    from assay.jobs.store import JobStore

    ServiceFactory = Callable[[JobStore, Settings], Service]

__all__ = ["REGISTRY", "JobSpec", "Registry", "job"]

OnConflict = Literal["skip", "queue"]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class JobSpec:
    """Everything declared with ``@job`` about one job name."""

    name: str
    fn: Callable[..., Any]
    max_workers: int | None = None
    exclusive: bool | tuple[str, ...] = False
    on_conflict: OnConflict = "skip"
    timeout: float | None = None
    max_retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    executor: str | None = None
    python_env: Mapping[str, list[str]] | None = field(default=None, hash=False)
    """Extra requirements the job runs with, in a cached virtualenv: ``{"pip": ["pkg==1.2"]}``
    (see :mod:`assay.jobs.pyenv`)."""
    public: bool = False
    """Whether API tokens with the ``user`` role may submit it (admins always may)."""
    token_scopes: tuple[str, ...] = ()
    """Params whose values scope the job's API token: ``("experiment_id",)`` lets a running
    job use the API on ``experiment_id:<its value>`` only."""

    def bind(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """Check that ``params`` bind to the function and are JSON; return them normalised."""
        params = dict(params or {})
        try:
            inspect.signature(self.fn).bind(**params)
        except TypeError as exc:
            raise InvalidParamsError(f"invalid params for job {self.name!r}: {exc}") from exc
        try:
            return dict(json.loads(dumps_plain(params, f"params of job {self.name!r}")))
        except ValueError as exc:
            raise InvalidParamsError(str(exc)) from None

    def lock_key(self, params: dict[str, Any]) -> str | None:
        """The exclusivity key: the job name plus a hash of the selected params."""
        if self.exclusive is False:
            return None
        keys = params if self.exclusive is True else self.exclusive
        selected = {k: params.get(k) for k in keys}
        digest = hashlib.sha256(json.dumps(selected, sort_keys=True).encode()).hexdigest()
        return f"{self.name}:{digest[:32]}"


class Registry:
    """Job names to specs, and the ``@periodic`` schedules. Thread-safe; registering a name
    twice with another function (or a schedule name with another schedule) fails."""

    def __init__(self) -> None:
        self._specs: dict[str, JobSpec] = {}
        self._schedules: dict[str, Schedule] = {}
        self._services: dict[str, ServiceFactory] = {}
        self._lock = threading.Lock()

    def register(self, spec: JobSpec) -> None:
        with self._lock:
            existing = self._specs.get(spec.name)
            if existing is not None and _qualname(existing.fn) != _qualname(spec.fn):
                raise ConfigError(
                    f"job name {spec.name!r} is registered twice: "
                    f"{_qualname(existing.fn)} and {_qualname(spec.fn)}"
                )
            self._specs[spec.name] = spec

    def get(self, name: str) -> JobSpec:
        spec = self._specs.get(name)
        if spec is None:
            # assay's own jobs are not offered: users do not submit them by hand.
            offered = [n for n in self._specs if not is_internal(n)]
            known = ", ".join(sorted(offered)) or "none registered"
            raise UnknownJobError(
                f"unknown job {name!r}{did_you_mean(name, offered)} (known: {known})"
            )
        return spec

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    @property
    def names(self) -> list[str]:
        return sorted(self._specs)

    @property
    def user_names(self) -> list[str]:
        """The names users see and submit: all but assay's own (``assay.…``) jobs."""
        return [n for n in self.names if not is_internal(n)]

    def register_schedule(self, schedule: Schedule) -> None:
        with self._lock:
            # Names are compared without case, as MySQL's default collation compares them.
            existing = next(
                (s for s in self._schedules.values() if s.name.lower() == schedule.name.lower()),
                None,
            )
            if existing is not None and existing != schedule and existing.source != schedule.source:
                raise ConfigError(
                    f"schedule name {schedule.name!r} is registered twice: {existing.source} "
                    f"({existing.describe()}) and {schedule.source} ({schedule.describe()}); "
                    "tell them apart with @periodic(name=...)"
                )
            if existing is not None:
                del self._schedules[existing.name]
            self._schedules[schedule.name] = schedule

    @property
    def schedules(self) -> list[Schedule]:
        """The registered schedules, by name."""
        with self._lock:
            return [self._schedules[name] for name in sorted(self._schedules)]

    def register_service(self, name: str, factory: ServiceFactory) -> None:
        """A leader-only service (see :mod:`assay.jobs.services`) that every leadership using
        this registry runs, made by ``factory(store, settings)``; registering a name again
        replaces it."""
        with self._lock:
            self._services[name] = factory

    @property
    def services(self) -> list[ServiceFactory]:
        with self._lock:
            return [self._services[name] for name in sorted(self._services)]

    def load(self, modules: Iterable[str] = (), *, entry_point_group: str = "assay.jobs") -> None:
        """Import job modules named in settings and those advertised by installed packages."""
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigError(f"cannot import job module {module!r}: {exc}") from exc
        for ep in entry_points(group=entry_point_group):
            try:
                ep.load()
            except Exception as exc:
                raise ConfigError(f"cannot load job entry point {ep.name!r}: {exc}") from exc


REGISTRY = Registry()
"""The process-wide registry that ``@job`` writes to."""


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


@overload
def job(fn: F, /) -> F: ...
@overload
def job(
    *,
    name: str | None = None,
    max_workers: int | None = None,
    exclusive: bool | list[str] | tuple[str, ...] = False,
    on_conflict: OnConflict = "skip",
    timeout: float | None = None,
    max_retries: int = 0,
    retry_on: tuple[type[BaseException], ...] | type[BaseException] = (),
    executor: str | None = None,
    python_env: Mapping[str, list[str]] | None = None,
    public: bool = False,
    token_scopes: Sequence[str] = (),
    registry: Registry | None = None,
) -> Callable[[F], F]: ...
def job(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    max_workers: int | None = None,
    exclusive: bool | list[str] | tuple[str, ...] = False,
    on_conflict: OnConflict = "skip",
    timeout: float | None = None,
    max_retries: int = 0,
    retry_on: tuple[type[BaseException], ...] | type[BaseException] = (),
    executor: str | None = None,
    python_env: Mapping[str, list[str]] | None = None,
    public: bool = False,
    token_scopes: Sequence[str] = (),
    registry: Registry | None = None,
) -> F | Callable[[F], F]:
    """Register a function as a named job. See docs/contract.md (Jobs) for each option."""

    def decorate(func: F) -> F:
        spec = _make_spec(
            func,
            name=name or func.__name__,
            max_workers=max_workers,
            exclusive=exclusive,
            on_conflict=on_conflict,
            timeout=timeout,
            max_retries=max_retries,
            retry_on=retry_on,
            executor=executor,
            python_env=python_env,
            public=public,
            token_scopes=token_scopes,
        )
        (registry or REGISTRY).register(spec)
        func.__assay_job__ = spec  # type: ignore[attr-defined]
        return func

    return decorate(fn) if fn is not None else decorate


def _make_spec(
    func: Callable[..., Any],
    *,
    name: str,
    max_workers: int | None,
    exclusive: bool | list[str] | tuple[str, ...],
    on_conflict: str,
    timeout: float | None,
    max_retries: int,
    retry_on: tuple[type[BaseException], ...] | type[BaseException],
    executor: str | None,
    python_env: Mapping[str, list[str]] | None = None,
    public: bool = False,
    token_scopes: Sequence[str] = (),
) -> JobSpec:
    where = f"@job {name!r}"
    if not name or len(name) > 200:
        raise ConfigError(f"{where}: name must be 1 to 200 characters")
    if on_conflict not in ("skip", "queue"):
        raise ConfigError(f"{where}: on_conflict must be 'skip' or 'queue', not {on_conflict!r}")
    if max_workers is not None and max_workers < 1:
        raise ConfigError(f"{where}: max_workers must be at least 1")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"{where}: timeout must be positive")
    if max_retries < 0:
        raise ConfigError(f"{where}: max_retries must be >= 0")
    retry_classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    for cls in retry_classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ConfigError(f"{where}: retry_on must hold exception classes, not {cls!r}")
    exclusive_value: bool | tuple[str, ...]
    if isinstance(exclusive, bool):
        exclusive_value = exclusive
    else:
        exclusive_value = tuple(exclusive)
        _check_param_names(where, "exclusive", func, exclusive_value)
    if isinstance(token_scopes, str):
        raise ConfigError(f"{where}: token_scopes must be a list of parameter names")
    _check_param_names(where, "token_scopes", func, tuple(token_scopes))
    if python_env is not None and executor not in (None, "venv"):
        raise ConfigError(f"{where}: python_env jobs run on the 'venv' executor, not {executor!r}")
    return JobSpec(
        name=name,
        fn=func,
        max_workers=max_workers,
        exclusive=exclusive_value,
        on_conflict=on_conflict,  # type: ignore[arg-type]
        timeout=timeout,
        max_retries=max_retries,
        retry_on=retry_classes,
        executor=executor,
        python_env=_check_python_env(where, python_env),
        public=bool(public),
        token_scopes=tuple(token_scopes),
    )


def _check_param_names(
    where: str, option: str, func: Callable[..., Any], names: tuple[str, ...]
) -> None:
    known = list(inspect.signature(func).parameters)
    for param in names:
        if param not in known:
            raise ConfigError(
                f"{where}: {option} names unknown parameter {param!r}{did_you_mean(param, known)}"
            )


PYTHON_ENV_KEYS = ("pip",)
"""The keys ``python_env`` accepts (more installers may come later)."""


def _check_python_env(
    where: str, python_env: Mapping[str, list[str]] | None
) -> Mapping[str, list[str]] | None:
    """Validate ``python_env`` at decoration time; return a private copy."""
    if python_env is None:
        return None
    if not isinstance(python_env, Mapping):
        raise ConfigError(
            f'{where}: python_env must be a mapping like {{"pip": ["pkg==1.2"]}}, '
            f"not {type(python_env).__name__}"
        )
    given: Mapping[Any, Any] = python_env  # checked at run time: callers may pass anything
    checked: dict[str, list[str]] = {}
    for key, value in given.items():
        if key not in PYTHON_ENV_KEYS:
            accepted = ", ".join(repr(k) for k in PYTHON_ENV_KEYS)
            raise ConfigError(
                f"{where}: unknown python_env key {key!r}"
                f"{did_you_mean(str(key), PYTHON_ENV_KEYS)} (accepted: {accepted})"
            )
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(
                f"{where}: python_env[{key!r}] must be a list of requirement strings, not {value!r}"
            )
        for requirement in value:
            if not isinstance(requirement, str) or not requirement.strip():
                raise ConfigError(
                    f"{where}: python_env[{key!r}] holds {requirement!r}; "
                    "each entry must be a non-empty requirement string like 'pkg==1.2'"
                )
            if requirement.strip().startswith("-"):
                raise ConfigError(
                    f"{where}: python_env[{key!r}] holds the option {requirement!r}; "
                    "only requirement strings are accepted, not installer options"
                )
        checked[key] = [requirement.strip() for requirement in value]
    return checked
