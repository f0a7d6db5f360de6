"""Signing in to another account on a session that held one: none of the
previous account's custom data goes with it, whatever state the session
was in (signed in, a login half-way through, a step-up after a binding
mismatch); signing in again as the same account, or from a guest, keeps it."""

from __future__ import annotations

from typing import Any

import httpx
from authn_app import Env, enrol_totp, make_env
from helpers import SESSION_COOKIE
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from axess import get_session
from axess.session.binding import BindingPolicy

PASSWORD = "correct horse"


async def put(request: Request) -> Response:
    get_session(request)["token"] = request.query_params["v"]
    return JSONResponse({"ok": True})


async def data(request: Request) -> Response:
    s = get_session(request)
    return JSONResponse({"user": s.user_id, "kind": s.auth_state.kind, "data": dict(s)})


def _env(store: Any = None, **auth: Any) -> Env:
    env = make_env(store, **auth)
    env.app.add_route("/put", put, methods=["POST"])
    env.app.add_route("/data", data)
    return env


async def _login(c: httpx.AsyncClient, who: str) -> httpx.Response:
    return await c.post("/login", json={"identifier": who, "password": PASSWORD})


async def test_another_account_on_a_signed_in_session_starts_empty(login_store: Any) -> None:
    env = _env(login_store)
    await env.add_user("alice")
    await env.add_user("mallory")
    async with env.client() as c:
        assert (await _login(c, "alice")).status_code == 200
        await c.post("/put?v=alice-private")
        assert (await c.get("/data")).json()["data"] == {"token": "alice-private"}
        assert (await _login(c, "mallory")).status_code == 200
        seen = (await c.get("/data")).json()
        assert seen["user"] == "u-mallory" and seen["data"] == {}


async def test_the_same_account_or_a_guest_keeps_its_data(login_store: Any) -> None:
    env = _env(login_store)
    await env.add_user("alice")
    async with env.client() as c:
        await c.post("/put?v=cart")  # a guest's data
        assert (await _login(c, "alice")).status_code == 200
        assert (await c.get("/data")).json()["data"] == {"token": "cart"}
        assert (await _login(c, "alice")).status_code == 200  # again, the same account
        assert (await c.get("/data")).json()["data"] == {"token": "cart"}


async def test_a_login_half_way_through_hands_nothing_to_another_account(
    login_store: Any,
) -> None:
    env = _env(login_store)
    alice = await env.add_user("alice")
    await enrol_totp(env, alice)
    await env.add_user("mallory")
    async with env.client() as c:
        assert (await _login(c, "alice")).json() == {"factor_required": "totp"}
        await c.post("/put?v=planted-for-alice")
        assert (await _login(c, "mallory")).status_code == 200
        seen = (await c.get("/data")).json()
        assert seen["user"] == "u-mallory" and seen["data"] == {}


async def test_a_stolen_cookie_dropped_to_a_step_up_reveals_nothing(login_store: Any) -> None:
    """With ``on_mismatch="reauth"`` a replayed cookie from another browser
    is dropped to a step-up; signing in there to one's own account must not
    open the victim's data."""
    env = _env(login_store)
    env.auth.binding.policy = BindingPolicy(on_mismatch="reauth")  # before any request
    await env.add_user("alice")
    await env.add_user("mallory")
    async with env.client() as victim:
        assert (await _login(victim, "alice")).status_code == 200
        await victim.post("/put?v=ALICE-PRIVATE-TOKEN")
        stolen = victim.cookies[SESSION_COOKIE]
    async with env.client() as thief:
        thief.headers["user-agent"] = "thief-browser/1.0"
        thief.cookies.set(SESSION_COOKIE, stolen, domain="testserver.local")
        seen = (await thief.get("/data")).json()
        assert seen["kind"] == "authenticating"  # dropped to a step-up
        assert (await _login(thief, "mallory")).status_code == 200
        seen = (await thief.get("/data")).json()
        assert seen["user"] == "u-mallory" and seen["data"] == {}
