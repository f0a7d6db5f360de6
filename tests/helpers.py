"""Shared test helpers: a counting/failing store and a small app."""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from axess import Axess, CSRFConfig, Keyring, MockClock, SessionConfig, StoreError, get_session
from axess.authn.device import DeviceCookieConfig
from axess.net import TrustedProxies
from axess.stores import MemoryStore
from axess.stores.base import NOT_NOW, NotNow, SessionRecord
from axess.testing import SeededRandom

#: The cookie names of the tests' apps: axess's defaults for a Secure cookie on
#: Path=/ (the tests talk to https://testserver), i.e. the ``__Host-`` names,
#: taken from the configs instead of spelled out (book: Sessions, "Cookie tossing").
SESSION_COOKIE: Final = SessionConfig().resolved_cookie_name
CSRF_COOKIE: Final = CSRFConfig().resolved_cookie_name
DEVICE_COOKIE_NAME: Final = DeviceCookieConfig().resolved_name


class CountingStore(MemoryStore):
    """MemoryStore that counts calls and can be switched to fail like an outage."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.down = False

    def _enter(self, name: str) -> None:
        self.calls[name] += 1
        if self.down:
            raise StoreError("store down (test)", backend="memory", substore="sessions")

    @property
    def writes(self) -> int:
        return sum(
            self.calls[n]
            for n in ("create_session", "save_session", "cycle_session", "delete_session")
        )

    # Both reads count as one "load_session" (the session stage reads with
    # load_session_now when the store can answer at once, as this one can).
    def load_session_now(self, key: str, now: float) -> SessionRecord | NotNow | None:
        if self.down:
            return NOT_NOW  # the awaited load_session then raises the outage
        self.calls["load_session"] += 1
        return self._load(key, now)

    async def load_session(self, key: str, now: float) -> SessionRecord | None:
        self._enter("load_session")
        return self._load(key, now)

    def _load(self, key: str, now: float) -> SessionRecord | None:
        return MemoryStore.load_session_now(self, key, now)

    async def create_session(self, record: SessionRecord) -> bool:
        self._enter("create_session")
        return await super().create_session(record)

    async def save_session(self, record: SessionRecord, now: float) -> bool:
        self._enter("save_session")
        return await super().save_session(record, now)

    async def cycle_session(self, old_key: str, record: SessionRecord, now: float) -> bool:
        self._enter("cycle_session")
        return await super().cycle_session(old_key, record, now)

    async def delete_session(self, key: str) -> bool:
        self._enter("delete_session")
        return await super().delete_session(key)


async def read(request: Request) -> JSONResponse:
    s = get_session(request)
    return JSONResponse({"user": s.user_id, "n": s.get("n"), "auth": s.auth_state.kind})


async def noop(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def write(request: Request) -> JSONResponse:
    s = get_session(request)
    for k, v in request.query_params.items():
        s[k] = v
    s["n"] = int(s.get("n") or 0) + 1
    return JSONResponse({"n": s["n"]})


async def big(request: Request) -> JSONResponse:
    s = get_session(request)
    s["blob"] = "x" * int(request.query_params["size"])
    return JSONResponse({"size": s.size()})


async def login(request: Request) -> JSONResponse:
    s = get_session(request)
    s.authenticate(request.query_params["user"], request.query_params.get("tenant"))
    return JSONResponse({"ok": True})


async def logout(request: Request) -> JSONResponse:
    await get_session(request).invalidate()
    return JSONResponse({"ok": True})


async def regenerate(request: Request) -> JSONResponse:
    get_session(request).regenerate()
    return JSONResponse({"ok": True})


ROUTES = [
    Route("/read", read),
    Route("/noop", noop),
    Route("/write", write, methods=["POST"]),
    Route("/big", big, methods=["POST"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/regenerate", regenerate, methods=["POST"]),
]


def make_auth(
    store: Any | None = None,
    *,
    keys: Keyring | None = None,
    clock: MockClock | None = None,
    csrf: Any = False,
    **session: Any,
) -> Axess:
    """An Axess for tests. CSRF is off unless asked for (its own tests enable it)."""
    return Axess(
        store=store if store is not None else CountingStore(),
        keys=keys or Keyring.generate(),
        session=SessionConfig(**session),
        clock=clock or MockClock(),
        random=SeededRandom(1),
        debug=True,
        cleanup_interval=None,
        csrf=csrf,
    )


def make_bound_auth(store: Any | None = None, *, seed: int = 3, **options: Any) -> Axess:
    """An Axess behind a trusted proxy on 127.0.0.0/8 (tests send
    X-Forwarded-For), CSRF off, on a CountingStore unless given one."""
    return Axess(
        store=store if store is not None else CountingStore(),
        keys=Keyring.generate(),
        session=options.pop("session", SessionConfig()),
        clock=MockClock(),
        random=SeededRandom(seed),
        trusted_proxies=TrustedProxies(["127.0.0.0/8"]),
        csrf=False,
        debug=True,
        cleanup_interval=None,
        **options,
    )


def make_app(auth: Axess) -> Starlette:
    app = Starlette(routes=ROUTES)
    auth.install(app)
    app.add_route("/healthz", auth.healthz)
    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://testserver")


def cookie_of(response: httpx.Response, name: str = SESSION_COOKIE) -> str | None:
    """The value a Set-Cookie for ``name`` sets ('' when it deletes), else None."""
    for header in response.headers.get_list("set-cookie"):
        k, _, rest = header.partition("=")
        if k == name:
            return rest.split(";", 1)[0]
    return None


async def asgi_request(
    app: Any,
    path: str = "/read",
    headers: list[tuple[bytes, bytes]] | None = None,
    method: str = "GET",
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Call an ASGI app directly with raw header bytes (httpx insists on ASCII)."""
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
        "headers": [(b"host", b"testserver"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 443),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], list(start.get("headers", [])), body
