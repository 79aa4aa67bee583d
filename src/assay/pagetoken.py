"""Opaque page tokens: a small JSON value, base64url without padding.

Every paged listing (jobs, traces, tracking, MLflow's offset pages) writes its position this way
and reads it back with :func:`decode_token`, which refuses a deep or malformed token before
parsing. A keyset position of plain columns (``[created_ms, id]``) is :func:`encode_parts`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from assay.errors import InvalidRequestError
from assay.jsonvalue import loads_shallow

__all__ = ["decode_parts", "decode_token", "encode_parts", "encode_token"]


def encode_token(payload: Any) -> str:
    """``payload`` (JSON-serializable) as a page token."""
    text = json.dumps(payload, ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_token(token: str, max_depth: int) -> Any:
    """The payload of a token made by :func:`encode_token` (padded or not). ValueError for
    anything else, including a payload nesting deeper than ``max_depth`` (checked before it is
    parsed: the parser recurses)."""
    return loads_shallow(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)), max_depth)


def encode_parts(*parts: int | str) -> str:
    """A keyset position (the sort columns of a page's last row) as a page token."""
    return encode_token(list(parts))


def decode_parts(token: str, *types: type) -> tuple[Any, ...]:
    """The parts of a token made by :func:`encode_parts`, checked against ``types``: an int
    must fit a BIGINT and a str hold no NUL (the databases refuse either as a bound).
    InvalidRequestError for anything else."""
    try:
        parts = decode_token(token, 1)
        if not isinstance(parts, list) or len(parts) != len(types):
            raise ValueError(token)
        for part, kind in zip(parts, types, strict=True):
            if type(part) is not kind:
                raise ValueError(token)
            if isinstance(part, int) and not -(2**63) <= part < 2**63:
                raise ValueError(token)
            if isinstance(part, str) and "\x00" in part:
                raise ValueError(token)
        return tuple(parts)
    except (ValueError, TypeError):
        raise InvalidRequestError(f"invalid page_token {token!r}") from None
