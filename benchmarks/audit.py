"""Audit pipeline benchmarks (targets: book, Internals): ``python -m benchmarks.audit``.

* ``emit()`` cost per event (target ≤ 2 µs), with one and with three sinks,
  and on the overflow path (``DropOldest`` with a full buffer);
* sustained delivery rate to the SQL audit table (SQLite, PostgreSQL and,
  when reachable, MySQL/MariaDB) in events per second;
* time to drain 10 000 buffered events on ``stop()`` (bound: 10 s).

PostgreSQL uses ``AXESS_TEST_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``) and a throwaway schema;
MySQL uses ``AXESS_TEST_MYSQL_DSN`` (default ``mysql://root@127.0.0.1:3306/test``)
and a throwaway database. An unreachable server is reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from axess.audit import AuditPipeline, AuthEvent, DropOldest, StoreSink
from axess.audit.sinks import AuditSink
from axess.clock import MockClock, SeededRandom
from axess.stores import MemoryStore

TARGET_EMIT_US = 2.0
DRAIN_BOUND_S = 10.0
PG_DSN = os.environ.get("AXESS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_DSN = os.environ.get("AXESS_TEST_MYSQL_DSN", "mysql://root@127.0.0.1:3306/test")


class NullSink:
    def __init__(self, name: str, regulatory: bool = False) -> None:
        self.name = name
        self.regulatory = regulatory

    async def write(self, events: Any) -> None:
        return None


def make_events(n: int) -> list[AuthEvent]:
    clock, rnd = MockClock(), SeededRandom(1)
    out = []
    for i in range(n):
        clock.advance(0.0001)
        out.append(
            AuthEvent.create(
                "login_attempt",
                clock=clock,
                random=rnd,
                tenant=f"t{i % 7}",
                user=f"user{i}",
                ip="192.0.2.1",
                user_agent="Mozilla/5.0 (X11; Linux x86_64) bench",
                request_id=f"req-{i}",
                extras={"n": i},
            )
        )
    return out


_TMP = tempfile.TemporaryDirectory(prefix="axess-bench-audit-")


def pipeline(sinks: list[AuditSink], **kw: Any) -> AuditPipeline:
    """A pipeline with its own, fresh recovery log (nothing replayed)."""
    log = Path(_TMP.name) / f"recovery-{secrets.token_hex(4)}.jsonl"
    return AuditPipeline(
        sinks=sinks, clock=MockClock(), random=SeededRandom(0), recovery_log=log, **kw
    )


# -- emit cost -------------------------------------------------------------------------------
async def emit_cost(
    events: list[AuthEvent], sinks: int, *, full: bool = False, repeat: int = 5
) -> float:
    """Best µs per emit() over ``repeat`` runs, on a started pipeline (the timed
    loop never awaits, so the workers do not compete with it)."""
    n = len(events)
    best = float("inf")
    for _ in range(repeat):
        p = pipeline(
            [NullSink("sql", regulatory=True)] + [NullSink(f"a{i}") for i in range(sinks - 1)],
            max_buffer=1000 if full else n,
            batch_size=100,
            on_full=DropOldest() if full else None,
        )
        await p.start()
        if full:
            for e in events[:1000]:
                p.emit(e)
        emit = p.emit
        gc.collect()
        started = time.perf_counter()
        for e in events:
            emit(e)
        best = min(best, (time.perf_counter() - started) / n * 1e6)
        await p.stop()
    return best


def create_cost(n: int) -> float:
    clock, rnd = MockClock(), SeededRandom(2)
    started = time.perf_counter()
    for i in range(n):
        AuthEvent.create("logout", clock=clock, random=rnd, tenant="t", user=f"u{i}")
    return (time.perf_counter() - started) / n * 1e6


# -- stores -----------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def sqlite_store() -> AsyncIterator[Any]:
    from axess.stores.sql import SQLiteStore

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        await store.open()
        try:
            yield store
        finally:
            await store.close()


@contextlib.asynccontextmanager
async def opened(store: Any, drop: Callable[[], Awaitable[None]]) -> AsyncIterator[Any]:
    """``store`` opened (migrated); closed and its schema/database dropped afterwards."""
    try:
        await store.open()
        yield store
    finally:
        await store.close()
        with contextlib.suppress(Exception):
            await drop()


@contextlib.asynccontextmanager
async def postgres_store() -> AsyncIterator[Any]:
    import asyncpg

    from axess.stores.sql import PostgresStore

    schema = "axess_bench_audit_" + secrets.token_hex(3)

    async def drop() -> None:
        con = await asyncpg.connect(PG_DSN, timeout=3)
        try:
            await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await con.close()

    store = PostgresStore(PG_DSN, schema=schema, auto_migrate=True, connect_timeout=3)
    async with opened(store, drop) as ready:
        yield ready


@contextlib.asynccontextmanager
async def mysql_store() -> AsyncIterator[Any]:
    import aiomysql

    from axess.stores.sql import MySQLStore
    from axess.stores.sql.mysql import parse_mysql_dsn

    t = parse_mysql_dsn(MYSQL_DSN)
    db = "axess_bench_audit_" + secrets.token_hex(3)

    async def admin(sql: str) -> None:
        con = await aiomysql.connect(
            host=t.host, port=t.port, user=t.user, password=t.password, autocommit=True
        )
        try:
            async with con.cursor() as cur:
                await cur.execute(sql)
        finally:
            con.close()

    await admin(f"CREATE DATABASE `{db}`")
    base, _, _ = MYSQL_DSN.rpartition("/")
    store = MySQLStore(f"{base}/{db}", auto_migrate=True, connect_timeout=3)
    async with opened(store, lambda: admin(f"DROP DATABASE IF EXISTS `{db}`")) as ready:
        yield ready


STORES: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[Any]]] = {
    "SQLite": sqlite_store,
    "PostgreSQL": postgres_store,
    "MySQL/MariaDB": mysql_store,
}


async def sustained_rate(store: Any, events: list[AuthEvent], batch_size: int) -> float:
    """Events/s delivered while a producer emits in bursts of 1000 (far faster
    than any database: the buffer is sized to hold them all, so this is the
    sink's rate, not an overflow)."""
    p = pipeline(
        [StoreSink(store, name="sql")],
        batch_size=batch_size,
        flush_interval=0.05,
        max_buffer=len(events),
    )
    await p.start()
    started = time.perf_counter()
    for i in range(0, len(events), 1000):
        for e in events[i : i + 1000]:
            p.emit(e)
        await asyncio.sleep(0)
    await p.flush()
    elapsed = time.perf_counter() - started
    await p.stop()
    assert p.sink_stats("sql").delivered == len(events)
    return len(events) / elapsed


async def drain_time(store: Any, events: list[AuthEvent], batch_size: int) -> tuple[float, int]:
    """Seconds stop() takes with 10 000 events buffered; how many were recovered."""
    p = pipeline(
        [StoreSink(store, name="sql")],
        batch_size=batch_size,
        flush_interval=60.0,
        drain_timeout=DRAIN_BOUND_S,
    )
    await p.start()
    for e in events:
        p.emit(e)  # no await: all 10 000 are buffered when stop() begins
    started = time.perf_counter()
    await p.stop()
    return time.perf_counter() - started, p.sink_stats("sql").recovered


# -- report -------------------------------------------------------------------------------------
async def amain(args: argparse.Namespace) -> int:
    logging.getLogger("axess").setLevel(logging.ERROR)
    lines = [
        "# axess audit benchmarks",
        "",
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPU(s); emit(): best of {args.repeat}, started pipeline, no-op sinks.",
        "",
        "## emit() cost",
        "",
        "| case | µs per event | target |",
        "|---|---:|---:|",
    ]
    events = make_events(args.n)
    for label, sinks, full in (
        ("1 sink (regulatory)", 1, False),
        ("3 sinks (regulatory + 2 analytics)", 3, False),
        ("1 sink, buffer full, DropOldest", 1, True),
    ):
        cost = await emit_cost(events, sinks, full=full, repeat=args.repeat)
        verdict = "ok" if cost <= TARGET_EMIT_US else "MISSED"
        lines.append(f"| {label} | {cost:.3f} | ≤ {TARGET_EMIT_US:g} ({verdict}) |")
    lines.append(
        f"| (for reference) building an AuthEvent with create() | {create_cost(args.n):.3f} | - |"
    )
    lines += [
        "",
        "## SQL audit table",
        "",
        f"Sustained: {args.sustained} events emitted in bursts of 1000 while the pipeline "
        "delivers; drain: 10 000 events buffered, then `stop()` (bound "
        f"{DRAIN_BOUND_S:g} s).",
        "",
        "| store | batch size | sustained events/s | drain 10 000: seconds | recovered |",
        "|---|---:|---:|---:|---:|",
    ]
    sustained_events = make_events(args.sustained)
    drain_events = make_events(10_000)
    failed = False
    for name, factory in STORES.items():
        for batch in args.batch:
            try:
                async with factory() as store:
                    rate = await sustained_rate(store, sustained_events, batch)
                async with factory() as store:
                    seconds, recovered = await drain_time(store, drain_events, batch)
            except Exception as exc:  # an unreachable server: report and go on
                lines.append(f"| {name} | {batch} | skipped: {type(exc).__name__}: {exc} | | |")
                break
            failed |= recovered > 0
            lines.append(f"| {name} | {batch} | {rate:,.0f} | {seconds:.3f} | {recovered} |")
    lines.append("")
    lines.append(
        "`recovered` > 0 means the drain did not finish within the bound (events went to "
        "the recovery log)."
    )
    print("\n".join(lines))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.audit", description=__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="events for emit() timing")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sustained", type=int, default=50_000, help="events per SQL run")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[200, 1000], help="batch sizes (default 200 1000)"
    )
    args = parser.parse_args(argv)
    MemoryStore()  # import check: the package is importable
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
