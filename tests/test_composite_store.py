"""CompositeStore: routing rules, lifecycle, health aggregation, purge dispatch."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from axess.errors import ConfigurationError
from axess.observability.health import HealthState, HealthStatus
from axess.stores.base import ALL_SUBSTORES, Backend, SessionStore
from axess.stores.composite import CompositeStore
from axess.stores.memory import MemoryStore
from axess.testing.contract import NOW, make_record


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
