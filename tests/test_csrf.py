"""CSRF: signed double-submit tokens bound to the session."""

from __future__ import annotations

from typing import Any

from helpers import CSRF_COOKIE, ROUTES, SESSION_COOKIE, client, cookie_of, make_auth
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from axess import Axess
from axess.session.csrf import CSRFConfig, csrf_input, csrf_token


async def form(request: Request) -> HTMLResponse:
    return HTMLResponse(f"<form method=post>{csrf_input(request)}</form>")


async def token(request: Request) -> JSONResponse:
    return JSONResponse({"token": csrf_token(request)})


async def echo_form(request: Request) -> JSONResponse:
    data = await request.form()
    return JSONResponse({"name": data.get("name")})


def app_for(auth: Axess) -> Starlette:
    app = Starlette(
        routes=[
            *ROUTES,
            Route("/form", form),
            Route("/token", token),
            Route("/echo", echo_form, methods=["POST"]),
            Route("/hooks/in", echo_form, methods=["POST"]),
        ]
    )
    auth.install(app)
    return app


def csrf_auth(**kw: Any) -> Axess:
    return make_auth(csrf=CSRFConfig(exempt_paths=("/hooks/",)), **kw)


async def test_get_is_never_blocked_and_post_without_token_is_403() -> None:
    async with client(app_for(csrf_auth())) as c:
        assert (await c.get("/read")).status_code == 200
        r = await c.post("/write", headers={"cookie": "a=b"})
        assert r.status_code == 403
        assert r.json()["error"] == "csrf_failed"


async def test_token_round_trip_with_header() -> None:
    async with client(app_for(csrf_auth())) as c:
        t = (await c.get("/token")).json()["token"]
        assert c.cookies.get(CSRF_COOKIE) == t
        r = await c.post("/write", headers={"x-csrf-token": t})
        assert r.status_code == 200


async def test_form_field_variant_and_body_still_readable() -> None:
    async with client(app_for(csrf_auth())) as c:
        html = (await c.get("/form")).text
        t = html.split('value="')[1].split('"')[0]
        r = await c.post("/echo", data={"csrf_token": t, "name": "zoë"})
        assert r.status_code == 200 and r.json() == {"name": "zoë"}
        r = await c.post("/echo", files={"f": ("a.txt", b"x")}, data={"csrf_token": t, "name": "m"})
        assert r.status_code == 200 and r.json() == {"name": "m"}
        r = await c.post("/echo", data={"csrf_token": "wrong", "name": "x"})
        assert r.status_code == 403


async def test_token_from_another_session_is_refused() -> None:
    auth = csrf_auth()
    app = app_for(auth)
    async with client(app) as victim, client(app) as attacker:
        await attacker.post("/login?user=mallory", headers={"x-csrf-token": await _anon(attacker)})
        stolen = (await attacker.get("/token")).json()["token"]
        await victim.post("/login?user=alice", headers={"x-csrf-token": await _anon(victim)})
        victim.cookies.set(CSRF_COOKIE, stolen)  # cookie injection + matching header
        r = await victim.post("/write", headers={"x-csrf-token": stolen})
        assert r.status_code == 403


async def _anon(c: Any) -> str:
    return str((await c.get("/token")).json()["token"])


async def test_token_reminted_after_login_works_on_next_post() -> None:
    async with client(app_for(csrf_auth())) as c:
        anon = await _anon(c)
        r = await c.post("/login?user=alice", headers={"x-csrf-token": anon})
        assert r.status_code == 200
        new = cookie_of(r, CSRF_COOKIE)
        assert new and new != anon
        # the old token no longer fits the rotated session
        assert (await c.post("/write", headers={"x-csrf-token": anon})).status_code == 403
        assert (await c.post("/write", headers={"x-csrf-token": new})).status_code == 200
        # logout rotates again
        r = await c.post("/logout", headers={"x-csrf-token": new})
        assert r.status_code == 200
        after = cookie_of(r, CSRF_COOKIE)
        assert after and after != new


async def test_a_session_revoked_for_a_binding_mismatch_gets_an_anonymous_token() -> None:
    app = app_for(csrf_auth())  # one app: its memos are warm for the second request
    async with client(app) as c:
        t = await _anon(c)
        r = await c.post("/login?user=alice", headers={"x-csrf-token": t})
        signed_in = cookie_of(r, CSRF_COOKIE)
        assert signed_in and (await c.get("/read")).json()["user"] == "alice"
        # The cookie replayed by another browser: revoked, and the response
        # replaces the token bound to the dead session with an anonymous one.
        r = await c.get("/read", headers={"user-agent": "curl/8.0"})
        assert r.json()["user"] is None and cookie_of(r) == ""
        fresh = cookie_of(r, CSRF_COOKIE)
        assert fresh and fresh != signed_in
        c.cookies.delete(SESSION_COOKIE)
        assert (await c.post("/write", headers={"x-csrf-token": signed_in})).status_code == 403
        assert (await c.post("/write", headers={"x-csrf-token": fresh})).status_code == 200


async def test_read_only_views_get_no_csrf_cookie() -> None:
    async with client(app_for(csrf_auth())) as c:
        t = await _anon(c)
        await c.post("/login?user=alice", headers={"x-csrf-token": t})
        r = await c.get("/read")
        assert "set-cookie" not in r.headers


async def test_bearer_requests_without_cookies_are_not_checked() -> None:
    async with client(app_for(csrf_auth())) as c:
        r = await c.post("/write", headers={"authorization": "Bearer abc"})
        assert r.status_code == 200


async def test_exempt_paths() -> None:
    async with client(app_for(csrf_auth())) as c:
        await c.get("/token")
        r = await c.post("/hooks/in", data={"name": "x"})
        assert r.status_code == 200
        r = await c.post("/hooksX", data={"name": "x"})
        assert r.status_code in (403, 404)


async def test_exempt_paths_under_a_mount() -> None:
    # The app mounted at /shop sees /shop/hooks/in with root_path /shop;
    # its exempt paths name its own routes, as its router does.
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/shop", app=app_for(csrf_auth()))])
    async with client(outer) as c:
        r = await c.post("/shop/hooks/in", data={"name": "x"}, headers={"cookie": "a=b"})
        assert r.status_code == 200
        r = await c.post("/shop/echo", data={"name": "x"}, headers={"cookie": "a=b"})
        assert r.status_code == 403


async def test_oversized_form_must_use_header() -> None:
    auth = make_auth(csrf=CSRFConfig(max_form_bytes=100))
    async with client(app_for(auth)) as c:
        t = await _anon(c)
        r = await c.post("/echo", data={"csrf_token": t, "name": "x" * 500})
        assert r.status_code == 403
        r = await c.post("/echo", data={"name": "x" * 500}, headers={"x-csrf-token": t})
        assert r.status_code == 200


async def test_garbage_tokens_are_403_not_500() -> None:
    async with client(app_for(csrf_auth())) as c:
        t = await _anon(c)
        for bad in ["", "a" * 43, t[:-1] + ("A" if t[-1] != "A" else "B"), "é" * 43, t + "="]:
            c.cookies.set(CSRF_COOKIE, bad or "x")
            r = await c.post("/write", headers={"x-csrf-token": bad.encode("utf-8")})
            assert r.status_code == 403


async def test_previous_csrf_key_still_verifies() -> None:
    from axess import Key, Keyring

    first = csrf_auth()
    async with client(app_for(first)) as c:
        t = await _anon(c)
        old = first.keys
        rotated = Keyring(
            signing=old.keys("signing"),
            envelope=old.keys("envelope"),
            fingerprint=old.keys("fingerprint"),
            csrf=[Key("c2", b"\x03" * 32), *old.keys("csrf")],
            device=old.keys("device"),
        )
        second = make_auth(first.store, keys=rotated, clock=first.clock, csrf=CSRFConfig())  # type: ignore[arg-type]
        c._transport = __import__("httpx").ASGITransport(app=app_for(second))
        assert (await c.post("/write", headers={"x-csrf-token": t})).status_code == 200


async def test_first_form_on_a_new_session_works() -> None:
    """A page that creates the session and renders a form in the same response."""

    async def page(request: Request) -> HTMLResponse:
        from axess import get_session

        get_session(request)["visits"] = 1  # creates the session in this response
        return HTMLResponse(csrf_input(request))

    auth = csrf_auth()
    app = Starlette(routes=[*ROUTES, Route("/page", page)])
    auth.install(app)
    async with client(app) as c:
        html = (await c.get("/page")).text
        t = html.split('value="')[1].split('"')[0]
        assert c.cookies.get(CSRF_COOKIE) == t
        r = await c.post("/login?user=alice", headers={"x-csrf-token": t})
        assert r.status_code == 200


async def test_form_rendered_in_the_login_response_fits_the_rotated_session() -> None:
    async def login_page(request: Request) -> HTMLResponse:
        from axess import get_session

        get_session(request).authenticate("alice")
        return HTMLResponse(csrf_input(request))

    auth = csrf_auth()
    app = Starlette(
        routes=[*ROUTES, Route("/token", token), Route("/login-page", login_page, methods=["POST"])]
    )
    auth.install(app)
    async with client(app) as c:
        anon = await _anon(c)
        r = await c.post("/login-page", headers={"x-csrf-token": anon})
        t = r.text.split('value="')[1].split('"')[0]
        assert t != anon and c.cookies.get(CSRF_COOKIE) == t
        assert (await c.post("/write", headers={"x-csrf-token": t})).status_code == 200
