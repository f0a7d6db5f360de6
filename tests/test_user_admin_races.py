"""``UserAdmin`` ending a user's sessions (log out everywhere, suspend,
set_password) while a device of that user rotates its id, on every backend:
the rotated session is ended under its new id, the same user id in another
tenant keeps its session, and a session that keeps moving makes the call
fail rather than claim an end it did not reach."""

from __future__ import annotations

import pytest
from race_app import BACKENDS, RaceApi, race_api, race_store

from axess import StoreError
from axess.stores import CompositeStore


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> CompositeStore:
    return race_store(request)


async def _live(api: RaceApi, uid: str, tenant: str | None) -> int:
    infos = await api.auth.list_sessions(uid, tenant_id=tenant)
    return sum(info.tenant_id == tenant for info in infos)


async def test_log_out_everywhere_ends_a_session_rotating_meanwhile(
    store: CompositeStore,
) -> None:
    api = race_api(store)
    assert api.auth.users is not None
    uid = await api.add_user("alice")  # the default tenant
    async with api.client() as a, api.client() as b, api.client() as elsewhere:
        await a.sso(uid, None)
        api.clock.advance(1)
        await b.sso(uid, None)
        await elsewhere.sso(uid, "acme")  # the same id in another tenant
        api.store.after_list = b.rotate  # between the listing and the deletes
        assert await api.auth.users.logout_everywhere(uid) == 2
        assert api.store.fired == 1
        assert await a.state() == "guest" and await b.state() == "guest"
        assert await _live(api, uid, None) == 0
        assert await elsewhere.state() == "authenticated"


async def test_a_session_that_keeps_moving_fails_the_call(store: CompositeStore) -> None:
    api = race_api(store)
    assert api.auth.users is not None
    uid = await api.add_user("alice")
    async with api.client() as b, api.client() as elsewhere:
        await b.sso(uid, None)
        await elsewhere.sso(uid, "acme")

        async def rotate_again() -> None:
            await b.rotate()
            api.store.after_list = rotate_again  # at every listing

        api.store.after_list = rotate_again
        with pytest.raises(StoreError, match="kept changing"):
            await api.auth.users.logout_everywhere(uid)
        api.store.after_list = None
        assert await b.state() == "authenticated"  # (and nothing claimed otherwise)
        assert await api.auth.users.logout_everywhere(uid) == 1
        assert await b.state() == "guest" and await elsewhere.state() == "authenticated"
