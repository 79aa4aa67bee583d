"""The error body every ``/api/v1`` route answers with (:mod:`assay.server.errors` makes it)."""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["ErrorBody", "ErrorOut"]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody
