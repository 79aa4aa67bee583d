"""LLM judges against a real local HTTP endpoint (the stand-in), with injected time for retries."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from assay.errors import (
    InvalidRequestError,
    JudgeConfigError,
    JudgeError,
    JudgeOutputError,
    JudgeUnavailableError,
)
from assay.scoring.judge import (
    MAX_SUBSTITUTION_CHARS,
    AimdLimiter,
    Judge,
    JudgeEndpoint,
    limiter_for,
    placeholders,
    render,
    validate_judge,
)
from assay.scoring.model import ScoringItem
from assay.scoring.standin import StandInJudge

YES_NO = {"instructions": "Is this answer right? {{ outputs }}"}
NUMBER = {"instructions": "Rate {{ outputs }}", "output": {"type": "number", "min": 1, "max": 5}}
CATEGORY = {
    "instructions": "Classify {{ outputs }}",
    "output": {"type": "category", "choices": ["helpful", "neutral", "harmful"]},
}
ITEM = ScoringItem(inputs={"question": "2+2?"}, outputs="4")


class FakeTime:
    """A clock that only moves when something sleeps; sleeps are recorded, not waited."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(scope="module")
def server() -> Iterator[StandInJudge]:
    with StandInJudge() as standin:
        yield standin


@pytest.fixture
def standin(server: StandInJudge) -> StandInJudge:
    server.reset()
    return server


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_judge(standin: StandInJudge, fake: FakeTime) -> Iterator[Any]:
    """Judges on the stand-in with fake time and their own limiter (so tests do not share
    the process-wide one); closed after the test."""
    judges: list[Judge] = []

    def make(definition: dict[str, Any] = YES_NO, **endpoint: Any) -> Judge:
        limiter = AimdLimiter(100.0, clock=fake.clock, sleep=fake.sleep)
        settings = {"base_url": standin.url, **endpoint}
        judge = Judge(
            definition,
            JudgeEndpoint(**settings),
            limiter=limiter,
            sleep=fake.sleep,
            clock=fake.clock,
        )
        judges.append(judge)
        return judge

    yield make
    for judge in judges:
        judge.close()


def test_the_judge_keeps_its_connections_under_load(standin: StandInJudge) -> None:
    """Bursts of 40 concurrent calls: a pool that closed its surplus connections (httpx keeps
    20 by default) would open new ones for every burst, the path on which httpcore can close a
    connection under a request (encode/httpcore#1110)."""
    standin.latency_s = 0.05
    with Judge(YES_NO, JudgeEndpoint(standin.url), limiter=AimdLimiter(1000.0)) as judge:
        for _ in range(3):
            with ThreadPoolExecutor(40) as pool:
                answers = list(pool.map(judge, [ScoringItem("q", "fine")] * 40))
            assert {a.value for a in answers} == {"yes"}
    assert standin.by_status == {200: 120}
    assert standin.connections <= 40


# answers


def test_yes_no_follows_the_prompt(make_judge: Any, standin: StandInJudge) -> None:
    judge = make_judge()
    good = judge(ScoringItem("q", "a fine answer"))
    bad = judge(ScoringItem("q", "a BAD answer"))
    assert (good.value, bad.value) == ("yes", "no")
    assert "bad" in (bad.rationale or "")
    assert good.metadata["model"] == "gpt-4o-mini"
    assert good.metadata["input_tokens"] > 0
    assert good.metadata["output_tokens"] > 0
    assert "latency_ms" in good.metadata
    assert "cost" not in good.metadata
    assert standin.by_status == {200: 2}


def test_number_is_a_float_in_range_and_stable(make_judge: Any) -> None:
    judge = make_judge(NUMBER)
    first, again = judge(ITEM), judge(ITEM)
    assert isinstance(first.value, float)
    assert 1.0 <= first.value <= 5.0
    assert first.value == again.value
    other = judge(ScoringItem("q", "something else entirely"))
    assert 1.0 <= other.value <= 5.0


def test_category_is_one_of_the_choices(make_judge: Any) -> None:
    judge = make_judge(CATEGORY)
    values = {judge(ScoringItem("q", f"answer {n}")).value for n in range(12)}
    assert values <= {"helpful", "neutral", "harmful"}
    assert len(values) > 1


def test_cost_from_endpoint_prices(make_judge: Any) -> None:
    judge = make_judge(input_cost_per_1k=1.0, output_cost_per_1k=2.0)
    meta = judge(ITEM).metadata
    expected = (meta["input_tokens"] * 1.0 + meta["output_tokens"] * 2.0) / 1000
    assert meta["cost"] == pytest.approx(expected)


def test_definition_model_and_key_are_sent(make_judge: Any, standin: StandInJudge) -> None:
    standin.expected_key = "sk-right"
    standin.models = {"judge-large"}
    judge = make_judge({**YES_NO, "model": "judge-large"}, api_key="sk-right")
    assert judge(ITEM).metadata["model"] == "judge-large"


@pytest.mark.parametrize(
    ("content", "value"),
    [
        ('```json\n{"value": "YES", "rationale": "ok"}\n```', "yes"),
        ('Sure! Here it is: {"rationale": "fine", "value": true} Hope that helps.', "yes"),
        ('{"value": false}', "no"),
        ('{"a": {"b": 1}} then {"value": "no", "rationale": "r"}', "no"),
    ],
)
def test_answers_are_parsed_tolerantly(
    make_judge: Any, standin: StandInJudge, content: str, value: str
) -> None:
    standin.answer_override = content
    assert make_judge()(ITEM).value == value


@pytest.mark.parametrize(
    ("definition", "content"),
    [
        (YES_NO, "I think it is fine."),
        (YES_NO, '{"rationale": "no value here"}'),
        (YES_NO, '{"value": "maybe", "rationale": "r"}'),
        (NUMBER, '{"value": 7, "rationale": "too high"}'),
        (NUMBER, '{"value": true, "rationale": "not a number"}'),
        (CATEGORY, '{"value": "other", "rationale": "r"}'),
    ],
)
def test_wrong_answers_are_output_errors(
    make_judge: Any, standin: StandInJudge, definition: dict[str, Any], content: str
) -> None:
    standin.answer_override = content
    with pytest.raises(JudgeOutputError, match="answered"):
        make_judge(definition)(ITEM)
    assert standin.requests == 1


def test_the_api_key_never_appears_in_errors(make_judge: Any, standin: StandInJudge) -> None:
    standin.answer_override = "my key is sk-very-secret-123, no verdict"
    with pytest.raises(JudgeOutputError) as caught:
        make_judge(api_key="sk-very-secret-123")(ITEM)
    assert "sk-very-secret-123" not in str(caught.value)
    assert "***" in str(caught.value)


# definitions


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"output": {"type": "yes_no"}}, "'instructions' is required"),
        ({"instructions": "   "}, "'instructions' is required"),
        ({"instructions": "Judge the answer."}, "at least one of"),
        ({"instructions": "Judge {{ answer }}"}, "at least one of"),
        ({**YES_NO, "api_key": "sk-x"}, "'api_key' is not allowed: keys and endpoints"),
        ({**YES_NO, "base_url": "http://x"}, "'base_url' is not allowed"),
        ({**YES_NO, "temprature": 0}, "'temprature'.*did you mean 'temperature'"),
        ({**YES_NO, "output": "yes_no"}, "'output' must be an object"),
        ({**YES_NO, "output": {"type": "score"}}, "'output' must be an object with 'type'"),
        ({**YES_NO, "output": {"type": "yes_no", "min": 1}}, "'output.min'"),
        ({**YES_NO, "output": {"type": "number", "max": 5}}, "'output.min' must be a finite"),
        ({**YES_NO, "output": {"type": "number", "min": 5, "max": 1}}, "'output.max'"),
        ({**YES_NO, "output": {"type": "number", "min": 1, "max": 1}}, "'output.max'"),
        ({**YES_NO, "output": {"type": "number", "min": True, "max": 2}}, "'output.min'"),
        ({**YES_NO, "output": {"type": "category", "choices": []}}, "'output.choices'"),
        ({**YES_NO, "output": {"type": "category", "choices": ["a", ""]}}, r"output.choices\[1\]"),
        ({**YES_NO, "output": {"type": "category", "choices": ["a", "a"]}}, "duplicates: a"),
        ({**YES_NO, "model": ""}, "'model'"),
        ({**YES_NO, "temperature": 3}, "'temperature'"),
        ({**YES_NO, "temperature": "0"}, "'temperature'"),
    ],
)
def test_bad_definitions_name_the_field(definition: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        validate_judge(definition)


def test_definitions_are_normalised() -> None:
    assert validate_judge(YES_NO) == {**YES_NO, "output": {"type": "yes_no"}}
    number = validate_judge({**NUMBER, "model": "m", "temperature": 1})
    assert number["output"] == {"type": "number", "min": 1.0, "max": 5.0}
    assert number["temperature"] == 1.0
    for text in ("{{inputs}}", "{{ trace }}", "{{   conversation}}", "{{outputs }}"):
        validate_judge({"instructions": f"Judge {text}"})


# rendering


def test_render_substitutes_text_and_json() -> None:
    item = ScoringItem(inputs={"q": "café?"}, outputs="plain text", trace={"spans": [1]})
    text = render("I={{inputs}} O={{ outputs }} T={{  trace }} again {{outputs}}", item)
    assert text == 'I={"q": "café?"} O=plain text T={"spans": [1]} again plain text'
    assert placeholders("{{inputs}} {{ trace }} {{ nope }}") == {"inputs", "trace"}


def test_render_never_expands_placeholders_inside_data() -> None:
    item = ScoringItem(inputs="{{ outputs }}", outputs="{{ inputs }} {% evil %}")
    assert render("{{ inputs }} | {{ outputs }}", item) == "{{ outputs }} | {{ inputs }} {% evil %}"


def test_render_truncates_each_substitution() -> None:
    item = ScoringItem(inputs="x" * (MAX_SUBSTITUTION_CHARS + 123), outputs="short")
    text = render("{{ inputs }}|{{ outputs }}", item)
    head, tail = text.split("|")
    assert head.startswith("x" * MAX_SUBSTITUTION_CHARS)
    assert head.endswith("[truncated 123 characters]")
    assert len(head) < MAX_SUBSTITUTION_CHARS + 40
    assert tail == "short"


def test_render_conversation_as_numbered_turns() -> None:
    item = ScoringItem(inputs=["hi", {"q": "and?"}], outputs=["hello", "done"])
    assert render("{{ conversation }}", item) == (
        'Turn 1\nUser: hi\nAssistant: hello\n\nTurn 2\nUser: {"q": "and?"}\nAssistant: done'
    )
    single = render("{{conversation}}", ScoringItem(inputs="q", outputs="a"))
    assert single == "Turn 1\nUser: q\nAssistant: a"


# retries and errors


def test_429s_are_retried_then_succeed(
    make_judge: Any, standin: StandInJudge, fake: FakeTime
) -> None:
    judge = make_judge()
    standin.fail_next([429, 429])
    assert judge(ITEM).value == "yes"
    assert standin.requests == 3
    assert standin.by_status == {429: 2, 200: 1}
    assert len(fake.sleeps) == 2
    # Both 429s fall in one decrease window: the rate halved once, then grew a little.
    assert 50.0 <= judge.limiter.rate < 51.0


def test_retry_after_is_honoured(make_judge: Any, standin: StandInJudge, fake: FakeTime) -> None:
    standin.fail_next([429], retry_after=2.5)
    make_judge()(ITEM)
    assert fake.sleeps == [2.5]


def test_5xx_and_timeouts_are_retried(
    make_judge: Any, standin: StandInJudge, fake: FakeTime
) -> None:
    standin.fail_next([500, 502, 503, 408])
    assert make_judge()(ITEM).value == "yes"
    assert standin.by_status == {500: 1, 502: 1, 503: 1, 408: 1, 200: 1}
    assert len(fake.sleeps) == 4


def test_retries_stop_after_max_retry_s(
    make_judge: Any, standin: StandInJudge, fake: FakeTime
) -> None:
    standin.always_status = 503
    judge = make_judge(max_retry_s=5.0)
    with pytest.raises(JudgeUnavailableError) as caught:
        judge(ITEM)
    message = str(caught.value)
    assert "503" in message
    assert standin.url in message
    assert "\n" not in message
    assert sum(fake.sleeps) <= 5.0
    assert standin.requests == len(fake.sleeps) + 1 >= 2
    assert caught.value.retry_after_s is None


def test_a_retry_after_beyond_the_budget_gives_up_at_once(
    make_judge: Any, standin: StandInJudge, fake: FakeTime
) -> None:
    standin.fail_next([429], retry_after=60)
    with pytest.raises(JudgeUnavailableError) as caught:
        make_judge(max_retry_s=5.0)(ITEM)
    assert caught.value.retry_after_s == 60
    assert standin.requests == 1
    assert fake.sleeps == []


def test_unreachable_endpoint_is_unavailable(fake: FakeTime) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = JudgeEndpoint(f"http://127.0.0.1:{port}/v1", max_retry_s=2.0)
    limiter = AimdLimiter(100.0, clock=fake.clock, sleep=fake.sleep)
    with (
        Judge(YES_NO, endpoint, limiter=limiter, sleep=fake.sleep, clock=fake.clock) as judge,
        pytest.raises(JudgeUnavailableError, match="ConnectError"),
    ):
        judge(ITEM)
    assert fake.sleeps


def test_slow_answers_time_out_and_are_retried(
    make_judge: Any, standin: StandInJudge, fake: FakeTime
) -> None:
    standin.latency_s = 0.5
    judge = make_judge(timeout_s=0.05, max_retry_s=1.0)
    with pytest.raises(JudgeUnavailableError, match="ReadTimeout"):
        judge(ITEM)
    assert standin.requests >= 1


@pytest.mark.parametrize("status", [401, 403])
def test_refused_key_is_a_config_error_at_once(
    make_judge: Any, standin: StandInJudge, status: int
) -> None:
    standin.always_status = status
    with pytest.raises(JudgeConfigError, match=f"refused the API key \\({status}\\)"):
        make_judge(api_key="sk-wrong")(ITEM)
    assert standin.requests == 1


def test_wrong_key_is_a_config_error_without_the_key(
    make_judge: Any, standin: StandInJudge
) -> None:
    standin.expected_key = "sk-right"
    with pytest.raises(JudgeConfigError) as caught:
        make_judge(api_key="sk-wrong-secret")(ITEM)
    assert "401" in str(caught.value)
    assert "sk-wrong-secret" not in str(caught.value)
    assert standin.requests == 1


def test_unknown_model_is_a_config_error_naming_it(make_judge: Any, standin: StandInJudge) -> None:
    standin.models = {"gpt-4o-mini"}
    with pytest.raises(JudgeConfigError, match="'no-such-model' \\(404"):
        make_judge({**YES_NO, "model": "no-such-model"})(ITEM)
    assert standin.requests == 1


def test_other_4xx_is_a_plain_judge_error(make_judge: Any, standin: StandInJudge) -> None:
    standin.fail_next([400])
    with pytest.raises(JudgeError, match="rejected the request \\(400\\)") as caught:
        make_judge()(ITEM)
    assert type(caught.value) is JudgeError
    assert standin.requests == 1


# the limiter


def test_limiter_halves_once_per_window_and_not_below_min(fake: FakeTime) -> None:
    limiter = AimdLimiter(8.0, min_rps=1.5, decrease_window_s=1.0, clock=fake.clock)
    limiter.on_overload()
    limiter.on_overload()
    assert limiter.rate == 4.0
    fake.now += 1.0
    limiter.on_overload()
    assert limiter.rate == 2.0
    fake.now += 1.0
    limiter.on_overload()
    assert limiter.rate == 1.5


def test_limiter_increases_additively_up_to_max(fake: FakeTime) -> None:
    limiter = AimdLimiter(4.0, max_rps=6.0, increase=1.0, clock=fake.clock)
    for _ in range(4):
        limiter.on_success()
    assert 4.9 < limiter.rate < 5.0  # about +1 rps per `rate` successes
    for _ in range(100):
        limiter.on_success()
    assert limiter.rate == 6.0


def test_limiter_paces_acquires_at_its_rate(fake: FakeTime) -> None:
    limiter = AimdLimiter(4.0, clock=fake.clock, sleep=fake.sleep)
    for _ in range(4):  # a full bucket: one second's worth
        limiter.acquire()
    assert fake.sleeps == []
    limiter.acquire()
    assert fake.sleeps == [pytest.approx(0.25)]
    with pytest.raises(JudgeUnavailableError, match="rate limit"):
        limiter.acquire(timeout=0.1)


def test_limiter_for_is_one_per_endpoint_and_model() -> None:
    endpoint = JudgeEndpoint("http://judge.invalid/v1")
    assert limiter_for(endpoint) is limiter_for(JudgeEndpoint("http://judge.invalid/v1/"))
    assert limiter_for(endpoint) is not limiter_for(endpoint, "other-model")


# the stand-in and concurrency


def test_standin_lists_models(standin: StandInJudge) -> None:
    standin.models = {"a", "b"}
    answer = httpx.get(f"{standin.url}/models")
    assert [m["id"] for m in answer.json()["data"]] == ["a", "b"]
    failed = httpx.post(f"{standin.url}/chat/completions", content=b"not json")
    assert failed.status_code == 400
    assert json.loads(failed.text)["error"]["type"] == "invalid_request_error"


def test_calls_from_many_threads_run_concurrently(standin: StandInJudge) -> None:
    # Serially 16 x 0.5 s = 8 s; concurrently one latency plus the machine's overhead, which a
    # loaded 2-core box stretches to a second or two (so not 16 x 50 ms against 0.6 s).
    standin.latency_s = 0.5
    judge = Judge(YES_NO, JudgeEndpoint(standin.url), limiter=AimdLimiter(1000.0, max_rps=1000.0))
    with judge, ThreadPoolExecutor(16) as pool:
        started = time.monotonic()
        values = list(pool.map(judge, [ScoringItem("q", f"answer {n}") for n in range(16)]))
        elapsed = time.monotonic() - started
    assert [v.value for v in values] == ["yes"] * 16
    assert standin.requests == 16
    assert elapsed < 4.0, f"{elapsed:.2f}s: the calls ran one after another"
