"""``assay demo``: online scoring end to end, on this machine, with no network and no API key.

It starts a :class:`~assay.scoring.standin.StandInJudge` (a local stand-in, not a model) and an
assay server in this process, creates an experiment, registers scorers through the Python API,
sends traces from a simulated support bot through the real tracing SDK (OTLP), waits for
online scoring to decide every (trace, scorer) pair, and prints what each scorer found.

Everything it reads back comes through the REST API, as any client would see it.
"""

from __future__ import annotations

import math
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import uvicorn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import assay
from assay.client import Client
from assay.config import Settings, load_settings
from assay.errors import AssayError, ConfigError, NotFoundError, WaitTimeoutError
from assay.scoring.scorers import Scorer
from assay.scoring.standin import StandInJudge

__all__ = [
    "DemoReport",
    "ScorerStats",
    "listen",
    "plan_conversations",
    "require_tracing",
    "run_demo",
    "scorer_stats",
]

HOST = "127.0.0.1"
DEFAULT_PORT = 8400
SESSION_IDLE_S = 3.0
"""Short, so the demo's conversations are scored while it runs (a server's default is 300 s)."""
LATENCY_LIMIT_MS = 1500
SEND_THREADS = 10
"""Conversations run at once: slow turns really take their time, so the app runs them side by
side, as a real bot serves many users."""
START_TIMEOUT_S = 60.0
SCORING_TIMEOUT_S = 60.0 + SESSION_IDLE_S
POLL_S = 0.3
READ_THREADS = 4
"""Concurrent API reads while polling and summarising: the server answers them in parallel."""

SETTLED = frozenset(
    {
        "done",
        "failed",
        "not_sampled",
        "filtered_out",
        "skipped",
        "before_scorer",
        "not_queued",
        "not_applicable",
    }
)
"""Decision states (``GET /api/v1/traces/{id}/scoring``) that online scoring will not change."""


def demo_scorers() -> list[tuple[Scorer, float]]:
    """The scorers the demo registers, each with its sample rate."""
    return [
        (Scorer.heuristic("length", "output_length", min_chars=20, max_chars=600), 1.0),
        (Scorer.heuristic("no_pii", "pii"), 1.0),
        (Scorer.heuristic("fast", "latency", max_ms=LATENCY_LIMIT_MS), 1.0),
        (Scorer.heuristic("no_apology", "keywords", keywords=["sorry"], mode="none"), 1.0),
        (
            Scorer.llm_judge(
                "helpful", "Is the answer helpful? Question: {{ inputs }} Answer: {{ outputs }}"
            ),
            0.5,
        ),
        (
            Scorer.llm_judge(
                "resolved",
                "Did the assistant resolve the user's problem? {{ conversation }}",
                level="session",
            ),
            1.0,
        ),
    ]


# -- the simulated app ------------------------------------------------------------------------

_TOPICS: tuple[tuple[str, str, str], ...] = (
    (
        "password",
        "How do I reset my password?",
        "Open Settings, then Security, and choose 'Reset password'; the link arrives by "
        "email within a minute.",
    ),
    (
        "order",
        "Where is my order {n}?",
        "Order {n} shipped yesterday and should arrive within two business days; the tracking "
        "link is in your confirmation email.",
    ),
    (
        "refund",
        "Can I get a refund for my annual plan?",
        "Yes: annual plans are refunded in full within 30 days of purchase, from Billing, "
        "then Plans.",
    ),
    (
        "export",
        "How do I export my data as CSV?",
        "Go to Reports, pick a date range and click Export, then CSV.",
    ),
    (
        "sso",
        "Do you support single sign-on with Okta?",
        "Yes, SAML and OIDC single sign-on (Okta included) come with the Business plan.",
    ),
    (
        "teammate",
        "How do I add a teammate to my workspace?",
        "Open Members, click Invite and enter their email; they join once they accept.",
    ),
)
_HELP_CENTER = {topic: f"kb/{topic}" for topic, _, _ in _TOPICS}
_APOLOGY = "Sorry, I could not find anything about that in our help center."
_PII = " If it persists, write to our agent at jane.doe@example.com."
_FRUSTRATED = "This is a bad experience so far. "


@dataclass(frozen=True)
class Turn:
    """One user question and what the bot will do with it (decided up front, so a seed makes
    the same demo every time)."""

    question: str
    answer: str
    llm_s: float
    fails: bool


@dataclass(frozen=True)
class Conversation:
    session_id: str
    user: str
    turns: tuple[Turn, ...]


def plan_conversations(traces: int, rng: random.Random) -> list[Conversation]:
    """Conversations of 1-4 turns, ``traces`` turns in all: about 5 % fail, 10 % are slow,
    and some answers apologise, leak an email address or meet a frustrated user."""
    conversations: list[Conversation] = []
    left = traces
    while left > 0:
        size = min(left, rng.randint(1, 4))
        turns = tuple(_plan_turn(rng) for _ in range(size))
        session_id = f"demo-session-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
        conversations.append(Conversation(session_id, f"user-{rng.randint(1, 40)}", turns))
        left -= size
    return conversations


def _plan_turn(rng: random.Random) -> Turn:
    _, question, answer = rng.choice(_TOPICS)
    order = f"#{rng.randint(10_000, 99_999)}"
    question, answer = question.format(n=order), answer.format(n=order)
    if rng.random() < 0.08:
        answer = _APOLOGY
    if rng.random() < 0.07:
        answer += _PII
    if rng.random() < 0.10:
        question = _FRUSTRATED + question
    slow = rng.random() < 0.10
    llm_s = rng.uniform(1.6, 2.1) if slow else rng.uniform(0.01, 0.04)
    return Turn(question, answer, llm_s, fails=rng.random() < 0.05)


@assay.trace(kind="RETRIEVER")
def search_help_center(query: str) -> list[str]:
    """The bot's retrieval step: help-center articles whose topic the query mentions."""
    time.sleep(random.uniform(0.003, 0.012))
    text = query.lower()
    return [doc for topic, doc in _HELP_CENTER.items() if topic in text] or ["kb/contact-us"]


def _call_model(turn: Turn, docs: Sequence[str]) -> str:
    """The bot's model call: an LLM span with token counts (OpenInference attributes)."""
    with assay.trace("chat_completion", kind="LLM") as span:
        span.set_inputs({"question": turn.question, "context": list(docs)})
        span.set_attribute("llm.model_name", "support-model-sim")
        span.set_attribute("llm.token_count.prompt", 120 + 60 * len(docs) + _tokens(turn.question))
        time.sleep(turn.llm_s)
        if turn.fails:
            raise TimeoutError("simulated outage: the model provider timed out")
        span.set_attribute("llm.token_count.completion", _tokens(turn.answer))
        span.set_outputs(turn.answer)
        return turn.answer


def _tokens(text: str) -> int:
    return math.ceil(len(text.split()) / 0.75)


def answer_turn(conversation: Conversation, turn: Turn) -> str:
    """One request to the bot: a root agent span around retrieval and the model call. Returns
    the trace's id; a failed turn is recorded (ERROR status, exception event) and swallowed,
    as a web handler would answer it with an error page."""
    trace_id = ""
    try:
        with assay.trace(
            "support_agent",
            kind="AGENT",
            session_id=conversation.session_id,
            metadata={"user": conversation.user},
            tags={"app": "support-bot"},
        ) as span:
            trace_id = span.trace_id
            span.set_inputs({"question": turn.question})
            span.set_outputs(_call_model(turn, search_help_center(turn.question)))
    except TimeoutError:
        pass
    return trace_id


def send_traces(
    conversations: Sequence[Conversation], on_trace: Callable[[str], None]
) -> list[str]:
    """Run every conversation (turns in order, conversations side by side); the trace ids."""

    def run(conversation: Conversation) -> list[str]:
        ids = []
        for turn in conversation.turns:
            ids.append(answer_turn(conversation, turn))
            on_trace(ids[-1])
        return ids

    with ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="support-bot") as pool:
        return [tid for ids in pool.map(run, conversations) for tid in ids]


# -- the server -------------------------------------------------------------------------------


def listen(port: int) -> tuple[socket.socket, bool]:
    """A socket bound to ``port`` on loopback, or to a free port if that one is taken (and
    True then). Binding here, before the server starts, leaves no window for another
    process to take the port."""
    try:
        return _bound(port), False
    except OSError:
        if port == 0:
            raise
    return _bound(0), True


def _bound(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise
    return sock


@contextmanager
def serve_in_thread(settings: Settings, sock: socket.socket) -> Iterator[uvicorn.Server]:
    """``create_app(settings)`` under uvicorn in a background thread, started before this
    yields and shut down cleanly (lifespan included) when it returns."""
    from assay.server.app import create_app

    config = uvicorn.Config(
        create_app(settings),
        log_level="warning",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="assay-demo-server", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        # uvicorn offers a flag, not an event: poll it (and notice a startup that failed).
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise AssayError("the demo server did not start; see the messages above")
            time.sleep(0.02)
        yield server
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


# -- scoring progress and the summary ---------------------------------------------------------


@dataclass(frozen=True)
class ScorerStats:
    """What one scorer did with the demo's traces."""

    name: str
    kind: str
    level: str
    scored: int
    pass_rate: float | None
    """Share of true / "yes" values, for pass/fail scorers."""
    mean: float | None
    """Mean value, for numeric scorers."""
    failures: int
    """Assessments written with an error, plus traces given up on."""
    p95_latency_s: float | None
    """From the trace's completion to its assessment (a session's includes its idle wait)."""


@dataclass(frozen=True)
class DemoReport:
    experiment_id: str
    url: str
    """The experiment's page in the web UI."""
    traces: int
    stats: list[ScorerStats]
    complete: bool
    """Whether online scoring settled every (trace, scorer) pair before the timeout."""


def wait_for_scoring(
    client: Client,
    trace_ids: Sequence[str],
    scorers: Sequence[str],
    on_progress: Callable[[int], None],
    timeout_s: float = SCORING_TIMEOUT_S,
) -> dict[str, list[dict[str, Any]]]:
    """Poll each trace's decision log until every scorer has settled it (or the timeout);
    the last decisions seen, by trace. ``on_progress`` gets the count of settled pairs.

    Settled traces are not asked again, so each pass is cheaper than the one before."""
    wanted = set(scorers)

    def decisions(trace_id: str) -> list[dict[str, Any]]:
        try:
            return [d for d in client.trace_scoring(trace_id) if d["scorer"] in wanted]
        except NotFoundError:  # its spans are not ingested yet
            return []

    latest: dict[str, list[dict[str, Any]]] = {}
    open_ids = list(dict.fromkeys(trace_ids))
    deadline = time.monotonic() + timeout_s
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="demo-poll") as pool:
        while open_ids and time.monotonic() < deadline:
            latest.update(zip(open_ids, pool.map(decisions, open_ids), strict=True))
            open_ids = [t for t in open_ids if _settled(latest[t]) < len(wanted)]
            on_progress(sum(_settled(d) for d in latest.values()))
            if open_ids:
                time.sleep(POLL_S)
    return latest


def read_results(
    client: Client, experiment_id: str, trace_ids: Sequence[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The experiment's traces (one paged search) and the assessments of ``trace_ids``."""
    traces: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        params: dict[str, Any] = {"experiment_id": experiment_id, "max_results": 1000}
        if token:
            params["page_token"] = token
        page = client.request("GET", "/api/v1/traces", params=params)
        traces.extend(page["traces"])
        token = page.get("next_page_token")
        if not token:
            break

    def assessments(trace_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = client.request(
            "GET", f"/api/v1/traces/{trace_id}/assessments"
        )["assessments"]
        return found

    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="demo-read") as pool:
        found = [a for batch in pool.map(assessments, trace_ids) for a in batch]
    return traces, found


def _settled(decisions: Sequence[dict[str, Any]]) -> int:
    return sum(d["state"] in SETTLED for d in decisions)


def scorer_stats(
    scorers: Sequence[Scorer],
    traces: Sequence[dict[str, Any]],
    assessments: Sequence[dict[str, Any]],
    decisions: dict[str, list[dict[str, Any]]],
) -> list[ScorerStats]:
    """Per scorer, from the API's traces, assessments and decision logs."""
    completed = {t["trace_id"]: t["completed_at_ms"] for t in traces}
    sessions = {t["trace_id"]: t["session_id"] for t in traces}
    out = []
    for scorer in scorers:
        mine = [a for a in assessments if a["name"] == scorer.name]
        values = [a["value"] for a in mine if a["error"] is None]
        gave_up = {
            sessions.get(trace_id) if scorer.level == "session" else trace_id
            for trace_id, found in decisions.items()
            for d in found
            if d["scorer"] == scorer.name and d["state"] == "failed"
        }
        latencies = [
            (a["created_at_ms"] - completed[a["trace_id"]]) / 1000
            for a in mine
            if completed.get(a["trace_id"]) is not None
        ]
        out.append(
            ScorerStats(
                name=scorer.name,
                kind=scorer.kind,
                level=scorer.level,
                scored=len(mine),
                pass_rate=_pass_rate(values),
                mean=_mean(values),
                failures=len(mine) - len(values) + len(gave_up),
                p95_latency_s=_p95(latencies),
            )
        )
    return out


def _pass_rate(values: Sequence[Any]) -> float | None:
    verdicts = [v for v in values if isinstance(v, bool) or v in ("yes", "no")]
    if not verdicts or len(verdicts) < len(values):
        return None
    passed = sum(1 for v in verdicts if v is True or v == "yes")
    return passed / len(verdicts)


def _mean(values: Sequence[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if not numbers or len(numbers) < len(values):
        return None
    return sum(numbers) / len(numbers)


def _p95(samples: Sequence[float]) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def summary_table(stats: Sequence[ScorerStats]) -> Table:
    table = Table(title="online scoring")
    table.add_column("scorer", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("scored", justify="right")
    table.add_column("pass rate / mean", justify="right")
    table.add_column("failures", justify="right")
    table.add_column("p95 latency", justify="right")
    for s in stats:
        result = (
            f"{s.pass_rate:.0%}"
            if s.pass_rate is not None
            else f"{s.mean:.3g}"
            if s.mean is not None
            else "-"
        )
        latency = "-" if s.p95_latency_s is None else f"{s.p95_latency_s:.1f} s"
        kind = s.kind if s.level == "trace" else f"{s.kind} (session)"
        table.add_row(s.name, kind, str(s.scored), result, str(s.failures), latency)
    return table


# -- the demo ---------------------------------------------------------------------------------


def run_demo(
    *,
    store_uri: str | None = None,
    port: int = DEFAULT_PORT,
    traces: int = 300,
    serve: bool = True,
    console: Console | None = None,
    seed: int = 7,
) -> DemoReport:
    """Run the demo (see the module docstring); with ``serve``, keep serving afterwards until
    Ctrl-C. Raises :class:`~assay.WaitTimeoutError` after the summary if scoring did not
    finish in time and it is not serving, and :class:`~assay.ConfigError` before doing
    anything if the tracing extra is missing."""
    require_tracing()
    out = console or Console()
    sock, moved = listen(port)
    actual_port = int(sock.getsockname()[1])
    if moved:
        out.print(f"[yellow]port {port} is taken; using {actual_port}[/]")
    with StandInJudge() as judge:
        out.print(f"judge: {judge.url} is [bold]a local stand-in judge, not a model[/]")
        settings = load_settings(
            store_uri=store_uri,
            host=HOST,
            port=actual_port,
            auth=False,
            judge_base_url=judge.url,
            session_idle_s=SESSION_IDLE_S,
            scoring_interval_s=0.5,
        )
        base_url = f"http://{HOST}:{actual_port}"
        with serve_in_thread(settings, sock):
            out.print(f"server: {base_url} on {settings.store_uri}")
            report = _run(base_url, traces, random.Random(seed), out)
            out.print(summary_table(report.stats))
            if not report.complete:
                out.print("[yellow]scoring did not finish in time; the table shows it so far[/]")
            if serve:
                out.print(f"open the experiment: {report.url}", soft_wrap=True)
                _serve_until_interrupted(out)
    if not serve:
        # The demo's server is gone: say how to get one on the same store, not a dead URL.
        out.print(
            f"the demo's server has stopped (--no-serve). To browse the experiment, run\n"
            f"  assay server --store {settings.store_uri}\n"
            f"and open http://{HOST}:{DEFAULT_PORT}/ui/experiments/{report.experiment_id}",
            soft_wrap=True,
            highlight=False,
        )
        if not report.complete:
            raise WaitTimeoutError(
                f"online scoring did not settle every trace within {SCORING_TIMEOUT_S:g} s"
            )
    return report


def require_tracing() -> None:
    """The demo's app sends its traces with the tracing SDK: check for its extra before the
    demo starts a server or creates anything."""
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "assay demo sends traces with OpenTelemetry: pip install 'assay[tracing]' "
            f"({exc.name} is missing)"
        ) from exc


def _run(base_url: str, traces: int, rng: random.Random, out: Console) -> DemoReport:
    scorers = demo_scorers()
    with Client(base_url) as client:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        experiment = client.request(
            "POST",
            "/api/v1/experiments",
            json={"name": f"demo-{stamp}-{uuid.uuid4().hex[:6]}", "tags": {"source": "demo"}},
        )
        experiment_id = str(experiment["id"])
        out.print(f"experiment: {experiment['name']} ({experiment_id})")
        for scorer, rate in scorers:
            scorer.register(experiment_id, sample_rate=rate, target=client)
        names = ", ".join(f"{s.name} ({s.kind})" for s, _ in scorers)
        out.print(f"scorers: {names}")

        trace_ids = _send(base_url, experiment_id, plan_conversations(traces, rng), out)
        names_only = [s.name for s, _ in scorers]
        decisions = _wait(client, trace_ids, names_only, out)
        traces_out, assessments = read_results(client, experiment_id, trace_ids)
    complete = all(_settled(decisions.get(t, [])) == len(names_only) for t in trace_ids)
    return DemoReport(
        experiment_id=experiment_id,
        url=f"{base_url}/ui/experiments/{experiment_id}",
        traces=len(trace_ids),
        stats=scorer_stats([s for s, _ in scorers], traces_out, assessments, decisions),
        complete=complete,
    )


def _progress(out: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
    )


def _send(
    base_url: str, experiment_id: str, conversations: Sequence[Conversation], out: Console
) -> list[str]:
    total = sum(len(c.turns) for c in conversations)
    assay.tracing.configure(base_url, experiment_id, service_name="support-bot")
    try:
        with _progress(out) as bar:
            task = bar.add_task("sending traces (OTLP)", total=total)
            trace_ids = send_traces(conversations, lambda _: bar.advance(task))
        if not assay.tracing.flush():
            out.print("[yellow]some spans were not exported in time[/]")
    finally:
        assay.tracing.shutdown()
    out.print(f"sent {total} traces in {len(conversations)} conversations")
    return trace_ids


def _wait(
    client: Client, trace_ids: Sequence[str], scorers: Sequence[str], out: Console
) -> dict[str, list[dict[str, Any]]]:
    with _progress(out) as bar:
        task = bar.add_task("online scoring", total=len(trace_ids) * len(scorers))
        return wait_for_scoring(
            client, trace_ids, scorers, lambda done: bar.update(task, completed=done)
        )


def _serve_until_interrupted(out: Console) -> None:
    out.print("serving; press Ctrl-C to stop")
    try:
        threading.Event().wait()  # nothing sets it: only Ctrl-C ends the wait
    except KeyboardInterrupt:
        out.print("stopping")
