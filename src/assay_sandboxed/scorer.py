"""Runs one custom code scorer on a list of items, inside one sandbox child.

The scorer's source defines ``score(inputs, outputs, trace)``; it may return a bool, a number, a
string, or a dict (``{"value": ..., "rationale": ...}`` is read as such, any other dict is the
value itself). Each item gets its own result or error, and its own time limit (``SIGALRM``,
which interrupts Python code and sleeps), so one bad item fails alone. The run stops once
``max_timeouts`` items have timed out (the parent retries the rest later): one slow item is an
accident, more mean a slow scorer, and a chunk should cost a few time limits, not one per item.

Before each item the run reports ``progress(index)``, so the parent knows which item is running
and can stop the sandbox when an item overruns and the alarm did not end it (code that catches
the alarm's exception, or blocks in C, where signals wait).
"""

from __future__ import annotations

import signal
from typing import Any

_MAX_ERROR = 500


class ItemTimeout(Exception):
    pass


def run(
    code: str, items: list[dict[str, Any]], item_timeout_s: float, max_timeouts: int = 2
) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "assay_custom_scorer"}
    exec(compile(code, "<custom scorer>", "exec"), namespace)
    score = namespace["score"]

    def expired(_signum: int, _frame: object) -> None:
        raise ItemTimeout(f"timed out after {item_timeout_s:g}s")

    import assay  # in the sandbox: the stand-in, whose progress reports go to the parent

    job = assay.current_job()
    signal.signal(signal.SIGALRM, expired)
    results: list[dict[str, Any]] = []
    timeouts = 0
    for index, item in enumerate(items):
        job.progress(index, len(items))
        signal.setitimer(signal.ITIMER_REAL, item_timeout_s)
        try:
            results.append(_result(score(item["inputs"], item["outputs"], item["trace"])))
        except ItemTimeout as exc:
            results.append({"error": str(exc), "timeout": True})
            timeouts += 1
            if timeouts >= max_timeouts:
                break
        except Exception as exc:
            results.append({"error": f"{type(exc).__name__}: {exc}"[:_MAX_ERROR]})
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return {"results": results}


def _result(result: Any) -> dict[str, Any]:
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
