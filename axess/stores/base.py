"""Substore protocols: what a backend must do for each concern.

A backend object (``SQLiteStore``, ``ValkeyStore``…) implements one or more
substores; it lists them in ``substores``. Everything above the stores talks
to them only through these protocols.

Time is always passed in (``now``, epoch seconds) so that the injected clock,
not the backend's, decides what has expired.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from axess.observability.health import HealthStatus

SESSIONS: Final = "sessions"
#: Substores that must live on one backend (they change together in one
#: transaction). Later substores join this set as they are added.
TRANSACTIONAL_CLUSTER: Final = frozenset({"identity", "factors", "audit"})
#: Every substore name a composite can route.
ALL_SUBSTORES: Final = frozenset({SESSIONS, "lockout", "ratelimit"}) | TRANSACTIONAL_CLUSTER


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One stored session row.

    ``key`` is the storage key (hex SHA-256 of the session id, 64 chars): the
    raw id never reaches a store. ``payload`` is the sealed envelope.
    ``expires_at`` is the instant (epoch seconds) at and after which the row
    is dead. ``user_id``/``tenant_id`` index the row for "log out everywhere".
    """

    key: str
    payload: bytes
    expires_at: float
    created_at: float
    user_id: str | None = None
    tenant_id: str | None = None


@runtime_checkable
class SessionStore(Protocol):
    """The session substore. The store is the session registry.

    Guarantees every implementation must give (checked by the contract suite
    in :mod:`axess.testing`):

    * ``load_session`` is one round trip and never returns an expired row.
    * ``create_session`` inserts only if the key is absent (returns ``False``
      otherwise, leaving the existing row untouched).
    * ``save_session`` updates only a row that still exists and has not
      expired (no resurrection after a logout or revocation).
    * ``cycle_session`` atomically removes ``old_key`` and inserts the new
      record; if ``old_key`` no longer exists nothing is written and it
      returns ``False``.
    * Backend failures raise :class:`axess.errors.StoreError`, never a
      driver exception.
    """

    async def load_session(self, key: str, now: float) -> SessionRecord | None: ...

    async def create_session(self, record: SessionRecord) -> bool: ...

    async def save_session(self, record: SessionRecord, now: float) -> bool: ...

    async def cycle_session(self, old_key: str, record: SessionRecord, now: float) -> bool: ...

    async def delete_session(self, key: str) -> bool: ...

    async def delete_user_sessions(
        self, user_id: str, *, tenant_id: str | None = None, except_key: str | None = None
    ) -> int: ...

    async def list_user_sessions(
        self, user_id: str, now: float, *, tenant_id: str | None = None
    ) -> list[SessionRecord]: ...

    async def purge_expired_sessions(self, now: float) -> int: ...


@runtime_checkable
class Backend(Protocol):
    """Lifecycle and health shared by every backend object."""

    @property
    def name(self) -> str:
        """Short backend name for logs and health output ("sqlite", "valkey"…)."""

    @property
    def substores(self) -> frozenset[str]:
        """Substore names this backend implements."""

    async def open(self) -> None:
        """Connect / create pools / apply automatic migrations. Idempotent."""

    async def close(self) -> None:
        """Release connections. Idempotent."""

    async def check_health(self) -> HealthStatus: ...

    async def purge_expired(
        self, now: float, *, only: Collection[str] | None = None
    ) -> dict[str, int]:
        """Delete expired rows of each target (default: all it has); counts per target.

        Raises ValueError for a target name the backend does not know.
        """


def purge_targets(only: Collection[str] | None, known: Collection[str]) -> list[str]:
    """Validate ``only`` against ``known`` purge targets; ``None`` means all.

    Raises ValueError naming the unknown targets and the valid ones.
    """
    if only is None:
        return sorted(known)
    unknown = sorted(set(only) - set(known))
    if unknown:
        raise ValueError(f"unknown purge target(s) {unknown}; valid: {sorted(known)}")
    return sorted(set(only))
