"""Metric cells shared by the Prometheus and OpenTelemetry adapters: values
held in plain Python objects, updated without a lock where CPython makes it
atomic, read when a scraper or a metric reader collects them."""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

#: Store latency bucket bounds (seconds): sub-millisecond for Valkey and SQLite, up
#: to the 2-second socket and health-check timeouts and beyond.
LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Series exposed at zero from the start, so ``rate()`` alerts see them before
#: the first event.
LEVERS: Final = ("user", "ip", "tenant")
SUBSTORES: Final = ("sessions", "lockout", "ratelimit", "identity", "factors", "audit")
KEY_USES: Final = ("totp_secret", "fingerprint", "csrf")
AUTHZ_OUTCOMES: Final = ("allow", "deny")

#: (method, help) of the counters without labels.
COUNTERS: Final = (
    ("auth_attempt", "Logins started"),
    ("auth_success", "Logins that reached Authenticated"),
    ("auth_failure", "Logins that ended in InvalidCredentials"),
    ("factor_attempt", "Factors (password, TOTP, recovery code) checked"),
    ("factor_success", "Factors that verified"),
    ("factor_failure", "Factors that failed"),
    ("session_created", "Sessions created"),
    ("session_invalidated", "Sessions deleted by logout, revocation or a session cap"),
    ("session_binding_mismatch", "Requests whose session fingerprint did not match"),
    (
        "session_decrypted_with_previous_key",
        "Session payloads opened with a previous (rotated) envelope key",
    ),
    ("session_size_exceeded", "Session commits refused by the size cap"),
    ("audit_dropped", "Analytics audit events dropped because a sink buffer was full"),
    ("audit_recovered", "Audit events written to the recovery log"),
    ("authz_error", "Cedar evaluation errors (each one decided as a deny)"),
)
#: (method, help, label, values present from the start) of the labelled counters.
LABELLED_COUNTERS: Final = (
    ("account_locked", "Lockout levers that locked", "lever", LEVERS),
    ("rate_limit_allowed", "Requests a rate-limit rule let through", "policy", ()),
    ("rate_limit_rejected", "Requests a rate-limit rule refused with 429", "policy", ()),
    ("store_error", "Store calls that failed", "substore", SUBSTORES),
    ("previous_key_used", "Operations that needed a previous (rotated) key", "use", KEY_USES),
    ("authz_decision", "Cedar authorization decisions", "outcome", AUTHZ_OUTCOMES),
)


#: Distinct label values (or value pairs) one metric keeps; later ones are
#: counted under ``"other"``, so a misbehaving caller cannot grow the
#: exposition without bound.
MAX_LABEL_VALUES: Final = 64
OTHER: Final = "other"


class Count:
    """A counter cell. ``inc`` is an atomic ``next()`` (safe from any thread);
    ``add`` (counts above one, rare) takes a lock."""

    __slots__ = ("_count", "_extra", "_lock", "inc")

    def __init__(self) -> None:
        self._count = itertools.count()
        self.inc: Callable[[], int] = self._count.__next__
        self._extra = 0
        self._lock = threading.Lock()

    def add(self, amount: int) -> None:
        if amount == 1:
            self.inc()
        elif amount > 0:
            with self._lock:
                self._extra += amount

    @property
    def value(self) -> int:
        # ``count(n)``: n is how many times ``next()`` was called.
        return int(repr(self._count)[6:-1]) + self._extra


class Histogram:
    """Bucket counts and sum of one label set."""

    __slots__ = ("_bounds", "_counts", "_lock", "_sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self._counts), self._sum


class Labelled:
    """Label value (a string, or a tuple of strings) -> cell, capped at
    :data:`MAX_LABEL_VALUES` entries. ``fast`` maps the same keys to the
    cell's hot method (``inc`` or ``observe``): one dictionary lookup."""

    __slots__ = ("_lock", "_make", "_method", "cells", "fast")

    def __init__(self, make: Callable[[], Any], method: str, known: Sequence[Any] = ()) -> None:
        self._make = make
        self._method = method
        self._lock = threading.Lock()
        self.cells: dict[Any, Any] = {}
        self.fast: dict[Any, Callable[..., Any]] = {}
        for key in known:
            self.add(key)

    def add(self, key: Any) -> Callable[..., Any]:
        """The hot method for ``key``, creating its cell (or using ``other``)."""
        with self._lock:
            fn = self.fast.get(key)
            if fn is not None:
                return fn
            if len(self.cells) >= MAX_LABEL_VALUES:
                other = OTHER if isinstance(key, str) else (OTHER,) * len(key)
                fn = self.fast.get(other)
                if fn is None:
                    fn = self._new(other)
                return fn
            return self._new(key)

    def _new(self, key: Any) -> Callable[..., Any]:
        cell = self._make()
        fn: Callable[..., Any] = getattr(cell, self._method)
        self.cells[key] = cell
        self.fast[key] = fn
        return fn

    def items(self) -> list[tuple[list[str], Any]]:
        return [
            ([key] if isinstance(key, str) else list(key), cell)
            for key, cell in list(self.cells.items())
        ]
