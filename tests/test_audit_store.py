"""The audit store contract on memory, SQLite, PostgreSQL, MySQL/MariaDB and
the composite store; SQL specifics of the audit table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from axess.audit.events import AuditQuery, AuthEvent
from axess.audit.sinks import StoreSink
from axess.clock import MockClock, SeededRandom
from axess.errors import ConfigurationError, StoreError
from axess.stores import MemoryStore
from axess.stores.base import AuditStore
from axess.stores.composite import CompositeStore
from axess.stores.sql import SQLiteStore, SQLStore, engine
from axess.testing.contract import NOW, AuditStoreContract, make_event

PG = pytest.mark.backend("postgres")
MY = pytest.mark.backend("mysql")


BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("composite", id="composite"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=PG),
    pytest.param("mysql", id="mysql", marks=MY),
]


@pytest.fixture(params=BACKENDS)
def audit_backend(request: pytest.FixtureRequest) -> Any:
    """An opened, empty audit store of every kind."""
    if request.param == "memory":
        return MemoryStore()
    if request.param == "composite":
        sql = request.getfixturevalue("sqlite_store")
        return CompositeStore(default=sql, sessions=MemoryStore())
    return request.getfixturevalue(f"{request.param}_store")


class TestAuditStore(AuditStoreContract):
    @pytest.fixture
    def store(self, audit_backend: AuditStore) -> AuditStore:
        return audit_backend


@pytest.fixture(params=BACKENDS[2:])
def any_store(request: pytest.FixtureRequest) -> SQLStore:
    store: SQLStore = request.getfixturevalue(f"{request.param}_store")
    return store


async def test_sql_stores_list_the_audit_substore(any_store: SQLStore) -> None:
    assert "audit" in any_store.substores
    assert isinstance(any_store, AuditStore)
    assert await any_store.schema_version() == any_store.known_schema_version >= 2


@pytest.mark.parametrize("bad", ["\x00", "\ud800", "\udfff"], ids=["nul", "high", "low"])
async def test_text_no_store_can_keep_never_blocks_the_sql_sink(
    audit_backend: AuditStore, bad: str
) -> None:
    # Client input (a user agent, a login name) reaches events as it came; a
    # value the database refuses had its batch retried forever.
    text = f"a{bad}b"
    event = AuthEvent.create(
        "factor_failed",
        clock=MockClock(),
        random=SeededRandom(3),
        tenant=text,
        user=text,
        ip=text,
        user_agent=text,
        request_id=text,
        factor=text,
        reason=text,
        actor=text,
        extras={"name": text, text: [text, {"deep": text}]},
    )
    await StoreSink(audit_backend).write([event])
    (stored,) = await audit_backend.query_audit_events("a\ufffdb")
    assert stored == event
    assert stored.user == stored.user_agent == stored.reason == "a\ufffdb"
    assert stored.extras == {
        "name": "a\ufffdb",
        "a\ufffdb": ["a\ufffdb", {"deep": "a\ufffdb"}],
    }


async def test_purge_expired_has_an_audit_target(
    any_store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "PURGE_BATCH", 3)  # several batches
    events = [make_event(i) for i in range(8)]
    await any_store.insert_audit_events(events)
    await any_store.mark_audit_events_archived(
        [e.id for e in events[:7]], archived_at_us=0, purge_at_us=int(NOW * 1e6)
    )
    assert await any_store.purge_expired(NOW, only=["audit"]) == {"audit": 7}
    counts = await any_store.purge_expired(NOW)
    assert counts["audit"] == 0 and "sessions" in counts
    assert [e.id for e in await any_store.query_audit_events("t1")] == [events[7].id]


async def test_one_insert_statement_per_batch(
    any_store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_sql_store import _ADAPTERS

    adapter = _ADAPTERS[any_store.name]
    original = adapter.run
    seen: list[str] = []

    async def counting(self: Any, sql: str, args: Sequence[object] = (), **kw: Any) -> Any:
        seen.append(sql.split(None, 1)[0])
        return await original(self, sql, args, **kw)

    monkeypatch.setattr(adapter, "run", counting)
    await any_store.insert_audit_events([make_event(i) for i in range(200)])
    assert seen == ["INSERT"]
    seen.clear()
    await any_store.insert_audit_events([make_event(i) for i in range(engine.AUDIT_CHUNK + 1)])
    assert seen.count("INSERT") == 2  # two chunks, one transaction
    assert len(seen) == 4


async def test_a_closed_store_names_the_audit_substore(sqlite_store: SQLiteStore) -> None:
    await sqlite_store.close()
    with pytest.raises(StoreError) as info:
        await sqlite_store.insert_audit_events([make_event(1)])
    assert (info.value.backend, info.value.substore) == ("sqlite", "audit")


async def test_query_rejects_a_non_string_tenant(sqlite_store: SQLiteStore) -> None:
    with pytest.raises(TypeError):
        await sqlite_store.query_audit_events(7)  # type: ignore[arg-type]


def test_query_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        AuditQuery(limit=0)
    with pytest.raises(ValueError):
        AuditQuery(limit=AuditQuery.MAX_LIMIT + 1)
    with pytest.raises(ValueError):
        AuditQuery(types=[f"t{i}" for i in range(AuditQuery.MAX_TYPES + 1)])
    assert AuditQuery(types="logout").types == ("logout",)


# -- composite ------------------------------------------------------------------------
async def test_composite_routes_audit_to_its_backend() -> None:
    durable, volatile = MemoryStore(), MemoryStore()
    store = CompositeStore(default=durable, sessions=volatile)
    assert isinstance(store, AuditStore)
    await store.insert_audit_events([make_event(1)])
    assert len(await durable.query_audit_events("t1")) == 1
    assert await volatile.query_audit_events("t1") == []


def test_composite_refuses_an_audit_backend_without_the_protocol() -> None:
    class Liar(MemoryStore):
        insert_audit_events = None  # type: ignore[assignment]

    with pytest.raises(ConfigurationError, match="AuditStore"):
        CompositeStore(default=Liar())


async def test_composite_without_audit_backend_names_the_substore() -> None:
    class SessionsOnly(MemoryStore):
        substores = frozenset({"sessions"})  # type: ignore[misc]

    store = CompositeStore(default=SessionsOnly())
    with pytest.raises(ConfigurationError, match="'audit' is unavailable"):
        await store.insert_audit_events([make_event(1)])
