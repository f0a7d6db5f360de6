"""Three-lever lockout (book: Lockout): per user, per IP, per tenant.

Order of a login attempt::

    keys = lockout_keys(tenant, identifier, ip, device=cookie)  # ValueError if empty
    locked = await lockout.pre_check(keys)       # ONE store round trip, no hash
    if locked: return locked                      # -> 429 + Retry-After
    ... read the user and its password hash ...
    keys = keys.bound_to(password_hash)           # None for an unknown user
    unit = await lockout.reserve(keys)            # ONE round trip: the guess budget
    if isinstance(unit, Locked): return unit
    ... verify the password (Argon2id); a failure leaves the unit spent ...
    await lockout.record_success(keys, reservations=[unit])  # resets the user lever

**Window semantics (fixed window).** A lever's first failure opens a window
of ``window`` seconds; failures inside it are counted; the first failure
after it closes opens a new window with a count of 1. Reaching
``threshold`` inside one window locks the key for
``lock_for * backoff^(n-1)`` (n = consecutive lockouts of that key), capped
at ``max_lock``, and starts a fresh, empty window. Failures arriving while
the key is locked are not counted. The escalation count n is forgotten
``max_lock`` after the last lock ended (or on a successful login, for the
user lever; or by :meth:`Lockout.unlock`).

**Keys.** The user lever is keyed by (tenant, normalized identifier), never
by user id, so unknown identifiers lock exactly like real ones. Store keys
are SHA-256 hex digests with a lever prefix (``u:``, ``i:``, ``t:``,
``o:`` for trusted origins): fixed length, no raw identifier or address in
the store. IPv6 addresses count per /64 (one host usually owns a /64).

**Trusted origins.** A successful login trusts (user, origin) for
``trusted_origin_ttl``; the origin is the device cookie when there is one,
else the client's IP prefix (/24 IPv4, /64 IPv6). Attempts from a trusted
origin are exempt from the user lever (neither blocked nor counted) but
still subject to the IP and tenant levers, so an attacker elsewhere cannot
lock the owner out. The trust that exempts is bound to the account's
password hash (:meth:`LockoutKeys.bound_to`): a new password ends it for
every origin, so a browser that once signed in with a stolen password
cannot guess the new one freely. The origin alone is trusted too, and lets
an attempt past :meth:`Lockout.pre_check` (which runs before the password
hash is read); :meth:`Lockout.reserve` then decides with the bound key.

**Per-tenant overrides.** Two sources, applied in this order:
``LockoutPolicy.overrides`` (static, in code) and then the tenant record's
``lockout_overrides`` (JSON, in the identity store), so for the same lever
the record wins. A record override may name only some fields of a lever;
the others are inherited from the lever that applies otherwise. Invalid
record content is ignored as a whole (WARNING once per tenant and content);
it never fails a login. See :meth:`Lockout.policy_for`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Literal

from axess._cache import Memo
from axess.clock import Clock, SystemClock, check_duration
from axess.errors import ConfigurationError, StoreError
from axess.observability.metrics import AuthnMetrics, NoopMetrics
from axess.stores.base import LOCKOUT, LeverSpec, LeverState, LockoutStore
from axess.text import check_id
from axess.text import normalize_identifier as normalize_identifier  # (its public home was here)

logger = logging.getLogger(__name__)

LeverName = Literal["user", "ip", "tenant"]
LEVERS: Final[tuple[LeverName, ...]] = ("user", "ip", "tenant")
MINUTE: Final = 60.0
HOUR: Final = 3600.0
DAY: Final = 86_400.0
#: The identity stores' columns: a tenant, slug or user id.
MAX_ID_CHARS: Final = 128
#: Fields a tenant record's ``lockout_overrides`` may set on a lever.
LEVER_FIELDS: Final = ("threshold", "window", "lock_for", "backoff", "max_lock")
#: Distinct (tenant, overrides) pairs :meth:`Lockout.policy_for` remembers.
_POLICY_MEMO_MAX: Final = 1024


@dataclass(frozen=True, slots=True)
class Lever:
    """``threshold`` failures within ``window`` seconds lock for ``lock_for``
    seconds; each consecutive lockout multiplies that by ``backoff`` up to
    ``max_lock`` (default: ``lock_for``, i.e. no growth)."""

    threshold: int
    window: float
    lock_for: float
    backoff: float = 2.0
    max_lock: float | None = None

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ConfigurationError("Lever.threshold must be at least 1")
        for name in ("window", "lock_for"):
            check_duration(getattr(self, name), f"Lever.{name}")
        if not (math.isfinite(self.backoff) and self.backoff >= 1.0):
            raise ConfigurationError("Lever.backoff must be >= 1")
        if self.max_lock is not None:
            check_duration(self.max_lock, "Lever.max_lock")
            if self.max_lock < self.lock_for:
                raise ConfigurationError("Lever.max_lock must be >= lock_for")

    @property
    def cap(self) -> float:
        """The longest lock (``max_lock``, or ``lock_for`` when unset)."""
        return self.lock_for if self.max_lock is None else self.max_lock

    def spec(self, key: str, *, exempt_if_trusted: bool = False) -> LeverSpec:
        return LeverSpec(
            key,
            self.threshold,
            self.window,
            self.lock_for,
            self.backoff,
            self.cap,
            exempt_if_trusted,
        )


def _default_user() -> Lever:
    return Lever(5, 15 * MINUTE, 15 * MINUTE, backoff=2.0, max_lock=DAY)


def _default_ip() -> Lever:
    return Lever(50, 15 * MINUTE, 15 * MINUTE)


def _default_tenant() -> Lever:
    return Lever(1000, 5 * MINUTE, 5 * MINUTE)


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """The three levers (defaults: book, Lockout) and their options.

    * user: 5 failures / 15 min → 15 min, doubling up to 24 h
    * ip: 50 / 15 min → 15 min
    * tenant: 1000 / 5 min → 5 min

    ``overrides`` maps a tenant id to replacement levers for that tenant
    (static, in code). A tenant record's ``lockout_overrides`` apply on top
    of them (:meth:`with_record_overrides`, :meth:`Lockout.policy_for`).
    ``on_store_error``: ``"closed"`` (default) re-raises the
    :class:`~axess.errors.StoreError` (the caller answers 503); ``"open"``
    logs a WARNING, counts ``store_error("lockout")`` and lets the attempt
    proceed. ``trust_ip_prefix``: clients without a device cookie are
    trusted by their IP prefix after a login (off by default: anyone on the
    same /24 or behind the same CGNAT would share that trust; a weakening
    that logs a WARNING).
    """

    user: Lever = field(default_factory=_default_user)
    ip: Lever = field(default_factory=_default_ip)
    tenant: Lever = field(default_factory=_default_tenant)
    trusted_origin_ttl: float = 30 * DAY
    on_store_error: Literal["closed", "open"] = "closed"
    trust_ip_prefix: bool = False
    overrides: Mapping[str, Mapping[LeverName, Lever]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.on_store_error not in ("closed", "open"):
            raise ConfigurationError('on_store_error must be "closed" or "open"')
        check_duration(self.trusted_origin_ttl, "trusted_origin_ttl", zero=True)
        for tenant, levers in self.overrides.items():
            unknown = set(levers) - set(LEVERS)
            if unknown:
                raise ConfigurationError(f"tenant {tenant!r}: unknown lever(s) {sorted(unknown)}")

    def for_tenant(self, tenant: str) -> LockoutPolicy:
        """This policy with ``tenant``'s overrides applied."""
        levers = self.overrides.get(tenant)
        if not levers:
            return self
        return replace(self, overrides={}, **levers)  # type: ignore[arg-type]

    def with_record_overrides(self, tenant: str, raw: object) -> LockoutPolicy:
        """This policy for ``tenant``: the static ``overrides`` first, then the
        tenant record's ``lockout_overrides`` ``raw`` on top (the record wins
        for a lever both name).

        ``raw`` is a JSON object such as ``{"user": {"threshold": 3}}``:
        levers ``user``/``ip``/``tenant``, fields :data:`LEVER_FIELDS`
        (``threshold`` an int; ``window``, ``lock_for``, ``backoff`` numbers;
        ``max_lock`` a number or null). A field left out is inherited from
        the lever that applies without the record. Raises ValueError for
        anything else, including values :class:`Lever` rejects (e.g. a
        ``lock_for`` above the inherited ``max_lock``).
        """
        base = self.for_tenant(tenant)
        if raw is None or (isinstance(raw, Mapping) and not raw):
            return base
        if not isinstance(raw, Mapping):
            raise ConfigurationError("lockout overrides must be a JSON object")
        levers: dict[str, Lever] = {}
        for name, spec in raw.items():
            if name not in LEVERS:
                raise ConfigurationError(
                    f"unknown lever {name!r} (expected one of {', '.join(LEVERS)})"
                )
            if not isinstance(spec, Mapping):
                raise ConfigurationError(f"lever {name!r}: expected a JSON object")
            changes: dict[str, Any] = {}
            for key, value in spec.items():
                changes[_check_field(name, key, value)] = value
            try:
                levers[name] = replace(getattr(base, name), **changes)
            except (ValueError, OverflowError) as exc:  # OverflowError: a huge int
                raise ConfigurationError(f"lever {name!r}: {exc}") from None
        return replace(base, overrides={}, **levers)  # type: ignore[arg-type]

    def levers_json(self) -> dict[str, dict[str, Any]]:
        """The three levers as a complete, JSON-able overrides object (every
        field set, so :meth:`with_record_overrides` rebuilds exactly these
        levers whatever the policy it is applied to)."""
        return {
            name: {f.name: getattr(getattr(self, name), f.name) for f in fields(Lever)}
            for name in LEVERS
        }


def _check_field(lever: str, key: object, value: object) -> str:
    """``key`` if it is a lever field and ``value`` has its JSON type; else ValueError."""
    if key not in LEVER_FIELDS:
        raise ConfigurationError(
            f"lever {lever!r}: unknown field {key!r} (expected one of {', '.join(LEVER_FIELDS)})"
        )
    assert isinstance(key, str)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key == "threshold":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif key == "max_lock":
        ok = value is None or number
    else:
        ok = number
    if not ok:
        kind = "an integer" if key == "threshold" else "a number of seconds"
        raise ConfigurationError(f"lever {lever!r}: {key} must be {kind}, not {value!r}")
    return key


def check_tenant_id(tenant_id: str, what: str = "tenant id") -> str:
    """``tenant_id`` if a store can hold it as a tenant or user id
    (:func:`axess.text.check_id`: 1 to 128 characters of text, no NUL, no
    trailing space); raises ValueError (TypeError for a non-str)."""
    check_id(tenant_id, what, MAX_ID_CHARS)
    return tenant_id


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(4, "big") + data)
    return h.hexdigest()


def _network(ip: str, v4_prefix: int, v6_prefix: int) -> str:
    """``ip`` reduced to its prefix; unparsable input is used as given."""
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = v4_prefix if addr.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


@dataclass(frozen=True, slots=True)
class LockoutKeys:
    """Store keys for one attempt. Build with :func:`lockout_keys`."""

    tenant_id: str
    user: str
    tenant: str
    ip: str | None
    #: The trusted-origin key of (user, origin): what the pre-check consults.
    origin: str | None
    #: ``origin`` bound to the account's password hash (:meth:`bound_to`):
    #: the only key whose trust exempts from the user lever; ``None`` until bound.
    bound_origin: str | None = None

    def bound_to(self, credential: str | None) -> LockoutKeys:
        """These keys with the origin bound to ``credential`` (the account's
        stored password hash; ``None``: no exempting origin). A trust granted
        under one password hash never matches another, so setting a password
        ends the exemption of every origin at once, with nothing to delete."""
        if self.origin is None or credential is None:
            return replace(self, bound_origin=None)
        return replace(self, bound_origin="o:" + _digest(self.origin, credential))

    def on_trusted_device(self) -> LockoutKeys:
        """These keys with the user lever replaced by one of (account, bound
        origin): where the code steps of a login whose password step came
        from that trusted origin count. Strangers who lock the account's
        shared lever cannot keep its owner's browser from finishing a login,
        and that browser still has no more than a lever's budget of codes.
        Unchanged when the origin is not bound."""
        if self.bound_origin is None:
            return self
        return replace(self, user="u:" + _digest(self.user, self.bound_origin))

    def __repr__(self) -> str:  # keys are hashes; still keep logs short
        return f"LockoutKeys(tenant={self.tenant_id!r}, user={self.user[:10]}…)"


def lockout_keys(
    tenant: str,
    identifier: str,
    ip: str | None,
    *,
    device: str | None = None,
    ip_origin: bool = True,
) -> LockoutKeys:
    """Keys of the three levers and of the trusted origin for one attempt.

    ``identifier`` is normalized with :func:`normalize_identifier` (ValueError
    if empty). ``ip`` is the resolved client address (``None``: no IP lever).
    ``device`` is the device id of the client's valid device cookie, if it
    has one; without one the origin is the IP prefix when ``ip_origin``,
    else there is none.
    """
    ident = normalize_identifier(identifier)
    user = "u:" + _digest(tenant, ident)
    ip_key = None if not ip else "i:" + _digest(_network(ip, 32, 64))
    if device:
        origin_src: str | None = "d:" + device
    else:
        origin_src = _network(ip, 24, 64) if ip and ip_origin else None
    origin = None if origin_src is None else "o:" + _digest(user, origin_src)
    return LockoutKeys(tenant, user, "t:" + _digest(tenant), ip_key, origin)


@dataclass(frozen=True, slots=True)
class Locked:
    """The attempt is refused: retry after ``retry_after`` seconds (whole, >= 1).

    ``lever`` is for logs and metrics only; the HTTP answer is the same for
    every lever.
    """

    retry_after: int
    lever: LeverName


@dataclass(frozen=True, slots=True)
class Reservation:
    """The units one attempt took (:meth:`Lockout.reserve`).

    ``states``: the counters after the reservation, by lever. ``release``:
    ``(key, window_start)`` of the units a success hands back — those of the
    IP and tenant levers that did not trip their lock (the user lever is
    reset instead).
    """

    states: Mapping[LeverName, LeverState] = field(default_factory=dict)
    release: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, states: Mapping[LeverName, LeverState]) -> Reservation:
        release = tuple(
            (s.key, s.window_start)
            for name, s in states.items()
            if name != "user" and not s.tripped
        )
        return cls(states, release)

    def to_json(self) -> list[list[Any]]:
        """``release`` as JSON (kept with a login in progress)."""
        return [[k, w] for k, w in self.release]

    @classmethod
    def from_json(cls, raw: object) -> Reservation:
        """A reservation handing back the units of :meth:`to_json` output;
        anything malformed hands back nothing."""
        units: list[tuple[str, float]] = []
        if isinstance(raw, list):
            for item in raw[:8]:
                if not (isinstance(item, list) and len(item) == 2):
                    return cls()
                key, start = item
                if not (isinstance(key, str) and isinstance(start, int | float)):
                    return cls()
                units.append((key, float(start)))
        return cls({}, tuple(units))


#: (lever name, its store key, its parameters) for one attempt.
_LeverRow = tuple[LeverName, str, Lever]


def _longest_lock(
    levers: Sequence[_LeverRow], locked_until: Mapping[str, float], now: float
) -> Locked | None:
    """The lock among ``levers`` that ends last (``None``: none is locked)."""
    worst: Locked | None = None
    for name, key, _ in levers:
        until = locked_until.get(key)
        if until is None:
            continue
        retry = max(1, math.ceil(until - now))
        if worst is None or retry > worst.retry_after:
            worst = Locked(retry, name)
    return worst


#: HTTP status of a refused attempt.
LOCKED_STATUS: Final = 429


def locked_body(locked: Locked) -> dict[str, object]:
    """The JSON body of the 429, identical for every lever and for real and
    unknown users (the lever is never shown). Send with
    ``Retry-After: locked.retry_after``."""
    return {
        "error": "locked",
        "detail": "too many failed login attempts; try again later",
        "retry_after": locked.retry_after,
    }


class Lockout:
    """Runs the policy against a :class:`~axess.stores.base.LockoutStore`."""

    def __init__(
        self,
        store: LockoutStore,
        policy: LockoutPolicy | None = None,
        *,
        clock: Clock | None = None,
        metrics: AuthnMetrics | None = None,
    ) -> None:
        self.store = store
        self.policy = policy or LockoutPolicy()
        self._clock = clock or SystemClock()
        self._metrics = metrics or NoopMetrics()
        # (tenant, overrides as canonical JSON) -> effective policy, under
        # self._policies_of (rebuilt when the policy is replaced). Tenant
        # records are operator data, not client input: no key bound.
        self._policies: Memo[tuple[str, str], LockoutPolicy] = self._policy_memo()
        self._policies_of: LockoutPolicy = self.policy

    def _policy_memo(self) -> Memo[tuple[str, str], LockoutPolicy]:
        return Memo(self._policy_with, _POLICY_MEMO_MAX, max_key_bytes=None)

    def _policy_with(self, key: tuple[str, str]) -> LockoutPolicy:
        """The policy of tenant ``key[0]`` with record overrides ``key[1]``
        (JSON); invalid overrides are ignored with one WARNING."""
        tenant, content = key
        try:
            return self.policy.with_record_overrides(tenant, json.loads(content))
        except ValueError as exc:
            logger.warning(
                "ignoring invalid lockout_overrides of tenant %s (using the policy's levers): %s",
                tenant,
                exc,
            )
            return self.policy.for_tenant(tenant)

    def policy_for(self, tenant: str, record_overrides: object = None) -> LockoutPolicy:
        """The effective policy of ``tenant``: ``policy.overrides`` for the
        tenant, then the tenant record's ``lockout_overrides`` on top (see
        :meth:`LockoutPolicy.with_record_overrides`; the record wins).

        Invalid record content is ignored as a whole: the result is the
        policy without it, and one WARNING naming the tenant is logged per
        (tenant, content) — not per request. Results are memoized, so this
        costs no parsing on the hot path; it never raises.
        """
        if not record_overrides:
            return self.policy.for_tenant(tenant)
        if self._policies_of is not self.policy:  # the policy was replaced: start over
            self._policies = self._policy_memo()
            self._policies_of = self.policy
        try:
            content = json.dumps(record_overrides, sort_keys=True)
        except (TypeError, ValueError):  # not JSON: refused (and reported) as a string
            content = json.dumps(repr(record_overrides))
        return self._policies[(tenant, content)]

    def _levers(self, keys: LockoutKeys, policy: LockoutPolicy | None = None) -> list[_LeverRow]:
        if policy is None:
            policy = self.policy.for_tenant(keys.tenant_id)
        out: list[_LeverRow] = [("user", keys.user, policy.user)]
        if keys.ip is not None:
            out.append(("ip", keys.ip, policy.ip))
        out.append(("tenant", keys.tenant, policy.tenant))
        return out

    def _store_failed(self, what: str, exc: StoreError) -> None:
        if self.policy.on_store_error == "closed":
            raise exc
        self._metrics.store_error(LOCKOUT)
        logger.warning("lockout %s failed, proceeding (on_store_error='open'): %s", what, exc)

    async def pre_check(self, keys: LockoutKeys, now: float | None = None) -> Locked | None:
        """``Locked`` if any lever refuses the attempt; one store round trip.

        A trusted ``keys.origin`` passes a locked user lever here: the
        password hash is not read yet, so :meth:`reserve` (with the bound
        origin) has the last word. Raises :class:`StoreError` on a store
        outage unless ``on_store_error="open"``.
        """
        now = self._clock.time() if now is None else now
        levers = self._levers(keys)
        try:
            status = await self.store.lockout_status([k for _, k, _ in levers], keys.origin, now)
        except StoreError as exc:
            self._store_failed("pre-check", exc)
            return None
        if status.trusted:
            levers = [lv for lv in levers if lv[0] != "user"]
        return _longest_lock(levers, status.locked_until, now)

    async def trusted(self, keys: LockoutKeys, now: float | None = None) -> bool:
        """Whether ``keys.bound_origin`` is a trusted origin now (False when
        the keys are not bound); one store round trip. Store errors as in
        :meth:`pre_check` (``on_store_error="open"``: False)."""
        if keys.bound_origin is None:
            return False
        now = self._clock.time() if now is None else now
        try:
            status = await self.store.lockout_status([keys.user], keys.bound_origin, now)
        except StoreError as exc:
            self._store_failed("trust check", exc)
            return False
        return status.trusted

    async def record_failure(
        self,
        keys: LockoutKeys,
        now: float | None = None,
        *,
        policy: LockoutPolicy | None = None,
    ) -> dict[LeverName, LeverState]:
        """Count one failure on every lever atomically (one round trip).

        ``policy``: the tenant's effective policy (from :meth:`policy_for`,
        with the tenant record's overrides); default ``self.policy`` with
        its static overrides for ``keys.tenant_id``. Returns the new states
        by lever (the user lever is absent when ``keys.bound_origin`` is
        trusted). Logs and counts ``account_locked(lever)`` for each lever
        this failure locked.
        """
        now = self._clock.time() if now is None else now
        levers = self._levers(keys, policy)
        specs = [lv.spec(k, exempt_if_trusted=name == "user") for name, k, lv in levers]
        try:
            states = await self.store.lockout_failure(specs, keys.bound_origin, now)
        except StoreError as exc:
            self._store_failed("record_failure", exc)
            return {}
        return self._counted(levers, states, now)

    def _counted(
        self, levers: list[_LeverRow], states: Sequence[LeverState], now: float
    ) -> dict[LeverName, LeverState]:
        """The new states by lever; counts and logs each lock they applied."""
        by_key = {s.key: s for s in states}
        out: dict[LeverName, LeverState] = {}
        for name, key, _ in levers:
            state = by_key.get(key)
            if state is None:
                continue
            out[name] = state
            if state.tripped:
                self._metrics.account_locked(name)
                logger.warning(
                    "lockout_triggered lever=%s key=%s… lockouts=%d for=%.0fs",
                    name,
                    key[:10],
                    state.lockouts,
                    state.locked_until - now,
                )
        return out

    async def reserve(
        self,
        keys: LockoutKeys,
        now: float | None = None,
        *,
        policy: LockoutPolicy | None = None,
        trusted_exempt: bool = True,
    ) -> Reservation | Locked:
        """Take one unit of every lever's guess budget before a credential is
        checked: one atomic store round trip.

        ``Locked`` (nothing counted) when any lever refuses: it is locked, or
        its budget for the window is spent. Otherwise a :class:`Reservation`;
        the unit stays spent unless the attempt succeeds
        (:meth:`record_success` hands it back). The unit that spends a
        lever's budget locks it, so within one window at most ``threshold``
        credentials are ever checked for one identifier, whatever the
        concurrency. ``policy`` as in :meth:`record_failure`.
        ``trusted_exempt=False`` charges the user lever even from a trusted
        origin (second factors: the exemption protects owners from lockout
        by strangers, it must not widen a password holder's code budget).
        Only a trusted ``keys.bound_origin`` exempts (:meth:`LockoutKeys.bound_to`:
        keys that are not bound to the password hash exempt nothing). Raises
        :class:`StoreError` on an outage unless ``on_store_error="open"``
        (then an empty reservation: the attempt proceeds).
        """
        now = self._clock.time() if now is None else now
        levers = self._levers(keys, policy)
        specs = [
            lv.spec(k, exempt_if_trusted=trusted_exempt and name == "user")
            for name, k, lv in levers
        ]
        try:
            origin = keys.bound_origin if trusted_exempt else None
            result = await self.store.lockout_reserve(specs, origin, now)
        except StoreError as exc:
            self._store_failed("reserve", exc)
            return Reservation()
        if not result.reserved:
            locked = _longest_lock(levers, result.locked_until, now)
            assert locked is not None
            return locked
        return Reservation.of(self._counted(levers, result.states, now))

    async def record_success(
        self,
        keys: LockoutKeys,
        now: float | None = None,
        *,
        policy: LockoutPolicy | None = None,
        reservations: Sequence[Reservation] = (),
        also_trust: Sequence[str] = (),
        also_reset: Sequence[str] = (),
    ) -> None:
        """Reset the user lever, hand back the IP and tenant units of
        ``reservations`` (the attempts of this login) and trust this origin,
        and its bound key, for ``trusted_origin_ttl`` (of ``policy``, as in
        :meth:`record_failure`). ``also_trust``: further origin keys of the
        same account to trust (the IP prefix beside the device with
        ``trust_ip_prefix``). ``also_reset``: further counters to reset (the
        lever of a trusted device, :meth:`LockoutKeys.on_trusted_device`).
        One round trip, and one more for each key trusted after the first."""
        now = self._clock.time() if now is None else now
        if policy is None:
            policy = self.policy.for_tenant(keys.tenant_id)
        ttl = policy.trusted_origin_ttl
        trusted = (keys.origin, keys.bound_origin, *also_trust) if ttl > 0 else ()
        origins: list[str | None] = [o for o in dict.fromkeys(trusted) if o is not None]
        first, *more = origins or [None]
        release = [unit for r in reservations for unit in r.release]
        try:
            reset = list(dict.fromkeys((keys.user, *also_reset)))
            await self.store.lockout_success(reset, first, now + ttl, now, release)
            for extra in more:
                await self.store.lockout_success([], extra, now + ttl, now)
        except StoreError as exc:
            self._store_failed("record_success", exc)

    async def refund(self, reservation: Reservation, now: float | None = None) -> None:
        """Hand back every unit ``reservation`` took, the user lever's too:
        the credential it was taken for was correct, so it was no guess.
        Unlike :meth:`record_success` it resets no counter and trusts no
        origin (earlier failures stay counted). A unit whose reservation
        tripped a lock is not handed back: that lock stands. One round trip;
        store errors as in :meth:`record_success`."""
        units = [(s.key, s.window_start) for s in reservation.states.values() if not s.tripped]
        if not units:
            return
        now = self._clock.time() if now is None else now
        try:
            await self.store.lockout_success([], None, now, now, units)
        except StoreError as exc:
            self._store_failed("refund", exc)

    async def unlock(self, keys: LockoutKeys, *, levers: tuple[LeverName, ...] = LEVERS) -> int:
        """Clear the given levers (default all three); how many counters existed.

        Store errors always raise here: an admin action must not silently fail.
        """
        chosen = {
            "user": keys.user,
            "ip": keys.ip,
            "tenant": keys.tenant,
        }
        cleared = await self.store.lockout_clear([k for n in levers if (k := chosen[n])])
        if cleared:
            logger.info("lockout_cleared key=%s… levers=%s", keys.user[:10], ",".join(levers))
        return cleared
