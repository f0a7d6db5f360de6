"""The session stage's read without an ``await`` (``ImmediateSessionRead``):
a store that can answer at once serves the returning browser synchronously;
everything else (a store that must wait, an expired row, a binding to
settle, an outage) goes through the awaited path with the same outcome."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import CountingStore, client, cookie_of, make_app, make_auth, make_bound_auth

from axess import BindingPolicy, MockClock
from axess.stores import MemoryStore
from axess.stores.base import NOT_NOW, ImmediateSessionRead, NotNow, SessionRecord
from axess.testing.contract import NOW, make_record


class Recording(CountingStore):
    """Counts which of the two reads answered, and can refuse the immediate one."""

    def __init__(self, *, immediate: bool = True) -> None:
        super().__init__()
        self.immediate = immediate
        self.reads: list[str] = []

    def load_session_now(self, key: str, now: float) -> SessionRecord | NotNow | None:
        if not self.immediate:
            self.reads.append("not now")
            return NOT_NOW
        self.reads.append("now")
        return super().load_session_now(key, now)

    async def load_session(self, key: str, now: float) -> SessionRecord | None:
        self.reads.append("awaited")
        return await super().load_session(key, now)


def test_the_memory_store_reads_immediately_and_agrees_with_load_session() -> None:
    store = MemoryStore()
    assert isinstance(store, ImmediateSessionRead)
    rec = make_record("m", user="u")
    assert store.load_session_now(rec.key, NOW) is None
    store._sessions[rec.key] = rec
    assert store.load_session_now(rec.key, NOW) == rec
    assert store.load_session_now(rec.key, rec.expires_at) is None


@pytest.mark.parametrize("immediate", [True, False], ids=["now", "awaited"])
async def test_both_reads_serve_the_same_requests(immediate: bool) -> None:
    store = Recording(immediate=immediate)
    auth = make_auth(store)
    async with client(make_app(auth)) as c:
        assert cookie_of(await c.post("/login?user=alice"))
        assert (await c.post("/write?k=v")).json() == {"n": 1}
        store.reads.clear()
        loads = store.calls["load_session"]
        for _ in range(3):
            r = await c.get("/read")
            assert r.json() == {"user": "alice", "n": 1, "auth": "authenticated"}
            assert "set-cookie" not in r.headers
            assert r.headers["vary"] == "Cookie"
    expected = ["now"] if immediate else ["not now", "awaited"]
    assert store.reads == expected * 3
    assert store.calls["load_session"] == loads + 3  # one read per request either way


async def test_an_expired_row_is_deleted_through_the_awaited_path() -> None:
    clock = MockClock()
    store = Recording()
    auth = make_auth(store, clock=clock, idle_timeout=60, touch_interval=10)
    async with client(make_app(auth)) as c:
        assert cookie_of(await c.post("/login?user=alice"))
        # A row the store still holds live although its data says expired (a
        # shortened idle timeout, say): the stage itself must delete it.
        (key, rec), *_ = store._sessions.items()
        store._sessions[key] = dataclasses.replace(rec, expires_at=rec.expires_at + 3600)
        clock.advance(61)
        store.reads.clear()
        r = await c.get("/read")
        assert r.json()["auth"] == "guest"
    assert store.reads == ["now", "awaited"]  # the immediate read stepped aside
    assert store.calls["delete_session"] == 1 and len(store) == 0


async def test_an_outage_is_answered_by_the_awaited_path() -> None:
    store = Recording()
    auth = make_auth(store)
    async with client(make_app(auth)) as c:
        assert cookie_of(await c.post("/login?user=alice"))
        store.down = True
        r = await c.get("/read")
    assert r.status_code == 503
    assert r.json()["error"] == "service_unavailable"


async def test_a_binding_mismatch_is_settled_by_the_awaited_path() -> None:
    store = Recording()
    auth = make_bound_auth(store, binding=BindingPolicy(on_mismatch="revoke"))
    a = {"user-agent": "Browser A"}
    async with client(make_app(auth)) as c:
        assert cookie_of(await c.post("/login?user=alice", headers=a))
        store.reads.clear()
        assert (await c.get("/read", headers=a)).json()["user"] == "alice"
        assert store.reads == ["now"]
        store.reads.clear()
        r = await c.get("/read", headers={"user-agent": "Browser B"})
        assert r.json()["auth"] == "guest"
    assert store.reads == ["now", "awaited"]
