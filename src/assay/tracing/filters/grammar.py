"""The filter-string grammar: tokenizer, recursive-descent parser, typed AST and formatter.

::

    filter      := [or_expr] END                       (empty: every trace)
    or_expr     := and_expr ("OR" and_expr)*
    and_expr    := unary ("AND" unary)*
    unary       := "NOT" unary | "(" or_expr ")" | comparison
    comparison  := field ("=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">=") value
                 | field ["NOT"] "IN" "(" value ("," value)* ")"
                 | field ["NOT"] ("LIKE" | "ILIKE") string
                 | field "IS" ["NOT"] "NULL"
    field       := "trace." name | ("metadata" | "tags" | "tag") "." key | "span." name
                 | "assessment." key           (key: dotted words, or `any text` in backticks)
    value       := string | number | "TRUE" | "FALSE"

Keywords are case-insensitive. :func:`parse_filter` checks everything that needs no database
(syntax, field names, value types, limits); every error names the offending token and its
0-based position.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from assay.errors import InvalidFilterError

__all__ = [
    "ASSESSMENT_OPS",
    "DEFAULT_ORDER",
    "MAX_COMPARISONS",
    "MAX_DEPTH",
    "MAX_FILTER_LENGTH",
    "MAX_ORDER_KEYS",
    "SPAN_FIELDS",
    "TRACE_FIELDS",
    "And",
    "Comparison",
    "Entity",
    "Expr",
    "Field",
    "FieldSpec",
    "Kind",
    "Not",
    "Op",
    "Or",
    "OrderKey",
    "Scalar",
    "format_filter",
    "parse_filter",
    "parse_order_by",
]

MAX_FILTER_LENGTH = 10_000
"""Characters in one filter string."""
MAX_DEPTH = 32
"""Nesting of parentheses and NOT."""
MAX_COMPARISONS = 200
"""Comparisons in one filter (SQLite refuses expression trees deeper than 1000)."""


# --- fields ---------------------------------------------------------------------------------

Kind = Literal["text", "number"]


@dataclass(frozen=True)
class FieldSpec:
    """A searchable column: its name in the table and whether values are text or numbers."""

    column: str
    kind: Kind


# Public name -> column of ``traces``; aliases map to the same column.
TRACE_FIELDS: dict[str, FieldSpec] = {
    "trace_id": FieldSpec("trace_id", "text"),
    "status": FieldSpec("status", "text"),
    "timestamp_ms": FieldSpec("start_time_ms", "number"),
    "start_time_ms": FieldSpec("start_time_ms", "number"),
    "execution_time_ms": FieldSpec("duration_ms", "number"),
    "duration_ms": FieldSpec("duration_ms", "number"),
    "completed_at_ms": FieldSpec("completed_at_ms", "number"),
    "session_id": FieldSpec("session_id", "text"),
    "request_preview": FieldSpec("request_preview", "text"),
    "response_preview": FieldSpec("response_preview", "text"),
    "input_tokens": FieldSpec("input_tokens", "number"),
    "output_tokens": FieldSpec("output_tokens", "number"),
    "total_tokens": FieldSpec("total_tokens", "number"),
    "cost": FieldSpec("cost", "number"),
    "span_count": FieldSpec("span_count", "number"),
    "model": FieldSpec("model", "text"),
    "created_at_ms": FieldSpec("created_at_ms", "number"),
    "updated_at_ms": FieldSpec("updated_at_ms", "number"),
}

# Public name -> column of ``spans``; a span condition matches a trace when some span matches.
SPAN_FIELDS: dict[str, FieldSpec] = {
    "name": FieldSpec("name", "text"),
    "status": FieldSpec("status_code", "text"),
    "kind": FieldSpec("kind", "text"),
}

Entity = Literal["trace", "metadata", "tags", "span", "assessment"]
_ENTITIES: dict[str, Entity] = {
    "trace": "trace",
    "metadata": "metadata",
    "tags": "tags",
    "tag": "tags",
    "span": "span",
    "assessment": "assessment",
}


# --- AST ------------------------------------------------------------------------------------


class Op(enum.StrEnum):
    EQ = "="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    LIKE = "LIKE"
    NOT_LIKE = "NOT LIKE"
    ILIKE = "ILIKE"
    NOT_ILIKE = "NOT ILIKE"
    IN = "IN"
    NOT_IN = "NOT IN"
    IS_NULL = "IS NULL"
    IS_NOT_NULL = "IS NOT NULL"


Scalar = str | int | float | bool

# Assessment values are JSON of any type: they compare only for (in)equality and presence.
ASSESSMENT_OPS = frozenset({Op.EQ, Op.NE, Op.IN, Op.NOT_IN, Op.IS_NULL, Op.IS_NOT_NULL})


@dataclass(frozen=True)
class Field:
    """``entity.key``; for ``trace`` and ``span`` the key is the canonical field name."""

    entity: Entity
    key: str


@dataclass(frozen=True)
class Comparison:
    field: Field
    op: Op
    value: Scalar | tuple[Scalar, ...] | None = None
    """A scalar; a tuple for IN and NOT IN; None for IS [NOT] NULL."""
    position: int = dataclasses.field(default=0, compare=False)
    """Where the field starts in the filter string."""


@dataclass(frozen=True)
class And:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Not:
    item: Expr


Expr = Comparison | And | Or | Not


# --- tokenizer ------------------------------------------------------------------------------


class _T(enum.Enum):
    FIELD = "field"
    STRING = "string"
    NUMBER = "number"
    OP = "operator"
    WORD = "word"
    LPAREN = "("
    RPAREN = ")"
    COMMA = ","
    END = "end"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _T
    text: str
    """The token as written."""
    pos: int
    value: Scalar | None = None
    """STRING and NUMBER: the value; WORD: the upper-cased keyword."""
    entity: str = ""
    key: str = ""


_KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "LIKE", "ILIKE", "IS", "NULL", "TRUE", "FALSE"})
_WS = re.compile(r"\s+")
_WORD = re.compile(r"[^\W\d]\w*")
_SEGMENT = re.compile(r"[\w-]+")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_OPS = ("<=", ">=", "!=", "<>", "==", "=", "<", ">")
_BAD_CHARS = re.compile(r"[\x00\ud800-\udfff]")
_FIELD_HINT = "a field such as trace.status, metadata.<key> or tags.<key>"


def _show(text: str) -> str:
    """A token for an error message: quoted, and cut when long."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _fail(message: str, pos: int, token: str | None = None) -> InvalidFilterError:
    return InvalidFilterError(message, position=pos, token=token)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while True:
        ws = _WS.match(text, i)
        if ws:
            i = ws.end()
        if i >= n:
            tokens.append(_Token(_T.END, "", n))
            return tokens
        ch = text[i]
        if ch in "'\"":
            i = _string(text, i, tokens)
        elif ch.isdigit() or (ch in "-+." and _NUMBER.match(text, i)):
            i = _number(text, i, tokens)
        elif word := _WORD.match(text, i):
            i = _word(text, word, tokens)
        elif ch in "(),":
            kind = {"(": _T.LPAREN, ")": _T.RPAREN, ",": _T.COMMA}[ch]
            tokens.append(_Token(kind, ch, i))
            i += 1
        elif op := next((o for o in _OPS if text.startswith(o, i)), None):
            tokens.append(_Token(_T.OP, op, i))
            i += len(op)
        else:
            raise _fail(f"unexpected character {_show(ch)} at position {i}", i, ch)


def _string(text: str, start: int, tokens: list[_Token]) -> int:
    """A quoted string: backslash escapes the quotes and itself (any other backslash is kept,
    for LIKE patterns), and a doubled quote stands for one."""
    quote, out, i, n = text[start], [], start + 1, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            nxt = text[i + 1]
            out.append(nxt if nxt in "'\"\\" else ch + nxt)
            i += 2
        elif ch == quote:
            if i + 1 < n and text[i + 1] == quote:
                out.append(quote)
                i += 2
            else:
                tokens.append(_Token(_T.STRING, text[start : i + 1], start, "".join(out)))
                return i + 1
        else:
            out.append(ch)
            i += 1
    raise _fail(
        f"unterminated string starting at position {start}", start, text[start : start + 41]
    )


def _number(text: str, start: int, tokens: list[_Token]) -> int:
    match = _NUMBER.match(text, start)
    end = match.end() if match else start
    if match is None or (end < len(text) and (text[end].isalnum() or text[end] in "._")):
        bad = re.match(r"[\w.+-]+", text[start:])
        shown = bad.group() if bad else text[start]
        raise _fail(f"invalid number {_show(shown)} at position {start}", start, shown)
    raw = match.group()
    value: int | float
    if any(c in raw for c in ".eE"):
        value = float(raw)
        if not math.isfinite(value):
            raise _fail(f"number {_show(raw)} at position {start} is out of range", start, raw)
    else:
        # Compare lengths first: int() of thousands of digits is slow, then refused by Python.
        digits = raw.lstrip("+-").lstrip("0") or "0"
        sign = -1 if raw.startswith("-") else 1
        value = sign * int(digits) if len(digits) <= 19 else 2**63
        if not -(2**63) <= value < 2**63:
            raise _fail(f"number {_show(raw)} at position {start} is out of range", start, raw)
    tokens.append(_Token(_T.NUMBER, raw, start, value))
    return end


def _word(text: str, word: re.Match[str], tokens: list[_Token]) -> int:
    start, i, n = word.start(), word.end(), len(text)
    if i >= n or text[i] != ".":
        # Only ASCII words are keywords (the upper case of a dotless i is I).
        keyword = word.group().upper() if word.group().isascii() else ""
        tokens.append(_Token(_T.WORD, word.group(), start, keyword))
        return i
    segments: list[str] = []
    while i < n and text[i] == ".":
        i += 1
        if i < n and text[i] == "`":
            close = text.find("`", i + 1)
            if close < 0:
                raise _fail(f"unterminated `key` starting at position {i}", i, text[i : i + 41])
            if close == i + 1:
                raise _fail(f"empty `` key at position {i}", i, "``")
            segments.append(text[i + 1 : close])
            i = close + 1
        elif segment := _SEGMENT.match(text, i):
            segments.append(segment.group())
            i = segment.end()
        else:
            shown = text[i] if i < n else "end of filter"
            raise _fail(f"expected a key after '.' at position {i}, found {_show(shown)}", i, shown)
    tokens.append(
        _Token(_T.FIELD, text[start:i], start, entity=word.group(), key=".".join(segments))
    )
    return i


# --- parser ---------------------------------------------------------------------------------


def parse_filter(text: str | None) -> Expr | None:
    """Parse and check a filter string; None for an empty one (every trace matches).

    Raises :class:`InvalidFilterError` naming the offending token and its 0-based position."""
    if text is None or not text.strip():
        return None
    if len(text) > MAX_FILTER_LENGTH:
        raise _fail(
            f"filter is {len(text)} characters long; the limit is {MAX_FILTER_LENGTH}",
            MAX_FILTER_LENGTH,
        )
    bad = _BAD_CHARS.search(text)
    if bad:
        what = "NUL character" if bad.group() == "\x00" else "invalid character (lone surrogate)"
        raise _fail(f"{what} at position {bad.start()}", bad.start(), bad.group())
    return _Parser(_tokenize(text)).parse()


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.depth = 0
        self.comparisons = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        if token.kind is not _T.END:
            self.i += 1
        return token

    def is_word(self, *words: str) -> bool:
        token = self.peek()
        return token.kind is _T.WORD and token.value in words

    def unexpected(self, token: _Token, expected: str) -> InvalidFilterError:
        if token.kind is _T.END:
            return _fail(
                f"unexpected end of filter at position {token.pos}; expected {expected}", token.pos
            )
        return _fail(
            f"unexpected token {_show(token.text)} at position {token.pos}; expected {expected}",
            token.pos,
            token.text,
        )

    def parse(self) -> Expr:
        expr = self.or_expr()
        token = self.peek()
        if token.kind is not _T.END:
            raise self.unexpected(token, "AND, OR or the end of the filter")
        return expr

    def or_expr(self) -> Expr:
        items = [self.and_expr()]
        while self.is_word("OR"):
            self.take()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Expr:
        items = [self.unary()]
        while self.is_word("AND"):
            self.take()
            items.append(self.unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self) -> Expr:
        token = self.peek()
        if token.kind is _T.WORD and token.value == "NOT":
            self.enter(self.take())
            expr: Expr = Not(self.unary())
            self.depth -= 1
            return expr
        if token.kind is _T.LPAREN:
            self.enter(self.take())
            expr = self.or_expr()
            close = self.take()
            if close.kind is not _T.RPAREN:
                raise self.unexpected(close, f"')' to close the '(' at position {token.pos}")
            self.depth -= 1
            return expr
        if token.kind is _T.FIELD:
            return self.comparison()
        raise self.unexpected(token, f"{_FIELD_HINT}, '(' or NOT")

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _fail(
                f"filter nests deeper than {MAX_DEPTH} levels at position {token.pos}",
                token.pos,
                token.text,
            )

    def comparison(self) -> Comparison:
        self.comparisons += 1
        ftoken = self.take()
        if self.comparisons > MAX_COMPARISONS:
            raise _fail(
                f"filter has more than {MAX_COMPARISONS} comparisons "
                f"(the next one is at position {ftoken.pos})",
                ftoken.pos,
                ftoken.text,
            )
        target, kind = _resolve(ftoken)
        op, optoken = self.operator()
        if target.entity == "assessment" and op not in ASSESSMENT_OPS:
            raise _fail(
                f"operator {_show(op.value)} at position {optoken.pos} does not apply to "
                f"{ftoken.text}; assessment values take =, !=, IN, NOT IN, IS NULL, IS NOT NULL",
                optoken.pos,
                optoken.text,
            )
        if op in (Op.IS_NULL, Op.IS_NOT_NULL):
            return Comparison(target, op, None, ftoken.pos)
        if op in (Op.IN, Op.NOT_IN):
            return Comparison(target, op, self.values(kind, ftoken), ftoken.pos)
        if op in (Op.LIKE, Op.NOT_LIKE, Op.ILIKE, Op.NOT_ILIKE):
            if kind != "text":
                raise _fail(
                    f"{op.value} at position {optoken.pos} needs a text field; "
                    f"{ftoken.text} is a number",
                    optoken.pos,
                    optoken.text,
                )
            pattern = self.take()
            if pattern.kind is not _T.STRING:
                raise self.unexpected(pattern, f"a quoted {op.value} pattern")
            _check_pattern(pattern)
            return Comparison(target, op, pattern.value, ftoken.pos)
        return Comparison(target, op, self.value(kind, ftoken), ftoken.pos)

    def operator(self) -> tuple[Op, _Token]:
        """The operator after a field (IS [NOT] NULL included), and its first token."""
        token = self.take()
        if token.kind is _T.OP:
            return {"==": Op.EQ, "<>": Op.NE}.get(token.text) or Op(token.text), token
        if token.kind is _T.WORD and token.value == "IS":
            is_not = self.is_word("NOT")
            if is_not:
                self.take()
            null = self.take()
            if not (null.kind is _T.WORD and null.value == "NULL"):
                raise self.unexpected(null, "NULL" if is_not else "NULL or NOT NULL")
            return (Op.IS_NOT_NULL if is_not else Op.IS_NULL), token
        first = token
        negated = token.kind is _T.WORD and token.value == "NOT"
        if negated:
            token = self.take()
        if token.kind is _T.WORD and token.value in ("IN", "LIKE", "ILIKE"):
            return Op(("NOT " if negated else "") + str(token.value)), first
        if negated:
            raise self.unexpected(token, "IN, LIKE or ILIKE after NOT")
        raise self.unexpected(
            token, "an operator (=, !=, <, <=, >, >=, LIKE, ILIKE, IN, NOT IN, IS [NOT] NULL)"
        )

    def value(self, kind: Kind | None, ftoken: _Token) -> Scalar:
        token = self.take()
        if token.kind is _T.STRING and kind in ("text", None):
            assert isinstance(token.value, str)
            return token.value
        if token.kind is _T.NUMBER and kind in ("number", None):
            assert isinstance(token.value, int | float)
            return token.value
        if token.kind is _T.WORD and token.value in ("TRUE", "FALSE") and kind is None:
            return token.value == "TRUE"
        if kind == "text":
            expected = f"a quoted string ({ftoken.text} is text)"
        elif kind == "number":
            expected = f"a number ({ftoken.text} is a number)"
        else:
            expected = "a value (a quoted string, a number, TRUE or FALSE)"
        raise self.unexpected(token, expected)

    def values(self, kind: Kind | None, ftoken: _Token) -> tuple[Scalar, ...]:
        token = self.take()
        if token.kind is not _T.LPAREN:
            raise self.unexpected(token, "'(' to start the IN list")
        items = [self.value(kind, ftoken)]
        while True:
            token = self.take()
            if token.kind is _T.RPAREN:
                return tuple(items)
            if token.kind is not _T.COMMA:
                raise self.unexpected(token, "',' or ')' in the IN list")
            items.append(self.value(kind, ftoken))


def _resolve(token: _Token) -> tuple[Field, Kind | None]:
    """The field a FIELD token names, and the kind of value it takes (None: any)."""
    entity = _ENTITIES.get(token.entity.lower())
    if entity is None:
        raise _fail(
            f"unknown field {_show(token.text)} at position {token.pos}; fields start with "
            "trace., metadata., tags., span. or assessment.",
            token.pos,
            token.text,
        )
    if entity in ("trace", "span"):
        fields = TRACE_FIELDS if entity == "trace" else SPAN_FIELDS
        spec = fields.get(token.key)
        if spec is None:
            valid = ", ".join(fields)
            raise _fail(
                f"unknown field {_show(token.text)} at position {token.pos}; "
                f"valid {entity} fields: {valid}",
                token.pos,
                token.text,
            )
        return Field(entity, token.key), spec.kind
    return Field(entity, token.key), (None if entity == "assessment" else "text")


def _check_pattern(token: _Token) -> None:
    """A LIKE pattern may not end with a lone escape (PostgreSQL refuses it)."""
    assert isinstance(token.value, str)
    trailing = len(token.value) - len(token.value.rstrip("\\"))
    if trailing % 2:
        raise _fail(
            f"LIKE pattern {_show(token.text)} at position {token.pos} ends with a lone "
            "backslash; write \\\\\\\\ for a literal backslash",
            token.pos,
            token.text,
        )


# --- formatting -----------------------------------------------------------------------------


def format_filter(expr: Expr | None) -> str:
    """The canonical filter string of an AST (``parse_filter`` of it gives the AST back)."""
    if expr is None:
        return ""
    return _format(expr)


def _format(expr: Expr) -> str:
    if isinstance(expr, Comparison):
        return _format_comparison(expr)
    if isinstance(expr, Not):
        return "NOT " + _format_operand(expr.item)
    joiner = " AND " if isinstance(expr, And) else " OR "
    return joiner.join(_format_operand(item) for item in expr.items)


def _format_operand(expr: Expr) -> str:
    """Comparisons and NOTs bind tighter than AND and OR; groups get parentheses."""
    return _format(expr) if isinstance(expr, Comparison | Not) else f"({_format(expr)})"


def _format_comparison(c: Comparison) -> str:
    name = f"{c.field.entity}.{_format_key(c.field.key)}"
    if c.op in (Op.IS_NULL, Op.IS_NOT_NULL):
        return f"{name} {c.op.value}"
    if isinstance(c.value, tuple):
        return f"{name} {c.op.value} ({', '.join(_format_value(v) for v in c.value)})"
    assert c.value is not None
    return f"{name} {c.op.value} {_format_value(c.value)}"


def _format_key(key: str) -> str:
    segments = key.split(".")
    if all(_SEGMENT.fullmatch(s) for s in segments):
        return key
    if "`" in key:
        raise InvalidFilterError(f"key {key!r} cannot be written in a filter (it holds a `)")
    return f"`{key}`"


def _format_value(value: Scalar) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# --- order_by -------------------------------------------------------------------------------


MAX_ORDER_KEYS = 5


@dataclass(frozen=True)
class OrderKey:
    field: str
    """A canonical name from TRACE_FIELDS."""
    descending: bool = False


DEFAULT_ORDER = (OrderKey("timestamp_ms", descending=True),)
"""Newest first."""


def parse_order_by(order_by: str | Sequence[str] | None) -> tuple[OrderKey, ...]:
    """``["trace.timestamp_ms DESC", "trace.duration_ms"]`` or the same comma-separated;
    ``trace.`` is optional. Empty means newest first (``trace.timestamp_ms DESC``)."""
    items = [order_by] if isinstance(order_by, str) else list(order_by or [])
    parts = [p.strip() for item in items for p in item.split(",")]
    if not any(parts):
        return DEFAULT_ORDER
    if len(parts) > MAX_ORDER_KEYS:
        raise InvalidFilterError(f"order_by has {len(parts)} items; the limit is {MAX_ORDER_KEYS}")
    keys: list[OrderKey] = []
    seen: set[str] = set()
    for number, raw in enumerate(parts, 1):
        where = f"order_by item {number} ({_show(raw)})"
        words = raw.split()
        if not words or len(words) > 2:
            raise InvalidFilterError(f"{where}: expected '<field> [ASC|DESC]'", token=raw)
        name = words[0][len("trace.") :] if words[0].lower().startswith("trace.") else words[0]
        spec = TRACE_FIELDS.get(name)
        if spec is None:
            raise InvalidFilterError(
                f"{where}: unknown field {_show(words[0])}; valid trace fields: "
                + ", ".join(TRACE_FIELDS),
                token=words[0],
            )
        direction = words[1].upper() if len(words) == 2 else "ASC"
        if direction not in ("ASC", "DESC"):
            raise InvalidFilterError(
                f"{where}: unknown direction {_show(words[1])}; expected ASC or DESC",
                token=words[1],
            )
        if spec.column in seen:
            raise InvalidFilterError(f"{where}: the field is already ordered by", token=words[0])
        seen.add(spec.column)
        keys.append(OrderKey(name, direction == "DESC"))
    return tuple(keys)
