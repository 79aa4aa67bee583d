"""``assay server --processes N``: N processes serve one address (uvicorn's supervisor), each
a replica with its own worker loops. A killed process is replaced, SIGTERM stops them all, and
they stop by themselves when their parent is killed. (Replicas on one store are tested in
``test_replicas.py`` on PostgreSQL and MariaDB; here the subject is the process model.)"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from support.servers import ServerProcess, Servers, free_port
from support.timing import scaled, wait_until

pytestmark = pytest.mark.parametrize("store_uri", ["sqlite", "postgresql"], indirect=True)


def _processes(server: ServerProcess) -> set[int]:
    """The serving processes under the server's parent (not multiprocessing's helpers)."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    serving = set()
    for pid in map(int, children):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in command:
            serving.add(pid)
    return serving


def _two_processes(server: ServerProcess, gone: int | None = None) -> set[int]:
    """Once the server has two serving processes (and ``gone`` is not one of them), them."""

    def two() -> set[int] | None:
        serving = _processes(server)
        return serving if len(serving) == 2 and gone not in serving else None

    found: set[int] = wait_until(two, timeout=60)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _run_a_job(server: ServerProcess) -> None:
    """A job submitted and run to SUCCEEDED, each request on a new connection (so it goes to
    whichever process accepts it, not to one a kept-alive connection is tied to)."""
    answer = httpx.post(
        f"{server.url}/api/v1/jobs", json={"name": "t_noop", "params": {}}, timeout=scaled(10)
    )
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["id"]

    def finished() -> str | None:
        status: str = httpx.get(f"{server.url}/api/v1/jobs/{job_id}", timeout=scaled(10)).json()[
            "status"
        ]
        return status if status in ("SUCCEEDED", "FAILED") else None

    assert wait_until(finished, timeout=30) == "SUCCEEDED"


def test_processes_share_the_address_and_a_killed_one_is_replaced(
    servers: Servers, store_uri: str
) -> None:
    # Both processes bind the one OTLP/gRPC port too: a second bind that failed would stop
    # the server at start-up.
    server = servers.start(store_uri, "--processes", "2", "--otlp-grpc-port", str(free_port()))
    first = _two_processes(server)
    _run_a_job(server)
    seen = set(first)
    for victim in sorted(first):
        os.kill(victim, signal.SIGKILL)
        _run_a_job(server)  # the other process answers and runs it meanwhile
        seen |= _two_processes(server, gone=victim)
    assert len(seen) == 4  # two killed, two new: the last job ran on a replacement
    assert server.stop() == 0
    assert not any(_alive(pid) for pid in seen)


def test_processes_stop_when_their_parent_is_killed(servers: Servers, store_uri: str) -> None:
    server = servers.start(store_uri, "--processes", "2")
    serving = _two_processes(server)
    server.stop(signal.SIGKILL)
    wait_until(lambda: not any(_alive(pid) for pid in serving), timeout=30)
    logs = server.logs()
    assert logs.count("server.orphaned") == 2, logs[-3000:]
