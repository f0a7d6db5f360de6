"""UserAdmin: create users/tenants, passwords, TOTP, recovery codes, status, unlock."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlparse

import pytest
from authn_app import Env, fast_hasher, make_env

from axess.authn.lockout import Lever, Lockout, LockoutPolicy
from axess.authn.totp import totp
from axess.authn.users import UnknownUser, UserAdmin


def _admin(env: Env, **kw: object) -> UserAdmin:
    return UserAdmin(
        env.store,
        env.keys,
        sessions=env.auth,
        lockout=env.authn.lockout,
        hasher=fast_hasher(),
        clock=env.clock,
        on_event=env.events.append,
        issuer="Acme Corp",
        **kw,  # type: ignore[arg-type]
    )


async def _login(env: Env, ident: str, pw: str, **kw: str) -> int:
    async with env.client() as c:
        r = await c.post("/login", json={"identifier": ident, "password": pw, **kw})
        return r.status_code


async def test_create_user_and_tenant() -> None:
    env = make_env()
    admin = _admin(env)
    t = await admin.create_tenant("acme", ip_allow=["127.0.0.0/8"])
    assert t.slug == "acme" and (await env.store.get_tenant("acme")) == t
    with pytest.raises(ValueError, match="already exists"):
        await admin.create_tenant("acme")
    u = await admin.create_user(" Alice@Example.COM ", tenant="acme", password="pw-123456")
    assert u.identifier == "alice@example.com" and u.tenant_id == "acme" and len(u.id) == 32
    with pytest.raises(ValueError):
        await admin.create_user("ALICE@example.com", tenant="acme")
    with pytest.raises(ValueError):
        await admin.create_user("   ")
    assert await admin.find_user("alice@EXAMPLE.com", tenant="acme") == u
    assert await _login(env, "alice@example.com", "pw-123456", tenant="acme") == 200


async def test_set_password_logs_out_everywhere() -> None:
    env = make_env()
    admin = _admin(env)
    u = await admin.create_user("alice", password="old-password")
    for _ in range(2):
        assert await _login(env, "alice", "old-password") == 200
    assert len(await admin.list_sessions(u.id)) == 2
    assert await admin.set_password(u.id, "new-password", actor="admin") == 2
    assert await admin.list_sessions(u.id) == []
    assert await _login(env, "alice", "old-password") == 401
    assert await _login(env, "alice", "new-password") == 200
    assert await admin.set_password(u.id, "newer-password", logout_everywhere=False) == 0
    assert "password_changed" in env.event_types
    with pytest.raises(UnknownUser):
        await admin.set_password("ghost", "x")


async def test_enrol_and_disable_totp() -> None:
    env = make_env()
    admin = _admin(env)
    u = await admin.create_user("alice", password="pw")
    uri = await admin.enrol_totp(u.id)
    parsed = urlparse(uri)
    assert parsed.scheme == "otpauth" and parsed.path == "/Acme%20Corp:alice"
    b32 = parse_qs(parsed.query)["secret"][0]
    secret = base64.b32decode(b32 + "=" * (-len(b32) % 8))
    async with env.client() as c:
        r = await c.post("/login", json={"identifier": "alice", "password": "pw"})
        assert r.json() == {"factor_required": "totp"}
        r = await c.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 200
    await admin.disable_totp(u.id)
    assert (await env.store.get_factors(u.id)).totp_secret is None
    assert await _login(env, "alice", "pw") == 200
    assert {"totp_enrolled", "totp_disabled"} <= set(env.event_types)


async def test_regenerate_recovery_codes() -> None:
    env = make_env()
    admin = _admin(env)
    u = await admin.create_user("alice", password="pw")
    await admin.enrol_totp(u.id)
    first = await admin.regenerate_recovery_codes(u.id)
    assert len(first) == 10 and len(set(first)) == 10
    codes = await admin.regenerate_recovery_codes(u.id, count=3)
    assert (await env.store.get_factors(u.id)).recovery_codes == 3
    async with env.client() as c:
        await c.post("/login", json={"identifier": "alice", "password": "pw"})
        assert (await c.post("/factor", json={"recovery": first[0]})).status_code == 401
        assert (await c.post("/factor", json={"recovery": codes[0]})).status_code == 200


async def test_suspend_and_activate() -> None:
    env = make_env()
    admin = _admin(env)
    u = await admin.create_user("alice", password="pw")
    assert await _login(env, "alice", "pw") == 200
    assert await admin.suspend(u.id, actor="root") == 1
    assert await _login(env, "alice", "pw") == 401
    await admin.activate(u.id)
    assert await _login(env, "alice", "pw") == 200
    kinds = [(e.type, e.actor) for e in env.events if e.type.startswith("account_")]
    assert kinds == [("account_suspended", "root"), ("account_activated", None)]


async def test_unlock_clears_levers() -> None:
    env = make_env()
    env.authn.lockout = Lockout(
        env.store, LockoutPolicy(user=Lever(2, 60, 600)), clock=env.clock, metrics=env.metrics
    )
    admin = _admin(env)
    u = await admin.create_user("alice", password="pw")
    for _ in range(2):
        assert await _login(env, "alice", "bad") == 401
    assert await _login(env, "alice", "pw") == 429
    assert await admin.unlock(u.id, ip="127.0.0.1") >= 1
    assert await _login(env, "alice", "pw") == 200
    assert "lockout_cleared" in env.event_types


async def test_admin_without_registry_or_lockout() -> None:
    env = make_env()
    admin = UserAdmin(env.store, env.keys, hasher=fast_hasher())
    u = await admin.create_user("alice", password="pw")
    assert await admin.suspend(u.id) == 0
    with pytest.raises(RuntimeError):
        await admin.unlock(u.id)
    with pytest.raises(RuntimeError):
        await admin.list_sessions(u.id)
    with pytest.raises(RuntimeError):
        await admin.set_password(u.id, "x")
