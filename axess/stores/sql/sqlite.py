"""SQLite dialect (aiosqlite): the embedded default."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final

import aiosqlite

from axess.stores.sql.engine import Connection, Dialect, Driver, Result, SQLStore

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
)


class _SQLiteConnection:
    __slots__ = ("_con",)

    def __init__(self, con: aiosqlite.Connection) -> None:
        self._con = con

    async def run(self, sql: str, args: Sequence[object] = (), *, fetch: bool = False) -> Result:
        async with self._con.execute(sql, tuple(args)) as cur:
            rows = list(await cur.fetchall()) if fetch else []
            return Result(rows, cur.rowcount)


class _SQLiteDriver(Driver):
    """One aiosqlite connection. It runs statements on one thread, so access
    is serialized with an asyncio lock held for a whole operation (which also
    makes every operation, transaction or not, atomic within the process)."""

    def __init__(self, path: str | os.PathLike[str], busy_timeout: float) -> None:
        self._path = os.fspath(path)
        self._busy_ms = max(0, round(busy_timeout * 1000))
        self._con: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self.target = self._path

    @property
    def connected(self) -> bool:
        return self._con is not None

    async def connect(self) -> None:
        con = await aiosqlite.connect(self._path, isolation_level=None)
        try:
            for pragma in (
                f"PRAGMA busy_timeout = {self._busy_ms}",
                "PRAGMA foreign_keys = ON",
                "PRAGMA synchronous = NORMAL",
            ):
                async with con.execute(pragma):
                    pass
            await self._enable_wal(con)
        except BaseException:
            await con.close()
            raise
        self._con = con

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
        async with self._lock:  # let the operation in flight finish
            con, self._con = self._con, None
            if con is not None:
                await con.close()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        async with self._lock:
            con = self._con
            if con is None:
                raise sqlite3.OperationalError("the SQLite connection is closed")
            if con.in_transaction:
                # A cancelled operation could not roll back; never let its
                # half-done transaction absorb the next operation's writes.
                await con.rollback()
            yield _SQLiteConnection(con)

    def errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error, OSError)


class SQLiteStore(SQLStore):
    """Sessions in a SQLite file: WAL mode, foreign keys on, one serialized connection.

    ``auto_migrate`` (default on) applies migrations in :meth:`open`.
    ``busy_timeout`` (seconds) is how long a write waits for another process.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, auto_migrate: bool = True, busy_timeout: float = 5.0
    ) -> None:
        super().__init__(SQLITE, _SQLiteDriver(path, busy_timeout), auto_migrate=auto_migrate)
