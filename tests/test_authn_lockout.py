"""Three-lever lockout: policy, ordering, backoff, trusted origins, store errors."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axess.authn import Lever, Lockout, LockoutPolicy, PasswordHasher, lockout_keys
from axess.authn.lockout import Locked, LockoutKeys, normalize_identifier
from axess.clock import MockClock
from axess.errors import StoreError
from axess.observability.metrics import NoopMetrics
from axess.stores import MemoryStore
from axess.stores.base import LeverSpec, LeverState, LockoutReservation, LockoutStatus

MIN = 60.0


class CountingStore(MemoryStore):
    """MemoryStore counting lockout calls; can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.broken = False

    def _hit(self, name: str) -> None:
        self.calls.append(name)
        if self.broken:
            raise StoreError("down", backend="memory", substore="lockout")

    async def lockout_status(
        self, keys: Sequence[str], origin: str | None, now: float
    ) -> LockoutStatus:
        self._hit("status")
        return await super().lockout_status(keys, origin, now)

    async def lockout_failure(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float
    ) -> list[LeverState]:
        self._hit("failure")
        return await super().lockout_failure(levers, origin, now)

    async def lockout_reserve(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float
    ) -> LockoutReservation:
        self._hit("reserve")
        return await super().lockout_reserve(levers, origin, now)

    async def lockout_success(
        self,
        reset: Sequence[str],
        origin: str | None,
        trusted_until: float,
        now: float,
        release: Sequence[tuple[str, float]] = (),
    ) -> None:
        self._hit("success")
        await super().lockout_success(reset, origin, trusted_until, now, release)


class Metrics(NoopMetrics):
    def __init__(self) -> None:
        self.locked: list[str] = []
        self.errors: list[str] = []

    def account_locked(self, lever: str) -> None:
        self.locked.append(lever)

    def store_error(self, substore: str) -> None:
        self.errors.append(substore)


def make(policy: LockoutPolicy | None = None) -> tuple[Lockout, CountingStore, MockClock, Metrics]:
    store, clock, metrics = CountingStore(), MockClock(), Metrics()
    return Lockout(store, policy, clock=clock, metrics=metrics), store, clock, metrics


def keys(ident: str = "alice@example.com", ip: str = "203.0.113.5", **kw: Any) -> LockoutKeys:
    return lockout_keys("acme", ident, ip, **kw)


def test_defaults_match_design() -> None:
    p = LockoutPolicy()
    assert (p.user.threshold, p.user.window, p.user.lock_for, p.user.cap) == (5, 900, 900, 86400)
    assert p.user.backoff == 2.0
    assert (p.ip.threshold, p.ip.window, p.ip.lock_for, p.ip.cap) == (50, 900, 900, 900)
    assert (p.tenant.threshold, p.tenant.window, p.tenant.lock_for) == (1000, 300, 300)
    assert p.trusted_origin_ttl == 30 * 86400 and p.on_store_error == "closed"


def test_invalid_levers_rejected() -> None:
    for kw in (
        {"threshold": 0},
        {"window": 0},
        {"lock_for": -1},
        {"backoff": 0.5},
        {"max_lock": 1.0},
        {"window": float("nan")},
    ):
        args: dict[str, Any] = {"threshold": 3, "window": 60.0, "lock_for": 60.0, **kw}
        with pytest.raises(ValueError):
            Lever(**args)
    with pytest.raises(ValueError):
        LockoutPolicy(on_store_error="maybe")  # type: ignore[arg-type]


async def test_user_lever_threshold_backoff_and_expiry() -> None:
    lockout, _, clock, metrics = make()
    k = keys()
    for _ in range(4):
        await lockout.record_failure(k)
    assert await lockout.pre_check(k) is None
    await lockout.record_failure(k)
    locked = await lockout.pre_check(k)
    assert locked == Locked(retry_after=900, lever="user")
    assert metrics.locked == ["user"]
    clock.advance(899)
    assert await lockout.pre_check(k) == Locked(1, "user")
    clock.advance(1)
    assert await lockout.pre_check(k) is None
    # Second lockout within the memory period: 30 minutes, then 60, … capped at 24 h.
    expected = [1800, 3600, 7200, 14400, 28800, 57600, 86400, 86400]
    for length in expected:
        for _ in range(5):
            await lockout.record_failure(k)
        got = await lockout.pre_check(k)
        assert got is not None and got.retry_after == length
        clock.advance(length)


async def test_fixed_window_semantics() -> None:
    lockout, _, clock, _ = make()
    k = keys()
    for _ in range(4):
        await lockout.record_failure(k)
    clock.advance(15 * MIN)  # window closed: the count restarts at 1
    for _ in range(4):
        await lockout.record_failure(k)
    assert await lockout.pre_check(k) is None
    await lockout.record_failure(k)
    assert await lockout.pre_check(k) is not None


async def test_success_resets_only_the_user_lever() -> None:
    policy = LockoutPolicy(ip=Lever(6, 15 * MIN, 15 * MIN))
    lockout, store, _, _ = make(policy)
    k = keys()
    for _ in range(4):
        await lockout.record_failure(k)
    await lockout.record_success(k)
    ip_state = await store.lockout_state(k.ip or "", MockClock().time())
    assert ip_state is not None and ip_state.failures == 4
    assert await store.lockout_state(k.user, MockClock().time()) is None
    other = keys("bob@example.com")
    await lockout.record_failure(other)
    await lockout.record_failure(other)
    assert await lockout.pre_check(other) == Locked(900, "ip")


async def test_unknown_identifiers_lock_like_real_ones_and_normalize() -> None:
    lockout, _, _, _ = make()
    for variant in (
        "Nobody@X.org",
        " nobody@x.org",
        "NOBODY@X.ORG ",
        "\uff4e\uff4f\uff42\uff4f\uff44\uff59@x.org",  # full-width
        "nobody@x.org",
    ):
        await lockout.record_failure(keys(variant))
    assert await lockout.pre_check(keys("nobody@x.org")) == Locked(900, "user")
    # The user lever follows the identifier to any IP.
    assert await lockout.pre_check(keys("nobody@x.org", "198.51.100.1")) == Locked(900, "user")
    assert await lockout.pre_check(lockout_keys("other-tenant", "nobody@x.org", None)) is None


@pytest.mark.parametrize("empty", ["", "   ", "\u3000", "\t\n"])
async def test_empty_identifier_rejected_before_any_lever(empty: str) -> None:
    lockout, store, _, _ = make()
    with pytest.raises(ValueError):
        await lockout.pre_check(keys(empty))
    assert store.calls == []


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_normalization_is_idempotent_and_total(text: str) -> None:
    try:
        n = normalize_identifier(text)
    except ValueError:
        with pytest.raises(ValueError):
            lockout_keys("t", text, None)
        return
    assert normalize_identifier(n) == n
    assert lockout_keys("t", text, None).user == lockout_keys("t", n, None).user
    k = lockout_keys("t", text, "2001:db8::1")
    assert len(k.user) == 66 and k.user.startswith("u:")


async def test_pre_check_is_one_store_call_and_a_locked_attempt_costs_no_hash() -> None:
    lockout, store, _, _ = make(LockoutPolicy(user=Lever(1, MIN, MIN)))
    hasher = PasswordHasher(time_cost=1, memory_cost=64)
    phc = await hasher.hash("pw")
    k = keys()

    async def attempt(password: str) -> str:
        if await lockout.pre_check(k) is not None:
            return "locked"
        if await hasher.verify(phc, password):
            await lockout.record_success(k)
            return "ok"
        await lockout.record_failure(k)
        return "bad"

    assert await attempt("wrong") == "bad"
    store.calls.clear()
    before = hasher.hash_calls
    assert await attempt("pw") == "locked"
    assert store.calls == ["status"]
    assert hasher.hash_calls == before


async def test_trusted_origin_keeps_owner_in_while_attacker_is_locked_out() -> None:
    lockout, _, clock, _ = make()
    owner = keys(ip="198.51.100.7", device="device-cookie-of-owner")
    await lockout.record_success(owner)
    attacker = keys(ip="203.0.113.99")
    for _ in range(5):
        await lockout.record_failure(attacker)
    assert await lockout.pre_check(attacker) == Locked(900, "user")
    assert await lockout.pre_check(owner) is None  # exempt from the user lever
    # Failures from the trusted origin do not count toward the user lever …
    for _ in range(10):
        await lockout.record_failure(owner)
    assert await lockout.pre_check(owner) is None
    # … same IP prefix without the cookie is trusted too (IP prefix origin).
    await lockout.record_success(keys(ip="198.51.100.7"))
    assert await lockout.pre_check(keys(ip="198.51.100.200")) is None
    # The attacker's lock has run out meanwhile; the owner was never blocked.
    clock.advance(900)
    assert await lockout.pre_check(attacker) is None


async def test_trusted_origin_still_subject_to_ip_and_tenant() -> None:
    lockout, _, _, _ = make(LockoutPolicy(ip=Lever(3, MIN, MIN), tenant=Lever(100, MIN, MIN)))
    owner = keys(device="dev")
    await lockout.record_success(owner)
    for _ in range(3):
        await lockout.record_failure(owner)
    assert await lockout.pre_check(owner) == Locked(60, "ip")


async def test_trust_expires() -> None:
    lockout, _, clock, _ = make(LockoutPolicy(trusted_origin_ttl=100))
    owner = keys(device="dev")
    await lockout.record_success(owner)
    for _ in range(5):
        await lockout.record_failure(keys(ip="192.0.2.1"))
    assert await lockout.pre_check(owner) is None
    clock.advance(100)
    assert await lockout.pre_check(owner) == Locked(800, "user")


async def test_unlock_clears_levers() -> None:
    lockout, _, _, _ = make(LockoutPolicy(ip=Lever(5, MIN, MIN)))
    k = keys()
    for _ in range(5):
        await lockout.record_failure(k)
    locked = await lockout.pre_check(k)
    assert locked is not None
    assert await lockout.unlock(k, levers=("user",)) == 1
    assert await lockout.pre_check(k) == Locked(60, "ip")
    assert await lockout.unlock(k) == 2
    assert await lockout.pre_check(k) is None


async def test_tenant_lever_and_per_tenant_overrides() -> None:
    policy = LockoutPolicy(
        tenant=Lever(3, MIN, 5 * MIN),
        overrides={"strict": {"user": Lever(2, MIN, 10 * MIN)}},
    )
    lockout, _, _, metrics = make(policy)
    for i in range(3):
        await lockout.record_failure(keys(f"user{i}", ip=f"192.0.2.{i}"))
    assert await lockout.pre_check(keys("someone-else", ip="192.0.2.99")) == Locked(300, "tenant")
    assert metrics.locked == ["tenant"]
    strict = lockout_keys("strict", "carol", "192.0.2.50")
    await lockout.record_failure(strict)
    await lockout.record_failure(strict)
    assert await lockout.pre_check(strict) == Locked(600, "user")


async def test_retry_after_is_the_longest_lock() -> None:
    lockout, _, _, _ = make(LockoutPolicy(user=Lever(1, MIN, MIN), ip=Lever(1, MIN, 5 * MIN)))
    k = keys()
    await lockout.record_failure(k)
    assert await lockout.pre_check(k) == Locked(300, "ip")


async def test_store_error_closed_raises(caplog: pytest.LogCaptureFixture) -> None:
    lockout, store, _, _ = make()
    store.broken = True
    with pytest.raises(StoreError):
        await lockout.pre_check(keys())
    with pytest.raises(StoreError):
        await lockout.record_failure(keys())


async def test_store_error_open_logs_counts_and_proceeds(caplog: pytest.LogCaptureFixture) -> None:
    lockout, store, _, metrics = make(LockoutPolicy(on_store_error="open"))
    store.broken = True
    with caplog.at_level(logging.WARNING, logger="axess.authn"):
        assert await lockout.pre_check(keys()) is None
        assert await lockout.record_failure(keys()) == {}
        await lockout.record_success(keys())
    assert metrics.errors == ["lockout", "lockout", "lockout"]
    assert "alice" not in caplog.text
    assert caplog.records and all(r.levelno == logging.WARNING for r in caplog.records)


async def test_logs_never_contain_identifiers(caplog: pytest.LogCaptureFixture) -> None:
    lockout, _, _, _ = make()
    k = keys("secret-person@example.com")
    with caplog.at_level(logging.DEBUG, logger="axess.authn"):
        for _ in range(5):
            await lockout.record_failure(k)
        await lockout.unlock(k)
    assert "lockout_triggered" in caplog.text and "lockout_cleared" in caplog.text
    assert "secret-person" not in caplog.text and "203.0.113.5" not in caplog.text
    assert "secret-person" not in repr(k)


async def test_ipv6_counts_per_64_and_origin_prefix() -> None:
    a = lockout_keys("t", "x", "2001:db8:1:2::1")
    b = lockout_keys("t", "x", "2001:db8:1:2:ffff::9")
    c = lockout_keys("t", "x", "2001:db8:1:3::1")
    assert a.ip == b.ip != c.ip and a.origin == b.origin != c.origin
    v4 = lockout_keys("t", "x", "::ffff:192.0.2.1")
    assert v4.ip == lockout_keys("t", "x", "192.0.2.1").ip
    assert lockout_keys("t", "x", None).ip is None
    assert lockout_keys("t", "x", "not-an-ip").ip is not None


async def test_concurrent_failures_through_the_service_memory() -> None:
    lockout, store, clock, metrics = make(LockoutPolicy(ip=Lever(500, MIN, MIN)))
    k = keys()
    await asyncio.gather(*(lockout.record_failure(k) for _ in range(200)))
    ip_state = await store.lockout_state(k.ip or "", clock.time())
    assert ip_state is not None and ip_state.failures == 200
    assert metrics.locked == ["user"]


def test_locked_body_is_identical_for_every_lever() -> None:
    from axess.authn.lockout import LOCKED_STATUS, locked_body

    bodies = {repr(locked_body(Locked(60, lever))) for lever in ("user", "ip", "tenant")}
    assert len(bodies) == 1 and LOCKED_STATUS == 429
    assert locked_body(Locked(60, "user")) == {
        "error": "locked",
        "detail": "too many failed login attempts; try again later",
        "retry_after": 60,
    }


# -- per-tenant overrides from the tenant record ------------------------------------
def test_record_override_changes_only_the_named_fields() -> None:
    base = LockoutPolicy()
    p = base.with_record_overrides("acme", {"user": {"threshold": 3}})
    assert p.user == Lever(3, 15 * MIN, 15 * MIN, backoff=2.0, max_lock=86_400)
    assert (p.ip, p.tenant) == (base.ip, base.tenant)
    p = base.with_record_overrides(
        "acme",
        {"ip": {"window": 60, "lock_for": 120.5, "max_lock": None}, "tenant": {"backoff": 1}},
    )
    assert p.ip == Lever(50, 60, 120.5, max_lock=None) and p.tenant.backoff == 1
    assert p.user == base.user
    assert base.with_record_overrides("acme", {}) is base
    assert base.with_record_overrides("acme", None) is base
    assert base.with_record_overrides("acme", {"user": {}}).user == base.user


def test_record_overrides_win_over_static_ones() -> None:
    policy = LockoutPolicy(overrides={"acme": {"user": Lever(2, MIN, 10 * MIN)}})
    # fields the record leaves out come from the static override of the tenant
    assert policy.with_record_overrides("acme", {"user": {"threshold": 4}}).user == Lever(
        4, MIN, 10 * MIN
    )
    # a lever the record does not name keeps the static override
    p = policy.with_record_overrides("acme", {"ip": {"threshold": 9}})
    assert p.user == Lever(2, MIN, 10 * MIN) and p.ip.threshold == 9
    # other tenants start from the policy's own levers
    assert policy.with_record_overrides("other", {"user": {"threshold": 4}}).user.window == 15 * MIN


def test_levers_json_round_trips() -> None:
    p = LockoutPolicy(user=Lever(3, 60, 90, backoff=3.0, max_lock=900), ip=Lever(7, 30, 30))
    data = p.levers_json()
    assert data["user"] == {
        "threshold": 3,
        "window": 60,
        "lock_for": 90,
        "backoff": 3.0,
        "max_lock": 900,
    }
    rebuilt = LockoutPolicy(overrides={"t": {"user": Lever(1, 1, 1)}}).with_record_overrides(
        "t", data
    )
    assert (rebuilt.user, rebuilt.ip, rebuilt.tenant) == (p.user, p.ip, p.tenant)


INVALID_OVERRIDES: list[Any] = [
    {"users": {"threshold": 3}},
    {"user": {"limit": 3}},
    {"user": {"threshold": "3"}},
    {"user": {"threshold": 3.0}},
    {"user": {"threshold": True}},
    {"user": {"threshold": 0}},
    {"user": {"window": -1}},
    {"user": {"window": "900"}},
    {"user": {"window": float("nan")}},
    {"user": {"lock_for": float("inf")}},
    {"user": {"lock_for": 10**400}},
    {"user": {"lock_for": 2 * 86_400}},  # above the inherited max_lock
    {"ip": {"backoff": 0.5}},
    {"tenant": {"max_lock": 1}},  # below lock_for
    {"user": 3},
    {"user": None},
    [{"user": {"threshold": 3}}],
    "user=3",
]


@pytest.mark.parametrize("raw", INVALID_OVERRIDES)
def test_invalid_record_overrides_are_rejected(raw: Any) -> None:
    with pytest.raises(ValueError):
        LockoutPolicy().with_record_overrides("acme", raw)


async def test_invalid_record_overrides_warn_once_and_fall_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    strict = Lever(2, MIN, 10 * MIN, max_lock=60 * MIN)
    static = LockoutPolicy(overrides={"acme": {"user": strict}})
    lockout, _, _, _ = make(static)
    with caplog.at_level(logging.WARNING, logger="axess.authn"):
        for raw in INVALID_OVERRIDES:
            for _ in range(3):  # a fresh copy each time, as from a store
                p = lockout.policy_for("acme", copy.deepcopy(raw))
                assert p.user == strict  # the static override stays
                assert (p.ip, p.tenant) == (static.ip, static.tenant)
        lockout.policy_for("other", INVALID_OVERRIDES[0])
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == len(INVALID_OVERRIDES) + 1
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert all("acme" in m for m in msgs[:-1]) and "other" in msgs[-1]
    assert "unknown lever 'users'" in msgs[0]


async def test_policy_for_memoizes_and_follows_policy_changes() -> None:
    lockout, _, _, _ = make()
    a = lockout.policy_for("acme", {"user": {"threshold": 3}})
    assert lockout.policy_for("acme", {"user": {"threshold": 3}}) is a
    assert lockout.policy_for("acme", {"user": {"threshold": 4}}).user.threshold == 4
    assert lockout.policy_for("acme", {}) is lockout.policy
    assert lockout.policy_for("acme") is lockout.policy
    lockout.policy = LockoutPolicy(user=Lever(5, MIN, MIN))
    assert lockout.policy_for("acme", {"user": {"threshold": 3}}).user == Lever(3, MIN, MIN)


async def test_record_failure_uses_the_given_policy() -> None:
    lockout, _, clock, metrics = make()
    k = keys()
    policy = lockout.policy_for("acme", {"user": {"threshold": 2, "lock_for": 60}})
    await lockout.record_failure(k, policy=policy)
    assert await lockout.pre_check(k) is None
    states = await lockout.record_failure(k, policy=policy)
    assert states["user"].tripped and metrics.locked == ["user"]
    assert await lockout.pre_check(k) == Locked(60, "user")
    clock.advance(61)
    await lockout.record_success(k, policy=policy)
    assert await lockout.pre_check(k) is None
