"""The identity/factors store contract on memory, SQLite, PostgreSQL and MariaDB/MySQL."""

from __future__ import annotations

from typing import Any

import pytest

from axess.stores import MemoryStore
from axess.stores.sql import SQLiteStore
from axess.testing.contract import IdentityStoreContract


class TestIdentityStore(IdentityStoreContract):
    """Memory, then each SQL dialect."""

    @pytest.fixture
    def store(self, local_or_sql_store: Any) -> Any:
        return local_or_sql_store


def test_substores_are_listed() -> None:
    assert {"identity", "factors"} <= MemoryStore.substores
    assert {"identity", "factors"} <= SQLiteStore.substores
