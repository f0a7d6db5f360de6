"""In-process store for tests and single-process development.

Nothing survives a restart and nothing is shared between worker processes.
Every method runs without awaiting in the middle, so each call is atomic
with respect to other tasks on the event loop.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

from axess.audit.events import AuditQuery, AuthEvent, to_us
from axess.observability.health import HealthStatus
from axess.stores.base import (
    AUDIT,
    FACTORS,
    IDENTITY,
    LOCKOUT,
    SESSIONS,
    LeverSpec,
    LeverState,
    LockoutReservation,
    LockoutStatus,
    SessionRecord,
    purge_targets,
    release_unit,
    reserve_levers,
)
from axess.stores.memory_identity import MemoryIdentityMixin

_UserKey = tuple[str | None, str]


class MemoryStore(MemoryIdentityMixin):
    """Implements the session substore in a dict."""

    name: Final = "memory"
    substores: Final = frozenset({SESSIONS, LOCKOUT, AUDIT, IDENTITY, FACTORS})

    def __init__(self) -> None:
        self._sessions: dict[str, SessionRecord] = {}
        self._by_user: dict[_UserKey, set[str]] = {}
        self._levers: dict[str, LeverState] = {}
        #: Trusted origin key -> trusted until (epoch seconds).
        self._origins: dict[str, float] = {}
        #: Audit rows: event id -> [event, archived_at_us, purge_at_us].
        self._audit: dict[str, _AuditRow] = {}
        self._init_identity()

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
    def load_session_now(self, key: str, now: float) -> SessionRecord | None:
        """:meth:`load_session`, which never waits here (see ``ImmediateSessionRead``)."""
        rec = self._sessions.get(key)  # _live, inlined: this runs on every request
        return None if rec is None or rec.expires_at <= now else rec

    async def load_session(self, key: str, now: float) -> SessionRecord | None:
        return self.load_session_now(key, now)

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
        purge = {
            SESSIONS: self.purge_expired_sessions,
            LOCKOUT: self.purge_expired_lockouts,
            AUDIT: self.purge_archived_audit_events,
            IDENTITY: self.purge_identity,
            FACTORS: self.purge_identity,
        }
        return {t: await purge[t](now) for t in targets}

    # -- lockout substore ---------------------------------------------------
    def _trusted(self, origin: str | None, now: float) -> bool:
        return origin is not None and self._origins.get(origin, 0.0) > now

    async def lockout_status(
        self, keys: Sequence[str], origin: str | None, now: float
    ) -> LockoutStatus:
        locked = {
            k: st.locked_until
            for k in keys
            if (st := self._levers.get(k)) is not None and st.locked_until > now
        }
        return LockoutStatus(locked, self._trusted(origin, now))

    def _count(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float, all_or_nothing: bool
    ) -> LockoutReservation:
        # No await between reading and writing: atomic on the event loop.
        result = reserve_levers(
            levers, self._levers, self._trusted(origin, now), now, all_or_nothing=all_or_nothing
        )
        for state in result.states:
            self._levers[state.key] = state
        return result

    async def lockout_failure(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float
    ) -> list[LeverState]:
        return self._count(levers, origin, now, False).states

    async def lockout_reserve(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float
    ) -> LockoutReservation:
        return self._count(levers, origin, now, True)

    async def lockout_success(
        self,
        reset: Sequence[str],
        origin: str | None,
        trusted_until: float,
        now: float,
        release: Sequence[tuple[str, float]] = (),
    ) -> None:
        for key in reset:
            self._levers.pop(key, None)
        for key, window_start in release:
            state = self._levers.get(key)
            if state is not None and (back := release_unit(state, window_start, now)):
                self._levers[key] = back
        if origin is not None:
            self._origins[origin] = trusted_until

    async def lockout_clear(self, keys: Sequence[str]) -> int:
        return sum(
            (self._levers.pop(k, None) is not None) + (self._origins.pop(k, None) is not None)
            for k in keys
        )

    async def lockout_state(self, key: str, now: float) -> LeverState | None:
        state = self._levers.get(key)
        return state if state is not None and state.expires_at > now else None

    async def purge_expired_lockouts(self, now: float) -> int:
        dead = [k for k, st in self._levers.items() if st.expires_at <= now]
        dead_origins = [k for k, until in self._origins.items() if until <= now]
        for key in dead:
            del self._levers[key]
        for key in dead_origins:
            del self._origins[key]
        return len(dead) + len(dead_origins)

    # -- audit substore -----------------------------------------------------
    async def insert_audit_events(self, events: Sequence[AuthEvent]) -> None:
        for event in events:
            self._audit.setdefault(event.id, _AuditRow(event))

    async def query_audit_events(
        self, tenant_id: str | None, query: AuditQuery | None = None
    ) -> list[AuthEvent]:
        q = query or AuditQuery()
        found = [r.event for r in self._audit.values() if q.matches(tenant_id, r.event)]
        found.sort(key=lambda e: (e.time, e.id), reverse=q.order == "desc")
        return found[: q.limit]

    async def audit_events_to_archive(self, before_us: int, limit: int) -> list[AuthEvent]:
        due = [
            r.event
            for r in self._audit.values()
            if r.archived_at_us is None and r.event.time < before_us
        ]
        due.sort(key=lambda e: (e.time, e.id))
        return due[:limit]

    async def mark_audit_events_archived(
        self, ids: Sequence[str], *, archived_at_us: int, purge_at_us: int
    ) -> int:
        count = 0
        for event_id in dict.fromkeys(ids):
            row = self._audit.get(event_id)
            if row is not None and row.archived_at_us is None:
                row.archived_at_us, row.purge_at_us = archived_at_us, purge_at_us
                count += 1
        return count

    async def purge_archived_audit_events(self, now: float) -> int:
        now_us = to_us(now)
        dead = [
            k
            for k, r in self._audit.items()
            if r.purge_at_us is not None and r.purge_at_us <= now_us
        ]
        for key in dead:
            del self._audit[key]
        return len(dead)

    def __len__(self) -> int:
        """How many sessions the store holds."""
        return len(self._sessions)

    def __bool__(self) -> bool:
        # A store is a store even with no session in it: without this,
        # ``__len__`` would make an empty one falsy, and ``store or default``
        # would silently swap it for another.
        return True


@dataclass(slots=True)
class _AuditRow:
    event: AuthEvent
    archived_at_us: int | None = None
    purge_at_us: int | None = None
