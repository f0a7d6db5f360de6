"""The session store contract on SQLite, PostgreSQL and MySQL/MariaDB."""

from __future__ import annotations

import pytest

from axess.stores.sql import SQLStore
from axess.testing.contract import SessionStoreContract


class TestSQLSessionStore(SessionStoreContract):
    @pytest.fixture
    def store(self, sql_store: SQLStore) -> SQLStore:
        return sql_store
