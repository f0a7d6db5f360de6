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

    At most ``max_keys`` keys are kept. Keys are ordered by last admission;
    each new key first drops up to two of the oldest if their buckets are
    full again (idle: forgetting them changes nothing). When the store is
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
        self._data: OrderedDict[str, list[int]] = OrderedDict()
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
        data = self._data
        lock = self._lock
        lock.acquire()
        try:
            if len(buckets) == 1:
                key, spec = buckets[0]
                params = spec.params
                tats = data.get(key)
                if len(params) == 1:  # the common case, without lists
                    emission, capacity, cost = params[0]
                    if tats is not None and len(tats) != 1:
                        tats = None  # written by a rule with other limits: start afresh
                    tat = tats[0] if tats is not None else 0
                    allowed, new_tat, state = gcra.check_one(tat, now, emission, capacity, cost)
                    if allowed:
                        if tats is not None:
                            tats[0] = new_tat
                            data.move_to_end(key)
                        else:
                            self._put(key, [new_tat], now)
                    return allowed, [state]
                if tats is None or len(tats) != len(params):
                    tats = [0] * len(params)
                allowed, new_tats, states = gcra.check(tats, now, params)
                if allowed:
                    self._put(key, new_tats, now)
                return allowed, states
            flat_tats: list[int] = []
            flat_params: list[tuple[int, int, int]] = []
            for key, spec in buckets:
                params = spec.params
                tats = data.get(key)
                if tats is None or len(tats) != len(params):
                    tats = [0] * len(params)
                flat_tats.extend(tats)
                flat_params.extend(params)
            allowed, new_tats, states = gcra.check(flat_tats, now, flat_params)
            if allowed:
                i = 0
                for key, spec in buckets:
                    n = len(spec.params)
                    self._put(key, new_tats[i : i + n], now)
                    i += n
            return allowed, states
        finally:
            lock.release()

    def _put(self, key: str, tats: list[int], now: int) -> None:
        data = self._data
        if key in data:
            data[key] = tats
            data.move_to_end(key)
            return
        for _ in range(2):  # amortized sweep of idle keys, oldest first
            if not data:
                break
            oldest = next(iter(data))
            if max(data[oldest]) > now:
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
        data[key] = tats

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
