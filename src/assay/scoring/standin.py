"""A stand-in OpenAI-compatible chat endpoint, for tests and the offline demo.

This is **not a model**. It answers ``POST /v1/chat/completions`` (and ``GET /v1/models``)
with a deterministic judgement computed from the prompt, so that LLM-judge scorers can be
exercised end to end (HTTP, retries, parsing, rate limiting) without a network or an API key.

How it decides the answer, from the last user message (the rendered instructions) and the
``response_format`` JSON schema's ``value`` property, if one was sent:

- ``enum`` of exactly ``yes``/``no``, a ``boolean``, or no schema at all: ``no`` (``false``)
  when the prompt contains the word "bad" (any case), else ``yes`` (``true``);
- ``number`` with ``minimum``/``maximum``: a stable hash of the prompt mapped into the range;
- any other ``enum``: a stable choice by hash among its values.

The content is the JSON object ``{"value": ..., "rationale": "..."}``; ``usage`` counts tokens
as words / 0.75. Knobs, settable while it runs, make it misbehave like a real endpoint:
``latency_s``, :meth:`StandInJudge.fail_next`, ``always_status``, ``expected_key``, ``models``
and ``answer_override``. Failures are checked in that order: ``always_status``, then the
``fail_next`` queue, then the key, then the model.
"""

from __future__ import annotations

import hashlib
import http
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["StandInJudge"]

_BAD = re.compile(r"\bbad\b", re.IGNORECASE)

_ERROR_CODES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", "timeout"),
    409: ("conflict", "conflict"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", "server_error"),
    503: ("server_error", "overloaded"),
}


class _Failure(Exception):
    """An error answer the handler turns into an OpenAI-shaped JSON body."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        kind, default_code = _ERROR_CODES.get(status, ("api_error", "error"))
        self.kind = kind
        self.code = code or default_code
        self.message = message or http.HTTPStatus(status).phrase
        self.retry_after = retry_after


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many judge threads connect at once; the default 5 drops SYNs

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that hung up mid-answer (a timeout test) is expected here."""


class StandInJudge:
    """A local HTTP server speaking enough of the OpenAI chat API to stand in for a judge.

    Start it with :meth:`start` (or ``with StandInJudge() as judge:``); ``url`` is then the base
    URL to configure (``http://127.0.0.1:PORT/v1``). Plain knobs (``latency_s``,
    ``always_status``, ``expected_key``, ``models``, ``answer_override``) are read once per
    request, so setting them from another thread takes effect on the next request.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.latency_s = 0.0
        self.always_status: int | None = None
        self.expected_key: str | None = None
        self.models: set[str] | None = None
        self.answer_override: str | None = None
        self._failures: deque[tuple[int, float | None]] = deque()
        self._requests = 0
        self._connections = 0
        self._by_status: dict[int, int] = {}
        self._generation = 0  # bumped by reset(), so answers to older requests are not counted

    # lifecycle

    def start(self) -> StandInJudge:
        """Bind a free port on 127.0.0.1 and serve from a daemon thread."""
        server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> StandInJudge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in judge is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    # knobs and counters

    def fail_next(self, statuses: list[int], retry_after: float | None = None) -> None:
        """Answer the next requests with these HTTP statuses, in order, each with
        ``Retry-After: retry_after`` when given."""
        with self._lock:
            self._failures.extend((status, retry_after) for status in statuses)

    def reset(self) -> None:
        """Back to a well-behaved endpoint with zeroed counters."""
        with self._lock:
            self.latency_s = 0.0
            self.always_status = None
            self.expected_key = None
            self.models = None
            self.answer_override = None
            self._failures.clear()
            self._requests = 0
            self._connections = 0
            self._by_status = {}
            self._generation += 1

    @property
    def requests(self) -> int:
        """Requests received so far (every path and status)."""
        with self._lock:
            return self._requests

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (a client that keeps its connections opens few)."""
        with self._lock:
            return self._connections

    @property
    def by_status(self) -> dict[int, int]:
        """A copy of the count of answers per HTTP status."""
        with self._lock:
            return dict(self._by_status)

    # request handling (called from the handler threads)

    def _connect(self) -> None:
        with self._lock:
            self._connections += 1

    def _arrive(self) -> int:
        """Count a request; the generation its answer is counted in."""
        with self._lock:
            self._requests += 1
            return self._generation

    def _count(self, status: int, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._by_status[status] = self._by_status.get(status, 0) + 1

    def _begin(self) -> None:
        """Sleep the latency and raise any injected failure."""
        with self._lock:
            always = self.always_status
            injected = self._failures.popleft() if always is None and self._failures else None
        time.sleep(self.latency_s)
        if always is not None:
            raise _Failure(always)
        if injected is not None:
            raise _Failure(injected[0], retry_after=injected[1])

    def _check_key(self, authorization: str | None) -> None:
        expected = self.expected_key
        if expected is not None and authorization != f"Bearer {expected}":
            raise _Failure(401, "Incorrect API key provided.")

    def _list_models(self, authorization: str | None) -> dict[str, Any]:
        self._begin()
        self._check_key(authorization)
        names = sorted(self.models) if self.models is not None else ["stand-in"]
        return {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}

    def _complete(self, body: Any, authorization: str | None) -> dict[str, Any]:
        self._begin()
        self._check_key(authorization)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise _Failure(400, "the body must be a JSON object with a 'messages' list")
        model = str(body.get("model", ""))
        known = self.models
        if known is not None and model not in known:
            message = f"The model `{model}` does not exist or you do not have access to it."
            raise _Failure(404, message, code="model_not_found")
        prompt = _last_user_text(body["messages"])
        override = self.answer_override
        content = override if override is not None else _answer(prompt, body)
        prompt_tokens = sum(_tokens(_text(m.get("content"))) for m in _dicts(body["messages"]))
        completion_tokens = _tokens(content)
        return {
            "id": "chatcmpl-standin-" + _digest(prompt)[:12],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _handler_for(judge: StandInJudge) -> type[BaseHTTPRequestHandler]:
    """A handler class bound to one stand-in (http.server builds one handler per request)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real endpoint and httpx's pool expect
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall

        generation = 0

        def setup(self) -> None:
            super().setup()
            judge._connect()

        def do_GET(self) -> None:
            self.generation = judge._arrive()
            if self.path.rstrip("/") != "/v1/models":
                self._fail(_Failure(404, f"no route {self.path}"))
                return
            self._respond(lambda: judge._list_models(self.headers.get("Authorization")))

        def do_POST(self) -> None:
            self.generation = judge._arrive()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._fail(_Failure(404, f"no route {self.path}"))
                return
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            self._respond(lambda: judge._complete(body, self.headers.get("Authorization")))

        def _respond(self, produce: Callable[[], dict[str, Any]]) -> None:
            try:
                result = produce()
            except _Failure as failure:
                self._fail(failure)
            else:
                self._send(200, result)

        def _fail(self, failure: _Failure) -> None:
            body = {
                "error": {
                    "message": failure.message,
                    "type": failure.kind,
                    "param": None,
                    "code": failure.code,
                }
            }
            headers = (
                {} if failure.retry_after is None else {"Retry-After": f"{failure.retry_after:g}"}
            )
            self._send(failure.status, body, headers)

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            judge._count(status, self.generation)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests and the demo read counters, not access logs."""

    return Handler


def _answer(prompt: str, body: dict[str, Any]) -> str:
    """The judgement as the JSON text a model would answer."""
    value, rationale = _decide(prompt, _value_schema(body.get("response_format")))
    return json.dumps({"value": value, "rationale": rationale})


def _decide(prompt: str, schema: dict[str, Any]) -> tuple[Any, str]:
    """Value and rationale for a prompt, by the rules in the module docstring."""
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and set(enum) != {"yes", "no"}:
        return enum[_hash(prompt) % len(enum)], "stand-in judge: chosen by a hash of the prompt"
    if schema.get("type") in ("number", "integer") and {"minimum", "maximum"} <= schema.keys():
        number = _in_range(prompt, float(schema["minimum"]), float(schema["maximum"]))
        value = round(number) if schema["type"] == "integer" else number
        return value, "stand-in judge: derived from a hash of the prompt"
    bad = _BAD.search(prompt) is not None
    rationale = f"stand-in judge: the prompt {'says' if bad else 'does not say'} 'bad'"
    if schema.get("type") == "boolean":
        return not bad, rationale
    return ("no" if bad else "yes"), rationale


def _value_schema(response_format: Any) -> dict[str, Any]:
    """The JSON schema of ``value`` in a ``json_schema`` response format, or ``{}``."""
    try:
        schema = response_format["json_schema"]["schema"]["properties"]["value"]
    except (KeyError, TypeError):
        return {}
    return schema if isinstance(schema, dict) else {}


def _in_range(prompt: str, low: float, high: float) -> float:
    fraction = (_hash(prompt) % 10_001) / 10_000
    return min(high, max(low, round(low + fraction * (high - low), 2)))


def _last_user_text(messages: list[Any]) -> str:
    users = [m for m in _dicts(messages) if m.get("role") == "user"]
    return _text(users[-1].get("content")) if users else ""


def _dicts(items: list[Any]) -> list[dict[str, Any]]:
    return [item for item in items if isinstance(item, dict)]


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _tokens(text: str) -> int:
    return math.ceil(len(text.split()) / 0.75)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _hash(text: str) -> int:
    return int(_digest(text)[:16], 16)
