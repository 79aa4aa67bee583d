"""Property-based fuzz of the REST API from its published ``/openapi.json`` (schemathesis).

One real server on SQLite; every operation gets schema-generated requests (valid and invalid
ones). No request may get a 5xx, and every answer must match the published schema: status
code, content type and body. MLflow's routes, which the published schema leaves out, are
fuzzed too, from their own route declarations, for 5xx only. Bounded (``FUZZ_EXAMPLES`` per
operation) to stay under a minute.
"""

from __future__ import annotations

import base64
import copy
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

import assay
from assay.server.routes import mlflow, mlflow_artifacts, mlflow_jobs, mlflow_traces
from support.servers import ServerProcess, Servers
from support.timing import wait_until

# One xdist worker runs this whole module (its fixture is expensive and shared).
pytestmark = pytest.mark.xdist_group("fuzz")

FUZZ_EXAMPLES = int(os.environ.get("ASSAY_TEST_FUZZ_EXAMPLES", "10"))
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    unsupported_method,
]
# Values that broke rendering before (NaN/Infinity, lone surrogates, deep nesting are refused
# at submit); the rest must round-trip through the store and come back schema-valid.
SEED_PARAMS: list[dict[str, Any]] = [
    {},
    {"text": "naïve ☃ \u0000 \U0001f600", "n": 2**63, "f": -1.5e-300, "none": None},
    {"nested": {"a": [1, [2, [3, {"b": True}]]]}, "empty": {}, "list": []},
    {"big": "x" * 10_000},
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real server with the echo job and a few stored jobs in every state."""
    tmp = tmp_path_factory.mktemp("fuzz")
    servers = Servers(tmp)
    try:
        server = servers.start(f"sqlite:///{tmp / 'fuzz.db'}", job_modules=["jobmods_fuzz"])
        api = f"{server.url}/api/v1/jobs"
        ids = []
        for params in SEED_PARAMS:
            answer = httpx.post(api, json={"name": "fuzz_echo", "params": params}, timeout=10)
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["id"])
        wait_until(lambda: all(httpx.get(f"{api}/{i}").json()["finished_at"] for i in ids))
        pending = httpx.post(api, json={"name": "fuzz_echo", "timeout": 1e-9}, timeout=10)
        ids.append(pending.json()["id"])
        yield {"url": server.url, "ids": ids}
        assert server.proc.poll() is None, f"the server died:\n{server.logs()[-3000:]}"
        assert "request.crashed" not in server.logs()
    finally:
        servers.close()


@pytest.fixture(scope="module")
def api_schema(fuzz_server: dict[str, Any]) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{fuzz_server['url']}/openapi.json")
    ids: list[str] = fuzz_server["ids"]

    @schema.hook
    def before_generate_body(_ctx: Any, strategy: st.SearchStrategy[Any]) -> Any:
        # Half the bodies name a real job, so submits also succeed and fuzzed params and
        # timeouts go all the way through the store, a worker and back out.
        def named(body: Any) -> Any:
            return {**body, "name": "fuzz_echo"} if isinstance(body, dict) else body

        return st.one_of(strategy, strategy.map(named))

    @schema.hook
    def before_generate_path_parameters(ctx: Any, strategy: st.SearchStrategy[Any]) -> Any:
        # Some job ids are real, so get and cancel answer with jobs, not only 404.
        if ctx.operation is None or ctx.operation.path.count("{") != 1:
            return strategy
        if not ctx.operation.path.endswith(("/jobs/{job_id}", "/jobs/{job_id}/cancel")):
            return strategy
        real = st.sampled_from(ids).map(lambda job_id: {"job_id": job_id})
        return st.one_of(strategy, real)

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_api_fuzz(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)


# MLflow's routes are left out of /openapi.json (their contract is MLflow's, and their errors
# are in MLflow's shape): fuzzed from a document made of the same route declarations, for 5xx
# only, since they declare no answers.
MLFLOW_ROUTERS = [
    mlflow.router,
    mlflow.version_router,
    mlflow_artifacts.router,
    mlflow_artifacts.artifacts_router,
    mlflow_jobs.router,
    mlflow_traces.router,
]


@pytest.fixture(scope="module")
def mlflow_schema(fuzz_server: dict[str, Any]) -> schemathesis.BaseSchema:
    routes = [
        copy.copy(route)
        for router in MLFLOW_ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute)
    ]
    for route in routes:
        route.include_in_schema = True
    document = get_openapi(title="assay (MLflow)", version=assay.__version__, routes=routes)
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=fuzz_server["url"])
    return schema


mlflow_api = schemathesis.pytest.from_fixture("mlflow_schema")


@mlflow_api.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_mlflow_fuzz(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error])


# -- inputs the generator does not reach -------------------------------------------------------
# JSON from a schema never holds NaN, Infinity or lone surrogates, and rarely a valid page
# token; each of these was a 500 or a 503 once.

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"name": "fuzz_echo", "timeout": Infinity}', "finite number"),
        ('{"name": "fuzz_echo", "timeout": NaN}', "finite number"),
        ('{"name": "fuzz_echo", "params": {"a": NaN}}', "NaN and Infinity"),
        ('{"name": "fuzz_echo", "params": {"a": [1, -Infinity]}}', "NaN and Infinity"),
        ('{"name": "fuzz_echo", "params": {"a": "\\ud800"}}', "lone surrogate"),
        ('{"name": "fuzz_echo", "params": {"\\udfff": 1}}', "lone surrogate"),
        ('{"name": "fuzz_echo", "params": {"a": ' + "[" * 900 + "]" * 900 + "}}", "64 levels"),
    ],
    ids=["inf-timeout", "nan-timeout", "nan", "minus-inf", "surrogate", "surrogate-key", "deep"],
)
def test_submit_refuses_what_cannot_be_rendered(
    fuzz_server: dict[str, Any], body: str, message: str
) -> None:
    api = f"{fuzz_server['url']}/api/v1/jobs"
    for url, payload in [(api, body), (f"{api}:batch", _as_batch(body))]:
        answer = httpx.post(url, content=payload, headers=JSON, timeout=10)
        assert answer.status_code == 422, answer.text
        assert message in answer.json()["error"]["message"]
    listed = httpx.get(api, params={"limit": 1000}, timeout=10)
    assert listed.status_code == 200, listed.text


def _as_batch(body: str) -> str:
    """The same job as a one-element ``:batch`` body."""
    head, _, rest = body.partition('"params": ')
    if not rest:
        return body.replace('"name": "fuzz_echo"', '"name": "fuzz_echo", "params_list": [{}]')
    return head + '"params_list": [' + rest[:-1] + "]}"


def test_nesting_up_to_the_limit_round_trips(fuzz_server: dict[str, Any]) -> None:
    api = f"{fuzz_server['url']}/api/v1/jobs"
    deep: Any = "bottom"
    for _ in range(63):
        deep = [deep]
    answer = httpx.post(api, json={"name": "fuzz_echo", "params": {"d": deep}}, timeout=10)
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["id"]
    done = wait_until(lambda: (j := httpx.get(f"{api}/{job_id}").json())["finished_at"] and j)
    assert done["status"] == "SUCCEEDED", done
    assert done["params"] == {"d": deep}
    assert done["result"] == {"d": deep}


@pytest.mark.parametrize(
    "decoded",
    [
        '[1e400, "x"]',
        f'[{10**30}, "x"]',
        f'[{-(10**30)}, "x"]',
        f'[{2**63}, "x"]',
        '[1, "a\\u0000b"]',
        '["a", "b"]',
        "[1, 2, 3]",
        "{}",
        "null",
    ],
)
def test_bad_page_tokens_are_400(fuzz_server: dict[str, Any], decoded: str) -> None:
    token = base64.urlsafe_b64encode(decoded.encode()).decode()
    answer = httpx.get(f"{fuzz_server['url']}/api/v1/jobs", params={"page_token": token})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_request"


def test_unsupported_method_names_the_allowed_ones(fuzz_server: dict[str, Any]) -> None:
    answer = httpx.put(f"{fuzz_server['url']}/api/v1/jobs", timeout=10)
    assert answer.status_code == 405
    assert set(answer.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert answer.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_nul_bytes_are_400_not_a_store_error(
    request: pytest.FixtureRequest, servers: Servers, tmp_path: Any, store: str
) -> None:
    """PostgreSQL cannot compare text holding a NUL byte; that must not surface as a 503."""
    uri = (
        f"sqlite:///{tmp_path / 'nul.db'}"
        if store == "sqlite"
        else request.getfixturevalue(
            {"postgresql": "pg_database", "mysql": "mysql_database"}[store]
        )
    )
    server: ServerProcess = servers.start(uri, "--workers", "0", job_modules=["jobmods_fuzz"])
    api = f"{server.url}/api/v1/jobs"
    token = base64.urlsafe_b64encode(b'[1, "a\\u0000b"]').decode()
    for method, url, params in [
        ("GET", f"{api}/a%00b", None),
        ("POST", f"{api}/a%00b/cancel", None),
        ("GET", api, {"name": "a\x00b"}),
        ("GET", api, {"owner": "a\x00b"}),
        ("GET", api, {"page_token": token}),
    ]:
        answer = httpx.request(method, url, params=params, timeout=10)
        assert answer.status_code == 400, (method, url, params, answer.text)
    submitted = httpx.post(api, json={"name": "fuzz_echo", "params": {"a": "x\x00y"}})
    assert submitted.status_code == 201, submitted.text
    got = httpx.get(f"{api}/{submitted.json()['id']}").json()
    assert got["params"] == {"a": "x\x00y"}
