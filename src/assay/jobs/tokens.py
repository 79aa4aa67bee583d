"""Job tokens: each execution of a job gets a short-lived token to call the API back.

A token looks like ``assayjob_<payload>.<signature>``: the payload (job id, attempt, owner,
scopes, expiry in epoch milliseconds) is signed with HMAC-SHA256 under a key kept in the
``secrets`` table, created on first use and shared by every replica and worker. Tokens are not
stored; their expiry is checked against the verifier's wall clock, so hosts need synchronised
clocks (NTP), as with any signed token.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import secrets as random_secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from assay.db.base import SqlStore
from assay.db.tables import secrets
from assay.errors import AssayError, AuthenticationError, PermissionDeniedError

if TYPE_CHECKING:
    from assay.jobs.model import Job
    from assay.jobs.registry import JobSpec

__all__ = [
    "JOB_TOKEN_KEY",
    "JOB_TOKEN_PREFIX",
    "JobTokenClaims",
    "JobTokens",
    "SecretStore",
    "scope",
]

log = logging.getLogger("assay.tokens")

JOB_TOKEN_PREFIX = "assayjob_"
JOB_TOKEN_KEY = "job_token_key"
"""The name of the job-token signing key in ``secrets``."""
_SIGNATURE_DOMAIN = b"assay-job-token-v1."


def scope(name: str, value: Any) -> str:
    """The scope string for one parameter value: ``experiment_id:<value>``."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return f"{name}:{text}"


@dataclass(frozen=True)
class JobTokenClaims:
    """What a verified job token says."""

    job_id: str
    attempt: int
    owner: str | None
    scopes: frozenset[str]
    expires_at_ms: int


class SecretStore(SqlStore):
    """Server-wide secrets shared by every replica; all SQL on the ``secrets`` table."""

    def secret(self, name: str) -> str:
        """The secret ``name``, created (random) on first use.

        Race-safe on every database: concurrent first callers each try one INSERT; the primary
        key lets exactly one win, and everyone then reads the winner's value.
        """
        select = sa.select(secrets.c.value).where(secrets.c.name == name)
        value = self._tx(lambda conn: conn.execute(select).scalar(), write=False)
        if value is None:
            fresh = random_secrets.token_urlsafe(48)
            self._tx(lambda conn: self._insert_if_absent(conn, secrets, name=name, value=fresh))
            value = self._tx(lambda conn: conn.execute(select).scalar_one(), write=False)
        return str(value)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class JobTokens:
    """Mints and verifies job tokens; the signing key is read from ``secrets`` once."""

    def __init__(self, store: SecretStore) -> None:
        self.store = store
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def _signing_key(self) -> bytes:
        with self._lock:
            if self._key is None:
                self._key = self.store.secret(JOB_TOKEN_KEY).encode()
            return self._key

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._signing_key(), _SIGNATURE_DOMAIN + payload.encode(), "sha256")
        return _b64(mac.digest())

    def mint(
        self,
        job_id: str,
        attempt: int,
        owner: str | None,
        scopes: Iterable[str],
        expires_at_ms: int,
    ) -> str:
        """A token for one execution of one job."""
        claims = {
            "job": job_id,
            "attempt": attempt,
            "owner": owner,
            "scopes": sorted(scopes),
            "exp": expires_at_ms,
        }
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{JOB_TOKEN_PREFIX}{payload}.{self._sign(payload)}"

    def mint_for(self, job: Job, spec: JobSpec, ttl_s: float) -> str | None:
        """The token of one execution: scoped by the job's ``token_scopes``, valid for
        ``ttl_s`` but never past the job's deadline. None (logged) if the store is down."""
        scopes = [scope(name, job.params[name]) for name in spec.token_scopes if name in job.params]
        expires_at_ms = int((time.time() + min(ttl_s, job.timeout)) * 1000)
        try:
            return self.mint(job.id, job.attempt, job.owner, scopes, expires_at_ms)
        except AssayError:
            log.warning("job.token_failed id=%s", job.id, exc_info=True)
            return None

    def verify(self, token: str, *, now_ms: int | None = None) -> JobTokenClaims:
        """The claims of a genuine token: :class:`AuthenticationError` if it is malformed or
        not signed by this store's key; :class:`PermissionDeniedError` once it expired."""
        body = token.removeprefix(JOB_TOKEN_PREFIX)
        payload, dot, signature = body.partition(".")
        if not token.startswith(JOB_TOKEN_PREFIX) or not dot:
            raise AuthenticationError("malformed job token")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            raise AuthenticationError("job token signature does not match")
        try:
            claims = json.loads(_unb64(payload))
            result = JobTokenClaims(
                job_id=str(claims["job"]),
                attempt=int(claims["attempt"]),
                owner=None if claims["owner"] is None else str(claims["owner"]),
                scopes=frozenset(str(s) for s in claims["scopes"]),
                expires_at_ms=int(claims["exp"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise AuthenticationError("malformed job token") from None
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if result.expires_at_ms <= now:
            raise PermissionDeniedError(
                f"job token of job {result.job_id} (attempt {result.attempt}) expired"
            )
        return result
