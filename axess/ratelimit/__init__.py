"""Rate limiting (book: Rate limiting): GCRA buckets in memory or shared in Valkey,
rules applied by :class:`RateLimitMiddleware` or per route with a FastAPI
dependency, standard ``RateLimit`` / ``RateLimit-Policy`` / ``Retry-After``
headers.

::

    from axess.ratelimit import RateLimit, RateLimitMiddleware, ValkeyBucketStore, auth_rules

    limiter_rules = [*auth_rules(), RateLimit("300/minute", paths=["/api/"], name="api-ip")]
"""

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
from axess.stores.valkey_buckets import ValkeyBucketStore

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
