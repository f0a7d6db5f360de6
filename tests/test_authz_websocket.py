"""Authorization guards as dependencies of FastAPI websocket routes: an
allowed handshake reaches the endpoint, a denied or unauthenticated one is
closed with 1008 (policy violation) before it is accepted."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, WebSocket
from test_authz_support import authorizer, axess_with, client, load_doc, login, sign_in

from axess import Session, require_authn
from axess.authz import AuthzDecision, require_authz

USER_AGENT = "test-browser/1.0"


async def handshake(app: Any, path: str, cookie: str | None) -> dict[str, Any]:
    """One websocket handshake through ``app``: the first message it sends
    (from the browser that signed in: same User-Agent, same address)."""
    headers = [(b"host", b"testserver"), (b"user-agent", USER_AGENT.encode())]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    scope = {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 443),
        "scheme": "wss",
        "subprotocols": [],
    }
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    sent: list[dict[str, Any]] = []

    async def receive() -> Any:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]


def _app() -> tuple[FastAPI, Any]:
    authz = authorizer()
    auth = axess_with(authz)
    app = FastAPI(lifespan=auth.lifespan)
    app.add_route("/login", login, methods=["POST"])
    view = authz.require("view", resource=load_doc)

    @app.websocket("/ws/{doc_id}")
    async def ws(websocket: WebSocket, doc_id: str, d: AuthzDecision = Depends(view)) -> None:
        await websocket.accept()
        await websocket.send_json({"doc": doc_id, "by": list(d.policies)})
        await websocket.close()

    @app.websocket("/ws2/{doc_id}")
    async def ws2(
        websocket: WebSocket,
        doc_id: str,
        d: AuthzDecision = Depends(require_authz("view", resource=load_doc)),
    ) -> None:
        await websocket.accept()
        await websocket.close()

    @app.websocket("/ws3")
    async def ws3(websocket: WebSocket, session: Session = Depends(require_authn())) -> None:
        await websocket.accept()
        await websocket.send_json({"user": session.user_id})
        await websocket.close()

    @app.get("/docs/{doc_id}")
    async def show(doc_id: str, d: AuthzDecision = Depends(view)) -> dict[str, str]:
        return {"doc": doc_id}

    auth.install(app)
    return app, auth


async def test_websocket_routes_are_guarded() -> None:
    app, auth = _app()
    async with auth.lifespan(), client(app) as c:
        c.headers["user-agent"] = USER_AGENT
        await sign_in(c, "erin")
        cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
        for prefix in ("/ws", "/ws2"):
            first = await handshake(app, f"{prefix}/d1", cookie)
            assert first["type"] == "websocket.accept", (prefix, first)
            first = await handshake(app, f"{prefix}/g1", cookie)  # another tenant's
            assert first["type"] == "websocket.close" and first["code"] == 1008, first
            assert first.get("reason") == "forbidden"
            first = await handshake(app, f"{prefix}/d1", None)  # no session
            assert first["type"] == "websocket.close" and first["code"] == 1008, first
        # require_authn() on a websocket route: the signed-in get through,
        # a handshake without a session is closed before it is accepted.
        first = await handshake(app, "/ws3", cookie)
        assert first["type"] == "websocket.accept", first
        first = await handshake(app, "/ws3", None)
        assert first["type"] == "websocket.close" and first["code"] == 1008, first
        assert first.get("reason") == "unauthenticated"
        # The same guard on an HTTP route answers as before.
        assert (await c.get("/docs/d1")).status_code == 200
        assert (await c.get("/docs/g1")).status_code == 403
        c.cookies.clear()
        assert (await c.get("/docs/d1")).status_code == 401
