"""assay.Client against real `assay server` processes on SQLite, PostgreSQL and MariaDB.

Every answer is compared with the direct backend on the same store: the same jobs (times
included) and the same error classes and messages. A small scripted HTTP server stands in only
for what a healthy assay server never does (5xx pages, dropped connections).
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import assay
import jobmods
from assay import (
    AssayError,
    AuthenticationError,
    Client,
    ConfigError,
    InvalidParamsError,
    InvalidRequestError,
    Job,
    JobStatus,
    NotFoundError,
    PermissionDeniedError,
    Progress,
    StoreError,
    UnknownJobError,
    WaitTimeoutError,
)
from assay.client import error_class
from assay.server.tokens import TokenStore
from support.jobs import FAST
from support.servers import free_port


@pytest.fixture
def direct(store_uri: str) -> Iterator[Any]:
    """The direct backend on the server's store."""
    with assay.connect(store_uri, **FAST) as backend:
        yield backend


@pytest.fixture
def client(server: Any) -> Iterator[Client]:
    with Client(server.url) as c:
        yield c


def stored(direct: Any, job_id: str) -> Job:
    """The job as the direct backend reads it, minus what the API does not show."""
    job: Job = direct.get(job_id)
    return dataclasses.replace(job, lock_key=None)


# -- every method --------------------------------------------------------------------------------


def test_submit_wait_get_cancel_agree_with_the_direct_backend(client, direct):
    job = client.submit("t_add", {"a": 1, "b": 2})
    assert (job.name, job.params, job.attempt) == ("t_add", {"a": 1, "b": 2}, 0)
    done = client.wait(job.id, timeout=30)
    assert done.status == JobStatus.SUCCEEDED
    assert done.result == 3
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.finished_at.tzinfo is not None
    assert done == stored(direct, job.id)  # every field, datetimes included
    assert client.get(job.id) == done

    by_function = client.submit(jobmods.t_add, {"a": 2, "b": 3}, timeout=7)
    assert (by_function.name, by_function.timeout) == ("t_add", 7.0)
    assert client.wait(by_function.id, timeout=30).result == 5

    sleeper = client.submit("t_sleep", {"seconds": 60})
    canceled = client.cancel(sleeper.id)
    assert canceled.status == JobStatus.CANCELED
    assert canceled == stored(direct, sleeper.id)
    assert client.cancel(sleeper.id) == canceled  # a finished job is returned unchanged
    assert client.wait(sleeper.id, timeout=10).status == JobStatus.CANCELED


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_submit_many_is_one_request_and_all_or_none(client, direct):
    jobs = client.submit_many("t_add", [{"a": i, "b": 1} for i in range(3)])
    assert [j.params for j in jobs] == [{"a": i, "b": 1} for i in range(3)]
    assert len({j.id for j in jobs}) == 3
    for j in jobs:
        assert client.wait(j.id, timeout=30).result == j.params["a"] + 1
    assert client.submit_many("t_add", []) == []

    before = len(direct.search(limit=1000).jobs)
    with pytest.raises(InvalidParamsError, match="'b'"):
        client.submit_many("t_add", [{"a": 1, "b": 1}, {"a": 1}])
    assert len(direct.search(limit=1000).jobs) == before


def test_search_pages_and_filters(client, direct):
    noops = client.submit_many("t_noop", [{}] * 7)
    for j in noops:
        client.wait(j.id, timeout=30)
    sleeper = client.submit("t_sleep", {"seconds": 60})

    pages: list[list[Job]] = []
    token = None
    while True:
        page = client.search(name="t_noop", limit=3, page_token=token)
        pages.append(page.jobs)
        token = page.next_page_token
        if token is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    listed = [j for p in pages for j in p]
    assert {j.id for j in listed} == {j.id for j in noops}
    expected = [stored(direct, j.id) for j in direct.search(name="t_noop", limit=100).jobs]
    assert listed == expected  # same order, same fields

    both = client.search(name=["t_noop", "t_sleep"])
    assert len(both.jobs) == 8
    assert both.next_page_token is None
    unfinished = client.search(status=["pending", JobStatus.RUNNING])
    assert [j.id for j in unfinished.jobs] == [sleeper.id]
    assert len(client.search(status="SUCCEEDED", name="t_noop").jobs) == 7
    assert client.search(owner="nobody").jobs == []
    client.cancel(sleeper.id)


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_wait_reports_every_poll_with_progress(client, tmp_path):
    gate = tmp_path / "gate"
    job = client.submit("t_progress", {"steps": 3, "gate": str(gate)})
    with pytest.raises(WaitTimeoutError, match=job.id):
        client.wait(job.id, timeout=0.3)

    seen: list[Job] = []

    def on_update(current: Job) -> None:
        seen.append(current)
        if current.progress == Progress(3, 3, "step 3"):
            gate.touch()

    done = client.wait(job.id, timeout=30, poll_s=0.05, on_update=on_update)
    assert done.status == JobStatus.SUCCEEDED
    assert done.result == 3
    assert seen[-1] == done
    assert JobStatus.RUNNING in {j.status for j in seen}
    assert Progress(3, 3, "step 3") in [j.progress for j in seen]


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_connect_returns_a_client_for_server_urls(server):
    with assay.connect(server.url + "/", timeout=5) as api:
        assert isinstance(api, Client)
        assert api.url == server.url
        assert api.search(limit=1).jobs == []
    with pytest.raises(ConfigError, match="job_modules"):
        assay.connect(server.url, job_modules=["jobmods"])
    with pytest.raises(ConfigError, match="http://"):
        Client("ftp://127.0.0.1/")


# -- errors --------------------------------------------------------------------------------------


def _raised(call: Callable[[], object]) -> AssayError:
    with pytest.raises(AssayError) as info:
        call()
    return info.value


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_errors_are_the_direct_backends_classes_and_messages(client, direct):
    cases: dict[str, tuple[Callable[[Any], object], type[AssayError]]] = {
        "unknown job": (lambda api: api.submit("t_nope"), UnknownJobError),
        "missing param": (lambda api: api.submit("t_add", {"a": 1}), InvalidParamsError),
        "extra param": (
            lambda api: api.submit("t_add", {"a": 1, "b": 2, "c": 3}),
            InvalidParamsError,
        ),
        "batch of an unknown job": (
            lambda api: api.submit_many("t_nope", [{}]),
            UnknownJobError,
        ),
        "not a @job": (lambda api: api.submit(len), InvalidRequestError),
        "get unknown id": (lambda api: api.get("no-such-id"), NotFoundError),
        "cancel unknown id": (lambda api: api.cancel("no-such-id"), NotFoundError),
        "wait unknown id": (lambda api: api.wait("no-such-id"), NotFoundError),
        "bad page token": (lambda api: api.search(page_token="not-a-token"), InvalidRequestError),
    }
    for case, (call, expected) in cases.items():
        over_http = _raised(lambda call=call: call(client))
        in_process = _raised(lambda call=call: call(direct))
        assert type(over_http) is expected, f"{case}: {over_http!r}"
        assert type(in_process) is expected, f"{case}: {in_process!r}"
        # The "(known: …)" list names the jobs each process registered; the rest must match.
        assert _unlisted(over_http) == _unlisted(in_process), case
        assert over_http.code == expected.code, case

    # Rejected by the server's request validation: the same class, the server's own wording.
    invalid = {
        "unknown status": lambda: client.search(status="DONE"),
        "limit 0": lambda: client.search(limit=0),
        "limit over the maximum": lambda: client.search(limit=1001),
        "negative timeout": lambda: client.submit("t_add", {"a": 1, "b": 2}, timeout=-1),
    }
    for case, call in invalid.items():
        error = _raised(call)
        assert type(error) is InvalidRequestError, f"{case}: {error!r}"
        assert str(error), case
    assert direct.search(limit=1000).jobs == []  # nothing was queued by a failed call


def test_error_codes_are_read_from_the_exception_tree():
    seen = set()
    for name in assay.errors.__all__:
        cls = getattr(assay.errors, name)
        assert error_class(cls.code) is cls, name
        seen.add(cls.code)
    assert len(seen) == len(assay.errors.__all__)  # codes are unique
    assert error_class("no_such_code") is AssayError


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_tokens_are_sent_as_bearer(servers, store_uri, direct):
    server = servers.start(store_uri, "--auth")
    tokens = TokenStore(direct.engine)
    _, admin = tokens.create("alice", "admin")
    _, user = tokens.create("bob", "user")

    with Client(server.url) as anonymous, pytest.raises(AuthenticationError, match="Bearer"):
        anonymous.search()
    with Client(server.url, "assay_not-a-token") as stranger, pytest.raises(AuthenticationError):
        stranger.get("no-such-id")
    with Client(server.url, admin) as alice:
        job = alice.submit("t_add", {"a": 1, "b": 2})
        assert job.owner == "alice"
        assert [j.id for j in alice.search(owner="alice").jobs] == [job.id]
    with Client(server.url, user) as bob:
        with pytest.raises(PermissionDeniedError, match="not public"):
            bob.submit("t_add", {"a": 1, "b": 2})
        with pytest.raises(NotFoundError):
            bob.get(job.id)  # another owner's job is a 404
        assert bob.search().jobs == []


# -- a server that is down or failing ------------------------------------------------------------


def test_a_server_that_is_down_is_one_line_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, timeout=5) as client:
        for call in (
            lambda: client.get("some-id"),
            client.search,
            lambda: client.submit("t_add", {"a": 1, "b": 2}),
        ):
            started = time.monotonic()
            with pytest.raises(StoreError) as info:
                call()
            message = str(info.value)
            assert message.startswith(f"cannot reach the assay server at {url}: "), message
            assert "\n" not in message
            assert time.monotonic() - started < 5  # a couple of quick retries, no more


class Scripted(http.server.ThreadingHTTPServer):
    """Answers requests from a script, in order: (status, body) or ``None`` to hang up."""

    def __init__(self, script: list[tuple[int, bytes] | None]) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.script = list(script)
        self.requests: list[tuple[str, str, str | None]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    server: Scripted

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.requests.append((self.command, self.path, self.headers.get("Authorization")))
        step = self.server.script.pop(0)
        if step is None:
            self.close_connection = True
            return
        status, body = step
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if body[:1] == b"{" else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def scripted() -> Iterator[Callable[[list[tuple[int, bytes] | None]], Scripted]]:
    started: list[Scripted] = []

    def start(script: list[tuple[int, bytes] | None]) -> Scripted:
        srv = Scripted(script)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _job_json() -> bytes:
    return json.dumps(
        {
            "id": "j1",
            "name": "t_add",
            "params": {"a": 1, "b": 2},
            "status": "RUNNING",
            "result": None,
            "error": None,
            "attempt": 1,
            "max_retries": 0,
            "timeout": 30.0,
            "created_at": "2026-01-02T03:04:05.678000Z",
            "started_at": "2026-01-02T03:04:06Z",
            "finished_at": None,
            "worker_id": "w1",
            "progress": {"completed": 1, "total": 4, "message": "one"},
            "log_tail": None,
            "owner": "alice",
        }
    ).encode()


def test_failing_servers_and_retries(scripted):
    srv = scripted(
        [
            (503, _error("store_error", "the store is unreachable or failing")),
            (502, b"<html>\n<h1>Bad Gateway</h1>\n</html>"),
            (500, _error("internal_error", "internal error: KeyError")),
            (418, _error("teapot", "short and stout")),
            (200, b"[1, 2]"),
            None,  # a GET whose connection drops is retried...
            (200, _job_json()),
            None,  # ...a POST is not: it may have been applied
        ]
    )
    with Client(srv.url, "s3cret") as client:
        for expected_status in (503, 502, 500):
            with pytest.raises(StoreError) as info:
                client.get("j1")
            message = str(info.value)
            assert message.startswith(f"the assay server at {srv.url} failed ({expected_status})")
            assert "\n" not in message
        with pytest.raises(AssayError, match="short and stout") as unknown:
            client.get("j1")
        assert type(unknown.value) is AssayError
        assert unknown.value.code == "teapot"
        with pytest.raises(StoreError, match="without a JSON object"):
            client.get("j1")

        job = client.get("j1")
        assert job.status == JobStatus.RUNNING
        assert job.progress == Progress(1, 4, "one")
        assert job.started_at is not None
        assert job.started_at.isoformat() == "2026-01-02T03:04:06+00:00"
        assert job.owner == "alice"

        with pytest.raises(StoreError, match=f"cannot reach the assay server at {srv.url}"):
            client.cancel("j1")
    assert [r[:2] for r in srv.requests] == [("GET", "/api/v1/jobs/j1")] * 7 + [
        ("POST", "/api/v1/jobs/j1/cancel")
    ]
    assert {r[2] for r in srv.requests} == {"Bearer s3cret"}


def test_job_ids_stay_one_path_segment(scripted):
    srv = scripted([(404, _error("not_found", "job 'a/b' not found"))])
    with Client(srv.url) as client, pytest.raises(NotFoundError):
        client.get("a/b")
    assert srv.requests[0][1] == "/api/v1/jobs/a%2Fb"


def _unlisted(error: Exception) -> str:
    return re.sub(r" \(known: [^)]*\)$", "", str(error))
