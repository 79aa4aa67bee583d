"""JSON values every store can hold and every reader can render again.

Values stored as JSON text (job params and results, assessment values, errors and metadata,
scorer definitions, span attributes, trace inputs and outputs) must be *plain JSON*:

- dicts (string keys; integer, float, boolean and null keys are written as JSON writes them),
  lists (or tuples), strings, integers, finite floats, booleans and None;
- at most :data:`MAX_DEPTH` containers deep: deeper values are stored fine but make readers
  fail later (pydantic's serializer stops at 255 levels, ``json`` at the recursion limit);
- valid Unicode: a lone surrogate (``"\\ud800"``) cannot be encoded as UTF-8. A NUL is fine
  inside a JSON value: JSON text holds it escaped (``\\u0000``), never as a NUL byte.

Writers call :func:`check` or :func:`dumps`, an :class:`InvalidRequestError` (HTTP 400) that
names the field and the path inside it. Ingest, where one odd attribute must not cost a whole
batch, calls :func:`to_storable` instead: it keeps what it can and turns the rest into text.
Readers call :func:`loads`, which never fails: a row written before these checks comes back
as :func:`to_storable` would have made it, or, if it is not JSON at all, as its text.

Plain text columns (names, keys, ids, filter strings) are checked by :func:`check_text`: no
NUL (PostgreSQL refuses it in text) and valid Unicode.

Nothing here recurses in Python: every walk keeps its own stack, so no input exhausts the
interpreter's (``json``'s own recursion, in C, is bounded and its RecursionError handled).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from assay.errors import InvalidRequestError

__all__ = [
    "MAX_DEPTH",
    "check",
    "check_text",
    "dumps",
    "is_plain",
    "loads",
    "loads_shallow",
    "to_storable",
]

MAX_DEPTH = 64
"""The most containers (objects and arrays) a stored JSON value may nest."""

_MAX_PATH_CHARS = 80
_SURROGATE = re.compile("[\ud800-\udfff]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_INT_BITS = 14_000
"""Python refuses to print integers of more than 4,300 digits (about 14,300 bits)."""

# A path inside a value, innermost key last: (parent path, key), or None for the value itself.
_Path = tuple[Any, Any] | None


def check(value: Any, what: str) -> None:
    """Raise :class:`InvalidRequestError` naming ``what`` and the path inside it unless
    ``value`` is plain JSON (see the module docstring)."""
    found = _problem(value)
    if found is not None:
        path, message = found
        raise InvalidRequestError(f"{what}{_render(path)} {message}")


def is_plain(value: Any) -> bool:
    """Whether :func:`check` would accept ``value``."""
    return _problem(value) is None


def dumps(value: Any, what: str, *, sort_keys: bool = False) -> str:
    """``value`` as compact JSON text (non-ASCII kept as it is), after :func:`check`."""
    check(value, what)
    try:
        return json.dumps(
            value, allow_nan=False, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys
        )
    except (TypeError, ValueError) as exc:  # keys of mixed types with sort_keys
        raise InvalidRequestError(f"{what} must be JSON: {exc}") from None


def check_text(text: str, what: str) -> None:
    """Raise :class:`InvalidRequestError` naming ``what`` unless ``text`` can be stored in
    (and compared with) a text column of every database: no NUL, valid Unicode."""
    if "\x00" in text:
        raise InvalidRequestError(f"{what} must not contain a NUL character")
    if not _encodable(text):
        raise InvalidRequestError(f"{what} must be valid Unicode (it holds a lone surrogate)")


def to_storable(value: Any) -> Any:
    """``value`` made plain JSON, keeping all it can: a container deeper than
    :data:`MAX_DEPTH` becomes its JSON text, a lone surrogate U+FFFD, NaN or Infinity (or any
    other non-JSON value) its ``str()``. A value that is plain already is returned as it is."""
    if _problem(value) is None:
        return value
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 0)]
    while stack:
        item, parent, key, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth >= MAX_DEPTH:
                parent[key] = _as_text(item)
                continue
            out: dict[Any, Any] | list[Any]
            if isinstance(item, dict):
                out = {}
                for child_key, child in item.items():
                    storable_key = _storable_key(child_key)
                    out[storable_key] = None
                    stack.append((child, out, storable_key, depth + 1))
            else:
                out = [None] * len(item)
                stack.extend((child, out, i, depth + 1) for i, child in enumerate(item))
            parent[key] = out
        else:
            parent[key] = _storable_scalar(item)
    return root[0]


def loads(text: str | None) -> Any:
    """A stored JSON text back to its value, for reading: never fails. Text that is not JSON
    comes back as the text; a value that is not plain JSON as :func:`to_storable` makes it."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return _clean(text)
    return to_storable(value)


def loads_shallow(text: str | bytes, max_depth: int) -> Any:
    """``json.loads`` of a small untrusted text (a page token) that must nest at most
    ``max_depth`` containers deep: ValueError if it nests deeper or does not parse, checked
    before parsing so that no crafted text reaches the parser's recursion."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                raise ValueError(f"nests deeper than {max_depth} levels")
        elif char in "]}":
            depth -= 1
    return json.loads(text)


# -- the walk ----------------------------------------------------------------------------------


def _problem(value: Any) -> tuple[_Path, str] | None:
    """The first thing (depth-first) that keeps ``value`` from being plain JSON: its path and
    what is wrong there; None if there is nothing."""
    if _plain_quick(value):
        return None
    stack: list[tuple[Any, int, _Path]] = [(value, 0, None)]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return path, "must be valid Unicode (it holds a lone surrogate)"
        elif item is None or isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if item.bit_length() > _MAX_INT_BITS:
                return path, f"must be JSON: an integer of {item.bit_length()} bits is too large"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return path, "must be JSON: NaN and Infinity are not"
        elif isinstance(item, dict | list | tuple):
            if depth >= MAX_DEPTH:
                return path, f"nests deeper than {MAX_DEPTH} levels"
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str):
                        if not _encodable(key):
                            return (
                                path,
                                key,
                            ), "must be valid Unicode (a key holds a lone surrogate)"
                    elif key is not None and not isinstance(key, int | float):
                        return path, f"must be JSON: {type(key).__name__!r} keys are not"
                    stack.append((child, depth + 1, (path, key)))
            else:
                stack.extend((child, depth + 1, (path, i)) for i, child in enumerate(item))
        else:
            return path, f"must be JSON: {type(item).__name__!r} values are not"
    return None


def _plain_quick(value: Any) -> bool:
    """True if ``value`` is plain JSON made of the exact built-in types (what ``json.loads``
    gives): one level at a time, no paths kept, so that the common case costs little. False
    does not mean it is not plain (a subclass, say): :func:`_problem` then looks closer."""
    level = [value]
    depth = 0
    while level:
        below: list[Any] = []
        for item in level:
            kind = type(item)
            if kind is str:
                if not item.isascii() and not _encodable(item):
                    return False
            elif kind is dict:
                if depth >= MAX_DEPTH:
                    return False
                for key in item:
                    if type(key) is not str or not (key.isascii() or _encodable(key)):
                        return False
                below.extend(item.values())
            elif kind is list:
                if depth >= MAX_DEPTH:
                    return False
                below.extend(item)
            elif kind is float:
                if not math.isfinite(item):
                    return False
            elif kind is int:
                if item.bit_length() > _MAX_INT_BITS:
                    return False
            elif item is not None and kind is not bool:
                return False
        level = below
        depth += 1
    return True


def _render(path: _Path) -> str:
    """`` at a.b[3]["odd key"]`` for a path, nothing for the value itself."""
    keys: list[Any] = []
    while path is not None:
        path, key = path
        keys.append(key)
    if not keys:
        return ""
    parts = []
    for key in reversed(keys):
        if isinstance(key, int) and not isinstance(key, bool):
            parts.append(f"[{key}]")
        elif isinstance(key, str) and _IDENTIFIER.fullmatch(key):
            parts.append(f".{key}")
        else:
            parts.append(f"[{json.dumps(key if isinstance(key, str) else str(key))}]")
    text = "".join(parts).removeprefix(".")
    if len(text) > _MAX_PATH_CHARS:
        text = text[:_MAX_PATH_CHARS] + "…"
    return f" at {text}"


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean(text: str) -> str:
    return text if _encodable(text) else _SURROGATE.sub("\ufffd", text)


def _as_text(item: Any) -> str:
    """A container too deep to keep, as its JSON text."""
    try:
        return _clean(json.dumps(item, ensure_ascii=False, default=str))
    except (TypeError, ValueError, RecursionError):  # circular, or beyond json's recursion
        return f"<a value nested deeper than {MAX_DEPTH} levels>"


def _storable_key(key: Any) -> Any:
    if isinstance(key, str):
        return _clean(key)
    if key is None or isinstance(key, bool | int | float):
        return key
    return _storable_scalar(key)


def _storable_scalar(item: Any) -> Any:
    if isinstance(item, str):
        return _clean(item)
    if item is None or isinstance(item, bool):
        return item
    if isinstance(item, int):
        return item if item.bit_length() <= _MAX_INT_BITS else f"<{item.bit_length()}-bit integer>"
    if isinstance(item, float):
        return item if math.isfinite(item) else str(item)
    return _clean(str(item))
