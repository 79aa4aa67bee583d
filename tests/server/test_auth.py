"""Authentication and authorisation of `assay server`: API tokens made with the CLI, roles, job
tokens, and the loopback default, on every store: against the server's app in this process, and
against a real server where a job calls the API back.

Each boundary has a test that fails if its check is removed: no/bad/revoked/expired token
(401), a user reaching another user's job (404) or submitting a non-public job (403), searches
forced to the user's own jobs, and a job token outside its own job, its scopes or its lifetime
(403).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

import assay
from assay import ConfigError, JobStatus, PermissionDeniedError
from assay.cli import cli
from assay.db.engine import create_engine
from assay.db.tables import api_tokens, metadata
from assay.jobs.backend import Backend
from assay.jobs.executors.kubernetes import build_manifest
from assay.jobs.pyenv import ensure_env
from assay.jobs.registry import Registry, job
from assay.jobs.tokens import JOB_TOKEN_KEY, JobTokens
from assay.server.auth import Principal, auth_enabled, require_scope
from assay.server.tokens import TokenStore, hash_token
from support.jobs import FAST, JOBMODS_DIR, fast_env, running_worker
from support.servers import InProcessServers, Servers
from support.timing import wait_until

JOBS = ["jobmods", "jobmods_auth"]
API_TOKEN = re.compile(r"^assay_[A-Za-z0-9_-]{43}$")
ROUTES = [
    ("GET", "/jobs", None),
    ("POST", "/jobs", {"name": "a_public"}),
    ("POST", "/jobs:batch", {"name": "a_public", "params_list": [{}]}),
    ("GET", "/jobs/some-id", None),
    ("POST", "/jobs/some-id/cancel", None),
]


# -- helpers --------------------------------------------------------------------------------------


def run_cli(store_uri: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--store", store_uri], catch_exceptions=False)


def create_token(store_uri: str, role: str, subject: str, *extra: str) -> str:
    result = run_cli(store_uri, "tokens", "create", "--role", role, "--subject", subject, *extra)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert API_TOKEN.match(token), token
    return token


def token_id(store_uri: str, token: str) -> str:
    engine = create_engine(store_uri)
    try:
        with engine.connect() as conn:
            query = sa.select(api_tokens.c.id).where(api_tokens.c.token_hash == hash_token(token))
            return str(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


def api(
    server: httpx.Client, method: str, path: str, token: str | None = None, **kw: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return server.request(method, f"/api/v1{path}", headers=headers, **kw)


def error(response: httpx.Response, status: int, code: str) -> str:
    """``response`` is ``status`` with the one error shape and ``code``; returns its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    return message


def submit(
    server: httpx.Client, token: str, name: str, timeout: float | None = None, **params: Any
) -> dict[str, Any]:
    request = {"name": name, "params": params, "timeout": timeout}
    response = api(server, "POST", "/jobs", token, json=request)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def ids(server: httpx.Client, token: str, **query: Any) -> set[str]:
    response = api(server, "GET", "/jobs", token, params=query)
    assert response.status_code == 200, response.text
    return {j["id"] for j in response.json()["jobs"]}


def claims_of(token: str) -> dict[str, Any]:
    payload = token.removeprefix("assayjob_").split(".")[0]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return data


def all_stored_text(store_uri: str) -> str:
    """Every value of every row of every table, as one string."""
    engine = create_engine(store_uri)
    try:
        with engine.connect() as conn:
            rows = [
                repr(tuple(row)) for t in metadata.sorted_tables for row in conn.execute(t.select())
            ]
    finally:
        engine.dispose()
    return "\n".join(rows)


# -- API tokens and the CLI -----------------------------------------------------------------------


def test_cli_tokens_are_shown_once_and_stored_only_as_a_hash(store_uri: str) -> None:
    # The first admin token is bootstrapped with the real command, against the store.
    proc = subprocess.run(
        [sys.executable, "-m", "assay", "tokens", "create", "--role", "admin", "--subject", "root"],
        env={**fast_env(), "ASSAY_STORE_URI": store_uri},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    admin = proc.stdout.strip()
    assert API_TOKEN.match(admin), proc.stdout
    assert "shown only once" in proc.stderr
    user = create_token(store_uri, "user", "alice", "--expires", "30d")

    stored = all_stored_text(store_uri)
    for token in (admin, user):
        assert token not in stored
        assert token.removeprefix("assay_") not in stored
        assert hash_token(token) in stored
        assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()

    listed = run_cli(store_uri, "tokens", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = {r["subject"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"root", "alice"}
    assert (rows["root"]["role"], rows["alice"]["role"]) == ("admin", "user")
    assert rows["root"]["expires_at_ms"] is None
    lifetime_ms = rows["alice"]["expires_at_ms"] - rows["alice"]["created_at_ms"]
    assert lifetime_ms == 30 * 86400 * 1000
    table = run_cli(store_uri, "tokens", "list")
    assert rows["alice"]["id"] in table.stdout
    assert admin not in table.output + listed.output
    assert user not in table.output + listed.output

    revoked = run_cli(store_uri, "tokens", "revoke", rows["alice"]["id"])
    assert revoked.exit_code == 0, revoked.output
    after = {
        r["subject"]: r for r in json.loads(run_cli(store_uri, "tokens", "list", "--json").stdout)
    }
    assert after["alice"]["revoked_at_ms"] is not None
    assert after["root"]["revoked_at_ms"] is None

    missing = run_cli(store_uri, "tokens", "revoke", "no-such-id")
    assert (missing.exit_code, missing.stderr.startswith("error: API token")) == (2, True)
    bad_role = run_cli(store_uri, "tokens", "create", "--role", "root", "--subject", "x")
    assert bad_role.exit_code == 2
    bad_expiry = run_cli(
        store_uri, "tokens", "create", "--role", "user", "--subject", "x", "--expires", "soon"
    )
    assert bad_expiry.exit_code == 2
    assert len(json.loads(run_cli(store_uri, "tokens", "list", "--json").stdout)) == 2


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_requests_without_a_valid_token_are_401(apps: InProcessServers, store_uri: str) -> None:
    admin = create_token(store_uri, "admin", "root")
    user = create_token(store_uri, "user", "alice")
    soon = create_token(store_uri, "user", "brief", "--expires", "2s")
    server = apps.start(store_uri, workers=0, auth=True, job_modules=JOBS)

    assert server.get("/health").status_code == 200
    for method, path, body in ROUTES:
        for token in (None, "assay_" + "x" * 43, "assayjob_e30.c2ln", "nonsense"):
            response = api(server, method, path, token, json=body)
            error(response, 401, "unauthenticated")
            assert response.headers["www-authenticate"] == "Bearer"
        basic = server.request(
            method, f"/api/v1{path}", headers={"Authorization": f"Basic {admin}"}, json=body
        )
        error(basic, 401, "unauthenticated")
    assert "Authorization: Bearer" in error(api(server, "GET", "/jobs"), 401, "unauthenticated")
    # Every API route the server publishes, including ones added after this test was written.
    paths = server.get("/openapi.json").json()["paths"]
    published = [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, operations in paths.items()
        if path.startswith(("/api/", "/v1/"))
        for method in operations
    ]
    assert len(published) >= len(ROUTES)
    for method, path in published:
        response = server.request(method, path, json={})
        assert response.status_code == 401, (method, path, response.text)
    assert api(server, "GET", "/jobs", admin).status_code == 200

    # Revoked: refused from the next request on.
    assert api(server, "GET", "/jobs", user).status_code == 200
    assert run_cli(store_uri, "tokens", "revoke", token_id(store_uri, user)).exit_code == 0
    assert "revoked" in error(api(server, "GET", "/jobs", user), 401, "unauthenticated")

    # Expired, by the database clock: a token created with --expires 2s...
    wait_until(lambda: api(server, "GET", "/jobs", soon).status_code == 401, timeout=30)
    assert "expired" in error(api(server, "GET", "/jobs", soon), 401, "unauthenticated")
    # ...and one whose expiry is moved into the past in the store.
    later = create_token(store_uri, "admin", "later", "--expires", "1h")
    assert api(server, "GET", "/jobs", later).status_code == 200
    engine = create_engine(store_uri)
    with engine.begin() as conn:
        conn.execute(
            api_tokens.update()
            .where(api_tokens.c.token_hash == hash_token(later))
            .values(expires_at_ms=api_tokens.c.created_at_ms)
        )
    engine.dispose()
    assert "expired" in error(api(server, "GET", "/jobs", later), 401, "unauthenticated")
    assert api(server, "GET", "/jobs", admin).status_code == 200


# -- roles ----------------------------------------------------------------------------------------


def test_users_see_and_cancel_only_their_own_jobs_and_submit_only_public_ones(
    apps: InProcessServers, store_uri: str
) -> None:
    admin = create_token(store_uri, "admin", "root")
    alice = create_token(store_uri, "user", "alice")
    bob = create_token(store_uri, "user", "bob")
    server = apps.start(store_uri, workers=0, auth=True, job_modules=JOBS)

    a1, a2 = submit(server, alice, "a_public", n=1), submit(server, alice, "a_public", n=2)
    b1 = submit(server, bob, "a_public", n=3)
    r1 = submit(server, admin, "a_private", n=4)
    assert (a1["owner"], a2["owner"], b1["owner"], r1["owner"]) == ("alice", "alice", "bob", "root")
    batch = api(
        server, "POST", "/jobs:batch", alice, json={"name": "a_public", "params_list": [{}, {}]}
    )
    assert batch.status_code == 201, batch.text
    a_batch = {j["id"] for j in batch.json()["jobs"]}
    assert {j["owner"] for j in batch.json()["jobs"]} == {"alice"}
    alices = {a1["id"], a2["id"], *a_batch}

    # Submitting: users only public jobs; admins anything; unknown names stay a 400.
    for path, body in (
        ("/jobs", {"name": "a_private"}),
        ("/jobs:batch", {"name": "a_private", "params_list": [{}]}),
    ):
        message = error(api(server, "POST", path, alice, json=body), 403, "permission_denied")
        assert "not public" in message
    unknown = error(api(server, "POST", "/jobs", alice, json={"name": "nope"}), 400, "unknown_job")
    assert "a_private" not in unknown  # a user is not shown the names of non-public jobs
    admin_unknown = error(
        api(server, "POST", "/jobs", admin, json={"name": "nope"}), 400, "unknown_job"
    )
    assert "a_private" in admin_unknown

    # Another user's job looks exactly like a missing one: 404 to read, 404 to cancel.
    missing = error(api(server, "GET", "/jobs/no-such-job", alice), 404, "not_found")
    hidden = error(api(server, "GET", f"/jobs/{b1['id']}", alice), 404, "not_found")
    assert hidden == missing.replace("no-such-job", b1["id"])
    error(api(server, "POST", f"/jobs/{b1['id']}/cancel", alice), 404, "not_found")
    error(api(server, "GET", f"/jobs/{r1['id']}", bob), 404, "not_found")
    error(api(server, "POST", f"/jobs/{a1['id']}/cancel", bob), 404, "not_found")
    assert api(server, "GET", f"/jobs/{b1['id']}", admin).json()["status"] == "PENDING"
    assert api(server, "GET", f"/jobs/{a1['id']}", admin).json()["status"] == "PENDING"

    # Their own jobs: readable and cancellable.
    assert api(server, "GET", f"/jobs/{a1['id']}", alice).json()["id"] == a1["id"]
    cancelled = api(server, "POST", f"/jobs/{a1['id']}/cancel", alice)
    assert cancelled.json()["status"] == "CANCELED", cancelled.text

    # Searches: a user's are forced to their own jobs, whatever owner they ask for.
    assert ids(server, alice) == alices
    assert ids(server, alice, owner="bob") == alices
    assert ids(server, alice, name="a_private") == set()
    assert ids(server, bob) == {b1["id"]}
    assert ids(server, bob, status="PENDING") == {b1["id"]}

    # Admins see everything, may filter by owner, and cancel anyone's job.
    assert ids(server, admin) == {*alices, b1["id"], r1["id"]}
    assert ids(server, admin, owner="bob") == {b1["id"]}
    assert ids(server, admin, owner="root") == {r1["id"]}
    assert api(server, "GET", f"/jobs/{b1['id']}", admin).status_code == 200
    assert api(server, "POST", f"/jobs/{b1['id']}/cancel", admin).json()["status"] == "CANCELED"


def test_auth_is_off_on_loopback_by_default_and_on_elsewhere(
    apps: InProcessServers, tmp_path: Path
) -> None:
    store_uri = f"sqlite:///{tmp_path / 'assay.db'}"
    local = apps.start(store_uri, workers=0, job_modules=JOBS)  # 127.0.0.1
    response = api(local, "POST", "/jobs", json={"name": "a_private"})
    assert response.status_code == 201, response.text
    assert response.json()["owner"] is None  # the anonymous admin
    assert api(local, "GET", "/jobs").status_code == 200

    # On every interface (requests still come to 127.0.0.1) tokens are required.
    admin = create_token(store_uri, "admin", "root")
    exposed = apps.start(store_uri, workers=0, host="0.0.0.0", job_modules=JOBS)
    error(api(exposed, "GET", "/jobs"), 401, "unauthenticated")
    assert api(exposed, "GET", "/jobs", admin).status_code == 200


@pytest.mark.parametrize(
    ("host", "auth", "expected"),
    [
        ("127.0.0.1", None, False),
        ("127.0.0.2", None, False),
        ("::1", None, False),
        ("[::1]", None, False),
        ("localhost", None, False),
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("10.1.2.3", None, True),
        ("assay.example.com", None, True),
        ("127.0.0.1", True, True),
        ("0.0.0.0", False, False),
    ],
)
def test_auth_setting_resolution(host: str, auth: bool | None, expected: bool) -> None:
    settings = assay.load_settings(host=host, auth=auth)
    assert auth_enabled(settings) is expected


# -- job tokens -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def empty_env_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An env dir holding the (empty) env of ``a_callback_venv``, created once up front."""
    env_dir = tmp_path_factory.mktemp("auth-envs")
    ensure_env([], env_dir)
    return env_dir


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_a_running_job_calls_the_api_back_within_its_token(
    servers: Servers, store_uri: str, empty_env_dir: Path
) -> None:
    admin = create_token(store_uri, "admin", "root")
    alice = create_token(store_uri, "user", "alice")
    server = servers.start(
        store_uri,
        "--auth",
        "--workers",
        "1",
        "--concurrency",
        "2",
        job_modules=JOBS,
        default_executor="process",
        python_env_dir=str(empty_env_dir),
    )
    with httpx.Client(base_url=server.url, timeout=20) as client:
        # Another job of the same owner: a job token is not its owner's API token.
        other = submit(client, alice, "a_public", n=1)["id"]
        jobs = {
            # A 6 s timeout: the token expires with the job's deadline.
            "process": submit(client, alice, "a_callback", 6, experiment_id="e1", other_job=other),
            "inline": submit(client, alice, "a_callback_inline", other_job=other),
            "venv": submit(client, alice, "a_callback_venv", other_job=other),
        }

        def finished(job_id: str) -> dict[str, Any] | None:
            body: dict[str, Any] = api(client, "GET", f"/jobs/{job_id}", admin).json()
            return body if body["status"] not in ("PENDING", "RUNNING") else None

        results = {}
        for executor, submitted in jobs.items():
            done = wait_until(functools.partial(finished, submitted["id"]), timeout=60)
            assert done["status"] == "SUCCEEDED", (executor, done["error"], server.logs()[-3000:])
            seen = done["result"]
            results[executor] = seen
            expected = {
                "own": 200,
                "own_id": submitted["id"],
                "other": 403,
                "missing": 403,
                "search": 403,
                "submit": 403,
                "cancel_own": 403,
            }
            assert {k: seen[k] for k in expected} == expected, executor
            assert seen["token"].startswith("assayjob_")
            claims = claims_of(seen["token"])
            assert (claims["job"], claims["attempt"], claims["owner"]) == (
                submitted["id"],
                1,
                "alice",
            )
            # Processes the job starts get the token and the address too.
            if executor == "inline":
                assert seen["env_token"] is None  # one process, many jobs: no env vars
            else:
                assert (seen["env_token"], seen["env_url"]) == (seen["token"], server.url), executor

        process_token = results["process"]["token"]
        claims = claims_of(process_token)
        assert claims["scopes"] == ["experiment_id:e1"]
        assert claims_of(results["inline"]["token"])["scopes"] == []
        # The process job's token dies with its 6 s deadline (the TTL is an hour), then it is 403.
        assert claims["exp"] - time.time() * 1000 < 6000
        tampered = process_token[:-2] + ("AA" if not process_token.endswith("AA") else "BB")
        error(
            api(client, "GET", f"/jobs/{jobs['process']['id']}", tampered), 401, "unauthenticated"
        )

        def expired() -> str | None:
            response = api(client, "GET", f"/jobs/{jobs['process']['id']}", process_token)
            return (
                error(response, 403, "permission_denied") if response.status_code == 403 else None
            )

        assert "expired" in wait_until(expired, timeout=30)
        # The inline job's token (an hour) still reads its own job, and still nothing else.
        inline_token = results["inline"]["token"]
        assert api(client, "GET", f"/jobs/{jobs['inline']['id']}", inline_token).status_code == 200
        error(api(client, "GET", f"/jobs/{other}", inline_token), 403, "permission_denied")


def _token_registry() -> Registry:
    registry = Registry()

    @job(name="tok", token_scopes=["experiment_id", "run"], registry=registry)
    def tok(experiment_id: str, run: int = 1, other: str = "") -> str | None:
        return assay.current_job().api_token

    return registry


def test_job_tokens_are_scoped_signed_and_capped_by_the_deadline(store_uri: str) -> None:
    settings = assay.load_settings(
        store_uri=store_uri, **{**FAST, "job_modules": []}, job_token_ttl_s=60.0
    )
    with Backend(settings, registry=_token_registry()) as backend:
        short = backend.submit("tok", {"experiment_id": "e1", "run": 7}, timeout=1.5)
        long = backend.submit("tok", {"experiment_id": "e2"}, timeout=3600)
        with running_worker(backend, concurrency=2):
            done = [backend.wait(j.id, timeout=30) for j in (short, long)]
        assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 2
        short_token, long_token = (str(j.result) for j in done)

        verifier = JobTokens(TokenStore(backend.engine))
        now_ms = int(time.time() * 1000)
        short_claims = verifier.verify(short_token, now_ms=now_ms)
        assert short_claims.scopes == {"experiment_id:e1", "run:7"}
        assert short_claims.job_id == short.id
        assert short_claims.expires_at_ms - now_ms <= 1500  # the job's timeout, not the TTL
        long_claims = verifier.verify(long_token, now_ms=now_ms)
        assert long_claims.scopes == {"experiment_id:e2"}  # only params given at submit
        assert 50_000 < long_claims.expires_at_ms - now_ms <= 60_000  # the TTL
        with pytest.raises(PermissionDeniedError, match="expired"):
            verifier.verify(short_token, now_ms=short_claims.expires_at_ms)

        # Only this store's key signs: a token minted with another key is refused.
        assert JOB_TOKEN_KEY in all_stored_text(store_uri)
        engine = backend.engine
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM secrets"))
        with pytest.raises(assay.AuthenticationError, match="signature"):
            JobTokens(TokenStore(engine)).verify(long_token, now_ms=now_ms)


def test_require_scope() -> None:
    job_caller = Principal(
        subject="alice", role="job", job_id="j1", scopes=frozenset({"experiment_id:e1", "n:3"})
    )
    require_scope(job_caller, "experiment_id", "e1")
    require_scope(job_caller, "n", 3)
    require_scope(job_caller, "n", "3")  # a value from a URL path matches the int param
    for name, value in (("experiment_id", "e2"), ("experiment", "e1"), ("n", 4), ("j", "j1")):
        with pytest.raises(PermissionDeniedError, match="not scoped"):
            require_scope(job_caller, name, value)
    for caller in (Principal(subject="alice", role="user"), Principal(subject=None, role="admin")):
        require_scope(caller, "experiment_id", "e2")


def test_the_signing_key_is_created_once_under_a_race(store_uri: str) -> None:
    engines = [create_engine(store_uri) for _ in range(8)]
    assay.db.upgrade(engines[0])
    barrier = threading.Barrier(len(engines))
    keys: list[str] = []
    errors: list[BaseException] = []

    def first_use(engine: sa.Engine) -> None:
        try:
            barrier.wait()
            keys.append(TokenStore(engine).secret(JOB_TOKEN_KEY))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_use, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(keys) == len(engines)
    assert len(set(keys)) == 1
    with engines[0].connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM secrets")).scalar_one() == 1
    # Two replicas agree: a token minted through one engine verifies through another.
    minted = JobTokens(TokenStore(engines[1])).mint("j", 1, None, ["x:1"], 2**62)
    assert JobTokens(TokenStore(engines[2])).verify(minted).scopes == {"x:1"}
    for engine in engines:
        engine.dispose()


def test_token_scopes_must_name_parameters() -> None:
    registry = Registry()
    unknown = "token_scopes names unknown parameter 'experiment'; did you mean 'experiment_id'"
    with pytest.raises(ConfigError, match=unknown):

        @job(name="bad", token_scopes=["experiment"], registry=registry)
        def bad(experiment_id: str) -> None: ...

    with pytest.raises(ConfigError, match="list of parameter names"):

        @job(name="bad2", token_scopes="experiment_id", registry=registry)
        def bad2(experiment_id: str) -> None: ...

    @job(name="ok", token_scopes=("experiment_id",), public=True, registry=registry)
    def ok(experiment_id: str) -> None: ...

    spec = registry.get("ok")
    assert (spec.token_scopes, spec.public) == (("experiment_id",), True)
    assert "bad" not in registry


def test_the_kubernetes_entry_point_hands_the_token_to_the_job(tmp_path: Path) -> None:
    registry = Registry()

    @job(name="k8s_job", registry=registry)
    def k8s_job() -> None: ...

    now = datetime.now(UTC)
    job_ = assay.Job(
        id="j1",
        name="k8s_job",
        params={},
        status=JobStatus.RUNNING,
        result=None,
        error=None,
        attempt=1,
        max_retries=0,
        timeout=60,
        created_at=now,
        started_at=now,
        finished_at=None,
        worker_id=None,
        progress=None,
    )
    api_env = {"ASSAY_API_TOKEN": "assayjob_x.y", "ASSAY_API_URL": "http://api:8400"}
    options = {"image": "img", "command": ["python"], "cpu": "1", "memory": "1Gi"}
    manifest = build_manifest(job_, registry.get("k8s_job"), options, api_env=api_env)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert {name: env[name] for name in api_env} == api_env

    result_path = tmp_path / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "assay.jobs.executors.kubernetes"],
        env={
            **os.environ,
            **api_env,
            "PYTHONPATH": str(JOBMODS_DIR),
            "ASSAY_RESULT_PATH": str(result_path),
            "ASSAY_JOB_MODULE": "jobmods_auth",
            "ASSAY_JOB_FUNCTION": "a_token",
            "ASSAY_JOB_NAME": "a_token",
            "ASSAY_JOB_PARAMS": json.dumps({"experiment_id": "e1"}),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(result_path.read_text()) == {"status": "ok", "result": "assayjob_x.y"}
