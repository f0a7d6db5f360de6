"""The Axess facade wires rate limits, login, lockout and audit together."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers import client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from axess import AuditPipeline, Axess, Keyring, MockClock, RateLimit, get_session
from axess.audit import StoreSink
from axess.authn.http import outcome_response
from axess.authn.password import PasswordHasher
from axess.stores.sql import SQLiteStore
from axess.testing import SeededRandom


def build(tmp_path: Path) -> tuple[Axess, Starlette]:
    store = SQLiteStore(str(tmp_path / "a.db"))
    clock = MockClock()
    audit = AuditPipeline(sinks=[StoreSink(store)], recovery_log=tmp_path / "recovery.jsonl")
    auth = Axess(
        store=store,
        keys=Keyring.generate(),
        clock=clock,
        random=SeededRandom(7),
        debug=True,
        csrf=False,
        cleanup_interval=None,
        audit=audit,
        rate_limits=[RateLimit("3/minute", paths=["/login"], methods=["POST"], name="login")],
        password_hasher=PasswordHasher(time_cost=1, memory_cost=1024),
    )

    async def login(request: Request) -> Response:
        form = await request.json()
        assert auth.authn is not None
        outcome = await auth.authn.login_password(request, form["user"], form["password"])
        return outcome_response(outcome)

    async def me(request: Request) -> Response:
        return JSONResponse({"user": get_session(request).user_id})

    app = Starlette(
        routes=[Route("/login", login, methods=["POST"]), Route("/me", me)],
        lifespan=auth.lifespan,
    )
    auth.install(app)
    app.add_route("/healthz", auth.healthz)
    return auth, app


async def test_login_rate_limit_audit_and_health(tmp_path: Path) -> None:
    auth, app = build(tmp_path)
    async with auth.lifespan():
        assert auth.users is not None
        await auth.users.create_user("alice@example.com", password="correct horse")
        async with client(app) as c:
            r = await c.post("/login", json={"user": "alice@example.com", "password": "wrong"})
            assert r.status_code == 401
            r = await c.post(
                "/login", json={"user": "alice@example.com", "password": "correct horse"}
            )
            assert r.status_code == 200
            assert (await c.get("/me")).json()["user"] is not None
            r = await c.post("/login", json={"user": "nobody", "password": "x"})
            assert r.status_code == 401
            r = await c.post("/login", json={"user": "nobody", "password": "x"})
            assert r.status_code == 429 and r.headers["retry-after"]
            health = (await c.get("/healthz")).json()
            assert "audit.store" in health["components"]
        await auth.audit.flush()  # type: ignore[union-attr]
        events = await auth.audit.query_events("default")  # type: ignore[union-attr]
        types = {e.type for e in events}
        assert {"login_attempt", "authenticated"} <= types
        limited = [e for e in await auth.audit.query_events(None) if e.type == "rate_limited"]  # type: ignore[union-attr]
        assert len(limited) == 1 and limited[0].reason == "login"
        # Session lifecycle events flow in too (sessions of the default tenant
        # carry no tenant id).
        session_types = {e.type for e in await auth.audit.query_events(None)}  # type: ignore[union-attr]
        assert "session_rotated" in session_types or "session_created" in session_types
    # shutdown drained: nothing left for the recovery log
    assert (
        not (tmp_path / "recovery.jsonl").exists()
        or (tmp_path / "recovery.jsonl").read_text() == ""
    )


async def test_logins_get_503_while_the_audit_trail_is_full(tmp_path: Path) -> None:
    from test_audit_support import GateSink

    from axess.audit import ShutdownAuthn
    from axess.stores import MemoryStore

    sink = GateSink("sql", regulatory=True)
    audit = AuditPipeline(
        sinks=[sink], max_buffer=4, batch_size=1, on_full=ShutdownAuthn(), flush_interval=0
    )
    auth = Axess(
        store=MemoryStore(),
        keys=Keyring.generate(),
        debug=True,
        csrf=False,
        cleanup_interval=None,
        audit=audit,
        password_hasher=PasswordHasher(time_cost=1, memory_cost=1024),
    )

    async def login(request: Request) -> Response:
        assert auth.authn is not None
        return outcome_response(await auth.authn.login_password(request, "bob", "pw"))

    app = Starlette(routes=[Route("/login", login, methods=["POST"])])
    auth.install(app)
    await audit.start()
    try:
        async with client(app) as c:
            statuses = [(await c.post("/login")).status_code for _ in range(6)]
            assert statuses[0] == 401  # audited: login_attempt + failure events queue up
            assert statuses[-1] == 503  # the buffer is full: no login without an audit trail
            assert not audit.accepting_authn
            sink.gate.set()  # the sink recovers; the buffer drains
            await audit.flush()
            assert audit.accepting_authn
            assert (await c.post("/login")).status_code == 401
    finally:
        await audit.stop()


async def test_an_app_that_never_opened_its_sql_store_says_how_to(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``lifespan=auth.lifespan`` forgotten: the SQLite file has no tables,
    every session write fails; the log names the fix, not only the missing
    table, and the client gets a 503, never a 500."""
    store = SQLiteStore(str(tmp_path / "never.db"))
    auth = Axess(store=store, keys=Keyring.generate(), debug=True, cleanup_interval=None)

    async def write(request: Request) -> JSONResponse:
        get_session(request)["n"] = 1
        return JSONResponse({})

    app = Starlette(routes=[Route("/write", write)])  # no lifespan
    auth.install(app)
    with caplog.at_level(logging.ERROR, logger="axess.stores"):
        async with client(app) as c:
            assert (await c.get("/write")).status_code == 503
            assert (await c.get("/write")).status_code == 503
    hints = [r for r in caplog.records if "lifespan=auth.lifespan" in r.getMessage()]
    assert len(hints) == 1  # once, not per request
    await store.close()
