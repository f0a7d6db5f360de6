"""CompositeStore: routing rules, lifecycle, health aggregation, purge dispatch,
and the identity/factors/lockout delegation that lets it serve logins."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from helpers import client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from axess import Axess, Keyring, MockClock, get_session
from axess.authn.http import outcome_response
from axess.authn.lockout import lockout_keys
from axess.authn.password import PasswordHasher
from axess.authn.service import AuthnService
from axess.errors import ConfigurationError
from axess.observability.health import HealthState, HealthStatus
from axess.stores.base import (
    ALL_SUBSTORES,
    DEFAULT_TENANT,
    Backend,
    IdentityStore,
    LockoutStore,
    SessionStore,
    TenantRecord,
    UserRecord,
)
from axess.stores.composite import CompositeStore
from axess.stores.memory import MemoryStore
from axess.testing import SeededRandom
from axess.testing.contract import (
    NOW,
    IdentityStoreContract,
    LockoutStoreContract,
    make_lever,
    make_record,
)


class FakeBackend(MemoryStore):
    """A backend (sessions in memory) that records its lifecycle and answers
    health and purge as it is told."""

    def __init__(
        self,
        name: str,
        substores: Iterable[str],
        *,
        health: HealthStatus | None = None,
        purged: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.name = name  # type: ignore[misc]
        self.substores = frozenset(substores)  # type: ignore[misc]
        self.health = health or HealthStatus.healthy()
        self.purged = purged or {}
        self.opened = 0
        self.closed = 0
        self.purge_calls: list[frozenset[str] | None] = []
        self.fail_open = False

    async def open(self) -> None:
        if self.fail_open:
            raise RuntimeError("cannot open")
        self.opened += 1

    async def close(self) -> None:
        self.closed += 1

    async def check_health(self) -> HealthStatus:
        return self.health

    async def purge_expired(
        self, now: float, *, only: Iterable[str] | None = None
    ) -> dict[str, int]:
        targets = None if only is None else frozenset(only)
        self.purge_calls.append(targets)
        return {s: self.purged.get(s, 0) for s in (targets or self.substores)}


DURABLE = ALL_SUBSTORES - {"ratelimit"}


def test_fake_backend_is_a_backend() -> None:
    assert isinstance(FakeBackend("x", ()), Backend)


# -- routing --------------------------------------------------------------------
def test_unset_substores_go_to_the_default() -> None:
    sql = FakeBackend("sql", DURABLE)
    vk = FakeBackend("valkey", {"sessions", "ratelimit", "lockout"})
    store = CompositeStore(default=sql, sessions=vk, ratelimit=vk)
    assert store.name == "composite"
    assert store.backend_for("sessions") is vk
    assert store.backend_for("ratelimit") is vk
    assert store.backend_for("lockout") is sql  # not routed: default, though vk could
    for s in ("identity", "factors", "audit"):
        assert store.backend_for(s) is sql
    assert store.substores == ALL_SUBSTORES
    assert store.backends == [sql, vk]


def test_a_substore_nobody_implements_is_unavailable() -> None:
    store = CompositeStore(default=MemoryStore())
    assert store.substores == MemoryStore.substores
    missing = sorted(ALL_SUBSTORES - MemoryStore.substores)[0]
    with pytest.raises(ConfigurationError, match=f"'{missing}' is unavailable"):
        store.backend_for(missing)
    with pytest.raises(ConfigurationError, match="unknown substore"):
        store.backend_for("nonsense")


async def test_session_calls_need_a_sessions_backend() -> None:
    store = CompositeStore(default=FakeBackend("sql", {"identity", "factors", "audit"}))
    assert "sessions" not in store.substores
    with pytest.raises(ConfigurationError, match="sessions"):
        await store.load_session("k", NOW)


def test_routing_to_a_backend_that_lacks_the_substore_is_refused() -> None:
    vk = FakeBackend("valkey", {"sessions", "ratelimit"})
    with pytest.raises(ConfigurationError, match=r"'lockout' is routed to backend 'valkey'"):
        CompositeStore(default=FakeBackend("sql", DURABLE), lockout=vk)
    with pytest.raises(ConfigurationError, match="'sessions'"):
        CompositeStore(default=MemoryStore(), sessions=FakeBackend("sql", {"identity"}))


def test_a_sessions_backend_must_implement_the_protocol() -> None:
    class Liar:
        name = "liar"
        substores = frozenset({"sessions"})

        async def open(self) -> None: ...
        async def close(self) -> None: ...
        async def check_health(self) -> HealthStatus:
            return HealthStatus.healthy()

    with pytest.raises(ConfigurationError, match="SessionStore"):
        CompositeStore(default=Liar())
    with pytest.raises(ConfigurationError, match="SessionStore"):
        CompositeStore(default=MemoryStore(), sessions=Liar())


@pytest.mark.parametrize(
    "routes",
    [
        {"identity": "other"},
        {"factors": "other"},
        {"audit": "other"},
        {"identity": "other", "factors": "other"},
    ],
)
def test_splitting_the_transactional_cluster_is_refused(routes: dict[str, str]) -> None:
    sql = FakeBackend("sql", DURABLE)
    other = FakeBackend("other", DURABLE)
    kwargs = {s: other for s in routes}
    with pytest.raises(ConfigurationError, match="identity, factors and audit"):
        CompositeStore(default=sql, **kwargs)  # type: ignore[arg-type]


def test_moving_the_whole_cluster_together_is_fine() -> None:
    sql = FakeBackend("sql", DURABLE)
    pg = FakeBackend("postgres", DURABLE)
    store = CompositeStore(default=sql, identity=pg, factors=pg, audit=pg)
    assert {store.backend_for(s) for s in ("identity", "factors", "audit")} == {pg}
    # same object passed explicitly and as default is one backend
    same = CompositeStore(default=sql, identity=sql, factors=sql, audit=sql)
    assert same.backends == [sql]


def test_cluster_is_checked_by_object_not_by_name() -> None:
    a, b = FakeBackend("sql", DURABLE), FakeBackend("sql", DURABLE)
    with pytest.raises(ConfigurationError):
        CompositeStore(default=a, audit=b)


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="nonsense"):
        CompositeStore(default=MemoryStore(), nonsense=MemoryStore())  # type: ignore[arg-type]


# -- delegation ---------------------------------------------------------------------
async def test_session_calls_go_to_the_sessions_backend() -> None:
    durable, volatile = MemoryStore(), MemoryStore()
    store = CompositeStore(default=durable, sessions=volatile)
    assert isinstance(store, SessionStore)
    rec = make_record("r", user="u")
    assert await store.create_session(rec)
    assert len(volatile) == 1 and len(durable) == 0
    assert await store.load_session(rec.key, NOW) == rec
    assert [r.key for r in await store.list_user_sessions("u", NOW)] == [rec.key]
    assert await store.delete_user_sessions("u") == 1


# -- lifecycle ------------------------------------------------------------------
async def test_open_and_close_each_distinct_backend_once() -> None:
    sql = FakeBackend("sql", DURABLE)
    vk = FakeBackend("valkey", {"sessions", "ratelimit", "lockout"})
    store = CompositeStore(default=sql, sessions=vk, ratelimit=vk, lockout=vk)
    await store.open()
    assert (sql.opened, vk.opened) == (1, 1)
    await store.close()
    assert (sql.closed, vk.closed) == (1, 1)


async def test_a_failed_open_closes_what_was_opened() -> None:
    sql = FakeBackend("sql", DURABLE)
    vk = FakeBackend("valkey", {"ratelimit"})
    vk.fail_open = True
    store = CompositeStore(default=sql, ratelimit=vk)
    with pytest.raises(RuntimeError):
        await store.open()
    assert (sql.opened, sql.closed) == (1, 1)


async def test_close_closes_every_backend_even_if_one_fails() -> None:
    class Broken(FakeBackend):
        async def close(self) -> None:
            await super().close()
            raise RuntimeError("close failed")

    sql, vk = FakeBackend("sql", DURABLE), Broken("valkey", {"ratelimit"})
    store = CompositeStore(default=sql, ratelimit=vk)
    with pytest.raises(RuntimeError, match="close failed"):
        await store.close()
    assert (sql.closed, vk.closed) == (1, 1)


# -- health ---------------------------------------------------------------------
async def test_health_is_healthy_when_all_are() -> None:
    store = CompositeStore(
        default=FakeBackend("sql", DURABLE), ratelimit=FakeBackend("v", {"ratelimit"})
    )
    assert (await store.check_health()).state is HealthState.HEALTHY


async def test_health_names_the_unhealthy_backend() -> None:
    sql = FakeBackend("sql", DURABLE, health=HealthStatus.degraded("sql: slow"))
    vk = FakeBackend(
        "valkey",
        {"sessions", "ratelimit"},
        health=HealthStatus.unhealthy("valkey: ConnectionError"),
    )
    status = await CompositeStore(default=sql, sessions=vk, ratelimit=vk).check_health()
    assert status.state is HealthState.UNHEALTHY
    assert status.reason is not None
    assert "valkey (sessions, ratelimit): valkey: ConnectionError" in status.reason
    assert "sql" in status.reason


async def test_health_degraded_and_raising_backends() -> None:
    sql = FakeBackend("sql", DURABLE, health=HealthStatus.degraded("sql: replica lag"))
    status = await CompositeStore(default=sql).check_health()
    assert status.state is HealthState.DEGRADED and "replica lag" in (status.reason or "")

    class Raising(FakeBackend):
        async def check_health(self) -> HealthStatus:
            raise OSError("boom")

    status = await CompositeStore(
        default=FakeBackend("sql", DURABLE), ratelimit=Raising("valkey", {"ratelimit"})
    ).check_health()
    assert status.state is HealthState.UNHEALTHY and "valkey (ratelimit): OSError" in (
        status.reason or ""
    )


# -- purge ----------------------------------------------------------------------
async def test_purge_dispatches_each_target_to_its_owner() -> None:
    sql = FakeBackend("sql", DURABLE, purged={"sessions": 99, "audit": 3, "lockout": 1})
    vk = FakeBackend("valkey", {"sessions", "ratelimit"}, purged={"sessions": 5, "ratelimit": 2})
    store = CompositeStore(default=sql, sessions=vk, ratelimit=vk)
    counts = await store.purge_expired(NOW)
    assert counts == {
        "sessions": 5,
        "lockout": 1,
        "ratelimit": 2,
        "identity": 0,
        "factors": 0,
        "audit": 3,
    }
    # sql was never asked for sessions: vk owns them
    assert sql.purge_calls == [frozenset({"lockout", "identity", "factors", "audit"})]
    assert vk.purge_calls == [frozenset({"sessions", "ratelimit"})]

    assert await store.purge_expired(NOW, only=["sessions"]) == {"sessions": 5}
    assert len(sql.purge_calls) == 1 and vk.purge_calls[-1] == {"sessions"}
    assert await store.purge_expired(NOW, only="audit") == {"audit": 3}
    with pytest.raises(ValueError, match="bogus"):
        await store.purge_expired(NOW, only=["audit", "bogus"])


async def test_purge_falls_back_to_purge_expired_sessions() -> None:
    memory = MemoryStore()
    store = CompositeStore(default=FakeBackend("sql", DURABLE - {"sessions"}), sessions=memory)
    await memory.create_session(make_record("dead", ttl=1))
    assert (await store.purge_expired(NOW + 1, only=["sessions"])) == {"sessions": 1}
    assert await store.purge_expired_sessions(NOW + 1) == 0
    with pytest.raises(ValueError, match="ratelimit"):
        await store.purge_expired(NOW, only=["ratelimit"])


# -- identity, factors and lockout (delegated) ----------------------------------
COMPOSITES = ("memory", "sqlite+valkey")


@pytest.fixture(params=COMPOSITES)
def composite_store(request: pytest.FixtureRequest) -> CompositeStore:
    """An empty composite over opened backends, splitting durable from volatile
    state.

    ``memory``: one MemoryStore as default (identity, factors, audit) and
    another for sessions and lockout. ``sqlite+valkey``: SQLite default,
    Valkey sessions and lockout (skips without a Valkey server, like the rest).
    """
    if request.param == "memory":
        volatile = MemoryStore()
        return CompositeStore(default=MemoryStore(), sessions=volatile, lockout=volatile)
    valkey = request.getfixturevalue("valkey_store")
    return CompositeStore(
        default=request.getfixturevalue("sqlite_store"), sessions=valkey, lockout=valkey
    )


class TestCompositeIdentityStore(IdentityStoreContract):
    @pytest.fixture
    def store(self, composite_store: CompositeStore) -> CompositeStore:
        return composite_store


class TestCompositeLockoutStore(LockoutStoreContract):
    @pytest.fixture
    def store(self, composite_store: CompositeStore) -> CompositeStore:
        return composite_store


async def test_identity_factor_and_lockout_calls_go_to_their_backends(
    composite_store: CompositeStore,
) -> None:
    store = composite_store
    durable: Any = store.backend_for("identity")
    volatile: Any = store.backend_for("lockout")
    assert durable is not volatile and store.backend_for("factors") is durable
    assert isinstance(store, IdentityStore) and isinstance(store, LockoutStore)
    assert await store.create_user(UserRecord("u1", DEFAULT_TENANT, "alice", created_at=NOW))
    assert await durable.get_user("u1") is not None
    await store.set_password_hash("u1", "phc")
    assert (await durable.get_factors("u1")).password_hash == "phc"
    await store.lockout_failure([make_lever("u:x")], None, NOW)
    assert await volatile.lockout_state("u:x", NOW) is not None
    assert await durable.lockout_state("u:x", NOW) is None  # the default has lockout too
    assert await store.lockout_clear(["u:x"]) == 1


class NotAnIdentityStore(MemoryStore):
    """Lists identity and factors but lacks one IdentityStore method."""

    totp_accept_step = None  # type: ignore[assignment]


class NotALockoutStore(MemoryStore):
    """Lists lockout but lacks one LockoutStore method."""

    lockout_failure = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ({"identity": FakeBackend("valkey", {"sessions", "lockout"})}, "'identity' is routed"),
        ({"factors": FakeBackend("valkey", {"sessions", "lockout"})}, "'factors' is routed"),
        ({"lockout": FakeBackend("sql", {"identity", "factors"})}, "'lockout' is routed"),
        ({"identity": NotAnIdentityStore()}, "'memory' lists 'identity'.*IdentityStore protocol"),
        ({"lockout": NotALockoutStore()}, "'memory' lists 'lockout'.*LockoutStore protocol"),
    ],
)
def test_routing_identity_or_lockout_to_a_backend_without_it_is_refused(
    routes: dict[str, Backend], message: str
) -> None:
    sessions_only = FakeBackend("sessions-only", {"sessions"})
    with pytest.raises(ConfigurationError, match=message):
        CompositeStore(default=sessions_only, **routes)  # type: ignore[arg-type]


def test_a_default_without_the_identity_protocol_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="IdentityStore"):
        CompositeStore(default=NotAnIdentityStore())
    with pytest.raises(ConfigurationError, match="LockoutStore"):
        CompositeStore(default=NotALockoutStore())


async def test_identity_and_lockout_calls_need_a_backend_serving_them() -> None:
    volatile = CompositeStore(default=FakeBackend("valkey", {"sessions", "lockout"}))
    # isinstance says what the composite can delegate; substores, what is served.
    assert isinstance(volatile, IdentityStore) and "identity" not in volatile.substores
    with pytest.raises(ConfigurationError, match="'identity' is unavailable"):
        await volatile.get_user("u1")
    with pytest.raises(ConfigurationError, match="'identity' is unavailable"):
        await volatile.create_tenant(TenantRecord("t1", "acme"))
    with pytest.raises(ConfigurationError, match="'factors' is unavailable"):
        await volatile.get_factors("u1")
    durable = CompositeStore(default=FakeBackend("sql", {"identity", "factors", "audit"}))
    with pytest.raises(ConfigurationError, match="'lockout' is unavailable"):
        await durable.lockout_status(["u:x"], None, NOW)


# -- logins through Axess ---------------------------------------------------------
def _login_app(store: CompositeStore, *, direct: bool) -> tuple[Axess, Starlette, MockClock]:
    """An app whose login runs on ``auth.authn`` or, with ``direct``, on an
    AuthnService over the composite itself (no lockout= given)."""
    clock = MockClock()
    hasher = PasswordHasher(time_cost=1, memory_cost=1024)
    keys = Keyring.generate()
    auth = Axess(
        store=store,
        keys=keys,
        clock=clock,
        random=SeededRandom(3),
        debug=True,
        csrf=False,
        cleanup_interval=None,
        password_hasher=hasher,
    )
    assert auth.authn is not None and auth.users is not None
    service = AuthnService(store, keys, hasher=hasher, clock=clock) if direct else auth.authn

    async def login(request: Request) -> Response:
        body = await request.json()
        return outcome_response(
            await service.login_password(request, body["user"], body["password"])
        )

    async def me(request: Request) -> Response:
        return JSONResponse({"user": get_session(request).user_id})

    app = Starlette(routes=[Route("/login", login, methods=["POST"]), Route("/me", me)])
    auth.install(app)
    return auth, app, clock


@pytest.mark.parametrize("direct", [False, True], ids=["auth.authn", "AuthnService(composite)"])
async def test_axess_serves_logins_from_a_composite(
    composite_store: CompositeStore, direct: bool
) -> None:
    store = composite_store
    auth, app, clock = _login_app(store, direct=direct)
    durable: Any = store.backend_for("identity")
    volatile: Any = store.backend_for("lockout")
    async with auth.lifespan():
        assert auth.users is not None
        user = await auth.users.create_user("Alice@Example.com", password="correct horse")
        async with client(app) as c:
            r = await c.post("/login", json={"user": "alice@example.com", "password": "wrong"})
            assert r.status_code == 401
            counter = lockout_keys(DEFAULT_TENANT, "alice@example.com", None).user
            state = await volatile.lockout_state(counter, clock.time())
            assert state is not None and state.failures == 1
            assert await durable.lockout_state(counter, clock.time()) is None
            r = await c.post(
                "/login", json={"user": "alice@example.com", "password": "correct horse"}
            )
            assert r.status_code == 200 and r.json()["user_id"] == user.id
            assert (await c.get("/me")).json() == {"user": user.id}
        # The success reset the counter; the session lives on the sessions backend.
        assert await volatile.lockout_state(counter, clock.time()) is None
        assert len(await store.list_user_sessions(user.id, clock.time())) == 1
        assert await durable.list_user_sessions(user.id, clock.time()) == []
        stored = await durable.get_user(user.id)
        assert stored is not None and stored.last_login_at == clock.time()


def test_axess_builds_no_login_without_an_identity_backend() -> None:
    durable = CompositeStore(default=MemoryStore(), sessions=MemoryStore())
    volatile = CompositeStore(default=FakeBackend("valkey", {"sessions", "lockout"}))
    for composite, served in ((durable, True), (volatile, False)):
        auth = Axess(store=composite, keys=Keyring.generate(), debug=True, cleanup_interval=None)
        assert (auth.authn is not None) is served
        assert (auth.users is not None) is served
