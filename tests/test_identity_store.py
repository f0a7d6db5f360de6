"""The identity/factors store contract on memory, SQLite, PostgreSQL and MariaDB/MySQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from axess.stores import MemoryStore
from axess.stores.sql import MySQLStore, PostgresStore, SQLiteStore
from axess.testing.contract import IdentityStoreContract


class TestMemoryIdentityStore(IdentityStoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[MemoryStore]:
        s = MemoryStore()
        await s.open()
        yield s
        await s.close()


class TestSQLiteIdentityStore(IdentityStoreContract):
    @pytest.fixture
    def store(self, sqlite_store: SQLiteStore) -> SQLiteStore:
        return sqlite_store


@pytest.mark.backend("postgres")
class TestPostgresIdentityStore(IdentityStoreContract):
    @pytest.fixture
    def store(self, postgres_store: PostgresStore) -> PostgresStore:
        return postgres_store


@pytest.mark.backend("mysql")
class TestMySQLIdentityStore(IdentityStoreContract):
    @pytest.fixture
    def store(self, mysql_store: MySQLStore) -> MySQLStore:
        return mysql_store


def test_substores_are_listed() -> None:
    assert {"identity", "factors"} <= MemoryStore.substores
    assert {"identity", "factors"} <= SQLiteStore.substores
