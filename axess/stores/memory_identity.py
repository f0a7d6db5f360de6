"""The identity and factors substores in memory (mixed into :class:`MemoryStore`).

No method awaits between reading and writing, so every call (the TOTP
compare-and-set, the recovery-code consumption) is atomic on the event loop.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

from axess.stores.base import FactorRecord, TenantPepper, TenantRecord, UserRecord


class MemoryRecoveryCodes:
    """Recovery-code hashes per user in a dict (single use, atomic per call)."""

    _codes: dict[str, set[str]]

    def __init__(self) -> None:
        self._codes = {}

    async def replace_recovery_codes(self, user: str, hashes: Sequence[str]) -> None:
        self._codes[user] = set(hashes)

    async def consume_recovery_code(self, user: str, candidates: Collection[str]) -> bool:
        stored = self._codes.get(user, set())
        for h in candidates:
            if h in stored:
                stored.discard(h)
                return True
        return False

    async def count_recovery_codes(self, user: str) -> int:
        return len(self._codes.get(user, ()))


class MemoryIdentityMixin(MemoryRecoveryCodes):
    """Tenants, users and factors in dicts."""

    def _init_identity(self) -> None:
        self._tenants: dict[str, TenantRecord] = {}
        self._users: dict[str, UserRecord] = {}
        self._user_ids: dict[tuple[str, str], str] = {}
        self._factors: dict[str, FactorRecord] = {}
        self._codes: dict[str, set[str]] = {}
        self._pepper_versions: dict[str, int] = {}

    # -- tenants --------------------------------------------------------------
    async def create_tenant(self, tenant: TenantRecord) -> bool:
        if tenant.id in self._tenants or any(t.slug == tenant.slug for t in self._tenants.values()):
            return False
        self._tenants[tenant.id] = tenant
        return True

    async def get_tenant(self, tenant_id: str) -> TenantRecord | None:
        return self._tenants.get(tenant_id)

    async def get_tenant_by_slug(self, slug: str) -> TenantRecord | None:
        return next((t for t in self._tenants.values() if t.slug == slug), None)

    async def update_tenant(self, tenant: TenantRecord) -> bool:
        if tenant.id not in self._tenants:
            return False
        if any(t.slug == tenant.slug and t.id != tenant.id for t in self._tenants.values()):
            return False
        self._tenants[tenant.id] = tenant
        return True

    async def tenant_pepper(self, tenant_id: str) -> TenantPepper:
        tenant = self._tenants.get(tenant_id)
        return TenantPepper(
            None if tenant is None else tenant.pepper, self._pepper_versions.get(tenant_id, 1)
        )

    async def rotate_tenant_pepper(self, tenant_id: str) -> int:
        version = self._pepper_versions.get(tenant_id, 1) + 1
        self._pepper_versions[tenant_id] = version
        return version

    # -- users ----------------------------------------------------------------
    async def create_user(self, user: UserRecord) -> bool:
        ident = (user.tenant_id, user.identifier)
        if user.id in self._users or ident in self._user_ids:
            return False
        self._users[user.id] = user
        self._user_ids[ident] = user.id
        return True

    async def get_user(self, user_id: str) -> UserRecord | None:
        return self._users.get(user_id)

    async def find_user(self, tenant_id: str, identifier: str) -> UserRecord | None:
        user_id = self._user_ids.get((tenant_id, identifier))
        return None if user_id is None else self._users.get(user_id)

    async def set_user_status(self, user_id: str, status: str) -> bool:
        user = self._users.get(user_id)
        if user is None:
            return False
        self._users[user_id] = replace(user, status=status)
        return True

    async def record_login(self, user_id: str, at: float) -> None:
        user = self._users.get(user_id)
        if user is not None:
            self._users[user_id] = replace(user, last_login_at=at)

    # -- factors --------------------------------------------------------------
    async def get_factors(self, user_id: str) -> FactorRecord:
        f = self._factors.get(user_id, FactorRecord(user_id))
        return replace(f, recovery_codes=len(self._codes.get(user_id, ())))

    async def set_password_hash(self, user_id: str, phc: str | None) -> None:
        f = self._factors.get(user_id, FactorRecord(user_id))
        self._factors[user_id] = replace(f, password_hash=phc)

    async def rehash_password(self, user_id: str, expected: str, phc: str) -> bool:
        f = self._factors.get(user_id)
        if f is None or f.password_hash != expected:
            return False
        self._factors[user_id] = replace(f, password_hash=phc)
        return True

    async def set_totp_secret(self, user_id: str, sealed: bytes | None) -> None:
        f = self._factors.get(user_id, FactorRecord(user_id))
        self._factors[user_id] = replace(
            f, totp_secret=None if sealed is None else bytes(sealed), totp_last_step=None
        )

    async def enable_totp(self, user_id: str, sealed: bytes, step: int) -> bool:
        f = self._factors.get(user_id, FactorRecord(user_id))
        if f.totp_secret is not None:
            return False
        self._factors[user_id] = replace(f, totp_secret=bytes(sealed), totp_last_step=step)
        return True

    async def totp_accept_step(self, user_id: str, step: int) -> bool:
        f = self._factors.get(user_id)
        if f is None or f.totp_secret is None:
            return False
        if f.totp_last_step is not None and step <= f.totp_last_step:
            return False
        self._factors[user_id] = replace(f, totp_last_step=step)
        return True

    async def reseal_totp_secret(self, user_id: str, expected: bytes, sealed: bytes) -> bool:
        f = self._factors.get(user_id)
        if f is None or f.totp_secret != expected:
            return False
        self._factors[user_id] = replace(f, totp_secret=bytes(sealed))
        return True

    async def purge_identity(self, now: float) -> int:
        """Nothing in identity/factors expires (a purge target that deletes nothing)."""
        return 0
