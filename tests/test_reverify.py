"""Step-up checks (``AuthnService.reverify``) through HTTP, on every backend.

A signed-in user proving a credential again before changing their factors
spends the login's guess budget: a burst of guesses on one session gets at
most the user lever's threshold of credential checks, and from the browser
the login made trusted at most twice that (its own lever, then the shared
one), so strangers who lock the account cannot block its owner; a correct
credential hands back its own unit and
resets nothing (the unit that spent the budget stays spent: its lock
stands); a TOTP code is used up and a recovery code consumed, as at
login; a session that is not signed in gets ``InvalidCredentials`` with no
lever touched and no hash.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from authn_app import Env, enrol_totp, make_env
from helpers import DEVICE_COOKIE_NAME

from axess.authn.lockout import lockout_keys
from axess.authn.recovery import RecoveryCodeHasher
from axess.authn.totp import totp
from axess.stores.base import DEFAULT_TENANT

THRESHOLD = 5  # the default user lever
BURST = 200
PASSWORD = "correct horse"


async def _signed_in(env: Env, c: httpx.AsyncClient, *factors: str) -> None:
    r = await c.post("/login", json={"identifier": "victim", "password": PASSWORD})
    for factor in factors:
        assert r.json() == {"factor_required": "totp"}
        r = await c.post("/factor", json={"totp": factor})
    assert r.status_code == 200 and r.json()["authenticated"] is True


async def _burst(env: Env, c: httpx.AsyncClient, spent: int) -> tuple[int, list[int], int]:
    """BURST-1 wrong passwords and, once ``spent`` were checked, the right
    one, all at once on ``c``'s session: (passwords checked, statuses of the
    wrong ones, status of the right one)."""
    before = env.authn.hasher.hash_calls

    async def correct_after_budget() -> httpx.Response:
        for _ in range(1_000_000):
            if env.authn.hasher.hash_calls - before >= spent:
                break
            await asyncio.sleep(0)
        return await c.post("/reverify", json={"password": PASSWORD})

    *wrong, right = await asyncio.gather(
        *(c.post("/reverify", json={"password": f"guess-{i}"}) for i in range(BURST - 1)),
        correct_after_budget(),
    )
    checked = env.authn.hasher.hash_calls - before
    return checked, [r.status_code for r in wrong], right.status_code


async def test_a_burst_from_elsewhere_gets_the_login_budget(login_store: Any) -> None:
    env = make_env(login_store)
    await env.add_user("victim")
    async with env.client() as c:
        await _signed_in(env, c)
        # A session used from a browser the account does not trust (a stolen
        # session cookie without the device cookie): the shared user lever.
        c.cookies.delete(DEVICE_COOKIE_NAME)
        checked, statuses, right = await _burst(env, c, THRESHOLD)
        assert checked == THRESHOLD
        assert statuses.count(401) == THRESHOLD
        assert statuses.count(429) == BURST - 1 - THRESHOLD
        assert right == 429  # the right password, after the budget was spent
        # The session itself stays signed in; the lock is the user's, so a
        # login from elsewhere is refused too, with no hash.
        assert (await c.get("/me")).json()["user"] == "u-victim"
    hashes = env.authn.hasher.hash_calls
    async with env.client() as other:
        r = await other.post("/login", json={"identifier": "victim", "password": PASSWORD})
        assert r.status_code == 429
    assert env.authn.hasher.hash_calls == hashes


async def test_a_burst_from_the_trusted_browser_gets_two_levers_budgets(
    login_store: Any,
) -> None:
    """From the browser the login made trusted, checks count on that
    browser's own lever first, then on the shared one: whoever holds the
    browser's cookies gets ``2 * threshold`` checks, burst or not."""
    env = make_env(login_store)
    await env.add_user("victim")
    async with env.client() as c:
        await _signed_in(env, c)
        assert DEVICE_COOKIE_NAME in c.cookies
        checked, statuses, right = await _burst(env, c, 2 * THRESHOLD)
        assert checked == 2 * THRESHOLD
        assert statuses.count(401) == 2 * THRESHOLD
        assert statuses.count(429) == BURST - 1 - 2 * THRESHOLD
        assert right == 429
    async with env.client() as other:  # the shared lever is spent: locked
        r = await other.post("/login", json={"identifier": "victim", "password": PASSWORD})
        assert r.status_code == 429


async def test_strangers_locking_the_account_cannot_stop_the_owners_step_up(
    login_store: Any,
) -> None:
    """Strangers who keep the account's shared lever locked (wrong passwords
    from anywhere) cannot stop its owner, signed in on a trusted browser,
    from proving the password again (to change it, say). A trust granted
    under an older password helps nobody: after a password change, a
    browser trusted before it counts on the shared lever."""
    env = make_env(login_store)
    uid = await env.add_user("victim")
    async with env.client() as owner, env.client() as thief:
        await _signed_in(env, owner)
        await _signed_in(env, thief)  # a second trusted browser (the password leaked)
        for i in range(THRESHOLD):
            async with env.client() as stranger:
                r = await stranger.post(
                    "/login", json={"identifier": "victim", "password": f"guess-{i}"}
                )
                assert r.status_code == 401
        async with env.client() as stranger:
            r = await stranger.post("/login", json={"identifier": "victim", "password": PASSWORD})
            assert r.status_code == 429  # the shared user lever is locked
        r = await owner.post("/reverify", json={"password": PASSWORD})
        assert r.status_code == 200
        # The owner changes the password: the thief's browser was trusted
        # under the old one, so its step-ups meet the locked shared lever.
        await env.store.set_password_hash(uid, await env.authn.hasher.hash("new staple"))
        hashes = env.authn.hasher.hash_calls
        r = await thief.post("/reverify", json={"password": "new staple"})
        assert r.status_code == 429
        assert env.authn.hasher.hash_calls == hashes


async def test_a_correct_password_hands_back_its_unit_and_resets_nothing(
    login_store: Any,
) -> None:
    env = make_env(login_store)
    await env.add_user("victim")
    keys = lockout_keys(DEFAULT_TENANT, "victim", "127.0.0.1")
    async with env.client() as c:
        await _signed_in(env, c)
        c.cookies.delete(DEVICE_COOKIE_NAME)  # the shared lever (see the tests above)
        for i in range(THRESHOLD - 2):
            r = await c.post("/reverify", json={"password": f"guess-{i}"})
            assert r.status_code == 401
        for _ in range(3):  # correct, again and again: no unit kept, no reset
            r = await c.post("/reverify", json={"password": PASSWORD})
            assert r.status_code == 200
            assert r.json() == {
                "authenticated": True,
                "user_id": "u-victim",
                "tenant_id": None,
                "factors": ["password"],
            }
        state = await login_store.lockout_state(keys.user, env.clock.time())
        assert state is not None and state.failures == THRESHOLD - 2
        assert (await c.post("/reverify", json={"password": "last"})).status_code == 401
        # The unit that spends the budget locks the user, and a correct
        # credential does not hand that one back: the check passes, the lock
        # stands (so a known password never buys another code guess).
        assert (await c.post("/reverify", json={"password": PASSWORD})).status_code == 200
        hashes = env.authn.hasher.hash_calls
        assert (await c.post("/reverify", json={"password": PASSWORD})).status_code == 429
        assert env.authn.hasher.hash_calls == hashes
        env.clock.advance(15 * 60)  # the lock ends
        assert (await c.post("/reverify", json={"password": PASSWORD})).status_code == 200
    reasons = [e.reason for e in env.events if e.type == "factor_verified"]
    assert reasons.count("step_up") == 5


async def test_a_session_not_signed_in_touches_no_lever(login_store: Any) -> None:
    env = make_env(login_store)
    await env.add_user("victim")
    keys = lockout_keys(DEFAULT_TENANT, "victim", "127.0.0.1")

    async def levers() -> list[Any]:
        now = env.clock.time()
        return [await login_store.lockout_state(k, now) for k in (keys.user, keys.ip, keys.tenant)]

    before = env.authn.hasher.hash_calls
    async with env.client() as c:
        for _ in range(THRESHOLD + 2):
            assert (await c.post("/reverify", json={"password": PASSWORD})).status_code == 401
        assert env.authn.hasher.hash_calls == before
        assert await levers() == [None, None, None]
        # Half-way through a login (password done, TOTP due) is not signed in.
        await enrol_totp(env, "u-victim")
        r = await c.post("/login", json={"identifier": "victim", "password": PASSWORD})
        assert r.json() == {"factor_required": "totp"}
        held = await levers()  # the password step's units, held until the login completes
        hashes = env.authn.hasher.hash_calls
        for _ in range(THRESHOLD + 2):
            assert (await c.post("/reverify", json={"password": PASSWORD})).status_code == 401
        assert env.authn.hasher.hash_calls == hashes
        assert await levers() == held


async def test_a_totp_code_is_used_up_and_a_recovery_code_consumed(login_store: Any) -> None:
    env = make_env(login_store)
    uid = await env.add_user("victim")
    secret = await enrol_totp(env, uid)
    codes = RecoveryCodeHasher(env.keys).generate(2)
    await env.store.replace_recovery_codes(uid, [env.authn.recovery.hash(c) for c in codes])
    async with env.client() as c:
        await _signed_in(env, c, totp(secret, env.clock.time()))
        env.clock.advance(30)  # the login's code is used up: take the next step's
        code = totp(secret, env.clock.time())
        r = await c.post("/reverify", json={"totp": code})
        assert r.status_code == 200 and r.json()["factors"] == ["password", "totp"]
        assert (await c.post("/reverify", json={"totp": code})).status_code == 401  # replay
        r = await c.post("/reverify", json={"recovery": codes[0]})
        assert r.status_code == 200
        assert (await c.post("/reverify", json={"recovery": codes[0]})).status_code == 401
    assert await env.store.count_recovery_codes(uid) == 1
    assert env.event_types.count("recovery_code_used") == 1
