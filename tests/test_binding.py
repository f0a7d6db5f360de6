"""Fingerprint binding: stolen cookies replayed elsewhere fail; real users stay."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from helpers import SESSION_COOKIE, CountingStore, client, cookie_of, make_app, make_bound_auth

from axess import Axess, Keyring, MockClock
from axess.net import TrustedProxies
from axess.session.binding import BindingPolicy

UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"


def make(policy: BindingPolicy | None = None, events: list[Any] | None = None) -> Axess:
    return make_bound_auth(
        binding=policy, on_session_event=(events.append if events is not None else None)
    )


def env(ip: str, ua: str | None = UA, lang: str | None = None) -> dict[str, str]:
    h = {"x-forwarded-for": ip}
    if ua is not None:
        h["user-agent"] = ua
    if lang is not None:
        h["accept-language"] = lang
    return h


async def login(auth: Axess, headers: dict[str, str]) -> str:
    async with client(make_app(auth)) as c:
        r = await c.post("/login?user=alice&tenant=acme", headers=headers)
    value = cookie_of(r)
    assert value
    return value


async def whoami(auth: Axess, cookie: str, headers: dict[str, str]) -> tuple[Any, Any]:
    async with client(make_app(auth)) as c:
        c.cookies.set(SESSION_COOKIE, cookie)
        r = await c.get("/read", headers=headers)
    return r.json(), r


async def test_same_client_and_mobile_ip_change_inside_prefix_keep_session() -> None:
    auth = make()
    cookie = await login(auth, env("198.51.100.10"))
    assert (await whoami(auth, cookie, env("198.51.100.10")))[0]["user"] == "alice"
    assert (await whoami(auth, cookie, env("198.51.100.200")))[0]["user"] == "alice"


async def test_stolen_cookie_revoked_by_default(caplog: pytest.LogCaptureFixture) -> None:
    events: list[Any] = []
    auth = make(events=events)
    cookie = await login(auth, env("198.51.100.10"))
    with caplog.at_level(logging.WARNING, logger="axess.session.binding"):
        body, r = await whoami(auth, cookie, env("198.51.100.10", ua="curl/8.0"))
    assert body["user"] is None and cookie_of(r) == ""
    assert "fingerprint mismatch" in caplog.text
    assert [e.type for e in events][-2:] == ["session_binding_mismatch", "session_invalidated"]
    assert events[-1].reason == "binding_mismatch"  # not a logout, in the audit trail
    # The row is gone: the legitimate client is logged out too (revoke policy).
    assert await auth.list_sessions("alice") == []
    assert (await whoami(auth, cookie, env("198.51.100.10")))[0]["user"] is None


async def test_a_revoked_replay_reads_none_of_the_victims_data() -> None:
    # The request goes on as a fresh guest: nothing of the revoked session,
    # not even the parsed data the load shared with earlier requests.
    auth = make()
    cookie = await login(auth, env("198.51.100.10"))
    async with client(make_app(auth)) as c:
        c.cookies.set(SESSION_COOKIE, cookie)
        r = await c.post("/write?secret=s3", headers=env("198.51.100.10"))
        assert r.json() == {"n": 1}
        assert (await c.get("/read", headers=env("198.51.100.10"))).json()["n"] == 1
    body, _ = await whoami(auth, cookie, env("198.51.100.10", ua="curl/8.0"))
    assert body == {"user": None, "n": None, "auth": "guest"}


async def test_the_mismatch_event_names_the_replaying_client() -> None:
    events: list[Any] = []
    auth = make(events=events)
    cookie = await login(auth, env("198.51.100.10"))
    (created,) = [e for e in events if e.type == "session_created"]
    assert (created.ip, created.user_agent) == ("198.51.100.10", UA)
    await whoami(auth, cookie, env("203.0.113.66", ua="curl/8.0"))
    mismatch, revoked = events[-2:]
    assert mismatch.type == "session_binding_mismatch" and mismatch.reason == "revoke"
    # Where the stolen cookie was replayed from: the audit trail's evidence.
    assert (mismatch.ip, mismatch.user_agent) == ("203.0.113.66", "curl/8.0")
    assert (revoked.ip, revoked.user_agent) == ("203.0.113.66", "curl/8.0")


async def test_other_network_is_a_mismatch() -> None:
    auth = make()
    cookie = await login(auth, env("198.51.100.10"))
    assert (await whoami(auth, cookie, env("203.0.113.5")))[0]["user"] is None


async def test_missing_user_agent_is_a_mismatch() -> None:
    auth = make()
    cookie = await login(auth, env("198.51.100.10"))
    assert (await whoami(auth, cookie, env("198.51.100.10", ua=None)))[0]["user"] is None


async def test_reauth_policy_steps_up_instead_of_revoking() -> None:
    auth = make(BindingPolicy(on_mismatch="reauth", reauth_factors=("password",)))
    cookie = await login(auth, env("198.51.100.10"))
    body, _ = await whoami(auth, cookie, env("203.0.113.5"))
    assert body == {"user": "alice", "n": None, "auth": "authenticating"}
    # The original client now also has to step up: the session is no longer authenticated.
    body, _ = await whoami(auth, cookie, env("198.51.100.10"))
    assert body["auth"] == "authenticating"
    assert len(await auth.list_sessions("alice", tenant_id="acme")) == 1


async def test_warn_policy_keeps_session(caplog: pytest.LogCaptureFixture) -> None:
    auth = make(BindingPolicy(on_mismatch="warn"))
    cookie = await login(auth, env("198.51.100.10"))
    with caplog.at_level(logging.WARNING):
        body, _ = await whoami(auth, cookie, env("203.0.113.5"))
    assert body["user"] == "alice"
    assert "fingerprint mismatch" in caplog.text


async def test_accept_language_optional_material() -> None:
    auth = make(BindingPolicy(accept_language=True))
    cookie = await login(auth, env("198.51.100.10", lang="de-DE,de;q=0.9"))
    assert (await whoami(auth, cookie, env("198.51.100.10", lang="de-AT")))[0]["user"] == "alice"
    assert (await whoami(auth, cookie, env("198.51.100.10", lang="fr-FR")))[0]["user"] is None


async def test_ipv6_prefix_64() -> None:
    auth = make()
    cookie = await login(auth, env("2001:db8:1:2::10"))
    assert (await whoami(auth, cookie, env("2001:db8:1:2:ffff::1")))[0]["user"] == "alice"
    assert (await whoami(auth, cookie, env("2001:db8:1:3::10")))[0]["user"] is None


async def test_pepper_rotation_rebinds_without_logout() -> None:
    auth = make()
    store: CountingStore = auth.store  # type: ignore[assignment]
    cookie = await login(auth, env("198.51.100.10"))
    (before,) = await store.list_user_sessions("alice", auth.clock.time())
    assert await auth.rotate_fingerprint_pepper("acme") == 2
    writes = store.writes
    assert (await whoami(auth, cookie, env("198.51.100.10")))[0]["user"] == "alice"
    assert store.writes == writes + 1  # re-bound and saved once
    (after,) = await store.list_user_sessions("alice", auth.clock.time())
    assert after.payload != before.payload
    # Next request: bound with the new pepper, no further write.
    assert (await whoami(auth, cookie, env("198.51.100.10")))[0]["user"] == "alice"
    assert store.writes == writes + 1
    # A thief after rotation still fails.
    assert (await whoami(auth, cookie, env("203.0.113.5")))[0]["user"] is None


async def test_guests_are_not_bound() -> None:
    auth = make()
    async with client(make_app(auth)) as c:
        await c.post("/write", headers=env("198.51.100.10"))
        r = await c.get("/read", headers=env("203.0.113.5", ua="other"))
    assert r.json()["n"] == 1


async def test_binding_disabled_is_a_logged_weakening(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="axess"):
        auth = make(BindingPolicy(enabled=False))
    assert "binding disabled" in caplog.text
    cookie = await login(auth, env("198.51.100.10"))
    assert (await whoami(auth, cookie, env("203.0.113.5", ua="x")))[0]["user"] == "alice"


async def test_fingerprint_key_rotation_rebinds_instead_of_logging_out() -> None:
    from axess import Key

    auth = make()
    cookie = await login(auth, env("198.51.100.10"))
    old = auth.keys
    rotated = Keyring(
        signing=old.keys("signing"),
        envelope=old.keys("envelope"),
        fingerprint=[Key("f2", b"\x02" * 32), *old.keys("fingerprint")],
        csrf=old.keys("csrf"),
        device=old.keys("device"),
    )
    auth2 = Axess(
        store=auth.store,
        keys=rotated,
        clock=auth.clock,
        trusted_proxies=TrustedProxies(["127.0.0.0/8"]),
        csrf=False,
        cleanup_interval=None,
    )
    store: CountingStore = auth.store  # type: ignore[assignment]
    writes = store.writes
    assert (await whoami(auth2, cookie, env("198.51.100.10")))[0]["user"] == "alice"
    assert store.writes == writes + 1  # re-bound under the new key
    assert (await whoami(auth2, cookie, env("198.51.100.10")))[0]["user"] == "alice"
    assert store.writes == writes + 1
    assert (await whoami(auth2, cookie, env("203.0.113.5")))[0]["user"] is None


def peer(auth: Axess, store: Any = None) -> Axess:
    """Another instance of the same app: same keys, same store, own process state."""
    return Axess(
        store=store if store is not None else auth.store,
        keys=auth.keys,
        clock=auth.clock,
        trusted_proxies=TrustedProxies(["127.0.0.0/8"]),
        csrf=False,
        debug=True,
        cleanup_interval=None,
    )


async def test_rotated_pepper_is_shared_by_instances_and_kept_across_restarts() -> None:
    a = make()
    b = peer(a)
    store: CountingStore = a.store  # type: ignore[assignment]
    clock: MockClock = a.clock  # type: ignore[assignment]
    old = await login(a, env("198.51.100.10"))
    assert (await whoami(b, old, env("198.51.100.10")))[0]["user"] == "alice"  # b caches v1
    assert await a.rotate_fingerprint_pepper("acme") == 2
    assert (await store.tenant_pepper("acme")).version == 2  # in the store, not in a
    # A session bound by a under v2 reaches b, which still caches v1: b reloads
    # at once instead of calling it a mismatch.
    new = await login(a, env("198.51.100.20"))
    assert (await whoami(b, new, env("198.51.100.20")))[0]["user"] == "alice"
    # b re-binds the old session once its cache is due, without a logout.
    clock.advance(61)
    writes = store.writes
    assert (await whoami(b, old, env("198.51.100.10")))[0]["user"] == "alice"
    assert store.writes == writes + 1
    # A restarted instance binds new logins under the stored version.
    c = peer(a)
    assert (await c.peppers.current("acme")).version == 2
    assert (await whoami(c, old, env("203.0.113.5")))[0]["user"] is None  # thieves still fail


async def test_pepper_version_survives_a_restart_on_sql(sql_store: Any) -> None:
    a = peer(make(), store=sql_store)
    cookie = await login(a, env("198.51.100.10"))
    assert await a.rotate_fingerprint_pepper("acme") == 2
    b = peer(a)  # a new process on the same database
    assert (await b.peppers.current("acme")).version == 2
    assert (await whoami(b, cookie, env("198.51.100.10")))[0]["user"] == "alice"
    assert (await whoami(b, cookie, env("203.0.113.5")))[0]["user"] is None


async def test_changing_the_tenant_secret_unbinds_its_sessions() -> None:
    from axess.stores.base import TenantRecord

    a = make()
    clock: MockClock = a.clock  # type: ignore[assignment]
    await a.store.create_tenant(TenantRecord("acme", "acme"))  # type: ignore[attr-defined]
    cookie = await login(a, env("198.51.100.10"))
    other = await login(a, env("198.51.100.10"))
    await a.store.update_tenant(  # type: ignore[attr-defined]
        TenantRecord("acme", "acme", pepper=b"\x07" * 32)
    )
    # Until the cache is due the old secret is used; then every binding of
    # the tenant stops matching (a hard reset, unlike a rotation).
    assert (await whoami(a, cookie, env("198.51.100.10")))[0]["user"] == "alice"
    clock.advance(61)
    assert (await whoami(a, cookie, env("198.51.100.10")))[0]["user"] is None
    assert (await whoami(a, other, env("198.51.100.10")))[0]["user"] is None
    fresh = await login(a, env("198.51.100.10"))
    assert (await whoami(a, fresh, env("198.51.100.10")))[0]["user"] == "alice"


async def test_pepper_reload_outage_uses_the_cached_version_else_503() -> None:
    a = make()
    clock: MockClock = a.clock  # type: ignore[assignment]
    cookie = await login(a, env("198.51.100.10"))

    async def down(tenant_id: str) -> Any:
        from axess import StoreError

        raise StoreError("identity down (test)", backend="memory", substore="identity")

    a.store.tenant_pepper = down  # type: ignore[method-assign]
    clock.advance(61)  # the cached state is due: the reload fails, the cache serves
    assert (await whoami(a, cookie, env("198.51.100.10")))[0]["user"] == "alice"
    b = peer(a)  # knows nothing about the tenant yet: cannot verify -> 503
    _, r = await whoami(b, cookie, env("198.51.100.10"))
    assert r.status_code == 503


async def test_without_an_identity_store_rotation_is_per_process(
    caplog: pytest.LogCaptureFixture, valkey_store: Any
) -> None:
    a = peer(make(), store=valkey_store)
    cookie = await login(a, env("198.51.100.10"))
    with caplog.at_level(logging.WARNING, logger="axess"):
        assert await a.rotate_fingerprint_pepper("acme") == 2
    assert "this process only" in caplog.text
    assert (await whoami(a, cookie, env("198.51.100.10")))[0]["user"] == "alice"
