"""Cross-site request forgery: the web UI acts only on forms its own pages sent.

Every UI request that may change something (any method but GET, HEAD, OPTIONS and TRACE:
login, logout, submit, cancel, the scorer forms) must name where it was sent from, and that
must be this server: the ``Origin`` header, or, when a browser sent none, the origin of the
``Referer``. Anything else is refused with 403 "cross-site request refused" before the route
runs, through the one error mapping (:mod:`assay.server.errors`), so nothing changes.

The rest of the server (the REST, MLflow and OTLP APIs) gets the lenient form of the rule,
from the app's gate before any body is read (:func:`refuse_cross_site`): an unsafe request
whose ``Origin`` names another origin, or that the browser marks ``Sec-Fetch-Site:
cross-site``, is refused the same way. Programs send neither header and pass; so does a
request a browser sends to the API from one of this server's own pages. Without it, a page on
any site could cancel a job on a server without auth with a bodiless ``fetch(…, {method:
"POST", mode: "no-cors"})``, or post form-encoded or text bodies to the other routes.

A request with neither header is refused too (fail closed). Every current browser sends
``Origin`` with a form POST, same-site or not; an old one that sends neither cannot be told
from a forged request, so it is refused rather than trusted. That is why there is no
synchronizer or double-submit token: a token would protect only those old browsers, which this
rule already refuses, and would need state for the login form and for servers without auth.
Programs do not use the UI's forms: they call the REST API with ``Authorization: Bearer``; the
API never reads the UI's cookie, so a forged request cannot borrow a session there.

This server's origins (``scheme://host[:port]``, default ports left out):

* the request's own: its scheme (uvicorn applies ``X-Forwarded-Proto`` from the peers in
  ``FORWARDED_ALLOW_IPS``, by default loopback) and its ``Host`` header;
* with ``trust_proxy_headers``: the scheme and host a proxy reports in ``X-Forwarded-Proto``
  and ``X-Forwarded-Host`` instead;
* ``public_url``, when set: the address the operator says the server is reached at.

The session cookie is ``Secure`` when the browser's origin, checked to be one of these, is
https.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import Request

from assay.config import Settings
from assay.errors import PermissionDeniedError

__all__ = ["SAFE_METHODS", "origin_of", "own_origins", "refuse_cross_site", "same_origin"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""Methods that never change anything (no UI route does on them), so are not checked."""
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SHOWN = 200
"""Characters of a refused origin quoted back on the error page."""


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL (lower case, default port left
    out), or None when ``url`` is not one (e.g. ``null``, the origin of a sandboxed page)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:  # IPv6, which urlsplit returns without its brackets
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _first(header: str | None) -> str | None:
    """The first (client-most) value of a comma-separated forwarded header."""
    value = (header or "").split(",")[0].strip()
    return value or None


def own_origins(request: Request, settings: Settings) -> set[str]:
    """The origins a page of this server is served from (see the module's docstring)."""
    scheme, host = request.url.scheme, request.url.netloc
    if settings.trust_proxy_headers:
        scheme = _first(request.headers.get("x-forwarded-proto")) or scheme
        host = _first(request.headers.get("x-forwarded-host")) or host
    candidates = [origin_of(f"{scheme}://{host}")]
    if settings.public_url:
        candidates.append(origin_of(settings.public_url))
    return {origin for origin in candidates if origin is not None}


def same_origin(request: Request) -> str | None:
    """FastAPI dependency of every UI route: refuse an unsafe request sent from another site.

    Returns the origin the browser sent the request from (one of :func:`own_origins`), or None
    for a safe method.
    """
    if request.method in SAFE_METHODS:
        return None
    settings: Settings = request.app.state.settings
    ours = own_origins(request, settings)
    sent, header = request.headers.get("origin"), "Origin"
    if sent is None:
        sent, header = request.headers.get("referer"), "Referer"
    if sent is None:
        raise PermissionDeniedError(
            "cross-site request refused: it has neither an Origin nor a Referer header, so it "
            "cannot be told from a forged one (browsers send them with every form; programs "
            "should call the REST API at /api/v1 instead)"
        )
    return _ours(sent, header, ours)


def refuse_cross_site(request: Request, settings: Settings) -> None:
    """Raise :class:`PermissionDeniedError` for an unsafe request a browser sent from another
    site: its ``Origin`` is not one of :func:`own_origins` (``null`` included), or its
    ``Sec-Fetch-Site`` is ``cross-site``. A request with neither header (a program) passes.
    The app's gate calls it for every request, before the body is read."""
    if request.method in SAFE_METHODS:
        return
    if request.headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
        raise PermissionDeniedError(
            "cross-site request refused: the browser sent it from a page of another site "
            "(Sec-Fetch-Site: cross-site)"
        )
    sent = request.headers.get("origin")
    if sent is not None:
        _ours(sent, "Origin", own_origins(request, settings))


def _ours(sent: str, header: str, ours: set[str]) -> str:
    """The origin of ``sent`` (an Origin or Referer header), if it is one of ``ours``."""
    origin = origin_of(sent)
    if origin is None or origin not in ours:
        raise PermissionDeniedError(
            f"cross-site request refused: its {header} is {sent[:_SHOWN]!r}, not this server "
            f"({', '.join(sorted(ours))}). Behind a reverse proxy, set ASSAY_PUBLIC_URL to the "
            "address browsers use, or ASSAY_TRUST_PROXY_HEADERS=true if the proxy sets "
            "X-Forwarded-Proto and X-Forwarded-Host"
        )
    return origin
