"""The lockout substore on SQL (mixed into :class:`~axess.stores.sql.engine.SQLStore`).

One implementation for every dialect; only the insert-if-absent / upsert
suffixes, the row lock, the batched purge and a typed parameter differ, and
those come from the store's :class:`~axess.stores.sql.engine.Dialect`.

A failure is one transaction (one round trip per statement, no Python
between them but the state transition):

1. one multi-row ``INSERT`` makes sure every lever row exists
   (insert-if-absent, keys in sorted order: a fixed lock order, so two
   failures never deadlock each other);
2. one ``SELECT … FOR UPDATE`` (SQLite: the ``BEGIN IMMEDIATE`` write lock)
   reads and locks the lever rows and the origin row;
3. one ``UPDATE`` (a ``CASE`` per column) writes the states computed by
   :func:`~axess.stores.base.reserve_levers` — the rules memory and Valkey
   apply too. A refused reservation writes nothing.

Concurrent attempts serialize on the row locks, so no update is lost and no
more than ``threshold`` units of a lever are handed out in one window.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from axess.errors import StoreError
from axess.stores.base import (
    LOCKOUT,
    LeverSpec,
    LeverState,
    LockoutReservation,
    LockoutStatus,
    reserve_levers,
)
from axess.stores.sql.params import ms
from axess.stores.sql.part import SQLStorePart

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from axess.stores.sql.engine import Connection

T = TypeVar("T")

_COLS: Final = "lkey, failures, window_start, locked_until, lockouts, expires_at"
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


class SQLLockoutMixin(SQLStorePart):
    """Lockout methods of :class:`SQLStore` (see the module docstring)."""

    async def _lockout_op(self, what: str, body: Callable[[Connection], Awaitable[T]]) -> T:
        try:
            return await self._op(what, body, substore=LOCKOUT)
        except StoreError as exc:
            exc.substore = LOCKOUT
            raise

    def _select(self, n: int, *, lock: bool) -> str:
        marks = ", ".join("?" * n)
        suffix = self._dialect.row_lock if lock else ""
        return self._sql(
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

    async def _count(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float, all_or_nothing: bool
    ) -> LockoutReservation:
        specs = sorted(levers, key=lambda s: s.key)
        if not specs:
            return LockoutReservation({}, [])
        ignore = self._dialect.ignore_duplicate.format(first="lkey")
        insert = self._sql(
            f"INSERT INTO axess_lockouts ({_COLS}) VALUES "  # noqa: S608
            + ", ".join(["(?, 0, 0, 0, 0, 0)"] * len(specs))
            + ignore
        )
        wanted = sorted({*(s.key for s in specs), *([origin] if origin else [])})
        select = self._select(len(wanted), lock=True)
        t = ms(now) / 1000  # the resolution rows are stored in

        async def steps(conn: Connection) -> LockoutReservation:
            await conn.run(insert, [s.key for s in specs])
            rows = (await conn.run(select, wanted, fetch=True)).rows
            states = {s.key: s for s in map(_state, rows)}
            o = states.get(origin) if origin else None
            trusted = o is not None and o.expires_at > t
            result = reserve_levers(specs, states, trusted, t, all_or_nothing=all_or_nothing)
            if result.states:
                sql, args = self._update_states(result.states)
                await conn.run(sql, args)
            return result

        async def body(conn: Connection) -> LockoutReservation:
            return await self._transaction(conn, self._dialect.begin, lambda: steps(conn))

        result = await self._lockout_op("lockout_reserve", body)
        by_key = {s.key: s for s in result.states}
        ordered = [by_key[s.key] for s in levers if s.key in by_key]
        return LockoutReservation(result.locked_until, ordered, result.trusted)

    def _update_states(self, states: Sequence[LeverState]) -> tuple[str, list[object]]:
        """One ``UPDATE`` writing every state (a ``CASE`` per column)."""
        cast = self._dialect.int_param
        columns: list[str] = []
        args: list[object] = []
        for column, value in (
            ("failures", lambda st: st.failures),
            ("window_start", lambda st: ms(st.window_start)),
            ("locked_until", lambda st: ms(st.locked_until)),
            ("lockouts", lambda st: st.lockouts),
            ("expires_at", lambda st: ms(st.expires_at)),
        ):
            whens = " ".join(f"WHEN ? THEN {cast}" for _ in states)
            columns.append(f"{column} = CASE lkey {whens} END")
            for st in states:
                args += [st.key, value(st)]
        marks = ", ".join("?" * len(states))
        args += [st.key for st in states]
        sql = f"UPDATE axess_lockouts SET {', '.join(columns)} WHERE lkey IN ({marks})"  # noqa: S608
        return self._sql(sql), args

    async def lockout_failure(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float
    ) -> list[LeverState]:
        """Count one failure on every lever in one transaction (see module docstring)."""
        return (await self._count(levers, origin, now, False)).states

    async def lockout_reserve(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float
    ) -> LockoutReservation:
        """Take one unit of every lever's budget, all or nothing, in one transaction."""
        return await self._count(levers, origin, now, True)

    async def lockout_success(
        self,
        reset: Sequence[str],
        origin: str | None,
        trusted_until: float,
        now: float,
        release: Sequence[tuple[str, float]] = (),
    ) -> None:
        """Delete the ``reset`` counters, trust ``origin`` and hand back the
        ``release`` units (:func:`~axess.stores.base.release_unit`), in one
        transaction."""
        keys = sorted(set(reset))
        delete = self._sql(
            f"DELETE FROM axess_lockouts WHERE lkey IN ({', '.join('?' * len(keys))})"  # noqa: S608
        )
        upsert = self._sql(
            f"INSERT INTO axess_lockouts ({_COLS}) VALUES (?, 0, 0, 0, 0, ?)"  # noqa: S608
            + self._dialect.upsert_column.format(key="lkey", col="expires_at")
        )
        # A unit listed k times is k units handed back (the password and the
        # code step of one login reserve one each, in the same window): one
        # UPDATE would match its row once, so each row drops by its count,
        # never below zero (release_unit applied k times).
        units = sorted(Counter((k, ms(w)) for k, w in release).items())
        cast = self._dialect.int_param
        match = "lkey = ? AND window_start = ?"
        drops = " ".join(
            f"WHEN {match} THEN CASE WHEN failures > {cast} THEN failures - {cast} ELSE 0 END"
            for _ in units
        )
        matches = " OR ".join([f"({match})"] * len(units))
        # release_unit as one statement: same window, not locked, still alive.
        give_back = self._sql(
            f"UPDATE axess_lockouts SET failures = CASE {drops} ELSE failures END "  # noqa: S608
            f"WHERE failures > 0 AND locked_until <= ? AND expires_at > ? AND ({matches})"
        )
        n = ms(now)
        unit_args: list[object] = []
        for (key, window_ms), count in units:
            unit_args += [key, window_ms, count, count]
        unit_args += [n, n]
        for (key, window_ms), _ in units:
            unit_args += [key, window_ms]

        # Lock the rows in key order first, the order a reservation takes
        # them in, so the two never deadlock.
        locked = sorted({*keys, *(k for (k, _), _ in units), *([origin] if origin else [])})
        lock = self._select(len(locked), lock=True)

        async def steps(conn: Connection) -> None:
            if units and self._dialect.row_lock:
                await conn.run(lock, locked, fetch=True)
            if keys:
                await conn.run(delete, keys)
            if units:
                await conn.run(give_back, unit_args)
            if origin:
                await conn.run(upsert, (origin, ms(trusted_until)))

        async def body(conn: Connection) -> None:
            await self._transaction(conn, self._dialect.begin, lambda: steps(conn))

        await self._lockout_op("lockout_success", body)

    async def lockout_clear(self, keys: Sequence[str]) -> int:
        """Delete these counters / origins; how many existed. The all-zero
        rows a reservation inserts to lock on (and leaves for levers it
        skipped or refused) are deleted too, but were never counters."""
        wanted = sorted(set(keys))
        if not wanted:
            return 0
        where = f"lkey IN ({', '.join('?' * len(wanted))})"
        kept = self._sql(f"DELETE FROM axess_lockouts WHERE {where} AND expires_at > 0")  # noqa: S608
        rest = self._sql(f"DELETE FROM axess_lockouts WHERE {where}")  # noqa: S608

        async def body(conn: Connection) -> int:
            count = (await conn.run(kept, wanted)).rowcount
            await conn.run(rest, wanted)
            return count

        return await self._lockout_op("lockout_clear", body)

    async def lockout_state(self, key: str, now: float) -> LeverState | None:
        sql = self._sql(f"SELECT {_COLS} FROM axess_lockouts WHERE lkey = ? AND expires_at > ?")  # noqa: S608

        async def body(conn: Connection) -> LeverState | None:
            rows = (await conn.run(sql, (key, ms(now)), fetch=True)).rows
            return _state(rows[0]) if rows else None

        return await self._lockout_op("lockout_state", body)

    async def purge_expired_lockouts(self, now: float) -> int:
        """Delete dead counters and expired trusted origins, in batches; the count."""
        sql = self._sql(
            self._dialect.purge_batch.format(table="axess_lockouts", key="lkey", col="expires_at")
        )

        async def batch(conn: Connection) -> int:
            return (await conn.run(sql, (ms(now), _PURGE_BATCH))).rowcount

        total = 0
        while True:
            deleted = await self._lockout_op("purge_expired_lockouts", batch)
            total += deleted
            if deleted < _PURGE_BATCH:
                return total
