"""Connecting to a server that never answers is bounded: open() and every
wait for a pooled connection end with a StoreError, never a hang."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from axess.errors import StoreError
from axess.stores.sql import MySQLStore, SQLiteStore


@pytest.fixture
async def blackhole() -> AsyncIterator[int]:
    """A port that accepts TCP connections and never sends a byte."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # keep the connection open, silent

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    for writer in held:
        writer.close()
    await server.wait_closed()


@pytest.mark.parametrize("min_size", [1, 2])
async def test_mysql_open_against_a_silent_server_fails_within_connect_timeout(
    blackhole: int, min_size: int
) -> None:
    pytest.importorskip("aiomysql")
    store = MySQLStore(
        f"mysql://u:pw@127.0.0.1:{blackhole}/db", connect_timeout=0.3, min_size=min_size
    )
    started = time.monotonic()
    try:
        with pytest.raises(StoreError, match="no connection to the server within"):
            async with asyncio.timeout(10):  # the bug: hangs forever
                await store.open()
    finally:
        await store.close()
    assert time.monotonic() - started < 0.3 * min_size + 2


@pytest.mark.backend("mysql")
async def test_mysql_waiting_for_a_pooled_connection_is_bounded(mysql_dsn: str) -> None:
    store = MySQLStore(mysql_dsn, max_size=1, connect_timeout=0.3, auto_migrate=True)
    try:
        await store.open()
        async with store._driver.acquire():  # the only connection, held
            started = time.monotonic()
            with pytest.raises(StoreError, match="no pooled connection within"):
                async with asyncio.timeout(10):  # the bug: waits forever
                    await store.schema_version()
            assert time.monotonic() - started < 2
        assert await store.schema_version() == store.known_schema_version
    finally:
        await store.close()


def _aiosqlite_workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]


@pytest.mark.parametrize("attempt", range(5))
async def test_sqlite_failed_connect_ends_its_worker_thread_first(
    tmp_path: Path, attempt: int
) -> None:
    """A command exits on the error, closing its loop: aiosqlite's thread
    must be gone by then, or it dies printing a traceback about the loop."""
    before = set(_aiosqlite_workers())
    store = SQLiteStore(tmp_path / "missing" / "dir" / "x.db", auto_migrate=False)
    with pytest.raises(StoreError, match="unable to open database file"):
        await store.open()
    assert [t for t in _aiosqlite_workers() if t not in before] == []
    await store.close()
