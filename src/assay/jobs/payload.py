"""Job params and results are plain JSON: finite numbers, valid Unicode, bounded nesting.

Anything else would be stored but could not be rendered again (a lone surrogate, NaN, or
nesting deep enough to exhaust a reader's recursion), so it is refused where it comes in.
The checks are :mod:`assay.jsonvalue`'s, shared with every other stored JSON value.
"""

from __future__ import annotations

from typing import Any

from assay.errors import InvalidRequestError
from assay.jsonvalue import MAX_DEPTH, dumps

__all__ = ["MAX_DEPTH", "dumps_plain"]


def dumps_plain(value: Any, what: str) -> str:
    """``value`` as JSON text; ValueError naming ``what`` (and where in it) if it is not
    plain JSON."""
    try:
        return dumps(value, what)
    except InvalidRequestError as exc:
        raise ValueError(str(exc)) from None
