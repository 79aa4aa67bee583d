"""Cached virtualenvs for jobs declared with ``@job(python_env={"pip": [...]})``.

One environment per requirement set and Python version, under ``env_dir`` (settings
``python_env_dir``, default ``~/.assay/envs``)::

    <env_dir>/<key>/           the virtualenv (ready once <key>/.assay-ready exists)
    <env_dir>/<key>.lock       flock()ed while the env is being created
    <env_dir>/<key>.log        one line per creation (who, when, how long): an audit trail

``key`` is a sha256 of the sorted, normalised requirements and the interpreter's version.

- Created once: :func:`ensure_env` returns at once when the ready marker exists; otherwise it
  takes an exclusive ``fcntl.flock`` on ``<key>.lock`` (this serialises threads and processes
  alike, since each call opens the file anew), checks again, and creates the env.
- Never half-ready: the marker is written last, after the install succeeded; a directory
  without it (a crash or a failed install) is removed and built again by the next creator. The
  env is built in place rather than in a temp dir that is renamed afterwards, because pip writes
  the env's absolute path into console-script shebangs, which a rename would break.
- ``uv venv`` + ``uv pip install`` when ``uv`` is on PATH; else ``python -m venv --without-pip``
  + the worker's own pip (``pip --python <env>``), which skips ensurepip (about 2 s instead of
  9 s); else ``python -m venv`` with pip.
- The env sees the worker's packages *behind* its own: a ``.pth`` in its site-packages lists the
  worker's ``sys.path``, so ``assay`` and job modules import while the env's pins win.
- A failed install raises :class:`PythonEnvError` with the tail of the installer's output.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from assay.errors import AssayError

__all__ = [
    "DEFAULT_ENV_DIR",
    "PythonEnvError",
    "PythonEnvInterrupted",
    "ensure_env",
    "env_key",
    "env_python",
    "normalise_requirements",
]

log = logging.getLogger("assay.pyenv")

DEFAULT_ENV_DIR = Path("~/.assay/envs")
"""Where envs live unless settings (``python_env_dir``) or the executor option say otherwise."""

READY_MARKER = ".assay-ready"
ERROR_TAIL_CHARS = 4000
_POLL_S = 0.1


class PythonEnvError(AssayError):
    """A job's python_env could not be created (the installer failed or was stopped)."""

    code = "python_env_failed"


class PythonEnvInterrupted(PythonEnvError):
    """Creating or waiting for an env was stopped because the job was cancelled or timed out."""


def normalise_requirements(requirements: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated requirements with PEP 503 names and no whitespace, so that
    ``["Six == 1.16.0"]`` and ``["six==1.16.0"]`` share one env."""
    normalised: set[str] = set()
    for requirement in requirements:
        text = re.sub(r"\s+", "", requirement)
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(0)).lower()
            text = name + text[match.end() :]
        if text:
            normalised.add(text)
    return sorted(normalised)


def env_key(requirements: Iterable[str]) -> str:
    """The env's directory name: a hash of the requirement set and the interpreter."""
    payload = {
        "requirements": normalise_requirements(requirements),
        "python": f"{sys.implementation.name}-{'.'.join(map(str, sys.version_info[:3]))}",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def env_python(env: Path) -> Path:
    return env / "bin" / "python"


def ensure_env(
    requirements: Iterable[str],
    env_dir: str | os.PathLike[str] | None = None,
    *,
    cancelled: Callable[[], bool] = lambda: False,
    output: Callable[[str], None] | None = None,
    timeout_s: float = 1800.0,
) -> Path:
    """Return the ready env for ``requirements``, creating it (once, under the lock) if needed.

    ``cancelled`` is polled while waiting for another creator and while the installer runs;
    when it turns true the installer is killed and :class:`PythonEnvInterrupted` is raised.
    ``output`` receives progress lines (for the job's log). Raises :class:`PythonEnvError`.
    """
    requirements = normalise_requirements(requirements)
    root = Path(env_dir if env_dir is not None else DEFAULT_ENV_DIR).expanduser().resolve()
    key = env_key(requirements)
    env = root / key
    if (env / READY_MARKER).exists():
        return env
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{key}.lock", cancelled):
        if (env / READY_MARKER).exists():
            return env  # another thread or process made it while we waited
        started = time.monotonic()
        if output:
            output(f"assay: creating python env {key} for {requirements}\n")
        try:
            _create(env, requirements, cancelled, time.monotonic() + timeout_s)
        except BaseException:
            shutil.rmtree(env, ignore_errors=True)
            raise
        seconds = time.monotonic() - started
        with open(root / f"{key}.log", "a") as fh:
            fh.write(
                json.dumps(
                    {
                        "created": time.time(),
                        "pid": os.getpid(),
                        "seconds": round(seconds, 3),
                        "requirements": requirements,
                    }
                )
                + "\n"
            )
        log.info("python_env.created key=%s seconds=%.1f reqs=%s", key, seconds, requirements)
        if output:
            output(f"assay: python env {key} ready in {seconds:.1f}s\n")
    return env


def creations(env_dir: str | os.PathLike[str], requirements: Iterable[str]) -> int:
    """How many times the env for ``requirements`` was created under ``env_dir`` (from its
    ``<key>.log``); used by tests and handy when debugging a cache that keeps rebuilding."""
    path = Path(env_dir).expanduser() / f"{env_key(requirements)}.log"
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


@contextlib.contextmanager
def _locked(path: Path, cancelled: Callable[[], bool]) -> Iterator[None]:
    """An exclusive flock on ``path``, polled so a cancelled job stops waiting for it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if cancelled():
                    raise PythonEnvInterrupted(
                        "stopped while waiting for another worker to create the python env"
                    ) from None
                time.sleep(_POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock


def _create(
    env: Path, requirements: list[str], cancelled: Callable[[], bool], deadline: float
) -> None:
    if env.exists():
        shutil.rmtree(env)  # a leftover of a crashed or failed creation: never marked ready
    python = str(env_python(env))
    uv = shutil.which("uv")
    if uv:
        _run([uv, "venv", "--quiet", "--python", sys.executable, str(env)], cancelled, deadline)
        install = [uv, "pip", "install", "--quiet", "--python", python]
    elif importlib.util.find_spec("pip") is not None:
        _run([sys.executable, "-m", "venv", "--without-pip", str(env)], cancelled, deadline)
        install = [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
        ]
    else:
        _run([sys.executable, "-m", "venv", str(env)], cancelled, deadline)
        install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if requirements:
        _run([*install, *requirements], cancelled, deadline)
    _write_pth(env)
    (env / READY_MARKER).write_text(json.dumps({"requirements": requirements}) + "\n")


def _write_pth(env: Path) -> None:
    """Let the env import what the worker imports (assay, job modules), after its own packages."""
    purelib = sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)})
    site_packages = Path(purelib)
    site_packages.mkdir(parents=True, exist_ok=True)
    entries = [str(Path(p).resolve()) for p in sys.path if p and Path(p).is_dir()]
    unique = list(dict.fromkeys(e for e in entries if "\n" not in e))
    (site_packages / "_assay_worker_path.pth").write_text("\n".join(unique) + "\n")


def _run(command: list[str], cancelled: Callable[[], bool], deadline: float) -> None:
    """Run an installer step; kill it on cancel or deadline; raise with its output's tail."""
    env = {**os.environ, "PIP_NO_INPUT": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    with open(os.devnull, "rb") as stdin, tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                command,
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise PythonEnvError(f"cannot run {command[0]}: {exc}") from exc
        try:
            while proc.poll() is None:
                if cancelled():
                    raise PythonEnvInterrupted("stopped while creating the python env")
                if time.monotonic() > deadline:
                    raise PythonEnvError("creating the python env took too long and was stopped")
                time.sleep(_POLL_S)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.returncode != 0:
            out.seek(0)
            tail = out.read().decode("utf-8", "replace")[-ERROR_TAIL_CHARS:].strip()
            step = " ".join(command[:4])
            raise PythonEnvError(
                f"creating the python env failed ({step} ... exited with {proc.returncode}):\n"
                f"{tail}"
            )
