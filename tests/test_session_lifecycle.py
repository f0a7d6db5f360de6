"""The per-request lifecycle of the book's Sessions chapter, through the HTTP surface."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from helpers import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    CountingStore,
    client,
    cookie_of,
    make_app,
    make_auth,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from axess import MockClock, Session, StoreError, get_session
from axess.session.cookie import storage_key


async def test_guest_without_writes_is_never_persisted() -> None:
    auth = make_auth()
    store: CountingStore = auth.store  # type: ignore[assignment]
    async with client(make_app(auth)) as c:
        for _ in range(3):
            r = await c.get("/read")
            assert r.status_code == 200 and r.json()["auth"] == "guest"
            assert "set-cookie" not in r.headers
    assert store.writes == 0 and len(store) == 0
    assert store.calls["load_session"] == 0  # no cookie, no load


async def test_unchanged_request_sends_no_cookie_and_writes_nothing() -> None:
    auth = make_auth()
    store: CountingStore = auth.store  # type: ignore[assignment]
    async with client(make_app(auth)) as c:
        r = await c.post("/write?k=v")
        assert cookie_of(r)
        writes, loads = store.writes, store.calls["load_session"]
        for _ in range(5):
            r = await c.get("/read")
            assert r.json()["n"] == 1
            assert "set-cookie" not in r.headers
            assert r.headers["vary"] == "Cookie"
    assert store.writes == writes
    assert store.calls["load_session"] == loads + 5  # exactly one store call per request


async def test_write_persists_and_later_write_saves_in_place() -> None:
    auth = make_auth()
    store: CountingStore = auth.store  # type: ignore[assignment]
    async with client(make_app(auth)) as c:
        first = cookie_of(await c.post("/write"))
        r = await c.post("/write")
        assert r.json()["n"] == 2
        assert cookie_of(r) is None  # same id: nothing to tell the browser
    assert store.calls["create_session"] == 1 and store.calls["save_session"] == 1
    assert first


async def test_nested_mutation_is_detected() -> None:
    async def append(request: Request) -> PlainTextResponse:
        s = get_session(request)
        s.setdefault("items", [])
        s["items"].append(len(s["items"]))
        return PlainTextResponse(str(s["items"]))

    auth = make_auth()
    app = Starlette(routes=[Route("/append", append, methods=["POST"])])
    auth.install(app)
    async with client(app) as c:
        await c.post("/append")
        await c.post("/append")
        r = await c.post("/append")
    assert r.text == "[0, 1, 2]"


async def test_authentication_rotates_id_and_removes_old_row() -> None:
    auth = make_auth()
    store: CountingStore = auth.store  # type: ignore[assignment]
    async with client(make_app(auth)) as c:
        before = cookie_of(await c.post("/write?cart=1"))
        assert before
        r = await c.post("/login?user=alice")
        after = cookie_of(r)
        assert after and after.split(".")[0] != before.split(".")[0]
        assert (
            await store.load_session(storage_key(before.split(".")[0]), auth.clock.time()) is None
        )
        r = await c.get("/read")
        assert r.json() == {"user": "alice", "n": 1, "auth": "authenticated"}
        # The pre-login cookie no longer works (fixation).
        c.cookies.clear()
        c.cookies.set(SESSION_COOKIE, before)
        assert (await c.get("/read")).json()["user"] is None


async def test_logout_deletes_row_and_clears_cookie() -> None:
    auth = make_auth()
    store: CountingStore = auth.store  # type: ignore[assignment]
    async with client(make_app(auth)) as c:
        cookie = cookie_of(await c.post("/login?user=alice"))
        assert cookie
        r = await c.post("/logout")
        assert cookie_of(r) == ""
        assert "Max-Age=0" in r.headers["set-cookie"]
    assert len(store) == 0
    async with client(make_app(auth)) as c:  # replaying the old cookie
        c.cookies.set(SESSION_COOKIE, cookie)
        assert (await c.get("/read")).json()["user"] is None


async def test_after_logout_the_handle_is_an_empty_guest() -> None:
    async def logout_and_read(request: Request) -> JSONResponse:
        session = get_session(request)
        await session.invalidate()
        return JSONResponse(
            {"len": len(session), "keys": list(session), "n": session.get("n"), **dict(session)}
        )

    auth = make_auth()
    app = make_app(auth)
    app.add_route("/logout-and-read", logout_and_read, methods=["POST"])
    async with client(app) as c:
        await c.post("/login?user=alice")
        await c.post("/write?email=a@example.com")
        assert (await c.get("/read")).json()["n"] == 1
        r = await c.post("/logout-and-read")
        assert r.status_code == 200
        assert r.json() == {"len": 0, "keys": [], "n": None}


async def test_regenerate_rotates_and_keeps_data() -> None:
    auth = make_auth()
    async with client(make_app(auth)) as c:
        a = cookie_of(await c.post("/write?x=1"))
        b = cookie_of(await c.post("/regenerate"))
        assert a and b and a != b
        assert (await c.get("/read")).json()["n"] == 1


async def test_save_racing_invalidate_user_does_not_resurrect() -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def slow_write(request: Request) -> PlainTextResponse:
        s = get_session(request)
        entered.set()
        await gate.wait()
        s["late"] = True
        return PlainTextResponse("written")

    auth = make_auth()
    app = Starlette(routes=[Route("/slow", slow_write, methods=["POST"])])
    auth.install(app)
    login_app = make_app(auth)
    async with client(login_app) as c:
        cookie = cookie_of(await c.post("/login?user=alice"))
    async with client(app) as c:
        c.cookies.set(SESSION_COOKIE, cookie or "")
        task = asyncio.create_task(c.post("/slow"))
        await entered.wait()
        assert await auth.invalidate_user("alice") == 1
        gate.set()
        r = await task
    assert r.status_code == 200
    assert cookie_of(r) == ""  # the revoked session is cleared, not re-created
    assert await auth.list_sessions("alice") == []
    assert len(auth.store) == 0  # type: ignore[arg-type]


async def test_logout_racing_a_rotation_of_its_session_still_logs_out(login_store: Any) -> None:
    # The logout request loaded the row; another request of the same session
    # regenerate()s it (its new cookie goes out) before the logout deletes:
    # the old key is gone, and the row it became must go too.
    loaded, rotated = asyncio.Event(), asyncio.Event()

    async def slow_logout(request: Request) -> PlainTextResponse:
        session = get_session(request)
        loaded.set()
        await rotated.wait()
        await session.invalidate()
        return PlainTextResponse("bye")

    auth = make_auth(login_store)
    app = make_app(auth)
    app.add_route("/slow-logout", slow_logout, methods=["POST"])
    async with client(app) as c:
        cookie = cookie_of(await c.post("/login?user=alice"))
    async with client(app) as a, client(app) as b:
        a.cookies.set(SESSION_COOKIE, cookie or "")
        b.cookies.set(SESSION_COOKIE, cookie or "")
        logout = asyncio.create_task(a.post("/slow-logout"))
        await loaded.wait()
        successor = cookie_of(await b.post("/regenerate"))
        assert successor and successor != cookie
        rotated.set()
        assert (await logout).status_code == 200
    assert await auth.list_sessions("alice") == []
    async with client(app) as c:
        c.cookies.set(SESSION_COOKIE, successor)
        assert (await c.get("/read")).json()["user"] is None


async def test_absolute_lifetime() -> None:
    clock = MockClock()
    auth = make_auth(clock=clock, max_age=3600)
    async with client(make_app(auth)) as c:
        r = await c.post("/login?user=alice")
        assert "Max-Age=3600" in r.headers["set-cookie"]
        clock.advance(3599)
        assert (await c.get("/read")).json()["user"] == "alice"
        clock.advance(1)
        r = await c.get("/read")
        assert r.json()["user"] is None
        assert cookie_of(r) == ""
    assert await auth.list_sessions("alice") == []
    assert (await auth.purge_expired())["sessions"] == 1  # the dead row is purged


async def test_idle_timeout_with_touch_interval() -> None:
    clock = MockClock()
    auth = make_auth(clock=clock, idle_timeout=600, touch_interval=60)
    store: CountingStore = auth.store  # type: ignore[assignment]
    async with client(make_app(auth)) as c:
        await c.post("/login?user=alice")
        writes = store.writes
        clock.advance(30)
        assert (await c.get("/read")).json()["user"] == "alice"
        assert store.writes == writes  # within touch_interval: no write
        clock.advance(40)  # 70 s since last touch
        assert (await c.get("/read")).json()["user"] == "alice"
        assert store.writes == writes + 1  # touched
        for _ in range(5):  # keep it alive past the original idle deadline
            clock.advance(300)
            assert (await c.get("/read")).json()["user"] == "alice"
        clock.advance(600)
        assert (await c.get("/read")).json()["user"] is None


async def test_custom_cap_refuses_and_keeps_stored_version(
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = make_auth(max_custom_bytes=1000)
    async with client(make_app(auth)) as c:
        await c.post("/write?k=small")
        with caplog.at_level(logging.WARNING, logger="axess.session"):
            r = await c.post("/big?size=5000")
        assert r.status_code == 200 and r.json()["size"] > 1000
        assert "exceeds size limit" in caplog.text
        r = await c.get("/read")
        assert r.json()["n"] == 1  # stored version kept


async def test_store_outage_is_503_not_500() -> None:
    auth = make_auth()
    store: CountingStore = auth.store  # type: ignore[assignment]
    async with client(make_app(auth)) as c:
        await c.post("/login?user=alice")
        store.down = True
        r = await c.get("/read")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "5"
        assert r.json()["error"] == "service_unavailable"
        # Without a cookie there is nothing to load: public pages still work.
        c.cookies.clear()
        assert (await c.get("/read")).status_code == 200
        store.down = False
        c.cookies.clear()


async def test_store_outage_on_commit_is_503() -> None:
    auth = make_auth()
    store: CountingStore = auth.store  # type: ignore[assignment]
    async with client(make_app(auth)) as c:
        store.down = True
        r = await c.post("/write")
        assert r.status_code == 503


async def test_store_outage_guest_mode() -> None:
    auth = make_auth(on_store_error="guest")
    store: CountingStore = auth.store  # type: ignore[assignment]
    async with client(make_app(auth)) as c:
        await c.post("/login?user=alice")
        store.down = True
        r = await c.get("/read")
        assert r.status_code == 200 and r.json()["user"] is None
        # The cookie is left alone: once the store is back, so is the user.
        assert "set-cookie" not in r.headers and "Cookie" in r.headers["vary"]
        assert (await c.get("/noop")).headers.get("set-cookie") is None
        # A write would replace the cookie of the session nobody could read.
        assert (await c.post("/write")).status_code == 503
        store.down = False
        assert (await c.get("/read")).json()["user"] == "alice"


async def test_store_outage_guest_mode_leaves_the_csrf_cookie_alone() -> None:
    from axess import CSRFConfig

    auth = make_auth(on_store_error="guest", csrf=CSRFConfig())
    store: CountingStore = auth.store  # type: ignore[assignment]
    async with client(make_app(auth)) as c:
        r = await c.post("/login?user=alice")
        token = c.cookies[CSRF_COOKIE]
        store.down = True
        r = await c.get("/read")
        assert r.status_code == 200 and "set-cookie" not in r.headers
        store.down = False
        r = await c.post("/write", headers={"x-csrf-token": token})
        assert r.status_code == 200


async def test_max_sessions_per_user_evicts_oldest() -> None:
    clock = MockClock()
    auth = make_auth(clock=clock, max_sessions_per_user=2)
    cookies = []
    for _ in range(3):
        async with client(make_app(auth)) as c:
            cookies.append(cookie_of(await c.post("/login?user=alice")))
        clock.advance(1)
    listed = await auth.list_sessions("alice")
    assert len(listed) == 2
    async with client(make_app(auth)) as c:
        c.cookies.set(SESSION_COOKIE, cookies[0] or "")
        assert (await c.get("/read")).json()["user"] is None
        c.cookies.set(SESSION_COOKIE, cookies[2] or "")
        assert (await c.get("/read")).json()["user"] == "alice"


async def test_list_and_invalidate_session() -> None:
    auth = make_auth()
    async with client(make_app(auth)) as c:
        await c.post("/login?user=alice", headers={"user-agent": "Firefox/999"})
    (info,) = await auth.list_sessions("alice")
    assert info.user_agent == "Firefox/999"
    assert info.ip_prefix == "127.0.0.0/24"
    assert info.last_seen_at == auth.clock.time()
    assert await auth.invalidate_session(info.storage_key) is True
    assert await auth.invalidate_session(info.storage_key) is False
    assert await auth.list_sessions("alice") == []


async def test_get_session_without_middleware_is_clear_error() -> None:
    async def view(request: Request) -> PlainTextResponse:
        get_session(request)
        return PlainTextResponse("unreachable")

    app = Starlette(routes=[Route("/", view)])
    with pytest.raises(RuntimeError, match="install axess"):
        async with client(app) as c:
            await c.get("/")


async def test_fastapi_dependency() -> None:
    from fastapi import Depends, FastAPI

    auth = make_auth()
    app = FastAPI()
    auth.install(app)

    @app.post("/count")
    async def count(session: Session = Depends(get_session)) -> dict[str, int]:
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"]}

    async with client(app) as c:
        assert (await c.post("/count")).json() == {"n": 1}
        assert (await c.post("/count")).json() == {"n": 2}


async def test_events_and_metrics_hooks() -> None:
    from axess import Axess, Keyring, SessionConfig
    from axess.stores import MemoryStore

    events: list[str] = []
    auth = Axess(
        store=MemoryStore(),
        keys=Keyring.generate(),
        debug=True,
        session=SessionConfig(),
        on_session_event=lambda e: events.append(e.type),
        cleanup_interval=None,
        csrf=False,
    )
    async with client(make_app(auth)) as c:
        await c.post("/write")
        await c.post("/login?user=alice")
        await c.post("/logout")
    assert events == ["session_created", "session_rotated", "session_invalidated"]


async def test_lifespan_opens_and_purges() -> None:
    clock = MockClock()
    auth = make_auth(clock=clock, max_age=10)
    async with auth.lifespan():
        async with client(make_app(auth)) as c:
            await c.post("/write")
        clock.advance(11)
        assert (await auth.purge_expired())["sessions"] == 1


async def test_cookie_max_age_is_the_absolute_lifetime_even_with_idle_timeout() -> None:
    clock = MockClock()
    auth = make_auth(clock=clock, max_age=7200, idle_timeout=600, touch_interval=60)
    async with client(make_app(auth)) as c:
        r = await c.post("/login?user=alice")
        assert "Max-Age=7200" in r.headers["set-cookie"]
        clock.advance(100)
        r = await c.post("/regenerate")
        assert "Max-Age=7100" in r.headers["set-cookie"]


async def test_cleanup_task_retries_after_failures_and_stops_on_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from axess import Axess, Keyring

    calls: list[float] = []
    done = asyncio.Event()

    class FlakyPurge(CountingStore):
        async def purge_expired(self, now: float, *, only: object = None) -> dict[str, int]:
            calls.append(now)
            if len(calls) == 1:
                raise StoreError("down", backend="memory")
            if len(calls) >= 3:
                done.set()
            return {"sessions": 0}

    auth = Axess(store=FlakyPurge(), keys=Keyring.generate(), debug=True, cleanup_interval=0.001)
    with caplog.at_level(logging.WARNING, logger="axess"):
        async with auth.lifespan():
            await asyncio.wait_for(done.wait(), timeout=10)
    assert len(calls) >= 3
    assert "cleanup failed" in caplog.text
    assert auth._cleanup_task is None


async def test_request_session_is_the_axess_session() -> None:
    """Starlette's ``request.session`` (and ``scope["session"]``) is the same
    object as ``get_session(request)``, with the Mapping behaviour Starlette
    users expect."""

    async def starlette_style(request: Request) -> JSONResponse:
        assert request.session is get_session(request)
        if request.method == "POST":
            request.session["cart"] = ["book"]
            request.session.update({"theme": "dark"})
        return JSONResponse(
            {
                "cart": request.session.get("cart"),
                "keys": sorted(request.session),
                "has_theme": "theme" in request.session,
            }
        )

    app = Starlette(routes=[Route("/", starlette_style, methods=["GET", "POST"])])
    make_auth().install(app)
    async with client(app) as c:
        r = await c.post("/")
        assert r.json() == {"cart": ["book"], "keys": ["cart", "theme"], "has_theme": True}
        c.cookies.set(SESSION_COOKIE, cookie_of(r) or "")
        r = await c.get("/")
        assert r.json() == {"cart": ["book"], "keys": ["cart", "theme"], "has_theme": True}


async def test_a_store_error_app_code_lets_through_is_a_503() -> None:
    """``session.invalidate()`` in a logout route, or any store call in a
    route, during an outage: the StoreError reaches Starlette, and the
    handler ``install()`` registers answers it like axess's own outages."""
    from axess.stores import MemoryStore

    class DeletesFail(MemoryStore):
        down = False

        async def delete_session(self, key: str) -> bool:
            if self.down:
                raise StoreError("down", substore="sessions")
            return await super().delete_session(key)

    store = DeletesFail()
    auth = make_auth(store=store)

    async def admin(request: Request) -> JSONResponse:
        raise StoreError("identity store down", substore="identity")

    app = make_app(auth)
    app.add_route("/admin", admin)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
        await c.post("/login?user=alice")
        store.down = True
        r = await c.post("/logout")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["error"] == "service_unavailable"
        r = await c.get("/admin", headers={"accept": "text/html"})
        assert r.status_code == 503 and r.headers["content-type"].startswith("text/html")
        store.down = False
        assert (await c.post("/logout")).status_code == 200
