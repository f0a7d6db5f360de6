"""The stage runner: hook order, sync/async twins, queued response headers, Vary."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from axess.stack import Stack, Stage, queue_response_headers, send_json, vary_cookie


class Recording(Stage):
    """Adds ``x-<name>`` at response start; says which hook ran."""

    has_response_hook = True

    def __init__(self, name: str, *, sync: bool | None, log: list[str]) -> None:
        super().__init__()
        self.name, self.sync, self.log = name, sync, log

    def _add(self, message: Message, how: str) -> None:
        self.log.append(f"{self.name}:{how}")
        message.setdefault("headers", []).append((f"x-{self.name}".encode(), how.encode()))

    def on_response_start_now(self, scope: Scope, message: Message) -> bool:
        if not self.sync:  # None or False: leave it to the async hook
            return False
        self._add(message, "sync")
        return True

    async def on_response_start(self, scope: Scope, message: Message, send: Send) -> bool:
        self._add(message, "async")
        return True


class AsyncOnly(Stage):
    """A stage written before the sync twins existed: only the async hook."""

    has_response_hook = True

    async def on_response_start(self, scope: Scope, message: Message, send: Send) -> bool:
        message.setdefault("headers", []).append((b"x-async-only", b"1"))
        return True


class Refusing(Stage):
    """Replaces the app's response with its own at response start."""

    has_response_hook = True

    async def on_response_start(self, scope: Scope, message: Message, send: Send) -> bool:
        await send_json(send, 409, {"error": "replaced"})
        return False


async def hello(request: Request) -> Response:
    queued = queue_response_headers(request.scope, [(b"x-queued", b"1")])
    return PlainTextResponse(f"queued={queued}")


def app_with(*stages: Stage) -> Any:
    return Stack(Starlette(routes=[Route("/", hello)]), stages)


async def get(app: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://t") as c:
        return await c.get("/")


async def test_hooks_run_outermost_first_sync_or_async() -> None:
    log: list[str] = []
    stages = [
        Recording("a", sync=True, log=log),
        Recording("b", sync=False, log=log),  # has a twin that declines
        Recording("c", sync=True, log=log),
        AsyncOnly(),
    ]
    r = await get(app_with(*stages))
    assert r.status_code == 200
    assert log == ["a:sync", "b:async", "c:sync"]
    assert (r.headers["x-a"], r.headers["x-b"], r.headers["x-c"]) == ("sync", "async", "sync")
    assert r.headers["x-async-only"] == "1"


async def test_a_refusing_hook_replaces_the_response_and_later_hooks_do_not_run() -> None:
    log: list[str] = []
    r = await get(app_with(Refusing(), Recording("late", sync=True, log=log)))
    assert r.status_code == 409 and r.json() == {"error": "replaced"}
    # Its own answer carries the queued headers, once, like any other answer.
    assert log == [] and r.headers.get_list("x-queued") == ["1"]


async def test_queued_headers_are_added_once_even_with_nested_stacks() -> None:
    inner = app_with(Recording("in", sync=True, log=[]))
    outer = Stack(inner, [Recording("out", sync=True, log=[])])
    for app in (inner, outer):
        r = await get(app)
        assert r.text == "queued=True"
        assert r.headers.get_list("x-queued") == ["1"]


async def test_queueing_outside_a_stack_is_refused() -> None:
    r = await get(Starlette(routes=[Route("/", hello)]))
    assert r.text == "queued=False" and "x-queued" not in r.headers


async def test_a_stage_used_alone_is_a_middleware() -> None:
    log: list[str] = []
    stage = Recording("solo", sync=None, log=log)
    stage.app = Starlette(routes=[Route("/", hello)])
    r = await get(stage)
    assert r.headers["x-solo"] == "async" and r.text == "queued=True"


async def test_other_scope_types_pass_through() -> None:
    seen: list[str] = []

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        return None

    await Stack(lifespan_app, [Recording("x", sync=True, log=[])])(
        {"type": "lifespan"}, receive, send
    )
    assert seen == ["lifespan"]


def test_vary_cookie_merges_into_an_existing_vary_once() -> None:
    cases = [
        ([], [(b"vary", b"Cookie")]),
        ([(b"vary", b"Accept-Encoding")], [(b"vary", b"Accept-Encoding, Cookie")]),
        ([(b"vary", b"accept-encoding, cookie")], [(b"vary", b"accept-encoding, cookie")]),
        ([(b"vary", b"*")], [(b"vary", b"*")]),
        # Not ASGI (names must be lowercase) but still right: a second line.
        ([(b"Vary", b"Accept")], [(b"Vary", b"Accept"), (b"vary", b"Cookie")]),
    ]
    for given_headers, expected in cases:
        message: Message = {"type": "http.response.start", "headers": list(given_headers)}
        vary_cookie(message)
        vary_cookie(message)  # idempotent
        assert message["headers"] == expected
    frozen: Message = {"type": "http.response.start", "headers": ((b"x", b"1"),)}
    vary_cookie(frozen)
    assert frozen["headers"] == [(b"x", b"1"), (b"vary", b"Cookie")]


def test_repeated_request_headers_join_in_order() -> None:
    from axess.stack import join_headers

    lines = [(b"x-a", b"1"), (b"cookie", b"a=1"), (b"x-b", b"z"), (b"x-a", b"2")]
    lines += [(b"cookie", b"b=2"), (b"x-a", b"3"), (b"cookie", b"c=3")]
    assert join_headers(lines) == {b"x-a": b"1,2,3", b"cookie": b"a=1; b=2; c=3", b"x-b": b"z"}
    # A flood of one repeated line (joined once, not line by line).
    flood = join_headers([(b"x-a", b"a")] * 100_000)
    assert flood == {b"x-a": b",".join([b"a"] * 100_000)}
