"""Who is calling, and what each caller may do.

Callers send ``Authorization: Bearer <token>``: an API token (``assay_…``, role ``admin`` or
``user``, see :mod:`assay.server.tokens`) or the job token of a running job (``assayjob_…``).
When auth is off (the default on a loopback address) every caller is :data:`ANONYMOUS`, an
admin.

With auth off, a web page on any site could still reach the server through the user's browser.
Two rules of the app's gate keep it out: an unsafe request a browser sent from another origin
is refused (:func:`assay.server.ui.csrf.refuse_cross_site`), and so is any request whose
``Host`` names a host this server is not known by (:class:`HostCheck`), which is what a DNS
rebinding attack sends: its page at ``http://evil.example:8400`` whose name now resolves to
127.0.0.1 is same-origin with itself, so only the name gives it away.

=========  =======================================================================================
admin      everything; jobs it submits are owned by its subject; may filter searches by owner
user       submits ``@job(public=True)`` jobs only; sees and cancels only the jobs it owns (any
           other job is a 404, never a 403, so ids do not leak); searches only its own jobs
job        reads its own job, and whatever its scopes name (:func:`require_scope`); everything
           else is 403, and so is any use after it expired
=========  =======================================================================================
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import Depends, Request

from assay.config import Settings
from assay.errors import (
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    UnknownJobError,
)
from assay.jobs.model import Job
from assay.jobs.registry import JobSpec, Registry
from assay.jobs.tokens import JOB_TOKEN_PREFIX, JobTokens, scope
from assay.server.tokens import TokenStore

__all__ = [
    "ANONYMOUS",
    "OPEN_PATHS",
    "PRINCIPAL_KEY",
    "Authenticator",
    "Caller",
    "HostCheck",
    "Principal",
    "auth_enabled",
    "check_job",
    "check_submit",
    "principal",
    "require_admin",
    "require_api_token",
    "require_scope",
    "require_some_scope",
    "search_owner",
    "who_guards",
]

log = logging.getLogger("assay.server")

Role = Literal["admin", "user", "job"]

PRINCIPAL_KEY = "assay.principal"
"""Where the app's gate keeps the caller it authenticated in the ASGI scope."""
_HOST = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<name>[^:\[\]]*))(?::[0-9]{1,5})?")
"""A ``Host`` header: ``name``, ``name:port``, ``[v6 address]`` or ``[v6 address]:port``."""
OPEN_PATHS = frozenset({"/ui/login", "/ui/logout"})
"""Paths anyone may send a body to (the login and logout forms), besides ``/static/…``;
elsewhere a request with a body needs a caller before the body is read."""


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    subject: str | None
    """The API token's subject (the owner recorded on jobs it submits); for a job token, the
    job's owner; None when anonymous."""
    role: Role
    job_id: str | None = None
    """For a job token: the job it was minted for."""
    scopes: frozenset[str] = field(default_factory=frozenset)
    """For a job token: ``name:value`` strings from the job's ``token_scopes``."""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def is_job(self) -> bool:
        return self.role == "job"


ANONYMOUS = Principal(subject=None, role="admin")


def auth_enabled(settings: Settings) -> bool:
    """``settings.auth``, or when it is None: on unless the server listens on loopback only."""
    return settings.auth if settings.auth is not None else not _is_loopback(settings.host)


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another host name
        return False


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal` (one per server)."""

    def __init__(self, settings: Settings, tokens: TokenStore) -> None:
        self.enabled = auth_enabled(settings)
        self.tokens = tokens
        self.job_tokens = JobTokens(self.tokens)
        if not self.enabled and not _is_loopback(settings.host):
            log.warning("server.auth enabled=false host=%s: every caller is admin", settings.host)
        else:
            log.info("server.auth enabled=%s", str(self.enabled).lower())

    def authenticate(self, authorization: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError(
                "this server requires an API token: send 'Authorization: Bearer <token>' "
                "(create one with `assay tokens create`)"
            )
        if token.startswith(JOB_TOKEN_PREFIX):
            claims = self.job_tokens.verify(token)
            return Principal(
                subject=claims.owner, role="job", job_id=claims.job_id, scopes=claims.scopes
            )
        row = self.tokens.verify(token)
        return Principal(subject=row.subject, role=row.role)


class HostCheck:
    """Which ``Host`` headers the server answers (DNS rebinding): checked while auth is off,
    and with auth on only when ``allowed_hosts`` is set.

    Accepted: ``localhost``, any IP address (a rebinding attack needs a name it controls, so
    an address cannot be one), the name the server listens on (``host``), the host of
    ``public_url``, and the names in ``allowed_hosts`` (``*``: any); with any port. A request
    without a ``Host`` header (HTTP/1.0, never a browser's) passes. With
    ``trust_proxy_headers`` the ``X-Forwarded-Host`` a proxy reports is checked as well.
    """

    def __init__(self, settings: Settings) -> None:
        names = {name.strip().lower().rstrip(".") for name in settings.allowed_hosts}
        names.discard("")
        self.active = bool(names) or not auth_enabled(settings)
        self.any = "*" in names
        public = urlsplit(settings.public_url or "").hostname
        own = [settings.host.strip("[]").lower(), public.lower() if public else ""]
        self.names = frozenset({"localhost", *names, *own} - {""})
        self.proxy = settings.trust_proxy_headers

    def refusal(self, headers: Mapping[str, str]) -> str | None:
        """Why a request with these headers is refused, or None when it is not."""
        if not self.active or self.any:
            return None
        sent = [("Host", headers.get("host"))]
        if self.proxy:
            forwarded = (headers.get("x-forwarded-host") or "").split(",")[0].strip()
            sent.append(("X-Forwarded-Host", forwarded or None))
        for header, value in sent:
            if value and not self.allows(value):
                return (
                    f"host not allowed: the {header} header is {value[:200]!r}. This server "
                    "answers requests addressed to localhost, an IP address, the host of "
                    "ASSAY_PUBLIC_URL or a name in ASSAY_ALLOWED_HOSTS (against DNS "
                    "rebinding: a page of another site whose name resolves to this server)"
                )
        return None

    def allows(self, host: str) -> bool:
        """Whether a ``Host`` header value (``name[:port]``, ``[v6][:port]``) is accepted."""
        name = _host_name(host)
        if name in self.names:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


def _host_name(host: str) -> str:
    """The name (or address) in a ``Host`` header, lower case, without its port, the brackets
    of an IPv6 address or a trailing dot; a value of another shape comes back whole."""
    host = host.strip().lower()
    match = _HOST.fullmatch(host)
    if match is None:
        return host
    return match["v6"] if match["v6"] is not None else match["name"].rstrip(".")


def who_guards(path: str) -> Literal["header", "cookie"] | None:
    """How a request with a body to ``path`` is authenticated before the body is read: not at
    all on :data:`OPEN_PATHS` and static files; by the web UI's session cookie on UI pages;
    by the ``Authorization`` header everywhere else (closed by default: a route that reads a
    body from anyone must be added to OPEN_PATHS)."""
    if path in OPEN_PATHS or path.startswith("/static/"):
        return None
    if path.startswith("/ui/"):
        return "cookie"
    return "header"


def principal(request: Request) -> Principal:
    """FastAPI dependency: the caller of this request (401/403 when it may not call at all);
    the one the app's gate authenticated before the body was read, when it did."""
    known: Principal | None = request.scope.get(PRINCIPAL_KEY)
    if known is not None:
        return known
    authenticator: Authenticator | None = getattr(request.app.state, "auth", None)
    if authenticator is None:  # the app is not started (no lifespan): nothing to check against
        raise AuthenticationError("the server is not ready to authenticate requests")
    return authenticator.authenticate(request.headers.get("authorization"))


Caller = Annotated[Principal, Depends(principal)]
"""A route parameter typed ``Caller`` is the authenticated caller of the request."""


# -- checks routes make ---------------------------------------------------------------------------


def require_api_token(caller: Principal, action: str) -> None:
    """403 for a job token: it may only read its own job and use its scopes."""
    if caller.is_job:
        raise PermissionDeniedError(
            f"a job token may not {action} (it may read job {caller.job_id} and its scopes only)"
        )


def require_admin(caller: Principal, action: str) -> None:
    """403 unless the caller is an admin (always true with auth off)."""
    if not caller.is_admin:
        raise PermissionDeniedError(f"only an admin token may {action}")


def require_scope(caller: Principal, name: str, value: Any) -> None:
    """403 unless the caller may act on ``name = value`` (e.g. one experiment).

    Job tokens need the scope ``name:value`` from their job's ``token_scopes``; API tokens and
    the anonymous admin pass (routes apply their own owner rules to them).
    """
    if caller.is_job and scope(name, value) not in caller.scopes:
        held = ", ".join(sorted(caller.scopes)) or "none"
        raise PermissionDeniedError(
            f"the token of job {caller.job_id} is not scoped to {scope(name, value)} "
            f"(its scopes: {held})"
        )


def require_some_scope(caller: Principal, name: str, action: str) -> None:
    """403 for a job token that holds no ``name:…`` scope at all, so can ``action`` nothing,
    whatever the request names: checked before a request body is read."""
    if caller.is_job and not any(s.startswith(f"{name}:") for s in caller.scopes):
        raise PermissionDeniedError(
            f"the token of job {caller.job_id} may not {action}: it holds no {name} scope"
        )


def check_job(caller: Principal, job_id: str, job: Job | None = None) -> None:
    """Whether ``caller`` may see job ``job_id`` (``job``: its row, once read).

    A job token sees its own job only (403 otherwise, checked before the row is read); a user
    sees jobs it owns: any other is reported missing (404), as if it did not exist.
    """
    if caller.is_job:
        if job_id != caller.job_id:
            raise PermissionDeniedError(
                f"a job token may read its own job ({caller.job_id}) only, not {job_id}"
            )
        return
    if job is not None and not caller.is_admin and job.owner != caller.subject:
        raise NotFoundError(f"job {job_id!r} not found")


def check_submit(caller: Principal, registry: Registry, name: str) -> JobSpec:
    """The spec of a job the caller may submit: admins any, users ``@job(public=True)`` ones
    (an unknown name does not list the others to them), job tokens none."""
    require_api_token(caller, "submit jobs")
    if caller.is_admin:
        return registry.get(name)
    try:
        spec = registry.get(name)
    except UnknownJobError:
        raise UnknownJobError(f"unknown job {name!r}") from None
    if not spec.public:
        raise PermissionDeniedError(
            f"job {spec.name!r} is not public: only admins may submit it "
            "(mark it @job(public=True) to let users submit it)"
        )
    return spec


def search_owner(caller: Principal, owner: str | None) -> str | None:
    """The owner filter a search runs with: what an admin asked for; a user's own subject."""
    require_api_token(caller, "search jobs")
    return owner if caller.is_admin else caller.subject
