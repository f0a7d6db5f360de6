"""Cookie tossing (book: Sessions, "Cookie tossing").

A sibling subdomain (``evil.example.com`` next to ``app.example.com``) can set
cookies for the parent domain with any name axess uses and a longer path;
the browser then sends them *ahead of* the app's own. Over HTTP that is a
Cookie header holding several cookies of one name, the planted one first.

Two defences, both tested here through the public HTTP surface:

* the default names carry the ``__Host-`` prefix whenever the cookie can
  (Secure, ``Path=/``, no ``Domain``): a browser refuses a ``__Host-`` cookie
  from any other host, so nothing can be planted at all;
* for any name, of several cookies of the name the first that verifies
  (signature, or for CSRF a token that fits) is used, not the first sent.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
from authn_app import make_env
from helpers import (
    CSRF_COOKIE,
    DEVICE_COOKIE_NAME,
    ROUTES,
    SESSION_COOKIE,
    client,
    cookie_of,
    make_app,
    make_auth,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from axess import Axess, ConfigurationError, CSRFConfig, Keyring, SessionConfig
from axess.authn.device import DeviceCookieConfig
from axess.session.cookie import MAX_COOKIE_BYTES, MAX_SAME_NAME
from axess.session.csrf import csrf_token
from axess.stores import MemoryStore

PASSWORD = "correct horse"


def _set_cookie_names(response: object) -> list[str]:
    headers = response.headers.get_list("set-cookie")  # type: ignore[attr-defined]
    return [h.split("=", 1)[0] for h in headers]


async def _signed_in(auth: Axess) -> tuple[Starlette, str]:
    app = make_app(auth)
    async with client(app) as c:
        value = cookie_of(await c.post("/login?user=alice"))
    assert value
    return app, value


def _forged(value: str) -> str:
    """The real cookie's format with one signature character changed."""
    return value[:-1] + ("A" if value[-1] != "A" else "B")


# -- the session cookie -------------------------------------------------------------
@pytest.mark.parametrize("planted", ["junk", "", "forged", "oversized", "quoted"])
async def test_a_session_cookie_planted_ahead_of_the_real_one_does_not_sign_the_user_out(
    planted: str,
) -> None:
    app, value = await _signed_in(make_auth())
    junk = {
        "forged": _forged(value),
        "oversized": "x" * (MAX_COOKIE_BYTES + 1),
        "quoted": f'"{_forged(value)}"',
    }.get(planted, planted)
    header = f"{SESSION_COOKIE}={junk}; other=1; {SESSION_COOKIE}={value}"
    async with client(app) as c:
        r = await c.get("/read", headers={"cookie": header})
        assert r.json()["user"] == "alice"
        # No Set-Cookie of the name: a clearing cookie (host-only, Path=/)
        # would delete the real cookie and leave the planted one.
        assert cookie_of(r) is None
        # A request that writes the session saves it under the real cookie.
        r = await c.post("/write", headers={"cookie": header})
        assert r.status_code == 200 and cookie_of(r) is None
        r = await c.get("/read", headers={"cookie": header})
        assert r.json() == {"user": "alice", "n": 1, "auth": "authenticated"}


async def test_a_planted_session_cookie_causes_no_logout_loop() -> None:
    # The planted cookie outlives the real one (e.g. the user cleared only
    # the app's cookies): the next login's cookie is sent after it, and the
    # user stays signed in instead of being a guest on every next request.
    app = make_app(make_auth())
    async with client(app) as c:
        planted = f"{SESSION_COOKIE}=junk"
        r = await c.post("/login?user=alice", headers={"cookie": planted})
        value = cookie_of(r)
        assert value  # a new session cookie, no clearing one
        for _ in range(3):
            r = await c.get("/read", headers={"cookie": f"{planted}; {SESSION_COOKIE}={value}"})
            assert r.json()["user"] == "alice" and cookie_of(r) is None


async def test_a_planted_cookie_of_an_ended_session_does_not_hide_the_real_one() -> None:
    # The attacker signs in, copies their cookie and logs out: the cookie
    # still verifies but names no session. Planted ahead of the user's, it
    # must neither make the user a guest nor have the response clear the
    # user's cookie.
    auth = make_auth()
    app, alice = await _signed_in(auth)
    async with client(app) as c:
        mallory = cookie_of(await c.post("/login?user=mallory"))
        await c.post("/logout")
    header = f"{SESSION_COOKIE}={mallory}; {SESSION_COOKIE}={alice}"
    async with client(app) as c:
        for _ in range(2):  # the second answer comes from the memo
            r = await c.get("/read", headers={"cookie": header})
            assert r.json()["user"] == "alice" and cookie_of(r) is None
        r = await c.post("/write", headers={"cookie": header})
        assert r.status_code == 200 and cookie_of(r) is None


async def test_signing_in_on_a_planted_live_session_leaves_the_user_signed_in() -> None:
    # The attacker's live session planted (what only the __Host- name
    # prevents): the user is signed in as the attacker until they sign in
    # themselves. Their login rotates that session away, and from then on
    # the planted cookie, still sent first, names nothing: the user's own
    # cookie is used, not cleared.
    env = make_env()
    await env.add_user("owner")
    await env.add_user("mallory")
    async with env.client() as c:
        body = {"identifier": "mallory", "password": PASSWORD}
        assert (await c.post("/login", json=body)).status_code == 200
        planted = f"{SESSION_COOKIE}={c.cookies[SESSION_COOKIE]}"
    async with env.client() as c:
        r = await c.get("/me", headers={"cookie": planted})
        assert r.json()["user"] == "u-mallory"  # (the part only the prefix prevents)
        body = {"identifier": "owner", "password": PASSWORD}
        r = await c.post("/login", json=body, headers={"cookie": planted})
        own = cookie_of(r)
        assert r.status_code == 200 and own
        for _ in range(2):
            r = await c.get("/me", headers={"cookie": f"{planted}; {SESSION_COOKIE}={own}"})
            assert r.json()["user"] == "u-owner" and cookie_of(r) is None


async def test_the_first_cookie_that_verifies_is_used_up_to_a_bound() -> None:
    # At most MAX_SAME_NAME cookies of the name are looked at, so a header
    # stuffed with look-alikes costs a bounded number of checks. (A browser
    # sends one planted cookie per path prefix of the request at most.)
    app, value = await _signed_in(make_auth())
    async with client(app) as c:
        ahead = "; ".join(f"{SESSION_COOKIE}=junk{i}" for i in range(MAX_SAME_NAME - 1))
        r = await c.get("/read", headers={"cookie": f"{ahead}; {SESSION_COOKIE}={value}"})
        assert r.json()["user"] == "alice"
        ahead += f"; {SESSION_COOKIE}=one-too-many"
        r = await c.get("/read", headers={"cookie": f"{ahead}; {SESSION_COOKIE}={value}"})
        assert r.status_code == 200 and r.json()["user"] is None


async def test_of_two_valid_session_cookies_the_first_one_sent_wins() -> None:
    # What the __Host- prefix is for: a *valid* cookie planted ahead of the
    # user's (the attacker's own session: login CSRF) cannot be told from
    # the user's by the server. Under a __Host- name it cannot be planted.
    auth = make_auth()
    app, alice = await _signed_in(auth)
    async with client(app) as c:
        mallory = cookie_of(await c.post("/login?user=mallory"))
        r = await c.get(
            "/read", headers={"cookie": f"{SESSION_COOKIE}={mallory}; {SESSION_COOKIE}={alice}"}
        )
    assert r.json()["user"] == "mallory"
    assert SESSION_COOKIE.startswith("__Host-")


# -- the CSRF cookie ----------------------------------------------------------------
async def token(request: Request) -> JSONResponse:
    return JSONResponse({"token": csrf_token(request)})


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"name": (await request.form()).get("name")})


def csrf_app() -> Starlette:
    app = Starlette(
        routes=[*ROUTES, Route("/token", token), Route("/echo", echo, methods=["POST"])]
    )
    make_auth(csrf=CSRFConfig()).install(app)
    return app


async def _signed_in_with_token(app: Starlette) -> tuple[str, str]:
    """(session cookie, CSRF token) of a signed-in browser."""
    async with client(app) as c:
        t = (await c.get("/token")).json()["token"]
        r = await c.post("/login?user=alice", headers={"x-csrf-token": t})
        assert r.status_code == 200
        sid, tok = c.cookies[SESSION_COOKIE], c.cookies[CSRF_COOKIE]
    assert tok != t  # re-minted for the signed-in session
    return sid, tok


async def test_a_csrf_cookie_planted_ahead_of_the_real_one_does_not_break_forms() -> None:
    app = csrf_app()
    sid, tok = await _signed_in_with_token(app)
    async with client(app) as c:
        anon = (await c.get("/token")).json()["token"]  # any browser can get one
    for planted in ("A" * 43, anon, "junk"):
        header = f"{CSRF_COOKIE}={planted}; {SESSION_COOKIE}={sid}; {CSRF_COOKIE}={tok}"
        async with client(app) as c:
            r = await c.post("/write", headers={"cookie": header, "x-csrf-token": tok})
            assert r.status_code == 200
            r = await c.post(
                "/echo", headers={"cookie": header}, data={"csrf_token": tok, "name": "x"}
            )
            assert r.status_code == 200 and r.json() == {"name": "x"}
            # The browser's own token still fits: no re-minted cookie on
            # every page, and a page asking for a token gets the browser's.
            r = await c.get("/read", headers={"cookie": header})
            assert r.json()["user"] == "alice" and CSRF_COOKIE not in _set_cookie_names(r)
            r = await c.get("/token", headers={"cookie": header})
            assert r.json()["token"] == tok and CSRF_COOKIE not in _set_cookie_names(r)


async def test_a_planted_csrf_token_does_not_pass_for_a_signed_in_session() -> None:
    # Trying every cookie of the name gives an attacker nothing: a token the
    # attacker knows (an anonymous one, planted and submitted) does not fit
    # the victim's signed-in session.
    app = csrf_app()
    sid, tok = await _signed_in_with_token(app)
    async with client(app) as c:
        anon = (await c.get("/token")).json()["token"]
        header = f"{CSRF_COOKIE}={anon}; {SESSION_COOKIE}={sid}; {CSRF_COOKIE}={tok}"
        r = await c.post("/write", headers={"cookie": header, "x-csrf-token": anon})
    assert r.status_code == 403 and r.json()["error"] == "csrf_failed"


# -- the device cookie --------------------------------------------------------------
async def test_a_device_cookie_planted_ahead_of_the_real_one_keeps_the_browser_trusted() -> None:
    env = make_env()
    await env.add_user("owner")
    body = {"identifier": "owner", "password": PASSWORD}
    async with env.client() as owner:
        assert (await owner.post("/login", json=body)).status_code == 200
        device = owner.cookies[DEVICE_COOKIE_NAME]
    async with env.client() as stranger:  # spends the user lever's budget
        for _ in range(5):
            await stranger.post("/login", json={**body, "password": "guess"})
        assert (await stranger.post("/login", json=body)).status_code == 429
    async with env.client() as owner:
        header = f"{DEVICE_COOKIE_NAME}={_forged(device)}; {DEVICE_COOKIE_NAME}={device}"
        r = await owner.post("/login", json=body, headers={"cookie": header})
    assert r.status_code == 200  # still a trusted origin for the account


# -- names ----------------------------------------------------------------------------
async def test_default_names_carry_the_host_prefix_when_the_cookies_can() -> None:
    assert SESSION_COOKIE == "__Host-axess.sid"
    assert CSRF_COOKIE == "__Host-axess.csrf"
    assert DEVICE_COOKIE_NAME == "__Host-axess.device"
    env = make_env()
    await env.add_user("owner")
    async with env.client() as c:
        r = await c.post("/login", json={"identifier": "owner", "password": PASSWORD})
    for header in r.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        assert name in (SESSION_COOKIE, DEVICE_COOKIE_NAME)
        attrs = {a.strip().split("=")[0] for a in rest.split(";")[1:]}
        assert "Secure" in attrs and "Domain" not in attrs and "Path=/" in rest
    app = csrf_app()
    async with client(app) as c:
        r = await c.get("/token")
    assert _set_cookie_names(r) == [CSRF_COOKIE]


async def test_cookies_that_cannot_carry_the_prefix_get_the_plain_names() -> None:
    # Local development over plain http (secure=False), a Domain or a Path.
    auth = Axess(
        store=MemoryStore(),
        keys=Keyring.generate(),
        session=SessionConfig(secure=False),
        csrf=CSRFConfig(secure=False),
        debug=True,
        cleanup_interval=None,
    )
    assert auth.session_config.resolved_cookie_name == "axess.sid"
    assert auth.csrf_config is not None
    assert auth.csrf_config.resolved_cookie_name == "axess.csrf"
    # The device cookie follows the session cookie's Secure setting.
    assert auth.authn is not None
    assert auth.authn.device_cookie.config.resolved_name == "axess.device"
    async with client(make_app(make_auth(secure=False))) as c:
        assert _set_cookie_names(await c.post("/login?user=bob")) == ["axess.sid"]
    assert SessionConfig(domain="example.com").resolved_cookie_name == "axess.sid"
    assert SessionConfig(path="/app").resolved_cookie_name == "axess.sid"
    assert CSRFConfig(path="/app").resolved_cookie_name == "axess.csrf"
    assert DeviceCookieConfig(path="/app").resolved_name == "axess.device"
    # The default is resolved anew when attributes change.
    relaxed = dataclasses.replace(SessionConfig(), secure=False)
    assert relaxed.resolved_cookie_name == "axess.sid" and relaxed.cookie_name == ""


@pytest.mark.parametrize("name", ["axess.sid", "sid", "__Secure-axess.sid", "__Host-mine"])
async def test_an_explicit_session_cookie_name_is_used_as_given(name: str) -> None:
    auth = make_auth(cookie_name=name)
    assert auth.session_config.resolved_cookie_name == name
    app = make_app(auth)
    async with client(app) as c:
        r = await c.post("/login?user=alice")
        assert _set_cookie_names(r) == [name]
        value = cookie_of(r, name)
        r = await c.get("/read", headers={"cookie": f"{SESSION_COOKIE}x=1; {name}={value}"})
    assert r.json()["user"] == "alice"


def test_explicit_csrf_and_device_cookie_names_are_used_as_given() -> None:
    assert CSRFConfig(cookie_name="xsrf").resolved_cookie_name == "xsrf"
    assert CSRFConfig(cookie_name="axess.csrf").resolved_cookie_name == "axess.csrf"
    assert DeviceCookieConfig(name="dev").resolved_name == "dev"
    assert DeviceCookieConfig(name="__Secure-dev").resolved_name == "__Secure-dev"


@pytest.mark.parametrize(
    "build",
    [
        lambda: SessionConfig(cookie_name="__Host-s", secure=False),
        lambda: SessionConfig(cookie_name="__Secure-s", secure=False),
        lambda: SessionConfig(cookie_name="__Host-s", domain="example.com"),
        lambda: SessionConfig(cookie_name="__Host-s", path="/app"),
        lambda: CSRFConfig(cookie_name="__Host-c", secure=False),
        lambda: CSRFConfig(cookie_name="__Secure-c", secure=False),
        lambda: CSRFConfig(cookie_name="__Host-c", path="/app"),
        lambda: CSRFConfig(cookie_name="a;b"),
        lambda: CSRFConfig(cookie_name="caf\u00e9"),
        lambda: DeviceCookieConfig(name="__Host-d", secure=False),
        lambda: DeviceCookieConfig(name="__Secure-d", secure=False),
        lambda: DeviceCookieConfig(name="__Host-d", path="/app"),
        lambda: DeviceCookieConfig(name="a=b"),
        lambda: DeviceCookieConfig(name="caf\u00e9"),
    ],
)
def test_a_name_whose_prefix_the_attributes_do_not_allow_is_refused(build: object) -> None:
    with pytest.raises(ConfigurationError):
        build()  # type: ignore[operator]


def test_keeping_a_plain_name_on_a_secure_cookie_is_a_logged_weakening(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert not any("__Host-" in w for w in SessionConfig().weakenings())
    assert not any("__Host-" in w for w in SessionConfig(secure=False).weakenings())
    assert not any("__Host-" in w for w in SessionConfig(domain="example.com").weakenings())
    with caplog.at_level(logging.WARNING, logger="axess.app"):
        make_auth(cookie_name="axess.sid")
    assert "session cookie named 'axess.sid' without the __Host- prefix" in caplog.text
