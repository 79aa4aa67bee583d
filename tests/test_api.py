"""The public surface: exports, the Job JSON shape, settings and the @job decorator."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta

import pytest

import assay
from assay import ConfigError, Job, JobStatus, Progress, job, load_settings
from assay.jobs.registry import REGISTRY, Registry
from support.jobs import FAST, JOB_KEYS, running_worker

PUBLIC = {
    "FlushError",
    "InvalidFilterError",
    "RequestTooLargeError",
    "UnsupportedMediaTypeError",
    "AssayError",
    "AuthenticationError",
    "Backend",
    "Client",
    "ConfigError",
    "ConflictError",
    "InvalidParamsError",
    "InvalidRequestError",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobPage",
    "JobStatus",
    "MigrationError",
    "NotFoundError",
    "PermissionDeniedError",
    "Progress",
    "Settings",
    "StoreError",
    "UnknownJobError",
    "WaitTimeoutError",
    "Worker",
    "__version__",
    "connect",
    "current_job",
    "job",
    "load_settings",
    "periodic",
    "trace",
    "tracing",
}

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("ASSAY_"):
            monkeypatch.delenv(key)
    return monkeypatch


# -- exports -------------------------------------------------------------------------------------


def test_public_names():
    assert sorted(assay.__all__) == sorted(PUBLIC)
    assert len(assay.__all__) == len(set(assay.__all__))
    for name in assay.__all__:
        assert getattr(assay, name, None) is not None, name
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", assay.__version__)
    exceptions = [n for n in PUBLIC if n.endswith("Error") or n == "JobCancelled"]
    for name in exceptions:
        assert issubclass(getattr(assay, name), assay.AssayError), name


# -- the Job JSON shape --------------------------------------------------------------------------


def _check_times(data: dict[str, object], job: Job) -> None:
    for key in ("created_at", "started_at", "finished_at"):
        value = getattr(job, key)
        if value is None:
            assert data[key] is None, key
            continue
        text = data[key]
        assert isinstance(text, str)
        assert ISO_Z.match(text), f"{key}={text!r} is not ISO-8601 UTC with Z"
        assert datetime.fromisoformat(text.replace("Z", "+00:00")) == value


def test_job_to_dict_shape():
    created = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    job_ = Job(
        id="j1",
        name="t_add",
        params={"a": 1},
        status=JobStatus.RUNNING,
        result=None,
        error=None,
        attempt=1,
        max_retries=2,
        timeout=30.0,
        created_at=created,
        started_at=created + timedelta(seconds=1),
        finished_at=None,
        worker_id="w1",
        progress=Progress(1, 4, "one"),
        lock_key="t_add:abc",
    )
    data = job_.to_dict()
    assert list(data) == JOB_KEYS
    assert data["status"] == "RUNNING"
    assert type(data["status"]) is str
    assert data["created_at"] == "2026-01-02T03:04:05.678000Z"
    assert data["progress"] == {"completed": 1, "total": 4, "message": "one"}
    _check_times(data, job_)
    json.dumps(data)  # plain JSON


def test_stored_job_to_dict(tmp_path):
    with assay.connect(f"sqlite:///{tmp_path / 'api.db'}", **FAST) as backend:
        with running_worker(backend):
            done = backend.wait(backend.submit("t_add", {"a": 1, "b": 2}).id, timeout=30)
        pending = backend.submit("t_noop")
    for job_ in (done, pending):
        data = json.loads(json.dumps(job_.to_dict()))
        assert list(data) == JOB_KEYS
        _check_times(data, job_)
    assert json.loads(json.dumps(done.to_dict()))["result"] == 3
    assert pending.to_dict()["started_at"] is None
    assert pending.to_dict()["progress"] is None


# -- settings ------------------------------------------------------------------------------------


def test_job_modules_from_environment(clean_env):
    clean_env.setenv("ASSAY_JOB_MODULES", "pkg.jobs_a, pkg.jobs_b ,,other")
    assert load_settings().job_modules == ["pkg.jobs_a", "pkg.jobs_b", "other"]
    clean_env.setenv("ASSAY_JOB_MODULES", "single")
    assert load_settings().job_modules == ["single"]
    clean_env.delenv("ASSAY_JOB_MODULES")
    assert load_settings().job_modules == []


def test_settings_from_environment_and_overrides(clean_env):
    clean_env.setenv("ASSAY_WORKER_CONCURRENCY", "7")
    clean_env.setenv("ASSAY_STORE_URI", "sqlite:///env.db")
    settings = load_settings()
    assert settings.worker_concurrency == 7
    assert settings.store_uri == "sqlite:///env.db"
    # Explicit values win; None means "not given".
    settings = load_settings(worker_concurrency=3, store_uri=None)
    assert settings.worker_concurrency == 3
    assert settings.store_uri == "sqlite:///env.db"


@pytest.mark.parametrize(
    ("env", "kwargs", "named"),
    [
        ({"ASSAY_WORKER_CONCURRENCY": "0"}, {}, "worker_concurrency"),
        ({"ASSAY_JOB_TIMEOUT_S": "soon"}, {}, "job_timeout_s"),
        ({}, {"lease_ttl_s": -1}, "lease_ttl_s"),
        ({}, {"retry_jitter": 2}, "retry_jitter"),
        ({}, {"store_uri": "redis://localhost"}, "store_uri"),
        ({}, {"cancel_poll_s": 5, "lease_ttl_s": 1}, "cancel_poll_s"),
        ({}, {"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_invalid_setting_is_a_config_error_naming_it(clean_env, env, kwargs, named):
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings(**kwargs)


# -- the @job decorator --------------------------------------------------------------------------


def _fn(dataset_id: str, size: int = 1) -> None:
    return None


def test_job_decorator_accepts_good_options():
    registry = Registry()
    decorated = job(
        name="api_resize",
        max_workers=2,
        exclusive=["dataset_id"],
        timeout=5,
        max_retries=3,
        retry_on=ConnectionError,
        registry=registry,
    )(_fn)
    assert decorated is _fn
    spec = registry.get("api_resize")
    assert spec.exclusive == ("dataset_id",)
    assert spec.retry_on == (ConnectionError,)
    assert spec.timeout == 5
    assert "api_resize" not in REGISTRY  # a private registry stays private


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"exclusive": ["dataset"]}, r"unknown parameter 'dataset'.*did you mean 'dataset_id'"),
        ({"exclusive": ["nothing_like_it"]}, r"unknown parameter 'nothing_like_it'"),
        ({"on_conflict": "replace"}, r"on_conflict"),
        ({"retry_on": (ValueError, "ConnectionError")}, r"retry_on"),
        ({"retry_on": int}, r"retry_on"),
        ({"max_workers": 0}, r"max_workers"),
        ({"timeout": 0}, r"timeout"),
        ({"max_retries": -1}, r"max_retries"),
    ],
)
def test_job_decorator_rejects_bad_options(options, message):
    registry = Registry()
    with pytest.raises(ConfigError, match=message):
        job(name="api_bad", registry=registry, **options)(_fn)
    assert "api_bad" not in registry


def test_job_name_registered_twice_with_another_function():
    registry = Registry()
    job(name="api_dup", registry=registry)(_fn)

    def other(dataset_id: str) -> None:
        return None

    with pytest.raises(ConfigError, match="registered twice"):
        job(name="api_dup", registry=registry)(other)
