"""Executors from the ``assay.executors`` entry-point group, declared options, unknown names."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import assay
from assay import ConfigError, InvalidRequestError, JobStatus
from assay.jobs.executors import available_executors, create_executor
from assay.jobs.registry import Registry, job
from support.jobs import FAST, running_worker

PLUGIN = '''
from assay.jobs.executors import Completed, Executor


class EchoExecutor(Executor):
    """Returns the job's params and its configured tag instead of running the job."""

    name = "echo"
    options = {"tag": "default-tag", "delay_s": 0.0}

    def run(self, spec, ctx):
        return Completed({"tag": self.config["tag"], "params": ctx.job.params})
'''


@pytest.fixture
def plugin_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed-looking distribution that advertises an executor, as a real package would."""
    (tmp_path / "echo_executor.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "assay_echo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: assay-echo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[assay.executors]\necho = echo_executor:EchoExecutor\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "echo_executor", raising=False)
    return tmp_path


def test_plugin_is_discovered_and_runs_jobs(plugin_on_path, tmp_path):
    assert "echo" in available_executors()
    registry = Registry()

    @job(name="echoed", executor="echo", registry=registry)
    def echoed(x: int) -> int:
        raise AssertionError("the echo executor never calls the function")

    options = {"echo": {"tag": "from-settings"}}
    uri = f"sqlite:///{tmp_path / 'assay.db'}"
    with assay.connect(uri, **{**FAST, "executor_options": options}) as backend:
        backend.registry = registry
        with running_worker(backend, concurrency=1):
            done = backend.wait(backend.submit("echoed", {"x": 3}).id, timeout=30)
    assert done.status == JobStatus.SUCCEEDED
    assert done.result == {"tag": "from-settings", "params": {"x": 3}}


def test_unknown_option_is_rejected_with_a_hint(plugin_on_path):
    settings = assay.load_settings(executor_options={"echo": {"tagg": "x"}})
    with pytest.raises(
        ConfigError, match=r"unknown option 'tagg' for executor 'echo'; did you mean 'tag'"
    ):
        create_executor("echo", settings, slots=1)
    no_options = assay.load_settings(executor_options={"inline": {"anything": 1}})
    with pytest.raises(ConfigError, match="accepted: none"):
        create_executor("inline", no_options, slots=1)


def test_unknown_executor_fails_at_worker_start_and_at_submit(tmp_path):
    registry = Registry()

    @job(name="misrouted", executor="proces", registry=registry)
    def misrouted() -> None: ...

    uri = f"sqlite:///{tmp_path / 'assay.db'}"
    with assay.connect(uri, **FAST) as backend:
        backend.registry = registry
        with pytest.raises(
            InvalidRequestError, match="unknown executor 'proces'; did you mean 'process'"
        ):
            backend.submit("misrouted")
        with pytest.raises(ConfigError, match="unknown executor 'proces'"):
            backend.worker()
    settings = {**FAST, "default_executor": "sandbx"}
    with (
        assay.connect(uri, **settings) as backend,
        pytest.raises(ConfigError, match="did you mean 'sandbox'"),
    ):
        backend.worker()


def test_builtin_executors_get_their_top_level_settings_as_options():
    """Built-in executors read their settings (ASSAY_SANDBOX_*, ASSAY_PROCESS_*,
    ASSAY_PYTHON_ENV_*) from the same options mapping as plugins; those keys stay top-level
    settings and are not accepted in executor_options."""
    settings = assay.load_settings(
        process_max_jobs=7, sandbox_wall_s=12.5, python_env_dir="/tmp/envs"
    )
    assert create_executor("process", settings, slots=1).config["max_jobs"] == 7
    sandboxed = create_executor("sandbox", settings, slots=1)
    assert sandboxed.config["wall_s"] == 12.5
    assert sandboxed.config["allow_ctypes"] == ()
    assert create_executor("venv", settings, slots=1).config["env_dir"] == "/tmp/envs"
    overridden = assay.load_settings(executor_options={"process": {"max_jobs": 1}})
    with pytest.raises(ConfigError, match="unknown option 'max_jobs' for executor 'process'"):
        create_executor("process", overridden, slots=1)
