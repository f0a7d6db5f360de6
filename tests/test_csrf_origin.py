"""CSRF before any cookie: where a browser says an unsafe request comes from
(Origin, Sec-Fetch-Site), and a token for a client whose first login failed."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from helpers import CSRF_COOKIE, ROUTES, CountingStore, client, cookie_of, make_auth
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from axess import Axess, ConfigurationError, Keyring, MockClock
from axess.authn import Password, PasswordHasher
from axess.authn.http import outcome_response
from axess.session.csrf import CSRFConfig
from axess.stores import MemoryStore
from axess.testing import SeededRandom

EVIL = "https://evil.example"
REFUSED = {"error": "csrf_failed", "detail": "cross-origin request refused"}


def app_for(auth: Axess) -> Starlette:
    app = Starlette(routes=[*ROUTES, Route("/hooks/in", ROUTES[2].endpoint, methods=["POST"])])
    auth.install(app)
    return app


def origin_auth(**csrf: Any) -> Axess:
    return make_auth(csrf=CSRFConfig(exempt_paths=("/hooks/",), **csrf))


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": EVIL},
        {"origin": "null"},  # sandboxed iframes, data: URLs, some redirects
        {"origin": "http://testserver"},  # same host, other scheme
        {"origin": "https://testserver:8443"},  # same host, other port
        {"origin": "https://sub.testserver"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},  # a sibling subdomain may be hostile
        {"sec-fetch-site": "cross-site", "origin": "https://testserver"},
    ],
)
async def test_foreign_unsafe_requests_without_cookies_are_refused_before_the_app(
    headers: dict[str, str],
) -> None:
    auth = origin_auth()
    store = auth.store
    assert isinstance(store, CountingStore)
    async with client(app_for(auth)) as c:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            r = await c.request(method, "/write?x=1", headers=headers)
            assert r.status_code == 403, method  # not 405: refused before routing
            assert r.json() == REFUSED
            assert "set-cookie" not in r.headers
    assert store.writes == 0  # the handler never ran, no session was created


async def test_login_csrf_the_attacker_cannot_sign_the_victim_in() -> None:
    """A cross-site form posting the attacker's credentials to a browser that
    holds no cookie yet (SameSite=Lax would send none anyway)."""
    async with client(app_for(origin_auth())) as victim:
        r = await victim.post(
            "/login?user=mallory", headers={"origin": EVIL, "sec-fetch-site": "cross-site"}
        )
        assert r.status_code == 403 and cookie_of(r) is None
        assert (await victim.get("/read")).json()["user"] is None


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://testserver"},
        {"origin": "https://testserver:443"},  # default port spelled out
        {"origin": "HTTPS://TestServer"},
        {"sec-fetch-site": "same-origin"},
        {"sec-fetch-site": "none"},  # typed into the address bar
        {"sec-fetch-site": "same-origin", "origin": "https://testserver"},
        {},  # no browser headers: a script or an API client, today's rule
    ],
)
async def test_same_origin_requests_without_cookies_follow_the_cookie_rule(
    headers: dict[str, str],
) -> None:
    async with client(app_for(origin_auth())) as c:
        r = await c.post("/write", headers=headers)
        assert r.status_code == 200


async def test_with_cookies_a_same_origin_request_still_needs_the_token() -> None:
    async with client(app_for(origin_auth())) as c:
        c.cookies.set("other", "x")
        r = await c.post("/write", headers={"origin": "https://testserver"})
        assert r.status_code == 403 and r.json()["detail"] == "missing or invalid CSRF token"


async def test_a_valid_token_from_a_foreign_origin_is_still_refused() -> None:
    async with client(app_for(origin_auth())) as c:
        r = await c.post("/write", headers={"origin": "https://testserver"})
        assert r.status_code == 200 and cookie_of(r, CSRF_COOKIE)  # the session is stored
        token = c.cookies[CSRF_COOKIE]
        r = await c.post("/write", headers={"x-csrf-token": token, "origin": EVIL})
        assert r.status_code == 403 and r.json() == REFUSED
        r = await c.post("/write", headers={"x-csrf-token": token, "origin": "https://testserver"})
        assert r.status_code == 200


async def test_allowed_origins_may_send_unsafe_requests() -> None:
    auth = origin_auth(allowed_origins=("https://App.Example:443", "http://localhost:5173"))
    async with client(app_for(auth)) as c:
        for headers in (
            {"origin": "https://app.example", "sec-fetch-site": "cross-site"},
            {"origin": "https://app.example", "sec-fetch-site": "same-site"},
            {"origin": "http://localhost:5173"},
        ):
            c.cookies.clear()  # each time a browser without cookies
            assert (await c.post("/write", headers=headers)).status_code == 200
        for headers in (
            {"origin": "https://app.example:8443"},
            {"origin": "http://app.example"},
            {"sec-fetch-site": "same-site"},  # no Origin to match against the list
        ):
            c.cookies.clear()
            assert (await c.post("/write", headers=headers)).status_code == 403


async def test_safe_methods_and_exempt_paths_are_not_checked() -> None:
    async with client(app_for(origin_auth())) as c:
        headers = {"origin": EVIL, "sec-fetch-site": "cross-site"}
        assert (await c.get("/read", headers=headers)).status_code == 200
        assert (await c.options("/read", headers=headers)).status_code in (200, 405)
        assert (await c.post("/hooks/in", headers=headers)).status_code == 200


async def test_without_a_host_header_the_server_address_is_the_own_origin() -> None:
    app = app_for(origin_auth())

    async def post(origin: bytes, server: Any) -> int:
        scope = {
            "type": "http",
            "method": "POST",
            "scheme": "https",
            "path": "/write",
            "raw_path": b"/write",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"origin", origin)],  # (HTTP/1.0: no Host)
            "client": ("127.0.0.1", 50000),
            "server": server,
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return int(sent[0]["status"])

    assert await post(b"https://testserver", ("testserver", 443)) == 200
    assert await post(b"https://testserver:8443", ("testserver", 8443)) == 200
    assert await post(EVIL.encode(), ("testserver", 443)) == 403
    assert await post(b"https://testserver", ("/run/app.sock", None)) == 403  # a socket
    assert await post(b"https://testserver", None) == 403


async def test_behind_a_tls_proxy_the_scheme_mismatch_is_explained_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The app sees http (the proxy terminated TLS) while the browser's Origin
    says https: refused, with one WARNING naming the two ways out."""
    app = app_for(origin_auth())
    async with client(app) as c:
        c.base_url = "http://shop.example"  # type: ignore[assignment]
        with caplog.at_level(logging.INFO, logger="axess.session.csrf"):
            # Refused for Sec-Fetch-Site alone, same scheme: not the proxy case,
            # and it must not spend the one hint.
            same = {"origin": "http://shop.example", "sec-fetch-site": "same-site"}
            assert (await c.post("/write", headers=same)).status_code == 403
            hints = [r for r in caplog.records if r.name == "axess.session.csrf"]
            assert not [r for r in hints if r.levelno >= logging.WARNING]
            for _ in range(2):
                r = await c.post("/write", headers={"origin": "https://shop.example"})
                assert r.status_code == 403
    warnings = [
        r for r in caplog.records if r.name == "axess.session.csrf" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert "allowed_origins" in warnings[0].getMessage()
    assert "proxy-headers" in warnings[0].getMessage()
    # The documented fix: list the public origin.
    fixed = app_for(origin_auth(allowed_origins=("https://shop.example",)))
    async with client(fixed) as c:
        c.base_url = "http://shop.example"  # type: ignore[assignment]
        r = await c.post("/write", headers={"origin": "https://shop.example"})
        assert r.status_code == 200


@pytest.mark.parametrize(
    "bad",
    [
        "*",
        "null",
        "app.example",
        "https://app.example/",
        "https://app.example/login",
        "https://app.example?x=1",
        "https://user:pw@app.example",
        "ftp://app.example",
        "https://app.example:99999",
        "https://",
        " https://app.example",
        "",
    ],
)
def test_allowed_origins_are_validated(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid allowed origin"):
        CSRFConfig(allowed_origins=(bad,))


def test_allowed_origins_are_normalized_and_must_be_a_tuple() -> None:
    config = CSRFConfig(allowed_origins=("HTTPS://App.Example:443", "http://[::1]:8080"))
    assert config.allowed_origins == ("https://app.example", "http://[::1]:8080")
    with pytest.raises(ConfigurationError, match="tuple of origins"):
        CSRFConfig(allowed_origins="https://app.example")  # type: ignore[arg-type]


# -- a JSON client's first failed login --------------------------------------------------
def login_app() -> tuple[Axess, Starlette]:
    auth = Axess(
        store=MemoryStore(),
        keys=Keyring.generate(),
        clock=MockClock(),
        random=SeededRandom(5),
        password_hasher=PasswordHasher(time_cost=1, memory_cost=64, parallelism=1),
        csrf=CSRFConfig(),
        debug=True,
        cleanup_interval=None,
    )
    assert auth.authn is not None

    async def login(request: Request) -> Response:
        body = await request.json()
        assert auth.authn is not None
        outcome = await auth.authn.login_password(request, body["email"], body["password"])
        return outcome_response(outcome)

    async def begin(request: Request) -> Response:
        assert auth.authn is not None
        email = (await request.json())["email"]
        return outcome_response(await auth.authn.begin_login(request, email))

    async def password(request: Request) -> Response:
        assert auth.authn is not None
        secret = Password((await request.json())["password"])
        return outcome_response(await auth.authn.verify_factor(request, secret))

    async def me(request: Request) -> Response:
        from axess import get_session

        return JSONResponse({"user": get_session(request).user_id})

    app = Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/begin", begin, methods=["POST"]),
            Route("/password", password, methods=["POST"]),
            Route("/me", me),
        ]
    )
    auth.install(app)
    return auth, app


async def test_a_json_client_can_retry_a_failed_first_login_without_a_bootstrap_call() -> None:
    auth, app = login_app()
    assert auth.users is not None
    await auth.users.create_user("ann@example.com", password="right password")
    async with client(app) as c:
        # No cookies and no browser headers: not checked (nothing to forge).
        r = await c.post("/login", json={"email": "ann@example.com", "password": "wrong"})
        assert r.status_code == 401
        # A failed login stores nothing: no session, so no cookie of any kind,
        # and the retry carries no ambient credential either.
        assert "set-cookie" not in r.headers and not c.cookies
        body = {"email": "ann@example.com", "password": "right password"}
        r = await c.post("/login", json=body)
        assert r.status_code == 200 and r.json()["authenticated"] is True
        assert cookie_of(r) and cookie_of(r, CSRF_COOKIE)  # signed in: a token with it
        assert (await c.get("/me")).json() == {"user": r.json()["user_id"]}
        # From now on the client holds a session cookie: the token is required.
        r = await c.post("/login", json=body)
        assert r.status_code == 403
        token = c.cookies[CSRF_COOKIE]
        r = await c.post("/login", json=body, headers={"x-csrf-token": token})
        assert r.status_code == 200


async def test_a_two_step_login_hands_out_the_token_with_the_login_in_progress() -> None:
    auth, app = login_app()
    assert auth.users is not None
    await auth.users.create_user("ann@example.com", password="right password")
    async with client(app) as c:
        r = await c.post("/begin", json={"email": "ann@example.com"})  # no cookies: unchecked
        assert r.json() == {"factor_required": "password"}
        # begin_login stored the login in progress: session cookie and token together.
        assert cookie_of(r) and cookie_of(r, CSRF_COOKIE)
        body = {"password": "right password"}
        assert (await c.post("/password", json=body)).status_code == 403
        r = await c.post("/password", json=body, headers={"x-csrf-token": c.cookies[CSRF_COOKIE]})
        assert r.status_code == 200 and r.json()["authenticated"] is True


async def test_a_stored_session_without_a_csrf_cookie_gets_one_but_then_none() -> None:
    async with client(app_for(origin_auth())) as c:
        r = await c.post("/write?x=1")  # no cookies: not checked, creates the session
        assert cookie_of(r) and cookie_of(r, CSRF_COOKIE)
        c.cookies.delete(CSRF_COOKIE)
        r = await c.get("/read")
        assert cookie_of(r, CSRF_COOKIE)  # the browser lost it: handed out again
        r = await c.get("/read")
        assert "set-cookie" not in r.headers  # it holds one now: plain views set nothing


async def _handshake(app: Any, headers: list[tuple[bytes, bytes]], path: str = "/ws") -> Any:
    """One websocket handshake through ``app``: the first message it sends."""
    scope = {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 443),
        "scheme": "wss",
        "subprotocols": [],
    }
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    sent: list[Any] = []

    async def receive() -> Any:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]


async def test_a_websocket_opened_by_another_sites_page_is_closed() -> None:
    # The handshake carries the session cookie like any request (a sibling
    # subdomain's page sends SameSite=Lax cookies): the origin check applies.
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    auth = origin_auth(allowed_origins=("https://app.example",))
    app = app_for(auth)
    app.router.routes.append(WebSocketRoute("/ws", ws))
    app.router.routes.append(WebSocketRoute("/hooks/ws", ws))
    accepted = {"type": "websocket.accept", "subprotocol": None, "headers": []}
    closed = {"type": "websocket.close", "code": 1008}
    for headers in (
        [(b"origin", b"https://evil.example")],
        [(b"origin", b"https://sub.testserver")],
        [(b"origin", b"https://testserver"), (b"sec-fetch-site", b"same-site")],
    ):
        assert await _handshake(app, headers) == closed, headers
    for headers in (
        [(b"origin", b"https://testserver")],  # its own page (wss -> https)
        [(b"origin", b"https://app.example")],  # allowed
        [],  # not a browser
    ):
        assert await _handshake(app, headers) == accepted, headers
    assert await _handshake(app, [(b"origin", b"https://evil.example")], "/hooks/ws") == accepted
