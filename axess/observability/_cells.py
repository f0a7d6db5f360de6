"""Metric cells shared by the Prometheus and OpenTelemetry adapters: values
held in plain Python objects, updated without a lock where CPython makes it
atomic, read when a scraper or a metric reader collects them."""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

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


class CountingMetrics:
    """The counter methods of :class:`~axess.observability.metrics.AuthnMetrics`
    shared by the Prometheus and OpenTelemetry adapters: each calls an
    increment the adapter set up in its ``__init__`` (``_auth_attempt`` and
    so on; :class:`Labelled` cells for the labelled counters). An adapter
    adds ``audit_buffer_depth`` and ``store_latency``, which differ."""

    if TYPE_CHECKING:
        _auth_attempt: Callable[..., object]
        _auth_success: Callable[..., object]
        _auth_failure: Callable[..., object]
        _factor_attempt: Callable[..., object]
        _factor_success: Callable[..., object]
        _factor_failure: Callable[..., object]
        _session_created: Callable[..., object]
        _session_invalidated: Callable[..., object]
        _session_binding_mismatch: Callable[..., object]
        _session_previous_key: Callable[..., object]
        _session_size_exceeded: Callable[..., object]
        _audit_dropped: Callable[..., object]
        _audit_recovered: Callable[..., object]
        _authz_error: Callable[..., object]
        _allowed: dict[str, Callable[..., object]]
        _account_locked: Labelled
        _previous_key_used: Labelled
        _rate_limit_allowed: Labelled
        _rate_limit_rejected: Labelled
        _store_error: Labelled
        _authz_decision: Labelled

    def _bind(self, counters: Mapping[str, Any], labelled: Mapping[str, Labelled]) -> None:
        """Point the counter methods at an adapter's cells: ``counters`` by
        metric name (each with ``inc()`` and ``add(n)``), ``labelled`` the
        :class:`Labelled` cells. Called once, from the adapter's ``__init__``."""
        inc = {name: count.inc for name, count in counters.items()}
        self._auth_attempt = inc["auth_attempt"]
        self._auth_success = inc["auth_success"]
        self._auth_failure = inc["auth_failure"]
        self._factor_attempt = inc["factor_attempt"]
        self._factor_success = inc["factor_success"]
        self._factor_failure = inc["factor_failure"]
        self._session_created = inc["session_created"]
        self._session_invalidated = inc["session_invalidated"]
        self._session_binding_mismatch = inc["session_binding_mismatch"]
        self._session_previous_key = inc["session_decrypted_with_previous_key"]
        self._session_size_exceeded = inc["session_size_exceeded"]
        self._authz_error = inc["authz_error"]
        self._audit_dropped = counters["audit_dropped"].add
        self._audit_recovered = counters["audit_recovered"].add
        self._account_locked = labelled["account_locked"]
        self._rate_limit_allowed = labelled["rate_limit_allowed"]
        self._rate_limit_rejected = labelled["rate_limit_rejected"]
        self._store_error = labelled["store_error"]
        self._previous_key_used = labelled["previous_key_used"]
        self._authz_decision = labelled["authz_decision"]
        self._allowed = self._rate_limit_allowed.fast

    def auth_attempt(self) -> None:
        self._auth_attempt()

    def auth_success(self) -> None:
        self._auth_success()

    def auth_failure(self) -> None:
        self._auth_failure()

    def factor_attempt(self) -> None:
        self._factor_attempt()

    def factor_success(self) -> None:
        self._factor_success()

    def factor_failure(self) -> None:
        self._factor_failure()

    def account_locked(self, lever: str) -> None:
        (self._account_locked.fast.get(lever) or self._account_locked.add(lever))()

    def session_created(self) -> None:
        self._session_created()

    def session_invalidated(self) -> None:
        self._session_invalidated()

    def session_binding_mismatch(self) -> None:
        self._session_binding_mismatch()

    def session_decrypted_with_previous_key(self) -> None:
        self._session_previous_key()

    def previous_key_used(self, use: str) -> None:
        (self._previous_key_used.fast.get(use) or self._previous_key_used.add(use))()

    def session_size_exceeded(self) -> None:
        self._session_size_exceeded()

    def rate_limit_allowed(self, policy: str) -> None:
        # The one call on every request a rule matches: kept to one lookup.
        inc = self._allowed.get(policy)
        if inc is None:
            inc = self._rate_limit_allowed.add(policy)
        inc()

    def rate_limit_rejected(self, policy: str) -> None:
        (self._rate_limit_rejected.fast.get(policy) or self._rate_limit_rejected.add(policy))()

    def audit_dropped(self, count: int = 1) -> None:
        self._audit_dropped(count)

    def audit_recovered(self, count: int = 1) -> None:
        self._audit_recovered(count)

    def store_error(self, substore: str) -> None:
        (self._store_error.fast.get(substore) or self._store_error.add(substore))()

    def authz_decision(self, outcome: str) -> None:
        (self._authz_decision.fast.get(outcome) or self._authz_decision.add(outcome))()

    def authz_error(self) -> None:
        self._authz_error()
