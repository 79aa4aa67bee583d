"""Jobs for tests/jobs/executors/test_python_env.py: they run in cached virtualenvs
(``python_env``).

``tomli_w`` is not installed in the worker's own environment, so a job that imports it proves it
runs inside its env; two pins of it prove that envs are keyed by the requirement set.
"""

from __future__ import annotations

import os
import sys
import time

from assay import current_job, job

PKG = "tomli-w==1.1.0"
PKG_OLD = "tomli-w==1.0.0"
MISSING = "assay-does-not-exist-pkg==9.9"


class Flaky(Exception):
    pass


@job(name="venv_pkg", python_env={"pip": [PKG]})
def venv_pkg(tag: str = "") -> dict[str, str]:
    import tomli_w

    print(f"hello from {tag or 'venv_pkg'}")
    return {"version": tomli_w.__version__, "prefix": sys.prefix, "tag": tag}


@job(name="venv_pkg_old", python_env={"pip": [PKG_OLD]})
def venv_pkg_old() -> dict[str, str]:
    import tomli_w

    return {"version": tomli_w.__version__, "prefix": sys.prefix}


@job(name="venv_missing", python_env={"pip": [MISSING]})
def venv_missing() -> None:
    return None


@job(name="venv_sleep", python_env={"pip": [PKG]})
def venv_sleep(path: str, seconds: float = 60.0) -> None:
    """Reports progress, writes its pid (and a grandchild's) to ``path``, then sleeps."""
    import subprocess

    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    current_job().progress(1, 10, "started")
    with open(path, "w") as fh:
        fh.write(f"{os.getpid()} {grandchild.pid}\n")
    time.sleep(seconds)


@job(name="venv_raise", python_env={"pip": [PKG]}, retry_on=Flaky, max_retries=1)
def venv_raise(transient: bool) -> None:
    if transient:
        raise Flaky("try again")
    raise ValueError("bad input")
