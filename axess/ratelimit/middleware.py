"""``RateLimitMiddleware`` and the :class:`RateLimiter` it (and the route
dependency) runs on.

Headers follow draft-ietf-httpapi-ratelimit-headers-11 (May 2026; the
field syntax is unchanged since -09/-10):

* ``RateLimit-Policy: "login-ip";q=10;w=60`` per limit (on 429 responses,
  and on allowed ones when ``policy_header=True``). A burst other than the
  count is added as the vendor parameter ``axess-burst``.
* ``RateLimit: "login-ip";r=7;t=18``: ``r`` is what the client may still
  send right now, ``t`` the seconds until its bucket is full again. On a
  429 only the violated limits are listed, with ``r=0`` (or what is left
  below the cost) and ``t`` = the wait until a request conforms, which is
  also ``Retry-After`` (the maximum over the violated limits).
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from starlette.types import ASGIApp, Receive, Scope, Send

from axess._cache import BoundedDict, Memo
from axess.clock import Clock, SystemClock
from axess.errors import ConfigurationError
from axess.observability.metrics import AuthnMetrics, NoopMetrics
from axess.ratelimit import gcra
from axess.ratelimit.gcra import LimitState
from axess.ratelimit.keys import IPKey, KeyContext, KeySpec, loggable, resolve, resolve_now
from axess.ratelimit.limits import Limit, OnStoreError, RateLimit
from axess.ratelimit.stores import Bucket, BucketStore, MemoryBucketStore
from axess.refusals import Refusal
from axess.stack import Stage, queue_response_headers, route_path

if TYPE_CHECKING:
    from axess.ratelimit.dependency import RateLimitDependency

logger = logging.getLogger(__name__)

DEFAULT_EXEMPT: Final = ("/healthz", "/metrics")
_ERROR_LOG_INTERVAL: Final = 10.0
_EVENT_PATH_CHARS: Final = 128


@dataclass(frozen=True, slots=True)
class RateLimitEvent:
    """A request was refused by a rate limit (handed to ``on_event``).

    Aggregated: at most one event per ``(policy, key)`` per window (the
    rule's shortest period, or ``event_interval``), and at most
    ``max_events_per_second`` overall; ``suppressed`` counts the refusals of
    this policy and key that were not reported since its previous event.
    ``key`` is the bucket key (identifiers appear only as digests).
    """

    policy: str
    key: str
    method: str
    path: str
    retry_after: int
    suppressed: int
    at: float


EventHook = Callable[[RateLimitEvent], None]


class Verdict:
    """The outcome of checking one request against its rules."""

    __slots__ = ("allowed", "buckets", "retry_after", "rules", "states", "unavailable")

    def __init__(
        self,
        allowed: bool,
        rules: Sequence[RateLimit],
        buckets: Sequence[Bucket] = (),
        states: Sequence[LimitState] = (),
        *,
        unavailable: bool = False,
        retry_after: int = 0,
    ) -> None:
        self.allowed = allowed
        self.rules = rules
        self.buckets = buckets
        self.states = states
        #: The store could not answer (with ``allowed`` = failed open).
        self.unavailable = unavailable
        self.retry_after = retry_after


def detect_workers(
    environ: Mapping[str, str] | None = None, argv: Sequence[str] | None = None
) -> tuple[int, str]:
    """How many worker processes this server seems to run, and the evidence.

    A heuristic: ``WEB_CONCURRENCY`` (uvicorn and gunicorn default their
    worker count to it, as do most PaaS), ``UVICORN_WORKERS``, ``-w``/
    ``--workers`` in ``GUNICORN_CMD_ARGS``, or ``-w``/``--workers`` on the
    command line of a ``uvicorn``/``gunicorn``/``hypercorn`` process (worker
    processes inherit it). Several *instances* (containers, hosts) cannot
    be seen from inside one process at all.
    """
    env = os.environ if environ is None else environ
    args = list(sys.argv if argv is None else argv)
    for name in ("WEB_CONCURRENCY", "UVICORN_WORKERS"):
        count = _int(env.get(name))
        if count > 1:
            return count, f"{name}={count}"
    gunicorn_args = env.get("GUNICORN_CMD_ARGS", "")
    if gunicorn_args:
        try:
            count = _workers_flag(shlex.split(gunicorn_args))
        except ValueError:
            count = 0
        if count > 1:
            return count, f"GUNICORN_CMD_ARGS workers={count}"
    program = os.path.basename(args[0]) if args else ""
    if any(s in " ".join([program, *args[1:2]]) for s in ("uvicorn", "gunicorn", "hypercorn")):
        count = _workers_flag(args[1:])
        if count > 1:
            return count, f"{program} --workers {count}"
    return 1, ""


def _int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


def _workers_flag(args: Sequence[str]) -> int:
    for i, arg in enumerate(args):
        if arg in ("-w", "--workers") and i + 1 < len(args):
            return _int(args[i + 1])
        if arg.startswith("--workers="):
            return _int(arg.partition("=")[2])
        if arg.startswith("-w") and arg[2:].isdigit():
            return _int(arg[2:])
    return 0


_warned_workers = False


def _warn_if_multiprocess(store: BucketStore) -> None:
    global _warned_workers
    if _warned_workers or not getattr(store, "local", False):
        return
    count, evidence = detect_workers()
    if count > 1:
        _warned_workers = True
        logger.warning(
            "rate limits use an in-memory bucket store but %d worker processes are "
            "detected (%s): each process keeps its own buckets, so clients get the limit "
            "once per process. Use ValkeyBucketStore to share them",
            count,
            evidence,
        )


def _seconds(us: int) -> int:
    return -(-us // gcra.US)


def _limit_item(key: tuple[str, int, int]) -> bytes:
    """One ``RateLimit`` field item: (name, remaining, seconds to reset)."""
    name, remaining, reset = key
    return f'"{name}";r={remaining};t={reset}'.encode("ascii")


class _EventGate:
    """At most one event per (policy, key) per window, and a global rate."""

    def __init__(self, clock: Clock, interval: float | None, per_second: int) -> None:
        self._clock = clock
        self._interval = interval
        # (policy, key) -> [quiet until, suppressed]: bounded state, not a memo.
        self._seen: BoundedDict[tuple[str, str], list[float]] = BoundedDict(10_000)
        self._per_second = per_second
        self._emission = gcra.emission_us(per_second, 1) if per_second > 0 else 0
        self._tat = 0

    def admit(self, rule: RateLimit, key: str) -> int | None:
        """``None`` to stay quiet, else the count of refusals suppressed before."""
        now = self._clock.monotonic()
        entry = self._seen.get((rule.name, key))
        if entry is not None and now < entry[0]:
            entry[1] += 1
            return None
        suppressed = int(entry[1]) if entry is not None else 0
        window = self._interval or min(limit.period for limit in rule.limits)
        if self._per_second > 0:
            now_us = round(now * gcra.US)
            ok, self._tat, _ = gcra.check_one(
                self._tat, now_us, self._emission, self._emission * self._per_second
            )
            if not ok:
                self._seen.put((rule.name, key), [now + 1.0, suppressed + 1])
                return None
        self._seen.put((rule.name, key), [now + window, 0])
        return suppressed


class RateLimiter:
    """Rules, a bucket store and the reporting around them; shared by
    :class:`RateLimitMiddleware` and the route dependencies
    (:meth:`dependency`).

    * ``rules``: :class:`RateLimit` rules the middleware applies (names
      must be unique).
    * ``store``: a :class:`~axess.ratelimit.stores.BucketStore`; default a
      :class:`MemoryBucketStore` on ``clock`` (one process only).
    * ``exempt_paths``: never limited by the middleware rules (default
      ``/healthz`` and ``/metrics``; a trailing slash is ignored).
    * ``headers``: add ``RateLimit`` to allowed responses;
      ``policy_header``: add ``RateLimit-Policy`` to them too. Refusals
      always carry both and ``Retry-After``.
    * ``on_event``: called (synchronously, exceptions logged) with a
      :class:`RateLimitEvent` per refusal, aggregated (see there).
    * ``store_error_retry_after``: ``Retry-After`` of the 503 a fail-closed
      rule answers while the store is down.
    """

    def __init__(
        self,
        rules: Iterable[RateLimit] = (),
        *,
        store: BucketStore | None = None,
        clock: Clock | None = None,
        metrics: AuthnMetrics | None = None,
        on_event: EventHook | None = None,
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT,
        headers: bool = True,
        policy_header: bool = False,
        event_interval: float | None = None,
        max_events_per_second: int = 50,
        store_error_retry_after: int = 5,
    ) -> None:
        self.rules = tuple(rules)
        for rule in self.rules:
            if not isinstance(rule, RateLimit):
                raise ConfigurationError(f"rate-limit rules must be RateLimit, not {rule!r}")
        #: Methods some rule applies to (``None``: any method). A request with
        #: another method matches nothing, so it is not looked up at all
        #: (typically a GET against login limits on POST).
        self.methods: frozenset[str] | None = (
            None
            if any(r.methods is None for r in self.rules)
            else frozenset(m for r in self.rules for m in r.methods or ())
        )
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigurationError(
                f"rate-limit rule names must be unique; pass name= to tell apart: {dupes}"
            )
        self.clock: Clock = clock or SystemClock()
        self.store: BucketStore = (
            store if store is not None else MemoryBucketStore(clock=self.clock)
        )
        if not isinstance(self.store, BucketStore):
            raise ConfigurationError(f"{type(self.store).__name__} is not a BucketStore")
        self.metrics: AuthnMetrics = metrics or NoopMetrics()
        self.on_event = on_event
        self.exempt_paths = frozenset(p.rstrip("/") or "/" for p in exempt_paths)
        self.headers = headers
        self.policy_header = policy_header
        if event_interval is not None and event_interval <= 0:
            raise ConfigurationError("event_interval must be positive")
        if max_events_per_second < 0:
            raise ConfigurationError("max_events_per_second must be >= 0")
        self._events = _EventGate(self.clock, event_interval, max_events_per_second)
        if store_error_retry_after < 1:
            raise ConfigurationError("store_error_retry_after must be >= 1")
        self.store_error_retry_after = store_error_retry_after
        self.ip_key = IPKey()
        # A memory store is called without a coroutine (the hot path), unless a
        # subclass changed what ``check`` does.
        store_type = type(self.store)
        self._check_now = (
            self.store.check_sync
            if isinstance(self.store, MemoryBucketStore)
            and store_type.check is MemoryBucketStore.check
            else None
        )
        # (item name, remaining, t) -> RateLimit item of single-limit checks.
        self._items: Memo[tuple[str, int, int], bytes] = Memo(_limit_item, 4096)
        # (method, path) -> rules; a path over the default key bound (1 KiB) is
        # matched every time instead of remembered.
        self._matches: Memo[tuple[str, str], tuple[RateLimit, ...]] = Memo(self._match, 4096)
        self._errors = 0
        self._last_error_log = -math.inf
        for what in self.weakenings():
            logger.warning("axess security weakened: %s", what)
        _warn_if_multiprocess(self.store)

    def weakenings(self) -> list[str]:
        if getattr(self.store, "local", False):
            return []  # a memory store cannot be unreachable
        return [w for rule in self.rules for w in rule.weakenings()]

    # -- lifecycle -----------------------------------------------------------------
    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    # -- matching ------------------------------------------------------------------
    def match(self, method: str, path: str) -> tuple[RateLimit, ...]:
        """The middleware rules that apply to a request (memoized)."""
        return self._matches[(method, path)]

    def _match(self, key: tuple[str, str]) -> tuple[RateLimit, ...]:
        method, path = key
        if (path.rstrip("/") or "/") in self.exempt_paths:
            return ()
        return tuple(r for r in self.rules if r.matches(method, path))

    # -- checking ------------------------------------------------------------------
    async def check(self, rules: Sequence[RateLimit], ctx: KeyContext) -> Verdict:
        """Check a request against ``rules`` in one store call. Never raises."""
        ip_key = self.ip_key
        buckets: list[Bucket] = []
        for rule in rules:
            value = resolve_now(rule.key, ip_key, ctx)
            if value is None:
                value = await resolve(rule.key, ip_key, ctx)
            buckets.append((rule.prefix + value, rule))
        try:
            check_now = self._check_now
            if check_now is not None:
                allowed, states = check_now(buckets)
            else:
                allowed, states = await self.store.check(buckets)
        except Exception as exc:  # StoreError, or a broken store: never a 500
            return self._store_failed(rules, exc)
        metrics = self.metrics
        if allowed:
            for rule in rules:
                metrics.rate_limit_allowed(rule.name)
            return Verdict(True, rules, buckets, states)
        retry_us = 0
        i = 0
        for (key, _), rule in zip(buckets, rules, strict=True):
            violated = 0
            for state in states[i : i + len(rule.limits)]:
                violated = max(violated, state[2])
            i += len(rule.limits)
            if violated:
                metrics.rate_limit_rejected(rule.name)
                retry_us = max(retry_us, violated)
                self._event(rule, key[len(rule.name) + 1 :], ctx.scope, _seconds(violated))
        return Verdict(False, rules, buckets, states, retry_after=max(1, _seconds(retry_us)))

    def _store_failed(self, rules: Sequence[RateLimit], exc: BaseException) -> Verdict:
        self.metrics.store_error("ratelimit")
        closed = any(r.on_store_error == "closed" for r in rules)
        self._errors += 1
        now = self.clock.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL:
            logger.warning(
                "rate-limit store unavailable (%s; %d failed checks since the last report): "
                "failing %s for policies %s",
                type(exc).__name__,
                self._errors,
                "closed (503)" if closed else "open",
                ", ".join(r.name for r in rules),
            )
            self._errors = 0
            self._last_error_log = now
        return Verdict(
            not closed,
            rules,
            unavailable=True,
            retry_after=self.store_error_retry_after,
        )

    def _event(self, rule: RateLimit, key: str, scope: Scope, retry_after: int) -> None:
        logger.debug("rate limited: policy=%s key=%s", rule.name, loggable(key))
        hook = self.on_event
        if hook is None:
            return
        suppressed = self._events.admit(rule, key)
        if suppressed is None:
            return
        path = scope.get("path", "")
        try:
            hook(
                RateLimitEvent(
                    policy=rule.name,
                    key=loggable(key),
                    method=scope.get("method", "WEBSOCKET"),
                    path=path[:_EVENT_PATH_CHARS] if isinstance(path, str) else "",
                    retry_after=retry_after,
                    suppressed=suppressed,
                    at=self.clock.time(),
                )
            )
        except Exception:
            logger.exception("rate-limit event hook failed")

    # -- headers -------------------------------------------------------------------
    @staticmethod
    def policy_field(rules: Sequence[RateLimit]) -> bytes:
        return ", ".join(item for rule in rules for item in rule.policy_items).encode("ascii")

    def limit_field(self, verdict: Verdict) -> bytes:
        """The ``RateLimit`` field value (violated limits only on a refusal)."""
        states = verdict.states
        if verdict.allowed and len(states) == 1:
            name = verdict.rules[0].item_names[0]
            remaining, reset_us, _ = states[0]
            return self._items[(name, remaining, _seconds(reset_us))]
        items: list[str] = []
        i = 0
        for rule in verdict.rules:
            for name in rule.item_names:
                remaining, reset_us, retry_us = states[i]
                i += 1
                if verdict.allowed:
                    items.append(f'"{name}";r={remaining};t={_seconds(reset_us)}')
                elif retry_us:
                    items.append(f'"{name}";r={remaining};t={_seconds(retry_us)}')
        return ", ".join(items).encode("ascii")

    def response_headers(self, verdict: Verdict) -> list[tuple[bytes, bytes]]:
        """Headers for an allowed response (may be empty)."""
        if not verdict.states or not self.headers:
            return []
        out = [(b"ratelimit", self.limit_field(verdict))]
        if self.policy_header:
            out.append((b"ratelimit-policy", self.policy_field(verdict.rules)))
        return out

    def refusal(self, verdict: Verdict) -> Refusal:
        """The 429 (``rate_limited``, with the violated limits' RateLimit
        fields) or, while a fail-closed store is down, the 503; the same from
        the middleware and the route dependency."""
        if verdict.unavailable:
            return Refusal(
                503, "service_unavailable", "rate limit store unavailable", verdict.retry_after
            )
        headers = (
            (b"ratelimit-policy", self.policy_field(verdict.rules)),
            (b"ratelimit", self.limit_field(verdict)),
        )
        return Refusal(429, "rate_limited", "too many requests", verdict.retry_after, headers)

    # -- route dependencies ----------------------------------------------------------
    def dependency(
        self,
        *limits: str | Limit,
        key: KeySpec = "ip",
        name: str | None = None,
        on_store_error: OnStoreError = "closed",
        cost: int = 1,
    ) -> RateLimitDependency:
        """A FastAPI dependency applying ``limits`` on this limiter's store:
        ``Depends(limiter.dependency("5/minute", key="login"))``."""
        from axess.ratelimit.dependency import RateLimitDependency

        return RateLimitDependency(
            *limits,
            key=key,
            name=name,
            on_store_error=on_store_error,
            cost=cost,
            limiter=self,
        )


class RateLimitMiddleware(Stage):
    """Applies :class:`RateLimit` rules to requests (pure ASGI, a stage).

    ``RateLimitMiddleware(app, rules=[...], store=..., ...)`` takes the
    :class:`RateLimiter` keyword arguments, or ``limiter=`` to share one
    (``Axess`` does, with its route dependencies). Run it inside
    ``ClientIPMiddleware`` so the ``ip`` key sees the client behind your
    proxies; on its own it keys on the TCP peer.
    """

    def __init__(
        self,
        app: ASGIApp | None = None,
        *,
        rules: Iterable[RateLimit] = (),
        limiter: RateLimiter | None = None,
        **options: object,
    ) -> None:
        super().__init__(app)
        if limiter is not None:
            if options or tuple(rules):
                raise ConfigurationError("pass either limiter= or rules/options, not both")
            self.limiter = limiter
        else:
            self.limiter = RateLimiter(rules, **options)  # type: ignore[arg-type]

    def enter_now(self, scope: Scope) -> bool:
        """True (nothing to await) when no rule applies to this request."""
        method = scope["method"] if scope["type"] == "http" else "WEBSOCKET"
        limiter = self.limiter
        methods = limiter.methods
        if methods is not None and method not in methods:
            return True
        return not limiter.match(method, route_path(scope))

    async def enter(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        limiter = self.limiter
        method = scope["method"] if scope["type"] == "http" else "WEBSOCKET"
        rules = limiter.match(method, route_path(scope))
        if not rules:
            return receive
        ctx = KeyContext(scope, receive)
        verdict = await limiter.check(rules, ctx)
        if verdict.allowed and ctx.refusal is not None:
            # Counted (an ambiguous login body), but not for the app: it
            # would read another identifier than the one just charged. (Only
            # an http request has a body to be ambiguous.)
            refusal = ctx.refusal.refusal
            headers = (*refusal.headers, *limiter.response_headers(verdict))
            await self.refuse(scope, receive, send, replace(refusal, headers=headers))
            return None
        if verdict.allowed:
            if verdict.states and limiter.headers:
                # The stack adds them to whatever response goes out.
                queue_response_headers(scope, limiter.response_headers(verdict))
            return ctx.receive
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013 if verdict.unavailable else 1008})
        else:
            await self.refuse(scope, receive, send, limiter.refusal(verdict))
        return None
