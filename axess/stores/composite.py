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
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from axess.errors import ConfigurationError
from axess.observability.health import HealthState, HealthStatus
from axess.stores.base import (
    ALL_SUBSTORES,
    AUDIT,
    SESSIONS,
    TRANSACTIONAL_CLUSTER,
    AuditStore,
    Backend,
    SessionRecord,
    SessionStore,
)

if TYPE_CHECKING:
    from axess.audit.events import AuditQuery, AuthEvent

_NAMED: Final = ("sessions", "lockout", "ratelimit", "identity", "factors", "audit")
#: Every routable substore, in listing order (constructor order first; names
#: later added to ``ALL_SUBSTORES`` follow, routed with keyword arguments).
_ORDER: Final = (*_NAMED, *sorted(ALL_SUBSTORES - frozenset(_NAMED)))


@runtime_checkable
class Purgeable(Protocol):
    """A backend that purges expired rows of the substores it implements."""

    async def purge_expired(
        self, now: float, *, only: Iterable[str] | None = None
    ) -> dict[str, int]: ...


class CompositeStore:
    """Routes each substore to a backend; implements :class:`SessionStore` and
    :class:`AuditStore` by delegating to the backends serving them."""

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
        session_store = routes.get(SESSIONS)
        if session_store is not None and not isinstance(session_store, SessionStore):
            raise ConfigurationError(
                f"backend {session_store.name!r} lists 'sessions' but does not "
                "implement the SessionStore protocol"
            )
        audit_store = routes.get(AUDIT)
        if audit_store is not None and not isinstance(audit_store, AuditStore):
            raise ConfigurationError(
                f"backend {audit_store.name!r} lists 'audit' but does not "
                "implement the AuditStore protocol"
            )
        self._session_store: SessionStore | None = session_store
        self._audit_store: AuditStore | None = audit_store
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

    def _audit(self) -> AuditStore:
        if self._audit_store is None:
            self.backend_for(AUDIT)  # raises, naming the substore
        assert self._audit_store is not None
        return self._audit_store

    def _sessions(self) -> SessionStore:
        if self._session_store is None:
            self.backend_for(SESSIONS)  # raises, naming the substore
        assert self._session_store is not None
        return self._session_store

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
