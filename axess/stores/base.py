"""Substore protocols: what a backend must do for each concern.

A backend object (``SQLiteStore``, ``ValkeyStore``…) implements one or more
substores; it lists them in ``substores``. Everything above the stores talks
to them only through these protocols.

Time is always passed in (``now``, epoch seconds) so that the injected clock,
not the backend's, decides what has expired.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import astuple, dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from axess.observability.health import HealthStatus

if TYPE_CHECKING:
    from axess.audit.events import AuditQuery, AuthEvent

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
    * Records handed out (``load_session``, ``list_user_sessions``) carry
      the payload as ``bytes``: a driver's ``memoryview`` or ``bytearray``
      is converted.
    * ``create_session`` inserts only if the key is absent (returns ``False``
      otherwise, leaving the existing row untouched).
    * ``save_session`` updates only a row that still exists and has not
      expired (no resurrection after a logout or revocation).
    * ``cycle_session`` atomically removes ``old_key`` and inserts the new
      record; if ``old_key`` no longer exists, or has expired at ``now``,
      nothing is written and it returns ``False`` (a cycle never moves a
      dead session to a new, live key).
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


class NotNow(enum.Enum):
    """The answer of :meth:`ImmediateSessionRead.load_session_now` when it
    cannot answer without waiting."""

    NOT_NOW = "not now"


#: See :class:`NotNow`.
NOT_NOW: Final = NotNow.NOT_NOW


@runtime_checkable
class ImmediateSessionRead(Protocol):
    """A session store that can often answer ``load_session`` on the spot.

    ``load_session_now`` returns what ``load_session`` would (the live
    record or ``None``) when it can do so without waiting on I/O — the
    memory store always, SQLite's read on the event loop unless the file is
    busy — and :data:`NOT_NOW` otherwise; the caller then awaits
    ``load_session``. It raises what ``load_session`` raises. The session
    stage uses it to answer a returning browser without an ``await``
    (book: Internals, "The stage contract"), and trusts it first: an answer
    kept from before a save, cycle, delete, "log out everywhere" or expiry
    would serve a revoked session. ``SessionStoreContract`` checks that it
    answers :data:`NOT_NOW` or exactly what ``load_session`` does after each.
    """

    def load_session_now(self, key: str, now: float) -> SessionRecord | NotNow | None: ...


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


# -- audit substore -------------------------------------------------------------
AUDIT: Final = "audit"


@runtime_checkable
class AuditStore(Protocol):
    """The regulatory audit substore: an append-only event table.

    Guarantees every implementation must give (checked by
    ``AuditStoreContract`` in :mod:`axess.testing.contract`):

    * ``insert_audit_events`` is idempotent on the event id: inserting an
      event that is already stored (also twice in one batch) keeps the first
      copy and is not an error, so at-least-once redelivery never
      duplicates rows. A batch is written in one transaction.
    * ``query_audit_events`` only ever returns rows of ``tenant_id`` (the
      tenant rail; ``None`` means rows without a tenant, never "all").
    * ``audit_events_to_archive`` returns rows not yet archived whose time
      is before ``before_us``, oldest first; ``mark_audit_events_archived``
      stamps them; only archived rows whose ``purge_at_us`` has passed are
      ever deleted (``purge_archived_audit_events``).
    * Backend failures raise :class:`axess.errors.StoreError`.

    Event times are epoch microseconds; ``now`` is epoch seconds, as
    everywhere else in the stores.
    """

    async def insert_audit_events(self, events: Sequence[AuthEvent]) -> None: ...

    async def query_audit_events(
        self, tenant_id: str | None, query: AuditQuery | None = None
    ) -> list[AuthEvent]: ...

    async def audit_events_to_archive(self, before_us: int, limit: int) -> list[AuthEvent]: ...

    async def mark_audit_events_archived(
        self, ids: Sequence[str], *, archived_at_us: int, purge_at_us: int
    ) -> int: ...

    async def purge_archived_audit_events(self, now: float) -> int: ...


@runtime_checkable
class RoutedStore(Protocol):
    """A store that routes each substore to a backend (``CompositeStore``)."""

    def backend_for(self, substore: str) -> Any:
        """The backend serving ``substore``; ``ConfigurationError`` if none does."""

    @property
    def backends(self) -> list[Any]:
        """Each distinct backend once."""


# -- maintenance ------------------------------------------------------------------
@dataclass(slots=True)
class BatchResult:
    """What one batch of ``axess rotate-envelope`` saw. ``last_key`` is
    ``None`` when no row was left."""

    last_key: str | None = None
    examined: int = 0
    resealed: int = 0
    current: int = 0
    unreadable: int = 0
    #: Rows rewritten by the app between the read and the update (left as the app wrote them).
    raced: int = 0


# -- lockout substore -----------------------------------------------------------
LOCKOUT: Final = "lockout"


@dataclass(frozen=True, slots=True)
class LeverSpec:
    """One lever's counter key and rules, as a store applies them.

    ``key`` is opaque to the store (``axess.authn.lockout`` builds fixed-size
    hashed keys). ``exempt_if_trusted``: the failure is not counted when the
    attempt comes from a trusted origin (the user lever).
    """

    key: str
    threshold: int
    window: float
    lock_for: float
    backoff: float
    max_lock: float
    exempt_if_trusted: bool = False


@dataclass(frozen=True, slots=True)
class LeverState:
    """A lever counter. ``expires_at`` is when the row may be forgotten.
    ``tripped`` (not stored) is True in the state returned by the failure
    that applied the lock."""

    key: str
    failures: int = 0
    window_start: float = 0.0
    locked_until: float = 0.0
    lockouts: int = 0
    expires_at: float = 0.0
    tripped: bool = False


@dataclass(frozen=True, slots=True)
class LockoutStatus:
    """Result of a pre-check: ``locked_until`` of each locked key, and whether
    the origin is trusted."""

    locked_until: dict[str, float]
    trusted: bool = False


def lock_duration(spec: LeverSpec, lockouts: int) -> float:
    """``lock_for * backoff^(lockouts-1)``, capped at ``max_lock``."""
    try:
        length = spec.lock_for * spec.backoff ** max(0, lockouts - 1)
    except OverflowError:
        return spec.max_lock
    return min(length, spec.max_lock)


def apply_failure(spec: LeverSpec, state: LeverState | None, now: float) -> LeverState:
    """The counter after one failure at ``now`` (the rules every store applies).

    * A row whose ``expires_at`` has passed is forgotten (starts fresh).
    * While locked, failures are not counted.
    * Fixed window: the first failure opens a window of ``window`` seconds;
      a failure after it closed opens a new one with a count of 1.
    * Reaching ``threshold`` within the window locks for
      :func:`lock_duration` (n = consecutive lockouts) and starts a new,
      empty window.
    * The row (and with it the escalation count n) is forgotten ``max_lock``
      after the last lock ends, or when the window closes if never locked.
    """
    if state is None or state.expires_at <= now:
        state = LeverState(spec.key)
    if state.locked_until > now:
        return LeverState(*astuple(state)[:6])  # not tripped by this failure
    if state.failures == 0 or state.window_start + spec.window <= now:
        failures, start = 1, now
    else:
        failures, start = state.failures + 1, state.window_start
    lockouts, locked_until = state.lockouts, state.locked_until
    tripped = failures >= spec.threshold
    if tripped:
        lockouts += 1
        locked_until = now + lock_duration(spec, lockouts)
        failures, start = 0, now
    expires = start + spec.window
    if lockouts:
        expires = max(expires, locked_until + spec.max_lock)
    return LeverState(spec.key, failures, start, locked_until, lockouts, expires, tripped)


@dataclass(frozen=True, slots=True)
class LockoutReservation:
    """Result of :meth:`LockoutStore.lockout_reserve`.

    ``locked_until``: the refusing levers (key → end of their lock); empty
    when the unit was reserved. ``states``: the counters after the
    reservation, one per lever that took a unit (none when refused; the
    exempt lever is absent when ``trusted``).
    """

    locked_until: dict[str, float]
    states: list[LeverState]
    trusted: bool = False

    @property
    def reserved(self) -> bool:
        return not self.locked_until


def reserve_levers(
    specs: Sequence[LeverSpec],
    states: dict[str, LeverState],
    trusted: bool,
    now: float,
    *,
    all_or_nothing: bool = True,
) -> LockoutReservation:
    """Take one unit of every lever's budget (the rules every store applies).

    Levers marked ``exempt_if_trusted`` are skipped when ``trusted``. With
    ``all_or_nothing`` (a reservation), a lever that is locked at ``now``
    refuses the whole attempt and nothing is counted; otherwise (a plain
    failure) each lever applies :func:`apply_failure` on its own. The unit
    that reaches a lever's threshold trips its lock, so at most
    ``threshold`` units are ever handed out within one window.
    """
    chosen = [s for s in specs if not (s.exempt_if_trusted and trusted)]
    if all_or_nothing:
        locked = {
            s.key: st.locked_until
            for s in chosen
            if (st := states.get(s.key)) is not None
            and st.expires_at > now
            and st.locked_until > now
        }
        if locked:
            return LockoutReservation(locked, [], trusted)
    new = [apply_failure(s, states.get(s.key), now) for s in chosen]
    return LockoutReservation({}, new, trusted)


def release_unit(state: LeverState, window_start: float, now: float) -> LeverState | None:
    """``state`` with one reserved unit handed back, or ``None`` to leave it.

    Only a unit of the still-open window it was taken in is handed back, and
    never one whose reservation tripped the lock (that lock stands).
    """
    if (
        state.expires_at <= now
        or state.failures <= 0
        or state.window_start != window_start
        or state.locked_until > now
    ):
        return None
    return LeverState(
        state.key,
        state.failures - 1,
        state.window_start,
        state.locked_until,
        state.lockouts,
        state.expires_at,
    )


@runtime_checkable
class LockoutStore(Protocol):
    """The lockout substore: counters of the three levers and trusted origins.

    Guarantees (checked by ``LockoutStoreContract``):

    * ``lockout_status`` is one round trip for all keys and the origin.
    * ``lockout_failure`` applies :func:`apply_failure` to every lever
      atomically (no lost update under concurrency) in one round trip, and
      skips levers marked ``exempt_if_trusted`` when ``origin`` is trusted.
    * ``lockout_reserve`` does the same all or nothing: when any counted
      lever is locked, wherever it is in ``levers``, nothing is counted on
      any lever and the attempt is refused; this is
      the guess budget (:func:`reserve_levers`), so concurrent attempts can
      never take more than ``threshold`` units of one lever in one window.
    * Backend failures raise :class:`axess.errors.StoreError`.
    """

    async def lockout_status(
        self, keys: Sequence[str], origin: str | None, now: float
    ) -> LockoutStatus: ...

    async def lockout_failure(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float
    ) -> list[LeverState]: ...

    async def lockout_reserve(
        self, levers: Sequence[LeverSpec], origin: str | None, now: float
    ) -> LockoutReservation:
        """:func:`reserve_levers` (all or nothing) atomically, one round trip."""

    async def lockout_success(
        self,
        reset: Sequence[str],
        origin: str | None,
        trusted_until: float,
        now: float,
        release: Sequence[tuple[str, float]] = (),
    ) -> None:
        """Delete the ``reset`` counters, trust ``origin`` until ``trusted_until``
        (the latest call sets the end, shorter or longer than before)
        and hand back one unit of each ``(key, window_start)`` in ``release``
        (:func:`release_unit`), atomically. A unit listed ``k`` times is
        ``k`` units (two steps of one login in one window), never taking a
        counter below zero."""

    async def lockout_clear(self, keys: Sequence[str]) -> int:
        """Delete these counters (and trusted origins); how many existed
        (a lever a failure skipped or a refused reservation left alone has
        no counter, whatever rows the store keeps for it)."""

    async def lockout_state(self, key: str, now: float) -> LeverState | None:
        """The live counter for ``key`` (for admin views and tests)."""

    async def purge_expired_lockouts(self, now: float) -> int: ...


# -- identity and factors substores ----------------------------------------------
IDENTITY: Final = "identity"
FACTORS: Final = "factors"
#: The tenant id of users created without a tenant (apps without tenants).
DEFAULT_TENANT: Final = "default"
ACTIVE: Final = "active"
SUSPENDED: Final = "suspended"


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """A tenant. ``pepper``: an optional tenant secret mixed into the fingerprint
    pepper (``None``: the pepper is derived from the keyring alone; see
    :class:`TenantPepper`). ``ip_allow``/``ip_deny``: CIDR lists of the login IP policy
    (a non-empty allow-list wins). ``lockout_overrides``: JSON-able lever
    overrides, e.g. ``{"user": {"threshold": 3, "window": 600, "lock_for": 900}}``."""

    id: str
    slug: str
    status: str = ACTIVE
    pepper: bytes | None = None
    ip_allow: tuple[str, ...] = ()
    ip_deny: tuple[str, ...] = ()
    lockout_overrides: dict[str, Any] = field(default_factory=dict, hash=False)
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user. ``identifier`` is the normalized login identifier, unique per tenant."""

    id: str
    tenant_id: str
    identifier: str
    status: str = ACTIVE
    created_at: float = 0.0
    last_login_at: float | None = None


@dataclass(frozen=True, slots=True)
class FactorRecord:
    """A user's factors: the password PHC string, the *sealed* TOTP secret and
    the last accepted TOTP step, and how many recovery codes are left."""

    user_id: str
    password_hash: str | None = None
    totp_secret: bytes | None = None
    totp_last_step: int | None = None
    recovery_codes: int = 0


@dataclass(frozen=True, slots=True)
class TenantPepper:
    """What the fingerprint pepper of a tenant is derived from: the tenant
    record's ``pepper`` secret (``None`` when there is no record or it has
    none) and the pepper ``version`` (1 until the first rotation). Versions
    are kept per tenant id, whether or not a tenant record exists."""

    secret: bytes | None = None
    version: int = 1


@runtime_checkable
class IdentityStore(Protocol):
    """The identity (tenants, users) and factors substores.

    Guarantees (checked by ``IdentityStoreContract``):

    * ``create_tenant``/``create_user`` insert only if absent: ``False`` when
      the id, the tenant slug, or the (tenant, identifier) pair is taken.
    * Identifiers are stored as given: callers pass the normalized form
      (:func:`axess.authn.lockout.normalize_identifier`).
    * ``totp_accept_step`` is a compare-and-set: it records ``step`` only if
      the user has a TOTP secret and ``step`` is above the last accepted one;
      of concurrent calls with the same step exactly one returns ``True``.
    * ``consume_recovery_code`` removes one matching hash atomically: of
      concurrent calls with the same code exactly one returns ``True``.
    * Setting a TOTP secret (or clearing it) forgets the last accepted step.
    * ``enable_totp`` sets a TOTP secret only if the user has none: of
      concurrent calls exactly one returns ``True``.
    * ``reseal_totp_secret`` is a compare-and-set on the sealed bytes: it
      replaces them only if they are still ``expected`` and keeps the last
      accepted step (the same secret under another key).
    * ``rehash_password`` is a compare-and-set on the password hash: it
      replaces it only if it is still ``expected``; of concurrent calls
      with the same ``expected`` exactly one returns ``True``.
    * ``rotate_tenant_pepper`` increments the tenant's pepper version
      atomically: of ``n`` concurrent calls each returns a distinct version
      and the last one is ``n`` above the start. ``update_tenant`` never
      changes the version.
    * Backend failures raise :class:`axess.errors.StoreError`.
    """

    async def create_tenant(self, tenant: TenantRecord) -> bool: ...

    async def get_tenant(self, tenant_id: str) -> TenantRecord | None: ...

    async def get_tenant_by_slug(self, slug: str) -> TenantRecord | None: ...

    async def update_tenant(self, tenant: TenantRecord) -> bool: ...

    async def tenant_pepper(self, tenant_id: str) -> TenantPepper:
        """The tenant's pepper secret and version (defaults when unknown)."""

    async def rotate_tenant_pepper(self, tenant_id: str) -> int:
        """Increment the tenant's pepper version; returns the new version."""

    async def create_user(self, user: UserRecord) -> bool: ...

    async def get_user(self, user_id: str) -> UserRecord | None: ...

    async def find_user(self, tenant_id: str, identifier: str) -> UserRecord | None: ...

    async def set_user_status(self, user_id: str, status: str) -> bool: ...

    async def record_login(self, user_id: str, at: float) -> None: ...

    async def get_factors(self, user_id: str) -> FactorRecord: ...

    async def set_password_hash(self, user_id: str, phc: str | None) -> None: ...

    async def rehash_password(self, user_id: str, expected: str, phc: str) -> bool:
        """Store ``phc`` if the password hash is still ``expected`` (a login
        upgrading the hash of the password it just verified). ``False`` when
        it changed meanwhile (a new password set): that one stays."""

    async def set_totp_secret(self, user_id: str, sealed: bytes | None) -> None: ...

    async def totp_accept_step(self, user_id: str, step: int) -> bool: ...

    async def enable_totp(self, user_id: str, sealed: bytes, step: int) -> bool:
        """Store ``sealed`` as the TOTP secret, with ``step`` as its last
        accepted step, only if the user has no TOTP secret. ``False`` when
        one is set (a concurrent enrolment won, or TOTP was on already)."""

    async def reseal_totp_secret(self, user_id: str, expected: bytes, sealed: bytes) -> bool:
        """Store ``sealed`` if the sealed secret is still ``expected`` (key
        rotation: same secret, new key); the last accepted step is kept.
        ``False`` when it changed meanwhile (re-enrolled, disabled)."""

    async def replace_recovery_codes(self, user: str, hashes: Sequence[str]) -> None: ...

    async def consume_recovery_code(self, user: str, candidates: Collection[str]) -> bool: ...

    async def count_recovery_codes(self, user: str) -> int: ...
