"""Audit events: the :class:`AuthEvent` record, its stable wire strings and
its JSON form. Pure: no I/O, no imports from middleware or the facade.

Every event carries a time in epoch **microseconds** from the injected
:class:`~axess.clock.Clock` and an id that is unique and sortable by time
(a UUIDv7 string built from that clock and the injected
:class:`~axess.clock.Random`). Sinks that store events (the SQL audit table)
are idempotent on the id, so delivering an event twice never duplicates it.

Nothing secret ever enters an event: there is no field for a password, a
code, a key or a session id; ``session`` holds at most the first
:data:`SESSION_PREFIX_CHARS` characters of the *storage key* (which is
itself a hash of the id); and ``extras`` entries whose name looks like a
secret (``password``, ``code``, ``token``, ``key``…) are replaced by
``"[redacted]"`` when the event is built.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

from axess._cache import Memo
from axess.clock import Clock, Random
from axess.session.events import KEY_PREFIX_CHARS, SessionEvent
from axess.text import storable

#: JSON value allowed in ``extras`` (after sanitizing).
JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"

#: Version of the JSON form (the ``"v"`` field); bumped only for breaking changes.
WIRE_VERSION: Final = 1
#: Characters of the storage key an event may carry.
SESSION_PREFIX_CHARS: Final = KEY_PREFIX_CHARS


class EventType(enum.StrEnum):
    """The event catalogue. The values are wire strings: stable forever."""

    LOGIN_ATTEMPT = "login_attempt"
    AUTHENTICATED = "authenticated"
    FACTOR_VERIFIED = "factor_verified"
    FACTOR_FAILED = "factor_failed"
    LOGOUT = "logout"
    SESSION_CREATED = "session_created"
    SESSION_ROTATED = "session_rotated"
    SESSION_INVALIDATED = "session_invalidated"
    SESSION_EXPIRED = "session_expired"
    SESSION_BINDING_MISMATCH = "session_binding_mismatch"
    LOCKOUT_TRIGGERED = "lockout_triggered"
    LOCKOUT_CLEARED = "lockout_cleared"
    RATE_LIMITED = "rate_limited"
    PASSWORD_CHANGED = "password_changed"  # noqa: S105 - an event name, not a secret
    TOTP_ENROLLED = "totp_enrolled"
    TOTP_DISABLED = "totp_disabled"
    RECOVERY_CODE_USED = "recovery_code_used"
    RECOVERY_CODES_REGENERATED = "recovery_codes_regenerated"
    ACCOUNT_SUSPENDED = "account_suspended"
    ACCOUNT_ACTIVATED = "account_activated"
    AUTHZ_DENIED = "authz_denied"


class EventStatus(enum.StrEnum):
    """Outcome of the audited action. Wire strings, stable forever."""

    SUCCESS = "success"
    FAILURE = "failure"
    INFO = "info"


#: The status an event of each catalogue type gets when none is given.
DEFAULT_STATUS: Final[Mapping[str, EventStatus]] = {
    EventType.LOGIN_ATTEMPT: EventStatus.INFO,
    EventType.AUTHENTICATED: EventStatus.SUCCESS,
    EventType.FACTOR_VERIFIED: EventStatus.SUCCESS,
    EventType.FACTOR_FAILED: EventStatus.FAILURE,
    EventType.LOGOUT: EventStatus.SUCCESS,
    EventType.SESSION_CREATED: EventStatus.SUCCESS,
    EventType.SESSION_ROTATED: EventStatus.SUCCESS,
    EventType.SESSION_INVALIDATED: EventStatus.INFO,
    EventType.SESSION_EXPIRED: EventStatus.INFO,
    EventType.SESSION_BINDING_MISMATCH: EventStatus.FAILURE,
    EventType.LOCKOUT_TRIGGERED: EventStatus.FAILURE,
    EventType.LOCKOUT_CLEARED: EventStatus.INFO,
    EventType.RATE_LIMITED: EventStatus.FAILURE,
    EventType.PASSWORD_CHANGED: EventStatus.SUCCESS,
    EventType.TOTP_ENROLLED: EventStatus.SUCCESS,
    EventType.TOTP_DISABLED: EventStatus.INFO,
    EventType.RECOVERY_CODE_USED: EventStatus.SUCCESS,
    EventType.RECOVERY_CODES_REGENERATED: EventStatus.SUCCESS,
    EventType.ACCOUNT_SUSPENDED: EventStatus.INFO,
    EventType.ACCOUNT_ACTIVATED: EventStatus.INFO,
    EventType.AUTHZ_DENIED: EventStatus.FAILURE,
}

#: Maximum characters kept per text field (longer values are cut; the SQL
#: columns are sized to match).
FIELD_LIMITS: Final[Mapping[str, int]] = {
    "tenant": 255,
    "user": 255,
    "session": SESSION_PREFIX_CHARS,
    "ip": 64,
    "user_agent": 512,
    "request_id": 128,
    "factor": 64,
    "lever": 32,
    "reason": 255,
    "actor": 255,
}
#: Serialized ``extras`` larger than this are replaced by a marker.
EXTRAS_MAX_BYTES: Final = 8192
_EXTRAS_MAX_DEPTH: Final = 4
_EXTRAS_MAX_STRING: Final = 1024
REDACTED: Final = "[redacted]"

_TYPE_RE: Final = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_ID_RE: Final = re.compile(r"^[0-9A-Za-z_.:-]{1,64}$")
#: Name parts that mark an ``extras`` entry as secret.
_SECRET_WORDS: Final = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "token",
        "otp",
        "totp",
        "pin",
        "code",
        "codes",
        "key",
        "keys",
        "apikey",
        "cookie",
        "cookies",
        "sid",
        "authorization",
        "credential",
        "credentials",
        "session",
        "signature",
        "hash",
    }
)
_WORD_SPLIT: Final = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")


def is_secret_name(name: str) -> bool:
    """True if an ``extras`` key names something secret (``otp_code``, ``apiKey``…)."""
    return _SECRET_NAMES[name]


def _names_a_secret(name: str) -> bool:
    return any(w.lower() in _SECRET_WORDS for w in _WORD_SPLIT.split(name) if w)


# Extras keys repeat (they are field names in the application's code).
_SECRET_NAMES: Final[Memo[str, bool]] = Memo(_names_a_secret, 1024)


def _clean(value: object, depth: int, size: list[int]) -> JSONValue:
    """Sanitized copy of ``value``; adds an upper bound of its JSON length to ``size[0]``."""
    if value is None or isinstance(value, bool):
        size[0] += 5
        return value
    if isinstance(value, int):
        if -(10**18) < value < 10**18:
            size[0] += 20
            return value
        try:
            # Past sys.get_int_max_str_digits() neither str() nor json.dumps()
            # can write it: unrepresentable, like an unknown object (book:
            # Audit, "What never gets into an event").
            size[0] += len(int.__repr__(value))
        except ValueError:
            size[0] += 64
            return f"<{type(value).__name__}>"
        return value
    if isinstance(value, float):
        size[0] += 32
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        value = storable(value[:_EXTRAS_MAX_STRING])
        size[0] += 6 * len(value) + 2  # every character escaped, at worst
        return value
    if depth >= _EXTRAS_MAX_DEPTH:
        size[0] += 12
        return "[too deep]"
    if isinstance(value, Mapping):
        out: dict[str, JSONValue] = {}
        for k, v in value.items():
            key = storable(str(k))
            size[0] += 6 * len(key) + 4
            out[key] = REDACTED if _SECRET_NAMES[key] else _clean(v, depth + 1, size)
        size[0] += 2
        return out
    if isinstance(value, list | tuple | set | frozenset):
        size[0] += 2 + len(value)
        return [_clean(v, depth + 1, size) for v in value]
    # Never str() an unknown object: its repr might carry a secret.
    size[0] += 64
    return f"<{type(value).__name__}>"


def sanitize_extras(extras: Mapping[str, object] | None) -> dict[str, JSONValue]:
    """JSON-safe copy of ``extras``: secret-looking keys redacted, strings cut,
    depth and total size (:data:`EXTRAS_MAX_BYTES` characters of JSON) capped,
    unknown objects replaced by their type name."""
    if not extras:
        return {}
    size = [0]
    cleaned = _clean(extras, 0, size)
    if not isinstance(cleaned, dict):
        raise TypeError("AuthEvent.extras must be a mapping")
    if size[0] > EXTRAS_MAX_BYTES and len(_dumps(cleaned)) > EXTRAS_MAX_BYTES:
        return {"_truncated": True}
    return cleaned


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def new_event_id(time_us: int, random: Random) -> str:
    """A UUIDv7 string (RFC 9562): 48-bit millisecond timestamp, then random bits.

    Ids of events built later sort after earlier ones (to the millisecond),
    which keeps database index inserts local.
    """
    rand = int.from_bytes(random.token_bytes(10), "big")
    ms = (time_us // 1000) & 0xFFFF_FFFF_FFFF
    rand_a = (rand >> 68) & 0xFFF
    rand_b = rand & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def to_us(epoch_seconds: float) -> int:
    """Epoch seconds (a :class:`Clock` reading) as integer microseconds."""
    return round(epoch_seconds * 1_000_000)


_FIELDS: Final = (
    "tenant",
    "user",
    "session",
    "ip",
    "user_agent",
    "request_id",
    "factor",
    "lever",
    "reason",
    "actor",
)
_LIMITS: Final = tuple((name, FIELD_LIMITS[name]) for name in _FIELDS)


@dataclass(frozen=True, slots=True)
class AuthEvent:
    """One audit event.

    Build it with :meth:`create` (id and time from the injected clock and
    randomness); the constructor is for replaying stored events. Both
    normalize: text fields are cut to :data:`FIELD_LIMITS`, ``session`` to
    the storage-key prefix, ``extras`` sanitized, and NUL and lone
    surrogates replaced everywhere (:func:`axess.text.storable`: every sink
    must take every event, or one refused value holds its batch back forever).
    """

    id: str
    type: str
    status: str
    #: Epoch microseconds.
    time: int
    tenant: str | None = None
    user: str | None = None
    #: Storage-key prefix (never a session id, never a whole key).
    session: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    #: Factor kind for factor events (``password``, ``totp``, ``recovery_code``…).
    factor: str | None = None
    #: Lockout lever (``user``, ``ip``, ``tenant``) for lockout events.
    lever: str | None = None
    reason: str | None = None
    #: Who did it, when not the user (an admin, a system job).
    actor: str | None = None
    extras: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID_RE.match(self.id):
            raise ValueError("AuthEvent.id must be 1-64 characters of [0-9A-Za-z_.:-]")
        if not isinstance(self.type, str) or not _TYPE_RE.match(self.type):
            raise ValueError(f"AuthEvent.type {self.type!r} is not a valid event type")
        if self.status not in _STATUSES:
            raise ValueError(f"AuthEvent.status must be one of {sorted(_STATUSES)}")
        if isinstance(self.time, bool) or not isinstance(self.time, int) or self.time < 0:
            raise ValueError("AuthEvent.time must be a non-negative int (epoch microseconds)")
        for name, limit in _LIMITS:
            value = getattr(self, name)
            if value is not None:
                if type(value) is not str:
                    raise TypeError(f"AuthEvent.{name} must be a string or None")
                text = storable(value[:limit])
                if text is not value:
                    object.__setattr__(self, name, text)
        object.__setattr__(self, "extras", sanitize_extras(self.extras))

    @classmethod
    def create(
        cls,
        type: str,
        *,
        clock: Clock,
        random: Random,
        status: str | None = None,
        tenant: str | None = None,
        user: str | None = None,
        session: str | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
        request_id: str | None = None,
        factor: str | None = None,
        lever: str | None = None,
        reason: str | None = None,
        actor: str | None = None,
        extras: Mapping[str, object] | None = None,
    ) -> AuthEvent:
        """A new event stamped with ``clock`` and an id from ``random``.

        ``status`` defaults to the catalogue's status for ``type``
        (:data:`DEFAULT_STATUS`), ``"info"`` for types outside it.
        """
        now = to_us(clock.time())
        return cls(
            id=new_event_id(now, random),
            type=str(type),
            status=str(status if status is not None else DEFAULT_STATUS.get(type, "info")),
            time=now,
            tenant=tenant,
            user=user,
            session=session,
            ip=ip,
            user_agent=user_agent,
            request_id=request_id,
            factor=factor,
            lever=lever,
            reason=reason,
            actor=actor,
            extras=extras,  # type: ignore[arg-type]  # sanitized in __post_init__
        )

    @classmethod
    def from_session_event(cls, event: SessionEvent, *, clock: Clock, random: Random) -> AuthEvent:
        """The audit event for a session lifecycle event (same wire string)."""
        return cls.create(
            event.type,
            clock=clock,
            random=random,
            tenant=event.tenant_id,
            user=event.user_id,
            session=event.session if event.session and event.session != "*" else None,
            reason=event.reason,
            ip=event.ip,
            user_agent=event.user_agent,
        )

    # -- wire form ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON object: every field, always, in a fixed order (``None`` → null)."""
        return {
            "v": WIRE_VERSION,
            "id": self.id,
            "type": self.type,
            "status": self.status,
            "time": self.time,
            "tenant": self.tenant,
            "user": self.user,
            "session": self.session,
            "ip": self.ip,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "factor": self.factor,
            "lever": self.lever,
            "reason": self.reason,
            "actor": self.actor,
            "extras": dict(self.extras),
        }

    def to_json(self) -> str:
        """Compact JSON on one line (UTF-8, no NaN)."""
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuthEvent:
        """Parse :meth:`to_dict` output. Raises ValueError on anything malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("an audit event must be a JSON object")
        version = data.get("v", WIRE_VERSION)
        if version != WIRE_VERSION:
            raise ValueError(f"unsupported audit event version {version!r}")
        extras = data.get("extras")
        if extras is None:
            extras = {}
        if not isinstance(extras, Mapping):
            raise ValueError("extras must be an object")
        try:
            fields = {name: data.get(name) for name in _FIELDS}
            return cls(
                id=data["id"],
                type=data["type"],
                status=data["status"],
                time=data["time"],
                extras=extras,
                **fields,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed audit event: {type(exc).__name__}: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> AuthEvent:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"malformed audit event JSON: {exc}") from None
        return cls.from_dict(data)


_STATUSES: Final = frozenset(s.value for s in EventStatus)
#: Every catalogue wire string.
EVENT_TYPES: Final = frozenset(t.value for t in EventType)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters for :meth:`~axess.stores.base.AuditStore.query_audit_events`.

    The tenant is not a filter: it is the mandatory first argument of every
    query (the tenant rail). Times are epoch microseconds, ``since_us``
    inclusive and ``until_us`` exclusive. Results are ordered by
    ``(time, id)``, newest first unless ``order="asc"``; pass the
    ``(time, id)`` of the last event of a page as ``cursor`` to get the next
    page.
    """

    types: Sequence[str] | None = None
    user: str | None = None
    status: str | None = None
    session: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    order: Literal["asc", "desc"] = "desc"
    cursor: tuple[int, str] | None = None
    limit: int = 100

    #: Largest page a store returns.
    MAX_LIMIT = 1000
    #: Largest ``types`` list accepted.
    MAX_TYPES = 64

    def __post_init__(self) -> None:
        if isinstance(self.types, str):
            object.__setattr__(self, "types", (self.types,))
        if self.types is not None:
            if len(self.types) > self.MAX_TYPES:
                raise ValueError(f"at most {self.MAX_TYPES} event types per query")
            object.__setattr__(self, "types", tuple(dict.fromkeys(self.types)))
        if self.order not in ("asc", "desc"):
            raise ValueError("order must be 'asc' or 'desc'")
        if not 1 <= self.limit <= self.MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {self.MAX_LIMIT}")
        if self.cursor is not None:
            t, i = self.cursor
            object.__setattr__(self, "cursor", (int(t), str(i)))

    def matches(self, tenant: str | None, event: AuthEvent) -> bool:
        """The filter as a predicate (what an in-memory store does)."""
        if event.tenant != tenant:
            return False
        if self.types is not None and event.type not in self.types:
            return False
        if self.user is not None and event.user != self.user:
            return False
        if self.status is not None and event.status != self.status:
            return False
        if self.session is not None and event.session != self.session:
            return False
        if self.since_us is not None and event.time < self.since_us:
            return False
        if self.until_us is not None and event.time >= self.until_us:
            return False
        if self.cursor is not None:
            key = (event.time, event.id)
            return key > self.cursor if self.order == "asc" else key < self.cursor
        return True
