"""The SQL session store, written once against a small dialect interface.

A dialect module (:mod:`.sqlite`, :mod:`.postgres`, :mod:`.mysql`) supplies
only what really differs between databases: a :class:`Dialect` (placeholder
style and a few SQL fragments), a :class:`Driver` (how a connection is
acquired and a statement run, and which driver exceptions exist) and its
migration files under ``migrations/<dialect>/``. The session semantics,
migrations, error mapping, retries and health live here, once.

Session times are stored as epoch milliseconds (``BIGINT``); :class:`SessionRecord`
carries float seconds. The regulatory audit table (substore ``audit``) keeps
event times in epoch microseconds, like :class:`~axess.audit.events.AuthEvent`.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import importlib.resources
import importlib.util
import itertools
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, Protocol, TypeVar
from urllib.parse import unquote

from axess._throttle import ThrottledWarning
from axess.audit.events import AuditQuery, AuthEvent, to_us
from axess.errors import ConfigurationError, SchemaVersionError, StoreError
from axess.observability.health import HealthStatus
from axess.observability.metrics import AuthnMetrics
from axess.stores.base import (
    AUDIT,
    FACTORS,
    IDENTITY,
    LOCKOUT,
    NOT_NOW,
    SESSIONS,
    NotNow,
    SessionRecord,
    purge_targets,
)
from axess.stores.sql.identity import SQLIdentityMixin
from axess.stores.sql.lockout import SQLLockoutMixin
from axess.stores.sql.params import ms, placeholders

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds ``check_health`` waits for ``SELECT 1`` (book: Operations, health checks).
#: The ``substore`` label of operations on the whole store (health check,
#: schema version, migrations) in metrics and errors: they belong to no
#: substore, and counting them under ``sessions`` misled where sessions
#: live elsewhere (a CompositeStore).
WHOLE_STORE: Final = "store"
#: Below the health endpoint's own 2 s per check, so its reason names the backend.
HEALTH_TIMEOUT: Final = 1.5
#: Rows deleted per statement by the purge, so a huge backlog never holds
#: one long lock.
PURGE_BATCH: Final = 1000
#: Attempts for an operation that failed with a deadlock or serialization
#: failure (the database rolled it back, so running it again is safe).
_RETRIES: Final = 25
_COLS: Final = "skey, payload, user_id, tenant_id, created_at, expires_at"
_AUDIT_COLS: Final = (
    "event_id, time_us, tenant_id, event_type, status, user_id, session_prefix, ip, "
    "user_agent, request_id, factor, lever, reason, actor, extras"
)
_AUDIT_ROW: Final = "(" + ", ".join(["?"] * 15) + ")"
#: Audit rows per INSERT statement (and ids per archive UPDATE): keeps every
#: statement far below the drivers' bound-parameter limits.
AUDIT_CHUNK: Final = 500
#: Bytes of audit values per INSERT statement, at most (escaping counted at
#: its worst): aiomysql inlines the values, and a statement over MariaDB's
#: ``max_allowed_packet`` (16 MiB by default) fails every time it is retried,
#: stalling the SQL sink for good (book: Audit, "Storage").
AUDIT_CHUNK_BYTES: Final = 4 << 20
_MIGRATION_FILE: Final = re.compile(r"^(\d{4})_[A-Za-z0-9_]+\.sql$")


# -- secrets in messages ------------------------------------------------------
_URL_USERINFO: Final = re.compile(r"(\b[A-Za-z][\w+.-]*://[^:/?#\s@]*):[^\s]*@")
_KV_PASSWORD: Final = re.compile(
    r"(?i)\b(password|passwd|pwd)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&;#]*)"
)


def redact_dsn(dsn: str) -> str:
    """``dsn`` with every password replaced by ``***``.

    Covers the URL userinfo (``scheme://user:secret@host``, also when the
    secret is not percent-encoded) and ``password=`` parameters. When the
    string is ambiguous it redacts too much rather than too little.
    """
    scheme, sep, rest = dsn.partition("://")
    if sep:
        # The last "@" ends the userinfo: a raw password may contain "@".
        at = rest.rfind("@")
        if at != -1:
            user, colon, _ = rest[:at].partition(":")
            if colon:
                rest = f"{user}:***@{rest[at + 1 :]}"
        dsn = scheme + sep + rest
    return _KV_PASSWORD.sub(lambda m: f"{m.group(1)}{m.group(2)}***", dsn)


def dsn_secrets(dsn: str) -> tuple[str, ...]:
    """The password(s) in ``dsn``, raw and decoded, to scrub from driver messages."""
    found: list[str] = []
    _, sep, rest = dsn.partition("://")
    if sep and (at := rest.rfind("@")) != -1:
        _, colon, password = rest[:at].partition(":")
        if colon:
            found.append(password)
    found.extend(m.group(3).strip("'") for m in _KV_PASSWORD.finditer(dsn))
    found.extend([unquote(s) for s in found])
    return tuple(sorted({s for s in found if s}, key=len, reverse=True))


# -- what a dialect supplies ------------------------------------------------
class Result(NamedTuple):
    """Rows (for ``fetch=True``) and the affected-row count of one statement."""

    rows: Sequence[Sequence[Any]]
    rowcount: int


class Connection(Protocol):
    """One acquired connection. Every statement the store issues goes through ``run``."""

    async def run(self, sql: str, args: Sequence[object] = (), *, fetch: bool = False) -> Result:
        """Execute one statement; ``args`` bind the dialect's placeholders."""
        ...


class Driver(abc.ABC):
    """Connection management for one database driver (the only code importing it)."""

    #: Where the store connects, password redacted; used in log messages.
    target: str = ""
    #: Strings that must never reach a message or log line (passwords).
    secrets: tuple[str, ...] = ()

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True once :meth:`connect` succeeded and until :meth:`close`."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Create the pool or connection; raise a driver error on failure."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release everything. Idempotent."""

    @abc.abstractmethod
    def acquire(self) -> AbstractAsyncContextManager[Connection]:
        """A connection for the duration of one operation."""

    @abc.abstractmethod
    def errors(self) -> tuple[type[BaseException], ...]:
        """Exception classes the driver raises for backend failures."""

    def acquire_read(self) -> AbstractAsyncContextManager[Connection]:
        """A connection for one read-only point ``SELECT`` (a session load).

        :meth:`acquire` unless the driver has a cheaper path for it (SQLite
        reads on the event loop; book: Internals, "SQLite reads on the loop").
        """
        return self.acquire()

    def read_now(self, sql: str, args: Sequence[object]) -> list[Sequence[Any]] | None:
        """The rows of one read-only point ``SELECT`` if the driver can run it
        without waiting, else ``None`` (the caller then goes through
        :meth:`acquire_read`). Never raises: a failure is also ``None``."""
        return None

    def is_retryable(self, exc: BaseException) -> bool:
        """True for deadlocks / serialization failures the database rolled back."""
        return False

    def is_duplicate(self, exc: BaseException) -> bool:
        """True if ``exc`` is a duplicate-key error (dialects without ON CONFLICT)."""
        return False


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Pool sizes and timeouts (seconds) shared by the server dialects."""

    min_size: int = 1
    max_size: int = 10
    connect_timeout: float = 5.0
    command_timeout: float | None = 30.0


class PooledDriver(Driver):
    """A driver over a connection pool created by :meth:`create_pool`.

    The pool is created on first need, so a server that was down when the
    app started is picked up by a later operation; the driver's own pool
    replaces broken connections after an outage.
    """

    #: Seconds :meth:`close` waits for operations in flight before terminating.
    CLOSE_TIMEOUT: Final = 10.0

    def __init__(self, dsn: str, driver_module: str, extra: str, settings: PoolSettings) -> None:
        if importlib.util.find_spec(driver_module) is None:
            raise ConfigurationError(
                f"{driver_module} is not installed: install axess with the '{extra}' extra "
                f"(pip install '/path/to/axess[{extra}]') or pip install {driver_module}"
            )
        self.settings = settings
        self.target = redact_dsn(dsn)
        self.secrets = dsn_secrets(dsn)
        self._pool: Any = None
        self._errors: tuple[type[BaseException], ...] | None = None

    @abc.abstractmethod
    async def create_pool(self) -> Any:
        """A new, ready pool; raise a driver error on failure."""

    @abc.abstractmethod
    async def close_pool(self, pool: Any) -> None:
        """Close ``pool`` gracefully, waiting for connections in use."""

    @abc.abstractmethod
    def driver_errors(self) -> tuple[type[BaseException], ...]:
        """The driver's exception classes (imported on first use)."""

    @property
    def connected(self) -> bool:
        return self._pool is not None

    async def connect(self) -> None:
        self._pool = await self.create_pool()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(self.close_pool(pool), timeout=self.CLOSE_TIMEOUT)
        except TimeoutError:
            pool.terminate()  # an operation hung: do not hang shutdown with it

    def errors(self) -> tuple[type[BaseException], ...]:
        if self._errors is None:
            self._errors = (*self.driver_errors(), OSError, TimeoutError)
        return self._errors


@dataclass(frozen=True, slots=True)
class Dialect:
    """The SQL that differs between databases. Statements use ``?`` placeholders."""

    name: str
    paramstyle: Literal["qmark", "numeric", "format"]
    #: Appended to the session INSERT to make it insert-if-absent ("" when the
    #: driver reports duplicates through :meth:`Driver.is_duplicate`).
    insert_suffix: str
    #: Starts a read-write transaction.
    begin: str
    #: Starts the transaction a "log out everywhere" pass runs in, or None to
    #: run it as one autocommit statement. See ``delete_user_sessions``.
    begin_strict: str | None
    #: One row iff the table named by the parameter exists.
    table_exists: str
    #: Appended to an INSERT to make it a no-op when its key is taken,
    #: without the error that would abort the transaction it runs in
    #: (``{first}``: the first column inserted).
    ignore_duplicate: str
    #: Appended to an INSERT: when its key ``{key}`` is taken, set column
    #: ``{col}`` of that row to the inserted value instead.
    upsert_column: str
    #: Appended to a SELECT whose rows must stay locked until the
    #: transaction ends ("" where ``begin`` already holds the write lock).
    #: No other database's lock may stand in: one that parses and does not
    #: lock would let the lockout's guess budget leak.
    row_lock: str
    #: An integer parameter where the database cannot infer its type (a
    #: ``CASE`` branch).
    int_param: str
    #: Serializes concurrent migrations (run right after ``begin``; a result
    #: of 0 means the lock was not granted).
    migration_lock: str | None = None
    #: Statements run before the bootstrap inside the migration transaction.
    prelude: tuple[str, ...] = ()
    #: Statements run after the migration, even when it failed (lock release,
    #: undoing the prelude's session settings).
    migration_cleanup: tuple[str, ...] = ()
    #: Deletes at most ``?``(2nd) rows of ``{table}`` whose ``{col}`` is at or
    #: before ``?``(1st) and reports the count (``{key}``: the primary key).
    purge_batch: str = (
        "DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {col} <= ? LIMIT ?)"
    )
    #: Appended to the audit INSERT: skip rows whose event id is stored already.
    audit_insert_suffix: str = " ON CONFLICT (event_id) DO NOTHING"


# -- migrations ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(script: str) -> tuple[str, ...]:
    """Statements of a migration file: ``;``-separated, ``--`` comment lines dropped."""
    lines = [ln for ln in script.splitlines() if not ln.lstrip().startswith("--")]
    return tuple(s.strip() for s in "\n".join(lines).split(";") if s.strip())


@functools.cache
def load_migrations(dialect: str) -> tuple[tuple[str, ...], tuple[Migration, ...]]:
    """The bootstrap statements and the numbered migrations (1..N) for ``dialect``."""
    root = importlib.resources.files(__package__).joinpath("migrations", dialect)
    bootstrap = split_statements(root.joinpath("schema_version.sql").read_text("utf-8"))
    found: list[Migration] = []
    for entry in root.iterdir():
        m = _MIGRATION_FILE.match(entry.name)
        if m:
            found.append(
                Migration(int(m[1]), entry.name, split_statements(entry.read_text("utf-8")))
            )
    found.sort(key=lambda mig: mig.version)
    if [mig.version for mig in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"axess {dialect} migrations are not numbered 1..N: {found}")
    return bootstrap, tuple(found)


# -- the store ----------------------------------------------------------------


class _Queries:
    """Every statement the store issues, converted once to the dialect's placeholders.

    The f-strings below only splice module constants and fixed fragments;
    every value is a bound parameter (hence the S608 suppressions).
    """

    def __init__(self, d: Dialect) -> None:
        def p(sql: str) -> str:
            return placeholders(sql, d.paramstyle)

        live = "expires_at > ?"
        self.load = p(f"SELECT {_COLS} FROM axess_sessions WHERE skey = ? AND {live}")  # noqa: S608
        self.insert = p(
            f"INSERT INTO axess_sessions ({_COLS}) VALUES (?, ?, ?, ?, ?, ?){d.insert_suffix}"  # noqa: S608
        )
        self.save = p(
            "UPDATE axess_sessions SET payload = ?, user_id = ?, tenant_id = ?, "
            "created_at = ?, expires_at = ? WHERE skey = ? AND expires_at > ?"
        )
        self.delete = p("DELETE FROM axess_sessions WHERE skey = ?")
        self.delete_live = p(f"DELETE FROM axess_sessions WHERE skey = ? AND {live}")  # noqa: S608
        self.purge_batch = p(
            d.purge_batch.format(table="axess_sessions", key="skey", col="expires_at")
        )
        self.p = p
        self._sized: dict[tuple[str, int], str] = {}
        self.audit_insert_suffix = d.audit_insert_suffix
        self.audit_purge_batch = p(
            d.purge_batch.format(table="axess_audit_events", key="event_id", col="purge_at")
        )
        self.audit_to_archive = p(
            f"SELECT {_AUDIT_COLS} FROM axess_audit_events "  # noqa: S608
            "WHERE archived_at IS NULL AND time_us < ? ORDER BY time_us, event_id LIMIT ?"
        )
        self.table_exists = p(d.table_exists)
        self.max_version = "SELECT MAX(version) FROM axess_schema_version"
        self.record_version = p("INSERT INTO axess_schema_version (version) VALUES (?)")
        self.delete_user: dict[tuple[bool, bool], str] = {}
        self.list_user: dict[bool, str] = {}
        for tenant in (False, True):
            scope = "user_id = ?" + (" AND tenant_id = ?" if tenant else "")
            self.list_user[tenant] = p(
                f"SELECT {_COLS} FROM axess_sessions WHERE {scope} AND {live} "  # noqa: S608
                "ORDER BY created_at, skey"
            )
            for except_key in (False, True):
                extra = " AND skey <> ?" if except_key else ""
                self.delete_user[tenant, except_key] = p(
                    f"DELETE FROM axess_sessions WHERE {scope}{extra}"  # noqa: S608
                )

    def audit_insert(self, rows: int) -> str:
        """INSERT of ``rows`` audit rows, skipping ids already stored (cached per size)."""
        sql = self._sized.get(("insert", rows))
        if sql is None:
            values = ", ".join([_AUDIT_ROW] * rows)
            sql = self._sized["insert", rows] = self.p(
                f"INSERT INTO axess_audit_events ({_AUDIT_COLS}) VALUES {values}"  # noqa: S608
                + self.audit_insert_suffix
            )
        return sql

    def audit_mark(self, ids: int) -> str:
        """UPDATE stamping ``ids`` not-yet-archived rows as archived (cached per size)."""
        sql = self._sized.get(("mark", ids))
        if sql is None:
            marks = ", ".join(["?"] * ids)
            sql = self._sized["mark", ids] = self.p(
                "UPDATE axess_audit_events SET archived_at = ?, purge_at = ? "  # noqa: S608
                f"WHERE archived_at IS NULL AND event_id IN ({marks})"
            )
        return sql

    def audit_query(self, tenant_id: str | None, q: AuditQuery) -> tuple[str, list[object]]:
        """The SELECT for one audit query; every value is a bound parameter."""
        where = ["tenant_id IS NULL" if tenant_id is None else "tenant_id = ?"]
        args: list[object] = [] if tenant_id is None else [tenant_id]
        if q.types is not None:
            where.append(
                f"event_type IN ({', '.join(['?'] * len(q.types))})" if q.types else "1 = 0"
            )
            args.extend(q.types)
        for column, value in (
            ("user_id", q.user),
            ("status", q.status),
            ("session_prefix", q.session),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if q.since_us is not None:
            where.append("time_us >= ?")
            args.append(q.since_us)
        if q.until_us is not None:
            where.append("time_us < ?")
            args.append(q.until_us)
        op, direction = (">", "ASC") if q.order == "asc" else ("<", "DESC")
        if q.cursor is not None:
            where.append(f"(time_us {op} ? OR (time_us = ? AND event_id {op} ?))")
            args.extend((q.cursor[0], q.cursor[0], q.cursor[1]))
        args.append(q.limit)
        sql = (
            f"SELECT {_AUDIT_COLS} FROM axess_audit_events WHERE {' AND '.join(where)} "  # noqa: S608
            f"ORDER BY time_us {direction}, event_id {direction} LIMIT ?"
        )
        return self.p(sql), args


class _Abort(Exception):
    """Raised inside a transaction body: roll back and report ``False``."""


def _params(rec: SessionRecord) -> tuple[object, ...]:
    return (
        rec.key,
        bytes(rec.payload),
        rec.user_id,
        rec.tenant_id,
        ms(rec.created_at),
        ms(rec.expires_at),
    )


def _audit_params(e: AuthEvent) -> tuple[object, ...]:
    return (
        e.id,
        e.time,
        e.tenant,
        e.type,
        e.status,
        e.user,
        e.session,
        e.ip,
        e.user_agent,
        e.request_id,
        e.factor,
        e.lever,
        e.reason,
        e.actor,
        json.dumps(dict(e.extras), separators=(",", ":"), ensure_ascii=False),
    )


def _audit_row_bytes(row: tuple[object, ...]) -> int:
    """An upper bound of the bytes ``row`` takes inlined in a statement: at
    most 4 bytes a character (UTF-8; an escaped ASCII character takes 2),
    plus quotes and a comma."""
    return sum(4 * len(v) + 3 if isinstance(v, str) else 24 for v in row)


def _audit_chunks(rows: list[tuple[object, ...]]) -> list[list[tuple[object, ...]]]:
    """``rows`` cut into INSERT chunks of at most :data:`AUDIT_CHUNK` rows and
    :data:`AUDIT_CHUNK_BYTES` bytes (a row is never split)."""
    chunks: list[list[tuple[object, ...]]] = []
    chunk: list[tuple[object, ...]] = []
    size = 0
    for row in rows:
        n = _audit_row_bytes(row)
        if chunk and (len(chunk) >= AUDIT_CHUNK or size + n > AUDIT_CHUNK_BYTES):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(row)
        size += n
    if chunk:
        chunks.append(chunk)
    return chunks


def _audit_event(row: Sequence[Any]) -> AuthEvent:
    extras = row[14]
    return AuthEvent(
        id=str(row[0]),
        time=int(row[1]),
        tenant=row[2],
        type=str(row[3]),
        status=str(row[4]),
        user=row[5],
        session=row[6],
        ip=row[7],
        user_agent=row[8],
        request_id=row[9],
        factor=row[10],
        lever=row[11],
        reason=row[12],
        actor=row[13],
        extras=json.loads(extras) if isinstance(extras, str | bytes) else (extras or {}),
    )


def _record(row: Sequence[Any]) -> SessionRecord:
    return SessionRecord(
        key=str(row[0]),
        payload=bytes(row[1]),
        user_id=row[2],
        tenant_id=row[3],
        created_at=int(row[4]) / 1000,
        expires_at=int(row[5]) / 1000,
    )


async def _quietly(conn: Connection, sql: str) -> None:
    """Run a cleanup statement whose failure must not mask the original error."""
    try:
        await conn.run(sql)
    except Exception as exc:  # the connection is broken: the server cleans up itself
        logger.debug("cleanup statement %r failed: %s", sql, type(exc).__name__)


class SQLStore(SQLLockoutMixin, SQLIdentityMixin):
    """Session substore on a SQL database; use :class:`SQLiteStore`,
    :class:`PostgresStore` or :class:`MySQLStore`.

    Guarantees of :class:`~axess.stores.base.SessionStore`: a load is one
    ``SELECT`` by primary key; creation is insert-if-absent; a save only
    updates a live row; a cycle deletes the live old row and inserts the new
    one in one transaction; every driver failure is a :class:`StoreError`
    naming the backend. After an outage the store recovers by itself.
    """

    substores: frozenset[str] = frozenset({SESSIONS, AUDIT, LOCKOUT, IDENTITY, FACTORS})
    #: Receives ``store_latency(substore, operation, seconds)`` for every
    #: operation once set (``Axess(metrics=...)`` sets it; book: "Health and metrics").
    metrics: AuthnMetrics | None = None

    def __init__(self, dialect: Dialect, driver: Driver, *, auto_migrate: bool) -> None:
        self.name: str = dialect.name
        self._dialect = dialect
        self._driver = driver
        self._auto_migrate = auto_migrate
        self._bootstrap, self._migrations = load_migrations(dialect.name)
        self._q = _Queries(dialect)
        self._closed = False
        #: ``open()`` ran (or ``migrate()``/``schema_version()``, which the
        #: ``axess`` command calls instead): the schema was looked at.
        self._opened = False
        self._connect_lock = asyncio.Lock()
        self._warn = ThrottledWarning(logger)

    @property
    def known_schema_version(self) -> int:
        """The highest migration this version of axess ships."""
        return self._migrations[-1].version

    # -- lifecycle ------------------------------------------------------------
    async def open(self) -> None:
        """Connect, then migrate (``auto_migrate``) or check the schema version.

        Raises :class:`SchemaVersionError` if the database is newer than this
        axess or (``auto_migrate`` off) older than it needs: the app must not
        start on a schema every login would fail on (book: Storage,
        migrations). Raises :class:`StoreError` if it is unreachable (later
        operations retry connecting).
        """
        self._closed = False
        self._opened = True
        try:
            if self._auto_migrate:
                await self.migrate()
                return
            version = await self.schema_version()
            self._check_not_newer(version)
            if version < self.known_schema_version:
                message = (
                    f"{self.name} schema is at version {version}, this axess needs "
                    f"{self.known_schema_version}: run `axess migrate` before starting the app"
                )
                # Logged too: a server may report a failed startup without it.
                logger.error("%s", message)
                raise SchemaVersionError(message)
        except SchemaVersionError:
            await self._driver.close()
            raise

    async def close(self) -> None:
        """Close the pool/connection. Idempotent; later operations raise StoreError."""
        self._closed = True
        try:
            await self._driver.close()
        except self._driver.errors() as exc:
            logger.warning("%s store: close failed: %s", self.name, self._describe(exc))

    async def check_health(self) -> HealthStatus:
        """``SELECT 1`` within 1.5 s. Never raises; reasons name the backend, never a secret."""

        async def ping(conn: Connection) -> None:
            await conn.run("SELECT 1", fetch=True)

        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                await self._op("health check", ping, log=False, substore=WHOLE_STORE)
        except TimeoutError:
            return HealthStatus.unhealthy(f"{self.name}: no answer within {HEALTH_TIMEOUT:g}s")
        except StoreError as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            return HealthStatus.unhealthy(f"{self.name}: {self._describe(cause, limit=120)}")
        except Exception as exc:  # a health check must not raise
            return HealthStatus.unhealthy(f"{self.name}: {type(exc).__name__}")
        return HealthStatus.healthy()

    # -- migrations -----------------------------------------------------------
    async def schema_version(self) -> int:
        """The version recorded in ``axess_schema_version`` (0 when never migrated)."""
        self._opened = True
        return await self._op("schema_version", self._read_version, substore=WHOLE_STORE)

    async def migrate(self) -> int:
        """Apply the missing migrations in order, under a database-wide lock.

        Forward-only and idempotent (a second run is a no-op). Returns the
        resulting version. Raises :class:`SchemaVersionError` when the
        database is newer than this axess.
        """
        self._opened = True
        d, q = self._dialect, self._q

        async def steps(conn: Connection) -> int:
            if d.migration_lock is not None:
                got = await conn.run(d.migration_lock, fetch=True)
                if got.rows and got.rows[0][0] == 0:
                    raise StoreError(
                        f"{self.name}: timed out waiting for the migration lock",
                        backend=self.name,
                        substore=SESSIONS,
                    )
            for stmt in (*d.prelude, *self._bootstrap):
                await conn.run(stmt)
            current = await self._read_version(conn)
            self._check_not_newer(current)
            for mig in self._migrations:
                if mig.version > current:
                    for stmt in mig.statements:
                        await conn.run(stmt)
                    await conn.run(q.record_version, (mig.version,))
                    logger.info("%s: applied migration %s", self.name, mig.name)
                    current = mig.version
            return current

        async def body(conn: Connection) -> int:
            try:
                return await self._transaction(conn, d.begin, lambda: steps(conn))
            finally:
                for stmt in d.migration_cleanup:
                    await _quietly(conn, stmt)

        return await self._op("migrate", body, substore=WHOLE_STORE)

    async def _read_version(self, conn: Connection) -> int:
        exists = await conn.run(self._q.table_exists, ("axess_schema_version",), fetch=True)
        if not exists.rows:
            return 0
        rows = (await conn.run(self._q.max_version, fetch=True)).rows
        return int(rows[0][0] or 0) if rows else 0

    def _check_not_newer(self, version: int) -> None:
        if version > self.known_schema_version:
            raise SchemaVersionError(
                f"{self.name}: database schema version {version} is newer than this axess "
                f"(knows {self.known_schema_version}); upgrade axess"
            )

    # -- session substore -------------------------------------------------------
    def load_session_now(self, key: str, now: float) -> SessionRecord | NotNow | None:
        """:meth:`load_session` answered without waiting when the driver can
        (SQLite's read on the loop); :data:`NOT_NOW` otherwise, and for every
        failure, which the awaited path then meets and reports."""
        if self._closed:
            return NOT_NOW
        metrics = self.metrics
        start = time.perf_counter() if metrics is not None else 0.0
        rows = self._driver.read_now(self._q.load, (key, ms(now)))
        if rows is None:
            return NOT_NOW
        if metrics is not None:
            metrics.store_latency(SESSIONS, "load_session", time.perf_counter() - start)
        return _record(rows[0]) if rows else None

    async def load_session(self, key: str, now: float) -> SessionRecord | None:
        """The live row for ``key``: exactly one ``SELECT`` by primary key."""

        async def body(conn: Connection) -> SessionRecord | None:
            rows = (await conn.run(self._q.load, (key, ms(now)), fetch=True)).rows
            return _record(rows[0]) if rows else None

        return await self._op("load_session", body, read=True)

    async def create_session(self, record: SessionRecord) -> bool:
        """Insert if the key is absent; ``False`` (row untouched) otherwise."""

        async def body(conn: Connection) -> bool:
            return await self._insert(conn, record)

        return await self._op("create_session", body)

    async def save_session(self, record: SessionRecord, now: float) -> bool:
        """Update a row that still exists and is live; never resurrects one."""
        p = _params(record)
        args = (*p[1:], record.key, ms(now))

        async def body(conn: Connection) -> bool:
            return (await conn.run(self._q.save, args)).rowcount == 1

        return await self._op("save_session", body)

    async def cycle_session(self, old_key: str, record: SessionRecord, now: float) -> bool:
        """In one transaction: delete the live ``old_key`` row and insert ``record``.

        Writes nothing and returns ``False`` if the old row is gone or the new
        key is taken.
        """
        if old_key == record.key:
            return False
        q = self._q

        async def steps(conn: Connection) -> None:
            if (await conn.run(q.delete_live, (old_key, ms(now)))).rowcount != 1:
                raise _Abort
            if not await self._insert(conn, record):
                raise _Abort

        async def body(conn: Connection) -> None:
            await self._transaction(conn, self._dialect.begin, lambda: steps(conn))

        try:
            await self._op("cycle_session", body)
        except _Abort:
            return False
        return True

    async def delete_session(self, key: str) -> bool:
        """Delete the row (live or not); ``True`` if there was one."""

        async def body(conn: Connection) -> bool:
            return (await conn.run(self._q.delete, (key,))).rowcount == 1

        return await self._op("delete_session", body)

    async def delete_user_sessions(
        self, user_id: str, *, tenant_id: str | None = None, except_key: str | None = None
    ) -> int:
        """Delete every row of the user (in ``tenant_id`` if given) but ``except_key``.

        A cycle that commits its new row while a pass runs can slip past that
        pass's snapshot, so passes repeat until one deletes nothing. Each pass
        runs with the dialect's strict isolation (PostgreSQL REPEATABLE READ,
        retried on serialization failure; InnoDB next-key locks), under which
        a row moved by a concurrent cycle is either deleted or makes the pass
        retry with a fresh snapshot.
        """
        args: list[object] = [user_id]
        if tenant_id is not None:
            args.append(tenant_id)
        if except_key is not None:
            args.append(except_key)
        sql = self._q.delete_user[tenant_id is not None, except_key is not None]
        begin = self._dialect.begin_strict

        async def one_pass(conn: Connection) -> int:
            if begin is None:
                return (await conn.run(sql, args)).rowcount
            result = await self._transaction(conn, begin, lambda: conn.run(sql, args))
            return result.rowcount

        total = 0
        while (deleted := await self._op("delete_user_sessions", one_pass)) > 0:
            total += deleted
        return total

    async def list_user_sessions(
        self, user_id: str, now: float, *, tenant_id: str | None = None
    ) -> list[SessionRecord]:
        """Live rows of the user, oldest first (``created_at``, then key)."""
        args: tuple[object, ...] = (
            (user_id, ms(now)) if tenant_id is None else (user_id, tenant_id, ms(now))
        )

        async def body(conn: Connection) -> list[SessionRecord]:
            rows = (await conn.run(self._q.list_user[tenant_id is not None], args, fetch=True)).rows
            return [_record(r) for r in rows]

        return await self._op("list_user_sessions", body)

    async def purge_expired_sessions(self, now: float) -> int:
        """Delete rows expired at ``now`` in batches of :data:`PURGE_BATCH`; the count."""
        return await self._purge("purge_expired_sessions", self._q.purge_batch, ms(now), SESSIONS)

    async def purge_expired(
        self, now: float, *, only: Collection[str] | None = None
    ) -> dict[str, int]:
        """Purge expired state of every target (or those in ``only``); counts per target.

        Raises :class:`ValueError` naming the valid targets for an unknown one.
        """
        targets: dict[str, Callable[[float], Awaitable[int]]] = {
            SESSIONS: self.purge_expired_sessions,
            AUDIT: self.purge_archived_audit_events,
            LOCKOUT: self.purge_expired_lockouts,
            IDENTITY: self.purge_identity,
            FACTORS: self.purge_identity,
        }
        names = purge_targets([only] if isinstance(only, str) else only, targets)
        return {name: await targets[name](now) for name in names}

    # -- audit substore ---------------------------------------------------------
    async def insert_audit_events(self, events: Sequence[AuthEvent]) -> None:
        """Insert-if-absent by event id, in one transaction; redelivery is a no-op."""
        if not events:
            return
        rows = [_audit_params(e) for e in sorted(events, key=lambda e: e.id)]
        chunks = _audit_chunks(rows)

        async def steps(conn: Connection) -> None:
            for chunk in chunks:
                await conn.run(self._q.audit_insert(len(chunk)), [v for r in chunk for v in r])

        async def body(conn: Connection) -> None:
            if len(chunks) == 1:
                await steps(conn)
            else:
                await self._transaction(conn, self._dialect.begin, lambda: steps(conn))

        await self._op("insert_audit_events", body, substore=AUDIT)

    async def query_audit_events(
        self, tenant_id: str | None, query: AuditQuery | None = None
    ) -> list[AuthEvent]:
        """Rows of ``tenant_id`` only (``None``: rows without a tenant) matching ``query``."""
        if tenant_id is not None and not isinstance(tenant_id, str):
            raise TypeError("tenant_id must be a string or None")
        sql, args = self._q.audit_query(tenant_id, query or AuditQuery())

        async def body(conn: Connection) -> list[AuthEvent]:
            return [_audit_event(r) for r in (await conn.run(sql, args, fetch=True)).rows]

        return await self._op("query_audit_events", body, substore=AUDIT)

    async def audit_events_to_archive(self, before_us: int, limit: int) -> list[AuthEvent]:
        """Rows not archived yet with a time before ``before_us``, oldest first."""
        args = (int(before_us), int(limit))

        async def body(conn: Connection) -> list[AuthEvent]:
            rows = (await conn.run(self._q.audit_to_archive, args, fetch=True)).rows
            return [_audit_event(r) for r in rows]

        return await self._op("audit_events_to_archive", body, substore=AUDIT)

    async def mark_audit_events_archived(
        self, ids: Sequence[str], *, archived_at_us: int, purge_at_us: int
    ) -> int:
        """Stamp rows as archived (those not archived yet); how many were stamped."""
        unique = list(dict.fromkeys(ids))
        chunks = [unique[i : i + AUDIT_CHUNK] for i in range(0, len(unique), AUDIT_CHUNK)]

        async def steps(conn: Connection) -> int:
            total = 0
            for chunk in chunks:
                args = [archived_at_us, purge_at_us, *chunk]
                total += (await conn.run(self._q.audit_mark(len(chunk)), args)).rowcount
            return total

        async def body(conn: Connection) -> int:
            return await self._transaction(conn, self._dialect.begin, lambda: steps(conn))

        if not chunks:
            return 0
        return await self._op("mark_audit_events_archived", body, substore=AUDIT)

    async def purge_archived_audit_events(self, now: float) -> int:
        """Delete archived rows whose ``purge_at`` is at or before ``now``; the count."""
        return await self._purge(
            "purge_archived_audit_events", self._q.audit_purge_batch, to_us(now), AUDIT
        )

    # -- plumbing ---------------------------------------------------------------
    async def _purge(self, what: str, sql: str, cutoff: int, substore: str) -> int:
        """Run a purge statement in batches of :data:`PURGE_BATCH` until one deletes less."""
        args = (cutoff, PURGE_BATCH)

        async def batch(conn: Connection) -> int:
            return (await conn.run(sql, args)).rowcount

        total = 0
        while True:
            deleted = await self._op(what, batch, substore=substore)
            total += deleted
            if deleted < PURGE_BATCH:
                return total

    async def _insert(self, conn: Connection, record: SessionRecord) -> bool:
        try:
            return (await conn.run(self._q.insert, _params(record))).rowcount == 1
        except self._driver.errors() as exc:
            if self._driver.is_duplicate(exc):
                return False
            raise

    async def _transaction(
        self, conn: Connection, begin: str, body: Callable[[], Awaitable[T]]
    ) -> T:
        """Run ``body`` between ``begin`` and COMMIT; ROLLBACK if it raises."""
        await conn.run(begin)
        try:
            result = await body()
        except BaseException:
            await _quietly(conn, "ROLLBACK")
            raise
        await conn.run("COMMIT")
        return result

    async def _connected(self, substore: str = SESSIONS) -> None:
        if self._closed:
            raise StoreError(f"{self.name} store is closed", backend=self.name, substore=substore)
        if not self._driver.connected:
            # One task creates the pool; the others wait for it. A failure
            # leaves it unset so the next operation tries again.
            async with self._connect_lock:
                if not self._driver.connected:
                    if not self._opened:
                        # Every query then fails on a missing or older table
                        # with an error that names neither: say what to do.
                        logger.error(
                            "%s store used before open(): its schema was neither migrated "
                            "nor checked; run the app with lifespan=auth.lifespan (or call "
                            "`await auth.startup()` / `await store.open()` first)",
                            self.name,
                        )
                        self._opened = True  # said once
                    await self._driver.connect()

    async def _op(
        self,
        what: str,
        body: Callable[[Connection], Awaitable[T]],
        *,
        log: bool = True,
        substore: str = SESSIONS,
        read: bool = False,
    ) -> T:
        """Run ``body`` on an acquired connection, retrying deadlocks and
        serialization failures, and turning driver errors into StoreError.
        Its duration (retries and failures included) goes to ``metrics``.
        ``read``: ``body`` is one point SELECT (:meth:`Driver.acquire_read`)."""
        metrics = self.metrics
        if metrics is None:
            return await self._attempts(what, body, log, substore, read)
        start = time.perf_counter()
        try:
            return await self._attempts(what, body, log, substore, read)
        finally:
            metrics.store_latency(substore, what, time.perf_counter() - start)

    async def _attempts(
        self,
        what: str,
        body: Callable[[Connection], Awaitable[T]],
        log: bool,
        substore: str,
        read: bool = False,
    ) -> T:
        driver = self._driver
        errors = driver.errors()
        acquire = driver.acquire_read if read else driver.acquire
        for attempt in itertools.count(1):
            try:
                await self._connected(substore)
                async with acquire() as conn:
                    return await body(conn)
            except errors as exc:
                if attempt < _RETRIES and self._driver.is_retryable(exc):
                    logger.debug("%s store: %s retried after %s", self.name, what, exc)
                    await asyncio.sleep(random.uniform(0, 0.001 * 2 ** min(attempt, 6)))
                    continue
                message = f"{self.name} store: {what} failed: {self._describe(exc)}"
                if log:
                    self._warn.warning(what, "%s (%s)", message, self._driver.target)
                raise StoreError(message, backend=self.name, substore=substore) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _describe(self, exc: BaseException, *, limit: int = 300) -> str:
        """``Type: message``, secrets scrubbed, truncated."""
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        for secret in self._driver.secrets:
            text = text.replace(secret, "***")
        text = _URL_USERINFO.sub(r"\1:***@", text)
        text = _KV_PASSWORD.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
        return text if len(text) <= limit else text[: limit - 1] + "…"
