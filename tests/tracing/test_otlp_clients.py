"""Real tracing clients against a real ``assay server``, unmodified: MLflow (``@mlflow.trace``
over OTLP/gRPC, OTLP/HTTP and MLflow's native path), OpenInference's and OpenTelemetry's
OpenAI instrumentations calling the ``openai`` client against the local stand-in
(:class:`assay.scoring.standin.StandInJudge`). Each client runs in a fresh interpreter (its
own environment and global tracer provider); what lands in assay is checked field by field.

Also: GenAI log events join their spans in either order (with a race of the two on every
database), ``tr-<hex>`` trace ids, and refused requests logged by the server.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

pytest.importorskip("grpc")
pytest.importorskip("openai")
pytest.importorskip("mlflow")

import grpc

from assay.db.engine import create_engine
from assay.db.migrate import upgrade
from assay.errors import InvalidRequestError
from assay.scoring.standin import StandInJudge
from assay.server.tokens import TokenStore
from assay.tracing.log_events import LogEvent
from assay.tracing.model import Span
from assay.tracing.store import TraceStore
from assay.tracking.store import TrackingStore
from support.servers import ServerProcess, free_port, kinds_grouped, module_server
from support.timing import wait_until

QUESTION = "What is the capital of France?"
ANSWER = "Paris is the capital of France."
SYSTEM = "Answer in one sentence."


# -- fixtures --------------------------------------------------------------------------------------


class Assay:
    """One real server with its OTLP/gRPC receiver on a free port, and its store."""

    def __init__(self, server: ServerProcess, grpc_port: int, store_uri: str) -> None:
        self.server = server
        self.url = server.url
        self.grpc_port = grpc_port
        self.engine = create_engine(store_uri)

    def experiment(self) -> str:
        return TrackingStore(self.engine).create_experiment(f"otlp-{uuid.uuid4().hex[:8]}").id

    def default_experiment(self) -> str:
        return TrackingStore(self.engine).default_experiment().id

    def trace(self, trace_id: str, spans: int = 1) -> dict[str, Any]:
        """``GET /api/v1/traces/{trace_id}`` once the trace is complete with ``spans`` spans."""

        def complete() -> dict[str, Any] | None:
            response = httpx.get(f"{self.url}/api/v1/traces/{trace_id}", timeout=10)
            if response.status_code == 404:
                return None
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            trace = body["trace"]
            done = trace["status"] != "IN_PROGRESS" and trace["span_count"] >= spans
            return body if done else None

        found: dict[str, Any] = wait_until(complete, timeout=60, interval=0.1)
        return found

    def traces(self, experiment_id: str, filter_string: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, str] = {"experiment_id": experiment_id}
        if filter_string:
            params["filter"] = filter_string
        response = httpx.get(f"{self.url}/api/v1/traces", params=params, timeout=10)
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["traces"]
        return found

    def only_trace(self, experiment_id: str, spans: int = 1) -> dict[str, Any]:
        """The one trace of an experiment, once it has arrived whole."""
        ids = wait_until(lambda: [t["trace_id"] for t in self.traces(experiment_id)], timeout=60)
        assert len(ids) == 1, ids
        return self.trace(ids[0], spans)


@pytest.fixture(scope="module", params=kinds_grouped("otlp"))
def assay_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Assay]:
    """One server per database, on a database of its own, for the whole module (each test
    makes its own experiment)."""
    grpc_port = free_port()
    with module_server(
        request.param, tmp_path_factory, "otlp", "--otlp-grpc-port", str(grpc_port)
    ) as server:
        wait_until(lambda: "otlp.grpc listening" in server.logs(), timeout=30)
        assay = Assay(server, grpc_port, server.store_uri)
        try:
            yield assay
        finally:
            assay.engine.dispose()


@pytest.fixture(scope="module")
def standin() -> Iterator[StandInJudge]:
    """The OpenAI-compatible stand-in, answering every chat with ANSWER."""
    with StandInJudge() as judge:
        judge.answer_override = ANSWER
        yield judge


def client_env(**extra: str) -> dict[str, str]:
    """The environment of a client process: no OTEL_/MLFLOW_ settings of the test run's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MLFLOW_", "ASSAY_"))}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", **extra)
    return env


def run_client(code: str, config: dict[str, Any], env: dict[str, str], cwd: Path) -> Any:
    """Run ``code`` (with ``config`` as ``CONFIG``) in a fresh interpreter; the JSON it
    printed last. Fails with its output when it fails or writes a warning of a lost export."""
    script = cwd / f"client_{uuid.uuid4().hex[:6]}.py"
    prelude = f"import json\nCONFIG = json.loads({json.dumps(json.dumps(config))})\n"
    script.write_text(prelude + textwrap.dedent(code))
    done = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, output
    for sign in ("Failed to export", "Failed to send", "Failed to log", "Bad Request"):
        assert sign not in done.stderr, output
    return json.loads(done.stdout.strip().splitlines()[-1])


def spans_by_name(detail: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in detail["spans"]}


# -- MLflow ----------------------------------------------------------------------------------------

MLFLOW_APP = """
import mlflow

@mlflow.trace(span_type="LLM")
def generate(question: str) -> str:
    span = mlflow.get_current_active_span()
    span.set_attribute(
        "mlflow.chat.tokenUsage", {"input_tokens": 7, "output_tokens": 5, "total_tokens": 12}
    )
    span.set_attribute("mlflow.llm.model", "gpt-4o")
    return CONFIG["answer"]

seen = {}

@mlflow.trace(span_type="CHAIN")
def answer(question: str) -> str:
    seen["trace_id"] = mlflow.get_current_active_span().trace_id
    return generate(question)

if CONFIG.get("experiment_name"):
    mlflow.set_experiment(CONFIG["experiment_name"])
answer(CONFIG["question"])
mlflow.flush_trace_async_logging(terminate=True)
print(json.dumps(seen))
"""


def check_mlflow_trace(detail: dict[str, Any], experiment_id: str) -> None:
    trace = detail["trace"]
    assert trace["experiment_id"] == experiment_id
    assert trace["status"] == "OK"
    assert trace["request"] == {"question": QUESTION}
    assert trace["response"] == ANSWER
    assert trace["token_usage"] == {"input_tokens": 7, "output_tokens": 5, "total_tokens": 12}
    assert trace["model"] == "gpt-4o"
    spans = spans_by_name(detail)
    assert spans["answer"]["span_type"] == "CHAIN"
    assert spans["generate"]["span_type"] == "LLM"
    assert spans["generate"]["parent_span_id"] == spans["answer"]["span_id"]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_mlflow_trace_over_otlp_exporter_env(assay_server, protocol, tmp_path):
    """MLflow's OTLP export (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT): gRPC (its default) naming an
    experiment with x-mlflow-experiment-id, and HTTP naming none (the default experiment)."""
    if protocol == "grpc":
        experiment_id = assay_server.experiment()
        env = client_env(
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{assay_server.grpc_port}",
            OTEL_EXPORTER_OTLP_TRACES_HEADERS=f"x-mlflow-experiment-id={experiment_id}",
        )  # no protocol variable: MLflow's default, gRPC
    else:
        experiment_id = assay_server.default_experiment()
        env = client_env(
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{assay_server.url}/v1/traces",
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=protocol,
        )
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'local-mlflow.db'}"
    config = {"question": QUESTION, "answer": ANSWER}
    out = run_client(MLFLOW_APP, config, env, tmp_path)
    assert out["trace_id"].startswith("tr-")
    detail = assay_server.trace(out["trace_id"], spans=2)  # MLflow's tr-<hex> id is accepted
    assert detail["trace"]["trace_id"] == out["trace_id"].removeprefix("tr-")
    check_mlflow_trace(detail, experiment_id)


def test_mlflow_native_path(assay_server, tmp_path):
    """MLFLOW_TRACKING_URI = the assay server: MLflow finds a compatible server (GET /version),
    sends the spans to /v1/traces with x-mlflow-experiment-id and the trace info to
    StartTraceV3, with no warning."""
    name = f"native-{uuid.uuid4().hex[:8]}"
    env = client_env(MLFLOW_TRACKING_URI=assay_server.url, MLFLOW_HTTP_REQUEST_TIMEOUT="60")
    config = {"question": QUESTION, "answer": ANSWER, "experiment_name": name}
    out = run_client(MLFLOW_APP, config, env, tmp_path)
    experiment_id = TrackingStore(assay_server.engine).get_experiment_by_name(name).id
    check_mlflow_trace(assay_server.trace(out["trace_id"], spans=2), experiment_id)
    logs = assay_server.server.logs()  # uvicorn's access log: the native path was taken
    assert '"POST /v1/traces HTTP/1.1" 200' in logs
    assert '"POST /api/3.0/mlflow/traces HTTP/1.1" 200' in logs


# -- OpenInference ---------------------------------------------------------------------------------

OPENINFERENCE_APP = """
import openai
from openinference.instrumentation.openai import OpenAIInstrumentor
from opentelemetry import trace

if CONFIG["exporter"] == "mlflow.otel":
    import mlflow
    import mlflow.otel

    mlflow.set_experiment(experiment_id=CONFIG["experiment"])
    mlflow.otel.autolog(batch=False)  # the global provider, to /v1/traces + x-mlflow-experiment-id
    provider = trace.get_tracer_provider()
else:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "oi-app"}))
    exporter = OTLPSpanExporter(
        endpoint=CONFIG["url"] + "/v1/traces",
        headers={"x-assay-experiment-id": CONFIG["experiment"]},
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
OpenAIInstrumentor().instrument(tracer_provider=provider)
client = openai.OpenAI(base_url=CONFIG["base_url"], api_key="test-key")
reply = client.chat.completions.create(
    model="gpt-4o",
    messages=[
        {"role": "system", "content": CONFIG["system"]},
        {"role": "user", "content": CONFIG["question"]},
    ],
)
provider.force_flush()
print(json.dumps({"usage": reply.usage.model_dump(), "id": reply.id}))
"""


@pytest.mark.parametrize("exporter", ["otlp", "mlflow.otel"])
def test_openinference_openai(assay_server, standin, exporter, tmp_path):
    """openinference-instrumentation-openai: request and response are the message text (not
    the OpenAI JSON), the model and span kind are read, tokens add up; exported by an OTLP
    exporter (x-assay-experiment-id) or by mlflow.otel.autolog() (x-mlflow-experiment-id)."""
    experiment_id = assay_server.experiment()
    env = client_env(MLFLOW_TRACKING_URI=assay_server.url)
    config = {
        "exporter": exporter,
        "url": assay_server.url,
        "experiment": experiment_id,
        "base_url": standin.url,
        "question": QUESTION,
        "system": SYSTEM,
    }
    out = run_client(OPENINFERENCE_APP, config, env, tmp_path)
    detail = assay_server.only_trace(experiment_id)
    trace = detail["trace"]
    assert trace["request"] == QUESTION
    assert trace["response"] == ANSWER
    assert trace["response_preview"] == ANSWER  # not 379 characters of chatcmpl JSON
    assert trace["model"] == "gpt-4o"
    assert trace["status"] == "OK"
    usage = out["usage"]
    assert trace["token_usage"] == {
        "input_tokens": usage["prompt_tokens"],
        "output_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
    }
    (span,) = detail["spans"]
    assert span["span_type"] == "LLM"
    raw = json.loads(span["attributes"]["output.value"])  # the raw JSON stays on the span
    assert raw["id"] == out["id"]
    assert [t["trace_id"] for t in assay_server.traces(experiment_id, "trace.model = 'gpt-4o'")]
    assert assay_server.traces(experiment_id, "trace.model = 'gpt-4o-mini'") == []


# -- OpenTelemetry GenAI (openai-v2): content in log events ----------------------------------------

GENAI_APP = """
import openai
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

headers = {"x-assay-experiment-id": CONFIG["experiment"]}
if CONFIG["transport"] == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    span_exporter = OTLPSpanExporter(endpoint=CONFIG["grpc"], insecure=True, headers=headers)
    log_exporter = OTLPLogExporter(endpoint=CONFIG["grpc"], insecure=True, headers=headers)
else:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    span_exporter = OTLPSpanExporter(endpoint=CONFIG["url"] + "/v1/traces", headers=headers)
    log_exporter = OTLPLogExporter(endpoint=CONFIG["url"] + "/v1/logs", headers=headers)

resource = Resource.create({"service.name": "genai-app"})
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
logger_provider = LoggerProvider(resource=resource)
if CONFIG["order"] == "logs_first":  # each event is exported as it is emitted, before the span
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
else:  # the events wait until the end, after the span was exported
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(log_exporter, schedule_delay_millis=600_000)
    )
OpenAIInstrumentor().instrument(tracer_provider=tracer_provider, logger_provider=logger_provider)
client = openai.OpenAI(base_url=CONFIG["base_url"], api_key="test-key")
reply = client.chat.completions.create(
    model="gpt-4o",
    messages=[
        {"role": "system", "content": CONFIG["system"]},
        {"role": "user", "content": CONFIG["question"]},
    ],
)
tracer_provider.shutdown()
logger_provider.shutdown()
print(json.dumps({"usage": reply.usage.model_dump()}))
"""


GENAI_EVENTS = {
    "v1.30": ["gen_ai.system.message", "gen_ai.user.message", "gen_ai.choice"],
    "latest": ["gen_ai.client.inference.operation.details"],
}
GENAI_ENV = {
    "v1.30": {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"},
    "latest": {
        "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "EVENT_ONLY",
    },
}


@pytest.mark.parametrize(
    ("transport", "order", "conventions"),
    [
        ("http", "logs_first", "v1.30"),
        ("http", "spans_first", "v1.30"),
        ("grpc", "spans_first", "v1.30"),
        ("grpc", "logs_first", "latest"),
    ],
)
def test_opentelemetry_genai_openai_v2_content_in_log_events(
    assay_server, standin, transport, order, conventions, tmp_path
):
    """opentelemetry-instrumentation-openai-v2 with content capture on, in log events (its
    default; a gen_ai.*.message event per message and a gen_ai.choice, or with the latest
    conventions one gen_ai.client.inference.operation.details event): the events sent to
    /v1/logs (or LogsService/Export) fill request and response, whether they arrive before
    or after the span."""
    experiment_id = assay_server.experiment()
    env = client_env(**GENAI_ENV[conventions])
    config = {
        "transport": transport,
        "order": order,
        "url": assay_server.url,
        "grpc": f"http://127.0.0.1:{assay_server.grpc_port}",
        "experiment": experiment_id,
        "base_url": standin.url,
        "question": QUESTION,
        "system": SYSTEM,
    }
    out = run_client(GENAI_APP, config, env, tmp_path)
    trace_id = wait_until(lambda: [t["trace_id"] for t in assay_server.traces(experiment_id)])[0]
    detail = wait_until(
        lambda: (d := assay_server.trace(trace_id))["trace"]["response"] is not None and d,
        timeout=60,
    )
    trace = detail["trace"]
    assert trace["experiment_id"] == experiment_id
    assert trace["request"] == QUESTION
    assert trace["response"] == ANSWER
    assert trace["model"] == "gpt-4o"
    assert trace["status"] == "OK"
    usage = out["usage"]
    assert trace["token_usage"] == {
        "input_tokens": usage["prompt_tokens"],
        "output_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
    }
    (span,) = detail["spans"]
    assert span["span_type"] == "LLM"
    events = [e["name"] for e in span["events"]]  # the log events, read among the span's
    assert events == GENAI_EVENTS[conventions]
    assert [t["trace_id"] for t in assay_server.traces(experiment_id, "trace.model = 'gpt-4o'")]


def _kv(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "value": value}


def test_v1_logs_takes_otlp_json_gzip(assay_server):
    """OTLP JSON logs, gzip-compressed: an event named by ``eventName`` or by the ``event.name``
    attribute joins its span; a GenAI event without a span is rejected (partial success);
    an ordinary log line is dropped."""
    experiment_id = assay_server.experiment()
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    resource = {"attributes": [_kv("assay.experiment_id", {"stringValue": experiment_id})]}
    message = {"kvlistValue": {"values": [_kv("content", {"stringValue": ANSWER})]}}
    records = [
        {
            "timeUnixNano": "1700000000000000001",
            "eventName": "gen_ai.user.message",
            "traceId": trace_id,
            "spanId": span_id,
            "body": {"stringValue": QUESTION},
        },
        {
            "timeUnixNano": "1700000000000000002",
            "attributes": [_kv("event.name", {"stringValue": "gen_ai.choice"})],
            "traceId": trace_id,
            "spanId": span_id,
            "body": {"kvlistValue": {"values": [_kv("message", message)]}},
        },
        {"eventName": "gen_ai.user.message", "body": {"stringValue": "no span to join"}},
        {"body": {"stringValue": "an application's log line"}},
    ]
    body = {"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": records}]}]}
    response = httpx.post(
        f"{assay_server.url}/v1/logs",
        content=gzip.compress(json.dumps(body).encode()),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    partial = response.json()["partialSuccess"]
    assert partial["rejectedLogRecords"] == "1"  # int64 is a string in protobuf JSON
    assert "span" in partial["errorMessage"]
    span = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": "chat",
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000000000000003",
        "attributes": [_kv("gen_ai.operation.name", {"stringValue": "chat"})],
    }
    spans = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": [span]}]}]}
    response = httpx.post(f"{assay_server.url}/v1/traces", json=spans, timeout=10)
    assert response.status_code == 200, response.text
    trace = assay_server.trace(trace_id)["trace"]
    assert (trace["request"], trace["response"]) == (QUESTION, ANSWER)


# -- gRPC: auth and refusals -----------------------------------------------------------------------


def _grpc_export(port: int, service: str, body: bytes, token: str | None = None) -> bytes:
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(f"/opentelemetry.proto.collector.{service}/Export")
        answer: bytes = call(body, metadata=metadata, timeout=30)
        return answer


def test_grpc_refusals_are_status_codes_logged_with_their_reason(assay_server):
    with pytest.raises(grpc.RpcError) as refused:
        _grpc_export(assay_server.grpc_port, "trace.v1.TraceService", b"\xff\xff\xff")
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed OTLP protobuf body" in (refused.value.details() or "")
    wait_until(
        lambda: (
            "otlp.rejected signal=traces transport=grpc status=400" in assay_server.server.logs()
        )
    )
    response = httpx.post(
        f"{assay_server.url}/v1/logs",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    wait_until(
        lambda: (
            "otlp.rejected signal=logs transport=http status=400 reason=malformed OTLP JSON"
            in assay_server.server.logs()
        )
    )


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_grpc_receiver_authenticates_bearer_metadata(servers, store_uri, tmp_path):
    port = free_port()
    server = servers.start(store_uri, "--auth", "--otlp-grpc-port", str(port))
    wait_until(lambda: "otlp.grpc listening" in server.logs(), timeout=30)
    engine = create_engine(store_uri)
    try:
        _, token = TokenStore(engine).create("otlp-test", "user")
        experiment_id = TrackingStore(engine).create_experiment("grpc-auth").id
    finally:
        engine.dispose()
    body = _one_span_request(experiment_id)
    with pytest.raises(grpc.RpcError) as refused:
        _grpc_export(port, "trace.v1.TraceService", body)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as refused:
        _grpc_export(port, "trace.v1.TraceService", body, token="assay_not-a-token")
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    _grpc_export(port, "trace.v1.TraceService", body, token=token)
    headers = {"authorization": f"Bearer {token}"}
    response = httpx.get(
        f"{server.url}/api/v1/traces", params={"experiment_id": experiment_id}, headers=headers
    )
    assert [t["span_count"] for t in response.json()["traces"]] == [1]


def test_explicit_grpc_port_in_use_fails_the_start(servers, store_uri_sqlite_path):
    """A port asked for must be served; the default one is skipped with a warning."""
    with grpc_port_taken() as port:
        refused = servers.start(store_uri_sqlite_path, "--otlp-grpc-port", str(port), wait=False)
        assert refused.proc.wait(timeout=120) != 0
        assert "cannot serve OTLP/gRPC" in refused.logs()


def _one_span_request(experiment_id: str) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    attribute = resource_spans.resource.attributes.add()
    attribute.key, attribute.value.string_value = "assay.experiment_id", experiment_id
    span = resource_spans.scope_spans.add().spans.add()
    span.trace_id, span.span_id = os.urandom(16), os.urandom(8)
    span.name, span.start_time_unix_nano, span.end_time_unix_nano = "root", 10**18, 10**18 + 5
    encoded: bytes = request.SerializeToString()
    return encoded


@contextlib.contextmanager
def grpc_port_taken() -> Iterator[int]:
    """A port held by a gRPC server of the test's own."""
    server = grpc.server(ThreadPoolExecutor(1), options=[("grpc.so_reuseport", 0)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield int(port)
    finally:
        server.stop(0)


@pytest.fixture
def store_uri_sqlite_path(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'assay.db'}"


# -- log events and spans racing, on every database ------------------------------------------------


def _chat_span(trace_id: str) -> Span:
    return Span(
        trace_id=trace_id,
        span_id="ab" * 8,
        parent_span_id=None,
        name="chat gpt-4o",
        kind="CLIENT",
        status_code="UNSET",
        status_message=None,
        start_time_ns=1_700_000_000_000_000_000,
        end_time_ns=1_700_000_000_500_000_000,
        attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"},
    )


def _chat_events(trace_id: str) -> list[LogEvent]:
    def event(name: str, at: int, body: dict[str, Any]) -> LogEvent:
        return LogEvent(trace_id, "ab" * 8, name, 1_700_000_000_000_000_000 + at, body)

    return [
        event("gen_ai.user.message", 1, {"gen_ai.system": "openai", "content": QUESTION}),
        event(
            "gen_ai.choice", 2, {"index": 0, "message": {"role": "assistant", "content": ANSWER}}
        ),
    ]


def at_once(*works: Callable[[], object]) -> None:
    """Run the callables in threads released together; re-raise the first error."""
    barrier = threading.Barrier(len(works))
    errors: list[BaseException] = []

    def run(work: Callable[[], object]) -> None:
        barrier.wait()
        try:
            work()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(work,)) for work in works]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]


def test_log_events_and_spans_racing_always_join(store_uri):
    """Spans and their log events ingested at the same moment from two threads: every trace
    ends with the events' request and response, whichever transaction went first."""
    engine = create_engine(store_uri)
    upgrade(engine)
    try:
        experiment_id = TrackingStore(engine).create_experiment("race").id
        store = TraceStore(engine)
        trace_ids = [uuid.uuid4().hex for _ in range(12)]
        for trace_id in trace_ids:
            at_once(
                lambda t=trace_id: store.spans_ingest({experiment_id: [_chat_span(t)]}),
                lambda t=trace_id: store.log_events_ingest({experiment_id: _chat_events(t)}),
            )
        for trace in store.traces_get_many(trace_ids):
            assert (trace.request, trace.response, trace.model) == (QUESTION, ANSWER, "gpt-4o")
        with engine.connect() as conn:
            stored_events = conn.execute(sa.text("SELECT events FROM spans")).scalars().all()
        assert all(json.loads(e) == [] for e in stored_events)  # read with, never written into
    finally:
        engine.dispose()


def test_log_events_of_a_trace_in_another_experiment_are_refused(store_uri):
    engine = create_engine(store_uri)
    upgrade(engine)
    try:
        tracking = TrackingStore(engine)
        first, second = (tracking.create_experiment(n).id for n in ("first", "second"))
        store = TraceStore(engine)
        trace_id = uuid.uuid4().hex
        store.spans_ingest({first: [_chat_span(trace_id)]})
        with pytest.raises(InvalidRequestError, match="its spans are in"):
            store.log_events_ingest({second: _chat_events(trace_id)})
        trace = store.trace_get(trace_id)
        assert trace is not None
        assert trace.response is None
    finally:
        engine.dispose()
