"""The per-route FastAPI dependency (``Depends(limit(...))``)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import Depends, FastAPI, Response
from fastapi.responses import PlainTextResponse
from helpers import client
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from axess import MockClock, StoreError
from axess.net import ClientIPMiddleware, TrustedProxies
from axess.ratelimit import (
    MemoryBucketStore,
    RateLimit,
    RateLimitDependency,
    RateLimiter,
    RateLimitMiddleware,
    limit,
)
from axess.refusals import Refused, refused_handler
from axess.stack import Stack


class FakeSession:
    def __init__(self, user_id: str | None) -> None:
        self.user_id = user_id
        self.tenant_id = None


class FakeSessionMiddleware:
    """Stands in for SessionMiddleware: the user comes from an x-user header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            user = dict(scope["headers"]).get(b"x-user")
            scope.setdefault("state", {})["session"] = FakeSession(user.decode() if user else None)
        await self.app(scope, receive, send)


class Login(BaseModel):
    username: str
    password: str


def make_app(limiter: RateLimiter) -> FastAPI:
    app = FastAPI()
    app.add_exception_handler(Refused, refused_handler)  # (Axess.install does)
    per_ip = limiter.dependency("2/minute")
    per_user = limiter.dependency("3/hour", key="user", name="exports")

    @app.get("/items/{item_id}", dependencies=[Depends(per_ip)])
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.get("/other", dependencies=[Depends(per_ip)])
    async def other() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/raw", dependencies=[Depends(per_ip)])
    async def raw() -> Response:
        return PlainTextResponse("raw")

    @app.post("/export", dependencies=[Depends(per_user)])
    async def export() -> dict[str, str]:
        return {"ok": "yes"}

    @app.post("/login", dependencies=[Depends(limiter.dependency("2/minute", key="login"))])
    async def login(body: Login) -> dict[str, str]:
        return {"user": body.username, "password": body.password}

    return app


async def test_dependency_limits_per_route_and_sets_headers() -> None:
    clock = MockClock()
    limiter = RateLimiter(clock=clock)
    app = FakeSessionMiddleware(make_app(limiter))
    async with client(app) as c:
        r = await c.get("/items/1")
        assert r.status_code == 200
        assert r.headers["ratelimit"] == '"route:items-item-id-ip";r=1;t=30'
        await c.get("/items/2")
        refused = await c.get("/items/3")
        assert refused.status_code == 429
        # The middleware's refusal, body and headers.
        assert refused.json() == {
            "error": "rate_limited",
            "detail": "too many requests",
            "retry_after": 30,
        }
        assert refused.headers["cache-control"] == "no-store"
        assert refused.headers["retry-after"] == "30"
        assert refused.headers["ratelimit"] == '"route:items-item-id-ip";r=0;t=30'
        assert refused.headers["ratelimit-policy"] == '"route:items-item-id-ip";q=2;w=60'
        # Another route using the same dependency has its own policy.
        assert (await c.get("/other")).status_code == 200
        # A Response returned directly gets no header without the middleware…
        raw = await c.get("/raw")
        assert raw.status_code == 200 and "ratelimit" not in raw.headers
        clock.advance(30)
        assert (await c.get("/items/4")).status_code == 200


async def test_user_key_works_in_the_dependency() -> None:
    limiter = RateLimiter(clock=MockClock())
    app = FakeSessionMiddleware(make_app(limiter))
    async with client(app) as c:
        alice = [
            (await c.post("/export", headers={"x-user": "alice"})).status_code for _ in range(4)
        ]
        bob = (await c.post("/export", headers={"x-user": "bob"})).status_code
        guest = [(await c.post("/export")).status_code for _ in range(4)]
    assert alice == [200, 200, 200, 429]
    assert bob == 200
    assert guest == [200, 200, 200, 429]  # guests fall back to their IP


async def test_login_key_reads_the_body_fastapi_also_parses() -> None:
    limiter = RateLimiter(clock=MockClock())
    app = FakeSessionMiddleware(make_app(limiter))
    async with client(app) as c:
        results = [
            await c.post("/login", json={"username": "Alice", "password": f"p{i}"})
            for i in range(3)
        ]
        other = await c.post("/login", json={"username": "bob", "password": "x"})
        bad = await c.post(
            "/login", content=b"{garbage", headers={"content-type": "application/json"}
        )
    assert [r.status_code for r in results] == [200, 200, 429]
    assert results[1].json() == {"user": "Alice", "password": "p1"}
    assert other.status_code == 200
    assert bad.status_code == 422  # FastAPI's validation, not a 500


async def test_with_the_middleware_headers_reach_any_response() -> None:
    limiter = RateLimiter([RateLimit("100/minute", name="global")], clock=MockClock())
    stack = Stack(
        FakeSessionMiddleware(make_app(limiter)),
        [
            ClientIPMiddleware(None, proxies=TrustedProxies()),
            RateLimitMiddleware(None, limiter=limiter),
        ],
    )
    async with client(stack) as c:
        raw = await c.get("/raw")
        item = await c.get("/items/1")
    assert raw.headers.get_list("ratelimit") == [
        '"global";r=99;t=1',
        '"route:raw-ip";r=1;t=30',
    ]
    assert item.headers.get_list("ratelimit") == [
        '"global";r=98;t=2',
        '"route:items-item-id-ip";r=1;t=30',
    ]


class DownStore(MemoryBucketStore):
    local = False

    async def check(self, buckets: Any) -> Any:
        raise StoreError("down", backend="test", substore="ratelimit")


async def test_store_down_closed_is_503_open_passes() -> None:
    app = FastAPI()
    closed = limit("1/minute", store=DownStore())
    opened = limit("1/minute", store=DownStore(), on_store_error="open")

    @app.get("/closed", dependencies=[Depends(closed)])
    async def c_() -> dict[str, str]:
        return {}

    @app.get("/open", dependencies=[Depends(opened)])
    async def o_() -> dict[str, str]:
        return {}

    async with client(app) as c:
        r = await c.get("/closed")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        # No handler registered: the framework's own body, the same status
        # and headers.
        assert r.json() == {"detail": "rate limit store unavailable"}
        assert r.headers["cache-control"] == "no-store"
        r = await c.get("/open")
        assert r.status_code == 200 and "ratelimit" not in r.headers


async def test_check_from_plain_starlette() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    dep = RateLimitDependency("1/hour", name="plain")

    async def endpoint(request: Request) -> PlainTextResponse:
        verdict = await dep.check(request)
        return PlainTextResponse("ok" if verdict.allowed else "no")

    app = Starlette(routes=[Route("/", endpoint)])
    async with client(app) as c:
        assert (await c.get("/")).text == "ok"
        r = await c.get("/")
    assert r.status_code == 429 and r.headers["retry-after"] == "3600"
    assert "plain" in repr(dep._template) and "1/1h" in repr(dep)


def test_fail_open_dependency_on_a_shared_store_is_a_logged_weakening(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="axess.ratelimit"):
        limit("1/minute", store=MemoryBucketStore(), on_store_error="open")
        assert "weakened" not in caplog.text  # a memory store cannot be down
        limit("1/minute", store=DownStore(), on_store_error="open", name="quota")
    assert "rate limit 'quota' lets requests through while its store is down" in caplog.text


async def test_a_route_limit_beside_the_middleware_rule_on_the_same_path() -> None:
    # auth_rules() limits POST /login as "login-ip"; an unnamed auth.limit()
    # on the same route used to get that very name, and on the memory store
    # the two rules reset each other's bucket: nothing was ever refused.
    from axess import Axess, Keyring
    from axess.ratelimit import auth_rules
    from axess.stores import MemoryStore

    auth = Axess(
        store=MemoryStore(),
        keys=Keyring.generate(),
        clock=MockClock(),
        rate_limits=auth_rules(),
        csrf=False,
        debug=True,
        cleanup_interval=None,
    )
    app = FastAPI()

    @app.post("/login", dependencies=[Depends(auth.limit("20/minute"))])
    async def login() -> dict[str, str]:
        return {"ok": "yes"}

    auth.install(app)
    async with client(app) as c:
        codes = [
            (await c.post("/login", data={"username": f"u{i}", "password": "x"})).status_code
            for i in range(40)
        ]
    # The tighter of the two (auth_rules' 10 a minute per IP) holds.
    assert codes == [200] * 10 + [429] * 30


async def test_a_composite_or_custom_key_gets_a_valid_default_name() -> None:
    from axess.ratelimit import keys

    limiter = RateLimiter(clock=MockClock())
    both = limiter.dependency("2/minute", key=keys.composite("ip", "header:x-org"))
    custom = limiter.dependency(
        "2/minute", key=keys.custom(lambda conn: conn.headers.get("x-org"), kind="org id")
    )
    app = FastAPI()
    app.add_exception_handler(Refused, refused_handler)

    @app.get("/both", dependencies=[Depends(both)])
    async def get_both() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/custom", dependencies=[Depends(custom)])
    async def get_custom() -> dict[str, str]:
        return {"ok": "yes"}

    async with client(app) as c:
        for path in ("/both", "/custom"):
            codes = [(await c.get(path, headers={"x-org": "acme"})).status_code for _ in range(3)]
            assert codes == [200, 200, 429], path
            name = (await c.get(path, headers={"x-org": "acme"})).headers["ratelimit-policy"]
            assert name.startswith('"route:') and " " not in name and "+" not in name
    # The same keys on a middleware rule: a valid default name, not an error.
    assert RateLimit("1/s", key=keys.composite("ip", "login"), paths=["/login"]).name == (
        "login-ip-login"
    )
