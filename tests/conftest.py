"""Shared fixtures: the SQL and Valkey stores (their own modules), and one
store per backend for the login tests."""

from typing import Any

import pytest

from axess.stores import CompositeStore, MemoryStore

pytest_plugins: list[str] = ["fixtures_sql", "fixtures_valkey"]


@pytest.fixture(params=("memory", "sqlite", "postgres", "mysql", "valkey"))
def login_store(request: pytest.FixtureRequest) -> Any:
    """An empty store serving logins, once per backend for the lockout
    counters (Valkey holds no users, so its composite keeps those in memory)."""
    if request.param == "memory":
        return MemoryStore()
    if request.param == "valkey":
        valkey = request.getfixturevalue("valkey_store")
        return CompositeStore(default=MemoryStore(), sessions=valkey, lockout=valkey)
    return request.getfixturevalue(f"{request.param}_store")
