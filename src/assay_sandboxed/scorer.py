"""Runs one custom code scorer on one item, inside the sandbox child.

The scorer's source defines ``score(inputs, outputs, trace)``; it may return a bool, a number, a
string, or a dict (``{"value": ..., "rationale": ...}`` is read as such, any other dict is the
value itself).
"""

from __future__ import annotations

from typing import Any


def run(code: str, inputs: Any, outputs: Any, trace: Any) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "assay_custom_scorer"}
    exec(compile(code, "<custom scorer>", "exec"), namespace)
    result = namespace["score"](inputs, outputs, trace)
    if isinstance(result, dict) and "value" in result:
        rationale = result.get("rationale")
        return {
            "value": result["value"],
            "rationale": None if rationale is None else str(rationale),
        }
    if result is None or isinstance(result, bool | int | float | str | dict | list):
        return {"value": result, "rationale": None}
    raise TypeError(
        f"score() returned {type(result).__name__}; return a bool, number, string or dict"
    )
