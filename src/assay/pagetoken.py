"""Opaque page tokens: a small JSON value, base64url without padding.

Every paged listing (traces, tracking, MLflow's offset pages) writes its position this way and
reads it back with :func:`decode_token`, which refuses a deep or malformed token before parsing.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from assay.jsonvalue import loads_shallow

__all__ = ["decode_token", "encode_token"]


def encode_token(payload: Any) -> str:
    """``payload`` (JSON-serializable) as a page token."""
    text = json.dumps(payload, ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_token(token: str, max_depth: int) -> Any:
    """The payload of a token made by :func:`encode_token` (padded or not). ValueError for
    anything else, including a payload nesting deeper than ``max_depth`` (checked before it is
    parsed: the parser recurses)."""
    return loads_shallow(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)), max_depth)
