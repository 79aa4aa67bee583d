"""Checks every request gets before its route runs (installed as an app-wide dependency).

:func:`refuse_nul`: a NUL character in the path or in a query parameter is a 400 naming where
it is. PostgreSQL can neither store nor compare text holding a NUL byte, so such a value would
otherwise reach the store and come back as a 503 (or be quietly "not found" on SQLite and
MySQL). Bodies are checked where they are read: a NUL inside a JSON value is fine (JSON text
holds it escaped, ``\\u0000``), and text fields are checked by their stores.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request

from assay.errors import InvalidRequestError

__all__ = ["install", "refuse_nul"]


def refuse_nul(request: Request) -> None:
    """InvalidRequestError naming the path parameter or query parameter that holds a NUL."""
    if "\x00" in request.scope["path"]:
        for key, value in request.path_params.items():
            if "\x00" in str(value):
                raise InvalidRequestError(
                    f"path parameter {key!r} must not contain a NUL character (%00)"
                )
        raise InvalidRequestError("the path must not contain a NUL character (%00)")
    for key, value in request.query_params.multi_items():
        if "\x00" in key:
            raise InvalidRequestError(
                f"query parameter name {key!r} must not contain a NUL character (%00)"
            )
        if "\x00" in value:
            raise InvalidRequestError(
                f"query parameter {key!r} must not contain a NUL character (%00)"
            )


def install(app: FastAPI) -> None:
    """Run the checks on every route of ``app`` included after this call."""
    app.router.dependencies.append(Depends(refuse_nul))
