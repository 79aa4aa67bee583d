"""Job params and results are plain JSON: finite numbers, valid Unicode, bounded nesting.

Anything else would be stored but could not be rendered again (a lone surrogate, NaN, or
nesting deep enough to exhaust a reader's recursion), so it is refused where it comes in.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_DEPTH", "dumps_plain"]

MAX_DEPTH = 64


def dumps_plain(value: Any, what: str) -> str:
    """``value`` as JSON text; ValueError naming ``what`` if it is not plain JSON."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth > MAX_DEPTH:
                raise ValueError(f"{what} nest deeper than {MAX_DEPTH} levels")
            stack.extend(
                (child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
            )
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid Unicode (found a lone surrogate)") from None
    except ValueError:
        raise ValueError(f"{what} must be JSON: NaN and Infinity are not") from None
    except TypeError as exc:
        raise ValueError(f"{what} must be JSON: {exc}") from None
    return text
