"""The session store contract on SQLite, PostgreSQL and MySQL/MariaDB."""

from __future__ import annotations

import pytest

from axess.stores.sql import MySQLStore, PostgresStore, SQLiteStore
from axess.testing.contract import SessionStoreContract


class TestSQLiteSessionStore(SessionStoreContract):
    @pytest.fixture
    def store(self, sqlite_store: SQLiteStore) -> SQLiteStore:
        return sqlite_store


@pytest.mark.backend("postgres")
class TestPostgresSessionStore(SessionStoreContract):
    @pytest.fixture
    def store(self, postgres_store: PostgresStore) -> PostgresStore:
        return postgres_store


@pytest.mark.backend("mysql")
class TestMySQLSessionStore(SessionStoreContract):
    @pytest.fixture
    def store(self, mysql_store: MySQLStore) -> MySQLStore:
        return mysql_store
