"""Bucket stores: where the GCRA state (one TAT per key and limit) lives.

* :class:`MemoryBucketStore`: this process only. Bounded, evicts idle keys,
  uses the injected clock's monotonic time. Right for one process; with
  several workers or instances every process has its own buckets, and a
  client spreading requests over them gets the limit once per process.
* :class:`~axess.stores.valkey_buckets.ValkeyBucketStore` (also importable
  from :mod:`axess.ratelimit`): shared by every instance. One ``EVALSHA``
  per check, covering every limit of every rule the request matches, timed
  by the server's ``TIME`` (so app instances with skewed clocks agree). It
  lives with the stores, since it is one.

Both admit a request only if it conforms to every limit checked together,
and a refused request costs nothing.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final, Protocol, runtime_checkable

from axess.clock import Clock, SystemClock
from axess.errors import ConfigurationError
from axess.observability.health import HealthStatus
from axess.ratelimit import gcra
from axess.ratelimit.gcra import LimitState

logger = logging.getLogger(__name__)

RATELIMIT: Final = "ratelimit"


class BucketSpec(Protocol):
    """What a store needs of a rule (:class:`~axess.ratelimit.RateLimit` fits)."""

    @property
    def params(self) -> tuple[tuple[int, int, int], ...]:
        """``(emission_us, capacity_us, cost)`` per limit."""

    @property
    def signatures(self) -> tuple[str, ...]:
        """Per limit, a short id telling its bucket apart within the key."""


#: One bucket to check: ``(key, spec)``; the key already names the policy.
Bucket = tuple[str, BucketSpec]
#: ``(allowed, states)``: one :class:`LimitState` per limit, in bucket order.
CheckResult = tuple[bool, list[LimitState]]


@runtime_checkable
class BucketStore(Protocol):
    """Keeps rate-limit buckets.

    ``check`` admits the request only if it conforms to every limit of
    every bucket, advancing them all together (atomically), and returns the
    per-limit states. Failures raise :class:`StoreError`, never a driver
    exception. ``local`` is ``True`` for stores whose state is private to
    the process.
    """

    local: bool

    async def check(self, buckets: Sequence[Bucket]) -> CheckResult: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...


class MemoryBucketStore:
    """Buckets in this process's memory.

    At most ``max_keys`` buckets are kept (one per key and limit: a rule
    with two limits takes two). They are ordered by last admission;
    each new one first drops up to two of the oldest if they are full
    again (idle: forgetting them changes nothing). When the store is
    still full, the least recently admitted key is forgotten anyway (that
    client gets a fresh bucket) and a WARNING is logged once: raise
    ``max_keys``. Safe under asyncio and threads (one short lock).
    """

    local = True

    def __init__(self, *, clock: Clock | None = None, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ConfigurationError("max_keys must be >= 1")
        self._clock = clock or SystemClock()
        self.max_keys = max_keys
        self._data: OrderedDict[str, int] = OrderedDict()  # bucket|limit -> TAT
        self._lock = threading.Lock()
        self._warned_full = False

    def __len__(self) -> int:
        """How many keys the store holds."""
        return len(self._data)

    def __bool__(self) -> bool:
        # Truthy even when empty, like MemoryStore: ``store or default``
        # must never swap an empty store for another.
        return True

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def check_health(self) -> HealthStatus:
        return HealthStatus.healthy()

    async def check(self, buckets: Sequence[Bucket]) -> CheckResult:
        return self.check_sync(buckets)

    def check_sync(self, buckets: Sequence[Bucket]) -> CheckResult:
        """:meth:`check` without the coroutine (never blocks)."""
        now = round(self._clock.monotonic() * 1_000_000)
        # One TAT per limit, keyed by the bucket key and the limit's
        # signature (as in Valkey): two rules sharing a name keep apart
        # buckets for different limits instead of resetting each other's.
        data = self._data
        with self._lock:
            if len(buckets) == 1 and len(buckets[0][1].params) == 1:  # the common case
                key, spec = buckets[0]
                key = f"{key}|{spec.signatures[0]}"
                emission, capacity, cost = spec.params[0]
                allowed, new_tat, state = gcra.check_one(
                    data.get(key, 0), now, emission, capacity, cost
                )
                if allowed:
                    self._put(key, new_tat, now)
                return allowed, [state]
            keys = [f"{key}|{sig}" for key, spec in buckets for sig in spec.signatures]
            params = [p for _, spec in buckets for p in spec.params]
            allowed, new_tats, states = gcra.check([data.get(k, 0) for k in keys], now, params)
            if allowed:
                for key, tat in zip(keys, new_tats, strict=True):
                    self._put(key, tat, now)
            return allowed, states

    def _put(self, key: str, tat: int, now: int) -> None:
        data = self._data
        if key in data:
            data[key] = tat
            data.move_to_end(key)
            return
        for _ in range(2):  # amortized sweep of idle keys, oldest first
            if not data:
                break
            oldest = next(iter(data))
            if data[oldest] > now:
                break
            del data[oldest]
        if len(data) >= self.max_keys:
            data.popitem(last=False)
            if not self._warned_full:
                self._warned_full = True
                logger.warning(
                    "MemoryBucketStore is full (max_keys=%d): forgetting live buckets of the "
                    "least recently seen clients; raise max_keys or use ValkeyBucketStore",
                    self.max_keys,
                )
        data[key] = tat

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
