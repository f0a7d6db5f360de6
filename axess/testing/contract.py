"""The store contract suite (pytest).

Subclass a contract class and provide a ``store`` fixture that yields an
opened, *empty* backend (for shared servers: a fresh schema, database or key
prefix). Every axess backend runs exactly these tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest

from axess.stores.base import SessionRecord, SessionStore

NOW = 1_767_225_600.0
DAY = 86_400.0


def make_key(label: str) -> str:
    """A storage key (hex SHA-256) for a readable label; random when label is empty."""
    return hashlib.sha256(label.encode() if label else os.urandom(32)).hexdigest()


def make_record(
    label: str = "",
    *,
    payload: bytes = b"\x01sealed",
    user: str | None = None,
    tenant: str | None = None,
    created: float = NOW,
    ttl: float = DAY,
) -> SessionRecord:
    return SessionRecord(
        key=make_key(label),
        payload=payload,
        expires_at=created + ttl,
        created_at=created,
        user_id=user,
        tenant_id=tenant,
    )


def _same(a: SessionRecord | None, b: SessionRecord) -> bool:
    return (
        a is not None
        and a.key == b.key
        and a.payload == b.payload
        and a.user_id == b.user_id
        and a.tenant_id == b.tenant_id
        and abs(a.expires_at - b.expires_at) < 0.002
        and abs(a.created_at - b.created_at) < 0.002
    )


@pytest.mark.asyncio
class SessionStoreContract:
    """Behaviour every :class:`~axess.stores.base.SessionStore` must have."""

    @pytest.fixture
    def store(self) -> Any:  # pragma: no cover - overridden by subclasses
        raise NotImplementedError("provide a `store` fixture yielding an opened, empty store")

    async def test_implements_protocol(self, store: SessionStore) -> None:
        assert isinstance(store, SessionStore)

    async def test_load_missing_is_none(self, store: SessionStore) -> None:
        assert await store.load_session(make_key("nope"), NOW) is None

    async def test_create_then_load_roundtrips_every_field(self, store: SessionStore) -> None:
        rec = make_record("a", payload=bytes(range(256)) * 3, user="u1", tenant="t1")
        assert await store.create_session(rec) is True
        assert _same(await store.load_session(rec.key, NOW), rec)

    async def test_large_payload_roundtrips(self, store: SessionStore) -> None:
        rec = make_record("big", payload=os.urandom(200_000))
        assert await store.create_session(rec)
        loaded = await store.load_session(rec.key, NOW)
        assert loaded is not None and loaded.payload == rec.payload

    async def test_create_is_insert_if_absent(self, store: SessionStore) -> None:
        first = make_record("dup", payload=b"first")
        second = make_record("dup", payload=b"second", user="intruder")
        assert await store.create_session(first)
        assert await store.create_session(second) is False
        assert _same(await store.load_session(first.key, NOW), first)

    async def test_save_updates_existing(self, store: SessionStore) -> None:
        rec = make_record("s")
        await store.create_session(rec)
        newer = make_record("s", payload=b"v2", user="u", tenant="t", ttl=2 * DAY)
        assert await store.save_session(newer, NOW) is True
        assert _same(await store.load_session(rec.key, NOW), newer)
        assert [r.key for r in await store.list_user_sessions("u", NOW, tenant_id="t")] == [rec.key]

    async def test_save_never_resurrects(self, store: SessionStore) -> None:
        rec = make_record("gone", user="u")
        assert await store.save_session(rec, NOW) is False
        assert await store.load_session(rec.key, NOW) is None
        await store.create_session(rec)
        assert await store.delete_session(rec.key) is True
        assert await store.save_session(rec, NOW) is False
        assert await store.load_session(rec.key, NOW) is None

    async def test_expired_rows_are_invisible_and_not_saved(self, store: SessionStore) -> None:
        rec = make_record("old", ttl=60, user="u")
        await store.create_session(rec)
        assert await store.load_session(rec.key, NOW + 59.9) is not None
        assert await store.load_session(rec.key, NOW + 60) is None
        assert await store.save_session(rec, NOW + 61) is False
        assert await store.list_user_sessions("u", NOW + 61) == []

    async def test_cycle_moves_the_row_atomically(self, store: SessionStore) -> None:
        old = make_record("old", user="u")
        await store.create_session(old)
        new = make_record("new", payload=b"rotated", user="u")
        assert await store.cycle_session(old.key, new, NOW) is True
        assert await store.load_session(old.key, NOW) is None
        assert _same(await store.load_session(new.key, NOW), new)
        assert [r.key for r in await store.list_user_sessions("u", NOW)] == [new.key]

    async def test_cycle_of_a_revoked_session_writes_nothing(self, store: SessionStore) -> None:
        new = make_record("new")
        assert await store.cycle_session(make_key("never"), new, NOW) is False
        assert await store.load_session(new.key, NOW) is None

    async def test_cycle_refuses_to_overwrite_existing_target(self, store: SessionStore) -> None:
        old, other = make_record("o"), make_record("taken", payload=b"keep")
        await store.create_session(old)
        await store.create_session(other)
        clash = make_record("taken", payload=b"clobber")
        assert await store.cycle_session(old.key, clash, NOW) is False
        assert _same(await store.load_session(other.key, NOW), other)
        assert await store.load_session(old.key, NOW) is not None

    async def test_delete(self, store: SessionStore) -> None:
        rec = make_record("d")
        await store.create_session(rec)
        assert await store.delete_session(rec.key) is True
        assert await store.delete_session(rec.key) is False
        assert await store.load_session(rec.key, NOW) is None

    async def test_delete_user_sessions_scopes(self, store: SessionStore) -> None:
        recs = [
            make_record("a1", user="alice", tenant="t1"),
            make_record("a2", user="alice", tenant="t1"),
            make_record("a3", user="alice", tenant="t2"),
            make_record("b1", user="bob", tenant="t1"),
            make_record("g"),
        ]
        for r in recs:
            await store.create_session(r)
        assert (
            await store.delete_user_sessions("alice", tenant_id="t1", except_key=recs[0].key) == 1
        )
        assert await store.load_session(recs[0].key, NOW) is not None
        assert await store.load_session(recs[1].key, NOW) is None
        assert await store.load_session(recs[2].key, NOW) is not None
        assert await store.delete_user_sessions("alice") == 2
        assert await store.delete_user_sessions("alice") == 0
        assert await store.load_session(recs[3].key, NOW) is not None
        assert await store.load_session(recs[4].key, NOW) is not None

    async def test_list_user_sessions_ordered_and_scoped(self, store: SessionStore) -> None:
        later = make_record("later", user="u", tenant="t", created=NOW + 10)
        earlier = make_record("earlier", user="u", tenant="t", created=NOW)
        elsewhere = make_record("elsewhere", user="u", tenant="other", created=NOW + 5)
        for r in (later, earlier, elsewhere):
            await store.create_session(r)
        listed = await store.list_user_sessions("u", NOW + 20, tenant_id="t")
        assert [r.key for r in listed] == [earlier.key, later.key]
        assert all(_same(a, b) for a, b in zip(listed, [earlier, later], strict=True))
        everywhere = await store.list_user_sessions("u", NOW + 20)
        assert [r.key for r in everywhere] == [earlier.key, elsewhere.key, later.key]
        assert await store.list_user_sessions("nobody", NOW) == []

    async def test_purge_expired_counts_and_keeps_live(self, store: SessionStore) -> None:
        dead = [make_record(f"dead{i}", ttl=10, user="u") for i in range(3)]
        live = make_record("live", ttl=DAY, user="u")
        for r in [*dead, live]:
            await store.create_session(r)
        assert await store.purge_expired_sessions(NOW + 10) == 3
        assert await store.purge_expired_sessions(NOW + 10) == 0
        assert [r.key for r in await store.list_user_sessions("u", NOW + 10)] == [live.key]

    async def test_concurrent_saves_and_cycles_never_outlive_invalidation(
        self, store: SessionStore
    ) -> None:
        recs = [make_record(f"c{i}", user="victim", tenant="t") for i in range(40)]
        for r in recs:
            await store.create_session(r)
        ops: list[Any] = []
        for i, r in enumerate(recs):
            if i % 2:
                ops.append(
                    store.save_session(
                        make_record(f"c{i}", payload=b"late", user="victim", tenant="t"), NOW
                    )
                )
            else:
                ops.append(
                    store.cycle_session(
                        r.key, make_record(f"c{i}-new", user="victim", tenant="t"), NOW
                    )
                )
        ops.insert(len(ops) // 2, store.delete_user_sessions("victim", tenant_id="t"))
        ops.extend(store.save_session(r, NOW) for r in recs[:20])
        results = await asyncio.gather(*ops)
        assert not any(isinstance(x, BaseException) for x in results)
        # Every save/cycle ordered before the invalidation was removed by it;
        # every one ordered after found no row. Either way nothing survives.
        assert await store.list_user_sessions("victim", NOW, tenant_id="t") == []
        for i in range(40):
            assert await store.load_session(make_key(f"c{i}"), NOW) is None
            assert await store.load_session(make_key(f"c{i}-new"), NOW) is None
