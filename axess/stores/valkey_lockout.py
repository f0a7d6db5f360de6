"""The lockout substore on Valkey (mixed into :class:`~axess.stores.valkey.ValkeyStore`).

Layout under the store prefix: ``<prefix>l:<lever key>`` hashes (``f``
failures, ``w`` window start, ``u`` locked until, ``n`` lockouts, ``e``
expires at; epoch milliseconds) and trusted origins as hashes with only
``e``. Each pre-check, failure and success is one ``EVALSHA`` of
``lua/lockout.lua`` (re-loaded after ``NOSCRIPT``); the script applies the
same transition as :func:`axess.stores.base.apply_failure`. Liveness is
decided by the caller's ``now``; native TTLs (relative) only free memory, so
:meth:`purge_expired_lockouts` has nothing to do and returns 0.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, cast

from axess.stores.base import LOCKOUT, LeverSpec, LeverState, LockoutReservation, LockoutStatus


class _LockoutScript:
    __slots__ = ("body", "name", "sha")

    def __init__(self) -> None:
        self.name = "lockout"
        self.body = resources.files("axess.stores").joinpath("lua", "lockout.lua").read_bytes()
        self.sha = hashlib.sha1(self.body, usedforsecurity=False).hexdigest()


_SCRIPT: Final = _LockoutScript()


def _ms(seconds: float) -> int:
    if not math.isfinite(seconds):
        raise ValueError("lockout times must be finite")
    return round(seconds * 1000)


def _num(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


class ValkeyLockoutMixin:
    """Lockout methods of :class:`ValkeyStore` (see the module docstring)."""

    if TYPE_CHECKING:

        @property
        def prefix(self) -> str: ...

        async def run_script(
            self,
            script: Any,
            keys: Sequence[str],
            args: Iterable[str | bytes],
            *,
            substore: str = ...,
        ) -> Any: ...

        async def _call(self, op: str, *args: Any, substore: str = ...) -> Any: ...

    def _lkey(self, key: str) -> str:
        return f"{self.prefix}l:{key}"

    async def _lockout(self, keys: Sequence[str], args: list[str]) -> Any:
        return await self.run_script(_SCRIPT, [self._lkey(k) for k in keys], args, substore=LOCKOUT)

    async def lockout_status(
        self, keys: Sequence[str], origin: str | None, now: float
    ) -> LockoutStatus:
        """One ``EVALSHA``: locked_until of each key and the origin's trust."""
        names = [*keys, *([origin] if origin else [])]
        reply = cast(
            list[int], await self._lockout(names, ["status", str(_ms(now)), "1" if origin else "0"])
        )
        locked = {k: int(u) / 1000 for k, u in zip(keys, reply, strict=False) if int(u)}
        return LockoutStatus(locked, bool(int(reply[-1])) if origin else False)

    async def _count(
        self, op: str, levers: Sequence[LeverSpec], origin: str | None, now: float
    ) -> LockoutReservation:
        if not levers:
            return LockoutReservation({}, [])
        args = [op, str(_ms(now)), "1" if origin else "0"]
        for s in levers:
            args += [
                str(s.threshold),
                str(_ms(s.window)),
                str(_ms(s.lock_for)),
                _num(s.backoff),
                str(_ms(s.max_lock)),
                "1" if s.exempt_if_trusted else "0",
            ]
        names = [*(s.key for s in levers), *([origin] if origin else [])]
        head, *rows = cast(list[list[int]], await self._lockout(names, args))
        refused, trusted = int(head[0]), bool(int(head[1]))
        if refused:
            locked = {
                spec.key: int(row[3]) / 1000
                for spec, row in zip(levers, rows, strict=False)
                if int(row[3])
            }
            return LockoutReservation(locked, [], trusted)
        out: list[LeverState] = []
        for spec, row in zip(levers, rows, strict=False):
            applied, f, w, u, n, e, tripped = (int(v) for v in row)
            if applied:
                out.append(LeverState(spec.key, f, w / 1000, u / 1000, n, e / 1000, bool(tripped)))
        return LockoutReservation({}, out, trusted)

    async def lockout_failure(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float
    ) -> list[LeverState]:
        """One ``EVALSHA`` applying one failure to every lever atomically."""
        return (await self._count("fail", levers, origin, now)).states

    async def lockout_reserve(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float
    ) -> LockoutReservation:
        """One ``EVALSHA`` taking one unit of every lever's budget, all or nothing."""
        return await self._count("reserve", levers, origin, now)

    async def lockout_success(
        self,
        reset: Sequence[str],
        origin: str | None,
        trusted_until: float,
        now: float,
        release: Sequence[tuple[str, float]] = (),
    ) -> None:
        """One ``EVALSHA``: delete the ``reset`` counters, hand back the
        ``release`` units, trust ``origin``."""
        names = [*reset, *(k for k, _ in release), *([origin] if origin else [])]
        if not names:
            return
        args = [
            "success",
            str(_ms(now)),
            "1" if origin else "0",
            str(_ms(trusted_until)),
            str(len(release)),
            *(str(_ms(w)) for _, w in release),
        ]
        await self._lockout(names, args)

    async def lockout_clear(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        names = [self._lkey(k) for k in dict.fromkeys(keys)]
        return int(await self._call("lockout_clear", "DEL", *names, substore=LOCKOUT))

    async def lockout_state(self, key: str, now: float) -> LeverState | None:
        raw = await self._call(
            "lockout_state", "HMGET", self._lkey(key), "f", "w", "u", "n", "e", substore=LOCKOUT
        )
        f, w, u, n, e = cast(list[bytes | None], raw)
        if e is None or int(e) <= _ms(now) or f is None:
            return None
        return LeverState(
            key, int(f), int(w or 0) / 1000, int(u or 0) / 1000, int(n or 0), int(e) / 1000
        )

    async def purge_expired_lockouts(self, now: float) -> int:
        """Nothing to do: native TTLs remove dead counters. Always 0."""
        return 0
