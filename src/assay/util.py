"""Small helpers several packages need the same way: batches of bound parameters, the
"did you mean" hint of an error message, and the garbage collector of a long-running process."""

from __future__ import annotations

import difflib
import gc
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["GC_YOUNG_THRESHOLD", "chunks", "collector_for_serving", "did_you_mean"]

GC_YOUNG_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation while a server or worker
runs (Python's default is 700)."""

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


@contextmanager
def collector_for_serving() -> Iterator[None]:
    """Python's cyclic garbage collector set for a server's or a worker's main work, and as it
    was again after.

    What start-up made (modules, the app, the tables' metadata, the stores: a few hundred
    thousand objects that live as long as the process) is moved where collections never
    traverse it (``gc.freeze``), and the youngest generation is collected every
    GC_YOUNG_THRESHOLD allocations. An OTLP request of 500 spans makes about ten thousand
    containers; with the defaults the collector ran over ten times per request, and its full
    collections walked the whole heap. This cut the server's CPU per ingested span by a fifth
    and a worker's CPU per no-op job by a tenth (bench/README.md). Only cyclic garbage is
    freed later than before, and it still is."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
