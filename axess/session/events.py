"""Session lifecycle events, handed to an optional hook (the audit pipeline
connects here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

SessionEventType = Literal[
    "session_created",
    "session_rotated",
    "session_invalidated",
    "session_expired",
    "session_binding_mismatch",
]

#: Storage-key characters that may appear in logs and events (never the id).
KEY_PREFIX_CHARS: Final = 12


@dataclass(frozen=True, slots=True)
class SessionEvent:
    type: SessionEventType
    #: Storage-key prefix (never the session id, never the full key).
    session: str
    user_id: str | None = None
    tenant_id: str | None = None
    reason: str | None = None
    #: Client IP and User-Agent of the request that caused the event (None
    #: for events outside a request, e.g. an admin revoking sessions).
    ip: str | None = None
    user_agent: str | None = None


SessionEventHook = Callable[[SessionEvent], None]
