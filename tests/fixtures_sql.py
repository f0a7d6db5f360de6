"""Fixtures for the SQL stores (registered as a pytest plugin by conftest).

Every PostgreSQL test gets its own schema and every MySQL test its own
database, dropped afterwards, so tests never see each other's rows. An
unreachable server skips (or, with AXESS_REQUIRE_BACKENDS=1, fails) the test.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
from backend_policy import MYSQL_DSN, POSTGRES_DSN, unavailable

from axess.errors import StoreError
from axess.stores.sql import MySQLStore, PostgresStore, SQLiteStore
from axess.stores.sql.mysql import parse_mysql_dsn


def _unique(prefix: str = "axess_t_") -> str:
    return prefix + secrets.token_hex(6)


async def _opened(store: PostgresStore | MySQLStore, backend: str) -> None:
    try:
        await store.open()
    except StoreError as exc:
        await store.close()
        unavailable(backend, str(exc))


# -- SQLite -------------------------------------------------------------------
@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """A database file path in the test's temporary directory."""
    return tmp_path / "axess.db"


@pytest.fixture
async def sqlite_store(sqlite_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(sqlite_path)
    await store.open()
    yield store
    await store.close()


# -- PostgreSQL ---------------------------------------------------------------
async def _pg_execute(sql: str) -> None:
    import asyncpg

    con = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        await con.execute(sql)
    finally:
        await con.close()


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """The name of a fresh, not yet created schema; dropped (CASCADE) afterwards."""
    schema = _unique()
    try:
        await _pg_execute("SELECT 1")
    except (OSError, TimeoutError, ImportError) as exc:
        unavailable("postgres", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # asyncpg errors (auth, missing database…)
        unavailable("postgres", f"{type(exc).__name__}: {exc}")
    yield schema
    await _pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
async def postgres_store(pg_schema: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(POSTGRES_DSN, schema=pg_schema, auto_migrate=True)
    await _opened(store, "postgres")
    yield store
    await store.close()


# -- MySQL / MariaDB ----------------------------------------------------------
async def _mysql_execute(sql: str) -> None:
    import aiomysql

    t = parse_mysql_dsn(MYSQL_DSN)
    con = await aiomysql.connect(
        host=t.host,
        port=t.port,
        user=t.user,
        password=t.password,
        db=t.db,
        autocommit=True,
        connect_timeout=5,
    )
    try:
        async with con.cursor() as cur:
            await cur.execute(sql)
    finally:
        con.close()


@pytest.fixture
async def mysql_dsn() -> AsyncIterator[str]:
    """DSN of a fresh, empty database; dropped afterwards."""
    db = _unique()
    try:
        await _mysql_execute(f"CREATE DATABASE `{db}`")
    except Exception as exc:  # OSError, pymysql errors (refused, auth…)
        unavailable("mysql", f"{type(exc).__name__}: {exc}")
    t = parse_mysql_dsn(MYSQL_DSN)
    auth = quote(t.user, safe="") + (":" + quote(t.password, safe="") if t.password else "")
    yield f"mysql://{auth}@{t.host}:{t.port}/{db}"
    await _mysql_execute(f"DROP DATABASE IF EXISTS `{db}`")


@pytest.fixture
async def mysql_store(mysql_dsn: str) -> AsyncIterator[MySQLStore]:
    store = MySQLStore(mysql_dsn, auto_migrate=True)
    await _opened(store, "mysql")
    yield store
    await store.close()


SQL_BACKENDS = ("sqlite", "postgres", "mysql")


@pytest.fixture(params=SQL_BACKENDS)
def sql_store(request: pytest.FixtureRequest) -> SQLiteStore | PostgresStore | MySQLStore:
    """An opened, empty SQL store of each dialect (one test per dialect)."""
    store: SQLiteStore | PostgresStore | MySQLStore = request.getfixturevalue(
        f"{request.param}_store"
    )
    return store


@pytest.fixture(params=("memory", *SQL_BACKENDS))
def local_or_sql_store(request: pytest.FixtureRequest) -> object:
    """An empty store: memory (open is a no-op), then each opened SQL dialect."""
    if request.param == "memory":
        from axess.stores import MemoryStore

        return MemoryStore()
    return request.getfixturevalue(f"{request.param}_store")
