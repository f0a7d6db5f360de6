"""UserAdmin: create users/tenants, passwords, TOTP, recovery codes, status, unlock."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlparse

import pytest
from authn_app import Env, fast_hasher, make_env

from axess.authn.lockout import Lever, Lockout, LockoutPolicy
from axess.authn.totp import TOTPCode, hotp, time_step, totp
from axess.authn.users import UnknownUser, UserAdmin
from axess.errors import EnvelopeError
from axess.keys import Key, Keyring


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
    for bad in ({"tenant_id": "acme "}, {"tenant_id": "beta", "slug": "beta "}):
        with pytest.raises(ValueError, match="cannot end with a space"):
            await admin.create_tenant(**bad)
    with pytest.raises(ValueError, match="cannot end with a space"):
        await admin.create_user("bob@example.com", tenant="acme", user_id="u-bob ")
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
    codes = await admin.regenerate_recovery_codes(u.id, count=3, actor="admin-7")
    assert (await env.store.get_factors(u.id)).recovery_codes == 3
    events = [e for e in env.events if e.type == "recovery_codes_regenerated"]
    assert [(e.user, e.actor, e.status) for e in events] == [
        (u.id, None, "success"),
        (u.id, "admin-7", "success"),
    ]
    shown = set(first) | set(codes)  # an event never carries a code
    assert not any(v in shown for e in events for v in e.as_kwargs().values())
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


# -- confirmed TOTP enrolment -------------------------------------------------------
def _b32(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8))


def _wrong_code(secret: bytes, now: float) -> str:
    valid = {hotp(secret, time_step(now) + d) for d in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)


async def test_begin_enrolment_stores_nothing_and_hides_secrets() -> None:
    env = make_env()
    admin = _admin(env)
    u = await admin.create_user("alice", password="pw")
    e = await admin.begin_totp_enrolment(u.id, account="alice@acme")
    parsed = urlparse(e.uri)
    assert parsed.scheme == "otpauth" and parsed.path == "/Acme%20Corp:alice%40acme"
    assert parse_qs(parsed.query)["secret"] == [e.secret]
    assert len(_b32(e.secret)) == 20 and e.pending.isascii()
    assert e.secret not in repr(e) and e.pending not in repr(e)
    assert (await env.store.get_factors(u.id)).totp_secret is None
    assert "totp_enrolled" not in env.event_types
    assert await _login(env, "alice", "pw") == 200  # still no second factor
    with pytest.raises(UnknownUser):
        await admin.begin_totp_enrolment("ghost")


async def test_wrong_code_does_not_enrol() -> None:
    env = make_env()
    admin = _admin(env)
    u = await admin.create_user("alice", password="pw")
    e = await admin.begin_totp_enrolment(u.id)
    secret = _b32(e.secret)
    for bad in (_wrong_code(secret, env.clock.time()), "", "12345", "abcdef", "1" * 100):
        assert not await admin.confirm_totp_enrolment(u.id, e.pending, bad)
    # a code of the step before the window is refused too
    old = hotp(secret, time_step(env.clock.time()) - 2)
    assert not await admin.confirm_totp_enrolment(u.id, e.pending, old)
    assert (await env.store.get_factors(u.id)).totp_secret is None
    assert "totp_enrolled" not in env.event_types
    async with env.client() as c:
        r = await c.post("/login", json={"identifier": "alice", "password": "pw"})
        assert r.status_code == 200 and r.json()["factors"] == ["password"]


async def test_right_code_enrols_and_cannot_be_replayed_at_login() -> None:
    env = make_env()
    admin = _admin(env)
    u = await admin.create_user("alice", password="pw")
    e = await admin.begin_totp_enrolment(u.id)
    secret = _b32(e.secret)
    env.clock.advance(200)  # the user takes a while to scan
    code = totp(secret, env.clock.time())
    assert await admin.confirm_totp_enrolment(u.id, e.pending, TOTPCode(code), actor="alice")
    factors = await env.store.get_factors(u.id)
    assert factors.totp_secret is not None and factors.totp_last_step == time_step(env.clock.time())
    assert admin.sealer.open(factors.totp_secret, u.id) == secret
    assert [(ev.type, ev.actor) for ev in env.events if ev.type == "totp_enrolled"] == [
        ("totp_enrolled", "alice")
    ]
    async with env.client() as c:
        r = await c.post("/login", json={"identifier": "alice", "password": "pw"})
        assert r.json() == {"factor_required": "totp"}
        # the code that confirmed the enrolment is spent
        assert (await c.post("/factor", json={"totp": code})).status_code == 401
        env.clock.advance(30)
        r = await c.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 200 and r.json()["factors"] == ["password", "totp"]


async def test_pending_enrolment_keeps_the_current_secret_until_confirmed() -> None:
    env = make_env()
    admin = _admin(env)
    u = await admin.create_user("alice", password="pw")
    uri = await admin.enrol_totp(u.id)  # immediate (admin) enrolment
    old = _b32(parse_qs(urlparse(uri).query)["secret"][0])
    e = await admin.begin_totp_enrolment(u.id)
    assert await admin.pending_totp_enrolment(u.id, e.pending) == e  # shown again
    async with env.client() as c:
        await c.post("/login", json={"identifier": "alice", "password": "pw"})
        r = await c.post("/factor", json={"totp": totp(old, env.clock.time())})
        assert r.status_code == 200  # the old secret still works
    env.clock.advance(30)
    assert await admin.confirm_totp_enrolment(
        u.id, e.pending, totp(_b32(e.secret), env.clock.time())
    )
    env.clock.advance(30)
    async with env.client() as c:
        await c.post("/login", json={"identifier": "alice", "password": "pw"})
        assert (
            await c.post("/factor", json={"totp": totp(old, env.clock.time())})
        ).status_code == 401
        r = await c.post("/factor", json={"totp": totp(_b32(e.secret), env.clock.time())})
        assert r.status_code == 200


def _flip(token: str, at: int) -> str:
    ch = token[at]
    return token[:at] + ("A" if ch != "A" else "B") + token[at + 1 :]


async def test_tampered_foreign_and_garbage_tokens_are_refused() -> None:
    env = make_env()
    admin = _admin(env)
    alice = await admin.create_user("alice", password="pw")
    bob = await admin.create_user("bob", password="pw")
    e = await admin.begin_totp_enrolment(bob.id)
    code = totp(_b32(e.secret), env.clock.time())
    # bob's token does not enrol alice, even with the right code
    assert not await admin.confirm_totp_enrolment(alice.id, e.pending, code)
    assert await admin.pending_totp_enrolment(alice.id, e.pending) is None
    tampered = [_flip(e.pending, i) for i in (0, 5, len(e.pending) // 2, len(e.pending) - 2)]
    garbage = ["", "x", "!!!!", "A" * 10_000, e.pending + "AAAA", e.pending[:-8], "é" * 20]
    for token in [*tampered, *garbage]:
        assert not await admin.confirm_totp_enrolment(bob.id, token, code)
        assert await admin.pending_totp_enrolment(bob.id, token) is None
    # an active sealed secret is not a pending token, and a pending token is
    # not an active secret (different associated data)
    await admin.enrol_totp(alice.id)
    sealed = (await env.store.get_factors(alice.id)).totp_secret
    assert sealed is not None
    as_token = base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()
    assert not await admin.confirm_totp_enrolment(alice.id, as_token, code)
    raw = base64.urlsafe_b64decode(e.pending + "=" * (-len(e.pending) % 4))
    for uid in (alice.id, bob.id):
        with pytest.raises(EnvelopeError):
            admin.sealer.open(raw, uid)
    assert (await env.store.get_factors(bob.id)).totp_secret is None
    assert await admin.confirm_totp_enrolment(bob.id, e.pending, code)  # the real one works
    with pytest.raises(UnknownUser):
        await admin.confirm_totp_enrolment("ghost", e.pending, code)


async def test_pending_token_expires_after_ten_minutes() -> None:
    env = make_env()
    admin = _admin(env)
    u = await admin.create_user("alice", password="pw")
    e = await admin.begin_totp_enrolment(u.id)
    env.clock.advance(600)
    assert await admin.pending_totp_enrolment(u.id, e.pending) is not None  # at the limit
    env.clock.advance(1)
    code = totp(_b32(e.secret), env.clock.time())
    assert not await admin.confirm_totp_enrolment(u.id, e.pending, code)
    assert await admin.pending_totp_enrolment(u.id, e.pending) is None
    assert (await env.store.get_factors(u.id)).totp_secret is None
    # a shorter lifetime can be configured
    short = _admin(env, totp_pending_ttl=60)
    e = await short.begin_totp_enrolment(u.id)
    env.clock.advance(61)
    assert not await short.confirm_totp_enrolment(
        u.id, e.pending, totp(_b32(e.secret), env.clock.time())
    )
    with pytest.raises(ValueError):
        _admin(env, totp_pending_ttl=0)


async def test_pending_token_opens_with_previous_key_after_rotation() -> None:
    env = make_env()
    admin = _admin(env)
    u = await admin.create_user("alice", password="pw")
    e = await admin.begin_totp_enrolment(u.id)
    old = list(env.keys.keys("envelope"))
    new = Key.generate("e2")

    def ring(envelope: list[Key]) -> Keyring:
        return Keyring(
            signing=env.keys.keys("signing"),
            envelope=envelope,
            fingerprint=env.keys.keys("fingerprint"),
            csrf=env.keys.keys("csrf"),
            device=env.keys.keys("device"),
        )

    gone = UserAdmin(env.store, ring([new]), clock=env.clock, hasher=fast_hasher())
    code = totp(_b32(e.secret), env.clock.time())
    assert not await gone.confirm_totp_enrolment(u.id, e.pending, code)  # old key removed
    rotated = UserAdmin(env.store, ring([new, *old]), clock=env.clock, hasher=fast_hasher())
    assert await rotated.confirm_totp_enrolment(u.id, e.pending, code)
    sealed = (await env.store.get_factors(u.id)).totp_secret
    assert sealed is not None and not rotated.sealer.needs_reseal(sealed)  # sealed with e2
    env.authn.sealer = rotated.sealer
    env.clock.advance(30)
    async with env.client() as c:
        await c.post("/login", json={"identifier": "alice", "password": "pw"})
        r = await c.post("/factor", json={"totp": totp(_b32(e.secret), env.clock.time())})
        assert r.status_code == 200


async def test_create_tenant_validates_lockout_overrides() -> None:
    env = make_env()
    admin = _admin(env)
    with pytest.raises(ValueError, match="unknown lever"):
        await admin.create_tenant("acme", lockout_overrides={"users": {"threshold": 3}})
    assert await env.store.get_tenant("acme") is None
    t = await admin.create_tenant("acme", lockout_overrides={"user": {"threshold": 3}})
    assert t.lockout_overrides == {"user": {"threshold": 3}}


async def test_text_no_store_can_hold_is_refused_as_input_on_every_backend(
    login_store: object,
) -> None:
    # PostgreSQL refuses a NUL and every SQL store has column widths: such
    # input is a ValueError for the admin and a 401 for a login, never a
    # StoreError (a 503 that looks like an outage).
    env = make_env(login_store)  # type: ignore[arg-type]
    admin = _admin(env)
    await admin.create_user("alice@example.com", password="correct horse")
    long_after_nfkc = "\ufdfa" * 30  # 30 characters that NFKC makes 540
    for identifier, kw in (
        ("bob\x00@example.com", {}),
        (long_after_nfkc, {}),
        ("a" * 321, {}),
        ("bob@example.com", {"tenant": "acme\x00"}),
        ("bob@example.com", {"tenant": "t" * 129}),
        ("bob@example.com", {"user_id": "u\x00"}),
    ):
        with pytest.raises(ValueError):
            await admin.create_user(identifier, password="correct horse", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await admin.create_tenant("acme\x00")
    for identifier, kw in (
        ("alice@example.com\x00", {}),
        ("alice@example.com", {"tenant": "a\x00"}),
        (long_after_nfkc, {}),
    ):
        assert await _login(env, identifier, "correct horse", **kw) == 401, (identifier, kw)
    assert await _login(env, "alice@example.com", "correct horse") == 200


async def test_session_admin_stays_in_the_users_tenant() -> None:
    """Sessions of the same user id in another tenant (an app that signs
    people in from another identity provider with ``Session.authenticate``)
    belong to someone else: suspend, a password change, logout everywhere
    and the listing leave them alone, in the default tenant and in others."""
    import time

    from axess.stores.base import TenantRecord
    from axess.testing.contract import make_record

    env = make_env()
    admin = _admin(env)
    await env.store.create_tenant(TenantRecord("acme", "acme"))
    alice = await admin.create_user("alice@example.com", password="pw-123456", user_id="u-a")
    bob = await admin.create_user("bob@example.com", tenant="acme", user_id="u-b")
    now = time.time()
    mine = [make_record(f"a{i}", user="u-a", created=now) for i in range(2)]
    mine += [make_record(f"b{i}", user="u-b", tenant="acme", created=now) for i in range(2)]
    theirs = [
        make_record("x", user="u-a", tenant="globex", created=now),
        make_record("y", user="u-b", created=now),
    ]
    for record in mine + theirs:
        assert await env.store.create_session(record)
    assert {s.storage_key for s in await admin.list_sessions(alice.id)} == {r.key for r in mine[:2]}
    assert await admin.logout_everywhere(alice.id, except_session=mine[0].key) == 1
    assert await admin.set_password(bob.id, "new-pw-123456", except_session=mine[2].key) == 1
    assert await admin.suspend(alice.id) == 1
    assert await admin.suspend(bob.id) == 1
    left = {r.key for u in ("u-a", "u-b") for r in await env.store.list_user_sessions(u, now)}
    assert left == {r.key for r in theirs}
