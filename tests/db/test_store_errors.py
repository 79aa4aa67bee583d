"""How the stores' transactions (``SqlStore._tx``) report a database they cannot use."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from assay.errors import StoreError
from assay.jobs.store import JobStore


def test_a_pool_with_no_free_connection_is_a_store_error(store_uri: str) -> None:
    """Every connection busy (a replica under more load than its pool): the caller gets a
    StoreError (the API's 503, the worker's and the leader's retry), never a bare
    SQLAlchemy exception that would end a loop or answer 500."""
    engine = sa.create_engine(store_uri, pool_size=1, max_overflow=0, pool_timeout=0.1)
    store = JobStore(engine)
    try:
        assert store.now_ms() > 0
        busy = pytest.raises(StoreError, match="the store is busy: no connection of the pool")
        with engine.connect(), busy:  # the test holds the pool's only connection
            store.now_ms()
        assert store.now_ms() > 0  # and it is used again once it is back
    finally:
        engine.dispose()
