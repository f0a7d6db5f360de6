"""Fail fast and clearly: an unmigrated schema stops the lifespan with one
message naming ``axess migrate``; a ValkeyStore without the lifespan opens on
first use (no 500 per request); Valkey sessions bring Valkey buckets."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import httpx
import pytest
from backend_policy import POSTGRES_DSN
from fixtures_valkey import ValkeyTarget
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from axess import Axess, Keyring, RateLimit, SessionConfig, get_session
from axess.errors import SchemaVersionError
from axess.ratelimit import MemoryBucketStore, ValkeyBucketStore
from axess.stores import CompositeStore, MemoryStore
from axess.stores.sql import MySQLStore, PostgresStore, SQLiteStore, SQLStore
from axess.stores.valkey import ValkeyStore


def _auth(store: object, **kwargs: object) -> Axess:
    return Axess(
        store=store,  # type: ignore[arg-type]
        keys=Keyring.generate(),
        debug=True,
        csrf=False,
        cleanup_interval=None,
        session=SessionConfig(secure=False),
        **kwargs,  # type: ignore[arg-type]
    )


async def _refuses_to_start(store: SQLStore) -> None:
    auth = _auth(store)
    with pytest.raises(SchemaVersionError) as exc:
        async with auth.lifespan():
            pytest.fail("the app started on an unmigrated schema")
    message = str(exc.value)
    assert "run `axess migrate`" in message and "version 0" in message
    await store.close()


async def test_an_unmigrated_schema_is_logged_as_well_as_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server may report a failed startup without the exception's text:
    the runbook's ERROR line is there too."""
    db = tmp_path / "old.db"
    sqlite3.connect(db).close()
    with caplog.at_level(logging.ERROR, logger="axess.stores.sql.engine"):
        await _refuses_to_start(SQLiteStore(db, auto_migrate=False))
    (record,) = [r for r in caplog.records if "run `axess migrate`" in r.getMessage()]
    assert record.levelno == logging.ERROR and "schema is at version 0" in record.getMessage()


async def test_unmigrated_sqlite_stops_startup(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    sqlite3.connect(db).close()
    await _refuses_to_start(SQLiteStore(db, auto_migrate=False))


async def test_unmigrated_postgres_stops_startup(pg_schema: str) -> None:
    pytest.importorskip("asyncpg")
    await _refuses_to_start(PostgresStore(POSTGRES_DSN, schema=pg_schema))


async def test_unmigrated_mysql_stops_startup(mysql_dsn: str) -> None:
    await _refuses_to_start(MySQLStore(mysql_dsn))


def _app(auth: Axess) -> Starlette:
    async def bump(request: Request) -> Response:
        session = get_session(request)
        session["n"] = int(session.get("n", 0)) + 1
        return JSONResponse({"n": session["n"]})

    app = Starlette(routes=[Route("/bump", bump)])  # no lifespan: auth.startup never runs
    auth.install(app)
    return app


async def test_valkey_store_without_lifespan_serves_requests(
    valkey_target: ValkeyTarget, valkey_prefix: str
) -> None:
    store = ValkeyStore(valkey_target.url, prefix=valkey_prefix, allow_insecure=True)
    auth = _auth(store, rate_limits=[RateLimit("100/minute", name="all")])
    transport = httpx.ASGITransport(app=_app(auth))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get("/bump")).json() == {"n": 1}
            assert (await c.get("/bump")).json() == {"n": 2}  # stored in Valkey
    finally:
        await store.close()


async def test_valkey_sessions_bring_shared_buckets(
    valkey_target: ValkeyTarget, valkey_prefix: str
) -> None:
    """Two Axess objects (two workers) on one Valkey count in one bucket."""
    stores = [
        ValkeyStore(valkey_target.url, prefix=valkey_prefix, allow_insecure=True) for _ in (1, 2)
    ]
    auths = [_auth(s, rate_limits=[RateLimit("3/minute", name="shared")]) for s in stores]
    for auth, store in zip(auths, stores, strict=True):
        assert isinstance(auth.rate_limiter.store, ValkeyBucketStore)
        assert auth.rate_limiter.store.store is store
        assert "ratelimit" not in auth.health.names  # the store's own check covers it
    clients = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(a)), base_url="http://t")
        for a in auths
    ]
    try:
        codes = [(await clients[i % 2].get("/bump")).status_code for i in range(6)]
        assert codes == [200, 200, 200, 429, 429, 429]
    finally:
        for c in clients:
            await c.aclose()
        for s in stores:
            await s.close()


async def test_composite_routing_sessions_to_valkey_brings_valkey_buckets(
    valkey_target: ValkeyTarget, valkey_prefix: str
) -> None:
    valkey = ValkeyStore(valkey_target.url, prefix=valkey_prefix, allow_insecure=True)
    store = CompositeStore(MemoryStore(), sessions=valkey)
    auth = _auth(store)
    assert isinstance(auth.rate_limiter.store, ValkeyBucketStore)
    assert auth.rate_limiter.store.store is valkey


def test_other_stores_keep_memory_buckets(tmp_path: Path) -> None:
    assert isinstance(_auth(MemoryStore()).rate_limiter.store, MemoryBucketStore)
    auth = _auth(SQLiteStore(tmp_path / "a.db"))
    assert isinstance(auth.rate_limiter.store, MemoryBucketStore)
