"""``SessionConfig(max_sessions_per_user=N)`` under simultaneous logins, on
every backend: the user keeps the newest N sessions, never fewer, and a
login whose own session did not survive is not answered as signed in."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from helpers import SESSION_COOKIE
from race_app import BACKENDS, RaceApi, race_api, race_store

from axess import SessionConfig
from axess.authn.lockout import Lever, LockoutPolicy
from axess.stores import CompositeStore


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> CompositeStore:
    return race_store(request)


def capped(store: CompositeStore, cap: int) -> RaceApi:
    return race_api(store, SessionConfig(max_sessions_per_user=cap))


def assert_evicted(r: httpx.Response) -> None:
    """The answer of a login whose session the cap ended as it was stored."""
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "unauthenticated"
    assert "max_sessions_per_user" in r.json()["detail"]
    assert f"{SESSION_COOKIE}=;" in r.headers["set-cookie"]
    assert "Max-Age=0" in r.headers["set-cookie"]


@pytest.mark.parametrize("second", ["later", "same-instant"])
async def test_two_logins_at_once_with_cap_one_leave_one_session(
    store: CompositeStore, second: str
) -> None:
    # The second login runs whole after the first stored its row but before
    # the first enforces the cap: each sparing its own row and deleting the
    # other's would leave none. One order for everyone keeps the newer (by
    # creation time, then key); the login that lost gets a 401, not a cookie.
    api = capped(store, 1)
    uid = await api.add_user("alice@example.com")
    async with api.client() as first, api.client() as other:
        answers: list[httpx.Response] = []

        async def log_in_other() -> None:
            if second == "later":
                api.clock.advance(1)
            answers.append(await other.login("alice@example.com"))

        api.store.before_list = log_in_other
        r = await first.login("alice@example.com")
        assert api.store.fired == 1
        (r_other,) = answers
        states = [await first.state(), await other.state()]
        (live,) = await api.auth.list_sessions(uid)
        if second == "later":
            assert r_other.status_code == 200, r_other.text
            assert_evicted(r)
            assert states == ["guest", "authenticated"]
        else:  # the same creation time: the key decides
            codes = sorted([r.status_code, r_other.status_code])
            assert codes == [200, 401], (r.text, r_other.text)
            assert_evicted(r if r.status_code == 401 else r_other)
            won = 0 if r.status_code == 200 else 1
            assert states[won] == "authenticated" and states[1 - won] == "guest"
        # The survivor is the winner's session: it goes on working.
        winner = other if states[1] == "authenticated" else first
        assert [s["handle"] for s in await winner.sessions()] == [live.key_prefix]
        # The loser is a guest whose CSRF token still works: it logs in again,
        # now the newer login, and ends the other session.
        loser = first if winner is other else other
        api.clock.advance(1)
        assert (await loser.login("alice@example.com")).status_code == 200
        assert await loser.state() == "authenticated" and await winner.state() == "guest"
    evicted = [e for e in api.events if e.reason == "max_sessions_per_user"]
    assert len(evicted) == 2
    assert all(e.user_id == uid for e in evicted)


async def test_burst_of_logins_keeps_exactly_the_cap(store: CompositeStore) -> None:
    # Logins in flight count against the lockout levers: make room for six.
    roomy = Lever(100, 900, 900)
    api = race_api(
        store,
        SessionConfig(max_sessions_per_user=2),
        LockoutPolicy(user=roomy, ip=roomy, tenant=roomy),
    )
    uid = await api.add_user("alice@example.com")
    clients = [api.client() for _ in range(6)]
    try:
        for c in clients:
            await c.http.get("/auth/csrf")
        answers = await asyncio.gather(*(c.login("alice@example.com") for c in clients))
        assert {a.status_code for a in answers} <= {200, 401}, [a.text for a in answers]
        for a in answers:
            if a.status_code == 401:
                assert_evicted(a)
        states = [await c.state() for c in clients]
        assert states.count("authenticated") == 2
        assert len(await api.auth.list_sessions(uid)) == 2
        for a, state in zip(answers, states, strict=True):
            if state == "authenticated":
                assert a.status_code == 200
    finally:
        for c in clients:
            await c.http.aclose()


async def test_cap_counts_the_sessions_of_the_tenant_only(store: CompositeStore) -> None:
    # An app whose user ids are per tenant: user 42 of the default tenant
    # logging in does not end user 42 of acme, and the other way round.
    api = capped(store, 1)
    async with api.client() as acme, api.client() as default, api.client() as again:
        await acme.sso("42", "acme")
        api.clock.advance(1)
        await default.sso("42", None)
        assert await acme.state() == "authenticated"
        api.clock.advance(1)
        await again.sso("42", "acme")
        assert await acme.state() == "guest"  # the cap still applies in acme
        assert await again.state() == "authenticated"
        assert await default.state() == "authenticated"


async def test_a_rotation_under_the_cap_keeps_every_session(store: CompositeStore) -> None:
    # regenerate() keeps the creation time: the oldest session rotating
    # stays the oldest, within the cap, and ends nobody.
    api = capped(store, 2)
    await api.add_user("alice@example.com")
    async with api.client() as old, api.client() as new:
        assert (await old.login("alice@example.com")).status_code == 200
        api.clock.advance(1)
        assert (await new.login("alice@example.com")).status_code == 200
        await old.rotate()
        assert await old.state() == "authenticated" and await new.state() == "authenticated"
