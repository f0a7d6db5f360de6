"""The store as session registry: list and revoke a user's sessions.

There is no separate registry to consult per request: revocation is
immediate because every request loads its session from the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from axess.clock import Clock
from axess.errors import EnvelopeError
from axess.observability.metrics import AuthnMetrics
from axess.session import data as d
from axess.session.envelope import SessionCrypto
from axess.session.events import KEY_PREFIX_CHARS, SessionEvent, SessionEventHook
from axess.stores.base import SessionStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What "your sessions" pages show. ``storage_key`` identifies the row for
    :meth:`SessionRegistry.invalidate_session`; it cannot be used as a cookie."""

    storage_key: str
    created_at: float
    expires_at: float
    last_seen_at: float | None
    ip_prefix: str | None
    user_agent: str | None
    tenant_id: str | None

    @property
    def key_prefix(self) -> str:
        return self.storage_key[:KEY_PREFIX_CHARS]


class SessionRegistry:
    """``list_sessions`` / ``invalidate_user`` / ``invalidate_session`` over a store."""

    def __init__(
        self,
        store: SessionStore,
        crypto: SessionCrypto,
        clock: Clock,
        metrics: AuthnMetrics,
        on_event: SessionEventHook | None = None,
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._clock = clock
        self._metrics = metrics
        self._on_event = on_event

    async def list_sessions(
        self, user_id: str, *, tenant_id: str | None = None
    ) -> list[SessionInfo]:
        """Live sessions of ``user_id``, oldest first. Rows that no longer open
        (e.g. sealed with a removed key) are listed without details."""
        rows = await self._store.list_user_sessions(
            user_id, self._clock.time(), tenant_id=tenant_id
        )
        out = []
        for row in rows:
            data: d.SessionData | None
            try:
                data = d.decode(self._crypto.open(row.payload, row.key))[0]
            except (EnvelopeError, ValueError):
                data = None
            out.append(
                SessionInfo(
                    storage_key=row.key,
                    created_at=row.created_at,
                    expires_at=row.expires_at,
                    last_seen_at=data.last_seen_at if data else None,
                    ip_prefix=data.ip_prefix if data else None,
                    user_agent=data.user_agent if data else None,
                    tenant_id=row.tenant_id,
                )
            )
        return out

    async def invalidate_user(
        self, user_id: str, *, tenant_id: str | None = None, except_key: str | None = None
    ) -> int:
        """Delete every session of ``user_id`` ("log out everywhere"); returns the count.

        ``except_key`` keeps one session (e.g. the current one after a password change).
        """
        count = await self._store.delete_user_sessions(
            user_id, tenant_id=tenant_id, except_key=except_key
        )
        for _ in range(count):
            self._metrics.session_invalidated()
        if count:
            logger.info("invalidated %d session(s) of a user", count)
            self._emit(
                SessionEvent("session_invalidated", "*", user_id, tenant_id, "invalidate_user")
            )
        return count

    async def invalidate_session(self, storage_key: str) -> bool:
        """Delete one session by storage key; False if it did not exist."""
        deleted = await self._store.delete_session(storage_key)
        if deleted:
            self._metrics.session_invalidated()
            self._emit(
                SessionEvent(
                    "session_invalidated", storage_key[:KEY_PREFIX_CHARS], reason="revoked"
                )
            )
        return deleted

    def _emit(self, event: SessionEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            logger.exception("session event hook failed")
