"""``AuthnService``: the login flow (book: Login, Lockout).

::

    outcome = await authn.login_password(request, "alice@example.com", "pw")
    # or, in steps:
    await authn.begin_login(request, identifier, tenant)   # -> FactorRequired("password")
    await authn.verify_factor(request, Password("pw"))     # -> FactorRequired("totp") | …
    await authn.verify_factor(request, TOTPCode("123456")) # -> Authenticated

Order of one attempt (every step that can refuse does so before the next):

1. an empty identifier is ``InvalidCredentials`` before any lever is touched;
2. lockout pre-check, one read-only store round trip: a locked attempt is
   refused here, with no tenant lookup and no Argon2 run;
3. the tenant record (its lever overrides decide the budget);
4. the guess budget: one unit of every lever is reserved atomically, one
   store round trip (:meth:`~axess.authn.lockout.Lockout.reserve`); an
   attempt that cannot reserve is answered like a locked one. Concurrent
   attempts can never check more than ``threshold`` credentials per window;
5. tenant checks (exists, active, IP policy: a non-empty allow-list wins,
   else the deny-list) — a rejection looks like ``InvalidCredentials``;
6. the credential: unknown or suspended users run a dummy hash and get the
   same ``InvalidCredentials`` as a wrong password. A failure keeps its
   reserved units (that is the failure count); a complete login resets the
   user lever and hands back the IP and tenant units of all its steps.

Second factors (TOTP, recovery codes) reserve a unit the same way (also from
a trusted origin), so the lockout bounds guessing of 6-digit codes under
any concurrency. A TOTP secret is opened before its unit is reserved: one
that no configured envelope key opens raises
:class:`~axess.authn.totp.TOTPSecretUnavailable` (a ``StoreError``: 503) and
counts on no lever; one opened with a previous key is re-sealed under the
active key after a correct code (book: Keys and key rotation).
Failures count with the tenant's effective lever parameters
(:meth:`~axess.authn.lockout.Lockout.policy_for`: the static
``LockoutPolicy.overrides`` and the tenant record's ``lockout_overrides``),
taken from the tenant record that step 3 loads.
Between the steps the pending login (tenant, normalized identifier, the
user id once the password passed and, when the tenant record overrides the
lockout, the effective levers, so a second factor needs no extra store
round trip) lives in the session's custom data under :data:`PENDING_KEY`;
a second factor is checked only while that record names the user the
session is half-way signed in as. The auth state
moves ``Guest → Authenticating → Authenticated`` (entering Authenticated
rotates the session id; the middleware binds the fingerprint at commit).

Store outages raise :class:`~axess.errors.StoreError` (answer 503; the lockout's
``on_store_error="open"`` lets attempts proceed when only counters are down).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeAlias

from starlette.requests import HTTPConnection

from axess.authn import totp as totp_mod
from axess.authn.device import DeviceCookie, DeviceCookieConfig
from axess.authn.lockout import (
    Locked,
    Lockout,
    LockoutKeys,
    LockoutPolicy,
    Reservation,
    check_tenant_id,
    lockout_keys,
    normalize_identifier,
)
from axess.authn.outcomes import Authenticated, FactorRequired, InvalidCredentials, LoginOutcome
from axess.authn.password import Password, PasswordHasher
from axess.authn.recovery import RecoveryCode, RecoveryCodeHasher
from axess.authn.totp import TOTPCode, TOTPSecretSealer, TOTPSecretUnavailable
from axess.clock import Clock, Random, SystemClock
from axess.errors import EnvelopeError, StoreError
from axess.keys import Keyring
from axess.net import client_ip
from axess.observability.metrics import AuthnMetrics, NoopMetrics
from axess.session import data as d
from axess.session.handle import Session, get_session
from axess.stores.base import (
    ACTIVE,
    DEFAULT_TENANT,
    FactorRecord,
    IdentityStore,
    LockoutStore,
    TenantRecord,
    UserRecord,
)

logger = logging.getLogger(__name__)

#: Session custom-data key holding the login in progress.
PENDING_KEY: Final = "_axess.login"

Credential: TypeAlias = Password | TOTPCode | RecoveryCode


@dataclass(frozen=True, slots=True)
class AuthnEvent:
    """One authentication event for ``on_event``. ``type`` and ``status`` are
    the audit wire strings (book: Audit); the fields match
    :meth:`axess.audit.events.AuthEvent.create` keyword arguments. Never
    holds a secret (no password, code or session id)."""

    type: str
    status: str
    tenant: str | None = None
    user: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    factor: str | None = None
    lever: str | None = None
    reason: str | None = None
    actor: str | None = None

    def as_kwargs(self) -> dict[str, Any]:
        """Everything but ``type``, for ``AuthEvent.create(event.type, **kwargs, …)``."""
        return {
            "status": self.status,
            "tenant": self.tenant,
            "user": self.user,
            "ip": self.ip,
            "user_agent": self.user_agent,
            "factor": self.factor,
            "lever": self.lever,
            "reason": self.reason,
            "actor": self.actor,
        }


AuthnEventHook = Callable[[AuthnEvent], None]


def credential_tag(password_hash: str | None) -> str | None:
    """What a login's trusted origin is bound to (book: Lockout, "A new
    password ends every trust"): a digest of the stored password hash, kept
    in the pending login between steps instead of the hash itself."""
    if password_hash is None:
        return None
    return hashlib.sha256(password_hash.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _lever_key(raw: object) -> str | None:
    """A lever key a pending login keeps (``None``: none or malformed)."""
    return raw if isinstance(raw, str) and len(raw) == 66 and raw.startswith("u:") else None


def credential_tag_of(pending: dict[str, Any]) -> str | None:
    """The :func:`credential_tag` a pending login keeps (``None``: none or malformed)."""
    tag = pending.get("h")
    return tag if isinstance(tag, str) and len(tag) == 32 else None


#: A user id no account has, whose factors a login reads for an unknown
#: identifier (the same round trips as for a real one).
_NO_USER: Final = ""


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One request's login context after the checks that need no credential."""

    request: HTTPConnection
    session: Session
    tenant: str
    identifier: str
    keys: LockoutKeys
    ip: str | None
    #: The tenant's effective lockout policy (``None``: the static one).
    policy: LockoutPolicy | None = None
    #: Its levers as JSON, kept in the pending login when the tenant record
    #: overrides the lockout (so second factors count with them too).
    levers: dict[str, Any] | None = None
    #: The guess-budget units this attempt holds (a success hands back the
    #: IP and tenant units of every step of the login).
    reservation: Reservation | None = None
    #: Units held by earlier steps of the same login (from the pending login).
    held: Reservation | None = None
    #: The device id of the client's valid device cookie.
    device: str | None = None
    #: The account and its factors, read before a password's unit is
    #: reserved (``None``: no such user).
    user: UserRecord | None = None
    factors: FactorRecord | None = None
    #: :func:`credential_tag` of the password hash this login is checked
    #: against: the trust it grants is bound to it (kept between steps).
    credential: str | None = None
    #: The lever of the origin the password step was trusted at, under that
    #: hash (:meth:`LockoutKeys.on_trusted_device`): the code steps count
    #: there first, whatever device cookie they come with (kept between steps).
    device_lever: str | None = None

    def pending(self, user: str | None = None) -> dict[str, Any]:
        """The session's record of this login in progress; ``user``: the user
        id, once the password step has passed (a second factor is checked
        only while the record names the user the session is half-way
        signed in as)."""
        data: dict[str, Any] = {"t": self.tenant, "i": self.identifier}
        if user is not None:
            data["u"] = user
            if self.credential is not None:
                data["h"] = self.credential
            if self.device_lever is not None:
                data["d"] = self.device_lever
        if self.levers is not None:
            data["o"] = self.levers
        units = [*self.reservations_json()]
        if units:
            data["r"] = units
        return data

    def reservations_json(self) -> list[list[Any]]:
        out: list[list[Any]] = []
        for r in (self.held, self.reservation):
            if r is not None:
                out += r.to_json()
        return out

    def reservations(self) -> list[Reservation]:
        return [r for r in (self.held, self.reservation) if r is not None]


@dataclass(frozen=True, slots=True)
class _OpenedTOTP:
    """A user's TOTP secret as loaded for one code check."""

    sealed: bytes
    secret: bytes = field(repr=False)
    last_step: int | None
    #: Opened with a previous envelope key: re-seal after a correct code.
    previous: bool


def session_tenant(tenant: str) -> str | None:
    """The tenant as sessions record it: none for the default tenant."""
    return None if tenant == DEFAULT_TENANT else tenant


def ip_allowed(tenant: TenantRecord | None, ip: str | None) -> bool:
    """The tenant IP policy: a non-empty allow-list wins, else the deny-list.

    An unparsable client address passes only when there is no allow-list and
    no deny-list.
    """
    if tenant is None or (not tenant.ip_allow and not tenant.ip_deny):
        return True
    try:
        addr = ipaddress.ip_address((ip or "").strip())
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped

    def within(cidrs: Sequence[str]) -> bool:
        for cidr in cidrs:
            try:
                if addr in ipaddress.ip_network(cidr, strict=False):
                    return True
            except ValueError:
                logger.warning("ignoring malformed CIDR %r in tenant %s ip_policy", cidr, tenant.id)
        return False

    if tenant.ip_allow:
        return within(tenant.ip_allow)
    return not within(tenant.ip_deny)


class AuthnService:
    """Password + TOTP + recovery-code login over an
    :class:`~axess.stores.base.IdentityStore` and the three-lever lockout.

    ``store`` must implement the identity/factors substores (and the lockout
    substore, unless ``lockout`` is given). ``keys`` seal TOTP secrets and
    pepper recovery codes. ``on_event`` receives an :class:`AuthnEvent` for
    every audited step (the audit pipeline connects here); it must not block.
    """

    def __init__(
        self,
        store: IdentityStore,
        keys: Keyring,
        *,
        lockout: Lockout | None = None,
        hasher: PasswordHasher | None = None,
        clock: Clock | None = None,
        random: Random | None = None,
        metrics: AuthnMetrics | None = None,
        on_event: AuthnEventHook | None = None,
        gate: Callable[[], None] | None = None,
        device_cookie: DeviceCookie | None = None,
    ) -> None:
        self.store = store
        #: Called before a login starts; raises (e.g. ``AuditUnavailable``)
        #: when no login may happen right now (no audit trail: book, Audit).
        self.gate = gate
        self.clock: Clock = clock or SystemClock()
        self.metrics: AuthnMetrics = metrics or NoopMetrics()
        if lockout is None:
            if not isinstance(store, LockoutStore):
                raise TypeError("store has no lockout substore: pass lockout=Lockout(...)")
            lockout = Lockout(store, clock=self.clock, metrics=self.metrics)
        self.lockout = lockout
        if device_cookie is None:
            ttl = int(lockout.policy.trusted_origin_ttl)
            device_cookie = DeviceCookie(keys, DeviceCookieConfig(max_age=ttl), random=random)
        #: Names browsers that completed a login: the lockout's trusted origins.
        self.device_cookie = device_cookie
        self.hasher = hasher or PasswordHasher(random=random)
        self.sealer = TOTPSecretSealer(keys, random=random)
        self.recovery = RecoveryCodeHasher(keys, random=random)
        self.on_event = on_event
        self._totp_unavailable_logged: set[str] = set()

    # -- events -----------------------------------------------------------------
    def _emit(self, attempt: _Attempt | None, type: str, status: str, **fields: Any) -> None:
        if self.on_event is None:
            return
        if attempt is not None:
            fields.setdefault("tenant", attempt.tenant)
            fields.setdefault("ip", attempt.ip)
            ua = attempt.request.headers.get("user-agent")
            fields.setdefault("user_agent", ua[:256] if ua else None)
        try:
            self.on_event(AuthnEvent(type, status, **fields))
        except Exception:  # an audit hook must never break a login
            logger.exception("on_event hook failed for %s", type)

    # -- public flow --------------------------------------------------------------
    async def begin_login(
        self, request: HTTPConnection, identifier: str, tenant: str | None = None
    ) -> LoginOutcome:
        """Start a login for ``identifier``: ``FactorRequired("password")``, or
        ``Locked`` / ``InvalidCredentials``. Never reveals whether the user exists."""
        attempt = await self._start(request, identifier, tenant)
        if not isinstance(attempt, _Attempt):
            return attempt
        attempt.session[PENDING_KEY] = attempt.pending()
        return FactorRequired("password")

    async def verify_factor(self, request: HTTPConnection, credential: Credential) -> LoginOutcome:
        """Check the next factor of the login in progress on this session."""
        session = get_session(request)
        pending = session.get(PENDING_KEY)
        if not (isinstance(pending, dict) and {"t", "i"} <= pending.keys()):
            return InvalidCredentials()
        device = self.device_cookie.read(request)
        try:
            keys = self._keys(pending["t"], pending["i"], client_ip(request) or None, device)
        except (TypeError, ValueError):
            return InvalidCredentials()
        attempt = _Attempt(
            request,
            session,
            pending["t"],
            pending["i"],
            keys,
            client_ip(request) or None,
            self.lockout.policy_for(pending["t"], pending.get("o")),
            pending.get("o"),
            held=Reservation.from_json(pending.get("r")),
            device=device,
            credential=credential_tag_of(pending),
            device_lever=_lever_key(pending.get("d")),
        )
        attempt = replace(attempt, keys=keys.bound_to(attempt.credential))
        if isinstance(credential, Password):
            if isinstance(session.auth_state, d.Authenticating):
                return InvalidCredentials()  # the password step is done
            tenant = None if attempt.tenant == DEFAULT_TENANT else attempt.tenant
            started = await self._start(
                request, attempt.identifier, tenant, password=credential, announce=False
            )
            if not isinstance(started, _Attempt):
                return started
            session[PENDING_KEY] = started.pending()
            return await self._password(started, credential)
        state = session.auth_state
        if not isinstance(state, d.Authenticating) or "totp" not in state.remaining:
            return InvalidCredentials()
        if pending.get("u") != state.user:
            # Another login was begun on this session after this one's
            # password step: its record (and lockout keys) name someone else.
            # Checking this user's codes against those keys would let every
            # new identifier buy fresh guesses, so no code is checked.
            return InvalidCredentials()
        return await self._second_factor(attempt, state, credential)

    async def login_password(
        self,
        request: HTTPConnection,
        identifier: str,
        password: str | Password,
        tenant: str | None = None,
    ) -> LoginOutcome:
        """``begin_login`` + ``verify_factor(Password)`` in one call (one pre-check).

        A ``str`` password that cannot be a :class:`Password` (empty, too long,
        not valid Unicode text) is ``InvalidCredentials`` before any lever or hash.
        """
        if not isinstance(password, Password):
            try:
                password = Password(password)
            except ValueError:  # it can match no stored hash: no guess to count
                self.metrics.auth_failure()
                return InvalidCredentials()
        attempt = await self._start(request, identifier, tenant, password=password)
        if not isinstance(attempt, _Attempt):
            return attempt
        # No pending record before the password passes: a failed attempt
        # leaves the session as it was (a client without a cookie gets no
        # session row, and a login half-way through on it stays intact).
        return await self._password(attempt, password)

    async def logout(self, request: HTTPConnection) -> None:
        """End the session (row deleted, cookie cleared) and emit ``logout``."""
        session = get_session(request)
        state = session.auth_state
        await session.invalidate_for(request.scope)
        if not isinstance(state, d.Guest):
            self._emit(
                None,
                "logout",
                "success",
                user=state.user,
                tenant=state.tenant,
                ip=client_ip(request) or None,
            )

    async def reverify(
        self, request: HTTPConnection, credential: Credential
    ) -> Authenticated | InvalidCredentials | Locked:
        """Check one credential of the user signed in on this session again (a
        step-up before a change to their factors): ``Authenticated`` (the
        session's current login) when it is correct, else
        ``InvalidCredentials`` or ``Locked``. A session that is not
        authenticated gets ``InvalidCredentials``, with no lever touched.

        The guess budget is the login's, on every lever. From a browser the
        account trusts (under its current password) a check counts first on
        that browser's own lever, then on the shared user lever, as the code
        steps of a login do: strangers who keep the account locked cannot
        stop its owner from changing a password or a factor, and whoever
        holds that browser's cookies gets at most the two levers' budgets.
        From anywhere else it counts on the shared user lever, never exempt.
        A correct credential hands back its own units and resets nothing, so
        failures stay counted and a known password cannot buy more code
        guesses. A TOTP code is used up as at login; a recovery code is
        consumed.
        """
        found = await self._signed_in(request)
        if isinstance(found, InvalidCredentials):
            return found
        state, user_id, attempt = found
        opened: _OpenedTOTP | None = None
        if isinstance(credential, Password):
            factor = "password"
        elif isinstance(credential, RecoveryCode):
            factor = "recovery_code"
        else:
            factor = "totp"
            # Opened before the unit is taken, as in _second_factor.
            opened = await self._open_totp(attempt, user_id)
        reserved = await self._reserve_code(attempt, factor)
        if isinstance(reserved, Locked):
            return reserved
        attempt = replace(attempt, reservation=reserved)
        self.metrics.factor_attempt()
        ok = False
        if isinstance(credential, Password):
            phc = (await self.store.get_factors(user_id)).password_hash
            if phc is None:
                await self.hasher.verify_dummy(credential)
            else:
                ok = await self.hasher.verify(phc, credential)
        elif isinstance(credential, RecoveryCode):
            candidates = self.recovery.candidates(credential)
            ok = bool(candidates) and await self.store.consume_recovery_code(user_id, candidates)
            if ok:
                self._emit(attempt, "recovery_code_used", "success", user=user_id)
        else:
            ok = await self._check_totp(user_id, credential, opened)
        return await self._settle(attempt, factor, ok, user_id, state, "step_up")

    async def check_code(
        self,
        request: HTTPConnection,
        check: Callable[[], Awaitable[bool]],
        *,
        reason: str = "code_check",
    ) -> Authenticated | InvalidCredentials | Locked:
        """Spend one guess of the signed-in user's budget on ``check``, a
        code check outside the login (the first code of a TOTP secret being
        enrolled): ``Authenticated`` when it returns True (its unit handed
        back), ``InvalidCredentials`` when False, ``Locked`` when the budget
        is spent, without calling it. Charged as :meth:`reverify` charges a
        TOTP code, so a stolen session cannot try every code; a success is
        audited as ``factor_verified`` with ``reason``.
        """
        found = await self._signed_in(request)
        if isinstance(found, InvalidCredentials):
            return found
        state, user_id, attempt = found
        reserved = await self._reserve_code(attempt, "totp")
        if isinstance(reserved, Locked):
            return reserved
        self.metrics.factor_attempt()
        ok = await check()
        attempt = replace(attempt, reservation=reserved)
        return await self._settle(attempt, "totp", ok, user_id, state, reason)

    async def _signed_in(
        self, request: HTTPConnection
    ) -> tuple[d.Authenticated, str, _Attempt] | InvalidCredentials:
        """The session's login, its active user and an attempt on the
        login's levers (with the lever of this browser when the account
        trusts it under its current password); ``InvalidCredentials`` (no
        lever touched) for a session that is not signed in or a user no
        longer active."""
        if self.gate is not None:
            self.gate()
        session = get_session(request)
        state = session.auth_state
        if not isinstance(state, d.Authenticated):
            return InvalidCredentials()
        user = await self.store.get_user(state.user)
        if user is None or user.status != ACTIVE:
            return InvalidCredentials()
        ip = client_ip(request) or None
        device = self.device_cookie.read(request)
        keys = self._keys(user.tenant_id, user.identifier, ip, device)
        record = await self.store.get_tenant(user.tenant_id)
        overrides = None if record is None else record.lockout_overrides
        policy = self.lockout.policy_for(user.tenant_id, overrides)
        tag = credential_tag((await self.store.get_factors(user.id)).password_hash)
        keys = keys.bound_to(tag)
        lever = keys.on_trusted_device().user if await self.lockout.trusted(keys) else None
        attempt = _Attempt(
            request,
            session,
            user.tenant_id,
            user.identifier,
            keys,
            ip,
            policy,
            device=device,
            credential=tag,
            device_lever=lever,
        )
        return state, user.id, attempt

    async def _settle(
        self,
        attempt: _Attempt,
        factor: str,
        ok: bool,
        user_id: str,
        state: d.Authenticated,
        reason: str,
    ) -> Authenticated | InvalidCredentials:
        """A step-up check's end: a failure keeps its unit spent; a success
        hands it back and resets nothing."""
        if not ok:
            reason = "wrong_password" if factor == "password" else "wrong_code"
            return await self._failure(attempt, factor, reason, user_id)
        self.metrics.factor_success()
        self._emit(
            attempt, "factor_verified", "success", factor=factor, user=user_id, reason=reason
        )
        assert attempt.reservation is not None
        await self.lockout.refund(attempt.reservation)
        return Authenticated(state.user, state.tenant, state.factors)

    # -- steps --------------------------------------------------------------------
    async def _start(
        self,
        request: HTTPConnection,
        identifier: str,
        tenant: str | None,
        *,
        password: str | Password | None = None,
        announce: bool = True,
    ) -> _Attempt | InvalidCredentials | Locked:
        if self.gate is not None:
            self.gate()
        session = get_session(request)
        tenant_id = tenant or DEFAULT_TENANT
        ip = client_ip(request) or None
        device = self.device_cookie.read(request)
        try:
            ident = normalize_identifier(identifier)
            check_tenant_id(tenant_id)  # no tenant can have it: nobody to guess at
            keys = self._keys(tenant_id, ident, ip, device)
        except (TypeError, ValueError):
            self.metrics.auth_failure()
            return InvalidCredentials()  # before any lever, no hash
        attempt = _Attempt(request, session, tenant_id, ident, keys, ip, device=device)
        if announce:
            self.metrics.auth_attempt()
            self._emit(attempt, "login_attempt", "info")
        # A read-only check first: under attack most attempts arrive locked,
        # and this refuses them in one round trip, before the tenant lookup.
        locked = await self._pre_check(attempt, "password")
        if locked is not None:
            return locked
        record = await self.store.get_tenant(tenant_id)
        # The record is loaded anyway: its lever overrides cost no round trip.
        overrides = None if record is None else record.lockout_overrides
        policy = self.lockout.policy_for(tenant_id, overrides)
        levers = policy.levers_json() if overrides else None
        attempt = replace(attempt, policy=policy, levers=levers)
        if password is not None:
            # The account first: the origin's trust exempts from the user
            # lever only when it was granted under the current password hash.
            user = await self.store.find_user(tenant_id, ident)
            # Read for an unknown identifier too: the same round trips either
            # way, or a refused attempt would tell whether the account exists.
            read = await self.store.get_factors(_NO_USER if user is None else user.id)
            factors = None if user is None else read
            tag = credential_tag(None if factors is None else factors.password_hash)
            keys = attempt.keys.bound_to(tag)
            attempt = replace(attempt, keys=keys, user=user, factors=factors, credential=tag)
            # The guess budget: a unit of every lever before any hash runs.
            reserved = await self._reserve(attempt, "password")
            if isinstance(reserved, Locked):
                return reserved
            # The user lever was left out: the origin is trusted under this hash.
            trusted = bool(reserved.states) and "user" not in reserved.states
            lever = attempt.keys.on_trusted_device().user if trusted else None
            attempt = replace(attempt, reservation=reserved, device_lever=lever)
        refused: str | None = None
        if record is None and tenant is not None:
            refused = "unknown_tenant"
        elif record is not None and record.status != ACTIVE:
            refused = "tenant_inactive"
        elif not ip_allowed(record, ip):
            refused = "ip_policy"
            logger.warning("login rejected by tenant IP policy (tenant=%s ip=%s)", tenant_id, ip)
        if refused is not None:
            if password is not None:
                await self.hasher.verify_dummy(password)  # same cost as a real attempt
            self.metrics.auth_failure()
            self._emit(attempt, "factor_failed", "failure", factor="password", reason=refused)
            return InvalidCredentials()
        return attempt

    def _keys(self, tenant: str, ident: str, ip: str | None, device: str | None) -> LockoutKeys:
        """The attempt's lockout keys; its trusted origin is the device cookie
        (the IP prefix only with ``LockoutPolicy(trust_ip_prefix=True)``)."""
        ip_origin = self.lockout.policy.trust_ip_prefix
        return lockout_keys(tenant, ident, ip, device=device, ip_origin=ip_origin)

    async def _reserve(
        self, attempt: _Attempt, factor: str, *, trusted_exempt: bool | None = None
    ) -> Reservation | Locked:
        """One unit of the guess budget for ``attempt`` (``Locked`` when spent).
        Second factors are charged to the user lever even from a trusted
        origin; ``trusted_exempt=False`` charges it for any factor."""
        exempt = factor == "password" if trusted_exempt is None else trusted_exempt
        reserved = await self.lockout.reserve(
            attempt.keys, policy=attempt.policy, trusted_exempt=exempt
        )
        if isinstance(reserved, Locked):
            return self._refused(attempt, factor, reserved)
        self._tripped(attempt, reserved)
        return reserved

    async def _reserve_code(self, attempt: _Attempt, factor: str) -> Reservation | Locked:
        """The unit of a code step or a step-up check, never exempt. From a
        trusted origin (``attempt.device_lever``: the password step's, or the
        step-up's browser), on that origin's own lever first, so strangers
        who keep the account's shared lever locked cannot stop its owner's
        browser; once that one is spent (or from anywhere else), on the
        shared lever, which an operator's unlock clears. Whoever holds the
        browser and the password thus gets at most the two levers' budgets."""
        if attempt.device_lever is not None:
            own = replace(attempt.keys, user=attempt.device_lever)
            got = await self.lockout.reserve(own, policy=attempt.policy, trusted_exempt=False)
            if not isinstance(got, Locked):
                self._tripped(attempt, got)
                return got
            if got.lever != "user":  # the IP or tenant lever: no fallback
                return self._refused(attempt, factor, got)
        return await self._reserve(attempt, factor, trusted_exempt=False)

    def _tripped(self, attempt: _Attempt, reserved: Reservation) -> None:
        for lever, state in reserved.states.items():
            if state.tripped:
                self._emit(attempt, "lockout_triggered", "info", lever=lever)

    async def _pre_check(self, attempt: _Attempt, factor: str) -> Locked | None:
        locked = await self.lockout.pre_check(attempt.keys)
        return None if locked is None else self._refused(attempt, factor, locked)

    def _refused(self, attempt: _Attempt, factor: str, locked: Locked) -> Locked:
        """Count and audit an attempt the lockout refused."""
        self.metrics.auth_failure()
        self._emit(
            attempt, "factor_failed", "failure", factor=factor, reason="locked", lever=locked.lever
        )
        return locked

    async def _failure(
        self, attempt: _Attempt, factor: str, reason: str, user: str | None
    ) -> InvalidCredentials:
        # The attempt's reserved units stay spent: that is the failure count.
        self.metrics.factor_failure()
        self.metrics.auth_failure()
        self._emit(attempt, "factor_failed", "failure", factor=factor, reason=reason, user=user)
        return InvalidCredentials()

    async def _password(self, attempt: _Attempt, password: str | Password) -> LoginOutcome:
        assert attempt.reservation is not None, "reserve before checking a password"
        self.metrics.factor_attempt()
        user, factors = attempt.user, attempt.factors
        phc = None if factors is None else factors.password_hash
        if user is None or user.status != ACTIVE or phc is None:
            await self.hasher.verify_dummy(password)
            reason = "unknown_user" if user is None else "inactive_or_no_password"
            return await self._failure(attempt, "password", reason, user.id if user else None)
        if not await self.hasher.verify(phc, password):
            return await self._failure(attempt, "password", "wrong_password", user.id)
        self.metrics.factor_success()
        self._emit(attempt, "factor_verified", "success", factor="password", user=user.id)
        current_phc = phc
        if self.hasher.needs_rehash(phc):
            # Only over the hash just verified: a password set meanwhile (an
            # admin reset while this login was hashing) must not be replaced
            # by the old one.
            rehashed = await self.hasher.hash(password)
            if await self.store.rehash_password(user.id, phc, rehashed):
                current_phc = rehashed
            else:
                logger.info("password of user %s changed during login; rehash skipped", user.id)
        # The hash took a while: a suspension or a password change made
        # meanwhile ended the user's sessions before this one existed, so it
        # would outlive them. Read again; the change wins.
        again = await self.store.get_user(user.id)
        if (
            again is None
            or again.status != ACTIVE
            or (await self.store.get_factors(user.id)).password_hash != current_phc
        ):
            logger.info("user %s suspended or password changed during login; refused", user.id)
            return await self._failure(attempt, "password", "changed_during_login", user.id)
        assert factors is not None
        remaining = ("password", "totp") if factors.totp_secret is not None else ("password",)
        start = d.require_factors(d.Identifying(user.id, session_tenant(user.tenant_id)), remaining)
        state = d.complete_factor(start, "password", self.clock.time())
        attempt = replace(attempt, credential=credential_tag(current_phc))
        return await self._advance(attempt, user, state)

    async def _second_factor(
        self, attempt: _Attempt, state: d.Authenticating, credential: Credential
    ) -> LoginOutcome:
        factor = "recovery_code" if isinstance(credential, RecoveryCode) else "totp"
        opened: _OpenedTOTP | None = None
        if isinstance(credential, TOTPCode):
            # Before the reservation: a secret that no configured key opens is
            # the deployment's fault, not a guess, and must not count.
            opened = await self._open_totp(attempt, state.user)
        reserved = await self._reserve_code(attempt, factor)
        if isinstance(reserved, Locked):
            return reserved
        attempt = replace(attempt, reservation=reserved)
        self.metrics.factor_attempt()
        user = await self.store.get_user(state.user)
        if user is None or user.status != ACTIVE:
            return await self._failure(attempt, factor, "inactive", state.user)
        ok = False
        if isinstance(credential, RecoveryCode):
            candidates = self.recovery.candidates(credential)
            ok = bool(candidates) and await self.store.consume_recovery_code(user.id, candidates)
            if ok:
                self._emit(attempt, "recovery_code_used", "success", user=user.id)
        elif isinstance(credential, TOTPCode):
            ok = await self._check_totp(user.id, credential, opened)
        if not ok:
            return await self._failure(attempt, factor, "wrong_code", user.id)
        self.metrics.factor_success()
        self._emit(attempt, "factor_verified", "success", factor=factor, user=user.id)
        remaining = tuple(f for f in state.remaining if f != "totp")
        completed = (*state.completed, factor)
        new: d.Authenticating | d.Authenticated
        if remaining:
            new = d.Authenticating(state.user, state.tenant, remaining, completed, state.method)
        else:
            new = d.Authenticated(state.user, state.tenant, self.clock.time(), completed)
        return await self._advance(attempt, user, new)

    async def _open_totp(self, attempt: _Attempt, user_id: str) -> _OpenedTOTP | None:
        """The user's TOTP secret, opened (``None``: no secret enrolled).

        Raises :class:`TOTPSecretUnavailable` (a 503, counted on no lever)
        when no configured envelope key opens it (book: Keys and key rotation).
        """
        factors = await self.store.get_factors(user_id)
        sealed = factors.totp_secret
        if sealed is None:
            return None
        try:
            secret, previous = self.sealer.open_checked(sealed, user_id)
        except EnvelopeError as exc:
            reason = str(exc)
            if reason not in self._totp_unavailable_logged:
                self._totp_unavailable_logged.add(reason)
                logger.error(
                    "TOTP secret of user %s cannot be opened (%s): an envelope key was removed "
                    "before the secrets it sealed were re-sealed, or the row was altered; "
                    "TOTP logins of such users answer 503 and count on no lockout lever "
                    "until the key is configured again (logged once per reason)",
                    user_id,
                    reason,
                )
            self._emit(
                attempt,
                "factor_failed",
                "failure",
                factor="totp",
                reason="secret_unavailable",
                user=user_id,
            )
            raise TOTPSecretUnavailable(reason) from None
        if previous:
            logger.info("TOTP secret opened with previous (rotated) envelope key")
            self.metrics.previous_key_used("totp_secret")
        return _OpenedTOTP(sealed, secret, factors.totp_last_step, previous)

    async def _check_totp(self, user_id: str, code: TOTPCode, opened: _OpenedTOTP | None) -> bool:
        if opened is None:
            return False
        step = totp_mod.verify(opened.secret, code, self.clock.time(), opened.last_step)
        # The compare-and-set is what makes a code single-use under concurrency.
        if step is None or not await self.store.totp_accept_step(user_id, step):
            return False
        if opened.previous:
            # Re-seal under the active key, so the old key can be removed.
            # A compare-and-set on the sealed bytes that keeps the accepted
            # step: a concurrent re-enrolment wins, and no code becomes
            # usable twice.
            resealed = self.sealer.seal(opened.secret, user_id)
            try:
                await self.store.reseal_totp_secret(user_id, opened.sealed, resealed)
            except StoreError:
                logger.warning("TOTP secret re-seal failed; retried at the next login")
        return True

    async def _advance(
        self,
        attempt: _Attempt,
        user: UserRecord,
        state: d.Authenticating | d.Authenticated,
    ) -> LoginOutcome:
        """Move the session to ``state``. A complete login first does its store
        work (lockout success, ``record_login``); a :class:`StoreError` there
        propagates with the session as it was (not signed in), so a 503 never
        comes with a signed-in session. The trust it grants is bound to
        ``attempt.credential``: the hash the password step verified, so a
        password changed between the steps leaves this login's trust void."""
        session = attempt.session
        if isinstance(state, d.Authenticating):
            session.set_auth_state(state)
            # Keep the units this step holds: a complete login hands them back.
            session[PENDING_KEY] = attempt.pending(user.id)
            return FactorRequired(state.remaining[0])
        # Only a complete login resets the user lever and trusts the origin:
        # a correct password alone must not let its holder guess codes freely.
        keys = attempt.keys
        device = attempt.device
        also_trust: list[str] = []
        if device is None and self.device_cookie.config.max_age > 0:
            # A browser without a device cookie gets one, and that is what
            # is trusted (not its network: see the book, Lockout).
            device = self.device_cookie.new_id()
        if device is not None:
            # The device is trusted whatever origin this attempt was keyed
            # by: with trust_ip_prefix a cookieless attempt's origin is its IP
            # prefix, yet the browser's next attempts are keyed by the cookie.
            new = self._keys(attempt.tenant, attempt.identifier, attempt.ip, device)
            if self.lockout.policy.trust_ip_prefix:
                # The prefix stays trusted too (cookieless clients there).
                prefix = self._keys(attempt.tenant, attempt.identifier, attempt.ip, None)
                bound = prefix.bound_to(attempt.credential)
                also_trust = [o for o in (bound.origin, bound.bound_origin) if o is not None]
            keys = replace(keys, origin=new.origin)
        keys = keys.bound_to(attempt.credential)
        await self.lockout.record_success(
            keys,
            policy=attempt.policy,
            reservations=attempt.reservations(),
            also_trust=also_trust,
            also_reset=[] if attempt.device_lever is None else [attempt.device_lever],
        )
        await self.store.record_login(user.id, state.authn_time)
        # The session changes only now: the middleware commits whatever state
        # the session is in, even when the answer is a 503.
        session.set_auth_state(state)
        session.pop(PENDING_KEY, None)
        if device is not None and self.device_cookie.config.max_age > 0:
            self.device_cookie.issue(attempt.request, device)
        self.metrics.auth_success()
        self._emit(
            attempt, "authenticated", "success", user=user.id, reason=",".join(state.factors)
        )
        return Authenticated(user.id, state.tenant, state.factors)
