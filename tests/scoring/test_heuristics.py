"""The built-in heuristic scorers: each kind's verdicts, its validation errors, and that a built
scorer is safe and cheap to call from many threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from assay.errors import InvalidRequestError
from assay.scoring.heuristics import HEURISTICS, MAX_PATTERN_CHARS, PII_TYPES, luhn_valid
from assay.scoring.model import Feedback, ScoringItem


def trace(outputs: Any = None, inputs: Any = None, **summary: Any) -> ScoringItem:
    return ScoringItem(inputs=inputs, outputs=outputs, trace=summary)


def session(*summaries: dict[str, Any], outputs: Any = None, inputs: Any = None) -> ScoringItem:
    return ScoringItem(
        inputs=inputs, outputs=outputs, trace={"session_id": "s1", "traces": list(summaries)}
    )


def score(kind: str, definition: dict[str, Any], item: ScoringItem) -> Feedback:
    return HEURISTICS[kind].build(definition)(item)


# Each case: definition, item, expected value, a phrase the rationale must contain.
Case = tuple[dict[str, Any], ScoringItem, bool, str]


def check(kind: str, case: Case) -> Feedback:
    definition, item, expected, phrase = case
    feedback = score(kind, definition, item)
    assert feedback.value is expected, feedback.rationale
    assert phrase in (feedback.rationale or ""), feedback.rationale
    return feedback


REGEX: list[Case] = [
    ({"pattern": r"\bsorry\b"}, trace("I'm sorry."), True, "output matches the pattern"),
    ({"pattern": r"\bsorry\b"}, trace("no apology"), False, "does not match the pattern"),
    ({"pattern": "sorry", "must_match": False}, trace("sorry"), False, "which it must not"),
    ({"pattern": "sorry", "must_match": False}, trace("fine"), True, "does not match"),
    ({"pattern": "sorry"}, trace("SORRY"), False, "does not match"),
    ({"pattern": "sorry", "ignore_case": True}, trace("SORRY"), True, "matches"),
    ({"pattern": "^hello", "target": "inputs"}, trace("x", inputs="hello"), True, "input matches"),
    ({"pattern": "^hello", "target": "inputs"}, trace("hello", inputs="x"), False, "input does"),
    ({"pattern": r'"answer": "sorry"'}, trace({"answer": "sorry"}), True, "matches"),
    ({"pattern": "café"}, trace({"text": "café"}), True, "matches"),
    ({"pattern": "^$"}, trace(None), True, "matches"),
    ({"pattern": r'^\["hi", "bye"\]$'}, session(outputs=["hi", "bye"]), True, "matches"),
]

KEYWORDS: list[Case] = [
    ({"keywords": ["refund", "sorry"]}, trace("Sorry!"), True, "contains 'sorry'"),
    ({"keywords": ["refund", "sorry"]}, trace("hello"), False, "none of the 2 keywords"),
    (
        {"keywords": ["refund"], "ignore_case": False},
        trace("Refund"),
        False,
        "none of the 1 keyword",
    ),
    ({"keywords": ["a", "b"], "mode": "all"}, trace("b only"), False, "missing 'a'"),
    ({"keywords": ["refund", "sorry"], "mode": "all"}, trace("sorry, refund"), True, "all 2"),
    ({"keywords": ["refund"], "mode": "none"}, trace("a REFUND"), False, "contains 'refund'"),
    ({"keywords": ["refund"], "mode": "none"}, trace("thanks"), True, "none of the 1 keyword"),
    ({"keywords": ["hi"], "target": "inputs"}, trace("hi", inputs="yo"), False, "input contains"),
    (
        {"keywords": ["refund", "sorry"], "mode": "all"},
        session(outputs=["a refund", "so sorry"]),
        True,
        "all 2",
    ),
    (
        {"keywords": [f"w{i:02}" for i in range(12)], "mode": "all"},
        trace(""),
        False,
        "'w09' and 2 more",
    ),
]

JSON_VALID: list[Case] = [
    ({}, trace('{"a": 1}'), True, "output is valid JSON"),
    ({}, trace("  [1, 2]\n"), True, "valid JSON"),
    ({}, trace("not json"), False, "output is not valid JSON: Expecting value at line 1"),
    ({}, trace('{"a": 1'), False, "not valid JSON"),
    ({}, trace(""), False, "not valid JSON"),
    ({}, trace(None), False, "not valid JSON"),
    ({}, trace("NaN"), False, "not valid JSON"),
    ({}, trace({"a": 1}), True, "valid JSON"),
    ({}, trace([1, 2]), True, "valid JSON"),
    ({}, trace("ok", inputs="{}"), False, "output is not"),
    ({"target": "inputs"}, trace("ok", inputs="{}"), True, "input is valid JSON"),
    ({"required_keys": ["a", "b"]}, trace('{"a": 1, "b": null}'), True, "all required keys"),
    ({"required_keys": ["a", "b"]}, trace({"a": 1}), False, "missing keys 'b'"),
    ({"required_keys": ["a"]}, trace("[1]"), False, "a JSON array, not an object"),
    ({"required_keys": ["a"]}, trace("oops"), False, "not valid JSON"),
]

OUTPUT_LENGTH: list[Case] = [
    (
        {"max_chars": 1000},
        trace("x" * 1234),
        False,
        "output is 1,234 characters, over the maximum of 1,000",
    ),
    ({"max_chars": 1000}, trace("x" * 1000), True, "within the limits"),
    ({"min_chars": 10}, trace("short"), False, "output is 5 characters, under the minimum of 10"),
    ({"min_chars": 1, "max_chars": 5}, trace("hey"), True, "3 characters"),
    ({"min_chars": 1}, trace(None), False, "0 characters"),
    ({"max_chars": 8}, trace({"a": 1}), True, "8 characters"),
    ({"max_chars": 2, "target": "inputs"}, trace("", inputs="long"), False, "input is 4"),
    ({"max_chars": 14}, session(outputs=["ab", "cd"]), True, "12 characters"),
]

LATENCY: list[Case] = [
    ({"max_ms": 1000}, trace(duration_ms=999), True, "took 999 ms, within the limit of 1,000"),
    ({"max_ms": 1000}, trace(duration_ms=1000), True, "within"),
    ({"max_ms": 1000}, trace(duration_ms=1500), False, "took 1,500 ms, over the limit"),
    ({"max_ms": 0.5}, trace(duration_ms=1), False, "over the limit of 0.5 ms"),
    ({"max_ms": 1000}, trace(), False, "no duration"),
    ({"max_ms": 1000}, trace(duration_ms=None), False, "no duration"),
    ({"max_ms": 1000}, trace(duration_ms="fast"), False, "no duration"),
    (
        {"max_ms": 1000},
        session({"duration_ms": 600}, {"duration_ms": 500}),
        False,
        "the session's 2 traces took 1,100 ms, over",
    ),
    ({"max_ms": 1000}, session({"duration_ms": 300}, {"duration_ms": 400}), True, "700 ms"),
    ({"max_ms": 1000}, session({"duration_ms": 3}, {"trace_id": "t2"}), False, "1 of 2 traces"),
    ({"max_ms": 1000}, session(), False, "no traces"),
]

TOKEN_BUDGET: list[Case] = [
    ({"max_tokens": 1000}, trace(total_tokens=900), True, "used 900 tokens, within the budget"),
    ({"max_tokens": 1000}, trace(total_tokens=1000), True, "within"),
    ({"max_tokens": 1000}, trace(total_tokens=1001), False, "1,001 tokens, over the budget"),
    ({"max_tokens": 1000}, trace(input_tokens=600, output_tokens=500), False, "1,100 tokens"),
    ({"max_tokens": 1000}, trace(input_tokens=600), True, "600 tokens"),
    ({"max_tokens": 1000}, trace(), False, "no token counts"),
    (
        {"max_tokens": 1000},
        session({"total_tokens": 400}, {"input_tokens": 300, "output_tokens": 400}),
        False,
        "the session's 2 traces used 1,100 tokens, over",
    ),
    (
        {"max_tokens": 1000},
        session({"total_tokens": 400}, {"duration_ms": 5}),
        True,
        "400 tokens (1 without token counts), within",
    ),
    ({"max_tokens": 1000}, session({"duration_ms": 5}), False, "no trace in the session"),
]

PII: list[Case] = [
    ({}, trace("Thanks, all done."), True, "no PII found in output"),
    ({}, trace("write to bob.smith+x@mail.example.co.uk"), False, "contains PII: email"),
    ({}, trace("call (555) 123-4567"), False, "phone"),
    ({}, trace("call 555.123.4567 now"), False, "phone"),
    ({}, trace("ring +44 20 7946 0958"), False, "phone"),
    ({}, trace("card 4111 1111 1111 1111"), False, "credit_card"),
    ({}, trace("card 4111-1111-1111-1112"), True, "no PII"),
    ({}, trace("ssn 123-45-6789"), False, "ssn"),
    ({}, trace("ip 203.0.113.7"), False, "ip_address"),
    ({}, trace("ip 2001:db8::1"), False, "ip_address"),
    ({}, trace("see 127.0.0.1 and ::1 at 12:30:45 on 2024-01-15, v1.2.3"), True, "no PII"),
    ({}, trace("order 000-12-3456, 999.1.1.1, a@b, 00:1A:2B:3C:4D:5E"), True, "no PII"),
    ({}, trace({"reply": "mail me at a@b.io\n555-123-4567"}), False, "email, phone"),
    ({"types": ["phone"]}, trace("mail a@b.io"), True, "no PII"),
    ({"target": "inputs"}, trace("clean", inputs="a@b.io"), False, "input contains PII: email"),
    ({}, session(outputs=["hi", "I'm at 10.1.2.3"]), False, "ip_address"),
]


@pytest.mark.parametrize("case", REGEX)
def test_regex(case: Case) -> None:
    check("regex", case)


@pytest.mark.parametrize("case", KEYWORDS)
def test_keywords(case: Case) -> None:
    check("keywords", case)


def test_keywords_metadata_lists_the_matched_words_as_written() -> None:
    feedback = score("keywords", {"keywords": ["Refund", "sorry", "x"]}, trace("SORRY, refund"))
    assert feedback.metadata == {"matched": ["Refund", "sorry"]}


@pytest.mark.parametrize("case", JSON_VALID)
def test_json_valid(case: Case) -> None:
    check("json_valid", case)


@pytest.mark.parametrize("case", OUTPUT_LENGTH)
def test_output_length(case: Case) -> None:
    check("output_length", case)


def test_output_length_metadata_is_the_length() -> None:
    feedback = score("output_length", {"max_chars": 3}, trace("naïve"))
    assert feedback.metadata == {"chars": 5}


@pytest.mark.parametrize("case", LATENCY)
def test_latency(case: Case) -> None:
    check("latency", case)


def test_latency_metadata_is_the_total_duration() -> None:
    item = session({"duration_ms": 600}, {"duration_ms": 500})
    assert score("latency", {"max_ms": 5000}, item).metadata == {"duration_ms": 1100}
    assert score("latency", {"max_ms": 5000}, trace()).metadata == {"duration_ms": None}


@pytest.mark.parametrize("case", TOKEN_BUDGET)
def test_token_budget(case: Case) -> None:
    check("token_budget", case)


def test_token_budget_metadata_is_the_total() -> None:
    item = trace(input_tokens=600, output_tokens=500)
    assert score("token_budget", {"max_tokens": 5000}, item).metadata == {"total_tokens": 1100}


@pytest.mark.parametrize("case", PII)
def test_pii(case: Case) -> None:
    check("pii", case)


def test_pii_never_repeats_what_it_found() -> None:
    secrets = ["bob@example.com", "(555) 123-4567", "4111111111111111", "123-45-6789", "8.8.8.8"]
    feedback = score("pii", {}, trace(" and ".join(secrets)))
    assert feedback.value is False
    assert feedback.metadata == {"types": list(PII_TYPES)}
    shown = f"{feedback.rationale} {feedback.metadata}"
    for secret in secrets:
        assert secret not in shown
    for part in ("bob", "555", "4111", "6789", "8.8"):
        assert part not in shown


@pytest.mark.parametrize(
    "number",
    ["4111111111111111", "5500000000000004", "378282246310005", "6011111111111117", "79927398713"],
)
def test_luhn_accepts_valid_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize(
    "number",
    ["4111111111111112", "1234567812345678", "79927398710", "", "4111 1111", "\uff14\uff12"],
)
def test_luhn_rejects_invalid_numbers(number: str) -> None:
    assert not luhn_valid(number)


@pytest.mark.parametrize(
    ("text", "is_card"),
    [
        ("4111111111111111", True),
        ("4111 1111 1111 1111", True),
        ("5500-0000-0000-0004", True),
        ("3782 822463 10005", True),
        ("4111111111111112", False),
        ("1234 5678 1234 5678", False),
        ("41111111111111111111", False),  # 20 digits: no card is that long
    ],
)
def test_pii_checks_card_numbers_with_luhn(text: str, is_card: bool) -> None:
    feedback = score("pii", {"types": ["credit_card"]}, trace(f"paid with {text}."))
    assert feedback.value is not is_card


# --- validation ------------------------------------------------------------------------------

INVALID: list[tuple[str, Any, str]] = [
    ("regex", {}, "pattern"),
    ("regex", {"pattern": 5}, "pattern"),
    ("regex", {"pattern": ""}, "pattern"),
    ("regex", {"pattern": "("}, "pattern"),
    ("regex", {"pattern": "a" * (MAX_PATTERN_CHARS + 1)}, "pattern"),
    ("regex", {"pattern": "a", "target": "output"}, "target"),
    ("regex", {"pattern": "a", "must_match": "yes"}, "must_match"),
    ("regex", {"pattern": "a", "ignore_case": 1}, "ignore_case"),
    ("regex", {"pattern": "a", "patern": "b"}, "patern"),
    ("regex", {"pattern": "a", "kind": "keywords"}, "kind"),
    ("keywords", {}, "keywords"),
    ("keywords", {"keywords": []}, "keywords"),
    ("keywords", {"keywords": "refund"}, "keywords"),
    ("keywords", {"keywords": ["a", 3]}, "keywords"),
    ("keywords", {"keywords": ["a", ""]}, "keywords"),
    ("keywords", {"keywords": ["a"], "mode": "some"}, "mode"),
    ("keywords", {"keywords": ["a"], "ignore_case": "no"}, "ignore_case"),
    ("json_valid", {"required_keys": "a"}, "required_keys"),
    ("json_valid", {"required_keys": [1]}, "required_keys"),
    ("json_valid", {"target": 3}, "target"),
    ("output_length", {}, "min_chars"),
    ("output_length", {"min_chars": -1}, "min_chars"),
    ("output_length", {"max_chars": 1.5}, "max_chars"),
    ("output_length", {"max_chars": True}, "max_chars"),
    ("output_length", {"min_chars": 10, "max_chars": 5}, "min_chars"),
    ("output_length", {"max_chars": 5, "max_char": 5}, "max_char"),
    ("latency", {}, "max_ms"),
    ("latency", {"max_ms": 0}, "max_ms"),
    ("latency", {"max_ms": -5}, "max_ms"),
    ("latency", {"max_ms": "100"}, "max_ms"),
    ("latency", {"max_ms": True}, "max_ms"),
    ("latency", {"max_ms": float("inf")}, "max_ms"),
    ("latency", {"max_ms": 10, "target": "outputs"}, "target"),
    ("token_budget", {}, "max_tokens"),
    ("token_budget", {"max_tokens": 0}, "max_tokens"),
    ("token_budget", {"max_tokens": 10.5}, "max_tokens"),
    ("pii", {"types": []}, "types"),
    ("pii", {"types": "email"}, "types"),
    ("pii", {"types": ["email", "passport"]}, "types"),
    ("pii", {"target": "trace"}, "target"),
]


@pytest.mark.parametrize(("kind", "definition", "field"), INVALID)
def test_invalid_definitions_name_the_field(kind: str, definition: Any, field: str) -> None:
    heuristic = HEURISTICS[kind]
    with pytest.raises(InvalidRequestError) as raised:
        heuristic.validate(definition)
    message = str(raised.value)
    assert message.startswith(f"{kind} scorer: ")
    assert f"'{field}'" in message
    with pytest.raises(InvalidRequestError):
        heuristic.build(definition)


@pytest.mark.parametrize(
    ("kind", "definition", "phrase"),
    [
        ("regex", {"pattern": "("}, "'pattern' is not a valid regular expression: missing )"),
        (
            "regex",
            {"pattern": "a", "patern": "b"},
            "unknown field 'patern' (did you mean 'pattern'?)",
        ),
        (
            "regex",
            {"pattern": "a", "must_match": "yes"},
            "'must_match' must be true or false, not string",
        ),
        (
            "keywords",
            {"keywords": ["a"], "mode": "some"},
            "must be one of 'any' or 'all' or 'none'",
        ),
        ("latency", {"max_ms": 0}, "'max_ms' must be a number greater than 0, not 0"),
        ("pii", {"types": ["passport"]}, "unknown type 'passport'"),
        ("json_valid", ["target"], "the definition must be a JSON object, not array"),
    ],
)
def test_invalid_definitions_say_why(kind: str, definition: Any, phrase: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        HEURISTICS[kind].validate(definition)
    assert phrase in str(raised.value)


def test_pattern_length_is_capped() -> None:
    assert MAX_PATTERN_CHARS == 1000
    HEURISTICS["regex"].validate({"pattern": "a" * MAX_PATTERN_CHARS})
    with pytest.raises(InvalidRequestError, match="1,001 characters, over the maximum of 1,000"):
        HEURISTICS["regex"].validate({"pattern": "a" * (MAX_PATTERN_CHARS + 1)})


@pytest.mark.parametrize(
    ("kind", "definition", "normalised"),
    [
        (
            "regex",
            {"pattern": "x"},
            {"pattern": "x", "target": "outputs", "must_match": True, "ignore_case": False},
        ),
        (
            "keywords",
            {"keywords": ["a"], "kind": "keywords"},
            {"keywords": ["a"], "mode": "any", "target": "outputs", "ignore_case": True},
        ),
        ("json_valid", {}, {"target": "outputs", "required_keys": []}),
        (
            "output_length",
            {"max_chars": 5, "target": "inputs"},
            {"target": "inputs", "min_chars": None, "max_chars": 5},
        ),
        ("latency", {"max_ms": 250}, {"max_ms": 250}),
        ("token_budget", {"max_tokens": 10}, {"max_tokens": 10}),
        ("pii", {}, {"target": "outputs", "types": list(PII_TYPES)}),
        (
            "pii",
            {"types": ["ssn", "email", "ssn"]},
            {"target": "outputs", "types": ["email", "ssn"]},
        ),
    ],
)
def test_validate_fills_defaults_and_is_idempotent(
    kind: str, definition: dict[str, Any], normalised: dict[str, Any]
) -> None:
    heuristic = HEURISTICS[kind]
    assert heuristic.validate(definition) == normalised
    assert heuristic.validate(normalised) == normalised


def test_registry_lists_every_kind_once() -> None:
    assert set(HEURISTICS) == {
        "regex",
        "keywords",
        "json_valid",
        "output_length",
        "latency",
        "token_budget",
        "pii",
    }
    for kind, heuristic in HEURISTICS.items():
        assert heuristic.kind == kind
        assert heuristic.describe
        assert "\n" not in heuristic.describe


# --- concurrency and speed -------------------------------------------------------------------

DEFINITIONS: dict[str, dict[str, Any]] = {
    "regex": {"pattern": r"\b(sorry|apolog\w+)\b", "ignore_case": True},
    "keywords": {"keywords": ["refund", "sorry", "manager"], "mode": "all"},
    "json_valid": {"required_keys": ["answer"]},
    "output_length": {"min_chars": 20, "max_chars": 400},
    "latency": {"max_ms": 1000},
    "token_budget": {"max_tokens": 500},
    "pii": {},
}

ITEMS = [
    trace('{"answer": "Sorry, a refund is on its way"}', "hi", duration_ms=800, total_tokens=300),
    trace("Please ask the manager for a refund; sorry!", duration_ms=1200, input_tokens=450),
    trace({"answer": "mail me at a@b.io"}, None, duration_ms=None, total_tokens=900),
    trace("x" * 500 + " 4111 1111 1111 1111", {"q": "café"}, duration_ms=10),
    session(
        {"duration_ms": 400, "total_tokens": 100},
        {"duration_ms": 700, "total_tokens": 50},
        outputs=["sorry", "call 555-123-4567"],
        inputs=["q1", "q2"],
    ),
]


def test_built_scorers_are_safe_to_share_between_threads() -> None:
    scorers = {kind: HEURISTICS[kind].build(d) for kind, d in DEFINITIONS.items()}
    expected = [[fn(item) for item in ITEMS] for fn in scorers.values()]
    assert any(f.value for row in expected for f in row)
    assert not all(f.value for row in expected for f in row)
    barrier = threading.Barrier(8)

    def hammer(_: int) -> list[list[Feedback]]:
        barrier.wait()
        for _ in range(200):
            results = [[fn(item) for item in ITEMS] for fn in scorers.values()]
            if results != expected:
                return results
        return results

    with ThreadPoolExecutor(max_workers=8) as pool:
        for results in pool.map(hammer, range(8)):
            assert results == expected


def test_ten_thousand_calls_of_each_kind_are_quick() -> None:
    item = ITEMS[0]
    started = time.perf_counter()
    for kind, definition in DEFINITIONS.items():
        fn = HEURISTICS[kind].build(definition)
        for _ in range(10_000):
            fn(item)
    assert time.perf_counter() - started < 5.0


def test_pii_stays_linear_on_long_adversarial_text() -> None:
    fn = HEURISTICS["pii"].build({})
    started = time.perf_counter()
    for text in ("1" * 100_000, "a@" * 50_000, "1." * 50_000, "+1" * 50_000, "a:" * 50_000):
        assert fn(trace(text)).value is True
    assert time.perf_counter() - started < 2.0
