"""Jobs for the auth tests: public and admin-only ones, and jobs that call the API back."""

from __future__ import annotations

import os
from typing import Any

import httpx

from assay import current_job, job


@job(name="a_public", public=True)
def a_public(n: int = 0) -> int:
    return n


@job(name="a_private")
def a_private(n: int = 0) -> int:
    return n


def _call_back(other_job: str) -> dict[str, Any]:
    """Uses this execution's job token on the API: own job, another job, search, submit."""
    ctx = current_job()
    if not (ctx.api_url and ctx.api_token):
        raise RuntimeError(f"no API address or token: {ctx.api_url!r} {ctx.api_token!r}")
    headers = {"Authorization": f"Bearer {ctx.api_token}"}
    with httpx.Client(base_url=f"{ctx.api_url}/api/v1", headers=headers, timeout=10) as api:
        own = api.get(f"/jobs/{ctx.job_id}")
        return {
            "token": ctx.api_token,
            "env_token": os.environ.get("ASSAY_API_TOKEN"),
            "env_url": os.environ.get("ASSAY_API_URL"),
            "own": own.status_code,
            "own_id": own.json().get("id"),
            "other": api.get(f"/jobs/{other_job}").status_code,
            "missing": api.get("/jobs/no-such-job").status_code,
            "search": api.get("/jobs").status_code,
            "submit": api.post("/jobs", json={"name": "a_public"}).status_code,
            "cancel_own": api.post(f"/jobs/{ctx.job_id}/cancel").status_code,
        }


@job(name="a_callback", public=True, token_scopes=["experiment_id"])
def a_callback(experiment_id: str, other_job: str) -> dict[str, Any]:
    return _call_back(other_job)


@job(name="a_callback_inline", public=True, executor="inline")
def a_callback_inline(other_job: str) -> dict[str, Any]:
    return _call_back(other_job)


@job(name="a_token", token_scopes=["experiment_id", "run"])
def a_token(experiment_id: str, run: int = 1, other: str = "") -> str | None:
    """Returns this execution's token (for direct-backend tests)."""
    return current_job().api_token


@job(name="a_callback_venv", public=True, python_env={"pip": []})
def a_callback_venv(other_job: str) -> dict[str, Any]:
    return _call_back(other_job)
