"""The device cookie and the trusted origin of the lockout DoS guard.

A browser that completed a login carries a signed device cookie (``__Host-axess.device``);
its owner stays exempt from the user lever while strangers (even on the
same network, even with their own device cookie) are locked out.
"""

from __future__ import annotations

import logging

import httpx
import pytest
from authn_app import Env, enrol_totp, make_env
from helpers import DEVICE_COOKIE_NAME

from axess import Axess, Keyring, SessionConfig
from axess.authn import Lever, Lockout, LockoutPolicy
from axess.authn.device import DeviceCookie, DeviceCookieConfig
from axess.authn.password import PasswordHasher
from axess.authn.totp import totp
from axess.keys import Key
from axess.stores import MemoryStore

PASSWORD = "correct horse"


async def _login(c: httpx.AsyncClient, password: str, identifier: str = "owner") -> int:
    r = await c.post("/login", json={"identifier": identifier, "password": password})
    return r.status_code


def _replace_device_cookie(client: httpx.AsyncClient, value: str) -> None:
    (domain,) = {c.domain for c in client.cookies.jar if c.name == DEVICE_COOKIE_NAME}
    client.cookies.delete(DEVICE_COOKIE_NAME)
    client.cookies.set(DEVICE_COOKIE_NAME, value, domain=domain)


async def _lock_out(env: Env, identifier: str = "owner") -> None:
    """A stranger on the owner's network spends the user lever's budget."""
    async with env.client() as stranger:
        for _ in range(5):
            assert await _login(stranger, "guess", identifier) == 401
        assert await _login(stranger, PASSWORD, identifier) == 429


async def test_a_complete_login_sets_the_device_cookie() -> None:
    env = make_env()
    await env.add_user("owner")
    async with env.client() as c:
        r = await c.post("/login", json={"identifier": "owner", "password": PASSWORD})
    assert r.status_code == 200
    header = next(h for h in r.headers.get_list("set-cookie") if h.startswith(DEVICE_COOKIE_NAME))
    attrs = [a.strip() for a in header.split(";")]
    assert {"HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=2592000"} <= set(attrs)
    value = attrs[0].split("=", 1)[1]
    assert len(value) == 87 and value.count(".") == 1


async def test_failed_login_sets_no_device_cookie() -> None:
    env = make_env()
    await env.add_user("owner")
    async with env.client() as c:
        r = await c.post("/login", json={"identifier": "owner", "password": "wrong"})
    assert r.status_code == 401
    assert not any(h.startswith(DEVICE_COOKIE_NAME) for h in r.headers.get_list("set-cookie"))


async def test_owner_with_device_cookie_gets_in_while_a_neighbour_is_locked_out() -> None:
    env = make_env()
    await env.add_user("owner")
    async with env.client() as owner:
        assert await _login(owner, PASSWORD) == 200
        await owner.post("/logout")
        # Same IP (so the same /24) as the owner, but no device cookie.
        await _lock_out(env)
        assert await _login(owner, PASSWORD) == 200  # the owner is exempt
        # The exemption covers the user lever only: a wrong password from
        # the owner's browser is not counted against the account either.
        await owner.post("/logout")
        assert await _login(owner, "typo") == 401
        assert await _login(owner, PASSWORD) == 200


async def test_a_forged_or_foreign_device_cookie_is_no_exemption() -> None:
    env = make_env()
    await env.add_user("owner")
    await env.add_user("attacker")
    async with env.client() as attacker:
        assert await _login(attacker, PASSWORD, "attacker") == 200  # own device cookie
        await attacker.post("/logout")
        await _lock_out(env)  # a different client: still locked for the owner
        assert await _login(attacker, PASSWORD, "owner") == 429  # own cookie: no help
        cookie = attacker.cookies[DEVICE_COOKIE_NAME]
        forged = cookie[:-1] + ("A" if cookie[-1] != "A" else "B")
        _replace_device_cookie(attacker, forged)
        assert await _login(attacker, PASSWORD, "owner") == 429


async def test_device_keys_rotate_like_the_others() -> None:
    env = make_env()
    await env.add_user("owner")
    async with env.client() as owner:
        assert await _login(owner, PASSWORD) == 200
        await owner.post("/logout")
        old = owner.cookies[DEVICE_COOKIE_NAME]
        await _lock_out(env)
        # A new active device key; the old one still verifies.
        keys = env.keys
        rotated = Keyring(
            signing=keys.keys("signing"),
            envelope=keys.keys("envelope"),
            fingerprint=keys.keys("fingerprint"),
            csrf=keys.keys("csrf"),
            device=[Key("d2", b"\x07" * 32), *keys.keys("device")],
        )
        env.authn.device_cookie = DeviceCookie(rotated)
        assert await _login(owner, PASSWORD) == 200  # still exempt
        renewed = owner.cookies[DEVICE_COOKIE_NAME]
        assert renewed != old and renewed.split(".")[0] == old.split(".")[0]  # re-signed
        await owner.post("/logout")
        # Once the old key is gone, only the re-signed cookie is valid.
        env.authn.device_cookie = DeviceCookie(
            Keyring(
                signing=keys.keys("signing"),
                envelope=keys.keys("envelope"),
                fingerprint=keys.keys("fingerprint"),
                csrf=keys.keys("csrf"),
                device=[Key("d2", b"\x07" * 32)],
            )
        )
        assert await _login(owner, PASSWORD) == 200  # (a success resets the lever)
        await owner.post("/logout")
        await _lock_out(env)
        _replace_device_cookie(owner, old)
        assert await _login(owner, PASSWORD) == 429


async def test_trusted_ip_prefix_is_an_opt_in_weakening(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    policy = LockoutPolicy(trust_ip_prefix=True)
    env = make_env(store, lockout=Lockout(store, policy))
    await env.add_user("owner")
    async with env.client() as first:
        assert await _login(first, PASSWORD) == 200
    # Anyone without a device cookie on the owner's /24 now shares the
    # owner's trust: guesses from there are neither counted nor refused by
    # the user lever (only the IP and tenant levers bound them).
    async with env.client() as neighbour:
        for _ in range(10):
            assert await _login(neighbour, "guess") == 401
        assert await _login(neighbour, PASSWORD) == 200
    with caplog.at_level(logging.WARNING, logger="axess"):
        Axess(
            store=MemoryStore(),
            keys=Keyring.generate(),
            debug=True,
            lockout=policy,
            cleanup_interval=None,
        )
    assert any("trust_ip_prefix=True" in r.getMessage() for r in caplog.records)


def _from(env: Env, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=env.app, client=(ip, 1234))
    return httpx.AsyncClient(transport=transport, base_url="https://testserver")


@pytest.mark.parametrize("trust_ip_prefix", [False, True])
async def test_the_device_cookie_of_a_login_is_trusted_whatever_the_ip_setting(
    trust_ip_prefix: bool,
) -> None:
    """A cookieless login gets a device cookie, and that device is trusted
    for the account with either setting: a stranger elsewhere locks the
    account, the owner's browser still gets in. With ``trust_ip_prefix`` the
    prefix of every complete login is trusted as well, also when the browser
    came with its device cookie."""
    store = MemoryStore()
    env = make_env(store, lockout=None)
    policy = LockoutPolicy(trust_ip_prefix=trust_ip_prefix)
    env.authn.lockout = Lockout(store, policy, clock=env.clock)
    await env.add_user("owner")
    async with _from(env, "198.51.100.7") as owner:
        assert await _login(owner, PASSWORD) == 200
        assert DEVICE_COOKIE_NAME in owner.cookies
        await owner.post("/logout")
        async with _from(env, "203.0.113.9") as stranger:  # another network
            assert [await _login(stranger, "guess") for _ in range(6)][-1] == 429
        assert await _login(owner, PASSWORD) == 200
        (device,) = [c for c in owner.cookies.jar if c.name == DEVICE_COOKIE_NAME]
    # The browser (device cookie kept) logs in from a new network, which the
    # attacker locks again for everyone without a trusted origin.
    async with _from(env, "192.0.2.10") as owner_elsewhere:
        owner_elsewhere.cookies.set(DEVICE_COOKIE_NAME, device.value or "", domain=device.domain)
        assert await _login(owner_elsewhere, PASSWORD) == 200
    async with _from(env, "203.0.113.9") as stranger:
        assert [await _login(stranger, "guess") for _ in range(6)][-1] == 429
    async with _from(env, "192.0.2.11") as neighbour:  # same /24, no cookie
        assert await _login(neighbour, PASSWORD) == (200 if trust_ip_prefix else 429)


async def test_without_trusted_ip_prefix_a_cookieless_owner_is_locked_like_anyone() -> None:
    env = make_env()
    await env.add_user("owner")
    async with env.client() as first:
        assert await _login(first, PASSWORD) == 200
    await _lock_out(env)
    async with env.client() as cookieless:
        assert await _login(cookieless, PASSWORD) == 429


def test_axess_device_cookie_follows_the_session_cookie_security() -> None:
    auth = Axess(
        store=MemoryStore(),
        keys=Keyring.generate(),
        debug=True,
        session=SessionConfig(secure=False),
        lockout=LockoutPolicy(user=Lever(5, 60, 60), trusted_origin_ttl=3600),
        cleanup_interval=None,
    )
    assert auth.authn is not None
    config = auth.authn.device_cookie.config
    assert config == DeviceCookieConfig(max_age=3600, secure=False)
    assert "Secure" not in auth.authn.device_cookie.set_cookie("x" * 43).decode()


async def test_a_login_finished_with_a_code_trusts_the_device() -> None:
    env = make_env()
    uid = await env.add_user("owner")
    secret = await enrol_totp(env, uid)
    async with env.client() as owner:
        r = await owner.post("/login", json={"identifier": "owner", "password": PASSWORD})
        assert r.json() == {"factor_required": "totp"}
        r = await owner.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 200
        await owner.post("/logout")
        await _lock_out(env)
        r = await owner.post("/login", json={"identifier": "owner", "password": PASSWORD})
        assert r.json() == {"factor_required": "totp"}


async def test_the_trust_of_a_login_that_rehashed_the_password_holds() -> None:
    """A login that re-hashes the password (new hasher parameters) trusts the
    device under the new hash, the one the next login is checked against."""
    env = make_env()
    uid = await env.add_user("owner")
    old = (await env.store.get_factors(uid)).password_hash
    env.authn.hasher = PasswordHasher(time_cost=2, memory_cost=64, parallelism=1)
    async with env.client() as owner:
        assert await _login(owner, PASSWORD) == 200
        assert (await env.store.get_factors(uid)).password_hash != old
        await owner.post("/logout")
        await _lock_out(env)
        assert await _login(owner, PASSWORD) == 200


async def test_a_new_password_ends_the_trust_of_every_device() -> None:
    """The owner's own browser too: its trust was granted under the old
    password, so until it signs in with the new one it is locked like anyone."""
    env = make_env()
    uid = await env.add_user("owner")
    async with env.client() as owner:
        assert await _login(owner, PASSWORD) == 200
        await owner.post("/logout")
        await env.store.set_password_hash(uid, await env.authn.hasher.hash("new password!"))
        await _lock_out(env)
        assert await _login(owner, "new password!") == 429


async def test_a_password_changed_between_the_steps_leaves_the_login_untrusted() -> None:
    """The trust is bound to the hash the password step verified, not to
    the one stored when the code step finishes the login."""
    env = make_env()
    uid = await env.add_user("owner")
    secret = await enrol_totp(env, uid)
    async with env.client() as browser:
        r = await browser.post("/login", json={"identifier": "owner", "password": PASSWORD})
        assert r.json() == {"factor_required": "totp"}
        await env.store.set_password_hash(uid, await env.authn.hasher.hash("new password!"))
        r = await browser.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 200
        await browser.post("/logout")
        await _lock_out(env)
        assert await _login(browser, "new password!") == 429
