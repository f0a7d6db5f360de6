"""RateLimitMiddleware: rules, exact headers on a MockClock, refusals, store
outages (open/closed, never 500), events, metrics, presets, warnings."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from helpers import asgi_request, client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from axess import ConfigurationError, MockClock, StoreError
from axess.net import ClientIPMiddleware, TrustedProxies
from axess.observability.metrics import NoopMetrics
from axess.ratelimit import (
    MemoryBucketStore,
    RateLimit,
    RateLimiter,
    RateLimitEvent,
    RateLimitMiddleware,
    auth_rules,
    detect_workers,
)
from axess.ratelimit import middleware as rl_middleware
from axess.ratelimit.gcra import LimitState
from axess.ratelimit.stores import Bucket
from axess.stack import Stack


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"len": len(body), "body": body.decode("latin-1")[:200]})


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.close()


ROUTES = [
    Route("/", ok),
    Route("/items/{id}", ok),
    Route("/healthz", ok),
    Route("/metrics", ok),
    Route("/login", echo, methods=["POST"]),
    Route("/signup", echo, methods=["POST"]),
    Route("/password-reset", echo, methods=["POST"]),
    Route("/echo", echo, methods=["POST", "PUT"]),
    WebSocketRoute("/ws", ws),
]


class RecordingMetrics(NoopMetrics):
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def rate_limit_allowed(self, policy: str) -> None:
        self.counts["allowed", policy] += 1

    def rate_limit_rejected(self, policy: str) -> None:
        self.counts["rejected", policy] += 1

    def store_error(self, substore: str) -> None:
        self.counts["store_error", substore] += 1


class FlakyStore(MemoryBucketStore):
    """A memory store that counts calls and can fail like an outage."""

    local = False  # behaves like a shared store (so it can be down)

    def __init__(self, clock: MockClock) -> None:
        super().__init__(clock=clock)
        self.calls = 0
        self.failure: Exception | None = None

    async def check(self, buckets: Sequence[Bucket]) -> tuple[bool, list[LimitState]]:
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        return self.check_sync(buckets)


def build(
    rules: Sequence[RateLimit],
    *,
    clock: MockClock | None = None,
    proxies: TrustedProxies | None = None,
    **options: Any,
) -> Stack:
    options.setdefault("clock", clock or MockClock())
    return Stack(
        Starlette(routes=ROUTES),
        [
            ClientIPMiddleware(None, proxies=proxies),
            RateLimitMiddleware(None, rules=rules, **options),
        ],
    )


def rl_headers(r: httpx.Response) -> tuple[int, str | None, str | None, str | None]:
    return (
        r.status_code,
        r.headers.get("ratelimit"),
        r.headers.get("retry-after"),
        r.headers.get("ratelimit-policy"),
    )


# -- exact headers ------------------------------------------------------------------------
async def test_exact_headers_single_limit() -> None:
    clock = MockClock()
    app = build([RateLimit("10/minute", name="default")], clock=clock)
    async with client(app) as c:
        seen = [rl_headers(await c.get("/")) for _ in range(11)]
        assert seen[0] == (200, '"default";r=9;t=6', None, None)
        assert seen[4] == (200, '"default";r=5;t=30', None, None)
        assert seen[9] == (200, '"default";r=0;t=60', None, None)
        assert seen[10] == (429, '"default";r=0;t=6', "6", '"default";q=10;w=60')
        clock.advance(5.999999)
        assert rl_headers(await c.get("/"))[:3] == (429, '"default";r=0;t=1', "1")
        clock.advance(0.000001)
        assert rl_headers(await c.get("/")) == (200, '"default";r=0;t=60', None, None)
        clock.advance(60)
        assert rl_headers(await c.get("/")) == (200, '"default";r=9;t=6', None, None)


async def test_exact_headers_two_limits() -> None:
    clock = MockClock()
    app = build([RateLimit("2/second", "5/minute", name="api")], clock=clock)
    policy = '"api-1s";q=2;w=1, "api-1m";q=5;w=60'
    async with client(app) as c:

        async def get() -> tuple[int, str | None, str | None, str | None]:
            return rl_headers(await c.get("/"))

        assert await get() == (200, '"api-1s";r=1;t=1, "api-1m";r=4;t=12', None, None)
        assert await get() == (200, '"api-1s";r=0;t=1, "api-1m";r=3;t=24', None, None)
        assert await get() == (429, '"api-1s";r=0;t=1', "1", policy)
        clock.advance(0.5)
        assert await get() == (200, '"api-1s";r=0;t=1, "api-1m";r=2;t=36', None, None)
        clock.advance(1.0)
        assert await get() == (200, '"api-1s";r=1;t=1, "api-1m";r=1;t=47', None, None)
        assert await get() == (200, '"api-1s";r=0;t=1, "api-1m";r=0;t=59', None, None)
        clock.advance(1.0)
        assert await get() == (429, '"api-1m";r=0;t=10', "10", policy)
        clock.advance(9.5)
        assert await get() == (200, '"api-1s";r=1;t=1, "api-1m";r=0;t=60', None, None)


async def test_refusal_body_and_policy_header_options() -> None:
    app = build(
        [RateLimit("1/hour;burst=1", "10/day", name="slow")],
        policy_header=True,
    )
    async with client(app) as c:
        first = await c.get("/")
        assert first.headers["ratelimit-policy"] == ('"slow-1h";q=1;w=3600, "slow-1d";q=10;w=86400')
        r = await c.get("/")
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    assert r.json() == {"error": "rate_limited", "detail": "too many requests", "retry_after": 3600}
    assert r.headers["retry-after"] == "3600"

    burst = build([RateLimit("10/minute;burst=3", name="b")])
    async with client(burst) as c:
        for _ in range(3):
            assert (await c.get("/")).status_code == 200
        r = await c.get("/")
    assert r.headers["ratelimit-policy"] == '"b";q=10;w=60;axess-burst=3'


async def test_headers_can_be_switched_off_on_allowed_responses() -> None:
    app = build([RateLimit("1/minute", name="x")], headers=False)
    async with client(app) as c:
        assert "ratelimit" not in (await c.get("/")).headers
        refused = await c.get("/")
    assert refused.status_code == 429 and "ratelimit" in refused.headers


# -- matching -------------------------------------------------------------------------------
async def test_paths_methods_and_exemptions() -> None:
    rules = [
        RateLimit("1/hour", name="everything"),
        RateLimit("1/hour", paths=["/echo"], methods=["PUT"], name="put-echo"),
    ]
    app = build(rules)
    async with client(app) as c:
        assert (await c.get("/")).status_code == 200
        assert (await c.get("/")).status_code == 429
        for path in ("/healthz", "/metrics", "/healthz/"):
            for _ in range(3):
                r = await c.get(path)
                assert r.status_code in (200, 307) and "ratelimit" not in r.headers
    app2 = build([RateLimit("1/hour", paths=["/echo"], methods=["PUT"], name="put-echo")])
    async with client(app2) as c:
        assert (await c.post("/echo")).status_code == 200
        assert (await c.post("/echo")).status_code == 200  # POST is not limited
        assert (await c.put("/echo")).status_code == 200
        assert (await c.put("/echo")).status_code == 429
        assert (await c.put("/echo/")).status_code == 429  # trailing slash does not evade


async def test_a_path_the_router_takes_for_a_limited_one_is_limited() -> None:
    # A route pattern's ``$`` matches before a final newline, so the
    # server-decoded ``/login%0A`` runs the /login handler; a path
    # parameter takes a newline too. The rules must see them the same way.
    rules = [
        RateLimit("2/hour", paths=["/login"], methods=["POST"], name="login"),
        RateLimit("2/hour", paths=["/items/**"], name="items"),
    ]
    app = build(rules)
    async with client(app) as c:
        codes = [(await c.post(p)).status_code for p in ("/login", "/login%0A", "/login%0A")]
        assert codes == [200, 200, 429]
        codes = [(await c.get(p)).status_code for p in ("/items/1", "/items/1%0Ax", "/items/%0A")]
        assert codes == [200, 200, 429]


async def test_rules_match_the_path_under_the_root_path() -> None:
    # Mounted (or served with uvicorn --root-path), the app's path still
    # carries the prefix; its router strips root_path, and so do the rules
    # and the exempt paths.
    from starlette.routing import Mount

    inner = build([RateLimit("2/hour", paths=["/login"], methods=["POST"], name="login")])
    outer = Starlette(routes=[Mount("/accounts", app=inner)])
    async with client(outer) as c:
        codes = [(await c.post("/accounts/login")).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
    everything = build([RateLimit("1/hour", name="all")])
    outer = Starlette(routes=[Mount("/accounts", app=everything)])
    async with client(outer) as c:
        for _ in range(3):  # /healthz stays exempt below the mount
            r = await c.get("/accounts/healthz")
            assert r.status_code == 200 and "ratelimit" not in r.headers


async def test_a_get_rule_covers_head() -> None:
    app = build([RateLimit("2/hour", paths=["/items/*"], methods=["GET"], name="items")])
    async with client(app) as c:
        codes = [(await c.head("/items/1")).status_code for _ in range(2)]
        codes.append((await c.get("/items/1")).status_code)
        assert codes == [200, 200, 429]
    assert RateLimit("1/s", methods=["get"]).methods == frozenset({"GET", "HEAD"})
    assert RateLimit("1/s", methods="POST").methods == frozenset({"POST"})
    for nothing in ([], "", [" "]):  # a rule that could never apply is a mistake
        with pytest.raises(ConfigurationError, match="methods"):
            RateLimit("1/s", methods=nothing)


def test_methods_no_rule_covers_are_not_looked_up() -> None:
    assert RateLimiter([]).methods == frozenset()
    post = RateLimiter([RateLimit("5/minute", paths=["/login"], methods=["post"], name="a")])
    assert post.methods == frozenset({"POST"})
    mixed = RateLimiter(
        [
            RateLimit("5/minute", methods=["POST"], name="a"),
            RateLimit("5/minute", paths=["/x"], name="b"),  # every method
        ]
    )
    assert mixed.methods is None


async def test_custom_exempt_paths() -> None:
    app = build([RateLimit("1/hour", name="all")], exempt_paths=["/items/"])
    async with client(app) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/healthz")).status_code == 429  # no longer exempt
        for path in ("/items", "/items/", "/items", "/items/"):  # exact, trailing slash ignored
            assert (await c.get(path)).status_code != 429
        assert (await c.get("/items/1")).status_code == 429  # not a prefix


async def test_all_matching_rules_cost_one_store_call() -> None:
    clock = MockClock()
    store = FlakyStore(clock)
    rules = [
        RateLimit("100/minute", name="global"),
        RateLimit("3/minute", paths=["/items/*"], name="items"),
        RateLimit("5/minute", "50/hour", key="header:x-api-key", paths=["/items/"], name="keys"),
    ]
    app = build(rules, clock=clock, store=store)
    async with client(app) as c:
        r = await c.get("/items/1", headers={"x-api-key": "k1"})
        assert store.calls == 1
        assert r.headers["ratelimit"] == (
            '"global";r=99;t=1, "items";r=2;t=20, "keys-1m";r=4;t=12, "keys-1h";r=49;t=72'
        )
        await c.get("/items/2", headers={"x-api-key": "k1"})
        await c.get("/items/3", headers={"x-api-key": "k1"})
        refused = await c.get("/items/4", headers={"x-api-key": "k2"})
        assert store.calls == 4
    assert refused.status_code == 429
    assert refused.headers["ratelimit"] == '"items";r=0;t=20'


async def test_duplicate_rule_names_rejected() -> None:
    with pytest.raises(ConfigurationError, match="unique"):
        RateLimitMiddleware(None, rules=[RateLimit("1/s"), RateLimit("2/s")])
    with pytest.raises(ConfigurationError, match="either limiter"):
        RateLimitMiddleware(None, rules=[RateLimit("1/s")], limiter=RateLimiter())
    with pytest.raises(ConfigurationError, match="RateLimit"):
        RateLimiter(["10/minute"])  # type: ignore[list-item]


# -- keys behind proxies; login preset -----------------------------------------------------
async def test_ip_key_uses_trusted_proxy_resolution() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    app = build([RateLimit("1/hour", name="ip")], proxies=proxies)

    async def call(xff: bytes, peer_trusted: bool = True) -> int:
        status, _, _ = await asgi_request(app, "/", [(b"x-forwarded-for", xff)])
        return status

    # asgi_request's peer is 127.0.0.1 (not trusted): the header is ignored.
    assert await call(b"198.51.100.1") == 200
    assert await call(b"198.51.100.2") == 429
    trusted = Stack(
        Starlette(routes=ROUTES),
        [
            ClientIPMiddleware(None, proxies=TrustedProxies(["127.0.0.1/32"])),
            RateLimitMiddleware(None, rules=[RateLimit("1/hour", name="ip")], clock=MockClock()),
        ],
    )
    for ip, expected in (("198.51.100.1", 200), ("198.51.100.2", 200), ("198.51.100.1", 429)):
        status, _, _ = await asgi_request(trusted, "/", [(b"x-forwarded-for", ip.encode())])
        assert status == expected


async def test_auth_preset_limits_by_identifier_across_ips_and_keeps_body() -> None:
    proxies = TrustedProxies(["127.0.0.1/32"])
    app = build(auth_rules(), proxies=proxies)
    async with client(app) as c:
        statuses = []
        for i in range(7):
            r = await c.post(
                "/login",
                json={"username": "Victim@Example.com", "password": f"guess{i}"},
                headers={"x-forwarded-for": f"198.51.100.{i}"},
            )
            statuses.append(r.status_code)
            if r.status_code == 200:
                assert json.loads(r.json()["body"])["password"] == f"guess{i}"
        assert statuses == [200] * 5 + [429] * 2
        r = await c.post(
            "/login",
            data={"username": "someone-else", "password": "x"},
            headers={"x-forwarded-for": "198.51.100.1"},
        )
        assert r.status_code == 200
        assert r.json()["body"] == "username=someone-else&password=x"
        assert (await c.get("/")).status_code == 200  # GETs are not limited by the preset
    names = [r.name for r in auth_rules()]
    assert names == ["login-ip", "login-id", "signup-ip", "reset-ip", "reset-id"]
    assert [r.name for r in auth_rules(signup_paths=())] == [
        "login-ip",
        "login-id",
        "reset-ip",
        "reset-id",
    ]
    assert all(r.on_store_error == "closed" for r in auth_rules())


async def test_reset_preset_per_address() -> None:
    app = build(auth_rules(), proxies=TrustedProxies(["127.0.0.1/32"]))
    async with client(app) as c:
        statuses = [
            (
                await c.post(
                    "/password-reset",
                    data={"email": "a@example.com"},
                    headers={"x-forwarded-for": f"203.0.113.{i}"},
                )
            ).status_code
            for i in range(4)
        ]
    assert statuses == [200, 200, 200, 429]


async def test_garbage_requests_never_500() -> None:
    app = build(
        [
            *auth_rules(),
            RateLimit("100/minute", key="header:x-api-key", name="api"),
            RateLimit("100/minute", key=lambda conn: 1 / 0, name="custom"),
        ]
    )
    huge = b"x" * 200_000
    cases: list[list[tuple[bytes, bytes]]] = [
        [(b"x-api-key", huge)],
        [(b"content-type", b"application/json"), (b"content-length", b"nope")],
        [(b"content-type", huge)],
        [(b"x-forwarded-for", huge)],
        [(b"content-type", b"multipart/form-data; boundary=" + huge[:5000])],
    ]
    for headers in cases:
        for method in ("GET", "POST"):
            status, _, _ = await asgi_request(app, "/login", headers, method=method)
            assert status in (200, 405, 429), (headers[0][0], status)


# -- store outages ---------------------------------------------------------------------------
@pytest.mark.parametrize("failure", [StoreError("down", backend="x"), RuntimeError("bug")])
async def test_fail_closed_answers_503_with_retry_after(failure: Exception) -> None:
    clock = MockClock()
    store = FlakyStore(clock)
    metrics = RecordingMetrics()
    app = build(
        [RateLimit("10/minute", name="strict")],
        clock=clock,
        store=store,
        metrics=metrics,
        store_error_retry_after=7,
    )
    async with client(app) as c:
        assert (await c.get("/")).status_code == 200
        store.failure = failure
        r = await c.get("/")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "7"
        assert r.json() == {
            "error": "service_unavailable",
            "detail": "rate limit store unavailable",
            "retry_after": 7,
        }
        assert metrics.counts["store_error", "ratelimit"] == 1
        store.failure = None
        r = await c.get("/")
        assert r.status_code == 200 and r.headers["ratelimit"] == '"strict";r=8;t=12'


async def test_fail_open_lets_requests_through_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    clock = MockClock()
    store = FlakyStore(clock)
    metrics = RecordingMetrics()
    with caplog.at_level(logging.WARNING, logger="axess.ratelimit"):
        app = build(
            [RateLimit("1/minute", name="lenient", on_store_error="open")],
            clock=clock,
            store=store,
            metrics=metrics,
        )
    assert "lets requests through while its store is down" in caplog.text
    store.failure = StoreError("down", backend="x")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="axess.ratelimit"):
        async with client(app) as c:
            for _ in range(5):
                r = await c.get("/")
                assert r.status_code == 200 and "ratelimit" not in r.headers
    assert metrics.counts["store_error", "ratelimit"] == 5
    assert caplog.text.count("rate-limit store unavailable") == 1  # rate-limited log line
    assert "failing open" in caplog.text


async def test_one_closed_rule_closes_the_request() -> None:
    clock = MockClock()
    store = FlakyStore(clock)
    store.failure = StoreError("down", backend="x")
    app = build(
        [
            RateLimit("1/minute", name="open", on_store_error="open"),
            RateLimit("1/minute", paths=["/items/"], name="closed"),
        ],
        clock=clock,
        store=store,
    )
    async with client(app) as c:
        assert (await c.get("/")).status_code == 200
        assert (await c.get("/items/1")).status_code == 503


# -- websocket ---------------------------------------------------------------------------------
async def test_websocket_handshakes_are_limited() -> None:
    app = build([RateLimit("1/hour", name="ws")])

    async def handshake() -> list[dict[str, Any]]:
        scope = {
            "type": "websocket",
            "path": "/ws",
            "raw_path": b"/ws",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"t")],
            "client": ("127.0.0.1", 1),
            "server": ("t", 80),
            "scheme": "ws",
            "subprotocols": [],
        }
        incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return incoming.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    assert (await handshake())[0]["type"] == "websocket.accept"
    assert await handshake() == [{"type": "websocket.close", "code": 1008}]


# -- events and metrics ----------------------------------------------------------------------
async def test_events_are_aggregated_per_policy_and_key() -> None:
    clock = MockClock()
    events: list[RateLimitEvent] = []
    metrics = RecordingMetrics()
    app = build(
        [RateLimit("2/minute", name="p")],
        clock=clock,
        on_event=events.append,
        metrics=metrics,
        proxies=TrustedProxies(["127.0.0.1/32"]),
    )
    async with client(app) as c:
        for _ in range(52):
            await c.get("/", headers={"x-forwarded-for": "198.51.100.1"})
        await c.get("/", headers={"x-forwarded-for": "198.51.100.2"})
        assert len(events) == 1
        event = events[0]
        assert (event.policy, event.key, event.method, event.path) == (
            "p",
            "ip:198.51.100.1",
            "GET",
            "/",
        )
        assert event.retry_after == 30 and event.suppressed == 0
        assert event.at == clock.time()
        clock.advance(60)  # a new window: the next refusal reports what was held back
        for _ in range(3):
            await c.get("/", headers={"x-forwarded-for": "198.51.100.1"})
    assert len(events) == 2 and events[1].suppressed == 49
    assert metrics.counts["allowed", "p"] == 5
    assert metrics.counts["rejected", "p"] == 51


async def test_event_flood_is_capped_globally() -> None:
    clock = MockClock()
    events: list[RateLimitEvent] = []
    app = build(
        [RateLimit("1/hour", name="p")],
        clock=clock,
        on_event=events.append,
        max_events_per_second=5,
        proxies=TrustedProxies(["127.0.0.1/32"]),
    )
    async with client(app) as c:
        for i in range(40):  # 40 clients, each refused once
            ip = f"198.51.100.{i}"
            await c.get("/", headers={"x-forwarded-for": ip})
            await c.get("/", headers={"x-forwarded-for": ip})
    assert len(events) == 5


async def test_event_hook_errors_are_contained(caplog: pytest.LogCaptureFixture) -> None:
    def hook(event: RateLimitEvent) -> None:
        raise RuntimeError("sink down")

    app = build([RateLimit("1/hour", name="p")], on_event=hook)
    async with client(app) as c:
        await c.get("/")
        assert (await c.get("/")).status_code == 429
    assert "rate-limit event hook failed" in caplog.text


# -- worker heuristic ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("environ", "argv", "count"),
    [
        ({}, ["python"], 1),
        ({"WEB_CONCURRENCY": "4"}, ["python"], 4),
        ({"WEB_CONCURRENCY": "1"}, ["python"], 1),
        ({"WEB_CONCURRENCY": "x"}, ["python"], 1),
        ({"UVICORN_WORKERS": "3"}, ["python"], 3),
        ({"GUNICORN_CMD_ARGS": "--bind :80 --workers 5"}, ["python"], 5),
        ({"GUNICORN_CMD_ARGS": "-w 2"}, ["python"], 2),
        ({"GUNICORN_CMD_ARGS": "'unbalanced"}, ["python"], 1),
        ({}, ["/usr/bin/uvicorn", "app:app", "--workers", "8"], 8),
        ({}, ["/usr/bin/gunicorn", "-w4", "app:app"], 4),
        ({}, ["python", "-m", "uvicorn", "app:app", "--workers=2"], 1),
        ({}, ["myserver", "--workers", "8"], 1),
    ],
)
def test_detect_workers(environ: dict[str, str], argv: list[str], count: int) -> None:
    assert detect_workers(environ, argv)[0] == count


def test_memory_store_warns_once_under_several_workers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rl_middleware, "_warned_workers", False)
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    with caplog.at_level(logging.WARNING, logger="axess.ratelimit"):
        RateLimiter([RateLimit("1/s")])
        RateLimiter([RateLimit("1/s")])
        RateLimiter([RateLimit("1/s")], store=FlakyStore(MockClock()))  # not local: no warning
    assert caplog.text.count("worker processes are detected (WEB_CONCURRENCY=4)") == 1


def test_no_warning_for_a_single_worker(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rl_middleware, "_warned_workers", False)
    for name in ("WEB_CONCURRENCY", "UVICORN_WORKERS", "GUNICORN_CMD_ARGS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.argv", ["pytest"])
    with caplog.at_level(logging.WARNING, logger="axess.ratelimit"):
        RateLimiter([RateLimit("1/s")])
    assert "worker processes" not in caplog.text


async def test_standalone_middleware_wraps_an_app() -> None:
    inner = Starlette(routes=ROUTES)
    app = RateLimitMiddleware(inner, rules=[RateLimit("1/hour", name="solo")], clock=MockClock())
    async with client(app) as c:
        assert (await c.get("/")).headers["ratelimit"] == '"solo";r=0;t=3600'
        assert (await c.get("/")).status_code == 429
