"""``Axess``: the one object an app creates. It validates the configuration,
builds and orders the middleware stack, and owns the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from axess._cache import DEFAULT_MEMO_SIZE
from axess.audit.events import AuthEvent
from axess.audit.http import audit_unavailable_handler
from axess.audit.pipeline import AuditPipeline, AuditUnavailable
from axess.authn.device import DeviceCookie, DeviceCookieConfig
from axess.authn.guards import AuthnRequired, authn_exception_handler
from axess.authn.lockout import Lockout, LockoutPolicy
from axess.authn.password import PasswordHasher
from axess.authn.service import AuthnEvent, AuthnService
from axess.authn.users import UserAdmin
from axess.clock import Clock, Random, SystemClock, SystemRandom
from axess.errors import ConfigurationError, StoreError
from axess.keys import Keyring
from axess.net import ClientIPMiddleware, TrustedProxies
from axess.observability.health import CompositeHealthCheck, HealthCheck, healthz_endpoint
from axess.observability.metrics import AuthnMetrics, NoopMetrics
from axess.ratelimit.dependency import RateLimitDependency
from axess.ratelimit.keys import KeySpec
from axess.ratelimit.limits import Limit, OnStoreError, RateLimit
from axess.ratelimit.middleware import (
    EventHook,
    RateLimiter,
    RateLimitEvent,
    RateLimitMiddleware,
)
from axess.ratelimit.stores import BucketStore
from axess.refusals import APP_STATE_ATTR as REFUSAL_PAGE_ATTR
from axess.refusals import RefusalPage, Refused, refused_handler, store_unavailable_handler
from axess.session.binding import BindingPolicy, FingerprintBinding, TenantPeppers
from axess.session.config import SessionConfig
from axess.session.csrf import CSRFConfig, CSRFMiddleware
from axess.session.envelope import SessionCrypto
from axess.session.events import SessionEventHook
from axess.session.middleware import SessionMiddleware
from axess.session.registry import SessionInfo, SessionRegistry
from axess.stack import Stack, Stage
from axess.stores.base import IdentityStore, LockoutStore, RoutedStore, SessionStore

if TYPE_CHECKING:
    from axess.authz import CedarAuthorizer

logger = logging.getLogger(__name__)

#: Passes of a default-tenant "end every session" before it gives up (each
#: pass lists again after a delete that found its session rotated away).
_END_SESSIONS_PASSES = 8


class _Installable(Protocol):
    def add_middleware(self, cls: Any, /, *args: Any, **kwargs: Any) -> None: ...


class _Purgeable(Protocol):
    async def purge_expired(self, now: float, *, only: Any = None) -> dict[str, int]: ...


def _shared_bucket_store(sessions: object) -> BucketStore | None:
    """The default bucket store: on the sessions' Valkey when they live in
    Valkey (every worker then counts in one bucket), else ``None`` (per-process
    memory). The Valkey module is only looked at when it was imported already."""
    valkey = sys.modules.get("axess.stores.valkey")
    if valkey is not None and isinstance(sessions, valkey.ValkeyStore):
        from axess.stores.valkey_buckets import ValkeyBucketStore

        return ValkeyBucketStore(sessions)
    return None


class Axess:
    """Wires client IP, rate limits, sessions, CSRF, login and audit into an
    ASGI app.

    Raises :class:`ConfigurationError` at construction for unsafe settings:
    ephemeral (generated) keys outside ``debug=True``, a store that does not
    implement sessions.
    """

    def __init__(
        self,
        *,
        store: SessionStore,
        keys: Keyring,
        session: SessionConfig | None = None,
        metrics: AuthnMetrics | None = None,
        clock: Clock | None = None,
        random: Random | None = None,
        trusted_proxies: TrustedProxies | None = None,
        binding: BindingPolicy | None = None,
        csrf: CSRFConfig | Literal[False] | None = None,
        rate_limits: Sequence[RateLimit] | RateLimiter = (),
        rate_limit_store: BucketStore | None = None,
        on_rate_limit_event: EventHook | None = None,
        lockout: LockoutPolicy | None = None,
        password_hasher: PasswordHasher | None = None,
        audit: AuditPipeline | None = None,
        debug: bool = False,
        on_session_event: SessionEventHook | None = None,
        cleanup_interval: float | None = 300.0,
        memo_size: int = DEFAULT_MEMO_SIZE,
        authz: CedarAuthorizer | None = None,
        refusal_page: RefusalPage | None = None,
    ) -> None:
        if not isinstance(store, SessionStore):
            raise ConfigurationError(f"{type(store).__name__} does not implement the session store")
        if keys.ephemeral and not debug:
            raise ConfigurationError(
                "generated keys are for development only: pass debug=True, or load real keys "
                "with Keyring.from_env() (create them with `axess keygen`)"
            )
        if memo_size < 1:
            raise ConfigurationError("memo_size must be >= 1")
        if cleanup_interval is not None and cleanup_interval <= 0:
            raise ConfigurationError("cleanup_interval must be positive or None")
        self.store = store
        self.keys = keys
        self.debug = debug
        #: Returning clients each per-process memo of the request path remembers.
        self.memo_size = memo_size
        self.cleanup_interval = cleanup_interval
        self.metrics: AuthnMetrics = metrics or NoopMetrics()
        self.clock: Clock = clock or SystemClock()
        self.random: Random = random or SystemRandom()
        #: Renders refusals the app's way (book: Errors and refusals); ``None``:
        #: the default JSON body or HTML page.
        self.refusal_page = refusal_page
        # One builder per area, in dependency order; each reads only what
        # the ones before it set.
        self._build_audit(audit, on_session_event)
        self._build_sessions(session)
        self._build_request_security(trusted_proxies, binding, csrf)
        self._build_rate_limits(rate_limits, rate_limit_store, on_rate_limit_event)
        self._build_authn(lockout, password_hasher)
        self._build_authz(authz)
        self._build_health(bind_store_metrics=metrics is not None)
        self._cleanup_task: asyncio.Task[None] | None = None
        self._warn_weakenings()

    # -- builders (one per area) ---------------------------------------------------
    def _build_audit(
        self, audit: AuditPipeline | None, on_session_event: SessionEventHook | None
    ) -> None:
        #: The audit pipeline (``None`` when not configured). Session and login
        #: events flow into it.
        self.audit = audit
        if audit is not None:
            audit.bind(clock=self.clock, random=self.random, metrics=self.metrics)
            on_session_event = audit.session_event_hook(then=on_session_event)
        self.on_session_event = on_session_event

    def _build_sessions(self, session: SessionConfig | None) -> None:
        self.session_config = session or SessionConfig()
        # One SessionCrypto for the registry and the middleware alike.
        self.crypto = SessionCrypto(
            self.keys,
            random=self.random,
            on_previous_key=self.metrics.session_decrypted_with_previous_key,
        )
        self.sessions = SessionRegistry(
            self.store, self.crypto, self.clock, self.metrics, self.on_session_event
        )

    def _build_request_security(
        self,
        trusted_proxies: TrustedProxies | None,
        binding: BindingPolicy | None,
        csrf: CSRFConfig | Literal[False] | None,
    ) -> None:
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self.binding_policy = binding or BindingPolicy()
        identity = self._substore("identity")
        self.peppers = TenantPeppers(
            self.keys,
            store=identity if isinstance(identity, IdentityStore) else None,
            clock=self.clock,
        )
        self.binding = FingerprintBinding(
            self.binding_policy, self.peppers, self.metrics, memo_size=self.memo_size
        )
        #: ``None`` when CSRF protection is switched off (``csrf=False``).
        self.csrf_config: CSRFConfig | None = None if csrf is False else (csrf or CSRFConfig())

    def _build_rate_limits(
        self,
        rate_limits: Sequence[RateLimit] | RateLimiter,
        rate_limit_store: BucketStore | None,
        on_rate_limit_event: EventHook | None,
    ) -> None:
        if isinstance(rate_limits, RateLimiter):
            if rate_limit_store is not None or on_rate_limit_event is not None:
                raise ConfigurationError("pass store/on_event to your RateLimiter, not to Axess")
            self.rate_limiter = rate_limits
            return
        if on_rate_limit_event is None and self.audit is not None:
            on_rate_limit_event = self._rate_limited_event
        if rate_limit_store is None:
            rate_limit_store = _shared_bucket_store(self._substore("sessions"))
        self.rate_limiter = RateLimiter(
            rate_limits,
            store=rate_limit_store,
            clock=self.clock,
            metrics=self.metrics,
            on_event=on_rate_limit_event,
        )

    def _build_authz(self, authz: CedarAuthorizer | None) -> None:
        #: The Cedar authorizer (``None`` unless ``authz=`` was given); it uses
        #: this app's clock, metrics and audit pipeline (book: Authorization).
        self.authz = authz
        if authz is not None:
            authz.bind(clock=self.clock, random=self.random, metrics=self.metrics, audit=self.audit)

    def _build_health(self, *, bind_store_metrics: bool) -> None:
        self.health = CompositeHealthCheck()
        if isinstance(self.store, HealthCheck):
            self.health.add("store", self.store)
        if self.audit is not None:
            self.audit.register_health(self.health)
        bucket_store = self.rate_limiter.store
        if (
            not getattr(bucket_store, "local", True)
            and isinstance(bucket_store, HealthCheck)
            and getattr(bucket_store, "store", None) not in (self.store, self._substore("sessions"))
        ):
            # Not critical: every instance shares it, so taking instances out
            # of rotation for it helps nothing; rules decide (on_store_error)
            # what its outage does to the requests they cover.
            self.health.add("ratelimit", bucket_store, critical=False)
        if bind_store_metrics:
            self._bind_store_metrics()
        self.healthz: Callable[[Request], Awaitable[Response]] = healthz_endpoint(self.health)

    def _bind_store_metrics(self) -> None:
        """Hand the metrics to every store backend that reports its latency
        (SQL and Valkey stores: a ``metrics`` attribute), the rate-limit
        bucket store's Valkey included."""
        store = self.store
        targets: list[object] = list(store.backends) if isinstance(store, RoutedStore) else [store]
        targets.append(getattr(self.rate_limiter.store, "store", None))
        for target in targets:
            current = getattr(target, "metrics", False)
            if current is None or isinstance(current, AuthnMetrics):
                target.metrics = self.metrics  # type: ignore[attr-defined]

    @property
    def metrics_endpoint(self) -> Callable[[Request], Awaitable[Response]]:
        """The Starlette endpoint of ``metrics`` (``PrometheusMetrics``):
        ``app.add_route("/metrics", auth.metrics_endpoint)``. Raises
        :class:`ConfigurationError` when the metrics have no endpoint
        (``OTelMetrics`` exports through its meter provider's readers)."""
        endpoint = getattr(self.metrics, "endpoint", None)
        if endpoint is None:
            raise ConfigurationError(
                f"{type(self.metrics).__name__} has no /metrics endpoint: pass "
                "metrics=PrometheusMetrics() (axess.observability.prometheus)"
            )
        return endpoint  # type: ignore[no-any-return]

    def _substore(self, name: str) -> object:
        """The backend serving substore ``name`` (the store itself unless
        composite); ``None`` when a composite store routes it nowhere."""
        if not isinstance(self.store, RoutedStore):
            return self.store
        try:
            return self.store.backend_for(name)
        except ConfigurationError:
            return None

    def _build_authn(self, policy: LockoutPolicy | None, hasher: PasswordHasher | None) -> None:
        """Login service and user admin, when the store holds identities."""
        identity = self._substore("identity")
        lockout_store = self._substore("lockout")
        #: ``None`` unless the store implements the identity substore.
        self.authn: AuthnService | None = None
        self.users: UserAdmin | None = None
        if not isinstance(identity, IdentityStore) or not isinstance(lockout_store, LockoutStore):
            return
        lock = Lockout(lockout_store, policy, clock=self.clock, metrics=self.metrics)
        device = DeviceCookieConfig(
            max_age=int(lock.policy.trusted_origin_ttl), secure=self.session_config.secure
        )
        self.authn = AuthnService(
            identity,
            self.keys,
            lockout=lock,
            hasher=hasher,
            clock=self.clock,
            random=self.random,
            metrics=self.metrics,
            on_event=self._authn_event if self.audit is not None else None,
            gate=self.audit.authn_gate if self.audit is not None else None,
            device_cookie=DeviceCookie(self.keys, device, random=self.random),
        )
        self.users = UserAdmin(
            identity,
            self.keys,
            sessions=self,
            lockout=lock,
            hasher=self.authn.hasher,
            clock=self.clock,
            random=self.random,
            on_event=self.authn.on_event,
        )

    def _authn_event(self, event: AuthnEvent) -> None:
        assert self.audit is not None
        self.audit.emit(
            AuthEvent.create(event.type, clock=self.clock, random=self.random, **event.as_kwargs())
        )

    def _rate_limited_event(self, event: RateLimitEvent) -> None:
        """Refusals reach the audit trail already aggregated per (policy, key)."""
        assert self.audit is not None
        self.audit.emit(
            AuthEvent.create(
                "rate_limited",
                clock=self.clock,
                random=self.random,
                reason=event.policy,
                extras={
                    "key": event.key,
                    "method": event.method,
                    "path": event.path,
                    "retry_after": event.retry_after,
                    "suppressed": event.suppressed,
                },
            )
        )

    def _warn_weakenings(self) -> None:
        weak = list(self.session_config.weakenings()) + self.binding_policy.weakenings()
        if self.csrf_config is None:
            weak.append("CSRF protection disabled (csrf=False)")
        elif not self.csrf_config.secure:
            weak.append("CSRF cookie without Secure (CSRFConfig(secure=False))")
        if self.authn is not None and self.authn.lockout.policy.on_store_error == "open":
            weak.append(
                "logins proceed without the lockout while its store is down "
                "(LockoutPolicy(on_store_error='open'))"
            )
        if self.authn is not None and self.authn.lockout.policy.trust_ip_prefix:
            weak.append(
                "lockout trusts IP prefixes (LockoutPolicy(trust_ip_prefix=True)): "
                "anyone on a trusted /24 or CGNAT escapes the user lever"
            )
        if self.keys.ephemeral:
            weak.insert(
                0,
                "EPHEMERAL KEYS (Keyring.generate): every restart logs everyone out; "
                "never use this in production",
            )
        for what in weak:
            logger.warning("axess security weakened: %s", what)

    # -- the stack ------------------------------------------------------------------
    def _layers(self) -> list[tuple[type[Any], dict[str, Any]]]:
        """Middleware classes and arguments, outermost first."""
        layers: list[tuple[type[Any], dict[str, Any]]] = [
            (ClientIPMiddleware, {"proxies": self.trusted_proxies}),
            (RateLimitMiddleware, {"limiter": self.rate_limiter}),
            (
                SessionMiddleware,
                {
                    "store": self.store,
                    "keys": self.keys,
                    "config": self.session_config,
                    "clock": self.clock,
                    "random": self.random,
                    "metrics": self.metrics,
                    "on_event": self.on_session_event,
                    "binding": self.binding,
                    "memo_size": self.memo_size,
                    "crypto": self.crypto,
                },
            ),
        ]
        if self.csrf_config is not None:
            layers.append(
                (
                    CSRFMiddleware,
                    {
                        "keys": self.keys,
                        "config": self.csrf_config,
                        "random": self.random,
                        "memo_size": self.memo_size,
                        "metrics": self.metrics,
                    },
                )
            )
        if self.authz is not None:
            # Guards find the authorizer in the request's state, which a
            # mounted sub-app shares (its app.state is its own).
            from axess.authz.guards import AuthorizerStage

            layers.append((AuthorizerStage, {"authorizer": self.authz}))
        return layers

    def stages(self) -> list[Stage]:
        """Fresh stage instances, outermost first."""
        stages: list[Stage] = [cls(None, **kwargs) for cls, kwargs in self._layers()]
        for stage in stages:
            stage.refusal_page = self.refusal_page
        return stages

    def _publish_refusal_page(self, app: object) -> None:
        """Put the refusal page hook where guards and dependencies answering
        from inside the app find it (``app.state``)."""
        state = getattr(app, "state", None)
        if state is not None and self.refusal_page is not None:
            setattr(state, REFUSAL_PAGE_ATTR, self.refusal_page)

    def wrap(self, app: ASGIApp) -> Stack:
        """The full stack around a plain ASGI app: client IP → session → CSRF → app."""
        self._publish_refusal_page(app)
        return Stack(app, self.stages())

    def install(self, app: _Installable) -> None:
        """Add the stack to a Starlette/FastAPI app in the documented order
        (client IP → rate limit → session → CSRF, outermost first), as one
        middleware, and :meth:`install_handlers` on it."""
        app.add_middleware(Stack, stages=self.stages())
        self.install_handlers(app)

    def install_handlers(self, app: object) -> None:
        """Give ``app`` the exception handlers and the refusal page that turn
        guard and login refusals into axess's answers, without a stack: for
        a sub-app mounted inside the app :meth:`install` was called on (its
        exception handlers are its own; a second stack would run a second
        session stage)."""
        self._publish_refusal_page(app)
        # Starlette and FastAPI both accept exception handlers: a guard's
        # redirect/401, a route's rate limit, a paused login (no audit trail)
        # and an ambiguous login body become refusals.
        add_handler = getattr(app, "add_exception_handler", None)
        if add_handler is not None:
            add_handler(AuthnRequired, authn_exception_handler)
            add_handler(Refused, refused_handler)
            add_handler(AuditUnavailable, audit_unavailable_handler)
            add_handler(StoreError, store_unavailable_handler(self.session_config.retry_after))
        if self.authz is not None:
            from axess.authz.guards import APP_STATE_ATTR, AuthzDenied, authz_exception_handler

            if add_handler is not None:
                add_handler(AuthzDenied, authz_exception_handler)
            state = getattr(app, "state", None)
            if state is not None:  # where require_authz(...) finds the authorizer
                setattr(state, APP_STATE_ATTR, self.authz)

    def limit(
        self,
        *limits: str | Limit,
        key: KeySpec = "ip",
        name: str | None = None,
        on_store_error: OnStoreError = "closed",
        cost: int = 1,
    ) -> RateLimitDependency:
        """``Depends(auth.limit("5/minute", key="login"))`` on this app's bucket store."""
        return self.rate_limiter.dependency(
            *limits, key=key, name=name, on_store_error=on_store_error, cost=cost
        )

    async def rotate_fingerprint_pepper(self, tenant: str | None) -> int:
        """Issue a new fingerprint pepper for ``tenant``; its sessions re-bind on
        their next request (nobody is logged out). Returns the new version.

        With an identity store the version is stored there, so every instance
        (and the next start) uses it; other instances pick it up within
        ``TenantPeppers.refresh_after`` seconds, or at once when they see a
        session bound under it. Raises :class:`StoreError` on a store outage.
        """
        version = await self.peppers.rotate(tenant)
        logger.info("fingerprint pepper rotated (version %d)", version)
        if not self.peppers.shared:
            logger.warning(
                "the store has no identity substore: the new pepper version lives in "
                "this process only (other instances and restarts keep the old one)"
            )
        return version

    # -- registry ---------------------------------------------------------------------
    async def list_sessions(
        self, user_id: str, *, tenant_id: str | None = None
    ) -> list[SessionInfo]:
        return await self.sessions.list_sessions(user_id, tenant_id=tenant_id)

    async def invalidate_user(
        self, user_id: str, *, tenant_id: str | None = None, except_key: str | None = None
    ) -> int:
        return await self.sessions.invalidate_user(
            user_id, tenant_id=tenant_id, except_key=except_key
        )

    async def invalidate_session(self, storage_key: str) -> bool:
        return await self.sessions.invalidate_session(storage_key)

    async def invalidate_user_in_tenant(
        self, user_id: str, tenant_id: str | None, *, except_key: str | None = None
    ) -> int:
        """End every session of ``user_id`` in exactly ``tenant_id`` (``None``:
        the default tenant only, where :meth:`invalidate_user` reads ``None``
        as every tenant) but ``except_key``; how many ended. A session that
        another request rotates to a new id while this runs is ended under
        its new id (book: Sessions, "Listing and revoking sessions").

        Raises :class:`StoreError` when the store fails, or when the sessions
        kept moving through several passes (nothing claimed ended that was
        not)."""
        if tenant_id is not None:
            # The store's own pass repeats until a pass deletes nothing.
            return await self.invalidate_user(user_id, tenant_id=tenant_id, except_key=except_key)
        # The default tenant is recorded as none, which the stores read as
        # "any tenant". When no other tenant has sessions of this id, the
        # store's own pass ends them all; otherwise they go one by one, so
        # that an app giving the same user id to users of other tenants keeps
        # theirs. A delete that finds its row gone means it moved (or ended)
        # since the listing: list again, until a pass ends every row it
        # lists, or give up after a few passes rather than spin (a session
        # rotating faster than this can end it).
        ended = 0
        for _ in range(_END_SESSIONS_PASSES):
            listed = await self.list_sessions(user_id)
            if all(info.tenant_id is None for info in listed):
                return ended + await self.invalidate_user(user_id, except_key=except_key)
            missed = False
            for info in listed:
                if info.tenant_id is not None or info.storage_key == except_key:
                    continue
                if await self.invalidate_session(info.storage_key):
                    ended += 1
                else:
                    missed = True
            if not missed:
                return ended
        raise StoreError(
            "the user's sessions kept changing while they were being ended; try again",
            substore="sessions",
        )

    # -- lifespan -------------------------------------------------------------------------
    async def startup(self) -> None:
        """Open the store, the rate-limit store and the audit pipeline (which
        replays its recovery log first), then start the cleanup task."""
        open_ = getattr(self.store, "open", None)
        if open_ is not None:
            await open_()
        await self.rate_limiter.open()
        if self.audit is not None:
            await self.audit.start()
        if self.cleanup_interval is not None and hasattr(self.store, "purge_expired"):
            self._cleanup_task = asyncio.create_task(self._cleanup_loop(), name="axess-cleanup")

    async def shutdown(self) -> None:
        """Drain the audit pipeline (bounded; leftovers go to the recovery log),
        cancel background tasks, then close the stores — in that order."""
        try:
            if self.audit is not None:
                await self.audit.stop()
        finally:
            task, self._cleanup_task = self._cleanup_task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.rate_limiter.close()
            close = getattr(self.store, "close", None)
            if close is not None:
                await close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Use as ``Starlette(lifespan=auth.lifespan)`` or enter it from your own lifespan."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def purge_expired(self) -> dict[str, int]:
        """Delete expired rows now; returns counts per target."""
        store: _Purgeable = self.store  # type: ignore[assignment]
        return await store.purge_expired(self.clock.time())

    async def _cleanup_loop(self) -> None:
        assert self.cleanup_interval is not None
        while True:
            await asyncio.sleep(self.cleanup_interval)
            try:
                counts = await self.purge_expired()
                if any(counts.values()):
                    logger.info("purged expired rows: %s", counts)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retried next tick
                logger.warning(
                    "expired-row cleanup failed (%s); retrying next tick", type(exc).__name__
                )
