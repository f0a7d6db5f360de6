"""AuthnService: the login flow, lockout order, TOTP / recovery codes, events."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from authn_app import Env, enrol_totp, fast_hasher, make_env
from helpers import SESSION_COOKIE

from axess.audit.events import EventType
from axess.authn import PasswordHasher
from axess.authn.lockout import Lever, Lockout, LockoutPolicy, lockout_keys
from axess.authn.recovery import RecoveryCodeHasher
from axess.authn.service import AuthnService, ip_allowed
from axess.authn.totp import totp
from axess.keys import Keyring
from axess.session.cookie import storage_key
from axess.stores import MemoryStore
from axess.stores.base import DEFAULT_TENANT, SUSPENDED, TenantRecord

COOKIE = SESSION_COOKIE


async def login(c: httpx.AsyncClient, ident: str, pw: str, **kw: str) -> httpx.Response:
    return await c.post("/login", json={"identifier": ident, "password": pw, **kw})


async def test_password_login_authenticates_and_counts() -> None:
    env = make_env()
    uid = await env.add_user("Alice@Example.com")
    calls = env.authn.hasher.hash_calls
    async with env.client() as c:
        r = await login(c, "alice@example.com", "correct horse")
        assert r.status_code == 200
        assert r.json() == {
            "authenticated": True,
            "user_id": uid,
            "tenant_id": None,
            "factors": ["password"],
        }
        me = (await c.get("/me")).json()
    assert me["kind"] == "authenticated" and me["user"] == uid
    assert env.authn.hasher.hash_calls == calls + 1
    assert env.metrics.counts == {
        "auth_attempt": 1,
        "factor_attempt": 1,
        "factor_success": 1,
        "auth_success": 1,
    }
    assert env.event_types == ["login_attempt", "factor_verified", "authenticated"]
    assert set(env.event_types) <= {str(t) for t in EventType}
    user = await env.store.get_user(uid)
    assert user is not None and user.last_login_at == env.clock.time()


async def test_wrong_password_and_unknown_user_fail_the_same_way() -> None:
    env = make_env()
    await env.add_user("alice")
    async with env.client() as c:
        before = env.authn.hasher.hash_calls
        wrong = await login(c, "alice", "nope")
        unknown = await login(c, "mallory", "nope")
    assert env.authn.hasher.hash_calls == before + 2  # the unknown user ran a dummy hash
    assert wrong.status_code == unknown.status_code == 401
    assert (
        wrong.json()
        == unknown.json()
        == {
            "error": "invalid_credentials",
            "detail": "invalid identifier or credentials",
        }
    )
    assert env.metrics.counts["auth_failure"] == 2
    assert env.metrics.counts["factor_failure"] == 2


async def test_a_failed_login_without_a_cookie_stores_no_session(login_store: Any) -> None:
    """A client that keeps no cookies (a script, a botnet) gets no session
    row and no cookie per failed attempt, for a known or unknown identifier:
    failures cannot fill the session store."""
    env = make_env(login_store)
    await env.add_user("alice")
    for identifier in ("alice", "mallory", "alice"):
        async with env.client() as c:
            r = await login(c, identifier, "nope")
            assert r.status_code == 401
            assert "set-cookie" not in r.headers
            assert (await c.get("/me")).json()["kind"] == "guest"
    if isinstance(login_store, MemoryStore):
        assert len(login_store) == 0
    async with env.client() as c:  # a success still stores its session
        r = await login(c, "alice", "correct horse")
        assert r.status_code == 200 and SESSION_COOKIE in c.cookies
        assert (await c.get("/me")).json()["user"] == "u-alice"


def _shape(r: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted(
        (k, "<cookie>" if k == "set-cookie" else v)
        for k, v in r.headers.items()
        if k not in {"date"}
    )
    return r.status_code, r.content, headers


async def test_known_and_unknown_identical_through_lock_and_unlock() -> None:
    policy = LockoutPolicy(user=Lever(3, 60, 100))
    store = MemoryStore()
    env = make_env(store, lockout=None)
    env.authn.lockout = Lockout(store, policy, clock=env.clock, metrics=env.metrics)
    await env.add_user("alice")
    shapes: dict[str, list[object]] = {"alice": [], "ghost": []}
    for ident in shapes:
        async with env.client() as c:
            for _ in range(4):  # 3 failures lock, the 4th is refused
                shapes[ident].append(_shape(await login(c, ident, "wrong")))
    assert shapes["alice"] == shapes["ghost"]
    assert [s[0] for s in shapes["alice"]] == [401, 401, 401, 429]  # type: ignore[index]
    locked = shapes["alice"][-1]
    assert ("retry-after", "100") in locked[2]  # type: ignore[index]
    assert env.metrics.counts["account_locked:user"] == 2
    assert env.event_types.count("lockout_triggered") == 2
    # unlock: both identifiers are back to the plain 401
    for ident in shapes:
        await env.authn.lockout.unlock(lockout_keys(DEFAULT_TENANT, ident, "127.0.0.1"))
    after = {}
    for ident in shapes:
        async with env.client() as c:
            after[ident] = _shape(await login(c, ident, "wrong"))
    assert after["alice"] == after["ghost"] and after["alice"][0] == 401
    async with env.client() as c:
        assert (await login(c, "alice", "correct horse")).status_code == 200


async def test_locked_attempt_costs_no_hash_even_with_the_right_password() -> None:
    policy = LockoutPolicy(user=Lever(2, 60, 100))
    store = MemoryStore()
    env = make_env(store)
    env.authn.lockout = Lockout(store, policy, clock=env.clock, metrics=env.metrics)
    await env.add_user("alice")
    ctx = env.authn.hasher
    async with env.client() as c:
        await login(c, "alice", "x")
        await login(c, "alice", "x")
        before = ctx.hash_calls
        r = await login(c, "alice", "correct horse")
        assert r.status_code == 429 and ctx.hash_calls == before
        r = await login(c, "ghost", "x")  # the ip lever still counts, user lever unlocked
        env.clock.advance(101)
        assert (await login(c, "alice", "correct horse")).status_code == 200


@pytest.mark.parametrize("ident", ["", "   ", "\u3000"])
async def test_empty_identifier_rejected_before_any_lever(ident: str) -> None:
    env = make_env()
    calls = env.authn.hasher.hash_calls
    async with env.client() as c:
        r = await login(c, ident, "pw")
    assert r.status_code == 401
    assert env.authn.hasher.hash_calls == calls
    assert env.store._levers == {}


async def test_suspended_user_and_user_without_password_look_invalid() -> None:
    env = make_env()
    await env.add_user("sus", status="suspended")
    await env.add_user("nopw", password=None)
    async with env.client() as c:
        before = env.authn.hasher.hash_calls
        assert (await login(c, "sus", "correct horse")).status_code == 401
        assert (await login(c, "nopw", "correct horse")).status_code == 401
    assert env.authn.hasher.hash_calls == before + 2


async def test_totp_flow_and_replay_refused() -> None:
    env = make_env()
    uid = await env.add_user("alice")
    secret = await enrol_totp(env, uid)
    async with env.client() as c:
        r = await login(c, "alice", "correct horse")
        assert r.json() == {"factor_required": "totp"}
        me = (await c.get("/me")).json()
        assert me["kind"] == "authenticating" and me["user"] == uid
        assert (await c.post("/factor", json={"totp": "000000"})).status_code in (401,)
        code = totp(secret, env.clock.time())
        r = await c.post("/factor", json={"totp": code})
        assert r.status_code == 200 and r.json()["factors"] == ["password", "totp"]
        assert (await c.get("/me")).json()["kind"] == "authenticated"
    # a second login replaying the same code is refused
    async with env.client() as c:
        await login(c, "alice", "correct horse")
        assert (await c.post("/factor", json={"totp": code})).status_code == 401
        env.clock.advance(30)
        r = await c.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 200
    assert "factor_failed" in env.event_types


async def test_complete_totp_logins_leave_no_ip_or_tenant_unit_spent(login_store: Any) -> None:
    """Each step of a password + TOTP login reserves an IP and a tenant unit
    (in the same window); the complete login hands all of them back, so
    legitimate logins from one address never fill those levers."""
    env = make_env(login_store)
    keys = lockout_keys(DEFAULT_TENANT, "anyone", "127.0.0.1")  # the test client's address
    for i in range(3):
        uid = await env.add_user(f"user{i}")
        secret = await enrol_totp(env, uid)
        async with env.client() as c:
            assert (await login(c, f"user{i}", "correct horse")).status_code == 200
            r = await c.post("/factor", json={"totp": totp(secret, env.clock.time())})
            assert r.status_code == 200 and r.json()["user_id"] == uid
        for key in (keys.ip, keys.tenant):
            assert key is not None
            state = await login_store.lockout_state(key, env.clock.time())
            assert state is None or state.failures == 0, (i, key[:1], state)


async def test_totp_without_password_step_is_refused() -> None:
    env = make_env()
    uid = await env.add_user("alice")
    secret = await enrol_totp(env, uid)
    async with env.client() as c:
        r = await c.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 401
        await c.post("/begin", json={"identifier": "alice"})
        r = await c.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 401  # the password comes first


async def test_begin_login_then_password_then_recovery_code() -> None:
    env = make_env()
    uid = await env.add_user("alice")
    await enrol_totp(env, uid)
    codes = RecoveryCodeHasher(env.keys).generate(2)
    await env.store.replace_recovery_codes(uid, [env.authn.recovery.hash(c) for c in codes])
    async with env.client() as c:
        assert (await c.post("/begin", json={"identifier": "alice"})).json() == {
            "factor_required": "password"
        }
        assert (await c.post("/begin", json={"identifier": "ghost"})).json() == {
            "factor_required": "password"
        }
        await c.post("/begin", json={"identifier": "alice"})
        r = await c.post("/factor", json={"password": "correct horse"})
        assert r.json() == {"factor_required": "totp"}
        r = await c.post("/factor", json={"recovery": codes[0].lower()})
        assert r.status_code == 200 and r.json()["factors"] == ["password", "recovery_code"]
    assert "recovery_code_used" in env.event_types
    async with env.client() as c:
        await login(c, "alice", "correct horse")
        assert (await c.post("/factor", json={"recovery": codes[0]})).status_code == 401
    assert await env.store.count_recovery_codes(uid) == 1


async def test_session_fixation_id_rotates_and_old_row_is_gone() -> None:
    env = make_env()
    await env.add_user("alice")
    async with env.client() as c:
        await c.post("/begin", json={"identifier": "alice"})
        before = c.cookies[COOKIE].split(".")[0]
        assert await env.store.load_session(storage_key(before), env.clock.time()) is not None
        r = await c.post("/factor", json={"password": "correct horse"})
        assert r.status_code == 200
        after = c.cookies[COOKIE].split(".")[0]
    assert before != after
    assert await env.store.load_session(storage_key(before), env.clock.time()) is None
    rec = await env.store.load_session(storage_key(after), env.clock.time())
    assert rec is not None and rec.user_id == "u-alice"


async def test_rehash_on_login_when_parameters_changed() -> None:
    env = make_env()
    uid = await env.add_user("alice")
    env.authn.hasher = PasswordHasher(time_cost=2, memory_cost=64, parallelism=1)
    async with env.client() as c:
        assert (await login(c, "alice", "correct horse")).status_code == 200
    phc = (await env.store.get_factors(uid)).password_hash
    assert phc is not None and "t=2" in phc and not env.authn.hasher.needs_rehash(phc)
    async with env.client() as c:
        assert (await login(c, "alice", "correct horse")).status_code == 200


async def test_a_rehash_never_undoes_a_password_change_made_during_the_login(
    login_store: Any,
) -> None:
    """The password is changed while a login with the old one is computing
    its rehash: the new password stays, the old one stops working."""
    env = make_env(login_store)
    uid = await env.add_user("alice")
    env.authn.hasher = PasswordHasher(time_cost=2, memory_cost=64, parallelism=1)
    real_hash = env.authn.hasher.hash

    async def hash_while_password_changes(password: Any) -> str:
        rehashed = await real_hash(password)
        await login_store.set_password_hash(uid, await real_hash("brand new password"))
        return rehashed

    env.authn.hasher.hash = hash_while_password_changes  # type: ignore[method-assign]
    async with env.client() as c:
        # (The racing login itself is refused: the change wins.)
        assert (await login(c, "alice", "correct horse")).status_code == 401
    env.authn.hasher.hash = real_hash  # type: ignore[method-assign]
    async with env.client() as c:
        assert (await login(c, "alice", "correct horse")).status_code == 401
        assert (await login(c, "alice", "brand new password")).status_code == 200


@pytest.mark.parametrize("change", ["suspend", "new password"])
async def test_a_login_in_flight_does_not_outlive_a_suspension_or_password_change(
    login_store: Any, change: str
) -> None:
    """The user is suspended, or given a new password, while a login with the
    right (old) password is hashing: the change ended the user's sessions
    before this one existed, so the login must not create one."""
    env = make_env(login_store)
    uid = await env.add_user("alice")
    real_verify = env.authn.hasher.verify

    async def verify_while_the_admin_acts(phc: str, password: Any) -> bool:
        ok = await real_verify(phc, password)
        if change == "suspend":
            await login_store.set_user_status(uid, SUSPENDED)
        else:
            await login_store.set_password_hash(uid, await env.authn.hasher.hash("new password"))
        return ok

    env.authn.hasher.verify = verify_while_the_admin_acts  # type: ignore[method-assign]
    async with env.client() as c:
        r = await login(c, "alice", "correct horse")
        assert r.status_code == 401
        assert (await c.get("/me")).json()["kind"] == "guest"
    assert [e.reason for e in env.events if e.type == "factor_failed"] == ["changed_during_login"]
    assert not any(e.type == "authenticated" for e in env.events)


async def test_tenant_ip_policy(caplog: pytest.LogCaptureFixture) -> None:
    env = make_env()
    await env.store.create_tenant(TenantRecord("acme", "acme", ip_allow=("10.0.0.0/8",)))
    await env.store.create_tenant(TenantRecord("beta", "beta", ip_deny=("127.0.0.0/8",)))
    await env.store.create_tenant(
        TenantRecord("open", "open", ip_allow=("127.0.0.1/32",), ip_deny=("127.0.0.0/8",))
    )
    await env.store.create_tenant(TenantRecord("gone", "gone", status="suspended"))
    for t in ("acme", "beta", "open", "gone"):
        await env.add_user("alice", user_id=f"alice-{t}", tenant=t)
    with caplog.at_level(logging.WARNING, logger="axess.authn"):
        async with env.client() as c:
            assert (await login(c, "alice", "correct horse", tenant="acme")).status_code == 401
            assert (await login(c, "alice", "correct horse", tenant="beta")).status_code == 401
            assert (await login(c, "alice", "correct horse", tenant="gone")).status_code == 401
            assert (await login(c, "alice", "correct horse", tenant="nope")).status_code == 401
            r = await login(c, "alice", "correct horse", tenant="open")  # allow-list wins
            assert r.status_code == 200 and r.json()["tenant_id"] == "open"
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("login rejected by tenant IP policy" in m for m in msgs) == 2
    # A refusal runs a dummy hash, so it spends a unit of the guess budget
    # like a wrong password (the budget is reserved before any hash).
    for t in ("acme", "beta", "gone", "nope"):
        state = env.store._levers[lockout_keys(t, "alice", "127.0.0.1").user]
        assert state.failures == 1
    assert lockout_keys("open", "alice", "127.0.0.1").user not in env.store._levers


def test_ip_allowed_rules() -> None:
    assert ip_allowed(None, "1.2.3.4")
    t = TenantRecord("t", "t", ip_deny=("1.2.0.0/16",))
    assert not ip_allowed(t, "1.2.3.4") and ip_allowed(t, "1.3.3.4")
    assert not ip_allowed(t, "::ffff:1.2.3.4") and not ip_allowed(t, "garbage")
    assert ip_allowed(TenantRecord("t", "t"), "garbage")
    assert not ip_allowed(TenantRecord("t", "t", ip_allow=("bad",)), "1.2.3.4")


async def test_logout_invalidates_and_emits() -> None:
    env = make_env()
    await env.add_user("alice")
    async with env.client() as c:
        await login(c, "alice", "correct horse")
        key = (await c.get("/me")).json()["key"]
        await c.post("/logout")
        assert (await c.get("/me")).json()["kind"] == "guest"
    assert await env.store.load_session(key, env.clock.time()) is None
    assert env.event_types[-1] == "logout" and env.events[-1].user == "u-alice"


async def test_store_outage_is_503_not_500() -> None:
    env = make_env()

    async def down(*a: object, **k: object) -> object:
        from axess.errors import StoreError

        raise StoreError("down", backend="memory", substore="lockout")

    env.store.lockout_reserve = down  # type: ignore[method-assign]
    async with env.client() as c:
        r = await login(c, "alice", "pw")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"


def _fail_once(env: Env, method: str) -> list[str]:
    """Make ``env.store.<method>`` raise a StoreError while the returned list
    holds "down"."""
    from axess.errors import StoreError

    switch = ["down"]
    real = getattr(env.store, method)

    async def flaky(*a: object, **k: object) -> object:
        if switch:
            raise StoreError("down", backend="memory", substore="lockout")
        return await real(*a, **k)

    setattr(env.store, method, flaky)
    return switch


@pytest.mark.parametrize("method", ["lockout_success", "record_login"])
async def test_a_store_error_at_the_last_step_signs_nobody_in(method: str) -> None:
    """The store work of a complete login (lockout success, last login time)
    fails: the answer is 503 and the session is as before the step, for the
    one-call login (a guest) and for the code step (still half-way); the
    step succeeds once the store is back."""
    env = make_env()
    await env.add_user("alice")
    async with env.client() as c:
        switch = _fail_once(env, method)
        assert (await login(c, "alice", "correct horse")).status_code == 503
        assert (await c.get("/me")).json()["kind"] == "guest"
        switch.clear()
        assert (await login(c, "alice", "correct horse")).status_code == 200
        assert (await c.get("/me")).json()["kind"] == "authenticated"

    env = make_env()
    uid = await env.add_user("bob")
    secret = await enrol_totp(env, uid)
    async with env.client() as c:
        assert (await login(c, "bob", "correct horse")).json() == {"factor_required": "totp"}
        switch = _fail_once(env, method)
        r = await c.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 503
        me = (await c.get("/me")).json()
        assert me["kind"] == "authenticating" and me["user"] == uid
        assert "authenticated" not in env.event_types
        switch.clear()
        env.clock.advance(30)  # the code was used up; the next one completes the login
        r = await c.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 200
        assert (await c.get("/me")).json()["kind"] == "authenticated"


async def test_a_failing_event_hook_does_not_fail_the_login() -> None:
    def boom(event: object) -> None:
        raise RuntimeError("hook")

    env = make_env()
    env.authn.on_event = boom
    await env.add_user("alice")
    async with env.client() as c:
        assert (await login(c, "alice", "correct horse")).status_code == 200


def test_the_service_takes_its_lockout_store_from_the_store_and_refuses_a_non_store() -> None:
    store = MemoryStore()
    svc = AuthnService(store, Keyring.generate(), hasher=fast_hasher())
    assert svc.lockout.store is store
    with pytest.raises(TypeError):
        AuthnService(object(), Keyring.generate())  # type: ignore[arg-type]


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.backend("postgres")),
        pytest.param("mysql", marks=pytest.mark.backend("mysql")),
    ]
)
def sql_store(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_store")


async def test_full_flow_on_sql(sql_store: Any) -> None:
    store = sql_store
    env = make_env(store)
    uid = await env.add_user("Alice")
    secret = await enrol_totp(env, uid)
    async with env.client() as c:
        assert (await login(c, "ghost", "x")).status_code == 401
        assert (await login(c, "alice", "correct horse")).json() == {"factor_required": "totp"}
        code = totp(secret, env.clock.time())
        r = await c.post("/factor", json={"totp": code})
        assert r.status_code == 200 and r.json()["user_id"] == uid
    async with env.client() as c:
        await login(c, "alice", "correct horse")
        assert (await c.post("/factor", json={"totp": code})).status_code == 401  # replay
    user = await store.get_user(uid)
    assert user is not None and user.last_login_at == env.clock.time()


# -- per-tenant lockout overrides from the tenant record ------------------------------
def _count_get_tenant(env: Env) -> list[str]:
    calls: list[str] = []
    real = env.store.get_tenant

    async def counted(tenant_id: str) -> TenantRecord | None:
        calls.append(tenant_id)
        return await real(tenant_id)

    env.store.get_tenant = counted  # type: ignore[method-assign]
    return calls


async def test_tenant_record_lockout_overrides_apply() -> None:
    env = make_env()
    # only the threshold is overridden: window, lock_for, backoff are inherited
    await env.store.create_tenant(
        TenantRecord("strict", "strict", lockout_overrides={"user": {"threshold": 3}})
    )
    await env.add_user("alice", user_id="alice-strict", tenant="strict")
    await env.add_user("alice", user_id="alice-default")
    calls = _count_get_tenant(env)
    async with env.client() as c:
        for _ in range(3):
            assert (await login(c, "alice", "wrong", tenant="strict")).status_code == 401
        r = await login(c, "alice", "correct horse", tenant="strict")
        assert r.status_code == 429 and r.headers["retry-after"] == "900"
        # the default tenant still needs five failures
        for _ in range(4):
            assert (await login(c, "alice", "wrong")).status_code == 401
        assert (await login(c, "alice", "wrong")).status_code == 401  # the fifth locks
        assert (await login(c, "alice", "correct horse")).status_code == 429
    assert env.metrics.counts["account_locked:user"] == 2
    # one tenant lookup per attempt that passed the pre-check, none extra
    assert calls == ["strict"] * 3 + ["default"] * 5


async def test_tenant_record_overrides_apply_to_second_factors() -> None:
    env = make_env()
    # The IP lever at 3: the password takes one unit (kept until the login
    # completes), so two codes are checked and the third guess is refused.
    await env.store.create_tenant(
        TenantRecord("strict", "strict", lockout_overrides={"ip": {"threshold": 3}})
    )
    uid = await env.add_user("alice", user_id="alice-strict", tenant="strict")
    secret = await enrol_totp(env, uid)
    now = env.clock.time()
    valid = {totp(secret, now + d * 30) for d in (-1, 0, 1)}
    wrong = next(c for c in ("000000", "111111", "222222") if c not in valid)
    calls = _count_get_tenant(env)
    async with env.client() as c:
        r = await login(c, "alice", "correct horse", tenant="strict")
        assert r.json() == {"factor_required": "totp"}
        for _ in range(2):
            assert (await c.post("/factor", json={"totp": wrong})).status_code == 401
        r = await c.post("/factor", json={"totp": totp(secret, now)})
        assert r.status_code == 429  # locked after 3 units, not 50
    assert env.metrics.counts["account_locked:ip"] == 1
    assert calls == ["strict"]  # second factors cost no tenant lookup
    # the step-wise flow: begin_login, then the password through verify_factor
    env.clock.advance(3600)
    async with env.client() as c:
        assert (await c.post("/begin", json={"identifier": "alice", "tenant": "strict"})).json()
        for _ in range(3):
            r = await c.post("/factor", json={"password": "wrong"})
            assert r.status_code == 401
        r = await c.post("/factor", json={"password": "correct horse"})
        assert r.status_code == 429


async def test_invalid_tenant_record_overrides_warn_once_and_fall_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = make_env()
    await env.store.create_tenant(
        TenantRecord("broken", "broken", lockout_overrides={"user": {"threshold": "three"}})
    )
    await env.add_user("alice", tenant="broken")
    with caplog.at_level(logging.WARNING, logger="axess.authn"):
        async with env.client() as c:
            for _ in range(4):
                assert (await login(c, "alice", "wrong", tenant="broken")).status_code == 401
            assert (await login(c, "alice", "wrong", tenant="broken")).status_code == 401
            assert (await login(c, "alice", "correct horse", tenant="broken")).status_code == 429
    warnings = [r.getMessage() for r in caplog.records if "lockout_overrides" in r.getMessage()]
    assert len(warnings) == 1 and "broken" in warnings[0]


async def test_correct_password_does_not_unlock_code_guessing() -> None:
    """The user lever is reset (and the origin trusted) only by a complete
    login: holding the password must not make TOTP guesses free. Every
    credential checked takes a unit of the budget (5 by default)."""
    env = make_env()
    uid = await env.add_user("alice")
    secret = await enrol_totp(env, uid)
    async with env.client() as c:
        for _ in range(2):  # 2 x (password + wrong code) = 4 units
            r = await login(c, "alice", "correct horse")
            assert r.json() == {"factor_required": "totp"}
            assert (await c.post("/factor", json={"totp": "000000"})).status_code == 401
        r = await login(c, "alice", "correct horse")  # the fifth unit: checked, locks
        assert r.json() == {"factor_required": "totp"}
        r = await c.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 429  # locked: even the right code is refused now
        assert (await login(c, "alice", "correct horse")).status_code == 429
    env.clock.advance(15 * 60 + 1)
    async with env.client() as c:  # after the lock, a full login resets the lever
        await login(c, "alice", "correct horse")
        r = await c.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert r.status_code == 200
        keys = lockout_keys(DEFAULT_TENANT, "alice", "127.0.0.1")
        assert await env.store.lockout_state(keys.user, env.clock.time()) is None
