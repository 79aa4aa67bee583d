"""Small helpers several packages need the same way: batches of bound parameters and the
"did you mean" hint of an error message."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

__all__ = ["chunks", "did_you_mean"]

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``: one ``IN (...)`` list stays under every
    database's limit on bound parameters."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def did_you_mean(word: str, choices: Iterable[str], *, parenthesized: bool = False) -> str:
    """The hint an error message ends with: ``; did you mean 'x'?`` (or `` (did you mean
    'x'?)``) naming the choice closest to ``word``, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    if not close:
        return ""
    hint = f"did you mean {close[0]!r}?"
    return f" ({hint})" if parenthesized else f"; {hint}"
