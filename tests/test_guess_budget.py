"""The guess budget under concurrency, in-process, on every backend.

A burst of concurrent guesses for one identifier gets at most ``threshold``
credential checks in one lock window, whatever the backend: each attempt
reserves a unit of every lever's budget atomically before any hash runs, and
an attempt that cannot reserve is answered like a locked one. The same bound
holds for second-factor guesses of one pending login. The cross-process
version (two uvicorn workers on the shared stores) is in
``test_guess_budget_process.py``.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
import pytest
from authn_app import Env, enrol_totp, make_env, wrong_codes
from helpers import DEVICE_COOKIE_NAME

from axess.authn import Lever, Lockout, LockoutPolicy, UserAdmin
from axess.authn.lockout import lockout_keys
from axess.authn.totp import totp
from axess.stores.base import DEFAULT_TENANT, TenantRecord

THRESHOLD = 5  # the default user lever
PASSWORD = "correct horse"
BURST = 200


async def _login(env: Env, password: str, identifier: str = "victim") -> httpx.Response:
    # A client of its own per attempt: a botnet's clients share no cookies.
    async with env.client() as c:
        return await c.post("/login", json={"identifier": identifier, "password": password})


async def _after_budget_spent(env: Env, before: int, spent: int) -> None:
    """Yield to the burst until ``spent`` credentials were checked (a
    credential is checked only after its unit was reserved)."""
    for _ in range(1_000_000):
        if env.authn.hasher.hash_calls - before >= spent:
            return
        await asyncio.sleep(0)
    pytest.fail("the burst never checked a credential")


async def test_burst_with_the_correct_password_inside(login_store: Any) -> None:
    env = make_env(login_store)
    await env.add_user("victim")
    before = env.authn.hasher.hash_calls

    async def correct() -> httpx.Response:
        await _after_budget_spent(env, before, THRESHOLD)
        return await _login(env, "correct horse")

    *wrong, right = await asyncio.gather(
        *(_login(env, f"guess-{i}") for i in range(BURST - 1)), correct()
    )
    checked = env.authn.hasher.hash_calls - before
    assert checked == THRESHOLD  # 199 wrong guesses, 5 hashes
    assert [r.status_code for r in wrong].count(401) == THRESHOLD
    assert [r.status_code for r in wrong].count(429) == BURST - 1 - THRESHOLD
    # The correct password arrived inside the burst, after the budget was
    # spent: refused like every locked attempt, and no hash ran for it.
    assert right.status_code == 429 and right.headers["retry-after"] == "900"
    refused = next(r for r in wrong if r.status_code == 429)
    assert right.json() == refused.json()
    # An unknown identifier that is locked answers the same way.
    for i in range(THRESHOLD):
        await _login(env, f"x{i}", identifier="nobody")
    unknown = await _login(env, "x", identifier="nobody")
    assert unknown.status_code == 429
    assert unknown.json() == right.json() and unknown.headers["retry-after"] == "900"
    # Still locked afterwards, with no hash.
    hashes = env.authn.hasher.hash_calls
    assert (await _login(env, "correct horse")).status_code == 429
    assert env.authn.hasher.hash_calls == hashes
    # The lock ends, and the owner gets in.
    env.clock.advance(15 * 60)
    assert (await _login(env, "correct horse")).status_code == 200


async def test_counters_are_exact_under_a_burst(login_store: Any) -> None:
    """With a budget larger than the burst, every one of 200 concurrent
    failures is counted (no lost update) and every one was checked."""
    generous = LockoutPolicy(
        user=Lever(1000, 900, 900), ip=Lever(1000, 900, 900), tenant=Lever(1000, 300, 300)
    )
    env = make_env(login_store, lockout=Lockout(login_store, generous))
    env.authn.lockout._clock = env.clock
    await env.add_user("victim")
    before = env.authn.hasher.hash_calls
    results = await asyncio.gather(*(_login(env, f"guess-{i}") for i in range(BURST)))
    assert all(r.status_code == 401 for r in results)
    assert env.authn.hasher.hash_calls - before == BURST
    keys = lockout_keys(DEFAULT_TENANT, "victim", "127.0.0.1")
    now = env.clock.time()
    for key in (keys.user, keys.ip, keys.tenant):
        state = await login_store.lockout_state(key, now)
        assert state is not None and state.failures == BURST


async def test_another_login_on_the_session_buys_no_code_guesses(login_store: Any) -> None:
    """Half-way through a login (password done, TOTP due), starting logins for
    other identifiers on the same session must not reset the code budget: a
    failed one-shot login leaves the half-way login (and its lockout keys)
    alone, and a login begun for someone else leaves no code checked at all.
    Otherwise every decoy identifier would buy fresh guesses at this user's
    codes."""
    env = make_env(login_store)
    uid = await env.add_user("victim")
    secret = await enrol_totp(env, uid)
    now = env.clock.time()
    wrong = wrong_codes(secret, now)

    def codes_checked() -> int:
        return sum(e.type == "factor_failed" and e.reason == "wrong_code" for e in env.events)

    async with env.client() as c:
        r = await c.post("/login", json={"identifier": "victim", "password": PASSWORD})
        assert r.json() == {"factor_required": "totp"}
        statuses = []
        for i in range(6):
            r = await c.post("/login", json={"identifier": f"decoy-{i}", "password": "x"})
            assert r.status_code in (401, 429)
            for _ in range(THRESHOLD):
                statuses.append((await c.post("/factor", json={"totp": next(wrong)})).status_code)
        assert codes_checked() == THRESHOLD - 1  # the password step took the first unit
        assert statuses.count(401) == THRESHOLD - 1
        assert statuses.count(429) == len(statuses) - (THRESHOLD - 1)
        # The lock is the victim's: the right code is refused too.
        r = await c.post("/factor", json={"totp": totp(secret, now)})
        assert r.status_code == 429

    env.clock.advance(15 * 60)  # a new window, a new session
    async with env.client() as c:
        r = await c.post("/login", json={"identifier": "victim", "password": PASSWORD})
        assert r.json() == {"factor_required": "totp"}
        r = await c.post("/begin", json={"identifier": "decoy"})
        assert r.json() == {"factor_required": "password"}
        before = codes_checked()
        hashes = env.authn.hasher.hash_calls
        for _ in range(2 * THRESHOLD):
            assert (await c.post("/factor", json={"totp": next(wrong)})).status_code == 401
        # Even the right code: the session's pending login is the decoy's now.
        code = totp(secret, env.clock.time())
        assert (await c.post("/factor", json={"totp": code})).status_code == 401
        assert codes_checked() == before
        assert env.authn.hasher.hash_calls == hashes
        assert not [e for e in env.events if e.type == "factor_verified" and e.factor == "totp"]


async def test_a_burst_of_decoy_logins_and_code_guesses_is_bounded(login_store: Any) -> None:
    """The same, sent at once: decoy logins (one-call and begun) racing code
    guesses on the session half-way through the victim's login. Each request
    reads the pending login and the auth state from one snapshot, so no
    interleaving charges a victim's code to a decoy's levers."""
    env = make_env(login_store)
    uid = await env.add_user("victim")
    secret = await enrol_totp(env, uid)
    wrong = wrong_codes(secret, env.clock.time())

    def codes_checked() -> int:
        return sum(
            e.type == "factor_failed" and e.reason == "wrong_code" and e.user == uid
            for e in env.events
        )

    async with env.client() as c:
        r = await c.post("/login", json={"identifier": "victim", "password": PASSWORD})
        assert r.json() == {"factor_required": "totp"}
        requests = []
        for i in range(BURST // 4):
            if i % 2:
                requests.append(("/login", {"identifier": f"decoy-{i}", "password": "x"}))
            else:
                requests.append(("/begin", {"identifier": f"decoy-{i}"}))
            requests += [("/factor", {"totp": next(wrong)}) for _ in range(3)]
        answers = await asyncio.gather(*(c.post(path, json=body) for path, body in requests))
    assert all(r.status_code in (200, 401, 429) for r in answers)
    assert codes_checked() <= THRESHOLD - 1  # the password step took the first unit


async def test_second_factor_burst_is_bounded(login_store: Any) -> None:
    """TOTP and recovery-code guesses for one pending login, sent at once on
    the same session, get at most the budget left after the password."""
    env = make_env(login_store)
    uid = await env.add_user("victim")
    secret = await enrol_totp(env, uid)
    now = env.clock.time()
    wrong = list(itertools.islice(wrong_codes(secret, now), BURST))
    async with env.client() as c:
        r = await c.post("/login", json={"identifier": "victim", "password": "correct horse"})
        assert r.json() == {"factor_required": "totp"}  # the password took one unit

        def checked() -> int:
            return sum(e.type == "factor_failed" and e.reason == "wrong_code" for e in env.events)

        async def right_code() -> httpx.Response:
            for _ in range(1_000_000):
                if checked() >= THRESHOLD - 1:
                    break
                await asyncio.sleep(0)
            return await c.post("/factor", json={"totp": totp(secret, now)})

        guesses = [
            {"totp": code} if i % 2 else {"recovery": f"rc-{code}"}
            for i, code in enumerate(wrong[: BURST - 1])
        ]
        *failed, right = await asyncio.gather(
            *(c.post("/factor", json=g) for g in guesses), right_code()
        )
    assert checked() == THRESHOLD - 1
    assert [r.status_code for r in failed].count(401) == THRESHOLD - 1
    assert [r.status_code for r in failed].count(429) == BURST - THRESHOLD
    assert right.status_code == 429  # the right code, after the budget was spent


async def test_a_trust_granted_under_an_old_password_buys_no_guesses(login_store: Any) -> None:
    """A browser that signed in with a stolen password is a trusted origin:
    its device cookie exempts it from the user lever. Once the password is
    changed, that trust exempts nothing: a burst of guesses at the new
    password from the same browser gets the user lever's budget and no more,
    while the owner's browser, trusted under the new password, still gets in."""
    env = make_env(login_store)
    uid = await env.add_user("victim")
    new = "new staple battery"

    async def login(client: httpx.AsyncClient, password: str) -> int:
        r = await client.post("/login", json={"identifier": "victim", "password": password})
        return r.status_code

    async with env.client() as attacker, env.client() as owner:
        assert await login(attacker, PASSWORD) == 200  # the stolen password
        await attacker.post("/logout")
        await env.store.set_password_hash(uid, await env.authn.hasher.hash(new))
        assert await login(owner, new) == 200
        await owner.post("/logout")
        before = env.authn.hasher.hash_calls
        statuses = await asyncio.gather(*(login(attacker, f"guess-{i}") for i in range(40)))
        assert env.authn.hasher.hash_calls - before == THRESHOLD
        assert statuses.count(401) == THRESHOLD and statuses.count(429) == 40 - THRESHOLD
        assert await login(attacker, new) == 429  # the account is locked for it
        assert await login(owner, new) == 200  # but not for the owner's browser


async def test_codes_from_a_trusted_browser_have_their_own_bounded_budget(
    login_store: Any,
) -> None:
    """A browser trusted under the current password finishes its logins even
    while strangers keep the account's shared user lever locked: its code
    steps count on a lever of its own first. Whoever holds the browser (its
    cookies and the password) gets that lever's ``threshold`` code checks
    and then the shared lever's (which the owner's last login reset), burst
    or not, and then a lock."""
    env = make_env(login_store)
    uid = await env.add_user("victim")
    secret = await enrol_totp(env, uid)

    def checked() -> int:
        return sum(e.type == "factor_failed" and e.reason == "wrong_code" for e in env.events)

    async with env.client() as owner:
        r = await owner.post("/login", json={"identifier": "victim", "password": PASSWORD})
        assert r.json() == {"factor_required": "totp"}
        env.clock.advance(30)
        r = await owner.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 200  # the browser is trusted now
        await owner.post("/logout")
        for i in range(THRESHOLD):  # a stranger locks the shared user lever
            assert (await _login(env, f"guess-{i}")).status_code == 401
        assert (await _login(env, PASSWORD)).status_code == 429
        # The owner's browser: the password step is exempt, the code step
        # counts on the browser's own lever, so the login goes through.
        r = await owner.post("/login", json={"identifier": "victim", "password": PASSWORD})
        assert r.json() == {"factor_required": "totp"}
        env.clock.advance(30)
        r = await owner.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 200
        await owner.post("/logout")
        # Whoever holds that browser and the password: a burst of codes.
        r = await owner.post("/login", json={"identifier": "victim", "password": PASSWORD})
        assert r.json() == {"factor_required": "totp"}
        now = env.clock.time()
        codes = list(itertools.islice(wrong_codes(secret, now), 40))
        before = checked()
        answers = await asyncio.gather(*(owner.post("/factor", json={"totp": c}) for c in codes))
        assert checked() - before == 2 * THRESHOLD
        statuses = [a.status_code for a in answers]
        assert statuses.count(401) == 2 * THRESHOLD
        assert statuses.count(429) == 40 - 2 * THRESHOLD
        r = await owner.post("/factor", json={"totp": totp(secret, now)})
        assert r.status_code == 429


async def test_a_tenant_id_with_a_trailing_space_names_no_tenant(login_store: Any) -> None:
    """MySQL and MariaDB compare ``'acme '`` equal to ``'acme'``; were such a
    tenant id let through, each trailing space would be a fresh user lever
    for the same account there. It is refused before any lever or lookup,
    on every backend alike."""
    env = make_env(login_store)
    await env.store.create_tenant(TenantRecord("acme", "acme"))
    await env.add_user("alice", tenant="acme")

    async def login(tenant: str, password: str) -> int:
        async with env.client() as c:
            body = {"identifier": "alice", "password": password, "tenant": tenant}
            return (await c.post("/login", json=body)).status_code

    for _ in range(THRESHOLD):
        assert await login("acme", "wrong") == 401
    assert await login("acme", PASSWORD) == 429
    before = env.authn.hasher.hash_calls
    for spaces in range(1, 4):
        assert await login("acme" + " " * spaces, PASSWORD) == 401
    assert env.authn.hasher.hash_calls == before  # refused before any hash


async def test_swapping_device_cookies_between_codes_buys_no_budget(login_store: Any) -> None:
    """The code steps of a login count on the lever of the origin its
    password step was trusted at, whatever device cookie they come with, then
    on the account's shared lever: the owner's browser, no cookie and the
    attacker's own device cookies (each trusted for the attacker's account)
    together get the two levers' budgets and no more."""
    env = make_env(login_store)
    uid = await env.add_user("victim")
    await env.add_user("mallory")
    secret = await enrol_totp(env, uid)

    def checked() -> int:
        return sum(e.type == "factor_failed" and e.reason == "wrong_code" for e in env.events)

    own_cookies = []
    for _ in range(3):  # the attacker's own account, from fresh browsers
        async with env.client() as c:
            r = await c.post("/login", json={"identifier": "mallory", "password": PASSWORD})
            assert r.status_code == 200
            own_cookies.append(c.cookies[DEVICE_COOKIE_NAME])
    async with env.client() as browser:
        r = await browser.post("/login", json={"identifier": "victim", "password": PASSWORD})
        env.clock.advance(30)
        r = await browser.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 200  # the owner's browser is trusted
        await browser.post("/logout")
        r = await browser.post("/login", json={"identifier": "victim", "password": PASSWORD})
        assert r.json() == {"factor_required": "totp"}  # the holder of browser and password
        owner_cookie = browser.cookies[DEVICE_COOKIE_NAME]
        codes = wrong_codes(secret, env.clock.time())
        statuses = []
        for cookie in [owner_cookie, None, *own_cookies] * 2:
            browser.cookies.delete(DEVICE_COOKIE_NAME)
            if cookie is not None:
                browser.cookies.set(DEVICE_COOKIE_NAME, cookie, domain="testserver.local")
            for _ in range(THRESHOLD):
                r = await browser.post("/factor", json={"totp": next(codes)})
                statuses.append(r.status_code)
    assert checked() == 2 * THRESHOLD
    assert statuses.count(401) == 2 * THRESHOLD


async def test_an_unlock_lets_the_owner_finish_from_a_trusted_browser(login_store: Any) -> None:
    """The owner typed wrong codes on their own trusted browser until both its
    lever and the account's were spent; an operator's unlock clears the
    account's levers, and the right code from that browser gets in."""
    env = make_env(login_store)
    uid = await env.add_user("owner")
    secret = await enrol_totp(env, uid)
    async with env.client() as browser:
        await browser.post("/login", json={"identifier": "owner", "password": PASSWORD})
        env.clock.advance(30)
        r = await browser.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 200
        await browser.post("/logout")
        r = await browser.post("/login", json={"identifier": "owner", "password": PASSWORD})
        assert r.json() == {"factor_required": "totp"}
        codes = wrong_codes(secret, env.clock.time() + 30)
        answers = [
            (await browser.post("/factor", json={"totp": next(codes)})).status_code
            for _ in range(2 * THRESHOLD + 1)
        ]
        assert answers[-1] == 429
        env.clock.advance(30)
        right = {"totp": totp(secret, env.clock.time())}
        assert (await browser.post("/factor", json=right)).status_code == 429
        admin = UserAdmin(env.store, env.keys, lockout=env.authn.lockout)
        await admin.unlock(uid)
        assert (await browser.post("/factor", json=right)).status_code == 200
