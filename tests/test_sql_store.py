"""SQL store behaviour beyond the contract: migrations, statement count,
outages and recovery, purge targets, DSN redaction, heavy concurrency."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from backend_policy import POSTGRES_DSN
from hypothesis import given
from hypothesis import strategies as st

from axess.errors import ConfigurationError, SchemaVersionError, StoreError
from axess.observability.health import CompositeHealthCheck, HealthState
from axess.stores.base import Backend, SessionStore
from axess.stores.sql import MySQLStore, PostgresStore, SQLiteStore, SQLStore, engine, redact_dsn
from axess.stores.sql.engine import Result, dsn_secrets, split_statements
from axess.stores.sql.mysql import _MySQLConnection, parse_mysql_dsn
from axess.stores.sql.postgres import _PostgresConnection
from axess.stores.sql.sqlite import _SQLiteConnection
from axess.testing.contract import NOW, make_key, make_record

PG = pytest.mark.backend("postgres")
MY = pytest.mark.backend("mysql")
DIALECTS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=PG),
    pytest.param("mysql", id="mysql", marks=MY),
]
SECRET = "S3cr3t-Pa55word"


async def raw(store: SQLStore, sql: str) -> Sequence[Sequence[Any]]:
    """Run one statement on the store's own connection (test-only back door)."""
    async with store._driver.acquire() as conn:
        return (
            await conn.run(sql, fetch=sql.lstrip().upper().startswith(("SELECT", "PRAGMA")))
        ).rows


@pytest.fixture(params=DIALECTS)
def any_store(request: pytest.FixtureRequest) -> SQLStore:
    """An opened, migrated, empty store of each dialect."""
    store: SQLStore = request.getfixturevalue(f"{request.param}_store")
    return store


@pytest.fixture(params=DIALECTS)
def _builder(request: pytest.FixtureRequest) -> Callable[..., SQLStore]:
    kind = request.param
    if kind == "sqlite":
        path = request.getfixturevalue("sqlite_path")
        return lambda **kw: SQLiteStore(path, **kw)
    if kind == "postgres":
        schema = request.getfixturevalue("pg_schema")
        return lambda **kw: PostgresStore(POSTGRES_DSN, schema=schema, **kw)
    dsn = request.getfixturevalue("mysql_dsn")
    return lambda **kw: MySQLStore(dsn, **kw)


@pytest.fixture
async def make_store(
    _builder: Callable[..., SQLStore],
) -> AsyncIterator[Callable[..., SQLStore]]:
    """Build (unopened) stores on one fresh, empty database; all closed afterwards."""
    made: list[SQLStore] = []

    def make(**kw: Any) -> SQLStore:
        made.append(_builder(**kw))
        return made[-1]

    yield make
    for store in made:
        await store.close()


# -- protocol / lifecycle -------------------------------------------------------
def test_public_classes_implement_both_protocols(tmp_path: Path) -> None:
    stores = [
        SQLiteStore(tmp_path / "x.db"),
        PostgresStore("postgresql://u:p@localhost/db"),
        MySQLStore("mysql://u:p@localhost/db"),
    ]
    assert [s.name for s in stores] == ["sqlite", "postgres", "mysql"]
    for s in stores:
        assert isinstance(s, SessionStore) and isinstance(s, Backend)
        assert {"sessions", "lockout"} <= s.substores


async def test_close_is_idempotent_and_a_closed_store_raises(sqlite_store: SQLiteStore) -> None:
    await sqlite_store.close()
    await sqlite_store.close()
    with pytest.raises(StoreError, match="closed") as info:
        await sqlite_store.load_session(make_key("x"), NOW)
    assert (info.value.backend, info.value.substore) == ("sqlite", "sessions")
    await sqlite_store.open()  # reopening works
    assert await sqlite_store.load_session(make_key("x"), NOW) is None


async def test_saving_unchanged_values_still_counts_as_found(any_store: SQLStore) -> None:
    # MySQL reports changed rows unless connected with CLIENT.FOUND_ROWS.
    rec = make_record("same")
    assert await any_store.create_session(rec)
    assert await any_store.save_session(rec, NOW) is True
    assert await any_store.save_session(rec, NOW) is True


# -- migrations -----------------------------------------------------------------
def test_migration_files_are_numbered_and_split() -> None:
    for dialect in ("sqlite", "postgres", "mysql"):
        bootstrap, migrations = engine.load_migrations(dialect)
        assert bootstrap and all("axess_schema_version" in s for s in bootstrap)
        assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
        assert all(m.statements for m in migrations)
    assert split_statements("-- a; comment\nSELECT 1;\n\n  SELECT 2 ;") == ("SELECT 1", "SELECT 2")


async def test_migrate_applies_once_and_records_the_version(
    make_store: Callable[..., SQLStore], caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(auto_migrate=False)
    with pytest.raises(SchemaVersionError, match="run `axess migrate`"):
        await store.open()  # schema behind: the app must not start
    assert await store.schema_version() == 0
    with pytest.raises(StoreError):  # ...but operations fail cleanly
        await store.load_session(make_key("x"), NOW)
    known = store.known_schema_version
    assert await store.migrate() == known
    assert await store.migrate() == known  # second run: no-op
    rows = await raw(store, "SELECT version FROM axess_schema_version ORDER BY version")
    assert [int(r[0]) for r in rows] == list(range(1, known + 1))
    assert await store.schema_version() == known
    assert await store.create_session(make_record("after"))


async def test_auto_migrate_on_open_keeps_data_across_reopen(
    make_store: Callable[..., SQLStore],
) -> None:
    first = make_store(auto_migrate=True)
    await first.open()
    await first.open()  # idempotent
    rec = make_record("kept", user="u")
    assert await first.create_session(rec)
    await first.close()
    second = make_store(auto_migrate=True)
    await second.open()
    assert await second.load_session(rec.key, NOW) is not None


async def test_newer_database_schema_is_refused(make_store: Callable[..., SQLStore]) -> None:
    store = make_store(auto_migrate=True)
    await store.open()
    known = store.known_schema_version
    newer = known + 5
    await raw(store, f"INSERT INTO axess_schema_version (version) VALUES ({newer})")
    message = (
        rf"database schema version {newer} is newer than this axess \(knows {known}\); "
        "upgrade axess"
    )
    with pytest.raises(SchemaVersionError, match=message):
        await store.migrate()
    for auto in (True, False):
        with pytest.raises(SchemaVersionError, match=message):
            await make_store(auto_migrate=auto).open()
    assert await store.schema_version() == newer


async def test_concurrent_migrations_do_not_collide(make_store: Callable[..., SQLStore]) -> None:
    stores = [make_store() for _ in range(4)]
    known = stores[0].known_schema_version
    assert await asyncio.gather(*(s.migrate() for s in stores)) == [known] * 4
    rows = await raw(stores[0], "SELECT COUNT(*) FROM axess_schema_version")
    assert int(rows[0][0]) == known


@PG
async def test_postgres_schema_option_creates_and_isolates_the_schema(pg_schema: str) -> None:
    store = PostgresStore(POSTGRES_DSN, schema=pg_schema)
    try:
        await store.migrate()
        rows = await raw(store, "SELECT current_schema()")
        assert rows[0][0] == pg_schema
        rows = await raw(
            store,
            "SELECT table_name FROM information_schema.tables "
            f"WHERE table_schema = '{pg_schema}' AND table_name LIKE 'axess_%'",
        )
        assert {"axess_schema_version", "axess_sessions", "axess_lockouts"} <= {r[0] for r in rows}
    finally:
        await store.close()


# -- SQLite specifics ----------------------------------------------------------
async def test_sqlite_uses_wal_and_foreign_keys(
    sqlite_store: SQLiteStore, sqlite_path: Path
) -> None:
    con = sqlite3.connect(sqlite_path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()
    assert (await raw(sqlite_store, "PRAGMA foreign_keys"))[0][0] == 1


async def test_two_sqlite_stores_share_one_file(
    sqlite_store: SQLiteStore, sqlite_path: Path
) -> None:
    other = SQLiteStore(sqlite_path)
    await other.open()
    try:
        old = make_record("old", user="u")
        await sqlite_store.create_session(old)
        new = make_record("new", user="u")
        assert await other.cycle_session(old.key, new, NOW)
        assert await sqlite_store.load_session(old.key, NOW) is None
        assert await sqlite_store.load_session(new.key, NOW) is not None
    finally:
        await other.close()


# -- one statement per read ----------------------------------------------------
_ADAPTERS: dict[str, type[Any]] = {
    "sqlite": _SQLiteConnection,
    "postgres": _PostgresConnection,
    "mysql": _MySQLConnection,
}


async def test_a_session_load_is_exactly_one_statement(
    any_store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = _ADAPTERS[any_store.name]
    original = adapter.run
    seen: list[str] = []

    async def counting(
        self: Any, sql: str, args: Sequence[object] = (), *, fetch: bool = False
    ) -> Result:
        seen.append(sql)
        result: Result = await original(self, sql, args, fetch=fetch)
        return result

    rec = make_record("one", user="u")
    await any_store.create_session(rec)
    monkeypatch.setattr(adapter, "run", counting)
    for key in (rec.key, make_key("missing")):
        seen.clear()
        await any_store.load_session(key, NOW)
        assert len(seen) == 1, seen
        assert seen[0].startswith("SELECT") and "WHERE skey = " in seen[0]


@PG
async def test_postgres_load_sends_one_query_on_the_wire(pg_schema: str) -> None:
    # Counts what asyncpg really sends, including anything the pool adds on
    # release (its default reset would be a second statement).
    store = PostgresStore(POSTGRES_DSN, schema=pg_schema, min_size=1, max_size=1, auto_migrate=True)
    try:
        await store.open()
        rec = make_record("wire")
        await store.create_session(rec)
        logged: list[str] = []
        async with store._driver._pool.acquire() as con:  # type: ignore[attr-defined]
            con.add_query_logger(lambda q: logged.append(q.query))
        await store.load_session(rec.key, NOW)
        await store.load_session(rec.key, NOW)
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(logged) == 2, logged
        assert all(q.startswith("SELECT") for q in logged)
    finally:
        await store.close()


# -- purge ----------------------------------------------------------------------
async def test_purge_expired_targets_counts_and_batches(
    any_store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "PURGE_BATCH", 4)  # force several batches
    for i in range(10):
        await any_store.create_session(make_record(f"dead{i}", ttl=10))
    live = make_record("live")
    await any_store.create_session(live)
    with pytest.raises(ValueError, match=r"unknown purge target.*lockouts.*valid.*sessions"):
        await any_store.purge_expired(NOW + 10, only=["sessions", "lockouts"])
    assert await any_store.purge_expired(NOW + 10, only=[]) == {}
    assert await any_store.purge_expired(NOW + 10, only=["sessions"]) == {"sessions": 10}
    counts = await any_store.purge_expired(NOW + 10)
    assert set(counts) == any_store.substores and counts["sessions"] == 0
    assert await any_store.load_session(live.key, NOW + 10) is not None


# -- outages --------------------------------------------------------------------
def _bad_dsn(kind: str, port: int) -> str:
    scheme = "postgresql" if kind == "postgres" else "mysql"
    return f"{scheme}://axess:{SECRET}@127.0.0.1:{port}/test"


def _store_for(kind: str, dsn: str, **kw: Any) -> SQLStore:
    if kind == "postgres":
        return PostgresStore(dsn, **kw)
    return MySQLStore(dsn, **kw)


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
async def test_unreachable_server_is_a_store_error_without_secrets(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store_for(kind, _bad_dsn(kind, 1), connect_timeout=2)
    with caplog.at_level(logging.WARNING, "axess.stores.sql"):
        with pytest.raises(StoreError) as opened:
            await store.open()
        with pytest.raises(StoreError) as loaded:
            await store.load_session(make_key("x"), NOW)
        started = time.monotonic()
        status = await store.check_health()
        elapsed = time.monotonic() - started
    # open() reads the schema version: an operation on the whole store.
    for err, substore in ((opened.value, "store"), (loaded.value, "sessions")):
        assert type(err) is StoreError
        assert (err.backend, err.substore) == (kind, substore)
        assert err.__cause__ is not None  # chained to the driver error
        assert SECRET not in str(err)
    assert status.state is HealthState.UNHEALTHY
    assert status.reason is not None and status.reason.startswith(f"{kind}: ")
    assert SECRET not in status.reason
    assert elapsed < 2.5
    assert f"{kind} store: load_session failed" in caplog.text
    assert SECRET not in caplog.text
    await store.close()
    await store.close()


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
async def test_health_of_a_silent_server_names_it_within_the_endpoints_limit(kind: str) -> None:
    """The store's own limit (1.5 s) is below the health endpoint's (2 s per
    check), so /healthz's reason names the backend, not only "store"."""
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # accept, never answer, until the test aborts it

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = _store_for(kind, _bad_dsn(kind, port), connect_timeout=10)
    try:
        started = time.monotonic()
        status = await store.check_health()
        assert time.monotonic() - started < 2.0
        assert status.state is HealthState.UNHEALTHY
        assert status.reason == f"{kind}: no answer within 1.5s"
        report = await CompositeHealthCheck().add("store", store).report()
        assert report.components["store"].reason == f"{kind}: no answer within 1.5s"
    finally:
        await store.close()
        server.close()
        for writer in accepted:
            writer.transport.abort()
        await server.wait_closed()


class TcpProxy:
    """A TCP forwarder that can be stopped (severing every connection) and restarted."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.transport.abort()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._writers.clear()
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.transport.abort()


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    hostport = f"127.0.0.1:{port}"
    return urlunsplit(
        parts._replace(netloc=f"{netloc[0]}@{hostport}" if len(netloc) == 2 else hostport)
    )


@pytest.fixture(params=[pytest.param("postgres", marks=PG), pytest.param("mysql", marks=MY)])
def proxied(request: pytest.FixtureRequest) -> Iterator[tuple[TcpProxy, Callable[[], SQLStore]]]:
    """A proxy in front of a fresh, migrated database and a factory of stores behind it."""
    if request.param == "postgres":
        request.getfixturevalue("postgres_store")  # creates and migrates the schema
        schema = request.getfixturevalue("pg_schema")
        target = urlsplit(POSTGRES_DSN)
        proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)

        def build() -> SQLStore:
            return PostgresStore(_via(POSTGRES_DSN, proxy.port), schema=schema, connect_timeout=2)
    else:
        request.getfixturevalue("mysql_store")
        dsn = request.getfixturevalue("mysql_dsn")
        target = urlsplit(dsn)
        proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 3306)

        def build() -> SQLStore:
            return MySQLStore(_via(dsn, proxy.port), connect_timeout=2)

    yield proxy, build


async def test_store_recovers_after_an_outage_without_restart(
    proxied: tuple[TcpProxy, Callable[[], SQLStore]],
) -> None:
    proxy, build = proxied
    await proxy.start()
    store = build()
    try:
        await store.open()
        rec = make_record("survivor", user="u")
        assert await store.create_session(rec)
        await proxy.stop()
        with pytest.raises(StoreError):
            await store.load_session(rec.key, NOW)
        assert not (await store.check_health()).ok
        await proxy.start()  # same port: the server is back
        assert await store.load_session(rec.key, NOW) is not None
        assert (await store.check_health()).ok
    finally:
        await store.close()
        await proxy.stop()


async def test_pool_is_created_lazily_when_open_failed(
    proxied: tuple[TcpProxy, Callable[[], SQLStore]],
) -> None:
    proxy, build = proxied
    await proxy.start()
    port = proxy.port
    await proxy.stop()
    store = build()
    try:
        with pytest.raises(StoreError):
            await store.open()
        assert not (await store.check_health()).ok
        proxy.port = port
        await proxy.start()
        assert await store.create_session(make_record("late"))
        assert (await store.check_health()).ok
    finally:
        await store.close()
        await proxy.stop()


# -- DSNs -----------------------------------------------------------------------
@given(password=st.text(min_size=1))
def test_redact_dsn_never_shows_the_password(password: str) -> None:
    encoded = quote(password, safe="")
    cases = {
        f"postgresql://app:{encoded}@db.internal:5432/axess": "postgresql://app:***@db.internal:5432/axess",
        f"mysql://app:{password}@db:3306/axess": "mysql://app:***@db:3306/axess",
        f"postgresql://db/axess?user=app&password={encoded}&ssl=1": (
            "postgresql://db/axess?user=app&password=***&ssl=1"
        ),
    }
    for dsn, expected in cases.items():
        assert redact_dsn(dsn) == expected
    assert password in dsn_secrets(f"mysql://app:{password}@db:3306/axess")


def test_redact_dsn_leaves_password_free_dsns_alone() -> None:
    assert redact_dsn("postgresql://postgres@127.0.0.1:5432/test") == (
        "postgresql://postgres@127.0.0.1:5432/test"
    )
    assert redact_dsn("host=db password='a b' user=x") == "host=db password=*** user=x"


def test_mysql_dsn_parsing() -> None:
    t = parse_mysql_dsn("mysql://app:p%40ss%3Aw@db.example:3307/axess")
    assert (t.host, t.port, t.user, t.password, t.db) == (
        "db.example",
        3307,
        "app",
        "p@ss:w",
        "axess",
    )
    assert parse_mysql_dsn("mysql://root@127.0.0.1/test").port == 3306
    assert parse_mysql_dsn("mysql://u:p@[::1]:3308/d").host == "::1"
    for bad in (
        f"mysql://app:{SECRET}@db:3306",
        f"postgresql://app:{SECRET}@db/x",
        "mysql://db:x/y",
    ):
        with pytest.raises(ConfigurationError) as info:
            parse_mysql_dsn(bad)
        assert SECRET not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        PostgresStore(f"mysql://app:{SECRET}@db/x")
    assert SECRET not in str(info.value)


# -- heavy concurrency ------------------------------------------------------------
async def test_100_concurrent_ops_never_outlive_invalidation(any_store: SQLStore) -> None:
    store = any_store
    recs = [make_record(f"h{i}", user="victim", tenant="t") for i in range(100)]
    for r in recs:
        await store.create_session(r)
    ops: list[Any] = []
    for i, r in enumerate(recs):
        if i % 2:
            late = make_record(f"h{i}", payload=b"late", user="victim", tenant="t")
            ops.append(store.save_session(late, NOW))
        else:
            new = make_record(f"h{i}-new", user="victim", tenant="t")
            ops.append(store.cycle_session(r.key, new, NOW))
    ops.insert(len(ops) // 2, store.delete_user_sessions("victim", tenant_id="t"))
    results = await asyncio.gather(*ops)
    assert all(isinstance(x, bool | int) for x in results)
    assert await store.list_user_sessions("victim", NOW, tenant_id="t") == []
    for i in range(100):
        assert await store.load_session(make_key(f"h{i}"), NOW) is None
        assert await store.load_session(make_key(f"h{i}-new"), NOW) is None


_LOCK_WAITS = {
    "postgres": "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
    "mysql": "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'",
}


@pytest.fixture(params=[pytest.param("postgres", marks=PG), pytest.param("mysql", marks=MY)])
def server_store(request: pytest.FixtureRequest) -> SQLStore:
    store: SQLStore = request.getfixturevalue(f"{request.param}_store")
    return store


async def test_cycle_committing_during_log_out_everywhere_loses_its_new_row(
    server_store: SQLStore,
) -> None:
    """The READ COMMITTED trap, made deterministic: the invalidation's DELETE
    blocks on the row an open cycle already deleted; the cycle then commits
    its new row. That row must not survive the invalidation."""
    store = server_store
    old = make_record("old", user="victim", tenant="t")
    new = make_record("new", user="victim", tenant="t")
    await store.create_session(old)
    async with store._driver.acquire() as cycle, store._driver.acquire() as probe:
        await cycle.run(store._dialect.begin)
        assert (await cycle.run(store._q.delete_live, (old.key, engine.ms(NOW)))).rowcount == 1
        assert (await cycle.run(store._q.insert, engine._params(new))).rowcount == 1
        invalidation = asyncio.create_task(store.delete_user_sessions("victim", tenant_id="t"))
        # Poll until the DELETE waits on the cycle's lock. (MariaDB refreshes
        # innodb_trx only when it was not read for 0.1 s: poll slower.)
        for _ in range(50):
            await asyncio.sleep(0.15)
            if int((await probe.run(_LOCK_WAITS[store.name], fetch=True)).rows[0][0]):
                break
        else:
            pytest.fail("the invalidation never waited on the cycle's row lock")
        await cycle.run("COMMIT")
    assert await invalidation == 1
    assert await store.load_session(new.key, NOW) is None
    assert await store.list_user_sessions("victim", NOW) == []
