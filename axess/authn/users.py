"""User and tenant administration (book: Users and tenants).

::

    admin = UserAdmin(store, keys, sessions=auth, lockout=authn.lockout)
    user = await admin.create_user("alice@example.com", password="…")
    enrolment = await admin.begin_totp_enrolment(user.id)   # show .uri as a QR code
    # keep enrolment.pending (e.g. in the session), ask for the first code:
    if await admin.confirm_totp_enrolment(user.id, enrolment.pending, code):
        codes = await admin.regenerate_recovery_codes(user.id)  # show once
    await admin.set_password(user.id, "…")            # logs out everywhere
    await admin.suspend(user.id)                       # and logs out everywhere
    await admin.unlock(user.id)                        # clears the lockout levers

Every change emits an :class:`~axess.authn.service.AuthnEvent` through
``on_event`` (``password_changed``, ``totp_enrolled``/``totp_disabled``,
``recovery_codes_regenerated``, ``account_suspended``/``account_activated``,
``lockout_cleared``) with the
``actor`` passed to the method.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from axess.authn.lockout import (
    LEVERS,
    LeverName,
    Lockout,
    LockoutPolicy,
    check_tenant_id,
    lockout_keys,
    normalize_identifier,
)
from axess.authn.password import Password, PasswordHasher
from axess.authn.recovery import CODE_COUNT, RecoveryCodeHasher
from axess.authn.service import AuthnEvent, AuthnEventHook, session_tenant
from axess.authn.totp import (
    TOTPCode,
    TOTPSecretSealer,
    generate_secret,
    provisioning_uri,
)
from axess.authn.totp import verify as verify_totp
from axess.clock import Clock, Random, SystemClock, SystemRandom
from axess.errors import ConfigurationError, EnvelopeError
from axess.keys import Keyring
from axess.session.registry import SessionInfo
from axess.stores.base import (
    ACTIVE,
    DEFAULT_TENANT,
    SUSPENDED,
    IdentityStore,
    TenantRecord,
    UserRecord,
)

logger = logging.getLogger(__name__)

#: Seconds a pending TOTP enrolment can be confirmed (default of
#: ``UserAdmin(totp_pending_ttl=…)``).
TOTP_PENDING_TTL: Final = 600.0
#: A pending token "created" this far in the future (clock skew between
#: instances) is still accepted.
_PENDING_SKEW: Final = 60.0


@dataclass(frozen=True, slots=True)
class TOTPEnrolment:
    """A TOTP enrolment waiting for its first code
    (:meth:`UserAdmin.begin_totp_enrolment`). ``repr`` shows none of it.

    * ``uri``: the ``otpauth://`` URI, to show as a QR code;
    * ``secret``: the same secret in base32 (no padding), for manual entry;
    * ``pending``: an opaque token (URL-safe ASCII) to hand back to
      :meth:`UserAdmin.confirm_totp_enrolment`. It carries the secret sealed
      for this user only; keep it server-side (e.g. in the session) rather
      than in a page.
    """

    uri: str = field(repr=False)
    secret: str = field(repr=False)
    pending: str = field(repr=False)


class SessionAdmin(Protocol):
    """What ``UserAdmin`` needs from the session registry (``Axess`` has it)."""

    async def invalidate_user(
        self, user_id: str, *, tenant_id: str | None = None, except_key: str | None = None
    ) -> int: ...

    async def list_sessions(
        self, user_id: str, *, tenant_id: str | None = None
    ) -> list[SessionInfo]: ...

    async def invalidate_session(self, storage_key: str) -> bool: ...

    async def invalidate_user_in_tenant(
        self, user_id: str, tenant_id: str | None, *, except_key: str | None = None
    ) -> int: ...


class UnknownUser(LookupError):
    """No user with that id."""


class UserAdmin:
    """Create users and tenants, manage their factors and status."""

    def __init__(
        self,
        store: IdentityStore,
        keys: Keyring,
        *,
        sessions: SessionAdmin | None = None,
        lockout: Lockout | None = None,
        hasher: PasswordHasher | None = None,
        clock: Clock | None = None,
        random: Random | None = None,
        issuer: str = "axess",
        on_event: AuthnEventHook | None = None,
        totp_pending_ttl: float = TOTP_PENDING_TTL,
    ) -> None:
        if not totp_pending_ttl > 0:
            raise ConfigurationError("totp_pending_ttl must be a positive number of seconds")
        self.store = store
        self.sessions = sessions
        self.lockout = lockout
        self.hasher = hasher or PasswordHasher(random=random)
        self.clock: Clock = clock or SystemClock()
        self._random: Random = random or SystemRandom()
        self.sealer = TOTPSecretSealer(keys, random=random)
        self.recovery = RecoveryCodeHasher(keys, random=random)
        self.issuer = issuer
        self.on_event = on_event
        self.totp_pending_ttl = totp_pending_ttl

    def _emit(self, type: str, user: UserRecord, actor: str | None, **fields: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(
                AuthnEvent(
                    type, "success", tenant=user.tenant_id, user=user.id, actor=actor, **fields
                )
            )
        except Exception:  # an audit hook must never break an admin action
            logger.exception("on_event hook failed for %s", type)

    async def _user(self, user_id: str) -> UserRecord:
        user = await self.store.get_user(user_id)
        if user is None:
            raise UnknownUser(user_id)
        return user

    # -- tenants ----------------------------------------------------------------
    async def create_tenant(
        self,
        tenant_id: str,
        slug: str | None = None,
        *,
        ip_allow: Sequence[str] = (),
        ip_deny: Sequence[str] = (),
        lockout_overrides: Mapping[str, Any] | None = None,
        pepper: bytes | None = None,
    ) -> TenantRecord:
        """A new tenant; ValueError if the id or slug is taken, or if
        ``lockout_overrides`` is not a valid overrides object (see
        :meth:`~axess.authn.lockout.LockoutPolicy.with_record_overrides`)."""
        check_tenant_id(tenant_id)
        if slug is not None:
            check_tenant_id(slug, "tenant slug")
        policy = self.lockout.policy if self.lockout is not None else LockoutPolicy()
        policy.with_record_overrides(tenant_id, lockout_overrides)  # ValueError if invalid
        record = TenantRecord(
            tenant_id,
            slug or tenant_id,
            pepper=pepper,
            ip_allow=tuple(ip_allow),
            ip_deny=tuple(ip_deny),
            lockout_overrides=dict(lockout_overrides or {}),
            created_at=self.clock.time(),
        )
        if not await self.store.create_tenant(record):
            raise ValueError(f"tenant {tenant_id!r} or slug {record.slug!r} already exists")
        return record

    # -- users ------------------------------------------------------------------
    async def create_user(
        self,
        identifier: str,
        *,
        tenant: str | None = None,
        password: str | Password | None = None,
        user_id: str | None = None,
    ) -> UserRecord:
        """A new active user (identifier normalized); ValueError if taken,
        empty, or no text a store can hold (a NUL, a lone surrogate, an
        identifier over 320 characters, a tenant or user id over 128)."""
        ident = normalize_identifier(identifier)
        check_tenant_id(tenant or DEFAULT_TENANT)
        if user_id is not None:
            check_tenant_id(user_id, "user id")
        uid = user_id or self._random.token_bytes(16).hex()
        record = UserRecord(uid, tenant or DEFAULT_TENANT, ident, created_at=self.clock.time())
        if not await self.store.create_user(record):
            raise ValueError("a user with this id or identifier already exists")
        if password is not None:
            await self.store.set_password_hash(uid, await self.hasher.hash(password))
        return record

    async def get_user(self, user_id: str) -> UserRecord | None:
        return await self.store.get_user(user_id)

    async def find_user(self, identifier: str, *, tenant: str | None = None) -> UserRecord | None:
        return await self.store.find_user(
            tenant or DEFAULT_TENANT, normalize_identifier(identifier)
        )

    async def set_password(
        self,
        user_id: str,
        password: str | Password,
        *,
        logout_everywhere: bool = True,
        except_session: str | None = None,
        actor: str | None = None,
    ) -> int:
        """Set a new password; by default end every session of the user (but
        ``except_session``, a storage key). Returns how many sessions ended."""
        if logout_everywhere and self.sessions is None:
            raise RuntimeError("UserAdmin needs sessions= (the Axess object) to revoke sessions")
        user = await self._user(user_id)
        await self.store.set_password_hash(user.id, await self.hasher.hash(password))
        self._emit("password_changed", user, actor)
        if logout_everywhere:
            return await self._end_sessions(user, except_session)
        return 0

    async def logout_everywhere(self, user_id: str, *, except_session: str | None = None) -> int:
        """Delete every session of the user in its tenant (needs ``sessions=``);
        of a user id no account has (deleted), every session of that id."""
        if self.sessions is None:
            raise RuntimeError("UserAdmin needs sessions= (the Axess object) to revoke sessions")
        user = await self.store.get_user(user_id)
        if user is None:
            return await self.sessions.invalidate_user(user_id, except_key=except_session)
        return await self._end_sessions(user, except_session)

    async def list_sessions(self, user_id: str) -> list[SessionInfo]:
        """The user's live sessions in its tenant, oldest first (of a user id
        no account has, every session of that id)."""
        if self.sessions is None:
            raise RuntimeError("UserAdmin needs sessions= (the Axess object) to list sessions")
        user = await self.store.get_user(user_id)
        if user is None:
            return await self.sessions.list_sessions(user_id)
        tenant = session_tenant(user.tenant_id)
        listed = await self.sessions.list_sessions(user.id, tenant_id=tenant)
        return [info for info in listed if info.tenant_id == tenant]

    async def _end_sessions(self, user: UserRecord, except_key: str | None = None) -> int:
        """End ``user``'s sessions in its own tenant (an app may give the same
        id to users of other tenants); how many ended."""
        assert self.sessions is not None
        tenant = session_tenant(user.tenant_id)
        # Through the registry's one rule (a session rotated meanwhile is
        # ended under its new id; other tenants' users of the same id keep
        # theirs).
        return await self.sessions.invalidate_user_in_tenant(user.id, tenant, except_key=except_key)

    # -- TOTP / recovery codes ----------------------------------------------------
    async def enrol_totp(
        self, user_id: str, *, account: str | None = None, actor: str | None = None
    ) -> str:
        """A fresh TOTP secret, **active at once** (sealed, replacing any
        previous one); returns the ``otpauth://`` URI. The next login asks for
        a code.

        For administrative and programmatic use (imports, tests) only: nothing
        proves the user's app holds the secret, so a mistyped or failed scan
        locks the user out of the next login. Interactive enrolment should use
        :meth:`begin_totp_enrolment` and :meth:`confirm_totp_enrolment`.
        """
        user = await self._user(user_id)
        secret = generate_secret(self._random)
        await self.store.set_totp_secret(user.id, self.sealer.seal(secret, user.id))
        self._emit("totp_enrolled", user, actor)
        return provisioning_uri(secret, account or user.identifier, self.issuer)

    def _enrolment(
        self, user: UserRecord, secret: bytes, pending: str, account: str | None
    ) -> TOTPEnrolment:
        return TOTPEnrolment(
            uri=provisioning_uri(secret, account or user.identifier, self.issuer),
            secret=base64.b32encode(secret).decode("ascii").rstrip("="),
            pending=pending,
        )

    async def begin_totp_enrolment(
        self, user_id: str, *, account: str | None = None
    ) -> TOTPEnrolment:
        """Start a TOTP enrolment: a fresh secret, returned as a URI, base32
        text and a pending token. **Nothing is stored**: any current TOTP
        secret stays active until :meth:`confirm_totp_enrolment` succeeds,
        which must happen within ``totp_pending_ttl`` (default 10 minutes).
        ``account`` is the label in the URI (default: the identifier)."""
        user = await self._user(user_id)
        secret = generate_secret(self._random)
        pending = self.sealer.seal_pending(secret, user.id, self.clock.time())
        return self._enrolment(user, secret, pending, account)

    def _open_pending(self, user: UserRecord, pending: str) -> bytes | None:
        try:
            secret, created_at = self.sealer.open_pending(pending, user.id)
        except EnvelopeError:
            logger.info("TOTP enrolment of user %s refused: invalid pending token", user.id)
            return None
        age = self.clock.time() - created_at
        if not -_PENDING_SKEW <= age <= self.totp_pending_ttl:
            logger.info("TOTP enrolment of user %s refused: pending token expired", user.id)
            return None
        return secret

    async def pending_totp_enrolment(
        self, user_id: str, pending: str, *, account: str | None = None
    ) -> TOTPEnrolment | None:
        """The enrolment of a pending token again (to show the QR code once
        more, e.g. after a wrong code), or ``None`` when the token is invalid,
        belongs to another user or has expired (start again)."""
        user = await self._user(user_id)
        secret = self._open_pending(user, pending)
        return None if secret is None else self._enrolment(user, secret, pending, account)

    async def confirm_totp_enrolment(
        self,
        user_id: str,
        pending: str,
        code: TOTPCode | str,
        *,
        actor: str | None = None,
        replace: bool = True,
    ) -> bool:
        """Activate the enrolment of ``pending`` if ``code`` is a current code
        of its secret (RFC 6238, ±1 step, as at login).

        Only then is the sealed secret stored (replacing any previous one;
        with ``replace=False`` only if the user has no TOTP secret, decided
        atomically in the store) and the code's step recorded as used, so
        the same code is refused at the next login; emits ``totp_enrolled``.
        Returns ``False`` — storing nothing and never raising for any
        ``pending``/``code`` — for a wrong code, a pending token that is
        malformed, tampered with, issued for another user, sealed with a key
        no longer configured, or older than ``totp_pending_ttl``, and with
        ``replace=False`` when a secret is set (TOTP turned on meanwhile:
        a second submission of the same form, another tab).
        ``UnknownUser`` for an unknown user id.
        """
        user = await self._user(user_id)
        secret = self._open_pending(user, pending)
        if secret is None:
            return False
        step = verify_totp(secret, code, self.clock.time(), None)
        if step is None:
            logger.info("TOTP enrolment of user %s refused: wrong code", user.id)
            return False
        sealed = self.sealer.seal(secret, user.id)
        if not replace:
            # With the confirming code's step: it cannot be replayed at login.
            if not await self.store.enable_totp(user.id, sealed, step):
                logger.info("TOTP enrolment of user %s refused: TOTP is on already", user.id)
                return False
        else:
            await self.store.set_totp_secret(user.id, sealed)
            # Setting the secret forgot the last step: record this one so the
            # code that confirmed the enrolment cannot be replayed at login.
            # (False only if a concurrent confirmation recorded it first.)
            await self.store.totp_accept_step(user.id, step)
        self._emit("totp_enrolled", user, actor)
        return True

    async def disable_totp(self, user_id: str, *, actor: str | None = None) -> None:
        """Remove the TOTP secret and the recovery codes backing it up (were
        they kept, enabling TOTP again would bring old codes back to life)."""
        user = await self._user(user_id)
        await self.store.set_totp_secret(user.id, None)
        await self.store.replace_recovery_codes(user.id, [])
        self._emit("totp_disabled", user, actor)

    async def regenerate_recovery_codes(
        self, user_id: str, count: int = CODE_COUNT, *, actor: str | None = None
    ) -> list[str]:
        """New single-use codes (show them once); every previous code stops
        working. Emits ``recovery_codes_regenerated`` (the codes themselves
        are never in an event)."""
        user = await self._user(user_id)
        codes = self.recovery.generate(count)
        await self.store.replace_recovery_codes(user.id, [self.recovery.hash(c) for c in codes])
        self._emit("recovery_codes_regenerated", user, actor)
        return codes

    # -- status / lockout ---------------------------------------------------------
    async def suspend(self, user_id: str, *, actor: str | None = None) -> int:
        """Suspend (logins fail like a wrong password) and end every session
        when ``sessions=`` is set; returns how many sessions ended."""
        user = await self._user(user_id)
        await self.store.set_user_status(user.id, SUSPENDED)
        self._emit("account_suspended", user, actor)
        if self.sessions is None:
            return 0
        return await self._end_sessions(user)

    async def activate(self, user_id: str, *, actor: str | None = None) -> None:
        user = await self._user(user_id)
        await self.store.set_user_status(user.id, ACTIVE)
        self._emit("account_activated", user, actor)

    async def unlock(
        self,
        user_id: str,
        *,
        ip: str | None = None,
        levers: tuple[LeverName, ...] = LEVERS,
        actor: str | None = None,
    ) -> int:
        """Clear the user's lockout levers (the tenant lever, and the IP lever
        of ``ip`` when given); returns how many counters existed."""
        if self.lockout is None:
            raise RuntimeError("UserAdmin needs lockout= to unlock users")
        user = await self._user(user_id)
        keys = lockout_keys(user.tenant_id, user.identifier, ip)
        chosen = tuple(lv for lv in levers if lv != "ip" or ip is not None)
        cleared = await self.lockout.unlock(keys, levers=chosen)
        self._emit("lockout_cleared", user, actor, reason=",".join(chosen))
        return cleared
