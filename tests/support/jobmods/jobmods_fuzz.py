"""Jobs for the OpenAPI fuzz (the fuzz server imports it as ``jobmods_fuzz``)."""

from __future__ import annotations

from typing import Any

from assay import job


@job(name="fuzz_echo", max_retries=2)
def fuzz_echo(**params: Any) -> dict[str, Any]:
    """Takes any params and returns them, so fuzzed values reach results too."""
    return params
