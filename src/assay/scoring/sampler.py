"""Deterministic sampling: whether a trace (or session) is in a scorer's sample.

Each trace id maps to one uniform number in [0, 1) (the first 64 bits of its SHA-256); a trace
is in the sample of every scorer whose rate is above that number. So the decision is the same on
every replica and every retry, the realised rate converges on the configured one (it is a
Bernoulli draw per trace with a well-mixed hash), and a trace in a low-rate scorer's sample is in
every higher-rate scorer's sample too (one judge at 1 % and another at 10 % overlap fully on the
1 %, which makes their results comparable).
"""

from __future__ import annotations

import hashlib

__all__ = ["sampled", "uniform"]

_SCALE = float(2**64)


def uniform(target_id: str) -> float:
    """The trace's (or session's) number in [0, 1)."""
    digest = hashlib.sha256(target_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def sampled(target_id: str, rate: float) -> bool:
    """Whether ``target_id`` is in the sample of a scorer with ``rate`` (0 to 1)."""
    return rate >= 1.0 or (rate > 0.0 and uniform(target_id) < rate)
