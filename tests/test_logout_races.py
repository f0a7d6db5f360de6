"""``POST /auth/logout/everywhere`` and ``DELETE /auth/sessions/{handle}``
while another device of the user rotates its session id, on every backend:
a rotation between the routes' listing of the sessions and their deletes
must not leave that device signed in, nor be answered "revoked"."""

from __future__ import annotations

import asyncio

import pytest
from race_app import BACKENDS, Client, RaceApi, race_api, race_store

from axess.stores import CompositeStore


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> CompositeStore:
    return race_store(request)


async def _live(api: RaceApi, uid: str, tenant: str | None) -> list[str]:
    return [
        info.storage_key
        for info in await api.auth.list_sessions(uid, tenant_id=tenant)
        if info.tenant_id == tenant
    ]


@pytest.mark.parametrize("tenant", [None, "acme"], ids=["default-tenant", "acme"])
async def test_logout_everywhere_ends_a_session_rotating_meanwhile(
    store: CompositeStore, tenant: str | None
) -> None:
    # Device B rotates its id (an app route calling regenerate()) while A's
    # "log out everywhere" runs: between its listing and its deletes, or just
    # before the store's own "log out everywhere". The same user id in the
    # other tenant (an app whose ids are per tenant) keeps its session.
    api = race_api(store)
    other_tenant = "acme" if tenant is None else None
    async with api.client() as a, api.client() as b, api.client() as elsewhere:
        await a.sso("42", tenant)
        api.clock.advance(1)
        await b.sso("42", tenant)
        await elsewhere.sso("42", other_tenant)
        api.store.after_list = api.store.before_delete_user = b.rotate
        before = len(api.events)
        r = await a.post("/auth/logout/everywhere")
        assert r.status_code == 200, r.text
        assert api.store.fired == 1  # B did rotate during the call
        assert r.json()["sessions_ended"] == 2
        assert await b.state() == "guest"
        assert await a.state() == "guest"
        assert await _live(api, "42", tenant) == []
        assert await elsewhere.state() == "authenticated"
        assert len(await _live(api, "42", other_tenant)) == 1
        # The trail: B's rotation, B's session ended under its new id (or
        # the user's sessions in the tenant, by the store at once), A's logout.
        during = api.events[before:]
        (rotated,) = [e for e in during if e.type == "session_rotated"]
        ended = [e for e in during if e.type == "session_invalidated"]
        (logout,) = [e for e in ended if e.reason == "logout"]
        assert (logout.user_id, logout.tenant_id) == ("42", tenant)
        others = [(e.session, e.user_id, e.tenant_id, e.reason) for e in ended if e != logout]
        if tenant is None:
            assert others == [(rotated.session, None, None, "revoked")]
        else:
            assert others == [("*", "42", tenant, "invalidate_user")]


async def test_logout_everywhere_with_devices_rotating_at_once(store: CompositeStore) -> None:
    # A burst: every other device rotates its id again and again while the
    # logout runs; none is signed in afterwards.
    api = race_api(store)
    uid = await api.add_user("alice@example.com")
    clients = [api.client() for _ in range(4)]
    a, *others = clients
    try:
        for c in clients:
            assert (await c.login("alice@example.com")).status_code == 200
            api.clock.advance(1)

        async def keep_rotating(c: Client) -> None:
            for _ in range(3):
                if (await c.post("/rotate")).status_code != 200:
                    return  # signed out: its CSRF token was bound to the session

        answers = await asyncio.gather(
            a.post("/auth/logout/everywhere"), *(keep_rotating(c) for c in others)
        )
        assert answers[0].status_code == 200, answers[0].text
        for c in clients:
            assert await c.state() == "guest"
        assert await api.auth.list_sessions(uid) == []
    finally:
        for c in clients:
            await c.http.aclose()


async def test_revoking_a_session_rotating_meanwhile_ends_its_new_id(
    store: CompositeStore,
) -> None:
    # B rotates between the route's listing and its delete: the delete finds
    # the listed id gone and follows B to its new one (the same creation time).
    api = race_api(store)
    uid = await api.add_user("alice@example.com")
    async with api.client() as a, api.client() as b:
        assert (await a.login("alice@example.com")).status_code == 200
        api.clock.advance(5)
        assert (await b.login("alice@example.com")).status_code == 200
        mine, theirs = await a.sessions()
        assert mine["current"] and not theirs["current"]
        api.store.after_list = b.rotate
        r = await a.send("DELETE", f"/auth/sessions/{theirs['handle']}")
        assert api.store.fired == 1
        assert r.status_code == 200, r.text
        assert r.json()["revoked"] == theirs["handle"] and r.json()["current"] is False
        assert await b.state() == "guest"
        assert await a.state() == "authenticated"
        assert len(await api.auth.list_sessions(uid)) == 1


async def test_revoking_a_session_that_logged_in_again_meanwhile_answers_404(
    store: CompositeStore,
) -> None:
    # B logs in again between the listing and the delete: a login starts a
    # new session, one A never saw. The route must not answer "revoked" for
    # a session that is still signed in.
    api = race_api(store)
    uid = await api.add_user("alice@example.com")
    async with api.client() as a, api.client() as b:
        assert (await a.login("alice@example.com")).status_code == 200
        api.clock.advance(5)
        assert (await b.login("alice@example.com")).status_code == 200
        _, theirs = await a.sessions()

        async def log_in_again() -> None:
            api.clock.advance(5)
            assert (await b.login("alice@example.com")).status_code == 200

        api.store.after_list = log_in_again
        r = await a.send("DELETE", f"/auth/sessions/{theirs['handle']}")
        assert api.store.fired == 1
        assert r.status_code == 404, r.text
        assert r.json()["error"] == "not_found"
        assert await b.state() == "authenticated"
        handles = [s["handle"] for s in await a.sessions()]
        assert len(handles) == 2 and theirs["handle"] not in handles
        assert len(await api.auth.list_sessions(uid)) == 2
