"""In-process store for tests and single-process development.

Nothing survives a restart and nothing is shared between worker processes.
Every method runs without awaiting in the middle, so each call is atomic
with respect to other tasks on the event loop.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from axess.observability.health import HealthStatus
from axess.stores.base import SESSIONS, SessionRecord, purge_targets

_UserKey = tuple[str | None, str]


class MemoryStore:
    """Implements the session substore in a dict."""

    name: Final = "memory"
    substores: Final = frozenset({SESSIONS})

    def __init__(self) -> None:
        self._sessions: dict[str, SessionRecord] = {}
        self._by_user: dict[_UserKey, set[str]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def check_health(self) -> HealthStatus:
        return HealthStatus.healthy()

    # -- internal -----------------------------------------------------------
    def _index(self, rec: SessionRecord) -> None:
        if rec.user_id is not None:
            self._by_user.setdefault((rec.tenant_id, rec.user_id), set()).add(rec.key)

    def _unindex(self, rec: SessionRecord) -> None:
        if rec.user_id is not None:
            keys = self._by_user.get((rec.tenant_id, rec.user_id))
            if keys is not None:
                keys.discard(rec.key)
                if not keys:
                    del self._by_user[(rec.tenant_id, rec.user_id)]

    def _live(self, key: str, now: float) -> SessionRecord | None:
        # Reads never delete: expired rows stay until purged, as in SQL/Valkey.
        rec = self._sessions.get(key)
        if rec is None or rec.expires_at <= now:
            return None
        return rec

    def _live_or_drop(self, key: str, now: float) -> SessionRecord | None:
        """For writes: a dead row found on the way is removed (as Valkey does)."""
        rec = self._sessions.get(key)
        if rec is not None and rec.expires_at <= now:
            self._unindex(self._sessions.pop(key))
            return None
        return rec

    def _user_keys(self, user_id: str, tenant_id: str | None) -> list[str]:
        if tenant_id is not None:
            return list(self._by_user.get((tenant_id, user_id), ()))
        return [k for (t, u), keys in self._by_user.items() if u == user_id for k in keys]

    # -- session substore ---------------------------------------------------
    async def load_session(self, key: str, now: float) -> SessionRecord | None:
        return self._live(key, now)

    async def create_session(self, record: SessionRecord) -> bool:
        if record.key in self._sessions:
            return False
        self._sessions[record.key] = record
        self._index(record)
        return True

    async def save_session(self, record: SessionRecord, now: float) -> bool:
        old = self._live_or_drop(record.key, now)
        if old is None:
            return False
        self._unindex(old)
        self._sessions[record.key] = record
        self._index(record)
        return True

    async def cycle_session(self, old_key: str, record: SessionRecord, now: float) -> bool:
        old = self._live_or_drop(old_key, now)
        if old is None or record.key in self._sessions:
            return False
        self._unindex(self._sessions.pop(old_key))
        self._sessions[record.key] = record
        self._index(record)
        return True

    async def delete_session(self, key: str) -> bool:
        rec = self._sessions.pop(key, None)
        if rec is None:
            return False
        self._unindex(rec)
        return True

    async def delete_user_sessions(
        self, user_id: str, *, tenant_id: str | None = None, except_key: str | None = None
    ) -> int:
        count = 0
        for key in self._user_keys(user_id, tenant_id):
            if key != except_key and await self.delete_session(key):
                count += 1
        return count

    async def list_user_sessions(
        self, user_id: str, now: float, *, tenant_id: str | None = None
    ) -> list[SessionRecord]:
        out = [r for k in self._user_keys(user_id, tenant_id) if (r := self._live(k, now))]
        return sorted(out, key=lambda r: (r.created_at, r.key))

    async def purge_expired_sessions(self, now: float) -> int:
        dead = [k for k, r in self._sessions.items() if r.expires_at <= now]
        for key in dead:
            self._unindex(self._sessions.pop(key))
        return len(dead)

    async def purge_expired(
        self, now: float, *, only: Collection[str] | None = None
    ) -> dict[str, int]:
        targets = purge_targets(only, self.substores)
        return {t: await self.purge_expired_sessions(now) for t in targets}

    def __len__(self) -> int:
        return len(self._sessions)
