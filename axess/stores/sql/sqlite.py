"""SQLite dialect (aiosqlite): the embedded default.

Writes run on aiosqlite's thread; a session load runs synchronously on the
event loop on a second, read-only connection and falls back to the thread
when that cannot answer (book: Internals, "SQLite reads on the loop").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final
from urllib.parse import quote

import aiosqlite

from axess.stores.sql.engine import Connection, Dialect, Driver, Result, SQLStore

logger = logging.getLogger(__name__)

SQLITE: Final = Dialect(
    name="sqlite",
    paramstyle="qmark",
    insert_suffix=" ON CONFLICT DO NOTHING",
    # IMMEDIATE takes the write lock up front: a transaction never fails
    # half-way on a lock upgrade, and concurrent migrations from several
    # processes serialize on it.
    begin="BEGIN IMMEDIATE",
    # One connection, serialized: a single DELETE sees every committed row.
    begin_strict=None,
    table_exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    ignore_duplicate=" ON CONFLICT DO NOTHING",
    upsert_column=" ON CONFLICT ({key}) DO UPDATE SET {col} = excluded.{col}",
    # BEGIN IMMEDIATE holds the database's write lock: no row lock needed.
    row_lock="",
    int_param="CAST(? AS BIGINT)",
)


class _SQLiteConnection:
    """An acquired connection: aiosqlite's, or the loop reader for one point read.

    Every statement goes through :meth:`run`, whichever path answers it.
    """

    __slots__ = ("_con", "_driver", "_reader")

    def __init__(
        self,
        con: aiosqlite.Connection | None,
        *,
        reader: sqlite3.Cursor | None = None,
        driver: _SQLiteDriver | None = None,
    ) -> None:
        self._con = con
        self._reader = reader
        self._driver = driver

    def fetch_now(self, sql: str, args: Sequence[object]) -> list[Any]:
        """One SELECT on the loop reader, no await: the read transaction
        begins and ends inside this call (book: Internals, "SQLite reads on
        the loop"). Raises ``sqlite3.Error``."""
        reader = self._reader
        if reader is None:  # pragma: no cover - only the driver calls this
            raise sqlite3.OperationalError("not the loop reader")
        return reader.execute(sql, tuple(args)).fetchall()

    async def run(self, sql: str, args: Sequence[object] = (), *, fetch: bool = False) -> Result:
        if self._reader is not None and self._driver is not None:
            try:
                return Result(self.fetch_now(sql, args), -1)
            except sqlite3.Error as exc:
                return await self._driver.read_on_thread(sql, args, exc)
        con = self._con
        if con is None:  # pragma: no cover - only the driver builds these
            raise sqlite3.OperationalError("the SQLite connection is closed")
        return await _run_threaded(con, sql, args, fetch)


async def _run_threaded(
    con: aiosqlite.Connection, sql: str, args: Sequence[object], fetch: bool
) -> Result:
    async with con.execute(sql, tuple(args)) as cur:
        rows = list(await cur.fetchall()) if fetch else []
        return Result(rows, cur.rowcount)


class _SQLiteDriver(Driver):
    """One aiosqlite connection. It runs statements on one thread, so access
    is serialized with an asyncio lock held for a whole operation (which also
    makes every operation, transaction or not, atomic within the process).

    Next to it, when the database is a file, a read-only ``sqlite3``
    connection used only on the event loop for session loads (no lock: it
    never awaits, and WAL lets it read while the thread writes).
    """

    def __init__(self, path: str | os.PathLike[str], busy_timeout: float) -> None:
        self._path = os.fspath(path)
        self._busy_ms = max(0, round(busy_timeout * 1000))
        self._con: aiosqlite.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_conn: _SQLiteConnection | None = None
        self._lock = asyncio.Lock()
        self.target = self._path
        #: Loads the loop reader could not answer (answered on the thread).
        self.thread_reads = 0

    @property
    def connected(self) -> bool:
        return self._con is not None

    async def connect(self) -> None:
        pending = _daemonic(aiosqlite.connect(self._path, isolation_level=None))
        try:
            con = await pending
        except BaseException:
            await _worker_stopped(pending)
            raise
        try:
            for pragma in (
                f"PRAGMA busy_timeout = {self._busy_ms}",
                "PRAGMA foreign_keys = ON",
                "PRAGMA synchronous = NORMAL",
            ):
                async with con.execute(pragma):
                    pass
            await self._enable_wal(con)
            file = await _main_file(con)
        except BaseException:
            await con.close()
            raise
        self._con = con
        self._open_reader(file)

    def _open_reader(self, file: str) -> None:
        """Open the loop reader on ``file`` (the writer's main database file).

        No reader (every load on the thread) for an in-memory or temporary
        database, which a second connection would not see, or when the file
        cannot be opened read-only in WAL mode.
        """
        if not file:
            return
        try:
            reader = sqlite3.connect(f"file:{quote(file)}?mode=ro", uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            logger.debug("sqlite: no loop reader for %s: %s", self._path, exc)
            return
        try:
            # Never wait on the loop: a busy database goes to the thread.
            reader.execute("PRAGMA busy_timeout = 0")
            mode = reader.execute("PRAGMA journal_mode").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise sqlite3.OperationalError(f"journal mode {mode!r}, not WAL")
        except sqlite3.Error as exc:
            logger.debug("sqlite: no loop reader for %s: %s", self._path, exc)
            reader.close()
            return
        self._reader = reader
        # One cursor, reused: each execute resets the previous statement.
        self._read_conn = _SQLiteConnection(None, reader=reader.cursor(), driver=self)

    async def _enable_wal(self, con: aiosqlite.Connection) -> None:
        """Switch the file to WAL (a persistent setting: usually already done).

        The switch needs an exclusive lock and SQLite may refuse it at once,
        without the busy handler, while another connection opens the same
        new file; so retry for up to the busy timeout.
        """
        deadline = asyncio.get_running_loop().time() + self._busy_ms / 1000
        while True:
            try:
                async with con.execute("PRAGMA journal_mode = WAL"):
                    return
            except sqlite3.OperationalError:
                if asyncio.get_running_loop().time() >= deadline:
                    raise
                await asyncio.sleep(0.01)

    async def close(self) -> None:
        reader, self._reader, self._read_conn = self._reader, None, None
        if reader is not None:
            reader.close()
        async with self._lock:  # let the operation in flight finish
            con, self._con = self._con, None
            if con is not None:
                await con.close()

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            con = self._con
            if con is None:
                raise sqlite3.OperationalError("the SQLite connection is closed")
            if con.in_transaction:
                # A cancelled operation could not roll back; never let its
                # half-done transaction absorb the next operation's writes.
                await con.rollback()
            yield con

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        async with self._locked() as con:
            yield _SQLiteConnection(con)

    def read_now(self, sql: str, args: Sequence[object]) -> list[Sequence[Any]] | None:
        """One point ``SELECT`` on the loop reader (book: Internals, "SQLite
        reads on the loop"); ``None`` without a reader or when it fails (busy,
        locked, closed): the awaited path then retries it and falls back to
        the writer's thread."""
        read_conn = self._read_conn
        if read_conn is None:
            return None
        try:
            return read_conn.fetch_now(sql, args)
        except sqlite3.Error:
            return None

    def acquire_read(self) -> AbstractAsyncContextManager[Connection]:
        read_conn = self._read_conn
        if read_conn is None:
            return self.acquire()
        return contextlib.nullcontext(read_conn)

    async def read_on_thread(self, sql: str, args: Sequence[object], exc: sqlite3.Error) -> Result:
        """The fallback of a loop read that failed with ``exc`` (busy, locked,
        closed, another thread…): the same SELECT on the writer's thread."""
        self.thread_reads += 1
        logger.debug("sqlite: loop read fell back to the thread: %s", exc)
        async with self._locked() as con:
            return await _run_threaded(con, sql, args, True)

    def errors(self) -> tuple[type[BaseException], ...]:
        # OverflowError: an integer beyond SQLite's 64 bits (a time past the
        # year 292 million), which the server databases refuse as an error.
        return (sqlite3.Error, OSError, OverflowError)


def _daemonic(con: aiosqlite.Connection) -> aiosqlite.Connection:
    """``con`` (not yet started) with its worker thread made a daemon.

    aiosqlite runs each connection in a thread that, from 0.22 on, is not a
    daemon: a process that ends without closing the store (a crash, an
    unhandled error in a script, a lifespan that never ran its shutdown)
    would then wait for it forever and never exit. As a daemon it does not
    hold the process; SQLite's journal keeps the file consistent whatever
    the thread was doing when the process ended, as after a power cut.
    Closing the store normally still waits for every write.
    """
    # 0.22 keeps the thread in ``_thread``; earlier versions are the thread.
    thread = getattr(con, "_thread", con)
    if isinstance(thread, threading.Thread) and not thread.is_alive():
        thread.daemon = True
    return con


#: Seconds a failed connect waits for aiosqlite's worker thread to end.
_WORKER_STOP_TIMEOUT: Final = 5.0


async def _worker_stopped(con: aiosqlite.Connection) -> None:
    """Wait until the worker thread of ``con``, whose connect failed, has ended.

    aiosqlite answers a failed connect at once and stops the thread behind
    it: the thread then reports that stop to this event loop. Were the loop
    closed first (a command that exits on the error, ``asyncio.run`` ending),
    the thread would die printing an "event loop is closed" traceback.
    """
    thread = getattr(con, "_thread", con)
    if isinstance(thread, threading.Thread) and thread.is_alive():
        await asyncio.to_thread(thread.join, _WORKER_STOP_TIMEOUT)


async def _main_file(con: aiosqlite.Connection) -> str:
    """The file of the ``main`` database ("" for an in-memory or temporary one)."""
    async with con.execute("PRAGMA database_list") as cur:
        for _seq, name, file in await cur.fetchall():
            if name == "main":
                return str(file or "")
    return ""


class SQLiteStore(SQLStore):
    """Sessions in a SQLite file: WAL mode, foreign keys on, one serialized connection.

    ``auto_migrate`` (default on) applies migrations in :meth:`open`.
    ``busy_timeout`` (seconds) is how long a write waits for another process.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, auto_migrate: bool = True, busy_timeout: float = 5.0
    ) -> None:
        super().__init__(SQLITE, _SQLiteDriver(path, busy_timeout), auto_migrate=auto_migrate)
