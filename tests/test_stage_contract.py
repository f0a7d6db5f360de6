"""The stage contract: the stack ``Axess.install`` fuses and the same stages
nested as plain ASGI middleware answer every request with the same
messages (book: Internals, "The stage contract").

Each scenario runs twice on identically built apps (same keys, seeded
randomness, mock clock, fresh memory store): once as one :class:`Stack`,
once as ``stage0(stage1(…(app)))``. Every message the app's server would
send (status, every header line in order, body) must be identical, across
early answers (rate limit 429, CSRF 403, foreign-origin 403), a response
hook's own answer (the session's 503 when the store fails at commit),
session writes and rotations, binding revocations, queued headers,
``Vary`` and errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from helpers import CSRF_COOKIE
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from axess import (
    Axess,
    Keyring,
    MockClock,
    RateLimit,
    StoreError,
    TrustedProxies,
    get_session,
)
from axess.keys import Key
from axess.session.csrf import CSRFConfig, csrf_token
from axess.stack import Stack, queue_response_headers
from axess.stores import MemoryStore
from axess.stores.base import SessionRecord
from axess.testing import SeededRandom

KEYS = Keyring(
    signing=[Key("s1", b"\x01" * 32)],
    envelope=[Key("e1", b"\x02" * 32)],
    fingerprint=[Key("f1", b"\x03" * 32)],
    csrf=[Key("c1", b"\x04" * 32)],
    device=[Key("d1", b"\x05" * 32)],
)


async def read(request: Request) -> Response:
    s = get_session(request)
    return JSONResponse({"user": s.user_id, "n": s.get("n")})


async def write(request: Request) -> Response:
    s = get_session(request)
    s["n"] = (s.get("n") or 0) + 1
    return PlainTextResponse("written")


async def login(request: Request) -> Response:
    get_session(request).authenticate("alice")
    return PlainTextResponse("in")


async def form(request: Request) -> Response:
    return PlainTextResponse(csrf_token(request))


async def queued(request: Request) -> Response:
    queue_response_headers(request.scope, [(b"x-queued", b"1")])
    return PlainTextResponse("queued")


async def boom(request: Request) -> Response:
    raise RuntimeError("handler failed")


ROUTES = [
    Route("/", read),
    Route("/write", write, methods=["POST"]),
    Route("/login", login, methods=["POST"]),
    Route("/form", form),
    Route("/queued", queued),
    Route("/boom", boom),
]


class FlakyStore(MemoryStore):
    """A memory store whose session writes fail while ``FAILING`` is set."""

    async def save_session(self, record: SessionRecord, now: float) -> bool:
        if FAILING:
            raise StoreError("down", substore="sessions")
        return await super().save_session(record, now)


FAILING: list[bool] = []


def _auth() -> Axess:
    return Axess(
        store=FlakyStore(),
        keys=KEYS,
        clock=MockClock(),
        random=SeededRandom(7),
        trusted_proxies=TrustedProxies(["127.0.0.0/8"]),
        csrf=CSRFConfig(),
        rate_limits=[RateLimit("3/minute", name="writes", paths=["/write"], methods=["POST"])],
        debug=True,
        cleanup_interval=None,
    )


def fused() -> Any:
    return _auth().wrap(Starlette(routes=ROUTES))


def nested() -> Any:
    stages = _auth().stages()
    app: Any = Starlette(routes=ROUTES)
    for stage in reversed(stages):
        stage.app = app
        app = stage
    assert not isinstance(app, Stack)
    return app


Sent = list[dict[str, Any]]


class Browser:
    """Drives an ASGI app directly, keeping cookies; records every message."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cookies: dict[str, str] = {}

    async def __call__(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Sent:
        raw = [(b"host", b"testserver"), (b"user-agent", b"contract/1")]
        raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        if self.cookies:
            raw.append((b"cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()).encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "https",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": raw,
            "client": ("127.0.0.1", 5000),
            "server": ("testserver", 443),
        }
        sent: Sent = []
        done = False

        async def receive() -> dict[str, Any]:
            nonlocal done
            if done:
                return {"type": "http.disconnect"}
            done = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", []):
                    if name.lower() == b"set-cookie":
                        pair = value.decode().split(";", 1)[0]
                        key, _, val = pair.partition("=")
                        if val:
                            self.cookies[key] = val
                        else:
                            self.cookies.pop(key, None)

        try:
            await self.app(scope, receive, send)
        except RuntimeError as exc:
            sent.append({"type": "exception", "error": str(exc)})
        return [_normal(m) for m in sent]

    def token(self) -> str:
        return self.cookies.get(CSRF_COOKIE, "")


def _normal(message: dict[str, Any]) -> dict[str, Any]:
    out = dict(message)
    if "headers" in out:
        out["headers"] = [(bytes(k), bytes(v)) for k, v in out["headers"]]
    return out


Scenario = Callable[[Browser], Awaitable[list[Sent]]]


async def guest_read(b: Browser) -> list[Sent]:
    return [await b("GET", "/")]


async def write_then_read(b: Browser) -> list[Sent]:
    first = await b("GET", "/form")
    second = await b("POST", "/write", headers={"x-csrf-token": b.token()})
    return [first, second, await b("GET", "/")]


async def csrf_refusal_keeps_outer_headers(b: Browser) -> list[Sent]:
    await b("GET", "/form")
    await b("POST", "/write", headers={"x-csrf-token": b.token()})
    # A cookie but a wrong token: CSRF answers early (403) behind the rate
    # limiter, whose RateLimit headers must still be on the answer.
    refused = await b("POST", "/write", headers={"x-csrf-token": "forged"})
    status = refused[0]
    assert status["status"] == 403
    assert any(k == b"ratelimit" for k, _ in status["headers"]), status["headers"]
    return [refused]


async def rate_limited(b: Browser) -> list[Sent]:
    await b("GET", "/form")
    out = [await b("POST", "/write", headers={"x-csrf-token": b.token()}) for _ in range(4)]
    assert out[-1][0]["status"] == 429
    return out


async def browser_refusals(b: Browser) -> list[Sent]:
    """Early answers negotiated for a browser: the HTML page, through the
    outer stages' hooks all the same."""
    html = {"accept": "text/html,*/*;q=0.8"}
    await b("GET", "/form")
    forged = await b("POST", "/write", headers={**html, "x-csrf-token": "forged"})
    assert forged[0]["status"] == 403
    assert dict(forged[0]["headers"])[b"content-type"].startswith(b"text/html")
    out = [forged]
    for _ in range(3):
        out.append(await b("POST", "/write", headers={**html, "x-csrf-token": b.token()}))
    assert out[-1][0]["status"] == 429 and b"Try again in" in out[-1][1]["body"]
    return out


async def foreign_origin(b: Browser) -> list[Sent]:
    return [await b("POST", "/write", headers={"origin": "https://evil.example"})]


async def login_rotates_and_remints(b: Browser) -> list[Sent]:
    await b("GET", "/form")
    signed_in = await b("POST", "/login", headers={"x-csrf-token": b.token()})
    after = await b("POST", "/write", headers={"x-csrf-token": b.token()})
    assert after[0]["status"] == 200
    return [signed_in, after, await b("GET", "/")]


async def binding_revocation(b: Browser) -> list[Sent]:
    await b("GET", "/form")
    await b("POST", "/login", headers={"x-csrf-token": b.token()})
    moved = await b("GET", "/", headers={"x-forwarded-for": "198.51.100.7"})
    return [moved]


async def commit_failure_keeps_queued_headers(b: Browser) -> list[Sent]:
    """The session's hook answers itself (503) when the store fails at
    commit: that answer carries the queued headers (the rate limiter's), as
    an early answer from ``enter`` does."""
    await b("GET", "/form")
    await b("POST", "/write", headers={"x-csrf-token": b.token()})
    FAILING.append(True)
    try:
        out = await b("POST", "/write", headers={"x-csrf-token": b.token()})
    finally:
        FAILING.clear()
    start = out[0]
    assert start["status"] == 503
    names = [k for k, _ in start["headers"]]
    assert names.count(b"ratelimit") == 1 and b"retry-after" in names, start["headers"]
    return [out]


async def queued_headers_once(b: Browser) -> list[Sent]:
    out = await b("GET", "/queued")
    assert [k for k, _ in out[0]["headers"]].count(b"x-queued") == 1
    return [out]


async def handler_error(b: Browser) -> list[Sent]:
    await b("GET", "/form")
    await b("POST", "/write", headers={"x-csrf-token": b.token()})
    return [await b("GET", "/boom")]


SCENARIOS: list[Scenario] = [
    guest_read,
    write_then_read,
    csrf_refusal_keeps_outer_headers,
    rate_limited,
    browser_refusals,
    foreign_origin,
    login_rotates_and_remints,
    binding_revocation,
    commit_failure_keeps_queued_headers,
    queued_headers_once,
    handler_error,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_fused_and_nested_send_the_same_messages(scenario: Scenario) -> None:
    one = await scenario(Browser(fused()))
    two = await scenario(Browser(nested()))
    assert one == two


async def test_nested_stacks_run_hooks_outermost_first() -> None:
    """Two fused stacks, one inside the other, behave as one stack of all
    stages: the inner stack hands its hooks to the outer one."""
    stages = _auth().stages()
    inner = Stack(Starlette(routes=ROUTES), stages[2:])
    outer = Stack(inner, stages[:2])
    one = await login_rotates_and_remints(Browser(outer))
    two = await login_rotates_and_remints(Browser(fused()))
    assert one == two
