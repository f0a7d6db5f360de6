"""Injectable time and randomness.

Every time-dependent decision in axess reads a :class:`Clock`; every id or
nonce comes from a :class:`Random`. Tests drive both deterministically with
:class:`MockClock` and :class:`SeededRandom`.
"""

from __future__ import annotations

import math
import random as _random
import secrets
import time as _time
from typing import Final, Protocol, runtime_checkable

from axess.errors import ConfigurationError


@runtime_checkable
class Clock(Protocol):
    """Source of time. ``time()`` is epoch seconds; ``monotonic()`` never goes back."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


@runtime_checkable
class Random(Protocol):
    """Source of unpredictable bytes for ids, nonces and tokens."""

    def token_bytes(self, n: int) -> bytes: ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    # The C functions themselves, not wrappers: ``clock.time()`` runs on every
    # request, and a static C function costs no Python frame.
    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)


class MockClock:
    """A clock that only moves when told to. Starts at a fixed, realistic epoch."""

    __slots__ = ("_mono", "_now")

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = float(start)
        self._mono = 0.0

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` (must be >= 0)."""
        if seconds < 0:
            raise ValueError("MockClock cannot go backwards; use set() for wall-clock jumps")
        self._now += seconds
        self._mono += seconds

    def set(self, epoch_seconds: float) -> None:
        """Jump the wall clock (the monotonic clock is unaffected)."""
        self._now = float(epoch_seconds)


class SystemRandom:
    """Cryptographically secure randomness from :mod:`secrets`."""

    __slots__ = ()

    def token_bytes(self, n: int) -> bytes:
        return secrets.token_bytes(n)


class SeededRandom:
    """Deterministic randomness for tests only. Never use it in production."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = _random.Random(seed)

    def token_bytes(self, n: int) -> bytes:
        return self._rng.randbytes(n)


#: The longest duration a setting may have: a century. Every store keeps
#: times as integer milliseconds; a longer one, or infinity, fits none of
#: them alike (SQLite's integers end in the year 292 million, Valkey's
#: expiries refuse it, memory would keep it).
MAX_DURATION: Final = 100 * 366 * 86_400.0


def check_duration(value: float, what: str, *, zero: bool = False) -> None:
    """Raises :class:`ConfigurationError`, naming ``what``, unless ``value``
    is a number of seconds above zero (or zero, with ``zero``) and at most
    :data:`MAX_DURATION`."""
    low_ok = value >= 0 if zero else value > 0
    if isinstance(value, bool) or not (math.isfinite(value) and low_ok):
        least = "0" if zero else "more than 0"
        raise ConfigurationError(f"{what} must be {least} seconds, not {value!r}")
    if value > MAX_DURATION:
        raise ConfigurationError(f"{what} must be at most {MAX_DURATION:.0f} seconds (a century)")
