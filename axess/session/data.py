"""Session data and authentication state. Pure: no I/O, no clock reads.

Transitions are functions from one :class:`AuthState` to the next; invalid
ones raise :class:`InvalidTransition`. The wire format is versioned JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final

from axess.text import MAX_SESSION_ID_CHARS, check_id

DATA_VERSION: Final = 1


class InvalidTransition(ValueError):
    """The requested auth-state transition is not allowed from the current state."""


@dataclass(frozen=True, slots=True)
class Guest:
    kind: Final = "guest"
    #: Every state has ``user`` and ``tenant``; a guest's are None.
    user: ClassVar[None] = None
    tenant: ClassVar[None] = None


@dataclass(frozen=True, slots=True)
class Identifying:
    user: str
    tenant: str | None = None
    kind: Final = "identifying"


@dataclass(frozen=True, slots=True)
class Authenticating:
    user: str
    tenant: str | None
    remaining: tuple[str, ...]
    completed: tuple[str, ...] = ()
    method: str = "password"
    kind: Final = "authenticating"


@dataclass(frozen=True, slots=True)
class Authenticated:
    user: str
    tenant: str | None
    authn_time: float
    factors: tuple[str, ...] = ()
    kind: Final = "authenticated"


@dataclass(frozen=True, slots=True)
class PendingWorkflow:
    user: str
    tenant: str | None
    workflow: str
    step: str
    kind: Final = "pending_workflow"


AuthState = Guest | Identifying | Authenticating | Authenticated | PendingWorkflow
GUEST: Final = Guest()


# -- transitions ---------------------------------------------------------------
def identify(state: AuthState, user: str, tenant: str | None = None) -> Identifying:
    """Guest/Identifying → Identifying(user)."""
    if not isinstance(state, Guest | Identifying):
        raise InvalidTransition(f"cannot identify from {state.kind}")
    _check_ids(user, tenant)
    return Identifying(user, tenant)


def _check_ids(user: str, tenant: str | None) -> None:
    """Ids every store keeps alike (:func:`axess.text.check_id`), else
    :class:`InvalidTransition` (a ValueError)."""
    if not user:
        raise InvalidTransition("user must be non-empty")
    try:
        check_id(user, "user id", MAX_SESSION_ID_CHARS)
        if tenant is not None:
            check_id(tenant, "tenant id", MAX_SESSION_ID_CHARS)
    except (TypeError, ValueError) as exc:
        raise InvalidTransition(str(exc)) from None


def require_factors(
    state: AuthState, remaining: tuple[str, ...], method: str = "password"
) -> Authenticating:
    """Identifying → Authenticating with factors still to prove."""
    if not isinstance(state, Identifying):
        raise InvalidTransition(f"cannot require factors from {state.kind}")
    if not remaining:
        raise InvalidTransition("at least one factor must remain")
    return Authenticating(state.user, state.tenant, tuple(remaining), (), method)


def complete_factor(state: AuthState, factor: str, now: float) -> Authenticating | Authenticated:
    """Mark ``factor`` done; the last remaining factor yields Authenticated."""
    if not isinstance(state, Authenticating):
        raise InvalidTransition(f"cannot complete a factor from {state.kind}")
    if factor not in state.remaining:
        raise InvalidTransition(f"factor {factor!r} is not pending")
    remaining = tuple(f for f in state.remaining if f != factor)
    completed = (*state.completed, factor)
    if remaining:
        return replace(state, remaining=remaining, completed=completed)
    return Authenticated(state.user, state.tenant, now, completed)


def authenticate(
    state: AuthState,
    user: str,
    tenant: str | None,
    factors: tuple[str, ...],
    now: float,
) -> Authenticated:
    """Any state → Authenticated (credentials verified by the caller)."""
    _check_ids(user, tenant)
    if isinstance(state, Authenticated) and (state.user, state.tenant) != (user, tenant):
        raise InvalidTransition("already authenticated as another user; log out first")
    return Authenticated(user, tenant, now, tuple(factors))


def step_up(state: AuthState, factors: tuple[str, ...]) -> Authenticating:
    """Authenticated → Authenticating: ask the same user to prove ``factors`` again."""
    if not isinstance(state, Authenticated):
        raise InvalidTransition(f"cannot step up from {state.kind}")
    if not factors:
        raise InvalidTransition("step-up needs at least one factor")
    return Authenticating(state.user, state.tenant, tuple(factors), (), "step_up")


def begin_workflow(state: AuthState, workflow: str, step: str) -> PendingWorkflow:
    """Identifying/Authenticated → PendingWorkflow (e.g. forced password change)."""
    if not isinstance(state, Identifying | Authenticated):
        raise InvalidTransition(f"cannot begin a workflow from {state.kind}")
    return PendingWorkflow(state.user, state.tenant, workflow, step)


def logout(state: AuthState) -> Guest:
    return GUEST


def user_of(state: AuthState) -> str | None:
    return state.user


def tenant_of(state: AuthState) -> str | None:
    return state.tenant


# -- serialization -------------------------------------------------------------
# Auth states are JSON arrays ``[kind, user, tenant, ...]``: compact and
# cheap to parse on every request.
def state_to_json(state: AuthState) -> list[Any]:
    if isinstance(state, Guest):
        return ["guest"]
    if isinstance(state, Identifying):
        return [state.kind, state.user, state.tenant]
    if isinstance(state, Authenticating):
        return [
            state.kind,
            state.user,
            state.tenant,
            list(state.remaining),
            list(state.completed),
            state.method,
        ]
    if isinstance(state, Authenticated):
        return [state.kind, state.user, state.tenant, state.authn_time, list(state.factors)]
    return [state.kind, state.user, state.tenant, state.workflow, state.step]


def _str(v: Any) -> str:
    if type(v) is not str or not v:
        raise ValueError("expected a non-empty string")
    return v


def _opt_str(v: Any) -> str | None:
    return None if v is None else _str(v)


def _strs(v: Any) -> tuple[str, ...]:
    if type(v) is not list:
        raise ValueError("expected a list")
    return tuple(_str(x) for x in v)


def _num(v: Any) -> float:
    if type(v) is not float and type(v) is not int:
        raise ValueError("expected a number")
    return float(v)


def state_from_json(d: Any) -> AuthState:
    """Raises ValueError (or IndexError/TypeError, which callers treat alike) on
    anything malformed."""
    if type(d) is not list or not d:
        raise ValueError("auth state must be a non-empty array")
    kind = d[0]
    if kind == "guest":
        return GUEST
    user, tenant = _str(d[1]), _opt_str(d[2])
    if kind == "authenticated" and len(d) == 5:
        return Authenticated(user, tenant, _num(d[3]), _strs(d[4]))
    if kind == "identifying" and len(d) == 3:
        return Identifying(user, tenant)
    if kind == "authenticating" and len(d) == 6:
        return Authenticating(user, tenant, _strs(d[3]), _strs(d[4]), _str(d[5]))
    if kind == "pending_workflow" and len(d) == 5:
        return PendingWorkflow(user, tenant, _str(d[3]), _str(d[4]))
    raise ValueError(f"unknown or malformed auth state {kind!r}")


@dataclass(slots=True)
class SessionData:
    """Everything stored for one session (sealed in the envelope)."""

    created_at: float
    last_seen_at: float
    auth_state: AuthState = GUEST
    fingerprint: str | None = None
    #: Version of the tenant pepper the fingerprint was computed with.
    pepper_version: int | None = None
    device_id: str | None = None
    tenant_id: str | None = None
    #: Coarse client description for "your sessions" pages (IP prefix, UA summary).
    ip_prefix: str | None = None
    user_agent: str | None = None
    version: int = DATA_VERSION

    def clone(self) -> SessionData:
        """A copy that can be mutated without affecting this one (auth states are immutable)."""
        return SessionData(
            self.created_at,
            self.last_seen_at,
            self.auth_state,
            self.fingerprint,
            self.pepper_version,
            self.device_id,
            self.tenant_id,
            self.ip_prefix,
            self.user_agent,
            self.version,
        )


_DECODER: Final = json.JSONDecoder()
_META_FIELDS: Final = 10


def encode(data: SessionData, custom_json: bytes) -> bytes:
    """Serialize: a metadata JSON array, a newline, then the custom JSON.

    Custom data is kept apart so it is parsed only when a handler reads it,
    and a request can tell whether it changed by comparing bytes.
    """
    meta = [
        data.version,
        state_to_json(data.auth_state),
        data.created_at,
        data.last_seen_at,
        data.fingerprint,
        data.pepper_version,
        data.device_id,
        data.tenant_id,
        data.ip_prefix,
        data.user_agent,
    ]
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + custom_json


def dump_custom(custom: dict[str, Any]) -> bytes:
    """Canonical JSON of custom data. Raises TypeError/ValueError if not JSON-able."""
    return json.dumps(custom, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def load_custom(custom_json: bytes) -> dict[str, Any]:
    """Parse custom data; raises ValueError unless it is a JSON object."""
    if custom_json == b"{}":
        return {}
    value = json.loads(custom_json)
    if type(value) is not dict:
        raise ValueError("custom data must be an object")
    return value


def decode(raw: bytes) -> tuple[SessionData, bytes]:
    """Inverse of :func:`encode`; returns the data and the raw custom JSON
    for :func:`load_custom`.

    Raises ValueError on anything malformed or on a data version newer than
    this code knows (older versions would be migrated here).
    """
    head, sep, custom_json = raw.partition(b"\n")
    if not sep:
        raise ValueError("missing separator")
    try:
        meta, end = _DECODER.raw_decode(head.decode())
        if end != len(head) or type(meta) is not list or len(meta) != _META_FIELDS:
            raise ValueError("malformed session metadata")
        if meta[0] != DATA_VERSION:
            raise ValueError(f"unsupported session data version {meta[0]!r}")
        pv = meta[5]
        if pv is not None and type(pv) is not int:
            raise ValueError("pepper version must be an integer")
        data = SessionData(
            created_at=_num(meta[2]),
            last_seen_at=_num(meta[3]),
            auth_state=state_from_json(meta[1]),
            fingerprint=_opt_str(meta[4]),
            pepper_version=pv,
            device_id=_opt_str(meta[6]),
            tenant_id=_opt_str(meta[7]),
            ip_prefix=_opt_str(meta[8]),
            user_agent=_opt_str(meta[9]),
        )
    except (IndexError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError("malformed session metadata") from exc
    return data, custom_json
