"""A store that routes each substore to its own backend.

Typical use splits durable from volatile state::

    CompositeStore(default=PostgresStore(dsn), sessions=ValkeyStore(url),
                   ratelimit=valkey, lockout=valkey)

Routing rules (checked at construction, :class:`~axess.errors.ConfigurationError`
on violation):

* A substore routed explicitly must be implemented by that backend.
* A substore not routed explicitly goes to ``default`` if ``default``
  implements it; otherwise nobody serves it and it is *unavailable*
  (:meth:`CompositeStore.backend_for` raises, naming it). The default need
  not implement everything.
* The transactional cluster (identity, factors, audit) must not be split
  across backend objects: they change together in one transaction.
* The backend serving ``sessions``, ``lockout``, ``identity``, ``factors`` or
  ``audit`` must implement that substore's protocol.

The composite implements those protocols itself, each method delegating to the
backend serving its substore: tenant and user methods go to ``identity``,
factor methods (password hash, TOTP, recovery codes) to ``factors`` (the same
backend object, by the cluster rule). Calling a method of an unavailable
substore raises ConfigurationError naming it. So ``isinstance(composite,
IdentityStore)`` is always true: what is actually served is ``substores``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol, cast, runtime_checkable

from axess.errors import ConfigurationError
from axess.observability.health import HealthState, HealthStatus
from axess.stores.base import (
    ALL_SUBSTORES,
    AUDIT,
    FACTORS,
    IDENTITY,
    LOCKOUT,
    SESSIONS,
    TRANSACTIONAL_CLUSTER,
    AuditStore,
    Backend,
    FactorRecord,
    IdentityStore,
    LeverSpec,
    LeverState,
    LockoutReservation,
    LockoutStatus,
    LockoutStore,
    SessionRecord,
    SessionStore,
    TenantPepper,
    TenantRecord,
    UserRecord,
)

if TYPE_CHECKING:
    from axess.audit.events import AuditQuery, AuthEvent

_NAMED: Final = ("sessions", "lockout", "ratelimit", "identity", "factors", "audit")
#: Every routable substore, in listing order (constructor order first; names
#: later added to ``ALL_SUBSTORES`` follow, routed with keyword arguments).
_ORDER: Final = (*_NAMED, *sorted(ALL_SUBSTORES - frozenset(_NAMED)))
#: The protocol the backend serving each delegated substore must implement
#: (checked at construction; the delegating methods rely on it).
_PROTOCOLS: Final[Mapping[str, type]] = {
    SESSIONS: SessionStore,
    LOCKOUT: LockoutStore,
    IDENTITY: IdentityStore,
    FACTORS: IdentityStore,
    AUDIT: AuditStore,
}


@runtime_checkable
class Purgeable(Protocol):
    """A backend that purges expired rows of the substores it implements."""

    async def purge_expired(
        self, now: float, *, only: Iterable[str] | None = None
    ) -> dict[str, int]: ...


class CompositeStore:
    """Routes each substore to a backend; implements :class:`SessionStore`,
    :class:`LockoutStore`, :class:`IdentityStore` and :class:`AuditStore` by
    delegating to the backends serving them (see the module docstring)."""

    name: str = "composite"

    def __init__(
        self,
        default: Backend,
        *,
        sessions: Backend | None = None,
        lockout: Backend | None = None,
        ratelimit: Backend | None = None,
        identity: Backend | None = None,
        factors: Backend | None = None,
        audit: Backend | None = None,
        **others: Backend | None,
    ) -> None:
        unknown = sorted(set(others) - ALL_SUBSTORES)
        if unknown:
            raise TypeError(f"CompositeStore() got unknown substore(s): {', '.join(unknown)}")
        explicit: dict[str, Backend | None] = {
            "sessions": sessions,
            "lockout": lockout,
            "ratelimit": ratelimit,
            "identity": identity,
            "factors": factors,
            "audit": audit,
            **others,
        }
        routes: dict[str, Backend] = {}
        for substore in _ORDER:
            backend = explicit.get(substore)
            if backend is not None:
                if substore not in backend.substores:
                    raise ConfigurationError(
                        f"substore {substore!r} is routed to backend {backend.name!r}, "
                        f"which does not implement it (it implements: "
                        f"{', '.join(sorted(backend.substores)) or 'nothing'})"
                    )
                routes[substore] = backend
            elif substore in default.substores:
                routes[substore] = default
        cluster = {id(b): b for s, b in routes.items() if s in TRANSACTIONAL_CLUSTER}
        if len(cluster) > 1:
            placement = ", ".join(
                f"{s} -> {routes[s].name}"
                for s in _ORDER
                if s in TRANSACTIONAL_CLUSTER and s in routes
            )
            same_names = len({b.name for b in cluster.values()}) == 1
            raise ConfigurationError(
                "identity, factors and audit change together in one transaction and must "
                f"share one backend; this configuration splits them ({placement}"
                + (", distinct backend objects" if same_names else "")
                + ")"
            )
        for substore, protocol in _PROTOCOLS.items():
            backend = routes.get(substore)
            if backend is not None and not isinstance(backend, protocol):
                raise ConfigurationError(
                    f"backend {backend.name!r} lists {substore!r} but does not "
                    f"implement the {protocol.__name__} protocol"
                )
        self._routes: Mapping[str, Backend] = routes
        distinct: dict[int, Backend] = {id(default): default}
        for substore in _ORDER:
            if substore in routes:
                distinct.setdefault(id(routes[substore]), routes[substore])
        self._backends: tuple[Backend, ...] = tuple(distinct.values())
        #: The substores some backend serves.
        self.substores: frozenset[str] = frozenset(routes)

    def __repr__(self) -> str:
        routes = ", ".join(f"{s}={b.name}" for s, b in self._routes.items())
        return f"CompositeStore({routes})"

    # -- routing --------------------------------------------------------------
    @property
    def backends(self) -> list[Backend]:
        """Each distinct backend once: the default first, then in routing order."""
        return list(self._backends)

    def backend_for(self, substore: str) -> Backend:
        """The backend serving ``substore``; ConfigurationError if none does."""
        try:
            return self._routes[substore]
        except KeyError:
            if substore not in ALL_SUBSTORES:
                raise ConfigurationError(f"unknown substore {substore!r}") from None
            raise ConfigurationError(
                f"substore {substore!r} is unavailable: no backend of this "
                "CompositeStore implements it (route it explicitly)"
            ) from None

    def _owned(self, backend: Backend) -> list[str]:
        return [s for s in _ORDER if s in self._routes and self._routes[s] is backend]

    def _label(self, backend: Backend) -> str:
        owned = self._owned(backend)
        return f"{backend.name} ({', '.join(owned)})" if owned else f"{backend.name} (default)"

    # The backend serving a delegated substore (ConfigurationError naming the
    # substore if none does); its protocol was checked at construction.
    def _sessions(self) -> SessionStore:
        return cast(SessionStore, self.backend_for(SESSIONS))

    def _lockout(self) -> LockoutStore:
        return cast(LockoutStore, self.backend_for(LOCKOUT))

    def _identity(self) -> IdentityStore:
        return cast(IdentityStore, self.backend_for(IDENTITY))

    def _factors(self) -> IdentityStore:
        return cast(IdentityStore, self.backend_for(FACTORS))

    def _audit(self) -> AuditStore:
        return cast(AuditStore, self.backend_for(AUDIT))

    # -- lifecycle ------------------------------------------------------------
    async def open(self) -> None:
        """Open each distinct backend once; on failure close those already opened."""
        opened: list[Backend] = []
        try:
            for backend in self._backends:
                await backend.open()
                opened.append(backend)
        except BaseException:
            for backend in reversed(opened):
                try:
                    await backend.close()
                except Exception:  # noqa: S110 - the open failure is the error to report
                    pass
            raise

    async def close(self) -> None:
        """Close each distinct backend once (reverse order); raise the first error."""
        first: Exception | None = None
        for backend in reversed(self._backends):
            try:
                await backend.close()
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    async def check_health(self) -> HealthStatus:
        """Unhealthy if any backend is, degraded if any is; the reason names which."""
        results = await asyncio.gather(
            *(b.check_health() for b in self._backends), return_exceptions=True
        )
        unhealthy: list[str] = []
        degraded: list[str] = []
        for backend, result in zip(self._backends, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                unhealthy.append(f"{self._label(backend)}: {type(result).__name__}")
            elif result.state is HealthState.UNHEALTHY:
                unhealthy.append(f"{self._label(backend)}: {result.reason}")
            elif result.state is HealthState.DEGRADED:
                degraded.append(f"{self._label(backend)}: {result.reason}")
        if unhealthy:
            return HealthStatus.unhealthy("; ".join(unhealthy + degraded))
        if degraded:
            return HealthStatus.degraded("; ".join(degraded))
        return HealthStatus.healthy()

    async def purge_expired(
        self, now: float, *, only: Iterable[str] | None = None
    ) -> dict[str, int]:
        """Purge each target on the backend serving it and merge the counts.

        ``only`` defaults to every routable substore; a name that no backend
        serves raises ValueError. A backend without ``purge_expired`` can
        still purge ``sessions`` through its session substore; its other
        substores are reported as 0.
        """
        if only is None:
            targets = self.substores
        else:
            targets = frozenset([only] if isinstance(only, str) else only)
            unknown = targets - self.substores
            if unknown:
                raise ValueError(f"unknown purge target(s): {', '.join(sorted(unknown))}")
        counts: dict[str, int] = {}
        for backend in self._backends:
            mine = frozenset(s for s in self._owned(backend) if s in targets)
            if not mine:
                continue
            if isinstance(backend, Purgeable):
                counts.update(await backend.purge_expired(now, only=mine))
            else:
                for substore in mine:
                    if substore == SESSIONS and isinstance(backend, SessionStore):
                        counts[substore] = await backend.purge_expired_sessions(now)
                    else:
                        counts[substore] = 0
        return {s: counts.get(s, 0) for s in _ORDER if s in targets}

    # -- session substore (delegated) -----------------------------------------
    async def load_session(self, key: str, now: float) -> SessionRecord | None:
        return await self._sessions().load_session(key, now)

    async def create_session(self, record: SessionRecord) -> bool:
        return await self._sessions().create_session(record)

    async def save_session(self, record: SessionRecord, now: float) -> bool:
        return await self._sessions().save_session(record, now)

    async def cycle_session(self, old_key: str, record: SessionRecord, now: float) -> bool:
        return await self._sessions().cycle_session(old_key, record, now)

    async def delete_session(self, key: str) -> bool:
        return await self._sessions().delete_session(key)

    async def delete_user_sessions(
        self, user_id: str, *, tenant_id: str | None = None, except_key: str | None = None
    ) -> int:
        return await self._sessions().delete_user_sessions(
            user_id, tenant_id=tenant_id, except_key=except_key
        )

    async def list_user_sessions(
        self, user_id: str, now: float, *, tenant_id: str | None = None
    ) -> list[SessionRecord]:
        return await self._sessions().list_user_sessions(user_id, now, tenant_id=tenant_id)

    async def purge_expired_sessions(self, now: float) -> int:
        return await self._sessions().purge_expired_sessions(now)

    # -- lockout substore (delegated) -----------------------------------------
    async def lockout_status(
        self, keys: Sequence[str], origin: str | None, now: float
    ) -> LockoutStatus:
        return await self._lockout().lockout_status(keys, origin, now)

    async def lockout_failure(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float
    ) -> list[LeverState]:
        return await self._lockout().lockout_failure(levers, origin, now)

    async def lockout_reserve(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float
    ) -> LockoutReservation:
        return await self._lockout().lockout_reserve(levers, origin, now)

    async def lockout_success(
        self,
        reset: Sequence[str],
        origin: str | None,
        trusted_until: float,
        now: float,
        release: Sequence[tuple[str, float]] = (),
    ) -> None:
        await self._lockout().lockout_success(reset, origin, trusted_until, now, release)

    async def lockout_clear(self, keys: Sequence[str]) -> int:
        return await self._lockout().lockout_clear(keys)

    async def lockout_state(self, key: str, now: float) -> LeverState | None:
        return await self._lockout().lockout_state(key, now)

    async def purge_expired_lockouts(self, now: float) -> int:
        return await self._lockout().purge_expired_lockouts(now)

    # -- identity substore: tenants and users (delegated) ---------------------
    async def create_tenant(self, tenant: TenantRecord) -> bool:
        return await self._identity().create_tenant(tenant)

    async def get_tenant(self, tenant_id: str) -> TenantRecord | None:
        return await self._identity().get_tenant(tenant_id)

    async def get_tenant_by_slug(self, slug: str) -> TenantRecord | None:
        return await self._identity().get_tenant_by_slug(slug)

    async def update_tenant(self, tenant: TenantRecord) -> bool:
        return await self._identity().update_tenant(tenant)

    async def tenant_pepper(self, tenant_id: str) -> TenantPepper:
        return await self._identity().tenant_pepper(tenant_id)

    async def rotate_tenant_pepper(self, tenant_id: str) -> int:
        return await self._identity().rotate_tenant_pepper(tenant_id)

    async def create_user(self, user: UserRecord) -> bool:
        return await self._identity().create_user(user)

    async def get_user(self, user_id: str) -> UserRecord | None:
        return await self._identity().get_user(user_id)

    async def find_user(self, tenant_id: str, identifier: str) -> UserRecord | None:
        return await self._identity().find_user(tenant_id, identifier)

    async def set_user_status(self, user_id: str, status: str) -> bool:
        return await self._identity().set_user_status(user_id, status)

    async def record_login(self, user_id: str, at: float) -> None:
        await self._identity().record_login(user_id, at)

    # -- factors substore: password, TOTP, recovery codes (delegated) ---------
    async def get_factors(self, user_id: str) -> FactorRecord:
        return await self._factors().get_factors(user_id)

    async def set_password_hash(self, user_id: str, phc: str | None) -> None:
        await self._factors().set_password_hash(user_id, phc)

    async def rehash_password(self, user_id: str, expected: str, phc: str) -> bool:
        return await self._factors().rehash_password(user_id, expected, phc)

    async def set_totp_secret(self, user_id: str, sealed: bytes | None) -> None:
        await self._factors().set_totp_secret(user_id, sealed)

    async def totp_accept_step(self, user_id: str, step: int) -> bool:
        return await self._factors().totp_accept_step(user_id, step)

    async def enable_totp(self, user_id: str, sealed: bytes, step: int) -> bool:
        return await self._factors().enable_totp(user_id, sealed, step)

    async def reseal_totp_secret(self, user_id: str, expected: bytes, sealed: bytes) -> bool:
        return await self._factors().reseal_totp_secret(user_id, expected, sealed)

    async def replace_recovery_codes(self, user: str, hashes: Sequence[str]) -> None:
        await self._factors().replace_recovery_codes(user, hashes)

    async def consume_recovery_code(self, user: str, candidates: Collection[str]) -> bool:
        return await self._factors().consume_recovery_code(user, candidates)

    async def count_recovery_codes(self, user: str) -> int:
        return await self._factors().count_recovery_codes(user)

    # -- audit substore (delegated) -------------------------------------------
    async def insert_audit_events(self, events: Sequence[AuthEvent]) -> None:
        await self._audit().insert_audit_events(events)

    async def query_audit_events(
        self, tenant_id: str | None, query: AuditQuery | None = None
    ) -> list[AuthEvent]:
        return await self._audit().query_audit_events(tenant_id, query)

    async def audit_events_to_archive(self, before_us: int, limit: int) -> list[AuthEvent]:
        return await self._audit().audit_events_to_archive(before_us, limit)

    async def mark_audit_events_archived(
        self, ids: Sequence[str], *, archived_at_us: int, purge_at_us: int
    ) -> int:
        return await self._audit().mark_audit_events_archived(
            ids, archived_at_us=archived_at_us, purge_at_us=purge_at_us
        )

    async def purge_archived_audit_events(self, now: float) -> int:
        return await self._audit().purge_archived_audit_events(now)
