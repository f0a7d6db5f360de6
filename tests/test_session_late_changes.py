"""A change made after the session committed (in a streaming body, a
background task, or on a websocket) is not saved, and says so in the log
instead of vanishing silently."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import client, cookie_of, make_auth
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from axess import get_session

LOGGER = "axess.session.handle"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


async def login(request: Request) -> PlainTextResponse:
    s = get_session(request)
    s.authenticate("alice")
    s["theme"] = "dark"
    return PlainTextResponse("ok")


async def read(request: Request) -> JSONResponse:
    s = get_session(request)
    return JSONResponse({"theme": s.get("theme"), "user": s.user_id})


async def write_in_time(request: Request) -> PlainTextResponse:
    get_session(request)["theme"] = "light"
    return PlainTextResponse("ok")


async def stream(request: Request) -> StreamingResponse:
    session = get_session(request)

    async def body() -> AsyncIterator[bytes]:
        yield b"a"
        session["theme"] = "late"  # the response has started: not saved
        session["other"] = 1  # a second late change: no second warning
        yield b"b"

    return StreamingResponse(body())


async def background(request: Request) -> PlainTextResponse:
    session = get_session(request)

    def late() -> None:
        del session["theme"]

    return PlainTextResponse("ok", background=BackgroundTask(late))


async def late_logout(request: Request) -> PlainTextResponse:
    session = get_session(request)

    def late() -> None:
        session.set_auth_state(session.auth_state)  # any state change
        session.regenerate()

    return PlainTextResponse("ok", background=BackgroundTask(late))


async def ws(websocket: WebSocket) -> None:
    session = get_session(websocket)
    session["theme"] = "ws"
    await websocket.accept()
    await websocket.close()


def _app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/read", read),
            Route("/write", write_in_time, methods=["POST"]),
            Route("/stream", stream),
            Route("/background", background),
            Route("/late-state", late_logout),
            WebSocketRoute("/ws", ws),
        ]
    )
    make_auth().install(app)
    return app


async def _signed_in(c: Any) -> None:
    r = await c.post("/login")
    assert cookie_of(r)


async def test_change_before_the_response_starts_is_saved_without_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    async with client(_app()) as c:
        await _signed_in(c)
        await c.post("/write")
        assert (await c.get("/read")).json()["theme"] == "light"
    assert _warnings(caplog) == []


async def test_change_in_a_streaming_body_is_not_saved_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    async with client(_app()) as c:
        await _signed_in(c)
        r = await c.get("/stream")
        assert r.text == "ab"
        assert (await c.get("/read")).json()["theme"] == "dark"  # not saved
    found = _warnings(caplog)
    assert len(found) == 1
    assert "not saved" in found[0] and "response had started" in found[0]


async def test_change_in_a_background_task_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    async with client(_app()) as c:
        await _signed_in(c)
        await c.get("/background")
        assert (await c.get("/read")).json()["theme"] == "dark"
        await c.get("/late-state")
        assert (await c.get("/read")).json()["user"] == "alice"
    assert len(_warnings(caplog)) == 2  # one per request


async def test_change_on_a_websocket_session_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    app = _app()
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]

    async def receive() -> Any:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 443),
        "scheme": "wss",
        "subprotocols": [],
    }
    await app(scope, receive, send)
    assert sent[0]["type"] == "websocket.accept"
    found = _warnings(caplog)
    assert len(found) == 1 and "read-only" in found[0]
