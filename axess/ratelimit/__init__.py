"""Rate limiting (book: Rate limiting): GCRA buckets in memory or shared in Valkey,
rules applied by :class:`RateLimitMiddleware` or per route with a FastAPI
dependency, standard ``RateLimit`` / ``RateLimit-Policy`` / ``Retry-After``
headers.

::

    from axess.ratelimit import RateLimit, RateLimitMiddleware, ValkeyBucketStore, auth_rules

    limiter_rules = [*auth_rules(), RateLimit("300/minute", paths=["/api/"], name="api-ip")]
"""

from typing import TYPE_CHECKING

from axess.login_fields import AmbiguousIdentifier, LoginFields
from axess.ratelimit import keys
from axess.ratelimit.dependency import RateLimitDependency, limit
from axess.ratelimit.keys import Key, KeyContext
from axess.ratelimit.limits import Limit, RateLimit, auth_rules, parse_limits
from axess.ratelimit.middleware import (
    RateLimiter,
    RateLimitEvent,
    RateLimitMiddleware,
    Verdict,
    detect_workers,
)
from axess.ratelimit.stores import BucketStore, MemoryBucketStore

if TYPE_CHECKING:
    from axess.stores.valkey_buckets import ValkeyBucketStore


def __getattr__(name: str) -> object:
    # The Valkey bucket store is a store: loaded on first use, so importing
    # the rate-limit stages loads no concrete store (book: Internals, "Layers").
    if name == "ValkeyBucketStore":
        from axess.stores.valkey_buckets import ValkeyBucketStore

        return ValkeyBucketStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AmbiguousIdentifier",
    "BucketStore",
    "Key",
    "KeyContext",
    "Limit",
    "LoginFields",
    "MemoryBucketStore",
    "RateLimit",
    "RateLimitDependency",
    "RateLimitEvent",
    "RateLimitMiddleware",
    "RateLimiter",
    "ValkeyBucketStore",
    "Verdict",
    "auth_rules",
    "detect_workers",
    "keys",
    "limit",
    "parse_limits",
]
