"""The built-in heuristic scorers: cheap, deterministic checks that need no model.

Each kind is a :class:`Heuristic` in :data:`HEURISTICS`. ``validate`` turns a user's JSON
definition into a normalised one (defaults filled in) or raises
:class:`~assay.errors.InvalidRequestError` naming the offending field, so a typo fails when the
scorer is registered rather than on every trace. ``build`` compiles a definition once (regular
expressions, keyword lists) into a :data:`~assay.scoring.model.ScoreFn`; the returned function
only reads its closed-over values, so one instance can be called from many threads at once.

A user's pattern runs in the ``regex`` package, not ``re``: its match has a time limit
(:attr:`Limits.regex_timeout_s` of CPU time; past it the call raises
:class:`~assay.errors.ScorerTimeoutError`) and lets go of the GIL while it runs, so a pattern
that backtracks for ever (``^(a|a)*$``) fails its one assessment instead of freezing the process.

A scorer reads its *target* (``item.outputs`` by default, or ``item.inputs``) as text: a string
as it is, ``None`` as ``""``, anything else as its JSON. A session item's target is the list of
its turns, so the same rule turns it into one JSON array. Every value is a bool where true means
the check passed.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import regex

from assay.errors import InvalidRequestError, ScorerTimeoutError
from assay.scoring.model import Feedback, ScoreFn, ScoringItem
from assay.util import did_you_mean

__all__ = [
    "HEURISTICS",
    "MAX_PATTERN_CHARS",
    "PII_TYPES",
    "REGEX_TIMEOUT_S",
    "Heuristic",
    "Limits",
    "luhn_valid",
]

MAX_PATTERN_CHARS: Final = 1000
"""Longest regular expression accepted; keeps compile time and the definition row small."""
REGEX_TIMEOUT_S: Final = 1.0
"""Default time limit of one regex scorer match (setting ``scoring_regex_timeout_s``)."""

PII_TYPES: Final = ("email", "phone", "credit_card", "ssn", "ip_address")

_TARGETS: Final = ("outputs", "inputs")
_NOUNS: Final = {"outputs": "output", "inputs": "input"}
_LIST_LIMIT: Final = 10
"""At most this many keywords are quoted in a rationale; the rest are counted."""


@dataclass(frozen=True)
class Limits:
    """What a built scorer enforces while it runs (from the server's settings)."""

    regex_timeout_s: float = REGEX_TIMEOUT_S
    """Seconds of CPU time one regex scorer match may take (the process's CPU time, as the
    ``regex`` package counts it: on a busy machine the wall time can be longer)."""


# --- reading definitions -------------------------------------------------------------------


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages read by people who wrote JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


class _Fields:
    """One definition being validated: every check raises an error naming its field."""

    def __init__(self, kind: str, definition: Any, allowed: Sequence[str]) -> None:
        self.kind = kind
        if not isinstance(definition, Mapping):
            raise InvalidRequestError(
                f"{kind} scorer: the definition must be a JSON object, not {_json_type(definition)}"
            )
        # The scorer's own kind may ride along in its definition; any other name is a mistake.
        self.values = {k: v for k, v in definition.items() if not (k == "kind" and v == kind)}
        for name in self.values:
            if name not in allowed:
                raise self._unknown(name, allowed)

    def _unknown(self, name: Any, allowed: Sequence[str]) -> InvalidRequestError:
        hint = did_you_mean(str(name), allowed, parenthesized=True)
        return InvalidRequestError(
            f"{self.kind} scorer: unknown field {name!r}{hint}; known fields: {', '.join(allowed)}"
        )

    def error(self, name: str, why: str) -> InvalidRequestError:
        return InvalidRequestError(f"{self.kind} scorer: {name!r} {why}")

    def _typed(self, name: str, expected: str) -> InvalidRequestError:
        return self.error(name, f"must be {expected}, not {_json_type(self.values[name])}")

    def required(self, name: str) -> Any:
        if self.values.get(name) is None:
            raise self.error(name, "is required")
        return self.values[name]

    def string(self, name: str) -> str:
        value = self.required(name)
        if not isinstance(value, str):
            raise self._typed(name, "a string")
        if not value:
            raise self.error(name, "must not be empty")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.values.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._typed(name, "true or false")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self.values.get(name)
        if value is None:
            return default
        if value not in choices:
            options = " or ".join(repr(c) for c in choices)
            raise self.error(name, f"must be one of {options}, not {json.dumps(value)[:40]}")
        return str(value)

    def target(self) -> str:
        return self.choice("target", _TARGETS, "outputs")

    def integer(self, name: str, *, minimum: int) -> int | None:
        value = self.values.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._typed(name, "a whole number")
        if value < minimum:
            raise self.error(name, f"must be at least {minimum}, not {value}")
        return value

    def positive_number(self, name: str) -> float | int:
        value = self.required(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._typed(name, "a number")
        if not math.isfinite(value) or value <= 0:
            raise self.error(name, f"must be a number greater than 0, not {value}")
        return value

    def strings(self, name: str) -> list[str] | None:
        value = self.values.get(name)
        if value is None:
            return None
        if not isinstance(value, list | tuple):
            raise self._typed(name, "an array of strings")
        for i, entry in enumerate(value):
            if not isinstance(entry, str) or not entry:
                raise self.error(name, f"entry {i} must be a non-empty string")
        return list(value)


# --- reading items -------------------------------------------------------------------------


def _text(value: Any) -> str:
    """A target as text: strings as they are, None as "", anything else as its JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, default=str)


def _target_reader(target: str) -> Callable[[ScoringItem], str]:
    if target == "inputs":
        return lambda item: _text(item.inputs)
    return lambda item: _text(item.outputs)


def _number(value: Any) -> float | int | None:
    """A numeric summary field, or None when it is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _session_traces(trace: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """The per-trace summaries of a session item, or None for a trace item."""
    traces = trace.get("traces")
    if not isinstance(traces, list):
        return None
    return [t for t in traces if isinstance(t, Mapping)]


@dataclass(frozen=True)
class _Total:
    """A measure of a trace, or its sum over a session's traces, as a rationale names it."""

    value: float | int
    subject: str
    """``the trace`` or ``the session's N traces``."""
    note: str = ""
    """How many session traces had no measure and were left out (when that is allowed)."""


def _total(
    trace: Mapping[str, Any],
    measure: Callable[[Mapping[str, Any]], float | int | None],
    what: str,
    *,
    skip_unknown: bool,
) -> _Total | str:
    """A trace item's ``measure``, or the sum over a session item's traces; else why not.

    ``what`` names the measure in the reasons (``duration``, ``token counts``). With
    ``skip_unknown`` a session trace without the measure adds nothing (a turn without model
    calls has no token counts); without it, one unknown trace makes the total unknown.
    """
    traces = _session_traces(trace)
    if traces is None:
        value = measure(trace)
        return f"the trace has no {what}" if value is None else _Total(value, "the trace")
    values = [measure(t) for t in traces]
    known = [v for v in values if v is not None]
    subject = f"the session's {len(traces)} traces"
    if skip_unknown:
        if not known:
            return f"no trace in the session has {what}"
        left_out = len(traces) - len(known)
        return _Total(sum(known), subject, f" ({left_out} without {what})" if left_out else "")
    if not traces:
        return "the session has no traces"
    if len(known) < len(traces):
        return f"{len(traces) - len(known)} of {len(traces)} traces in the session have no {what}"
    return _Total(sum(known), subject)


def _fmt(value: float | int) -> str:
    """A count for a rationale: thousands separators, no trailing ``.0``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}"


def _quoted(words: Sequence[str]) -> str:
    shown = ", ".join(repr(w) for w in words[:_LIST_LIMIT])
    rest = len(words) - _LIST_LIMIT
    return f"{shown} and {rest} more" if rest > 0 else shown


# --- regex ---------------------------------------------------------------------------------


def _regex_flags(ignore_case: bool) -> int:
    return regex.IGNORECASE if ignore_case else 0


def _validate_regex(d: _Fields) -> dict[str, Any]:
    pattern = d.string("pattern")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise d.error(
            "pattern",
            f"is {_fmt(len(pattern))} characters, over the maximum of {_fmt(MAX_PATTERN_CHARS)}",
        )
    ignore_case = d.boolean("ignore_case", False)
    try:
        regex.compile(pattern, _regex_flags(ignore_case))
    except regex.error as exc:
        shown = pattern if len(pattern) <= 80 else pattern[:80] + "..."
        raise d.error(
            "pattern", f"is not a valid regular expression: {exc} (in {shown!r})"
        ) from exc
    return {
        "pattern": pattern,
        "target": d.target(),
        "must_match": d.boolean("must_match", True),
        "ignore_case": ignore_case,
    }


def _build_regex(definition: dict[str, Any], limits: Limits) -> ScoreFn:
    compiled = regex.compile(definition["pattern"], _regex_flags(definition["ignore_case"]))
    timeout_s = limits.regex_timeout_s
    read = _target_reader(definition["target"])
    noun = _NOUNS[definition["target"]]
    must_match: bool = definition["must_match"]
    verdicts = {
        True: f"{noun} matches the pattern" + ("" if must_match else ", which it must not"),
        False: f"{noun} does not match the pattern" + (", which it must" if must_match else ""),
    }

    def score(item: ScoringItem) -> Feedback:
        text = read(item)
        try:
            # concurrent: the GIL is let go while it matches (a str cannot change meanwhile).
            found = compiled.search(text, timeout=timeout_s, concurrent=True)
        except TimeoutError:
            raise ScorerTimeoutError(
                f"regex timed out after {timeout_s:g} s on {_fmt(len(text))} characters of "
                f"{noun}: the pattern backtracks too much (nested quantifiers such as (a+)+ or "
                "(a|a)*); simplify it"
            ) from None
        matched = found is not None
        return Feedback(value=matched == must_match, rationale=verdicts[matched])

    return score


# --- keywords ------------------------------------------------------------------------------


def _validate_keywords(d: _Fields) -> dict[str, Any]:
    keywords = d.strings("keywords")
    if not keywords:
        raise d.error("keywords", "must be a non-empty array of strings")
    return {
        "keywords": keywords,
        "mode": d.choice("mode", ("any", "all", "none"), "any"),
        "target": d.target(),
        "ignore_case": d.boolean("ignore_case", True),
    }


def _build_keywords(definition: dict[str, Any], _limits: Limits) -> ScoreFn:
    keywords: list[str] = list(dict.fromkeys(definition["keywords"]))
    ignore_case: bool = definition["ignore_case"]
    needles = [(k, k.casefold() if ignore_case else k) for k in keywords]
    read = _target_reader(definition["target"])
    noun = _NOUNS[definition["target"]]
    mode: str = definition["mode"]
    count = f"{len(keywords)} keyword" + ("" if len(keywords) == 1 else "s")

    def verdict(matched: list[str]) -> tuple[bool, str]:
        if mode == "all":
            missing = [k for k in keywords if k not in matched]
            if missing:
                return False, f"{noun} is missing {_quoted(missing)}"
            return True, f"{noun} contains all {count}"
        if not matched:
            return mode == "none", f"{noun} contains none of the {count}"
        return mode == "any", f"{noun} contains {_quoted(matched)}"

    def score(item: ScoringItem) -> Feedback:
        text = read(item)
        if ignore_case:
            text = text.casefold()
        matched = [k for k, needle in needles if needle in text]
        passed, rationale = verdict(matched)
        return Feedback(value=passed, rationale=rationale, metadata={"matched": matched})

    return score


# --- json_valid ----------------------------------------------------------------------------


def _validate_json_valid(d: _Fields) -> dict[str, Any]:
    return {"target": d.target(), "required_keys": d.strings("required_keys") or []}


def _reject_constant(name: str) -> Any:
    """``json.loads`` accepts NaN and Infinity, which are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


def _build_json_valid(definition: dict[str, Any], _limits: Limits) -> ScoreFn:
    target: str = definition["target"]
    noun = _NOUNS[target]
    required: list[str] = definition["required_keys"]

    def parse(value: Any) -> tuple[Any, str | None]:
        """The target as a JSON value, or the reason it is not one."""
        if value is None:
            value = ""
        if not isinstance(value, str):
            return value, None
        try:
            return json.loads(value, parse_constant=_reject_constant), None
        except json.JSONDecodeError as exc:
            return (
                None,
                f"{noun} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            )
        except ValueError as exc:
            return None, f"{noun} is not valid JSON: {exc}"

    def score(item: ScoringItem) -> Feedback:
        parsed, problem = parse(getattr(item, target))
        if problem is not None:
            return Feedback(value=False, rationale=problem)
        if not required:
            return Feedback(value=True, rationale=f"{noun} is valid JSON")
        if not isinstance(parsed, dict):
            return Feedback(
                value=False,
                rationale=f"{noun} is a JSON {_json_type(parsed)}, not an object with the "
                "required keys",
            )
        missing = [k for k in required if k not in parsed]
        if missing:
            return Feedback(value=False, rationale=f"{noun} is missing keys {_quoted(missing)}")
        return Feedback(value=True, rationale=f"{noun} is valid JSON with all required keys")

    return score


# --- output_length -------------------------------------------------------------------------


def _validate_output_length(d: _Fields) -> dict[str, Any]:
    min_chars = d.integer("min_chars", minimum=0)
    max_chars = d.integer("max_chars", minimum=0)
    if min_chars is None and max_chars is None:
        raise d.error("min_chars", "or 'max_chars' is required")
    if min_chars is not None and max_chars is not None and min_chars > max_chars:
        raise d.error(
            "min_chars", f"({min_chars}) must not be greater than 'max_chars' ({max_chars})"
        )
    return {"target": d.target(), "min_chars": min_chars, "max_chars": max_chars}


def _build_output_length(definition: dict[str, Any], _limits: Limits) -> ScoreFn:
    min_chars: int | None = definition["min_chars"]
    max_chars: int | None = definition["max_chars"]
    read = _target_reader(definition["target"])
    noun = _NOUNS[definition["target"]]

    def verdict(chars: int) -> tuple[bool, str]:
        size = f"{noun} is {_fmt(chars)} character" + ("" if chars == 1 else "s")
        if min_chars is not None and chars < min_chars:
            return False, f"{size}, under the minimum of {_fmt(min_chars)}"
        if max_chars is not None and chars > max_chars:
            return False, f"{size}, over the maximum of {_fmt(max_chars)}"
        return True, f"{size}, within the limits"

    def score(item: ScoringItem) -> Feedback:
        chars = len(read(item))
        passed, rationale = verdict(chars)
        return Feedback(value=passed, rationale=rationale, metadata={"chars": chars})

    return score


# --- latency -------------------------------------------------------------------------------


def _validate_latency(d: _Fields) -> dict[str, Any]:
    return {"max_ms": d.positive_number("max_ms")}


def _build_latency(definition: dict[str, Any], _limits: Limits) -> ScoreFn:
    max_ms: float | int = definition["max_ms"]

    def score(item: ScoringItem) -> Feedback:
        total = _total(
            item.trace, lambda t: _number(t.get("duration_ms")), "duration", skip_unknown=False
        )
        if isinstance(total, str):
            return _no_duration(total)
        duration, subject = total.value, total.subject
        passed = duration <= max_ms
        rationale = (
            f"{subject} took {_fmt(duration)} ms, "
            f"{'within' if passed else 'over'} the limit of {_fmt(max_ms)} ms"
        )
        return Feedback(value=passed, rationale=rationale, metadata={"duration_ms": duration})

    return score


def _no_duration(rationale: str) -> Feedback:
    """A missing duration fails: a trace whose latency is unknown cannot be vouched for."""
    return Feedback(value=False, rationale=rationale, metadata={"duration_ms": None})


# --- token_budget --------------------------------------------------------------------------


def _validate_token_budget(d: _Fields) -> dict[str, Any]:
    max_tokens = d.integer("max_tokens", minimum=1)
    if max_tokens is None:
        raise d.error("max_tokens", "is required")
    return {"max_tokens": max_tokens}


def _trace_tokens(summary: Mapping[str, Any]) -> float | int | None:
    """A trace's total tokens, from ``total_tokens`` or else input plus output."""
    total = _number(summary.get("total_tokens"))
    if total is not None:
        return total
    parts = [_number(summary.get(k)) for k in ("input_tokens", "output_tokens")]
    known = [p for p in parts if p is not None]
    return sum(known) if known else None


def _build_token_budget(definition: dict[str, Any], _limits: Limits) -> ScoreFn:
    max_tokens: int = definition["max_tokens"]

    def score(item: ScoringItem) -> Feedback:
        total = _total(item.trace, _trace_tokens, "token counts", skip_unknown=True)
        if isinstance(total, str):
            return _no_tokens(total)
        tokens, subject, note = total.value, total.subject, total.note
        passed = tokens <= max_tokens
        rationale = (
            f"{subject} used {_fmt(tokens)} tokens{note}, "
            f"{'within' if passed else 'over'} the budget of {_fmt(max_tokens)}"
        )
        return Feedback(value=passed, rationale=rationale, metadata={"total_tokens": tokens})

    return score


def _no_tokens(rationale: str) -> Feedback:
    return Feedback(value=False, rationale=rationale, metadata={"total_tokens": None})


# --- pii -----------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum every payment card number carries;
    it turns most random 16-digit ids into non-matches."""
    if not (digits.isascii() and digits.isdigit()):
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


# Every pattern starts with a literal or a character class, which lets `re` skip quickly to
# the places worth trying (a leading look-behind would be tried at every position, 5x slower);
# the word or number boundary is then checked by a two-character look-behind after that first
# character. ASCII classes on purpose: the formats are ASCII, and \d would also match other
# scripts' digits.
_EMAIL = re.compile(
    r"@(?<=[\w.%+-]@)[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}(?![\w-])"
)
_PHONE = re.compile(
    r"[+(0-9](?<![0-9+][+(0-9])(?:"
    # North American, with parentheses or separators: (555) 123-4567, 555.123.4567
    r"(?<=\()[0-9]{3}\)[ .-]?[0-9]{3}[ .-][0-9]{4}"
    r"|(?<=[0-9])[0-9]{2}[ .-][0-9]{3}[ .-][0-9]{4}"
    # international, with a leading +: +1 555 123 4567, +44 20 7946 0958, +49 (0)30 1234567
    r"|(?<=\+)[0-9](?:[ .()-]{0,2}[0-9]){7,14}"
    r")(?![0-9])"
)
_CARD = re.compile(
    # 13 to 19 digits, plain or in groups of four; Amex's 4-6-5
    r"[0-9](?<![0-9][0-9])"
    r"(?:[0-9]{3}([ -]?)[0-9]{4}\1[0-9]{4}\1[0-9]{1,7}|[0-9]{3}[ -][0-9]{6}[ -][0-9]{5})(?![0-9])"
)
_SSN = re.compile(
    # area 001-899 but not 666, group not 00, serial not 0000 (never issued)
    r"[0-8](?<![0-9-][0-9])[0-9]{2}(?<!000)(?<!666)([- ])(?!00)[0-9]{2}\1(?!0000)[0-9]{4}(?![0-9-])"
)
_IPV4 = re.compile(r"[0-9](?<![0-9.][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?!\.?[0-9])")
_IPV6 = re.compile(
    r"[0-9A-Fa-f:](?<![\w:][0-9A-Fa-f:])(?=[0-9A-Fa-f]{0,3}:)[0-9A-Fa-f:]{2,38}(?![\w:])"
)


def _has_card(text: str) -> bool:
    return any(luhn_valid(re.sub(r"[ -]", "", m.group())) for m in _CARD.finditer(text))


def _personal_ip(candidate: str) -> bool:
    """Whether a candidate is an address that can point at someone. The patterns only find
    candidates (999.1.1.1, 12:30:45); ``ipaddress`` decides. Loopback and unspecified addresses
    (127.0.0.1, ::1, 0.0.0.0) name no one and are common in technical text."""
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified)


def _has_ip(text: str) -> bool:
    matches = itertools.chain(_IPV4.finditer(text), _IPV6.finditer(text))
    return any(_personal_ip(m.group()) for m in matches)


_PII_DETECTORS: Final[dict[str, Callable[[str], bool]]] = {
    "email": lambda text: _EMAIL.search(text) is not None,
    "phone": lambda text: _PHONE.search(text) is not None,
    "credit_card": _has_card,
    "ssn": lambda text: _SSN.search(text) is not None,
    "ip_address": _has_ip,
}


def _validate_pii(d: _Fields) -> dict[str, Any]:
    types = d.strings("types")
    if types is None:
        types = list(PII_TYPES)
    if not types:
        raise d.error("types", "must not be empty")
    for name in types:
        if name not in PII_TYPES:
            raise d.error("types", f"has unknown type {name!r}; known: {', '.join(PII_TYPES)}")
    return {"target": d.target(), "types": [t for t in PII_TYPES if t in types]}


def _build_pii(definition: dict[str, Any], _limits: Limits) -> ScoreFn:
    detectors = [(name, _PII_DETECTORS[name]) for name in definition["types"]]
    read = _target_reader(definition["target"])
    noun = _NOUNS[definition["target"]]

    def score(item: ScoringItem) -> Feedback:
        text = read(item)
        found = [name for name, detect in detectors if detect(text)]
        # Only the types: the matched text is the very thing that must not be copied around.
        rationale = (
            f"{noun} contains PII: {', '.join(found)}" if found else f"no PII found in {noun}"
        )
        return Feedback(value=not found, rationale=rationale, metadata={"types": found})

    return score


# --- registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heuristic:
    """One built-in kind: its fields, how a definition is checked, and how it is compiled."""

    kind: str
    describe: str
    """One line for listings and docs."""
    fields: tuple[str, ...]
    normalise: Callable[[_Fields], dict[str, Any]]
    compile: Callable[[dict[str, Any], Limits], ScoreFn]

    def validate(self, definition: Mapping[str, Any]) -> dict[str, Any]:
        """The definition with defaults filled in; InvalidRequestError names a bad field."""
        return self.normalise(_Fields(self.kind, definition, self.fields))

    def build(self, definition: Mapping[str, Any], limits: Limits | None = None) -> ScoreFn:
        """A thread-safe score function; validates first, so a raw definition is fine too."""
        return self.compile(self.validate(definition), limits or Limits())


HEURISTICS: Final[dict[str, Heuristic]] = {
    h.kind: h
    for h in (
        Heuristic(
            kind="regex",
            describe="Passes when the text matches a pattern (with must_match false: does not).",
            fields=("pattern", "target", "must_match", "ignore_case"),
            normalise=_validate_regex,
            compile=_build_regex,
        ),
        Heuristic(
            kind="keywords",
            describe="Passes when any, all or none of a list of keywords appear in the text.",
            fields=("keywords", "mode", "target", "ignore_case"),
            normalise=_validate_keywords,
            compile=_build_keywords,
        ),
        Heuristic(
            kind="json_valid",
            describe="Passes when the text is valid JSON, optionally an object with given keys.",
            fields=("target", "required_keys"),
            normalise=_validate_json_valid,
            compile=_build_json_valid,
        ),
        Heuristic(
            kind="output_length",
            describe="Passes when the text's length is within min_chars and max_chars.",
            fields=("target", "min_chars", "max_chars"),
            normalise=_validate_output_length,
            compile=_build_output_length,
        ),
        Heuristic(
            kind="latency",
            describe="Passes when the trace (or a session's traces, summed) took at most max_ms.",
            fields=("max_ms",),
            normalise=_validate_latency,
            compile=_build_latency,
        ),
        Heuristic(
            kind="token_budget",
            describe="Passes when the trace (or a session's traces) used at most max_tokens.",
            fields=("max_tokens",),
            normalise=_validate_token_budget,
            compile=_build_token_budget,
        ),
        Heuristic(
            kind="pii",
            describe="Passes when no email, phone, card number, SSN or IP address is found.",
            fields=("target", "types"),
            normalise=_validate_pii,
            compile=_build_pii,
        ),
    )
}
