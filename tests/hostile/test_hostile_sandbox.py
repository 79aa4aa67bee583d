"""Hostile jobs against the sandbox: the escapes of issue 12 (security hardening), item 1.

A custom scorer with ``ctypes`` (let through then whenever every kernel layer was on) opened an
AF_UNIX socket to PostgreSQL's ``/var/run/postgresql/.s.PGSQL.5432`` (trust auth), read files,
ran commands as postgres and inserted an admin API token. MariaDB's socket was reachable too.
Each escape here is tried through the Python API and through raw libc calls (ctypes), in these
modes:

- ``all``: production (every layer; the audit hook refuses ctypes and unix sockets first);
- ``all+ctypes``: every layer, and the job is listed in ``allow_ctypes``: the issue's situation,
  where the kernel layers must hold against native code;
- ``netns``, ``landlock``, ``seccomp``: that kernel layer alone (no audit hook);
- ``audit_hook``: the in-process fallback alone.

What each layer alone stops. Where a layer cannot stop an escape, the test asserts that it gets
through, so that this table stays true:

=================================  ======  ===============  =======  ==========
escape                             netns   landlock         seccomp  audit hook
=================================  ======  ===============  =======  ==========
named unix socket (PG, MariaDB)    no      ABI >= 9         yes      yes
abstract unix socket               yes     ABI >= 6         yes      yes
named socket made outside tmp      no      yes (MAKE_SOCK)  yes      yes
socketpair (reaches only itself)   no      no               yes      yes
unshare/setns/clone CLONE_NEWUSER  no      no               yes      yes
execve                             no      yes (EXECUTE)    yes      yes
io_uring (bypasses seccomp)        no      no               yes      yes
=================================  ======  ===============  =======  ==========

The real database sockets are required in CI (``ASSAY_TEST_REQUIRE_DBS=1``), skipped elsewhere
when absent; the test's own socket server (in /tmp) makes the same point without them.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import assay
import jobmods_sandbox  # noqa: F401 - registers the sb_* jobs in this process
from assay import Job, JobStatus
from assay.config import load_settings
from assay.errors import ConfigError
from assay.jobs.backend import Backend
from assay.jobs.executors import create_executor, sandbox
from assay.scoring.custom import SandboxedScorer
from assay.scoring.model import ScoringItem
from support.databases import REQUIRE_DBS
from support.jobs import FAST, running_worker

DB_SOCKETS = {
    "postgresql": os.environ.get("ASSAY_TEST_PG_SOCKET", "/var/run/postgresql/.s.PGSQL.5432"),
    "mariadb": os.environ.get("ASSAY_TEST_MYSQL_SOCKET", "/run/mysqld/mysqld.sock"),
}
LAYER_FLAGS = {
    "netns": "USE_NETWORK_NAMESPACE",
    "landlock": "USE_LANDLOCK",
    "seccomp": "USE_SECCOMP",
    "audit_hook": "USE_AUDIT_HOOK",
}
KERNEL = ("netns", "landlock", "seccomp")
MODES: dict[str, tuple[tuple[str, ...], bool]] = {  # mode -> (layers on, job opted in to ctypes)
    "all": ((*KERNEL, "audit_hook"), False),
    "all+ctypes": ((*KERNEL, "audit_hook"), True),
    "netns": (("netns",), False),
    "landlock": (("landlock",), False),
    "seccomp": (("seccomp",), False),
    "audit_hook": (("audit_hook",), False),
    "audit_hook+ctypes": (("audit_hook",), True),
    "no_seccomp+ctypes": (("netns", "landlock", "audit_hook"), True),
}
ESCAPE_MODES = ["all", "all+ctypes", "netns", "landlock", "seccomp", "audit_hook"]

NO_UNIX = "PermissionError: sandbox: no unix sockets (socket.__new__)"
NO_CTYPES = "ImportError: sandbox: no native calls (import ctypes)"
EPERM = "PermissionError: [Errno 1] Operation not permitted"
EACCES = "PermissionError: [Errno 13] Permission denied"


@dataclass
class Sandbox:
    """Runs sandbox jobs with the layers of one mode, through a real worker on SQLite."""

    mode: str
    db: Path

    @property
    def layers(self) -> tuple[str, ...]:
        return MODES[self.mode][0]

    @property
    def opted_in(self) -> bool:
        return MODES[self.mode][1]

    @property
    def refuses_in_process(self) -> bool:
        """The audit hook is on: it refuses unix sockets, exec... before the kernel sees them."""
        return "audit_hook" in self.layers

    def libc_refused(self) -> str:
        """What a raw libc call meets when the audit hook is on: its refusal of ctypes, unless
        the job opted in with every kernel layer on, where seccomp answers EPERM."""
        return "EPERM" if self.mode == "all+ctypes" else NO_CTYPES

    def job(self, name: str, params: dict[str, Any] | None = None) -> Job:
        options = {"sandbox": {"allow_ctypes": [name]}} if self.opted_in else {}
        with assay.connect(f"sqlite:///{self.db}", executor_options=options, **FAST) as backend:
            assert isinstance(backend, Backend)
            job = backend.submit(name, params or {})
            with running_worker(backend, concurrency=1):
                return backend.wait(job.id, timeout=60)

    def result(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        job = self.job(name, params)
        assert job.status == JobStatus.SUCCEEDED, job.error
        seen: dict[str, Any] = job.result
        self.require(seen["layers"])
        return seen

    def require(self, reported: dict[str, Any]) -> None:
        """Skip when the kernel lacks a layer this mode is about; check the ctypes decision."""
        missing = [n for n in self.layers if n in KERNEL and not reported.get(n)]
        if missing:
            pytest.skip(f"kernel layer(s) unavailable here: {missing}")
        if self.refuses_in_process:
            assert reported["ctypes_blocked"] is (self.mode != "all+ctypes"), reported


@pytest.fixture
def box(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Sandbox:
    mode = str(request.param)
    for layer, flag in LAYER_FLAGS.items():
        monkeypatch.setattr(sandbox, flag, layer in MODES[mode][0])
    return Sandbox(mode, tmp_path / "assay.db")


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory outside the sandbox with a short path (a socket path holds 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="assay-hostile-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def own_server(short_dir: str) -> Iterator[tuple[str, socket.socket]]:
    """A unix socket server of the test's own, outside the sandbox: (its path, its socket)."""
    path = os.path.join(short_dir, "server.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    server.setblocking(False)
    try:
        yield path, server
    finally:
        server.close()


@pytest.fixture
def abstract_server() -> Iterator[tuple[str, socket.socket]]:
    """A server on an abstract unix socket (no file; scoped by network namespace)."""
    name = f"\0assay-hostile-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)
    server.listen()
    server.setblocking(False)
    try:
        yield name, server
    finally:
        server.close()


def database_socket(kind: str) -> str:
    """The database server's unix socket; skip (in CI: fail) when there is none."""
    path = DB_SOCKETS[kind]
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        is_socket = False
    if not is_socket:
        message = f"no {kind} unix socket at {path} (set ASSAY_TEST_{kind.upper()}_SOCKET?)"
        if REQUIRE_DBS:
            pytest.fail(message)
        pytest.skip(message)
    return path


def nothing_reached(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        server.accept()


# -- unix sockets ----------------------------------------------------------------------------


@pytest.mark.parametrize("box", ESCAPE_MODES, indirect=True)
@pytest.mark.parametrize("target", ["own", "postgresql", "mariadb"])
def test_named_unix_socket_is_refused(
    box: Sandbox, target: str, request: pytest.FixtureRequest
) -> None:
    server = None
    if target == "own":
        path, server = request.getfixturevalue("own_server")
    else:
        path = database_socket(target)
    seen = box.result("sb_unix_connect", {"path": path})
    landlock_resolves = seen["layers"].get("landlock_abi", 0) >= 9
    if box.mode == "netns" or (box.mode == "landlock" and not landlock_resolves):
        # Not these layers' to stop: a named socket is found through the file system, which no
        # network namespace covers, and Landlock only controls resolving it from ABI 9. Hence the
        # seccomp filter on socket(AF_UNIX).
        assert seen["socket"] == seen["libc"] == "connected", seen
        return
    if box.mode == "landlock":  # LANDLOCK_ACCESS_FS_RESOLVE_UNIX
        assert seen["socket"].startswith(EACCES), seen
        assert seen["libc"] == "connect: EACCES", seen
    elif box.mode == "seccomp":
        assert seen["socket"] == EPERM, seen
        assert seen["libc"] == "socket: EPERM", seen
    else:
        assert seen["socket"] == NO_UNIX, seen
        expected = box.libc_refused()
        assert seen["libc"].startswith("socket: EPERM" if expected == "EPERM" else expected), seen
    if server is not None:
        nothing_reached(server)


@pytest.mark.parametrize("box", ESCAPE_MODES, indirect=True)
def test_abstract_unix_socket_is_refused(
    box: Sandbox, abstract_server: tuple[str, socket.socket]
) -> None:
    name, server = abstract_server
    seen = box.result("sb_unix_connect", {"path": name})
    if box.mode == "netns":  # abstract names belong to a network namespace: not there
        assert seen["socket"] == "ConnectionRefusedError: [Errno 111] Connection refused", seen
        assert seen["libc"] == "connect: ECONNREFUSED", seen
    elif box.mode == "landlock":
        if seen["layers"]["landlock_abi"] < 6:
            assert seen["socket"] == seen["libc"] == "connected", seen  # no scoping before 6
            return
        assert seen["socket"] == EPERM, seen  # LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET
        assert seen["libc"] == "connect: EPERM", seen
    elif box.mode == "seccomp":
        assert seen["socket"] == EPERM, seen
        assert seen["libc"] == "socket: EPERM", seen
    else:
        assert seen["socket"] == NO_UNIX, seen
        expected = box.libc_refused()
        assert seen["libc"].startswith("socket: EPERM" if expected == "EPERM" else expected), seen
    nothing_reached(server)


@pytest.mark.parametrize("box", ESCAPE_MODES, indirect=True)
def test_named_socket_cannot_be_made_outside_the_temp_dir(box: Sandbox, short_dir: str) -> None:
    outside = os.path.join(short_dir, "planted.sock")
    seen = box.result("sb_unix_bind", {"outside": outside})
    if box.mode == "netns":  # the file system is not this layer's
        assert seen["outside"] == seen["inside"] == seen["libc"] == "bound", seen
        return
    assert not os.path.exists(outside)
    assert not os.path.exists(outside + ".libc")
    if box.mode == "landlock":  # LANDLOCK_ACCESS_FS_MAKE_SOCK, granted below the temp dir only
        assert seen["outside"].startswith(EACCES), seen
        assert seen["inside"] == "bound", seen
        assert seen["libc"] == "bind: EACCES", seen
    elif box.mode == "seccomp":
        assert seen["outside"] == seen["inside"] == EPERM, seen
        assert seen["libc"] == "socket: EPERM", seen
    else:
        assert seen["outside"] == seen["inside"] == NO_UNIX, seen
        expected = box.libc_refused()
        assert seen["libc"].startswith("socket: EPERM" if expected == "EPERM" else expected), seen


@pytest.mark.parametrize("box", ESCAPE_MODES, indirect=True)
def test_socketpair_is_refused(box: Sandbox) -> None:
    seen = box.result("sb_socketpair")
    if box.mode in ("netns", "landlock"):  # harmless there: a pair only reaches itself
        assert seen["socket"] == seen["libc"] == "created", seen
    elif box.mode == "seccomp":
        assert seen["socket"] == EPERM, seen
        assert seen["libc"] == "EPERM", seen
    else:
        # socket.socketpair() makes the pair first (seccomp: EPERM), then wraps it in socket
        # objects, where the audit hook refuses it (the socket.__new__ event).
        assert seen["socket"] == (NO_UNIX if box.mode == "audit_hook" else EPERM), seen
        assert seen["libc"].startswith(box.libc_refused()), seen


# -- namespaces, exec, io_uring --------------------------------------------------------------


@pytest.mark.parametrize("box", ESCAPE_MODES, indirect=True)
def test_user_namespace_is_refused(box: Sandbox) -> None:
    seen = box.result("sb_namespaces")
    if box.mode in ("netns", "landlock"):  # not these layers' to stop
        if seen["unshare"] != "unshared":
            pytest.skip(f"this host allows no user namespaces anyway: {seen['unshare']}")
        assert seen["setns"] == "EBADF", seen  # the call was made (fd -1)
        assert seen["clone"] == "EINVAL", seen  # refused by the kernel for CLONE_THREAD only
        assert seen.get("os", "unshared") == "unshared", seen
    elif box.mode in ("seccomp", "all+ctypes"):
        assert seen["unshare"] == seen["setns"] == seen["clone"] == "EPERM", seen
        if box.mode == "seccomp":
            assert seen.get("os", EPERM) == EPERM, seen
    else:
        assert seen["unshare"].startswith(NO_CTYPES), seen
    if box.refuses_in_process and "os" in seen:  # Python >= 3.12 has os.unshare
        assert seen["os"] == "PermissionError: sandbox: no namespaces (os.unshare)", seen


@pytest.mark.parametrize("box", ESCAPE_MODES, indirect=True)
def test_exec_is_refused(box: Sandbox) -> None:
    job = box.job("sb_exec")
    if box.mode == "netns":  # not this layer's: the shell replaced the job
        assert job.status == JobStatus.FAILED
        assert "ended without a result (exit status 0)" in (job.error or ""), job.error
        assert "EXECUTED by os.execv" in (job.log_tail or ""), job.log_tail
        return
    assert job.status == JobStatus.SUCCEEDED, (job.error, job.log_tail)
    seen = job.result
    box.require(seen["layers"])
    assert "EXECUTED" not in (job.log_tail or "")
    if box.mode == "landlock":  # LANDLOCK_ACCESS_FS_EXECUTE is granted nowhere
        assert seen["os"] == EACCES, seen
        assert seen["libc"] == "EACCES", seen
    elif box.mode == "seccomp":
        assert seen["os"] == EPERM, seen
        assert seen["libc"] == "EPERM", seen
    else:
        assert seen["os"] == "PermissionError: sandbox: no new processes (os.exec)", seen
        assert seen["libc"].startswith(box.libc_refused()), seen


@pytest.mark.parametrize("box", ["all", "all+ctypes", "seccomp", "audit_hook"], indirect=True)
def test_io_uring_is_refused(box: Sandbox) -> None:
    """io_uring's socket and connect operations would not meet the seccomp filter."""
    seen = box.result("sb_io_uring")
    expected = "EPERM" if box.mode == "seccomp" else box.libc_refused()
    assert seen["libc"].startswith(expected), seen


# -- ctypes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box",
    ["all", "all+ctypes", "audit_hook", "audit_hook+ctypes", "no_seccomp+ctypes"],
    indirect=True,
)
def test_ctypes_needs_an_opt_in_and_every_kernel_layer(box: Sandbox) -> None:
    seen = box.result("sb_ctypes")
    if box.mode == "all+ctypes":
        assert seen["import"] == "imported", seen
        assert seen["call"] == seen["leftover"] == seen["pid"], seen
        return
    # Not opted in, or opted in with a kernel layer missing (then nothing but the audit hook,
    # which native code could undo, would stand in the way).
    assert seen["import"].startswith(NO_CTYPES), seen  # an ImportError: code can fall back
    assert seen["call"].startswith(NO_CTYPES), seen
    # The bootstrap's own ctypes, still reachable, is refused at its first native call.
    assert seen["leftover"].startswith(
        "PermissionError: sandbox: no native calls (ctypes.dlopen)"
    ), seen


def test_allow_ctypes_is_a_list_of_job_names() -> None:
    def build(options: dict[str, Any]) -> sandbox.SandboxExecutor:
        settings = load_settings(executor_options={"sandbox": options})
        executor = create_executor("sandbox", settings, slots=1)
        assert isinstance(executor, sandbox.SandboxExecutor)
        return executor

    assert build({}).allow_ctypes == frozenset()
    assert build({"allow_ctypes": ["sb_ctypes"]}).allow_ctypes == {"sb_ctypes"}
    with pytest.raises(ConfigError, match="allow_ctypes must be a list of job names"):
        build({"allow_ctypes": True})
    with pytest.raises(ConfigError, match="allow_ctypes must be a list of job names"):
        build({"allow_ctypes": "sb_ctypes"})
    with pytest.raises(ConfigError, match=r"cannot list 'assay\.custom_scorer'"):
        build({"allow_ctypes": ["assay.custom_scorer"]})
    with pytest.raises(ConfigError, match="did you mean 'allow_ctypes'"):
        build({"allow_ctype": ["sb_ctypes"]})


EXPLOIT = """
def score(inputs, outputs, trace):
    seen = {}
    import socket
    try:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(inputs)
        seen["socket"] = "connected"
    except Exception as exc:
        seen["socket"] = f"{type(exc).__name__}: {exc}"
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        seen["libc"] = "fd %d" % libc.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
    except Exception as exc:
        seen["libc"] = f"{type(exc).__name__}: {exc}"
    return {"value": 0, "rationale": repr(seen)}
"""


@pytest.mark.parametrize("target", ["own", "postgresql"])
def test_custom_scorer_reaches_no_unix_socket(target: str, request: pytest.FixtureRequest) -> None:
    """The issue's scorer, end to end, with ctypes allowed for another job: the custom scorers'
    sandbox never takes that option."""
    server = None
    if target == "own":
        path, server = request.getfixturevalue("own_server")
    else:
        path = database_socket(target)
    settings = load_settings(executor_options={"sandbox": {"allow_ctypes": ["sb_ctypes"]}})
    scorer = SandboxedScorer({"code": EXPLOIT, "timeout_s": 30}, settings)
    try:
        assert scorer.executor.allow_ctypes == frozenset()
        (feedback,) = scorer.score_many([ScoringItem(inputs=path, outputs=None)])
    finally:
        scorer.close()
    assert not isinstance(feedback, Exception), feedback
    seen = feedback.rationale or ""
    assert f"'socket': '{NO_UNIX}'" in seen, seen
    assert f"'libc': '{NO_CTYPES}" in seen, seen
    if server is not None:
        nothing_reached(server)
