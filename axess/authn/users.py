"""User and tenant administration (DESIGN §8 "User admin API").

::

    admin = UserAdmin(store, keys, sessions=auth, lockout=authn.lockout)
    user = await admin.create_user("alice@example.com", password="…")
    uri = await admin.enrol_totp(user.id)            # show as a QR code
    codes = await admin.regenerate_recovery_codes(user.id)  # show once
    await admin.set_password(user.id, "…")            # logs out everywhere
    await admin.suspend(user.id)                       # and logs out everywhere
    await admin.unlock(user.id)                        # clears the lockout levers

Every change emits an :class:`~axess.authn.service.AuthnEvent` through
``on_event`` (``password_changed``, ``totp_enrolled``/``totp_disabled``,
``account_suspended``/``account_activated``, ``lockout_cleared``) with the
``actor`` passed to the method.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from axess.authn.lockout import LEVERS, LeverName, Lockout, lockout_keys, normalize_identifier
from axess.authn.password import Password, PasswordHasher
from axess.authn.recovery import CODE_COUNT, RecoveryCodeHasher
from axess.authn.service import AuthnEvent, AuthnEventHook
from axess.authn.totp import TOTPSecretSealer, generate_secret, provisioning_uri
from axess.clock import Clock, Random, SystemClock, SystemRandom
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

logger = logging.getLogger("axess.authn")


class SessionAdmin(Protocol):
    """What ``UserAdmin`` needs from the session registry (``Axess`` has it)."""

    async def invalidate_user(
        self, user_id: str, *, tenant_id: str | None = None, except_key: str | None = None
    ) -> int: ...

    async def list_sessions(
        self, user_id: str, *, tenant_id: str | None = None
    ) -> list[SessionInfo]: ...


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
    ) -> None:
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
        """A new tenant; ValueError if the id or slug is taken."""
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
        """A new active user (identifier normalized); ValueError if taken or empty."""
        ident = normalize_identifier(identifier)
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
            return await self.logout_everywhere(user.id, except_session=except_session)
        return 0

    async def logout_everywhere(self, user_id: str, *, except_session: str | None = None) -> int:
        """Delete every session of the user (needs ``sessions=``)."""
        if self.sessions is None:
            raise RuntimeError("UserAdmin needs sessions= (the Axess object) to revoke sessions")
        return await self.sessions.invalidate_user(user_id, except_key=except_session)

    async def list_sessions(self, user_id: str) -> list[SessionInfo]:
        if self.sessions is None:
            raise RuntimeError("UserAdmin needs sessions= (the Axess object) to list sessions")
        return await self.sessions.list_sessions(user_id)

    # -- TOTP / recovery codes ----------------------------------------------------
    async def enrol_totp(
        self, user_id: str, *, account: str | None = None, actor: str | None = None
    ) -> str:
        """A fresh TOTP secret (sealed, replacing any previous one); returns the
        ``otpauth://`` URI to show as a QR code. The next login asks for a code."""
        user = await self._user(user_id)
        secret = generate_secret(self._random)
        await self.store.set_totp_secret(user.id, self.sealer.seal(secret, user.id))
        self._emit("totp_enrolled", user, actor)
        return provisioning_uri(secret, account or user.identifier, self.issuer)

    async def disable_totp(self, user_id: str, *, actor: str | None = None) -> None:
        user = await self._user(user_id)
        await self.store.set_totp_secret(user.id, None)
        self._emit("totp_disabled", user, actor)

    async def regenerate_recovery_codes(self, user_id: str, count: int = CODE_COUNT) -> list[str]:
        """New single-use codes (show them once); every previous code stops working."""
        user = await self._user(user_id)
        codes = self.recovery.generate(count)
        await self.store.replace_recovery_codes(user.id, [self.recovery.hash(c) for c in codes])
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
        return await self.sessions.invalidate_user(user.id)

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
