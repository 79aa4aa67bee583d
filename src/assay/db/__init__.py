"""Database plumbing: engines, tables and migrations."""

from assay.db.engine import create_engine
from assay.db.migrate import upgrade
from assay.db.tables import metadata

__all__ = ["create_engine", "metadata", "upgrade"]
