"""Per-route rate limits as a FastAPI dependency.

::

    @app.post("/login", dependencies=[Depends(auth.limit("5/minute", key="login"))])

The dependency runs inside the app, after the session is loaded, so the
``user`` and ``tenant`` keys work here (in the middleware they fall back
to the IP). A refused request raises :class:`~axess.refusals.Refused`
429 (or 503 while a fail-closed store is down) carrying ``Retry-After``
and the RateLimit fields; with the handler ``Axess.install`` registers
(:func:`~axess.refusals.refused_handler`) the answer is the middleware's,
body and headers. On allowed requests the ``RateLimit`` field is added to
the response: through ``RateLimitMiddleware`` when it runs outside (any
response type), else through FastAPI's ``Response`` parameter (only
responses FastAPI builds from a returned value get it).

Without ``name=``, each route gets its own policy, named after its path
template and key (``route:items-id-ip``; the ``route:`` prefix keeps it apart
from middleware rules); with ``name=``, every route using the dependency
shares one bucket per key.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from axess.clock import Clock
from axess.observability.metrics import AuthnMetrics
from axess.ratelimit.keys import KeyContext, KeySpec, as_key
from axess.ratelimit.limits import Limit, OnStoreError, RateLimit, default_name
from axess.ratelimit.middleware import EventHook, RateLimiter, Verdict
from axess.ratelimit.stores import BucketStore
from axess.refusals import Refused
from axess.stack import queue_response_headers

logger = logging.getLogger(__name__)
_MAX_ROUTES: Final = 1024
#: Default policy names of route dependencies start with it: a middleware
#: rule's default name never does, so the two never share buckets unasked.
_ROUTE: Final = "route:"


def _route_slug(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        endpoint = scope.get("endpoint")
        path = getattr(endpoint, "__qualname__", None)
    if not isinstance(path, str) or not path:
        return "route"
    slug = "-".join(re.findall(r"[A-Za-z0-9]+", path)).lower() or "root"
    if len(slug) > 40:
        tail = hashlib.blake2b(slug.encode(), digest_size=4).hexdigest()
        slug = slug[:31] + "-" + tail
    return slug


class RateLimitDependency:
    """A FastAPI dependency (``Depends(...)``) enforcing ``limits`` per route.

    Takes the :class:`~axess.ratelimit.RateLimit` arguments (``key``,
    ``name``, ``on_store_error``, ``cost``) and either ``limiter=`` (share
    the app's store, metrics and event hook; ``Axess.limit`` does that) or
    ``store``/``clock``/``metrics``/``on_event`` for a limiter of its own.
    Also usable from plain Starlette: ``await dep.check(request)``.
    """

    def __init__(
        self,
        *limits: str | Limit,
        key: KeySpec = "ip",
        name: str | None = None,
        on_store_error: OnStoreError = "closed",
        cost: int = 1,
        limiter: RateLimiter | None = None,
        store: BucketStore | None = None,
        clock: Clock | None = None,
        metrics: AuthnMetrics | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        # Validates everything now, at import time of the app.
        self._template = RateLimit(
            *limits,
            key=key,
            name=name if name is not None else default_name(_ROUTE, as_key(key).kind),
            on_store_error=on_store_error,
            cost=cost,
        )
        self._named = name is not None
        if limiter is None:
            limiter = RateLimiter(store=store, clock=clock, metrics=metrics, on_event=on_event)
        self.limiter = limiter
        self._rules: dict[str, RateLimit] = {}
        if not getattr(limiter.store, "local", False):
            for what in self._template.weakenings():
                logger.warning("axess security weakened: %s", what)

    @property
    def limits(self) -> tuple[Limit, ...]:
        return self._template.limits

    def rule_for(self, scope: Scope) -> RateLimit:
        """The rule (policy) for the route ``scope`` is on."""
        if self._named:
            return self._template
        slug = _route_slug(scope)
        rule = self._rules.get(slug)
        if rule is None:
            t = self._template
            rule = RateLimit(
                *t.limits,
                key=t.key,
                on_store_error=t.on_store_error,
                cost=t.cost,
                name=default_name(_ROUTE + slug, t.key.kind),
            )
            if len(self._rules) < _MAX_ROUTES:
                self._rules[slug] = rule
        return rule

    async def check(self, request: Request) -> Verdict:
        """Check ``request``; raises :class:`~axess.refusals.Refused` (429 or
        503) when refused, and :class:`~axess.login_fields.AmbiguousIdentifier`
        (400) for an ambiguous login body (after counting it)."""
        limiter = self.limiter
        rule = self.rule_for(request.scope)
        ctx = KeyContext(request.scope, request.receive, request=request)
        verdict = await limiter.check((rule,), ctx)
        if not verdict.allowed:
            raise Refused(limiter.refusal(verdict))
        if ctx.refusal is not None:
            raise ctx.refusal
        return verdict

    async def __call__(self, request: Request, response: Response) -> None:
        verdict = await self.check(request)
        headers = self.limiter.response_headers(verdict)
        if not headers:
            return
        if queue_response_headers(request.scope, headers):
            return  # the axess stack adds them to whatever response goes out
        for k, v in headers:
            response.headers.append(k.decode("latin-1"), v.decode("latin-1"))

    def __repr__(self) -> str:
        limits = ", ".join(str(lim) for lim in self.limits)
        return f"RateLimitDependency({limits!r}, key={self._template.key!r})"


def limit(
    *limits: str | Limit,
    key: KeySpec = "ip",
    name: str | None = None,
    on_store_error: OnStoreError = "closed",
    cost: int = 1,
    limiter: RateLimiter | None = None,
    store: BucketStore | None = None,
) -> RateLimitDependency:
    """``Depends(limit("5/minute", key="login"))``: see :class:`RateLimitDependency`."""
    return RateLimitDependency(
        *limits,
        key=key,
        name=name,
        on_store_error=on_store_error,
        cost=cost,
        limiter=limiter,
        store=store,
    )
