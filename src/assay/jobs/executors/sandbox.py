"""The ``sandbox`` executor: untrusted code in a fresh, locked-down process per job.

Per job the worker starts ``python -I -S -B _sandbox_child.py`` in its own session, with a
scrubbed environment (PATH, LANG, HOME and TMPDIR only; HOME, TMPDIR and the working directory
are a private temp dir removed afterwards) and an explicit ``sys.path`` (the job module's root and
the interpreter's site-packages, nothing inherited). The child never imports the real ``assay``:
job modules see a stand-in with ``job``, ``current_job`` and ``JobCancelled``. The child's layers
are described in :mod:`assay.jobs.executors._sandbox_child`: network namespace, rlimits,
Landlock, a seccomp filter (no new processes, no ``execve``, no unix sockets, no user or other
namespaces), no capabilities, and an in-process audit hook as the fallback where the kernel
offers none of those.

``ctypes`` is refused in the child unless the job opts in, with the executor option
``allow_ctypes``: the names of the jobs that may use it, set by the operator
(``ASSAY_EXECUTOR_OPTIONS='{"sandbox": {"allow_ctypes": ["my_job"]}}'``), never by the job
itself. It takes effect only when every kernel layer is in place (then they, not the audit hook,
confine the job's native code). assay's own sandboxed jobs (``assay.*``: custom scorers) can
never be listed, and the custom scorers' executor is built without options anyway.

The parent enforces the wall clock (the job's timeout, cancellation, and ``wall_s``) by killing
the process group, caps what it reads (output and result), and trusts nothing it reads: the
result must be one JSON object of the expected shape, within the size cap.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from assay.config import Settings
from assay.errors import ConfigError
from assay.jobs.context import JobContext
from assay.jobs.executors.base import (
    Completed,
    Executor,
    Failed,
    Outcome,
    Retry,
    describe_exit,
)
from assay.jobs.executors.child import ChildLimits, Children, Reader, Stop
from assay.jobs.registry import JobSpec

__all__ = ["SandboxExecutor", "SandboxLimits"]

log = logging.getLogger("assay.sandbox")

CHILD = Path(__file__).with_name("_sandbox_child.py")
MiB = 1024 * 1024

# Which layers the child installs. All on in production; tests switch single layers off to prove
# that each one blocks on its own (and that the in-process fallback works without the kernel's).
USE_NETWORK_NAMESPACE = True
USE_LANDLOCK = True
USE_SECCOMP = True
USE_AUDIT_HOOK = True

_SYSTEM_READ_ROOTS = ["/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache", "/etc/localtime"]
_DEVICES = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"]


@dataclass(frozen=True)
class SandboxLimits:
    """The limits of one sandboxed job (settings ``sandbox_*``)."""

    memory_bytes: int = 512 * MiB  # RLIMIT_AS
    cpu_s: int = 60  # RLIMIT_CPU (SIGXCPU, then SIGKILL a second later)
    file_size_bytes: int = 64 * MiB  # RLIMIT_FSIZE (a bigger write fails with EFBIG)
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 64  # RLIMIT_NPROC, only where enforced (not for uid 0; seccomp there)
    wall_s: float = 600.0  # on top of the job's own timeout, whichever comes first
    output_bytes: int = 1 * MiB  # stdout+stderr read before the job is stopped
    result_bytes: int = 1 * MiB  # one message (the result) on the result pipe

    @classmethod
    def from_options(cls, config: Mapping[str, Any]) -> SandboxLimits:
        """The limits in an executor's :attr:`~Executor.config` (top-level ``sandbox_*``)."""
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})

    def rlimits(self) -> dict[str, int]:
        return {
            "RLIMIT_AS": self.memory_bytes,
            "RLIMIT_CPU": self.cpu_s,
            "RLIMIT_FSIZE": self.file_size_bytes,
            "RLIMIT_NOFILE": self.open_files,
            "RLIMIT_NPROC": self.processes,
            "RLIMIT_CORE": 0,
        }


class SandboxExecutor(Executor):
    name = "sandbox"
    options: ClassVar[Mapping[str, Any]] = {"allow_ctypes": ()}
    """``allow_ctypes``: names of the jobs whose sandbox lets ``ctypes`` through (when every
    kernel layer is in place); any other job gets an ImportError on ``import ctypes``."""
    settings_options: ClassVar[Mapping[str, str]] = {
        name: f"sandbox_{name}"
        for name in (
            "memory_bytes",
            "cpu_s",
            "file_size_bytes",
            "open_files",
            "processes",
            "wall_s",
            "output_bytes",
            "result_bytes",
        )
    }

    def __init__(
        self, settings: Settings, *, slots: int, options: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(settings, slots=slots, options=options)
        self.allow_ctypes = _allow_ctypes(self.config["allow_ctypes"])
        self.limits = SandboxLimits.from_options(self.config)
        self._children = Children()

    def stop(self) -> None:
        self._children.kill_all()

    def run(self, spec: JobSpec, ctx: JobContext) -> Outcome:
        try:
            request = self._request(spec, ctx)
        except Exception as exc:
            return Failed(f"sandbox: cannot run job {spec.name!r}: {exc}")
        tmp = tempfile.mkdtemp(prefix="assay-sandbox-")
        try:
            return self._run_in(tmp, request, spec, ctx)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- one job -----------------------------------------------------------------------------

    def _request(self, spec: JobSpec, ctx: JobContext) -> dict[str, Any]:
        module = getattr(spec.fn, "__module__", None)
        qualname = getattr(spec.fn, "__qualname__", "")
        if not module or module == "__main__" or "<locals>" in qualname:
            raise ValueError("the function must be importable (a module-level function)")
        return {
            "module": module,
            "qualname": qualname,
            "retry_on": [[c.__module__, c.__qualname__] for c in spec.retry_on],
            "params": ctx.job.params,
            "job_id": ctx.job.id,
            "attempt": ctx.job.attempt,
            "sys_path": _child_sys_path(module),
            "allow_ctypes": spec.name in self.allow_ctypes,
            "rlimits": self.limits.rlimits(),
            "layers": {
                "netns": USE_NETWORK_NAMESPACE,
                "landlock": USE_LANDLOCK,
                "seccomp": USE_SECCOMP,
                "audit_hook": USE_AUDIT_HOOK,
            },
        }

    def _run_in(self, tmp: str, request: dict[str, Any], spec: JobSpec, ctx: JobContext) -> Outcome:
        def encoded(message_fd: int) -> bytes:
            request.update(
                tmp=tmp,
                message_fd=message_fd,
                read_roots=_read_roots(request["sys_path"]),
                write_files=["/dev/null"],
            )
            return json.dumps(request).encode()

        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": tmp, "TMPDIR": tmp}
        argv = [sys.executable, "-I", "-S", "-B", str(CHILD)]
        reader = Reader(
            lambda line: self._message(line, spec, ctx),
            executor="sandbox",
            who="the job",
            limits=ChildLimits(
                self.limits.wall_s, self.limits.output_bytes, self.limits.result_bytes
            ),
            describe=_describe,
        )
        try:
            return self._children.run(argv, encoded, ctx, reader, env=env, cwd=tmp)
        except OSError as exc:
            return Failed(f"sandbox: cannot start the child process: {exc}")

    def _message(self, line: bytes, spec: JobSpec, ctx: JobContext) -> Outcome | None:
        """One line from the untrusted child: a progress report (None) or the final outcome."""
        if len(line) > self.limits.result_bytes:
            raise Stop(
                Failed(f"sandbox: the job's result exceeds {self.limits.result_bytes} bytes")
            )
        try:
            message = json.loads(line, parse_constant=_no_constants)
        except (ValueError, RecursionError) as exc:
            raise Stop(Failed(f"sandbox: the job sent a result that is not JSON: {exc}")) from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "progress":
            completed, total, text = (message.get(k) for k in ("completed", "total", "message"))
            if _number(completed) and (total is None or _number(total)):
                ctx.progress(completed, total, text[:500] if isinstance(text, str) else None)
            return None
        if kind == "result" and set(message) == {"type", "value"}:
            return Completed(message["value"])
        if (
            kind == "error"
            and set(message) == {"type", "error", "transient"}
            and isinstance(message["error"], str)
            and isinstance(message["transient"], bool)
        ):
            error = message["error"][-20000:]
            return Retry(error) if message["transient"] and spec.retry_on else Failed(error)
        raise Stop(Failed(f"sandbox: the job sent a message of unexpected shape: {line[:200]!r}"))


# -- helpers ---------------------------------------------------------------------------------------


def _allow_ctypes(value: object) -> frozenset[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(n, str) for n in value):
        raise ConfigError("sandbox executor: allow_ctypes must be a list of job names")
    internal = [name for name in value if name.startswith("assay.")]
    if internal:
        raise ConfigError(
            f"sandbox executor: allow_ctypes cannot list {internal[0]!r}: assay's own sandboxed "
            "jobs (custom scorers) never get ctypes"
        )
    return frozenset(value)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _child_sys_path(module: str) -> list[str]:
    """The job module's import root, then the interpreter's site-packages (no .pth processing;
    the child runs with -S). Nothing else of the parent's path: not its cwd, not assay's src."""
    paths: list[str] = []
    mod = sys.modules.get(module)
    file = getattr(mod, "__file__", None)
    if file:
        root = Path(file).resolve().parent
        depth = module.count(".") + (1 if Path(file).name == "__init__.py" else 0)
        for _ in range(depth):
            root = root.parent
        paths.append(str(root))
    for entry in sys.path:
        if entry and Path(entry).name in ("site-packages", "dist-packages") and entry not in paths:
            paths.append(entry)
    return paths


def _read_roots(sys_path: list[str]) -> list[str]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots.add(str(Path(sys.executable).resolve().parent))
    roots.update(sys_path)
    return [*sorted(roots), *_SYSTEM_READ_ROOTS, *_DEVICES]


_SIGNAL_HINTS = {
    -signal.SIGXCPU: "CPU time limit reached",
    -signal.SIGKILL: "killed: CPU or memory limit, or the OOM killer",
    -signal.SIGXFSZ: "file size limit reached",
    -signal.SIGSEGV: "crashed, possibly out of memory",
}


def _describe(code: int) -> str:
    hint = _SIGNAL_HINTS.get(code)
    return describe_exit(code) + (f": {hint}" if hint else "")
