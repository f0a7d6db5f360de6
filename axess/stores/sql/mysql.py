"""MySQL 8 / MariaDB 10.11+ dialect (aiomysql). The driver is imported when the pool is created."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

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

# GET_LOCK names are server-wide (max 64 chars): scope the lock to the database.
_LOCK_NAME: Final = "CONCAT('axess_migrate_', MD5(DATABASE()))"

MYSQL: Final = Dialect(
    name="mysql",
    paramstyle="format",
    # Plain INSERT; the duplicate-key error means "already there". (INSERT
    # IGNORE would also turn truncation and other data errors into warnings.)
    insert_suffix="",
    begin="START TRANSACTION",
    # One autocommit DELETE under REPEATABLE READ (set per connection below):
    # its next-key locks cover the user's index range, so a concurrent cycle
    # either commits before the DELETE reads its row or blocks until after.
    begin_strict=None,
    table_exists=(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?"
    ),
    ignore_duplicate=" ON DUPLICATE KEY UPDATE {first} = {first}",
    upsert_column=" ON DUPLICATE KEY UPDATE {col} = VALUES({col})",
    row_lock=" FOR UPDATE",
    int_param="?",
    # DDL commits implicitly in MySQL, so the migration transaction cannot be
    # the lock: a named lock held by the session is.
    migration_lock=f"SELECT GET_LOCK({_LOCK_NAME}, 60)",
    # IF NOT EXISTS on an existing table is a "note"; the driver would turn
    # it into a Python warning after an extra SHOW WARNINGS round trip.
    prelude=("SET SESSION sql_notes = 0",),
    migration_cleanup=(f"SELECT RELEASE_LOCK({_LOCK_NAME})", "SET SESSION sql_notes = DEFAULT"),
    purge_batch="DELETE FROM {table} WHERE {col} <= ? LIMIT ?",
    # A no-op update on a duplicate id: unlike INSERT IGNORE it does not turn
    # data errors into warnings.
    audit_insert_suffix=" ON DUPLICATE KEY UPDATE event_id = event_id",
)

_CLIENT_FOUND_ROWS: Final = 2  # pymysql.constants.CLIENT.FOUND_ROWS
_ER_DUP_ENTRY: Final = 1062
_RETRYABLE_CODES: Final = frozenset({1205, 1213})  # lock wait timeout, deadlock


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    user: str
    password: str
    db: str


def parse_mysql_dsn(dsn: str) -> _Target:
    """``mysql://user:pass@host:port/db`` (percent-encode special characters)."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in ("mysql", "mariadb"):
        raise ConfigurationError(f"MySQLStore needs a mysql:// DSN, got {redact_dsn(dsn)!r}")
    userinfo, at, hostpart = rest.rpartition("@")
    user, _, password = userinfo.partition(":") if at else ("", "", "")
    hostport, _, path = hostpart.partition("?")[0].partition("/")
    host, port = hostport, "3306"
    if hostport.startswith("["):  # [::1]:3306
        host, _, tail = hostport[1:].partition("]")
        port = tail.removeprefix(":") or port
    elif ":" in hostport:
        host, _, port = hostport.rpartition(":")
    db = unquote(path.strip("/"))
    if not host or not db or not port.isdigit():
        raise ConfigurationError(
            f"MySQL DSN must look like mysql://user:pass@host:port/db, got {redact_dsn(dsn)!r}"
        )
    return _Target(unquote(host), int(port), unquote(user), unquote(password), db)


class _MySQLConnection:
    __slots__ = ("_con", "_timeout")

    def __init__(self, con: Any, timeout: float | None) -> None:
        self._con = con
        self._timeout = timeout

    async def run(self, sql: str, args: Sequence[object] = (), *, fetch: bool = False) -> Result:
        if args:
            # aiomysql interpolates client-side anyway; doing it here avoids
            # its bytes escaping, which is broken with PyMySQL >= 1.1.2
            # (it imports a removed helper). A hex literal is always safe.
            sql = sql % tuple(self._literal(a) for a in args)
        try:
            async with asyncio.timeout(self._timeout), self._con.cursor() as cur:
                # No arguments: aiomysql must not %-format the statement again.
                count = await cur.execute(sql)
                rows = await cur.fetchall() if fetch else ()
        except (asyncio.CancelledError, TimeoutError):
            # The protocol stopped mid-exchange: the pool must not reuse it.
            self._con.close()
            raise
        return Result(list(rows), int(count))

    def _literal(self, value: object) -> str:
        if isinstance(value, bytes | bytearray | memoryview):
            return f"X'{bytes(value).hex()}'"
        return str(self._con.escape(value))


class _MySQLDriver(PooledDriver):
    def __init__(self, dsn: str, settings: PoolSettings) -> None:
        self._target = parse_mysql_dsn(dsn)
        super().__init__(dsn, "aiomysql", "mysql", settings)
        found = {*self.secrets, self._target.password} - {""}
        self.secrets = tuple(sorted(found, key=len, reverse=True))  # longest first

    async def create_pool(self) -> Any:
        import aiomysql

        s = self.settings
        # aiomysql's connect_timeout covers the TCP connect only: a server
        # (or proxy) that accepts and never answers the handshake would hang
        # open(), `axess migrate` and every first operation for good. The
        # pool opens its min_size connections one after another, so each
        # gets connect_timeout. Cancelling mid-handshake drops the half-open
        # connection, whose finalizer closes its socket.
        limit = s.connect_timeout * max(1, s.min_size)
        try:
            async with asyncio.timeout(limit):
                return await self._create_pool(aiomysql)
        except TimeoutError:
            raise TimeoutError(f"no connection to the server within {limit:g}s") from None

    async def _create_pool(self, aiomysql: Any) -> Any:
        s, t = self.settings, self._target
        return await aiomysql.create_pool(
            minsize=s.min_size,
            maxsize=s.max_size,
            host=t.host,
            port=t.port,
            user=t.user,
            password=t.password,
            db=t.db,
            charset="utf8mb4",
            # Statements autocommit; multi-statement work uses an explicit
            # START TRANSACTION. (With autocommit off even a lone SELECT
            # opens a transaction, which would need a second round trip to
            # end, pins a stale snapshot, and makes aiomysql's pool discard
            # the connection on release.)
            autocommit=True,
            # UPDATE reports matched rows, not changed rows: saving an
            # unchanged session still counts as "the row exists".
            client_flag=_CLIENT_FOUND_ROWS,
            init_command="SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            connect_timeout=s.connect_timeout,
            pool_recycle=3600,
        )

    async def close_pool(self, pool: Any) -> None:
        pool.close()
        await pool.wait_closed()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        # As PostgreSQL's: a full pool, or a new connection to a server that
        # never completes the handshake, waits connect_timeout, not forever.
        pool = self._pool
        limit = self.settings.connect_timeout
        try:
            async with asyncio.timeout(limit):
                con = await pool.acquire()
        except TimeoutError:
            raise TimeoutError(f"no pooled connection within {limit:g}s") from None
        try:
            yield _MySQLConnection(con, self.settings.command_timeout)
        finally:
            await pool.release(con)

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        import aiomysql

        return (aiomysql.MySQLError,)

    def is_retryable(self, exc: BaseException) -> bool:
        return _error_code(exc) in _RETRYABLE_CODES

    def is_duplicate(self, exc: BaseException) -> bool:
        return _error_code(exc) == _ER_DUP_ENTRY


def _error_code(exc: BaseException) -> int | None:
    import aiomysql

    if not isinstance(exc, aiomysql.MySQLError) or not exc.args:
        return None
    code = exc.args[0]
    return code if isinstance(code, int) else None


class MySQLStore(SQLStore):
    """Sessions in MySQL 8 or MariaDB 10.11+ through an aiomysql pool.

    DSN ``mysql://user:pass@host:port/db``. ``auto_migrate`` is off by
    default: run ``axess migrate`` in deployment. Timeouts are in seconds.
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        auto_migrate: bool = False,
        connect_timeout: float = 5.0,
        command_timeout: float | None = 30.0,
    ) -> None:
        settings = PoolSettings(min_size, max_size, connect_timeout, command_timeout)
        driver = _MySQLDriver(dsn, settings)
        super().__init__(MYSQL, driver, auto_migrate=auto_migrate)
