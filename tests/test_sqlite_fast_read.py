"""SQLite session loads on the event loop (book: Internals, "SQLite reads on
the loop"): a read-only connection answers ``load_session`` without a thread
hop, sees every committed write at once, and hands the read to aiosqlite's
thread whenever it cannot answer."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from axess.errors import StoreError
from axess.observability.metrics import NoopMetrics
from axess.stores.base import NOT_NOW
from axess.stores.sql import SQLiteStore
from axess.stores.sql import sqlite as sqlite_module
from axess.stores.sql.engine import Result
from axess.stores.sql.sqlite import _SQLiteDriver
from axess.testing.contract import NOW, make_key, make_record


def driver(store: SQLiteStore) -> _SQLiteDriver:
    d = store._driver
    assert isinstance(d, _SQLiteDriver)
    return d


def reader(store: SQLiteStore) -> sqlite3.Connection:
    con = driver(store)._reader
    assert con is not None, "a file database gets a loop reader"
    return con


class Latencies(NoopMetrics):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def store_latency(self, substore: str, operation: str, seconds: float) -> None:
        assert seconds >= 0
        self.seen.append((substore, operation))


class FailingReader:
    """Stands in for the loop reader: every statement fails with ``exc``."""

    def __init__(self, exc: sqlite3.Error) -> None:
        self.exc = exc
        self.calls = 0

    def execute(self, sql: str, args: Sequence[object] = ()) -> Any:
        self.calls += 1
        raise self.exc


def break_reader(store: SQLiteStore, exc: sqlite3.Error) -> FailingReader:
    fake = FailingReader(exc)
    read_conn = driver(store)._read_conn
    assert read_conn is not None
    read_conn._reader = fake  # type: ignore[assignment]
    return fake


async def test_the_loop_read_sees_threaded_writes_at_once(sqlite_store: SQLiteStore) -> None:
    rec = make_record("seen", user="u")
    assert await sqlite_store.load_session(rec.key, NOW) is None
    assert await sqlite_store.create_session(rec)
    assert await sqlite_store.load_session(rec.key, NOW) == rec
    newer = dataclasses.replace(rec, payload=b"second")
    assert await sqlite_store.save_session(newer, NOW)
    assert await sqlite_store.load_session(rec.key, NOW) == newer
    moved = make_record("moved", user="u")
    assert await sqlite_store.cycle_session(rec.key, moved, NOW)
    assert await sqlite_store.load_session(rec.key, NOW) is None
    assert await sqlite_store.load_session(moved.key, NOW) == moved
    assert await sqlite_store.delete_user_sessions("u") == 1
    assert await sqlite_store.load_session(moved.key, NOW) is None
    assert driver(sqlite_store).thread_reads == 0  # every load was answered on the loop


async def test_the_loop_read_sees_another_process_writes(
    sqlite_store: SQLiteStore, sqlite_path: Path
) -> None:
    rec = make_record("other", user="u")
    await sqlite_store.load_session(rec.key, NOW)  # the reader has a cache now
    other = sqlite3.connect(sqlite_path, isolation_level=None)
    try:
        other.execute(
            "INSERT INTO axess_sessions (skey, payload, user_id, tenant_id, created_at, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
            (rec.key, rec.payload, "u", None, round(rec.created_at * 1000), 10**15),
        )
    finally:
        other.close()
    loaded = await sqlite_store.load_session(rec.key, NOW)
    assert loaded is not None and loaded.payload == rec.payload
    assert driver(sqlite_store).thread_reads == 0


async def test_no_read_transaction_stays_open_between_loads(
    sqlite_store: SQLiteStore, sqlite_path: Path
) -> None:
    rec = make_record("open", user="u")
    await sqlite_store.create_session(rec)
    for key in (rec.key, make_key("missing")):
        await sqlite_store.load_session(key, NOW)
        assert not reader(sqlite_store).in_transaction
    # A read transaction left open would pin the WAL: a TRUNCATE checkpoint
    # from another connection would then report busy.
    other = sqlite3.connect(sqlite_path, isolation_level=None)
    try:
        busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        other.close()
    assert busy == 0


async def test_a_load_is_one_statement_on_the_loop_and_none_on_the_thread(
    sqlite_store: SQLiteStore,
) -> None:
    rec = make_record("one", user="u")
    await sqlite_store.create_session(rec)
    on_loop: list[str] = []
    on_thread: list[str] = []
    reader(sqlite_store).set_trace_callback(on_loop.append)
    writer = driver(sqlite_store)._con
    assert writer is not None
    await writer.set_trace_callback(on_thread.append)
    for key in (rec.key, make_key("missing")):
        on_loop.clear()
        on_thread.clear()
        await sqlite_store.load_session(key, NOW)
        assert len(on_loop) == 1 and on_loop[0].startswith("SELECT"), on_loop
        assert on_thread == []
    await writer.set_trace_callback(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "exc",
    [
        sqlite3.OperationalError("database is locked"),
        sqlite3.OperationalError("database table is locked"),
        sqlite3.ProgrammingError("SQLite objects created in a thread can only be used there"),
        sqlite3.DatabaseError("database disk image is malformed"),
    ],
    ids=["busy", "locked", "other-thread", "any-error"],
)
async def test_any_loop_read_error_is_answered_on_the_thread(
    sqlite_store: SQLiteStore, exc: sqlite3.Error
) -> None:
    metrics = Latencies()
    sqlite_store.metrics = metrics
    rec = make_record("fallback", user="u")
    await sqlite_store.create_session(rec)
    fake = break_reader(sqlite_store, exc)
    metrics.seen.clear()
    assert await sqlite_store.load_session(rec.key, NOW) == rec
    assert await sqlite_store.load_session(make_key("missing"), NOW) is None
    assert fake.calls == 2 and driver(sqlite_store).thread_reads == 2
    assert metrics.seen == [("sessions", "load_session")] * 2


async def test_errors_on_both_paths_become_a_store_error(
    sqlite_store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Latencies()
    sqlite_store.metrics = metrics
    other = sqlite3.connect(sqlite_store._driver.target, isolation_level=None)
    try:
        other.execute("DROP TABLE axess_sessions")
    finally:
        other.close()
    with pytest.raises(StoreError, match="load_session failed") as info:
        await sqlite_store.load_session(make_key("gone"), NOW)
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert info.value.backend == "sqlite"
    assert driver(sqlite_store).thread_reads == 1
    assert metrics.seen == [("sessions", "load_session")]
    assert "sqlite store: load_session failed" in caplog.text


async def test_a_fallback_that_fails_is_a_store_error(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_reader(sqlite_store, sqlite3.OperationalError("database is locked"))

    async def still_locked(*args: object) -> Result:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(sqlite_module, "_run_threaded", still_locked)
    with pytest.raises(StoreError, match="load_session failed: OperationalError") as info:
        await sqlite_store.load_session(make_key("x"), NOW)
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    assert driver(sqlite_store).thread_reads == 1


async def test_a_load_from_another_thread_falls_back(sqlite_store: SQLiteStore) -> None:
    rec = make_record("thread", user="u")
    await sqlite_store.create_session(rec)
    found: list[object] = []

    def elsewhere() -> None:
        found.append(asyncio.run(sqlite_store.load_session(rec.key, NOW)))

    worker = threading.Thread(target=elsewhere)
    worker.start()
    await asyncio.to_thread(worker.join)
    assert found == [rec]
    assert driver(sqlite_store).thread_reads == 1  # check_same_thread refused the reader


async def test_close_closes_both_connections_and_reopen_restores_them(
    sqlite_store: SQLiteStore,
) -> None:
    rec = make_record("close", user="u")
    await sqlite_store.create_session(rec)
    loop_reader = reader(sqlite_store)
    writer = driver(sqlite_store)._con
    assert writer is not None
    await sqlite_store.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        loop_reader.execute("SELECT 1")
    with pytest.raises(ValueError, match="no active connection"):
        await writer.execute("SELECT 1")
    assert driver(sqlite_store)._reader is None and not driver(sqlite_store).connected
    with pytest.raises(StoreError, match="closed"):
        await sqlite_store.load_session(rec.key, NOW)
    await sqlite_store.open()
    assert reader(sqlite_store) is not loop_reader
    assert await sqlite_store.load_session(rec.key, NOW) == rec
    assert driver(sqlite_store).thread_reads == 0


async def test_the_reader_is_read_only(sqlite_store: SQLiteStore) -> None:
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader(sqlite_store).execute("DELETE FROM axess_sessions")


@pytest.mark.parametrize("path", [":memory:", ""], ids=["memory", "temporary"])
async def test_databases_a_second_connection_cannot_see_use_the_thread(path: str) -> None:
    store = SQLiteStore(path)
    await store.open()
    try:
        assert driver(store)._reader is None
        rec = make_record("mem", user="u")
        assert await store.create_session(rec)
        assert await store.load_session(rec.key, NOW) == rec
        assert await store.delete_session(rec.key)
        assert await store.load_session(rec.key, NOW) is None
    finally:
        await store.close()


# -- load_session_now: the session stage's read without an await -----------------------
async def test_load_session_now_answers_like_load_session_on_the_loop(
    sqlite_store: SQLiteStore,
) -> None:
    metrics = Latencies()
    sqlite_store.metrics = metrics
    rec = make_record("now", user="u")
    missing = make_key("missing")
    assert sqlite_store.load_session_now(rec.key, NOW) is None
    await sqlite_store.create_session(rec)
    assert sqlite_store.load_session_now(rec.key, NOW) == rec
    assert sqlite_store.load_session_now(missing, NOW) is None
    # An expired row is never returned, as with load_session.
    assert sqlite_store.load_session_now(rec.key, rec.expires_at) is None
    assert await sqlite_store.load_session(rec.key, rec.expires_at) is None
    assert metrics.seen.count(("sessions", "load_session")) == 5
    assert driver(sqlite_store).thread_reads == 0


@pytest.mark.parametrize(
    "exc",
    [sqlite3.OperationalError("database is locked"), sqlite3.DatabaseError("malformed")],
    ids=["busy", "any-error"],
)
async def test_load_session_now_is_not_now_when_the_loop_read_fails(
    sqlite_store: SQLiteStore, exc: sqlite3.Error
) -> None:
    rec = make_record("busy-now", user="u")
    await sqlite_store.create_session(rec)
    fake = break_reader(sqlite_store, exc)
    assert sqlite_store.load_session_now(rec.key, NOW) is NOT_NOW
    # The awaited read the caller falls back to still answers (on the thread).
    assert await sqlite_store.load_session(rec.key, NOW) == rec
    assert fake.calls == 2 and driver(sqlite_store).thread_reads == 1


async def test_load_session_now_is_not_now_without_a_loop_reader_or_when_closed(
    sqlite_path: Path,
) -> None:
    memory_db = SQLiteStore(":memory:")
    await memory_db.open()
    try:
        rec = make_record("in-memory", user="u")
        await memory_db.create_session(rec)
        assert memory_db.load_session_now(rec.key, NOW) is NOT_NOW
        assert await memory_db.load_session(rec.key, NOW) == rec
    finally:
        await memory_db.close()
    store = SQLiteStore(sqlite_path)
    await store.open()
    await store.close()
    assert store.load_session_now(make_key("x"), NOW) is NOT_NOW
    with pytest.raises(StoreError):
        await store.load_session(make_key("x"), NOW)
