"""Counting store calls and server-side commands per request (never in timed loops)."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

from axess.stores.base import NOT_NOW

#: Store methods that write (axess session substore).
AXESS_WRITES = ("create_session", "save_session", "cycle_session", "delete_session")


class CallCounter:
    """Wraps any store and counts calls to its public coroutine methods.

    Everything else is delegated unchanged, so ``isinstance(proxy,
    SessionStore)`` (a runtime-checkable protocol) still holds.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        calls = self.calls
        if name == "load_session_now":  # the immediate read: a load when it answers

            @functools.wraps(attr)
            def counted_now(*args: Any, **kwargs: Any) -> Any:
                found = attr(*args, **kwargs)
                if found is not NOT_NOW:
                    calls["load_session"] += 1
                return found

            return counted_now
        if name.startswith("_") or not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return await attr(*args, **kwargs)

        return counted


class CommandCounter(Protocol):
    """Counts what a backend server executes while ``run`` runs."""

    #: How the counting is done, for the report ("server INFO commandstats"…).
    source: str

    async def measure(self, run: Callable[[], Awaitable[None]]) -> Counter[str]: ...


class ValkeyCommandCounter:
    """Server-side command counts from ``INFO commandstats`` deltas."""

    source = "server INFO commandstats"

    def __init__(self, admin: Any) -> None:
        self._admin = admin  # a synchronous valkey.Valkey client

    def _snapshot(self) -> Counter[str]:
        stats = self._admin.info("commandstats")
        out: Counter[str] = Counter()
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_").upper()
            out[name] = int(value["calls"])
        return out

    async def measure(self, run: Callable[[], Awaitable[None]]) -> Counter[str]:
        before = self._snapshot()
        await run()
        after = self._snapshot()
        delta = after - before
        # Our own INFO call lands in the stats of the *next* snapshot.
        delta.pop("INFO", None)
        return delta


class ValkeyClientCounter:
    """Client-side command counts of one opened ``ValkeyStore``: each command
    it sends is one round trip (commands run inside a script are not, so
    unlike ``INFO commandstats`` they are not counted)."""

    source = "client-side ValkeyStore commands"

    def __init__(self, store: Any) -> None:
        self._store = store

    async def measure(self, run: Callable[[], Awaitable[None]]) -> Counter[str]:
        counter: Counter[str] = Counter()
        real = self._store._exec

        async def counted(*args: Any) -> Any:
            counter[str(args[0]).upper()] += 1
            return await real(*args)

        self._store._exec = counted
        try:
            await run()
        finally:
            self._store._exec = real
        return counter


_CONNECTION_METHODS = ("execute", "executemany", "fetch", "fetchrow", "fetchval", "fetchmany")
_PREPARED_METHODS = ("fetch", "fetchrow", "fetchval", "executemany", "fetchmany")


def _verb(query: object) -> str:
    words = str(query).split(None, 1)
    return words[0].upper().rstrip(";") if words else "?"


@contextlib.contextmanager
def _patched_asyncpg(counter: Counter[str]) -> Iterator[None]:
    """Count every statement sent through asyncpg (pool proxies call the
    patched ``Connection`` methods). Restores the originals on exit."""
    from asyncpg.connection import Connection
    from asyncpg.prepared_stmt import PreparedStatement

    patched: list[tuple[type, str, Any]] = []

    def wrap(cls: type, name: str, kind: str) -> None:
        original = cls.__dict__.get(name)
        if original is None:
            return

        @functools.wraps(original)
        async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            if kind == "prepare":
                counter["PREPARE"] += 1
            elif kind == "prepared":
                counter[_verb(self.get_query())] += 1
            else:
                counter[_verb(args[0] if args else kwargs.get("query", ""))] += 1
            return await original(self, *args, **kwargs)

        patched.append((cls, name, original))
        setattr(cls, name, counted)

    for name in _CONNECTION_METHODS:
        wrap(Connection, name, "query")
    for name in _PREPARED_METHODS:
        wrap(PreparedStatement, name, "prepared")
    wrap(Connection, "prepare", "prepare")
    try:
        yield
    finally:
        for cls, name, original in reversed(patched):
            setattr(cls, name, original)


class AsyncpgStatementCounter:
    """Client-side statement counts: every asyncpg query call, by SQL verb
    (``PREPARE`` counts a statement preparation, also a round trip)."""

    source = "client-side asyncpg calls"

    async def measure(self, run: Callable[[], Awaitable[None]]) -> Counter[str]:
        counter: Counter[str] = Counter()
        with _patched_asyncpg(counter):
            await run()
        return counter


class PgStatStatementsCounter:
    """Server-side counts from ``pg_stat_statements`` (when the extension is
    loaded and installed in the database), restricted to statements whose
    text contains ``marker`` (axess's table prefix). Other axess activity on
    the same database during the count (a concurrent test run) is counted too."""

    source = "server pg_stat_statements"

    def __init__(self, conn: Any, marker: str) -> None:
        self._conn = conn  # an asyncpg connection not used by the store
        self._marker = marker

    async def _snapshot(self) -> dict[int, tuple[str, int]]:
        rows = await self._conn.fetch(
            "SELECT queryid, query, calls FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND strpos(query, $1) > 0 AND strpos(query, 'pg_stat_statements') = 0",
            self._marker,
        )
        return {int(r["queryid"]): (str(r["query"]), int(r["calls"])) for r in rows}

    async def measure(self, run: Callable[[], Awaitable[None]]) -> Counter[str]:
        before = await self._snapshot()
        await run()
        after = await self._snapshot()
        out: Counter[str] = Counter()
        for qid, (query, calls) in after.items():
            delta = calls - before.get(qid, ("", 0))[1]
            if delta > 0:
                out[_verb(query)] += delta
        return out

    @staticmethod
    async def available(conn: Any) -> bool:
        try:
            await conn.fetchval("SELECT count(*) FROM pg_stat_statements")
        except Exception:
            return False
        return True


def per_request(counts: Counter[str], requests: int) -> str:
    """``"HGETALL 1.00"``-style summary, busiest first; ``"0"`` when empty."""
    if not counts:
        return "0"
    parts = [f"{name} {n / requests:.2f}" for name, n in counts.most_common()]
    return ", ".join(parts)
