"""The three databases assay runs on, named once.

SQLAlchemy calls MariaDB ``mariadb`` or ``mysql`` depending on the URL; assay treats both as
one dialect, ``mysql``. Code that branches on the database compares :func:`dialect_of` with
these constants instead of spelling the names.
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa

__all__ = ["MYSQL", "MYSQL_NAMES", "POSTGRESQL", "SQLITE", "Dialect", "dialect_of"]

Dialect = Literal["sqlite", "postgresql", "mysql"]

SQLITE: Dialect = "sqlite"
POSTGRESQL: Dialect = "postgresql"
MYSQL: Dialect = "mysql"
MYSQL_NAMES = ("mysql", "mariadb")
"""SQLAlchemy's names (URL schemes, ``dialect.name``) that mean :data:`MYSQL`."""


def dialect_of(bind: sa.Engine | sa.Connection | str) -> Dialect:
    """The dialect of an engine, a connection or a SQLAlchemy dialect name."""
    name = bind if isinstance(bind, str) else bind.dialect.name
    if name in MYSQL_NAMES:
        return MYSQL
    if name in (SQLITE, POSTGRESQL):
        return name
    raise ValueError(f"unsupported database {name!r}: use sqlite, postgresql or mysql/mariadb")
