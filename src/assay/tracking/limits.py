"""Limits on what one tracking request may carry, and the checks that enforce them.

Every check raises :class:`InvalidRequestError` (HTTP 400) with a message that names the limit
crossed, e.g. ``1001 metrics in one request: over the limit of 1000 metrics per request``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from assay.errors import InvalidRequestError
from assay.tracking.model import Metric, RunInput

__all__ = [
    "MAX_ENTITIES_PER_BATCH",
    "MAX_INPUTS_PER_REQUEST",
    "MAX_KEY_CHARS",
    "MAX_METRICS_PER_BATCH",
    "MAX_NAME_CHARS",
    "MAX_PARAMS_TAGS_PER_BATCH",
    "MAX_PARAM_VALUE_CHARS",
    "MAX_SOURCE_CHARS",
    "MAX_TAG_VALUE_CHARS",
    "check_batch",
    "check_inputs",
    "check_name",
    "check_tags",
    "check_time",
]

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
"""Params and tags together, in one request."""
MAX_ENTITIES_PER_BATCH = 1000
"""Metrics, params and tags together, in one request."""
MAX_KEY_CHARS = 250
MAX_PARAM_VALUE_CHARS = 6000
MAX_TAG_VALUE_CHARS = 8000
MAX_NAME_CHARS = 250
"""Experiment, run and dataset names, and dataset digests."""
MAX_INPUTS_PER_REQUEST = 100
MAX_SOURCE_CHARS = 8000
# Steps and timestamps are BIGINT columns.
_MAX_BIGINT = 2**63 - 1


def _show(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _check_text(what: str, text: object, limit: int, per: str) -> None:
    """``text`` is a string storable on every database (no NUL, valid Unicode) of at most
    ``limit`` characters; ``per`` names the limit in the message."""
    if not isinstance(text, str):
        raise InvalidRequestError(f"{what} must be a string, not {type(text).__name__}")
    if len(text) > limit:
        raise InvalidRequestError(
            f"{what} {_show(text)} is {len(text)} characters: over the limit of {limit} "
            f"characters per {per}"
        )
    if "\x00" in text:
        raise InvalidRequestError(f"{what} {_show(text)} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{what} {_show(text)} is not valid Unicode") from None


def check_name(what: str, name: object, limit: int = MAX_NAME_CHARS, per: str = "name") -> None:
    """A name or key: 1 to ``limit`` characters, without leading or trailing whitespace (MySQL
    compares strings ignoring trailing spaces, so it could not tell such names apart)."""
    _check_text(what, name, limit, per)
    assert isinstance(name, str)
    if not name.strip():
        raise InvalidRequestError(f"{what} must not be empty")
    if name != name.strip():
        raise InvalidRequestError(f"{what} {_show(name)} starts or ends with whitespace")


def _check_value(what: str, key: str, value: object, limit: int) -> None:
    _check_text(f"{what} of {_show(key)}", value, limit, what)


def check_tags(tags: Mapping[str, str]) -> None:
    """Tag keys and values (experiment or run tags)."""
    for key, value in tags.items():
        check_name("tag key", key, MAX_KEY_CHARS, "key")
        _check_value("tag value", key, value, MAX_TAG_VALUE_CHARS)


def check_time(what: str, ms: object) -> None:
    """An epoch-milliseconds time, or None (the database clock)."""
    if ms is None:
        return
    if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms <= _MAX_BIGINT:
        raise InvalidRequestError(f"{what} must be milliseconds since the epoch, not {ms!r}")


def _check_metric(metric: Metric) -> None:
    check_name("metric key", metric.key, MAX_KEY_CHARS, "key")
    name, value, step = _show(metric.key), metric.value, metric.step
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"metric {name}: the value must be a number, not {value!r}")
    try:
        finite = math.isfinite(float(value))
    except OverflowError:
        finite = False
    if not finite:
        raise InvalidRequestError(f"metric {name}: the value must be finite, not {value!r}")
    if isinstance(step, bool) or not isinstance(step, int) or abs(step) > _MAX_BIGINT:
        raise InvalidRequestError(f"metric {name}: the step must be a 64-bit integer")
    check_time(f"metric {name}: the timestamp", metric.timestamp_ms)


def check_batch(
    metrics: Sequence[Metric], params: Mapping[str, str], tags: Mapping[str, str]
) -> None:
    """The limits of one ``log_batch``: the counts first, then each key and value."""
    if len(metrics) > MAX_METRICS_PER_BATCH:
        raise InvalidRequestError(
            f"{len(metrics)} metrics in one request: over the limit of "
            f"{MAX_METRICS_PER_BATCH} metrics per request"
        )
    if len(params) + len(tags) > MAX_PARAMS_TAGS_PER_BATCH:
        raise InvalidRequestError(
            f"{len(params)} params and {len(tags)} tags in one request: over the limit of "
            f"{MAX_PARAMS_TAGS_PER_BATCH} params and tags (together) per request"
        )
    total = len(metrics) + len(params) + len(tags)
    if total > MAX_ENTITIES_PER_BATCH:
        raise InvalidRequestError(
            f"{total} metrics, params and tags in one request: over the limit of "
            f"{MAX_ENTITIES_PER_BATCH} entities per request"
        )
    for metric in metrics:
        _check_metric(metric)
    for key, value in params.items():
        check_name("param key", key, MAX_KEY_CHARS, "key")
        _check_value("param value", key, value, MAX_PARAM_VALUE_CHARS)
    check_tags(tags)


def check_inputs(inputs: Sequence[RunInput]) -> None:
    """The datasets of one ``log_inputs``."""
    if len(inputs) > MAX_INPUTS_PER_REQUEST:
        raise InvalidRequestError(
            f"{len(inputs)} inputs in one request: over the limit of "
            f"{MAX_INPUTS_PER_REQUEST} inputs per request"
        )
    for item in inputs:
        check_name("dataset name", item.name)
        check_name(f"digest of dataset {_show(item.name)}", item.digest, MAX_NAME_CHARS, "digest")
        if item.source is not None:
            _check_value("source", item.name, item.source, MAX_SOURCE_CHARS)
