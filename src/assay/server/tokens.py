"""API tokens; every SQL statement on the ``api_tokens`` table.

API tokens look like ``assay_<43 url-safe characters>``. The plaintext is returned once, by
:meth:`TokenStore.create`; only its SHA-256 is stored. Expiry is checked against the database
clock, like every other time in the store. Job tokens are :mod:`assay.jobs.tokens`.
"""

from __future__ import annotations

import hashlib
import logging
import secrets as random_secrets
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import sqlalchemy as sa

from assay.db.tables import api_tokens
from assay.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
)
from assay.jobs.tokens import SecretStore

if TYPE_CHECKING:
    pass

__all__ = [
    "API_TOKEN_PREFIX",
    "ApiToken",
    "TokenRole",
    "TokenStore",
    "hash_token",
]

log = logging.getLogger("assay.server.tokens")
T = TypeVar("T")

TokenRole = Literal["admin", "user"]
API_TOKEN_PREFIX = "assay_"
JOB_TOKEN_PREFIX = "assayjob_"
JOB_TOKEN_KEY = "job_token_key"
"""The name of the job-token signing key in ``secrets``."""
_SIGNATURE_DOMAIN = b"assay-job-token-v1."


def hash_token(token: str) -> str:
    """The stored form of an API token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ApiToken:
    """One row of ``api_tokens`` (never the token itself)."""

    id: str
    subject: str
    role: TokenRole
    created_at_ms: int
    expires_at_ms: int | None
    revoked_at_ms: int | None


class TokenStore(SecretStore):
    """API tokens (and, inherited, the server secrets) in one database."""

    # -- API tokens ----------------------------------------------------------------------------

    def create(
        self, subject: str, role: TokenRole, *, expires_in_s: float | None = None
    ) -> tuple[ApiToken, str]:
        """A new API token: its row and the plaintext, which is not kept anywhere."""
        subject = subject.strip()
        if not subject or len(subject) > 200:
            raise InvalidRequestError("a token's subject must be 1 to 200 characters")
        if role not in ("admin", "user"):
            raise InvalidRequestError(f"role must be 'admin' or 'user', not {role!r}")
        if expires_in_s is not None and expires_in_s <= 0:
            raise InvalidRequestError("a token's lifetime must be positive")
        plaintext = API_TOKEN_PREFIX + random_secrets.token_urlsafe(32)
        token_id = str(uuid.uuid4())
        expires = (
            None
            if expires_in_s is None
            else self._now + sa.literal(int(expires_in_s * 1000), sa.BigInteger)
        )

        def body(conn: sa.Connection) -> ApiToken:
            conn.execute(
                api_tokens.insert().values(
                    id=token_id,
                    token_hash=hash_token(plaintext),
                    subject=subject,
                    role=role,
                    created_at_ms=self._now,
                    expires_at_ms=expires,
                )
            )
            row = conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).one()
            return _to_token(row)

        return self._tx(body), plaintext

    def verify(self, plaintext: str) -> ApiToken:
        """The token's row; :class:`AuthenticationError` if unknown, revoked or expired."""

        def body(conn: sa.Connection) -> tuple[Any, int]:
            query = sa.select(api_tokens, self._now.label("now_ms")).where(
                api_tokens.c.token_hash == hash_token(plaintext)
            )
            row = conn.execute(query).first()
            return row, (int(row.now_ms) if row else 0)

        row, now_ms = self._tx(body, write=False)
        if row is None:
            raise AuthenticationError("unknown API token")
        token = _to_token(row)
        if token.revoked_at_ms is not None:
            raise AuthenticationError(f"API token {token.id} was revoked")
        if token.expires_at_ms is not None and token.expires_at_ms <= now_ms:
            raise AuthenticationError(f"API token {token.id} expired")
        return token

    def list_tokens(self) -> list[ApiToken]:
        """Every token, oldest first (revoked and expired ones included)."""

        def body(conn: sa.Connection) -> list[ApiToken]:
            query = sa.select(api_tokens).order_by(api_tokens.c.created_at_ms, api_tokens.c.id)
            return [_to_token(row) for row in conn.execute(query)]

        return self._tx(body, write=False)

    def revoke(self, token_id: str) -> ApiToken:
        """Revoke a token (at once, on every replica); revoking twice keeps the first time."""

        def body(conn: sa.Connection) -> ApiToken | None:
            conn.execute(
                api_tokens.update()
                .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at_ms.is_(None))
                .values(revoked_at_ms=self._now)
            )
            row = conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).first()
            return _to_token(row) if row else None

        token = self._tx(body)
        if token is None:
            raise NotFoundError(f"API token {token_id!r} not found")
        return token


def _to_token(row: Any) -> ApiToken:
    return ApiToken(
        id=row.id,
        subject=row.subject,
        role=row.role,
        created_at_ms=int(row.created_at_ms),
        expires_at_ms=None if row.expires_at_ms is None else int(row.expires_at_ms),
        revoked_at_ms=None if row.revoked_at_ms is None else int(row.revoked_at_ms),
    )
