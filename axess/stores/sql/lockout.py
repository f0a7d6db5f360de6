"""The lockout substore on SQL (mixed into :class:`~axess.stores.sql.engine.SQLStore`).

One implementation for every dialect; only the insert-if-absent / upsert
suffixes, the row lock and the batched purge differ (:data:`_FRAGMENTS`).

A failure is one transaction (one round trip per statement, no Python
between them but the state transition):

1. one multi-row ``INSERT`` makes sure every lever row exists
   (insert-if-absent, keys in sorted order: a fixed lock order, so two
   failures never deadlock each other);
2. one ``SELECT … FOR UPDATE`` (SQLite: the ``BEGIN IMMEDIATE`` write lock)
   reads and locks the lever rows and the origin row;
3. one ``UPDATE`` per lever writes the state computed by
   :func:`~axess.stores.base.apply_failure` — the rules memory and Valkey
   apply too.

Concurrent failures serialize on the row locks, so no update is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from axess.errors import StoreError
from axess.stores.base import LOCKOUT, LeverSpec, LeverState, LockoutStatus, apply_failure
from axess.stores.sql.params import ms, placeholders

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from axess.stores.sql.engine import Connection, Dialect

T = TypeVar("T")

_COLS: Final = "lkey, failures, window_start, locked_until, lockouts, expires_at"
#: dialect -> (insert-if-absent suffix, origin upsert suffix, row lock, purge batch)
_FRAGMENTS: Final[dict[str, tuple[str, str, str, str]]] = {
    "sqlite": (
        " ON CONFLICT (lkey) DO NOTHING",
        " ON CONFLICT (lkey) DO UPDATE SET expires_at = excluded.expires_at",
        "",
        "DELETE FROM axess_lockouts WHERE lkey IN "
        "(SELECT lkey FROM axess_lockouts WHERE expires_at <= ? LIMIT ?)",
    ),
    "postgres": (
        " ON CONFLICT (lkey) DO NOTHING",
        " ON CONFLICT (lkey) DO UPDATE SET expires_at = excluded.expires_at",
        " FOR UPDATE",
        "DELETE FROM axess_lockouts WHERE lkey IN "
        "(SELECT lkey FROM axess_lockouts WHERE expires_at <= ? LIMIT ?)",
    ),
    "mysql": (
        " ON DUPLICATE KEY UPDATE lkey = lkey",
        " ON DUPLICATE KEY UPDATE expires_at = VALUES(expires_at)",
        " FOR UPDATE",
        "DELETE FROM axess_lockouts WHERE expires_at <= ? LIMIT ?",
    ),
}
_PURGE_BATCH: Final = 1000


def _state(row: Sequence[Any]) -> LeverState:
    return LeverState(
        key=str(row[0]),
        failures=int(row[1]),
        window_start=int(row[2]) / 1000,
        locked_until=int(row[3]) / 1000,
        lockouts=int(row[4]),
        expires_at=int(row[5]) / 1000,
    )


class SQLLockoutMixin:
    """Lockout methods of :class:`SQLStore` (see the module docstring)."""

    if TYPE_CHECKING:
        name: str
        _dialect: Dialect

        async def _op(
            self, what: str, body: Callable[[Connection], Awaitable[T]], *, log: bool = True
        ) -> T: ...

        async def _transaction(
            self, conn: Connection, begin: str, body: Callable[[], Awaitable[T]]
        ) -> T: ...

    def _lq(self, sql: str) -> str:
        return placeholders(sql, self._dialect.paramstyle)

    def _fragments(self) -> tuple[str, str, str, str]:
        return _FRAGMENTS.get(self._dialect.name, _FRAGMENTS["postgres"])

    async def _lockout_op(self, what: str, body: Callable[[Connection], Awaitable[T]]) -> T:
        try:
            return await self._op(what, body)
        except StoreError as exc:
            exc.substore = LOCKOUT
            raise

    def _select(self, n: int, *, lock: bool) -> str:
        marks = ", ".join("?" * n)
        suffix = self._fragments()[2] if lock else ""
        return self._lq(
            f"SELECT {_COLS} FROM axess_lockouts WHERE lkey IN ({marks}) "  # noqa: S608
            f"ORDER BY lkey{suffix}"
        )

    async def lockout_status(
        self, keys: Sequence[str], origin: str | None, now: float
    ) -> LockoutStatus:
        """Locked keys and origin trust: one ``SELECT``."""
        wanted = sorted({*keys, *([origin] if origin else [])})
        sql = self._select(len(wanted), lock=False)

        async def body(conn: Connection) -> LockoutStatus:
            rows = (await conn.run(sql, wanted, fetch=True)).rows
            states = {s.key: s for s in map(_state, rows)}
            n = ms(now) / 1000
            locked = {
                k: s.locked_until for k, s in states.items() if k in keys and s.locked_until > n
            }
            o = states.get(origin) if origin else None
            return LockoutStatus(locked, o is not None and o.expires_at > n)

        return await self._lockout_op("lockout_status", body)

    async def lockout_failure(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float
    ) -> list[LeverState]:
        """Count one failure on every lever in one transaction (see module docstring)."""
        specs = sorted(levers, key=lambda s: s.key)
        if not specs:
            return []
        ignore = self._fragments()[0]
        insert = self._lq(
            f"INSERT INTO axess_lockouts ({_COLS}) VALUES "  # noqa: S608
            + ", ".join(["(?, 0, 0, 0, 0, 0)"] * len(specs))
            + ignore
        )
        wanted = sorted({*(s.key for s in specs), *([origin] if origin else [])})
        select = self._select(len(wanted), lock=True)
        update = self._lq(
            "UPDATE axess_lockouts SET failures = ?, window_start = ?, locked_until = ?, "
            "lockouts = ?, expires_at = ? WHERE lkey = ?"
        )
        t = ms(now) / 1000  # the resolution rows are stored in

        async def steps(conn: Connection) -> list[LeverState]:
            await conn.run(insert, [s.key for s in specs])
            rows = (await conn.run(select, wanted, fetch=True)).rows
            states = {s.key: s for s in map(_state, rows)}
            o = states.get(origin) if origin else None
            trusted = o is not None and o.expires_at > t
            out: list[LeverState] = []
            for spec in specs:
                if spec.exempt_if_trusted and trusted:
                    continue
                new = apply_failure(spec, states.get(spec.key), t)
                args = (
                    new.failures,
                    ms(new.window_start),
                    ms(new.locked_until),
                    new.lockouts,
                    ms(new.expires_at),
                    spec.key,
                )
                await conn.run(update, args)
                out.append(new)
            return out

        async def body(conn: Connection) -> list[LeverState]:
            return await self._transaction(conn, self._dialect.begin, lambda: steps(conn))

        by_key = {s.key: s for s in await self._lockout_op("lockout_failure", body)}
        return [by_key[s.key] for s in levers if s.key in by_key]

    async def lockout_success(
        self, reset: Sequence[str], origin: str | None, trusted_until: float, now: float
    ) -> None:
        """Delete the ``reset`` counters and trust ``origin``, in one transaction."""
        keys = sorted(set(reset))
        delete = self._lq(
            f"DELETE FROM axess_lockouts WHERE lkey IN ({', '.join('?' * len(keys))})"  # noqa: S608
        )
        upsert = self._lq(
            f"INSERT INTO axess_lockouts ({_COLS}) VALUES (?, 0, 0, 0, 0, ?)"  # noqa: S608
            + self._fragments()[1]
        )

        async def steps(conn: Connection) -> None:
            if keys:
                await conn.run(delete, keys)
            if origin:
                await conn.run(upsert, (origin, ms(trusted_until)))

        async def body(conn: Connection) -> None:
            await self._transaction(conn, self._dialect.begin, lambda: steps(conn))

        await self._lockout_op("lockout_success", body)

    async def lockout_clear(self, keys: Sequence[str]) -> int:
        """Delete these counters / origins; how many rows existed."""
        wanted = sorted(set(keys))
        if not wanted:
            return 0
        sql = self._lq(
            f"DELETE FROM axess_lockouts WHERE lkey IN ({', '.join('?' * len(wanted))})"  # noqa: S608
        )

        async def body(conn: Connection) -> int:
            return (await conn.run(sql, wanted)).rowcount

        return await self._lockout_op("lockout_clear", body)

    async def lockout_state(self, key: str, now: float) -> LeverState | None:
        sql = self._lq(f"SELECT {_COLS} FROM axess_lockouts WHERE lkey = ? AND expires_at > ?")  # noqa: S608

        async def body(conn: Connection) -> LeverState | None:
            rows = (await conn.run(sql, (key, ms(now)), fetch=True)).rows
            return _state(rows[0]) if rows else None

        return await self._lockout_op("lockout_state", body)

    async def purge_expired_lockouts(self, now: float) -> int:
        """Delete dead counters and expired trusted origins, in batches; the count."""
        sql = self._lq(self._fragments()[3])

        async def batch(conn: Connection) -> int:
            return (await conn.run(sql, (ms(now), _PURGE_BATCH))).rowcount

        total = 0
        while True:
            deleted = await self._lockout_op("purge_expired_lockouts", batch)
            total += deleted
            if deleted < _PURGE_BATCH:
                return total
