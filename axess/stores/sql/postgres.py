"""PostgreSQL dialect (asyncpg). The driver is imported when the pool is created."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

from axess.errors import ConfigurationError
from axess.stores.sql.engine import (
    Connection,
    Dialect,
    PooledDriver,
    PoolSettings,
    Result,
    SQLStore,
    redact_dsn,
)

#: pg_advisory_xact_lock key serializing `migrate()` across processes.
_MIGRATION_LOCK_KEY: Final = 0x61786573736D6967  # "axessmig"

POSTGRES: Final = Dialect(
    name="postgres",
    paramstyle="numeric",
    insert_suffix=" ON CONFLICT DO NOTHING",
    begin="BEGIN",
    # Under READ COMMITTED a DELETE that waited for a concurrent cycle skips
    # the row the cycle removed and cannot see the row it inserted. Under
    # REPEATABLE READ the same situation is a serialization failure, which
    # the engine retries with a fresh snapshot that does see the new row.
    begin_strict="BEGIN ISOLATION LEVEL REPEATABLE READ",
    # to_regclass resolves through search_path, like every other statement.
    table_exists="SELECT 1 WHERE to_regclass(?) IS NOT NULL",
    ignore_duplicate=" ON CONFLICT DO NOTHING",
    upsert_column=" ON CONFLICT ({key}) DO UPDATE SET {col} = excluded.{col}",
    row_lock=" FOR UPDATE",
    # PostgreSQL types a bare parameter in a CASE as text.
    int_param="CAST(? AS BIGINT)",
    migration_lock=f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})",
)

_RETRYABLE_SQLSTATES: Final = frozenset({"40001", "40P01"})  # serialization, deadlock


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _status_count(status: str) -> int:
    """Affected rows from a command tag such as ``DELETE 3`` or ``INSERT 0 1``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


async def _keep_session(con: Any) -> None:
    """Pool reset hook: do nothing.

    asyncpg's default reset runs ``RESET ALL`` & co. after every release, a
    second statement per operation. The store sets no session state (the
    migration lock is transaction-scoped), and asyncpg still rolls back any
    open transaction before calling this hook.
    """


class _PostgresConnection:
    __slots__ = ("_con",)

    def __init__(self, con: Any) -> None:
        self._con = con

    async def run(self, sql: str, args: Sequence[object] = (), *, fetch: bool = False) -> Result:
        if fetch:
            rows = await self._con.fetch(sql, *args)
            return Result(rows, len(rows))
        return Result((), _status_count(await self._con.execute(sql, *args)))


class _PostgresDriver(PooledDriver):
    def __init__(self, dsn: str, *, schema: str | None, settings: PoolSettings) -> None:
        if not dsn.startswith(("postgres://", "postgresql://")):
            raise ConfigurationError(
                f"PostgresStore needs a postgresql:// DSN, got {redact_dsn(dsn)!r}"
            )
        super().__init__(dsn, "asyncpg", "postgres", settings)
        self._dsn = dsn
        self._server_settings = None if schema is None else {"search_path": _quote_ident(schema)}

    async def create_pool(self) -> Any:
        import asyncpg

        s = self.settings
        return await asyncpg.create_pool(
            self._dsn,
            min_size=s.min_size,
            max_size=s.max_size,
            timeout=s.connect_timeout,
            command_timeout=s.command_timeout,
            server_settings=self._server_settings,
            reset=_keep_session,
        )

    async def close_pool(self, pool: Any) -> None:
        await pool.close()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        async with self._pool.acquire(timeout=self.settings.connect_timeout) as con:
            yield _PostgresConnection(con)

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        import asyncpg
        from asyncpg.exceptions import InternalClientError

        return (asyncpg.PostgresError, asyncpg.InterfaceError, InternalClientError)

    def is_retryable(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) in _RETRYABLE_SQLSTATES


class PostgresStore(SQLStore):
    """Sessions in PostgreSQL through an asyncpg pool created in :meth:`open`
    (or lazily by the first operation if the server was down then).

    ``schema`` sets ``search_path`` on every pooled connection and is created
    by :meth:`migrate` if missing. ``auto_migrate`` is off by default: run
    ``axess migrate`` in deployment. Timeouts are in seconds.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        auto_migrate: bool = False,
        connect_timeout: float = 5.0,
        command_timeout: float | None = 30.0,
    ) -> None:
        dialect = POSTGRES
        if schema is not None:
            prelude = (f"CREATE SCHEMA IF NOT EXISTS {_quote_ident(schema)}",)
            dialect = dataclasses.replace(POSTGRES, prelude=prelude)
        settings = PoolSettings(min_size, max_size, connect_timeout, command_timeout)
        driver = _PostgresDriver(dsn, schema=schema, settings=settings)
        super().__init__(dialect, driver, auto_migrate=auto_migrate)
