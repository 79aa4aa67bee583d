"""MLflow's search grammar for runs and experiments (its common cases), evaluated on values.

::

    filter   := [clause ("AND" clause)*]                 (empty: everything)
    clause   := ident ("=" | "!=" | "<" | "<=" | ">" | ">=" | "LIKE" | "ILIKE") value
              | ident ["NOT"] "IN" "(" value ("," value)* ")"
              | ident "IS" ["NOT"] "NULL"
    ident    := [entity "."] key                          (no entity: an attribute)
    entity   := metric(s) | param(s) | parameter(s) | tag(s) | attribute(s) | attr | run
              | dataset(s)
    key      := word ("." word)* | `any text` | "any text"
    value    := 'text' | "text" | number
    order_by := ident ["ASC" | "DESC"]

Keywords are case-insensitive. As in MLflow: metrics compare numbers (a run's latest value),
params and tags compare text, ``LIKE`` is case-sensitive with ``%`` and ``_``, a missing key
matches nothing but ``IS NULL``, and in an ordering runs missing the key come last. Bad
filters raise :class:`~assay.errors.InvalidFilterError` naming the offending token.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from assay.errors import InvalidFilterError

__all__ = [
    "EXPERIMENT_FIELDS",
    "MODEL_FIELDS",
    "RUN_FIELDS",
    "Clause",
    "Fields",
    "Lookup",
    "OrderKey",
    "matches",
    "parse_filter",
    "parse_order_by",
    "sort_key",
]

MAX_FILTER_CHARS = 10_000
Entity = Literal["metric", "param", "tag", "attribute", "dataset"]
Value = str | float | int | None
Lookup = Callable[[Entity, str], Value | list[str]]
"""What a clause looks at: (entity, key) -> the value, None when missing, or a list (datasets:
a clause matches when one of them does)."""

_ENTITIES: dict[str, Entity] = {
    "metric": "metric",
    "metrics": "metric",
    "param": "param",
    "params": "param",
    "parameter": "param",
    "parameters": "param",
    "tag": "tag",
    "tags": "tag",
    "attribute": "attribute",
    "attributes": "attribute",
    "attr": "attribute",
    "run": "attribute",
    "dataset": "dataset",
    "datasets": "dataset",
}
_TEXT_OPS = frozenset({"=", "!=", "LIKE", "ILIKE"})
_NUMBER_OPS = frozenset({"=", "!=", "<", "<=", ">", ">="})
_NULL_OPS = frozenset({"IS NULL", "IS NOT NULL"})
_LIST_OPS = frozenset({"IN", "NOT IN"})


@dataclass(frozen=True)
class Fields:
    """What one kind of search may name: attributes by name (``number`` or ``text``, aliases
    mapped to the canonical name) and which other entities it has."""

    what: str
    attributes: Mapping[str, tuple[str, Literal["number", "text"]]]
    entities: frozenset[Entity]
    order_entities: frozenset[Entity]


RUN_FIELDS = Fields(
    what="runs",
    attributes={
        "run_id": ("run_id", "text"),
        "run_name": ("run_name", "text"),
        "run name": ("run_name", "text"),
        "Run name": ("run_name", "text"),
        "Run Name": ("run_name", "text"),
        "status": ("status", "text"),
        "user_id": ("user_id", "text"),
        "artifact_uri": ("artifact_uri", "text"),
        "start_time": ("start_time", "number"),
        "created": ("start_time", "number"),
        "Created": ("start_time", "number"),
        "end_time": ("end_time", "number"),
    },
    entities=frozenset({"metric", "param", "tag", "attribute", "dataset"}),
    order_entities=frozenset({"metric", "param", "tag", "attribute"}),
)
EXPERIMENT_FIELDS = Fields(
    what="experiments",
    attributes={
        "experiment_id": ("experiment_id", "text"),
        "name": ("name", "text"),
        "creation_time": ("creation_time", "number"),
        "last_update_time": ("last_update_time", "number"),
    },
    entities=frozenset({"attribute", "tag"}),
    order_entities=frozenset({"attribute"}),
)
MODEL_FIELDS = Fields(
    what="logged models",
    attributes={
        "model_id": ("model_id", "text"),
        "name": ("name", "text"),
        "status": ("status", "text"),
        "model_type": ("model_type", "text"),
        "source_run_id": ("source_run_id", "text"),
        "creation_timestamp": ("creation_timestamp", "number"),
        "creation_time": ("creation_timestamp", "number"),
        "last_updated_timestamp": ("last_updated_timestamp", "number"),
    },
    entities=frozenset({"attribute", "param", "tag"}),
    order_entities=frozenset({"attribute"}),
)
_DATASET_KEYS = ("name", "digest")


@dataclass(frozen=True)
class Clause:
    entity: Entity
    key: str
    op: str
    value: Value | tuple[str, ...] = None


@dataclass(frozen=True)
class OrderKey:
    entity: Entity
    key: str
    ascending: bool


# -- tokenizer --------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*'|"(?:[^"\\]|\\.)*")
      | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])
      | (?P<op>!=|<>|<=|>=|==|=|<|>)
      | (?P<punct>[(),])
      | (?P<ident>(?:`[^`]*`|[\w\-:/]+)(?:\.(?:`[^`]*`|"[^"]*"|[\w\-:/]+))*)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    position: int


def _tokens(text: str) -> list[_Token]:
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidFilterError(f"the filter is over {MAX_FILTER_CHARS} characters")
    found: list[_Token] = []
    position = 0
    while position < len(text):
        if not text[position:].strip():
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            start = len(text) - len(text[position:].lstrip())
            raise InvalidFilterError(f"unexpected {text[start : start + 20]!r} at {start}")
        kind = match.lastgroup or ""
        start = match.start(kind)
        found.append(_Token(kind, match.group(kind), start))
        position = match.end()
    return found


def _unquote(token: _Token) -> str:
    text = token.text
    if text[0] == "'":
        return text[1:-1].replace("''", "'")
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _identifier(token: _Token, fields: Fields, entities: frozenset[Entity]) -> tuple[Entity, str]:
    """``entity.key`` of an identifier token (no entity: an attribute), checked."""
    if token.kind != "ident":
        raise InvalidFilterError(f"expected a field at {token.position}, not {token.text!r}")
    text = token.text
    head, dot, rest = text.partition(".")
    entity = _ENTITIES.get(head.lower()) if dot else None
    if entity is None:
        entity, key = "attribute", text
    else:
        key = rest
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "`\"'":
        key = key[1:-1]
    if not key:
        raise InvalidFilterError(f"field {text!r} at {token.position} names no key")
    if entity not in entities:
        allowed = ", ".join(sorted(entities))
        raise InvalidFilterError(
            f"{fields.what} cannot be searched by {entity} ({text!r} at {token.position}); "
            f"use one of: {allowed}"
        )
    if entity == "attribute":
        if key not in fields.attributes:
            known = ", ".join(sorted({name for name, _ in fields.attributes.values()}))
            raise InvalidFilterError(
                f"unknown attribute {key!r} at {token.position} (the attributes of "
                f"{fields.what}: {known})"
            )
        key = fields.attributes[key][0]
    if entity == "dataset" and key not in _DATASET_KEYS:
        raise InvalidFilterError(
            f"unknown dataset field {key!r} at {token.position} (expected name or digest)"
        )
    return entity, key


# -- parser -----------------------------------------------------------------------------------


def parse_filter(text: str | None, fields: Fields = RUN_FIELDS) -> list[Clause]:
    """The clauses of ``text`` (all must hold); [] for an empty filter."""
    tokens = _tokens(text or "")
    clauses: list[Clause] = []
    i = 0
    while i < len(tokens):
        if clauses:
            if tokens[i].kind != "ident" or tokens[i].text.upper() != "AND":
                raise InvalidFilterError(
                    f"expected AND at {tokens[i].position}, not {tokens[i].text!r} "
                    "(MLflow's run search joins clauses with AND only)"
                )
            i += 1
            if i == len(tokens):
                raise InvalidFilterError("the filter ends after AND")
        clause, i = _clause(tokens, i, fields)
        clauses.append(clause)
    return clauses


def _word(tokens: Sequence[_Token], i: int) -> str:
    return tokens[i].text.upper() if i < len(tokens) and tokens[i].kind == "ident" else ""


def _clause(tokens: Sequence[_Token], i: int, fields: Fields) -> tuple[Clause, int]:
    entity, key = _identifier(tokens[i], fields, fields.entities)
    kind = _kind(entity, key, fields)
    at = tokens[i].position
    i += 1
    if i == len(tokens):
        raise InvalidFilterError(f"the filter ends after the field at {at}")
    word = _word(tokens, i)
    if word == "IS":
        op = "IS NOT NULL" if _word(tokens, i + 1) == "NOT" else "IS NULL"
        i += 2 if op == "IS NULL" else 3
        if _word(tokens, i - 1) != "NULL":
            raise InvalidFilterError(f"expected IS [NOT] NULL after the field at {at}")
        if entity not in ("param", "tag"):
            raise InvalidFilterError(f"{op} applies to params and tags only (field at {at})")
        return Clause(entity, key, op), i
    if word in ("IN", "NOT"):
        op = "NOT IN" if word == "NOT" else "IN"
        i += 1 if word == "IN" else 2
        if op == "NOT IN" and _word(tokens, i - 1) != "IN":
            raise InvalidFilterError(f"expected NOT IN after the field at {at}")
        values, i = _list(tokens, i, at)
        if kind != "text" or entity in ("param", "tag"):
            raise InvalidFilterError(f"{op} applies to text attributes and datasets (at {at})")
        return Clause(entity, key, op, values), i
    op_token = tokens[i]
    op = op_token.text.upper()
    op = {"==": "=", "<>": "!="}.get(op, op)
    if op_token.kind not in ("op", "ident") or op not in (_TEXT_OPS | _NUMBER_OPS):
        raise InvalidFilterError(
            f"expected a comparison at {op_token.position}, not {op_token.text!r}"
        )
    allowed = _NUMBER_OPS if kind == "number" else _TEXT_OPS
    if op not in allowed:
        raise InvalidFilterError(
            f"{op} does not apply to {entity} {key!r} (at {op_token.position}); "
            f"use one of: {', '.join(sorted(allowed))}"
        )
    i += 1
    if i == len(tokens):
        raise InvalidFilterError(f"the filter ends after {op} at {op_token.position}")
    value_token = tokens[i]
    if kind == "number":
        if value_token.kind != "number":
            raise InvalidFilterError(
                f"{entity} {key!r} compares with a number, not {value_token.text!r} "
                f"(at {value_token.position})"
            )
        number = float(value_token.text)
        return Clause(entity, key, op, int(number) if number.is_integer() else number), i + 1
    if value_token.kind != "string":
        raise InvalidFilterError(
            f"{entity} {key!r} compares with a quoted string, not {value_token.text!r} "
            f"(at {value_token.position})"
        )
    return Clause(entity, key, op, _unquote(value_token)), i + 1


def _list(tokens: Sequence[_Token], i: int, at: int) -> tuple[tuple[str, ...], int]:
    if i >= len(tokens) or tokens[i].text != "(":
        raise InvalidFilterError(f"expected ( after IN (field at {at})")
    values: list[str] = []
    i += 1
    while True:
        if i >= len(tokens) or tokens[i].kind != "string":
            raise InvalidFilterError(f"expected a quoted string in the IN list (field at {at})")
        values.append(_unquote(tokens[i]))
        i += 1
        if i < len(tokens) and tokens[i].text == ",":
            i += 1
            continue
        if i < len(tokens) and tokens[i].text == ")":
            return tuple(values), i + 1
        raise InvalidFilterError(f"expected , or ) in the IN list (field at {at})")


def _kind(entity: Entity, key: str, fields: Fields) -> Literal["number", "text"]:
    if entity == "metric":
        return "number"
    if entity == "attribute":
        return fields.attributes[key][1]
    return "text"


def parse_order_by(items: Sequence[str], fields: Fields = RUN_FIELDS) -> list[OrderKey]:
    """``["metrics.acc DESC", "attributes.start_time"]`` as keys (ascending by default)."""
    keys: list[OrderKey] = []
    for item in items:
        tokens = _tokens(item)
        if not tokens:
            raise InvalidFilterError("an empty order_by clause")
        entity, key = _identifier(tokens[0], fields, fields.order_entities)
        direction = _word(tokens, 1) or "ASC"
        if direction not in ("ASC", "DESC") or len(tokens) > 2:
            raise InvalidFilterError(
                f"invalid order_by clause {item!r}: expected 'field [ASC|DESC]'"
            )
        keys.append(OrderKey(entity, key, direction == "ASC"))
    return keys


# -- evaluation -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _like(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = ("." if c == "_" else ".*" if c == "%" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _compare(op: str, have: Any, want: Any) -> bool:
    if op in ("LIKE", "ILIKE"):
        return _like(str(want), op == "ILIKE").fullmatch(str(have)) is not None
    if op == "IN":
        return have in want
    if op == "NOT IN":
        return have not in want
    try:
        result: bool = {
            "=": lambda: have == want,
            "!=": lambda: have != want,
            "<": lambda: have < want,
            "<=": lambda: have <= want,
            ">": lambda: have > want,
            ">=": lambda: have >= want,
        }[op]()
    except TypeError:
        return False
    return result


def matches(clauses: Sequence[Clause], lookup: Lookup) -> bool:
    """Whether every clause holds for the subject ``lookup`` describes."""
    for clause in clauses:
        have = lookup(clause.entity, clause.key)
        if clause.op in _NULL_OPS:
            if (have is None) != (clause.op == "IS NULL"):
                return False
            continue
        candidates = have if isinstance(have, list) else [have]
        if not any(v is not None and _compare(clause.op, v, clause.value) for v in candidates):
            return False
    return True


def sort_key(keys: Sequence[OrderKey], lookup: Lookup) -> tuple[Any, ...]:
    """A key for ``sorted`` that orders by ``keys``, subjects missing a value last either way
    (sort ascending; descending keys are negated or inverted here)."""
    parts: list[Any] = []
    for key in keys:
        value = lookup(key.entity, key.key)
        if value is None or isinstance(value, list):
            parts.append((1,))
            continue
        parts.append((0, value if key.ascending else _Inverted(value)))
    return tuple(parts)


@functools.total_ordering
class _Inverted:
    """Sorts in the reverse order of the value it wraps."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Inverted) and self.value == other.value

    def __lt__(self, other: _Inverted) -> bool:
        return bool(other.value < self.value)

    def __hash__(self) -> int:
        return hash(self.value)
