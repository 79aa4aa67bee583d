"""The sandbox executor, through the real worker: what untrusted code cannot do.

Layer tests run three ways: ``all`` (production), ``kernel`` (the in-process audit hook off: the
network namespace, Landlock and seccomp must block on their own) and ``fallback`` (the kernel
layers off: the audit hook must block on its own). Most tests use SQLite only; the store is not
what is tested here. One end-to-end test runs on all three databases.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import assay
import jobmods_sandbox  # noqa: F401 - registers the sb_* jobs in this process
from assay import Job, JobStatus
from assay.jobs.backend import Backend
from assay.jobs.context import LOG_TAIL_CHARS
from assay.jobs.executors import sandbox
from support.jobs import FAST, running_worker
from support.timing import wait_until


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    with assay.connect(f"sqlite:///{tmp_path / 'assay.db'}", **FAST) as b:
        yield b


@pytest.fixture(params=["all", "kernel", "fallback"])
def layers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "kernel":
        monkeypatch.setattr(sandbox, "USE_AUDIT_HOOK", False)
    elif request.param == "fallback":
        monkeypatch.setattr(sandbox, "USE_NETWORK_NAMESPACE", False)
        monkeypatch.setattr(sandbox, "USE_LANDLOCK", False)
        monkeypatch.setattr(sandbox, "USE_SECCOMP", False)
    return str(request.param)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A real TCP server on 127.0.0.1 that a sandboxed job tries to reach."""
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    try:
        yield server
    finally:
        server.close()


def run(backend: Backend, name: str, params: dict[str, Any] | None = None, **kw: Any) -> Job:
    job = backend.submit(name, params or {}, **kw)
    with running_worker(backend, concurrency=2):
        return backend.wait(job.id, timeout=30)


def require(result: dict[str, Any], *names: str) -> None:
    """Skip when the kernel does not offer a layer the test is about (reported by the child)."""
    missing = [n for n in names if not result["layers"].get(n)]
    if missing:
        pytest.skip(f"kernel layer(s) unavailable here: {missing}")


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def pid_from_log(backend: Backend, job_id: str) -> int:
    def find() -> int | None:
        tail = backend.get(job_id).log_tail or ""
        words = tail.split()
        return int(words[1]) if len(words) >= 2 and words[0] == "pid" else None

    return int(wait_until(find, timeout=15))


# -- a normal job ------------------------------------------------------------------------------


def test_end_to_end_on_every_store(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSAY_TEST_SECRET", "hunter2")
    job = run(backend, "sb_add", {"a": 2, "b": 3})
    assert job.status == JobStatus.SUCCEEDED, job.error
    result = job.result
    assert result["sum"] == 5
    assert result["pid"] != os.getpid()
    # A scrubbed environment and a private temp dir as cwd, removed afterwards.
    assert result["env"] == ["HOME", "LANG", "PATH", "TMPDIR"]
    assert Path(result["cwd"]).name.startswith("assay-sandbox-")
    assert not Path(result["cwd"]).exists()
    assert result["layers"]["audit_hook"] is True


def test_secret_env_of_the_server_is_not_visible(
    sqlite_backend: Backend, layers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASSAY_TEST_SECRET", "hunter2")
    job = run(sqlite_backend, "sb_env")
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.result["secret"] is None
    # Nor through the worker's /proc/<pid>/environ (Landlock, or the audit hook).
    assert job.result["parent_environ"].startswith("PermissionError"), job.result


def test_tcp_connection_is_blocked(
    sqlite_backend: Backend, layers: str, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    job = run(sqlite_backend, "sb_connect", {"port": port})
    assert job.status == JobStatus.SUCCEEDED, job.error
    seen = job.result
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing ever reached the server
    assert "connected" not in seen.values(), seen
    if layers == "kernel":
        require(seen, "netns")
        assert seen["interfaces"] == ["lo"]  # a network namespace of its own
        # Landlock (ABI >= 4) denies TCP connect first where present; else no route at all.
        assert any(e in seen["_socket"] for e in ("Network is unreachable", "Permission denied"))
        assert seen["libc"] in ("ENETUNREACH", "EACCES")
    elif layers == "fallback":
        assert seen["interfaces"] != ["lo"]  # really no namespace: the host's interfaces
        assert seen["socket"].startswith("PermissionError: sandbox: no network")
        assert seen["_socket"] == "PermissionError: sandbox: no network (socket.connect)"
        assert seen["libc"].startswith("ImportError: sandbox: no native calls (import ctypes)")
    else:
        assert seen["socket"].startswith("PermissionError: sandbox: no network")


def test_tcp_blocked_by_the_namespace_alone(
    sqlite_backend: Backend, listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "USE_AUDIT_HOOK", False)
    monkeypatch.setattr(sandbox, "USE_LANDLOCK", False)
    job = run(sqlite_backend, "sb_connect", {"port": listener.getsockname()[1]})
    seen = job.result
    require(seen, "netns")
    assert seen["socket"] == "OSError: [Errno 101] Network is unreachable", seen
    assert seen["libc"] == "ENETUNREACH"
    with pytest.raises(BlockingIOError):
        listener.accept()


def test_writing_outside_the_temp_dir_is_blocked(
    sqlite_backend: Backend, layers: str, tmp_path: Path
) -> None:
    outside = tmp_path / "escaped.txt"
    job = run(sqlite_backend, "sb_write", {"outside": str(outside)})
    assert job.status == JobStatus.SUCCEEDED, job.error
    seen = job.result
    assert seen["inside"] == "ok"  # its own temp dir (the cwd) is writable
    assert not outside.exists()
    assert not Path(f"{outside}.libc").exists()
    if layers == "kernel":
        require(seen, "landlock")
        assert seen["outside"].startswith("PermissionError: [Errno 13]"), seen
        assert seen["libc"] == "EACCES"
    elif layers == "fallback":
        assert seen["outside"].startswith("PermissionError: sandbox: writes only below"), seen
        assert seen["libc"].startswith("ImportError: sandbox: no native calls (import ctypes)")
    else:
        assert seen["outside"].startswith("PermissionError"), seen


def test_fork_bomb_is_defused(sqlite_backend: Backend, layers: str) -> None:
    job = run(sqlite_backend, "sb_fork_bomb")
    assert job.status == JobStatus.FAILED
    assert "RuntimeError: fork bomb defused" in job.error, job.error
    assert "'thread': True" in job.error  # threads still work
    if layers == "kernel":
        if "'seccomp': True" not in job.error:
            pytest.skip("seccomp unavailable here")
        assert "PermissionError: [Errno 1] Operation not permitted after 0" in job.error
        assert "'libc': 'EPERM'" in job.error
    elif layers == "fallback":
        assert "sandbox: no new processes (os.fork) after 0" in job.error
        assert "'libc': 'ImportError: sandbox: no native calls (import ctypes)" in job.error
    else:
        assert "after 0" in job.error


def test_runaway_memory_fails_cleanly(sqlite_backend: Backend) -> None:
    job = run(sqlite_backend, "sb_memory")
    assert job.status == JobStatus.FAILED
    assert "MemoryError" in job.error, job.error


def test_file_size_and_open_files_limits(
    sqlite_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = sandbox.SandboxLimits(file_size_bytes=1024 * 1024, open_files=32)
    monkeypatch.setattr(sandbox.SandboxLimits, "from_options", classmethod(lambda cls, s: small))
    job = run(sqlite_backend, "sb_limits", {"file_bytes": 2 * 1024 * 1024, "files": 100})
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.result["file"].startswith("OSError: [Errno 27] File too large"), job.result
    assert job.result["files"].startswith("OSError: [Errno 24] Too many open files"), job.result


def test_cpu_limit_kills_a_busy_loop(
    sqlite_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    tight = sandbox.SandboxLimits(cpu_s=1)
    monkeypatch.setattr(sandbox.SandboxLimits, "from_options", classmethod(lambda cls, s: tight))
    job = run(sqlite_backend, "sb_loop", timeout=20)
    assert job.status == JobStatus.FAILED
    assert "killed by SIGXCPU: CPU time limit reached" in job.error, job.error


# -- wall clock and cancellation -----------------------------------------------------------------


def test_infinite_loop_times_out_and_the_process_is_killed(sqlite_backend: Backend) -> None:
    job = sqlite_backend.submit("sb_loop")  # timeout=1.0 in its @job
    with running_worker(sqlite_backend):
        pid = pid_from_log(sqlite_backend, job.id)
        done = sqlite_backend.wait(job.id, timeout=15)
        assert done.status == JobStatus.TIMEOUT
        assert "timed out after 1s" in done.error
        wait_until(lambda: pid_gone(pid), timeout=5)


def test_cancel_kills_the_process(sqlite_backend: Backend) -> None:
    job = sqlite_backend.submit("sb_sleep", {"seconds": 60})
    with running_worker(sqlite_backend):
        pid = pid_from_log(sqlite_backend, job.id)
        assert not pid_gone(pid)
        sqlite_backend.cancel(job.id)
        wait_until(lambda: pid_gone(pid), timeout=5)
        assert sqlite_backend.get(job.id).status == JobStatus.CANCELED


def test_sandbox_wall_clock_limit(sqlite_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    short = sandbox.SandboxLimits(wall_s=0.5)
    monkeypatch.setattr(sandbox.SandboxLimits, "from_options", classmethod(lambda cls, s: short))
    started = time.monotonic()
    job = run(sqlite_backend, "sb_sleep", {"seconds": 30})
    assert job.status == JobStatus.TIMEOUT
    assert "sandbox wall-clock limit of 0.5s" in job.error
    assert time.monotonic() - started < 10


# -- output and results are capped and validated -------------------------------------------------


def test_giant_output_is_capped_and_the_worker_carries_on(sqlite_backend: Backend) -> None:
    spam = sqlite_backend.submit("sb_spam")
    with running_worker(sqlite_backend):
        done = sqlite_backend.wait(spam.id, timeout=20)
        assert done.status == JobStatus.FAILED
        assert "more than 1048576 bytes to stdout/stderr" in done.error
        assert done.log_tail is not None
        assert 0 < len(done.log_tail) <= LOG_TAIL_CHARS
        after = sqlite_backend.submit("sb_add", {"a": 1, "b": 1})
        assert sqlite_backend.wait(after.id, timeout=20).result["sum"] == 2


def test_result_too_large_fails(sqlite_backend: Backend) -> None:
    job = run(sqlite_backend, "sb_big_result", {"size": 2 * 1024 * 1024})
    assert job.status == JobStatus.FAILED
    assert "result exceeds 1048576 bytes" in job.error


def test_result_not_json_fails(sqlite_backend: Backend) -> None:
    job = run(sqlite_backend, "sb_not_json")
    assert job.status == JobStatus.FAILED
    assert "the result is not JSON" in job.error


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("garbage\n", "sent a result that is not JSON"),
        ('{"type": "result", "value": NaN}\n', "sent a result that is not JSON"),
        ("[" * 100_000 + "\n", "sent a result that is not JSON"),
        ('{"type": "result"}\n', "message of unexpected shape"),
        ('{"type": "error", "error": 1, "transient": true}\n', "message of unexpected shape"),
        ('{"type": "result", "value": 1}', "incomplete"),
    ],
)
def test_forged_messages_are_rejected(sqlite_backend: Backend, payload: str, expected: str) -> None:
    job = run(sqlite_backend, "sb_forged", {"payload": payload})
    assert job.status == JobStatus.FAILED
    assert expected in job.error, job.error


def test_exit_without_result_fails(sqlite_backend: Backend) -> None:
    job = run(sqlite_backend, "sb_exit")
    assert job.status == JobStatus.FAILED
    assert "ended without a result (exit status 3)" in job.error


# -- errors ---------------------------------------------------------------------------------------


def test_transient_error_is_retried(sqlite_backend: Backend) -> None:
    job = run(sqlite_backend, "sb_flaky", {"fail_times": 1})
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.result == 2
    assert job.attempt == 2


def test_other_error_fails_at_once(sqlite_backend: Backend) -> None:
    job = run(sqlite_backend, "sb_fail")
    assert job.status == JobStatus.FAILED
    assert job.attempt == 1
    assert "ValueError: permanent" in job.error


def test_stop_kills_live_children(sqlite_backend: Backend) -> None:
    job = sqlite_backend.submit("sb_sleep", {"seconds": 60})
    with contextlib.ExitStack() as stack:
        stack.enter_context(running_worker(sqlite_backend))
        pid = pid_from_log(sqlite_backend, job.id)
    # The worker stopped (hand-back, cancel flag): the sandboxed process is gone with it.
    wait_until(lambda: pid_gone(pid), timeout=5)
