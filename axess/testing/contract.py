"""The store contract suite (pytest): one class per store protocol
(sessions, lockout, identity and factors, audit, rate-limit buckets).

Subclass a contract class and provide a ``store`` fixture that yields an
opened, *empty* backend (for shared servers: a fresh schema, database or key
prefix). Every axess backend runs exactly these tests (book: Storage, "The
contract suite").
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest

from axess.audit.events import AuditQuery, AuthEvent, to_us
from axess.ratelimit import BucketStore, RateLimit
from axess.stores.base import (
    NOT_NOW,
    AuditStore,
    FactorRecord,
    IdentityStore,
    ImmediateSessionRead,
    LeverSpec,
    LockoutStore,
    SessionRecord,
    SessionStore,
    TenantPepper,
    TenantRecord,
    UserRecord,
)

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
        # bytes, not any buffer: the session stage keys a memo on the payload
        # (book: Storage, "SessionStore").
        and isinstance(a.payload, bytes)
        and a.key == b.key
        and a.payload == b.payload
        and a.user_id == b.user_id
        and a.tenant_id == b.tenant_id
        and abs(a.expires_at - b.expires_at) < 0.002
        and abs(a.created_at - b.created_at) < 0.002
    )


async def _agrees(store: SessionStore, key: str, now: float) -> None:
    """``load_session_now`` answers :data:`NOT_NOW` or exactly what
    ``load_session`` answers; the test is skipped for a store without it."""
    if not isinstance(store, ImmediateSessionRead):
        pytest.skip("the store has no load_session_now (ImmediateSessionRead)")
    at_once = store.load_session_now(key, now)
    awaited = await store.load_session(key, now)
    if at_once is NOT_NOW:
        return
    if awaited is None:
        assert at_once is None, f"load_session_now served {key[:8]}, load_session: None"
    else:
        assert isinstance(at_once, SessionRecord) and _same(at_once, awaited)


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

    async def test_cycle_of_an_expired_session_writes_nothing(self, store: SessionStore) -> None:
        # An expired row is a dead session: moving it to a new key would
        # bring it back to life for another full lifetime.
        old = make_record("old", ttl=60, user="u")
        await store.create_session(old)
        new = make_record("new", user="u")
        assert await store.cycle_session(old.key, new, NOW + 60) is False
        assert await store.load_session(new.key, NOW + 60) is None
        assert await store.load_session(new.key, NOW) is None
        assert await store.list_user_sessions("u", NOW + 60) == []

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

    # -- the immediate read (ImmediateSessionRead, optional) ------------------
    # The session stage trusts load_session_now first on every request, so
    # it must never answer what load_session would not: a stale answer after
    # a revocation is a revoked session served (book: Storage,
    # "ImmediateSessionRead").
    async def test_immediate_read_agrees_after_create_save_cycle_delete(
        self, store: SessionStore
    ) -> None:
        rec = make_record("i", user="u")
        await _agrees(store, rec.key, NOW)  # absent (an answer it might keep)
        await store.create_session(rec)
        await _agrees(store, rec.key, NOW)
        newer = make_record("i", payload=b"v2", user="u", ttl=2 * DAY)
        assert await store.save_session(newer, NOW)
        await _agrees(store, rec.key, NOW)
        new = make_record("i-new", payload=b"rotated", user="u")
        await _agrees(store, new.key, NOW)
        assert await store.cycle_session(rec.key, new, NOW)
        await _agrees(store, rec.key, NOW)
        await _agrees(store, new.key, NOW)
        assert await store.delete_session(new.key)
        await _agrees(store, new.key, NOW)

    async def test_immediate_read_agrees_after_log_out_everywhere(
        self, store: SessionStore
    ) -> None:
        recs = [
            make_record("e1", user="alice", tenant="t1"),
            make_record("e2", user="alice", tenant="t1"),
            make_record("e3", user="alice", tenant="t2"),
        ]
        for r in recs:
            await store.create_session(r)
            await _agrees(store, r.key, NOW)
        assert await store.delete_user_sessions("alice", tenant_id="t1", except_key=recs[0].key)
        for r in recs:
            await _agrees(store, r.key, NOW)
        assert await store.delete_user_sessions("alice") == 2
        for r in recs:
            await _agrees(store, r.key, NOW)

    async def test_immediate_read_agrees_at_expiry(self, store: SessionStore) -> None:
        rec = make_record("x", ttl=60, user="u")
        await store.create_session(rec)
        for t in (NOW, NOW + 59.9, NOW + 60, NOW + 61):
            await _agrees(store, rec.key, t)
        assert await store.purge_expired_sessions(NOW + 61) == 1
        await _agrees(store, rec.key, NOW)

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


# -- lockout ------------------------------------------------------------------
def make_lever(
    key: str,
    *,
    threshold: int = 3,
    window: float = 60.0,
    lock_for: float = 100.0,
    backoff: float = 2.0,
    max_lock: float = 350.0,
    exempt_if_trusted: bool = False,
) -> LeverSpec:
    return LeverSpec(key, threshold, window, lock_for, backoff, max_lock, exempt_if_trusted)


@pytest.mark.asyncio
class LockoutStoreContract:
    """Behaviour every :class:`~axess.stores.base.LockoutStore` must have.

    Levers here: 3 failures / 60 s lock 100 s, doubling, capped at 350 s.
    """

    @pytest.fixture
    def store(self) -> Any:  # pragma: no cover - overridden by subclasses
        raise NotImplementedError("provide a `store` fixture yielding an opened, empty store")

    async def test_implements_protocol(self, store: LockoutStore) -> None:
        assert isinstance(store, LockoutStore)

    async def test_status_of_unknown_keys_is_unlocked(self, store: LockoutStore) -> None:
        status = await store.lockout_status(["u:a", "i:b", "t:c"], "o:x", NOW)
        assert status.locked_until == {} and status.trusted is False

    async def test_threshold_locks_every_lever_atomically(self, store: LockoutStore) -> None:
        levers = [make_lever("u:a"), make_lever("i:a", threshold=5), make_lever("t:a")]
        for i in range(2):
            states = await store.lockout_failure(levers, None, NOW + i)
            assert [s.failures for s in states] == [i + 1, i + 1, i + 1]
        assert (await store.lockout_status(["u:a", "i:a", "t:a"], None, NOW + 2)).locked_until == {}
        states = await store.lockout_failure(levers, None, NOW + 2)
        assert [s.key for s in states] == ["u:a", "i:a", "t:a"]
        assert [s.tripped for s in states] == [True, False, True]
        status = await store.lockout_status(["u:a", "i:a", "t:a"], None, NOW + 3)
        assert set(status.locked_until) == {"u:a", "t:a"}
        assert abs(status.locked_until["u:a"] - (NOW + 102)) < 0.002
        state = await store.lockout_state("u:a", NOW + 3)
        assert state is not None and state.lockouts == 1 and state.failures == 0

    async def test_failures_while_locked_are_not_counted(self, store: LockoutStore) -> None:
        lever = [make_lever("u:b", threshold=1)]
        (first,) = await store.lockout_failure(lever, None, NOW)
        (again,) = await store.lockout_failure(lever, None, NOW + 50)
        assert first.tripped and not again.tripped
        assert again.lockouts == 1 and abs(again.locked_until - (NOW + 100)) < 0.002

    async def test_window_is_fixed_from_first_failure(self, store: LockoutStore) -> None:
        lever = [make_lever("u:w")]
        await store.lockout_failure(lever, None, NOW)
        await store.lockout_failure(lever, None, NOW + 59)
        (s,) = await store.lockout_failure(lever, None, NOW + 60)  # window closed
        assert s.failures == 1 and abs(s.window_start - (NOW + 60)) < 0.002
        assert (await store.lockout_status(["u:w"], None, NOW + 60)).locked_until == {}

    async def test_backoff_doubles_and_caps(self, store: LockoutStore) -> None:
        lever = [make_lever("u:k", threshold=1)]
        t = NOW
        lengths = []
        for _ in range(4):
            (s,) = await store.lockout_failure(lever, None, t)
            assert s.tripped
            lengths.append(round(s.locked_until - t, 3))
            t = s.locked_until
        assert lengths == [100.0, 200.0, 350.0, 350.0]

    async def test_escalation_forgotten_after_max_lock(self, store: LockoutStore) -> None:
        lever = [make_lever("u:f", threshold=1)]
        (s,) = await store.lockout_failure(lever, None, NOW)
        later = s.locked_until + 350.0
        assert await store.lockout_state("u:f", later) is None
        (s2,) = await store.lockout_failure(lever, None, later)
        assert s2.lockouts == 1 and round(s2.locked_until - later, 3) == 100.0

    async def test_lock_expires(self, store: LockoutStore) -> None:
        await store.lockout_failure([make_lever("u:e", threshold=1)], None, NOW)
        assert (await store.lockout_status(["u:e"], None, NOW + 99.9)).locked_until
        assert (await store.lockout_status(["u:e"], None, NOW + 100)).locked_until == {}

    async def test_success_resets_given_keys_and_trusts_origin(self, store: LockoutStore) -> None:
        levers = [make_lever("u:s", exempt_if_trusted=True), make_lever("i:s")]
        await store.lockout_failure(levers, "o:s", NOW)
        await store.lockout_success(["u:s"], "o:s", NOW + 1000, NOW)
        assert await store.lockout_state("u:s", NOW) is None
        ip_state = await store.lockout_state("i:s", NOW)
        assert ip_state is not None and ip_state.failures == 1
        assert (await store.lockout_status(["u:s"], "o:s", NOW + 999)).trusted
        assert not (await store.lockout_status(["u:s"], "o:s", NOW + 1000)).trusted
        assert not (await store.lockout_status(["u:s"], "o:other", NOW)).trusted

    async def test_trusted_origin_skips_exempt_levers(self, store: LockoutStore) -> None:
        levers = [make_lever("u:t", threshold=1, exempt_if_trusted=True), make_lever("i:t")]
        await store.lockout_success([], "o:t", NOW + 1000, NOW)
        states = await store.lockout_failure(levers, "o:t", NOW)
        assert [s.key for s in states] == ["i:t"]
        assert (await store.lockout_status(["u:t"], "o:t", NOW)).locked_until == {}
        states = await store.lockout_failure(levers, "o:elsewhere", NOW)
        assert [s.key for s in states] == ["u:t", "i:t"] and states[0].tripped

    async def test_clear(self, store: LockoutStore) -> None:
        lever = [make_lever("u:c", threshold=1), make_lever("t:c")]
        await store.lockout_failure(lever, None, NOW)
        assert await store.lockout_clear(["u:c", "t:c", "u:none"]) == 2
        assert (await store.lockout_status(["u:c"], None, NOW)).locked_until == {}
        (s,) = await store.lockout_failure([make_lever("u:c", threshold=1)], None, NOW)
        assert s.lockouts == 1  # escalation forgotten too
        assert await store.lockout_clear([]) == 0

    async def test_clear_counts_only_counters_that_were_kept(self, store: LockoutStore) -> None:
        """A lever skipped for a trusted origin, and every lever of a refused
        reservation, kept no counter: clearing it counts nothing."""
        await store.lockout_success([], "o:k", NOW + 1000, NOW)
        exempt = make_lever("u:k", exempt_if_trusted=True)
        await store.lockout_failure([exempt, make_lever("i:k")], "o:k", NOW)
        assert await store.lockout_clear(["u:k"]) == 0
        await store.lockout_failure([make_lever("u:r", threshold=1)], None, NOW)
        refused = await store.lockout_reserve([make_lever("u:r"), make_lever("i:r")], None, NOW)
        assert not refused.reserved
        assert await store.lockout_clear(["i:r"]) == 0
        assert await store.lockout_clear(["u:r", "i:k"]) == 2

    async def test_trusting_again_sets_the_new_end(self, store: LockoutStore) -> None:
        """The latest trust of an origin is what counts, shorter or longer."""
        await store.lockout_success([], "o:n", NOW + 100, NOW)
        await store.lockout_success([], "o:n", NOW + 10, NOW)
        assert (await store.lockout_status([], "o:n", NOW + 9)).trusted
        assert not (await store.lockout_status([], "o:n", NOW + 50)).trusted

    async def test_purge_removes_only_dead_rows(self, store: LockoutStore) -> None:
        await store.lockout_failure([make_lever("u:p1")], None, NOW)
        await store.lockout_failure([make_lever("u:p2", threshold=1)], None, NOW)
        await store.lockout_success([], "o:p", NOW + 30, NOW)
        await store.purge_expired_lockouts(NOW + 61)
        assert await store.lockout_state("u:p1", NOW + 61) is None  # window closed
        assert (await store.lockout_status(["u:p2"], None, NOW + 61)).locked_until
        assert not (await store.lockout_status([], "o:p", NOW + 61)).trusted
        await store.purge_expired_lockouts(NOW + 1000)
        assert await store.lockout_state("u:p2", NOW + 1000) is None

    async def test_concurrent_failures_lose_no_update(self, store: LockoutStore) -> None:
        n = 200
        levers = [
            make_lever("u:race", threshold=n + 1),
            make_lever("i:race", threshold=n + 1),
            make_lever("t:race", threshold=150),
        ]
        results = await asyncio.gather(
            *(store.lockout_failure(levers, None, NOW) for _ in range(n))
        )
        assert all(len(r) == 3 for r in results)
        user = await store.lockout_state("u:race", NOW)
        tenant = await store.lockout_state("t:race", NOW)
        assert user is not None and user.failures == n
        assert tenant is not None and tenant.lockouts == 1 and tenant.failures == 0
        assert sum(r[2].tripped for r in results) == 1
        status = await store.lockout_status(["u:race", "i:race", "t:race"], None, NOW)
        assert set(status.locked_until) == {"t:race"}

    async def test_reserve_is_all_or_nothing(self, store: LockoutStore) -> None:
        levers = [make_lever("u:r", threshold=2), make_lever("i:r", threshold=10)]
        first = await store.lockout_reserve(levers, None, NOW)
        assert first.reserved and [s.failures for s in first.states] == [1, 1]
        second = await store.lockout_reserve(levers, None, NOW + 1)  # spends u:r
        assert second.reserved and [s.tripped for s in second.states] == [True, False]
        refused = await store.lockout_reserve(levers, None, NOW + 2)
        assert not refused.reserved and refused.states == []
        assert set(refused.locked_until) == {"u:r"}
        assert abs(refused.locked_until["u:r"] - (NOW + 101)) < 0.002
        ip = await store.lockout_state("i:r", NOW + 2)
        assert ip is not None and ip.failures == 2  # the refusal counted nothing

    async def test_reserve_refused_by_a_later_lever_counts_on_none(
        self, store: LockoutStore
    ) -> None:
        # The locked lever last, then in the middle (in the order given and in
        # key order): a store that charges lever by lever until it meets the
        # lock would have counted the levers before it.
        for locked, others in (("u:lock", ("i:a", "t:a")), ("t:lock", ("i:b", "u:b"))):
            lock = make_lever(locked, threshold=1)
            assert (await store.lockout_reserve([lock], None, NOW)).states[0].tripped
            levers = sorted([lock, *(make_lever(k) for k in others)], key=lambda s: s.key)
            for t in (NOW + 1, NOW + 2, NOW + 3):  # three: a threshold, if counted
                refused = await store.lockout_reserve(levers, None, t)
                assert not refused.reserved and refused.states == []
                assert set(refused.locked_until) == {locked}
            for key in others:
                assert await store.lockout_state(key, NOW + 3) is None
            assert await store.lockout_clear(list(others)) == 0
            assert (await store.lockout_status(list(others), None, NOW + 3)).locked_until == {}

    async def test_burst_of_reservations_takes_at_most_threshold(self, store: LockoutStore) -> None:
        levers = [make_lever("u:burst", threshold=5), make_lever("i:burst", threshold=1000)]
        results = await asyncio.gather(
            *(store.lockout_reserve(levers, None, NOW) for _ in range(200))
        )
        assert sum(r.reserved for r in results) == 5
        assert sum(s.tripped for r in results for s in r.states) == 1
        ip = await store.lockout_state("i:burst", NOW)
        assert ip is not None and ip.failures == 5  # exact: one per unit handed out

    async def test_reserve_skips_exempt_levers_from_a_trusted_origin(
        self, store: LockoutStore
    ) -> None:
        levers = [make_lever("u:x", threshold=1, exempt_if_trusted=True), make_lever("i:x")]
        await store.lockout_success([], "o:x", NOW + 1000, NOW)
        for t in (NOW, NOW + 1):  # the user lever neither counts nor refuses
            r = await store.lockout_reserve(levers, "o:x", t)
            assert r.reserved and r.trusted and [s.key for s in r.states] == ["i:x"]
        r = await store.lockout_reserve(levers, "o:elsewhere", NOW + 2)
        assert r.reserved and not r.trusted and r.states[0].tripped

    async def test_success_hands_back_units_of_the_same_window(self, store: LockoutStore) -> None:
        levers = [make_lever("u:h"), make_lever("i:h", threshold=5), make_lever("t:h")]
        a = await store.lockout_reserve(levers, None, NOW)
        b = await store.lockout_reserve(levers, None, NOW + 1)
        assert a.reserved and b.reserved
        tenant = b.states[2]
        units = [(s.key, s.window_start) for s in b.states[1:]]
        assert tenant.tripped is False
        await store.lockout_success(["u:h"], "o:h", NOW + 500, NOW + 2, units)
        assert await store.lockout_state("u:h", NOW + 2) is None
        for key in ("i:h", "t:h"):
            state = await store.lockout_state(key, NOW + 2)
            assert state is not None and state.failures == 1
        # a unit of a window that has closed since is not handed back
        stale = [("i:h", NOW - 3600.0)]
        await store.lockout_success([], None, NOW, NOW + 3, stale)
        state = await store.lockout_state("i:h", NOW + 3)
        assert state is not None and state.failures == 1
        # nor to a locked lever
        one = [make_lever("t:l", threshold=1)]
        (locked,) = (await store.lockout_reserve(one, None, NOW)).states
        await store.lockout_success([], None, NOW, NOW + 1, [("t:l", locked.window_start)])
        assert (await store.lockout_status(["t:l"], None, NOW + 1)).locked_until

    async def test_success_hands_back_the_same_unit_once_per_listing(
        self, store: LockoutStore
    ) -> None:
        # Two steps of one login (password, then code) reserve a unit each in
        # the same window: both are listed with the same (key, window_start)
        # and both must go back.
        levers = [make_lever("i:d", threshold=10), make_lever("t:d", threshold=10)]
        for t in (NOW, NOW + 1, NOW + 2):
            assert (await store.lockout_reserve(levers, None, t)).reserved
        window = NOW  # the window the first reservation opened
        twice = [("i:d", window), ("i:d", window), ("t:d", window), ("t:d", window)]
        await store.lockout_success([], None, NOW, NOW + 3, twice)
        for key in ("i:d", "t:d"):
            state = await store.lockout_state(key, NOW + 3)
            assert state is not None and state.failures == 1
        # more listings than units spent: the count stops at zero
        thrice = [("i:d", window)] * 3
        await store.lockout_success([], None, NOW, NOW + 4, thrice)
        state = await store.lockout_state("i:d", NOW + 4)
        assert state is not None and state.failures == 0


# -- audit ----------------------------------------------------------------------
#: ``NOW`` in epoch microseconds (audit event times).
NOW_US = to_us(NOW)
DAY_US = to_us(DAY)


def make_event(
    n: int,
    *,
    tenant: str | None = "t1",
    type: str = "authenticated",
    user: str | None = "alice",
    time_us: int | None = None,
    status: str | None = None,
    session: str | None = None,
    extras: dict[str, Any] | None = None,
) -> AuthEvent:
    """A deterministic event: id ``e<n>``, time ``NOW_US + n`` unless given."""
    return AuthEvent(
        id=f"e{n:07d}",
        type=type,
        status=status or ("failure" if type.endswith("failed") else "success"),
        time=NOW_US + n if time_us is None else time_us,
        tenant=tenant,
        user=user,
        session=session,
        extras=extras or {},
    )


async def _all_pages(
    store: AuditStore, tenant: str | None, order: Any = "desc", limit: int = 7
) -> list[AuthEvent]:
    out: list[AuthEvent] = []
    cursor: tuple[int, str] | None = None
    while True:
        page = await store.query_audit_events(
            tenant, AuditQuery(order=order, limit=limit, cursor=cursor)
        )
        out.extend(page)
        if len(page) < limit:
            return out
        cursor = (page[-1].time, page[-1].id)


@pytest.mark.asyncio
class AuditStoreContract:
    """Behaviour every :class:`~axess.stores.base.AuditStore` must have."""

    @pytest.fixture
    def store(self) -> Any:  # pragma: no cover - overridden by subclasses
        raise NotImplementedError("provide a `store` fixture yielding an opened, empty store")

    async def test_implements_protocol(self, store: AuditStore) -> None:
        assert isinstance(store, AuditStore)

    async def test_insert_then_query_roundtrips_every_field(self, store: AuditStore) -> None:
        event = AuthEvent(
            id="0195c6a1-7e00-7abc-8def-0123456789ab",
            type="factor_failed",
            status="failure",
            time=NOW_US + 123_456,
            tenant="tenant-ü",
            user="zoë@example.com",
            session="abcdef012345",
            ip="2001:db8::1",
            user_agent="Mozilla/5.0 " + "x" * 400,
            request_id="req-1",
            factor="totp",
            lever="user",
            reason="bad code ☃",
            actor="admin:1",
            extras={"attempt": 3, "ratio": 0.5, "nested": {"ok": True, "list": [1, "a", None]}},
        )
        await store.insert_audit_events([event])
        assert await store.query_audit_events("tenant-ü") == [event]

    async def test_empty_batch_is_a_noop(self, store: AuditStore) -> None:
        await store.insert_audit_events([])
        assert await store.query_audit_events("t1") == []

    async def test_insert_is_idempotent_on_event_id(self, store: AuditStore) -> None:
        a, b, c, d = (make_event(i) for i in range(4))
        await store.insert_audit_events([a, b])
        changed = make_event(0, type="logout", user="mallory")
        await store.insert_audit_events([changed, b, c])
        await store.insert_audit_events([d, d])
        rows = await store.query_audit_events("t1", AuditQuery(order="asc"))
        assert rows == [a, b, c, d]  # the first copy of e0000000 is kept

    async def test_a_large_batch_is_stored_completely(self, store: AuditStore) -> None:
        events = [make_event(i) for i in range(1234)]
        await store.insert_audit_events(events)
        await store.insert_audit_events(events[::-1])  # redelivered, reordered
        assert await _all_pages(store, "t1", "asc", limit=1000) == events

    async def test_tenant_rail(self, store: AuditStore) -> None:
        mine = [make_event(i, tenant="t1", user="alice") for i in range(3)]
        theirs = [make_event(10 + i, tenant="t2", user="alice") for i in range(3)]
        nobody = [make_event(20 + i, tenant=None, user="alice") for i in range(2)]
        await store.insert_audit_events([*mine, *theirs, *nobody])
        assert await store.query_audit_events("t1", AuditQuery(order="asc")) == mine
        assert await store.query_audit_events("t2", AuditQuery(order="asc")) == theirs
        assert await store.query_audit_events(None, AuditQuery(order="asc")) == nobody
        assert await store.query_audit_events("t3") == []
        assert await store.query_audit_events("T1") == []
        for q in (
            AuditQuery(user="alice"),
            AuditQuery(types=["authenticated"]),
            AuditQuery(since_us=0),
            AuditQuery(cursor=(NOW_US + 100, "z")),
        ):
            assert {e.tenant for e in await store.query_audit_events("t1", q)} == {"t1"}

    async def test_filters(self, store: AuditStore) -> None:
        events = [
            make_event(0, type="login_attempt", status="info", user="alice"),
            make_event(1, type="factor_failed", user="alice", session="s1"),
            make_event(2, type="authenticated", user="alice", session="s1"),
            make_event(3, type="authenticated", user="bob"),
            make_event(4, type="logout", user="bob"),
        ]
        await store.insert_audit_events(events)

        async def ids(**kw: Any) -> list[str]:
            return [e.id for e in await store.query_audit_events("t1", AuditQuery(**kw))]

        e = [x.id for x in events]
        assert await ids() == e[::-1]
        assert await ids(order="asc") == e
        assert await ids(order="asc", limit=2) == e[:2]
        assert await ids(types=["authenticated", "logout"]) == [e[4], e[3], e[2]]
        assert await ids(types=[]) == []
        assert await ids(user="bob") == [e[4], e[3]]
        assert await ids(status="failure") == [e[1]]
        assert await ids(session="s1", order="asc") == [e[1], e[2]]
        assert await ids(since_us=NOW_US + 1, until_us=NOW_US + 3, order="asc") == [e[1], e[2]]
        assert await ids(user="bob", types=["logout"]) == [e[4]]

    async def test_cursor_pages_visit_every_row_once(self, store: AuditStore) -> None:
        # Ties on time are broken by id.
        events = [make_event(i, time_us=NOW_US + i // 4) for i in range(30)]
        await store.insert_audit_events(events[::-1])
        assert await _all_pages(store, "t1", "asc") == events
        assert await _all_pages(store, "t1", "desc") == events[::-1]

    async def test_archive_then_purge(self, store: AuditStore) -> None:
        old = [make_event(i, time_us=NOW_US - 100 * DAY_US + i) for i in range(5)]
        young = [make_event(10 + i, time_us=NOW_US - DAY_US + i) for i in range(3)]
        other_tenant_old = make_event(20, tenant="t2", time_us=NOW_US - 95 * DAY_US)
        await store.insert_audit_events([*young, other_tenant_old, *old])
        cutoff = NOW_US - 90 * DAY_US
        due = await store.audit_events_to_archive(cutoff, 4)
        assert due == old[:4]  # oldest first, across tenants, limited
        purge_at = NOW_US + 7 * DAY_US
        marked = await store.mark_audit_events_archived(
            [x.id for x in due], archived_at_us=NOW_US, purge_at_us=purge_at
        )
        assert marked == 4
        assert await store.audit_events_to_archive(cutoff, 100) == [old[4], other_tenant_old]
        again = await store.mark_audit_events_archived(
            [old[0].id, "e9999999"], archived_at_us=NOW_US, purge_at_us=purge_at
        )
        assert again == 0  # already archived (or unknown): untouched
        assert len(await store.query_audit_events("t1")) == 8  # still queryable
        assert await store.purge_archived_audit_events(NOW + 7 * DAY - 1) == 0
        assert await store.purge_archived_audit_events(NOW + 7 * DAY) == 4
        assert await store.purge_archived_audit_events(NOW + 7 * DAY) == 0
        rows = await store.query_audit_events("t1", AuditQuery(order="asc"))
        assert rows == [old[4], *young]
        # Rows never archived are never purged, however old.
        assert await store.purge_archived_audit_events(NOW + 10_000 * DAY) == 0
        assert len(await store.query_audit_events("t2")) == 1

    async def test_concurrent_overlapping_batches(self, store: AuditStore) -> None:
        events = [make_event(i) for i in range(120)]
        batches = [events[i : i + 40] for i in range(0, 120, 10)]
        await asyncio.gather(*(store.insert_audit_events(b) for b in batches))
        await asyncio.gather(*(store.insert_audit_events(b) for b in batches[::-1]))
        assert await _all_pages(store, "t1", "asc", limit=1000) == events


# -- identity and factors -------------------------------------------------------
class IdentityStoreContract:
    """Behaviour every :class:`~axess.stores.base.IdentityStore` must have."""

    @pytest.fixture
    def store(self) -> Any:  # pragma: no cover - overridden by subclasses
        raise NotImplementedError("provide a `store` fixture yielding an opened, empty store")

    async def test_implements_protocol(self, store: IdentityStore) -> None:
        assert isinstance(store, IdentityStore)

    async def test_tenants(self, store: IdentityStore) -> None:
        t = TenantRecord(
            "t1",
            "acme",
            pepper=b"\x00\x01pepper",
            ip_allow=("10.0.0.0/8",),
            ip_deny=("10.9.0.0/16", "2001:db8::/32"),
            lockout_overrides={"user": {"threshold": 3, "window": 60.0, "lock_for": 90.0}},
            created_at=NOW,
        )
        assert await store.create_tenant(t)
        assert not await store.create_tenant(t)  # id taken
        assert not await store.create_tenant(TenantRecord("t2", "acme"))  # slug taken
        assert await store.get_tenant("t1") == t
        assert await store.get_tenant_by_slug("acme") == t
        assert await store.get_tenant("nope") is None
        assert await store.create_tenant(TenantRecord("t2", "beta", created_at=NOW))
        changed = TenantRecord("t1", "acme2", status="suspended", created_at=NOW)
        assert await store.update_tenant(changed)
        assert await store.get_tenant("t1") == changed
        assert not await store.update_tenant(TenantRecord("t1", "beta", created_at=NOW))
        assert not await store.update_tenant(TenantRecord("t9", "zeta"))

    async def test_tenant_pepper_versions(self, store: IdentityStore) -> None:
        assert await store.tenant_pepper("t1") == TenantPepper(None, 1)  # no record, never rotated
        assert await store.rotate_tenant_pepper("t1") == 2
        assert await store.tenant_pepper("t1") == TenantPepper(None, 2)
        assert await store.tenant_pepper("t2") == TenantPepper(None, 1)  # per tenant
        assert await store.create_tenant(TenantRecord("t1", "acme", pepper=b"s" * 32))
        assert await store.tenant_pepper("t1") == TenantPepper(b"s" * 32, 2)
        # Rewriting the record never rolls the version back.
        assert await store.update_tenant(TenantRecord("t1", "acme", pepper=b"t" * 32))
        assert await store.tenant_pepper("t1") == TenantPepper(b"t" * 32, 2)

    async def test_concurrent_pepper_rotations_are_all_counted(self, store: IdentityStore) -> None:
        results = await asyncio.gather(*(store.rotate_tenant_pepper("t1") for _ in range(20)))
        assert sorted(results) == list(range(2, 22))
        assert (await store.tenant_pepper("t1")).version == 21

    async def test_users_are_unique_per_tenant(self, store: IdentityStore) -> None:
        u = UserRecord("u1", "t1", "alice@example.com", created_at=NOW)
        assert await store.create_user(u)
        assert not await store.create_user(u)
        assert not await store.create_user(UserRecord("u2", "t1", "alice@example.com"))
        assert await store.create_user(UserRecord("u2", "t2", "alice@example.com"))
        assert await store.create_user(UserRecord("u3", "t1", "ålice@example.com"))
        assert await store.get_user("u1") == u
        assert await store.find_user("t1", "alice@example.com") == u
        found = await store.find_user("t1", "ålice@example.com")
        assert found is not None and found.id == "u3"
        assert await store.find_user("t1", "bob@example.com") is None
        assert await store.find_user("t3", "alice@example.com") is None

    async def test_status_and_last_login(self, store: IdentityStore) -> None:
        await store.create_user(UserRecord("u1", "t1", "a", created_at=NOW))
        assert await store.set_user_status("u1", "suspended")
        assert not await store.set_user_status("ghost", "suspended")
        await store.record_login("u1", NOW + 5)
        u = await store.get_user("u1")
        assert u is not None and u.status == "suspended" and u.last_login_at == NOW + 5

    async def test_factors(self, store: IdentityStore) -> None:
        assert await store.get_factors("u1") == FactorRecord("u1")
        await store.set_password_hash("u1", "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA")
        await store.set_totp_secret("u1", b"\x01sealed")
        f = await store.get_factors("u1")
        assert f.password_hash == "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA"  # noqa: S105
        assert f.totp_secret == b"\x01sealed" and f.totp_last_step is None
        await store.set_password_hash("u1", None)
        assert (await store.get_factors("u1")).password_hash is None

    async def test_password_rehash_compare_and_set(self, store: IdentityStore) -> None:
        old = "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$b2xk"
        new = "$argon2id$v=19$m=8,t=2,p=1$c2FsdA$bmV3"
        assert not await store.rehash_password("u1", old, new)  # no password
        assert (await store.get_factors("u1")).password_hash is None
        await store.set_password_hash("u1", old)
        assert not await store.rehash_password("u1", "$other", new)  # changed meanwhile
        assert (await store.get_factors("u1")).password_hash == old
        assert await store.rehash_password("u1", old, new)
        assert (await store.get_factors("u1")).password_hash == new
        assert not await store.rehash_password("u1", old, "$argon2id$late")  # done once
        results = await asyncio.gather(
            *(store.rehash_password("u1", new, f"$argon2id${i}") for i in range(6))
        )
        assert sorted(results) == [False] * 5 + [True]

    async def test_totp_step_compare_and_set(self, store: IdentityStore) -> None:
        assert not await store.totp_accept_step("u1", 5)  # no secret
        await store.set_totp_secret("u1", b"\x01sealed")
        assert await store.totp_accept_step("u1", 100)
        assert not await store.totp_accept_step("u1", 100)  # replay
        assert not await store.totp_accept_step("u1", 99)  # older
        assert await store.totp_accept_step("u1", 101)
        assert (await store.get_factors("u1")).totp_last_step == 101
        await store.set_totp_secret("u1", b"\x01other")  # re-enrolment forgets the step
        assert (await store.get_factors("u1")).totp_last_step is None
        assert await store.totp_accept_step("u1", 50)
        await store.set_totp_secret("u1", None)
        assert not await store.totp_accept_step("u1", 60)

    async def test_totp_reseal_keeps_the_step(self, store: IdentityStore) -> None:
        assert not await store.reseal_totp_secret("u1", b"\x01old", b"\x01new")  # no secret
        await store.set_totp_secret("u1", b"\x01old")
        assert await store.totp_accept_step("u1", 100)
        assert not await store.reseal_totp_secret("u1", b"\x01other", b"\x01new")  # changed
        assert await store.reseal_totp_secret("u1", b"\x01old", b"\x01new")
        f = await store.get_factors("u1")
        assert f.totp_secret == b"\x01new" and f.totp_last_step == 100  # step kept
        assert not await store.totp_accept_step("u1", 100)  # still no replay
        assert not await store.reseal_totp_secret("u1", b"\x01old", b"\x01newer")  # done once
        results = await asyncio.gather(
            *(store.reseal_totp_secret("u1", b"\x01new", bytes([1, i])) for i in range(2, 8))
        )
        assert sorted(results) == [False] * 5 + [True]

    async def test_enable_totp_only_where_there_is_none(self, store: IdentityStore) -> None:
        await store.set_password_hash("u1", "$phc")
        assert await store.enable_totp("u1", b"\x01first", 7)
        f = await store.get_factors("u1")
        assert (f.totp_secret, f.totp_last_step, f.password_hash) == (b"\x01first", 7, "$phc")
        assert not await store.totp_accept_step("u1", 7)  # the confirming code is used up
        assert not await store.enable_totp("u1", b"\x01second", 9)
        assert (await store.get_factors("u1")).totp_secret == b"\x01first"
        await store.set_totp_secret("u1", None)
        assert await store.enable_totp("u1", b"\x01third", 9)  # disabled: enable again
        # No factor row yet (a user without a password), concurrently: one wins.
        results = await asyncio.gather(
            *(store.enable_totp("u2", bytes([1, i]), 5) for i in range(8))
        )
        assert sorted(results) == [False] * 7 + [True]
        winner = bytes([1, results.index(True)])
        assert (await store.get_factors("u2")).totp_secret == winner

    async def test_concurrent_totp_same_step_accepted_once(self, store: IdentityStore) -> None:
        await store.set_totp_secret("u1", b"\x01sealed")
        results = await asyncio.gather(*(store.totp_accept_step("u1", 1000) for _ in range(8)))
        assert sorted(results) == [False] * 7 + [True]

    async def test_recovery_codes(self, store: IdentityStore) -> None:
        a, b, c = (hashlib.sha256(x).hexdigest() for x in (b"a", b"b", b"c"))
        await store.replace_recovery_codes("u1", [a, b])
        assert await store.count_recovery_codes("u1") == 2
        assert (await store.get_factors("u1")).recovery_codes == 2
        assert not await store.consume_recovery_code("u1", [c])
        assert not await store.consume_recovery_code("u2", [a])
        assert not await store.consume_recovery_code("u1", [])
        assert await store.consume_recovery_code("u1", [c, a])
        assert not await store.consume_recovery_code("u1", [a])  # single use
        await store.replace_recovery_codes("u1", [c])
        assert not await store.consume_recovery_code("u1", [b])  # replaced
        assert await store.count_recovery_codes("u1") == 1

    async def test_concurrent_recovery_code_consumed_once(self, store: IdentityStore) -> None:
        code = hashlib.sha256(b"code").hexdigest()
        await store.replace_recovery_codes("u1", [code])
        results = await asyncio.gather(
            *(store.consume_recovery_code("u1", [code]) for _ in range(8))
        )
        assert sorted(results) == [False] * 7 + [True]
        assert await store.count_recovery_codes("u1") == 0


# -- rate-limit buckets -----------------------------------------------------------
@pytest.mark.asyncio
class BucketStoreContract:
    """Behaviour every rate-limit :class:`~axess.ratelimit.BucketStore` must
    have under a burst: a check reads and advances every bucket it covers
    as one step, so concurrent requests never share a unit and a refused
    request costs no bucket anything. (The store's clock runs on: these
    limits are chosen so that a second of it changes nothing.)"""

    @pytest.fixture
    def store(self) -> Any:  # pragma: no cover - overridden by subclasses
        raise NotImplementedError("provide a `store` fixture yielding an opened, empty store")

    async def test_implements_protocol(self, store: BucketStore) -> None:
        assert isinstance(store, BucketStore)

    async def test_a_burst_takes_exactly_the_limit(self, store: BucketStore) -> None:
        rule = RateLimit("10/hour", name="burst")
        results = await asyncio.gather(*(store.check([("burst:k", rule)]) for _ in range(50)))
        admitted = [states[0][0] for allowed, states in results if allowed]
        assert sorted(admitted) == list(range(10))  # each unit handed out once

    async def test_a_burst_over_two_buckets_is_all_or_nothing(self, store: BucketStore) -> None:
        wide = RateLimit("100/hour", name="wide")
        narrow = RateLimit("5/hour", name="narrow")
        both = [("wide:k", wide), ("narrow:k", narrow)]
        results = await asyncio.gather(*(store.check(both) for _ in range(40)))
        assert sum(allowed for allowed, _ in results) == 5
        # The 35 refusals took nothing from the wide bucket, in either order.
        allowed, states = await store.check([("wide:k", wide)])
        assert allowed and states[0][0] == 100 - 6
        flipped = [("narrow:k", narrow), ("wide:k", wide)]
        refused = await asyncio.gather(*(store.check(flipped) for _ in range(10)))
        assert not any(allowed for allowed, _ in refused)
        allowed, states = await store.check([("wide:k", wide)])
        assert allowed and states[0][0] == 100 - 7
