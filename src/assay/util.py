"""Small generic helpers shared by several packages."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

__all__ = ["chunks"]

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``: bound the parameters of one
    statement (``IN`` lists, multi-row inserts) whatever the batch size."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
