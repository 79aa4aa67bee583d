"""``connect(store_uri)``: jobs on a store or on a server, chosen by the address.

It lives above both :mod:`assay.jobs.backend` and :mod:`assay.client`, so neither imports the
other (the backend never needs the client).
"""

from __future__ import annotations

from typing import Any

from assay.client import Client
from assay.config import load_settings
from assay.errors import ConfigError
from assay.jobs.api import JobsAPI
from assay.jobs.backend import Backend

__all__ = ["connect"]

_CLIENT_OPTIONS = ("token", "timeout", "transport")


def connect(store_uri: str | None = None, **settings: Any) -> JobsAPI:
    """Open jobs on ``store_uri``: a :class:`~assay.jobs.backend.Backend` on a store (default:
    ``ASSAY_STORE_URI`` or ~/.assay/assay.db), or an :class:`assay.client.Client` for an
    ``http://`` or ``https://`` server URL.

    For a store, keyword arguments override :class:`~assay.config.Settings` fields; for a
    server they are the client's (``token``, ``timeout``, ``transport``).
    """
    if store_uri is not None and store_uri.lower().startswith(("http://", "https://")):
        unknown = sorted(set(settings) - set(_CLIENT_OPTIONS))
        if unknown:
            raise ConfigError(
                f"unknown option {unknown[0]!r} for a server URL "
                f"(a client takes {', '.join(_CLIENT_OPTIONS)})"
            )
        return Client(store_uri, **settings)
    return Backend(load_settings(store_uri=store_uri, **settings))
