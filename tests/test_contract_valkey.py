"""The store contract on Valkey, alone and as the sessions half of a composite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from axess.stores.composite import CompositeStore
from axess.stores.memory import MemoryStore
from axess.stores.valkey import ValkeyStore
from axess.testing.contract import SessionStoreContract


def _durable_default() -> Any:
    """SQLite (in memory) when the SQL stores exist, else MemoryStore."""
    try:
        from axess.stores.sql import SQLiteStore
    except ImportError:
        return MemoryStore()
    return SQLiteStore(":memory:")


class TestValkeySessionStore(SessionStoreContract):
    @pytest.fixture
    async def store(self, valkey_store: ValkeyStore) -> AsyncIterator[ValkeyStore]:
        yield valkey_store


class TestCompositeValkeySessionStore(SessionStoreContract):
    @pytest.fixture
    async def store(self, valkey_store: ValkeyStore) -> AsyncIterator[CompositeStore]:
        composite = CompositeStore(default=_durable_default(), sessions=valkey_store)
        assert composite.backend_for("sessions") is valkey_store
        await composite.open()
        try:
            yield composite
        finally:
            await composite.close()
