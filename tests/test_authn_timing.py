"""Enumeration by timing: a wrong password for a real user and any password
for an unknown user cost the same order of time (the dummy hash), and a
locked attempt answers the same way for both without hashing."""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx
from authn_app import make_env

from axess.authn import PasswordHasher
from axess.authn.lockout import Lever, LockoutPolicy

#: Costly enough that the hash dominates the request (a few ms), cheap enough
#: for a test. Both the real and the dummy hash use these parameters.
HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)  # the defaults
RUNS = 30


def never_locks() -> LockoutPolicy:
    lever = Lever(threshold=10**6, window=60, lock_for=60)
    return LockoutPolicy(user=lever, ip=lever, tenant=lever)


async def timed_login(c: httpx.AsyncClient, identifier: str) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    r = await c.post("/login", json={"identifier": identifier, "password": "wrong horse"})
    return time.perf_counter() - start, r


async def test_known_and_unknown_identifiers_take_the_same_order_of_time() -> None:
    from axess.authn.lockout import Lockout

    env = make_env(hasher=HASHER)
    env.authn.lockout = Lockout(env.store, never_locks(), clock=env.clock)
    await env.add_user("alice")
    known: list[float] = []
    unknown: list[float] = []
    async with env.client() as c:
        for who in ("alice", "ghost"):  # warm-up: memos, thread pool
            await timed_login(c, who)
        for i in range(RUNS):  # interleaved, so drift and load hit both alike
            for who, into in (("alice", known), (f"ghost{i}", unknown)):
                elapsed, r = await timed_login(c, who)
                assert r.status_code == 401
                into.append(elapsed)
    ratio = statistics.median(known) / statistics.median(unknown)
    # Loose on purpose (a shared 2-core machine): an unknown user skipping
    # the hash would make this ratio 10-100x.
    assert 1 / 4 < ratio < 4, (statistics.median(known), statistics.median(unknown))
    # And the reason is the one we expect: one Argon2 run per attempt, either way.
    calls = HASHER.hash_calls
    async with env.client() as c:
        await timed_login(c, "alice")
        await timed_login(c, "nobody")
    assert HASHER.hash_calls == calls + 2


async def test_locked_known_and_unknown_answer_alike_without_hashing() -> None:
    env = make_env(hasher=PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    await env.add_user("alice")
    answers = {}
    async with env.client() as c:
        for who in ("alice", "ghost"):
            for _ in range(5):  # the default user lever: 5 failures lock
                await timed_login(c, who)
            calls = env.authn.hasher.hash_calls
            _, r = await timed_login(c, who)
            assert env.authn.hasher.hash_calls == calls  # refused before any hash
            answers[who] = (r.status_code, r.headers.get("retry-after"), r.content)
    assert answers["alice"] == answers["ghost"]
    assert answers["alice"][0] == 429


async def test_known_and_unknown_identifiers_take_the_same_store_round_trips(
    sql_store: Any,
) -> None:
    """The same store operations, in the same order, for a wrong password of
    a real user and for an unknown identifier: a refused attempt (where no
    hash hides the difference) would otherwise tell which accounts exist."""
    env = make_env(sql_store)
    await env.add_user("alice")
    seen: list[str] = []
    real = sql_store._op

    async def recording(what: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(what)
        return await real(what, *args, **kwargs)

    sql_store._op = recording

    async def trace(identifier: str) -> list[str]:
        seen.clear()
        async with env.client() as c:
            r = await c.post("/login", json={"identifier": identifier, "password": "wrong"})
        assert r.status_code == 401
        return list(seen)

    known, unknown = await trace("alice"), await trace("nobody")
    assert known == unknown
    assert known.index("get_factors") < known.index("lockout_reserve")
