"""The lockout store contract on memory, SQLite, PostgreSQL, MariaDB/MySQL and Valkey."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from axess.authn import Lever, Lockout, LockoutPolicy, lockout_keys
from axess.clock import MockClock
from axess.observability.metrics import NoopMetrics
from axess.stores.valkey import ValkeyStore
from axess.testing.contract import LockoutStoreContract


class TestLockoutStore(LockoutStoreContract):
    """Memory, then each SQL dialect."""

    @pytest.fixture
    def store(self, local_or_sql_store: Any) -> Any:
        return local_or_sql_store


class TestValkeyLockoutStore(LockoutStoreContract):
    @pytest.fixture
    async def store(self, valkey_store: ValkeyStore) -> AsyncIterator[ValkeyStore]:
        yield valkey_store


# -- the service over real backends -------------------------------------------


class _Metrics(NoopMetrics):
    def __init__(self) -> None:
        self.locked: list[str] = []

    def account_locked(self, lever: str) -> None:
        self.locked.append(lever)


async def _two_hundred_concurrent_failures(store: Any) -> None:
    clock, metrics = MockClock(), _Metrics()
    policy = LockoutPolicy(ip=Lever(1000, 900, 900), tenant=Lever(1000, 300, 300))
    lockout = Lockout(store, policy, clock=clock, metrics=metrics)
    keys = lockout_keys("acme", "victim@example.com", "203.0.113.5")
    results = await asyncio.gather(*(lockout.record_failure(keys) for _ in range(200)))
    assert len(results) == 200
    user = await store.lockout_state(keys.user, clock.time())
    ip = await store.lockout_state(keys.ip, clock.time())
    tenant = await store.lockout_state(keys.tenant, clock.time())
    assert ip.failures == 200 and tenant.failures == 200
    # 5 counted, locked once; the other 195 arrived while locked (not counted).
    assert user.lockouts == 1 and user.failures == 0
    assert metrics.locked == ["user"]
    locked = await lockout.pre_check(keys)
    assert locked is not None and locked.lever == "user" and locked.retry_after == 900


async def test_concurrent_failures_sqlite(sqlite_store: Any) -> None:
    await _two_hundred_concurrent_failures(sqlite_store)


@pytest.mark.backend("postgres")
async def test_concurrent_failures_postgres(postgres_store: Any) -> None:
    await _two_hundred_concurrent_failures(postgres_store)


@pytest.mark.backend("mysql")
async def test_concurrent_failures_mysql(mysql_store: Any) -> None:
    await _two_hundred_concurrent_failures(mysql_store)


async def test_concurrent_failures_valkey(valkey_store: Any) -> None:
    await _two_hundred_concurrent_failures(valkey_store)


async def test_valkey_pre_check_and_failure_are_one_command_each(valkey_store: Any) -> None:
    sent: list[str] = []
    real = valkey_store._exec

    async def counting(*args: Any) -> Any:
        sent.append(str(args[0]))
        return await real(*args)

    valkey_store._exec = counting
    lockout = Lockout(valkey_store, clock=MockClock())
    keys = lockout_keys("acme", "someone", "203.0.113.5", device="d")
    await lockout.pre_check(keys)
    assert sent == ["EVALSHA"]
    sent.clear()
    await lockout.record_failure(keys)
    assert sent == ["EVALSHA"]
    sent.clear()
    await lockout.record_success(keys)
    assert sent == ["EVALSHA"]


async def test_valkey_reloads_the_script_after_flush(valkey_store: Any) -> None:
    lockout = Lockout(valkey_store, clock=MockClock())
    keys = lockout_keys("acme", "someone", None)
    await valkey_store._exec("SCRIPT", "FLUSH")
    await lockout.record_failure(keys)
    assert await lockout.pre_check(keys) is None


async def test_sql_pre_check_is_one_statement(sqlite_store: Any) -> None:
    from axess.stores.sql.sqlite import _SQLiteConnection

    statements: list[str] = []
    real = _SQLiteConnection.run

    async def counting(self: Any, sql: str, *a: Any, **kw: Any) -> Any:
        statements.append(sql)
        return await real(self, sql, *a, **kw)

    lockout = Lockout(sqlite_store, clock=MockClock())
    keys = lockout_keys("acme", "someone", "203.0.113.5", device="d")
    _SQLiteConnection.run = counting  # type: ignore[method-assign]
    try:
        await lockout.pre_check(keys)
    finally:
        _SQLiteConnection.run = real  # type: ignore[method-assign]
    assert len(statements) == 1 and statements[0].startswith("SELECT")
