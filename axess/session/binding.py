"""Fingerprint binding: tie an authenticated session to the client that
created it, so a stolen cookie replayed elsewhere is caught.

Material = User-Agent, client-IP prefix (/24 IPv4, /64 IPv6 by default) and
optionally the primary Accept-Language tag. Fingerprint = HMAC-SHA256(tenant
pepper, length-prefixed material). Bound at the first non-guest transition,
compared in constant time on every request.

Fingerprint key rotation (book: Keys and key rotation): a fingerprint made
under a previous key of the ``fingerprint`` list still matches, and the
session is re-bound under the active key on that request (no logout, no
mismatch). Once that key has left the keyring, such a binding cannot be
verified any more and is a mismatch.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from starlette.types import Scope

from axess._cache import DEFAULT_MEMO_SIZE, BoundedDict, Memo
from axess.clock import Clock, SystemClock
from axess.errors import ConfigurationError, StoreError
from axess.keys import Keyring
from axess.net import ip_prefix, scope_ip
from axess.observability.metrics import AuthnMetrics
from axess.session.data import Guest, SessionData
from axess.stack import HEADERS_KEY, request_headers
from axess.stores.base import DEFAULT_TENANT, IdentityStore, TenantPepper

logger = logging.getLogger(__name__)

OnMismatch = Literal["revoke", "reauth", "warn"]
_MAX_UA: Final = 512
_MAX_LANG: Final = 16


@dataclass(frozen=True, slots=True)
class BindingPolicy:
    """How sessions are bound and what a mismatch does.

    ``on_mismatch``: ``"revoke"`` (default: delete the session, fresh guest),
    ``"reauth"`` (an authenticated session drops to a step-up for
    ``reauth_factors``; other states are revoked), ``"warn"`` (log, keep).
    """

    on_mismatch: OnMismatch = "revoke"
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    accept_language: bool = False
    reauth_factors: tuple[str, ...] = ("password",)
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.on_mismatch not in ("revoke", "reauth", "warn"):
            raise ConfigurationError("on_mismatch must be 'revoke', 'reauth' or 'warn'")
        if not 0 <= self.ipv4_prefix <= 32 or not 0 <= self.ipv6_prefix <= 128:
            raise ConfigurationError("ipv4_prefix must be 0-32 and ipv6_prefix 0-128")
        if self.on_mismatch == "reauth" and not self.reauth_factors:
            raise ConfigurationError("reauth needs at least one factor")

    def weakenings(self) -> list[str]:
        if not self.enabled:
            return ["session fingerprint binding disabled (BindingPolicy(enabled=False))"]
        if self.on_mismatch == "warn":
            return ["fingerprint mismatches only logged (on_mismatch='warn')"]
        return []


class TenantPeppers:
    """Per-tenant fingerprint peppers.

    The pepper of a tenant at version ``v`` is HKDF(``fingerprint`` key,
    tenant id and ``v``, salted with the tenant record's ``pepper`` secret when
    it has one). Every version stays derivable, so sessions bound under an
    older version can be verified and re-bound instead of logged out.

    With an identity ``store`` the version (and secret) of each tenant lives in
    the store (:meth:`~axess.stores.base.IdentityStore.tenant_pepper`), shared
    by every instance and kept across restarts; this process caches it for
    ``refresh_after`` seconds and reloads early when a session shows a newer
    version. Without a store, versions live in this process only.
    """

    def __init__(
        self,
        keys: Keyring,
        *,
        store: IdentityStore | None = None,
        clock: Clock | None = None,
        refresh_after: float = 60.0,
    ) -> None:
        if not refresh_after >= 0:
            raise ConfigurationError("refresh_after must be >= 0 seconds")
        self._keys = keys
        self._store = store
        self._clock: Clock = clock or SystemClock()
        self._refresh_after = refresh_after
        #: Fingerprint key ids, active first: previous keys still verify so a
        #: key rotation re-binds sessions instead of logging them out.
        self.kids = tuple(k.kid for k in keys.keys("fingerprint"))
        # store tenant id -> (state, refresh due at). Not a memo but state
        # (without a store, rotations live only here), so no key is ever
        # skipped: tenant ids come from the application, not from clients.
        self._known: BoundedDict[str, tuple[TenantPepper, float]] = BoundedDict(
            8192, max_key_bytes=None
        )
        # (tenant, version, fingerprint kid, tenant secret) -> pepper (an HKDF).
        self._peppers: Memo[tuple[str, int, str, bytes | None], bytes] = Memo(self._derive, 1024)

    @property
    def shared(self) -> bool:
        """True when versions live in a store (shared across instances)."""
        return self._store is not None

    def cached(
        self, tenant: str | None, fresh: bool = True, now: float | None = None
    ) -> TenantPepper | None:
        """The tenant's pepper state if known (and, with ``fresh``, not due for a
        reload at ``now``, default the clock's time); ``None`` means:
        ``await refresh(tenant)``."""
        entry = self._known.get(tenant or DEFAULT_TENANT)
        if entry is None:
            return _NEVER_ROTATED if self._store is None else None
        if fresh and self._store is not None:
            if (self._clock.time() if now is None else now) >= entry[1]:
                return None
        return entry[0]

    async def refresh(self, tenant: str | None) -> TenantPepper:
        """Reload the tenant's pepper state from the store.

        On a store error the last known state is kept (and retried after
        ``refresh_after``); with nothing known the :class:`StoreError` propagates.
        """
        key = tenant or DEFAULT_TENANT
        if self._store is None:
            return self.cached(tenant) or _NEVER_ROTATED
        old = self._known.get(key)
        try:
            state = await self._store.tenant_pepper(key)
        except StoreError:
            if old is None:
                raise
            logger.warning("tenant pepper reload failed; using the cached version")
            state = old[0]
        self._known.put(key, (state, self._clock.time() + self._refresh_after))
        return state

    async def current(self, tenant: str | None) -> TenantPepper:
        """The tenant's pepper state, reloading it when due."""
        return self.cached(tenant) or await self.refresh(tenant)

    async def rotate(self, tenant: str | None) -> int:
        """Issue a new pepper version for ``tenant``; returns it."""
        key = tenant or DEFAULT_TENANT
        if self._store is None:
            version = (self.cached(tenant) or _NEVER_ROTATED).version + 1
            self._known.put(key, (TenantPepper(None, version), 0.0))
            return version
        version = await self._store.rotate_tenant_pepper(key)
        state = await self.refresh(tenant)
        return max(version, state.version)

    def pepper(
        self, tenant: str | None, version: int, secret: bytes | None, kid: str | None = None
    ) -> bytes:
        """The pepper of ``tenant`` at ``version`` (with the tenant's ``secret``)
        under fingerprint key ``kid`` (default: the active key)."""
        return self._peppers[(tenant or "", version, kid or self.kids[0], secret)]

    def _derive(self, key: tuple[str, int, str, bytes | None]) -> bytes:
        tenant, version, kid, secret = key
        label = f"pepper/v{version}/{len(tenant)}:{tenant}"
        return self._keys.derive("fingerprint", label, kid=kid, salt=secret)


_NEVER_ROTATED: Final = TenantPepper()


#: (User-Agent or None, client-IP prefix, primary language tag).
Material = tuple[str | None, str, str]
#: Every input of a fingerprint check: (stored fingerprint, raw User-Agent,
#: raw Accept-Language or None, client IP, tenant, pepper version, tenant secret).
_VerdictKey = tuple[str, bytes, bytes | None, str, str | None, int, bytes | None]


def _lp(text: str) -> bytes:
    raw = text.encode("utf-8", "replace")
    return len(raw).to_bytes(4, "big") + raw


class FingerprintBinding:
    """Computes and checks fingerprints for a :class:`BindingPolicy`."""

    def __init__(
        self,
        policy: BindingPolicy,
        peppers: TenantPeppers,
        metrics: AuthnMetrics,
        on_mismatch_event: Callable[[str | None, str | None], None] | None = None,
        *,
        memo_size: int = DEFAULT_MEMO_SIZE,
    ) -> None:
        self.policy = policy
        self.peppers = peppers
        self.metrics = metrics
        self._on_mismatch_event = on_mismatch_event
        # Whole verdicts of :meth:`check`, keyed by every input they depend on
        # (raw header bytes, client IP, stored fingerprint, tenant, versions,
        # pepper secret) and computed from that key alone by _verdict: a
        # returning client's check is one tuple hash and one lookup. A key
        # over the memo's key bound (a User-Agent of more than about 800
        # bytes) is not remembered: such a check recomputes.
        self._verdicts: Memo[_VerdictKey, int] = Memo(self._verdict, memo_size)

    def material(self, scope: Scope) -> Material:
        """What a fingerprint covers, for this request."""
        headers = request_headers(scope)
        lang = headers.get(b"accept-language") if self.policy.accept_language else None
        return self._material(headers.get(b"user-agent"), lang, scope_ip(scope) or "")

    def _material(self, raw_ua: bytes | None, raw_lang: bytes | None, ip: str) -> Material:
        """(User-Agent, client-IP prefix, primary language tag) from the raw
        header values and the client IP; ``raw_lang`` is ``None`` when the
        policy ignores the language."""
        ua = raw_ua[:_MAX_UA].decode("latin-1") if raw_ua else None
        lang = ""
        if raw_lang is not None:
            lang = (
                raw_lang.split(b",")[0]
                .split(b";")[0]
                .split(b"-")[0]
                .strip()[:_MAX_LANG]
                .decode("latin-1")
                .lower()
            )
        policy = self.policy
        prefix = ip_prefix(ip, v4=policy.ipv4_prefix, v6=policy.ipv6_prefix) or ""
        return (ua, prefix, lang)

    def fingerprint(
        self,
        tenant: str | None,
        pepper: TenantPepper,
        version: int,
        material: Material,
        kid: str | None = None,
    ) -> str:
        """HMAC of ``material`` under the tenant's pepper at ``version``."""
        msg = _lp(material[0] or "") + _lp(material[1]) + _lp(material[2])
        key = self.peppers.pepper(tenant, version, pepper.secret, kid)
        return hmac.new(key, msg, hashlib.sha256).hexdigest()

    async def bind(self, scope: Scope, tenant: str | None) -> tuple[str, int]:
        """The fingerprint and pepper version to store on a session now.

        Raises :class:`StoreError` when the tenant's pepper state is unknown
        and the store cannot be read.
        """
        pepper = await self.peppers.current(tenant)
        material = self.material(scope)
        return self.fingerprint(tenant, pepper, pepper.version, material), pepper.version

    def verify(
        self, scope: Scope, tenant: str | None, pepper: TenantPepper, stored: str, version: int
    ) -> tuple[int, Material]:
        """Constant-time check of ``stored`` (bound under ``version``) against
        this request, and the request's material.

        The index is 0 when it matches under the active fingerprint key, a
        positive index when it matches only under a previous key (re-bind),
        and -1 on a mismatch. A missing User-Agent on a bound session is a
        mismatch.
        """
        material = self.material(scope)
        return self._match(tenant, pepper, stored, version, material), material

    def _match(
        self,
        tenant: str | None,
        pepper: TenantPepper,
        stored: str,
        version: int,
        material: Material,
    ) -> int:
        """The key index ``stored`` matches ``material`` under (see :meth:`verify`)."""
        if material[0] is None:
            return -1
        raw = stored.encode()
        # The active key first; previous keys only when it does not match.
        for index, kid in enumerate(self.peppers.kids):
            expected = self.fingerprint(tenant, pepper, version, material, kid)
            if hmac.compare_digest(expected.encode(), raw):
                if index:
                    logger.info("session fingerprint matched a previous (rotated) key; re-binding")
                    self.metrics.previous_key_used("fingerprint")
                return index
        return -1

    def check(
        self, scope: Scope, data: SessionData, fresh: bool = True, now: float | None = None
    ) -> int | None:
        """Whether the session's fingerprint fits this request.

        0: it fits (or the session is unbound); 1: it fits but must be
        re-bound with :meth:`rebind` (the pepper or the fingerprint key
        rotated); -1: mismatch (a missing User-Agent on a bound session is
        one); ``None``: the tenant's pepper state must be reloaded first
        (``peppers.refresh``), then call again with ``fresh=False``.

        Memoized on every input the answer depends on (raw header bytes,
        client IP, stored fingerprint, tenant, versions, pepper secret), so a
        returning client costs one lookup.
        """
        stored = data.fingerprint
        if stored is None or isinstance(data.auth_state, Guest):
            return 0
        tenant = data.tenant_id
        version = data.pepper_version or 1
        pepper = self.peppers.cached(tenant, fresh, now)
        if pepper is None or (fresh and pepper.version < version):
            return None  # unknown, stale, or another instance rotated it
        headers = scope["state"][HEADERS_KEY]  # check runs inside the stack
        ua = headers.get(b"user-agent")
        if not ua:
            return -1
        lang = headers.get(b"accept-language") if self.policy.accept_language else None
        ip = scope["state"].get("client_ip")  # scope_ip(scope), its usual case inline
        if not isinstance(ip, str):
            ip = scope_ip(scope) or ""
        index = self._verdicts[(stored, ua, lang, ip, tenant, version, pepper.secret)]
        if index < 0:
            return -1
        return 1 if index > 0 or pepper.version > version else 0

    def _verdict(self, key: _VerdictKey) -> int:
        stored, ua, lang, ip, tenant, version, secret = key
        pepper = TenantPepper(secret, version)
        return self._match(tenant, pepper, stored, version, self._material(ua, lang, ip))

    def rebind(self, scope: Scope, data: SessionData) -> None:
        """Re-compute ``data``'s fingerprint under the tenant's current pepper
        (after :meth:`check` answered 1)."""
        tenant = data.tenant_id
        pepper = self.peppers.cached(tenant, fresh=False) or _NEVER_ROTATED
        material = self.material(scope)
        data.fingerprint = self.fingerprint(tenant, pepper, pepper.version, material)
        data.pepper_version = pepper.version

    def mismatch(self, user: str | None, tenant: str | None) -> None:
        self.metrics.session_binding_mismatch()
        logger.warning("session fingerprint mismatch (policy %s)", self.policy.on_mismatch)
        if self._on_mismatch_event is not None:
            self._on_mismatch_event(user, tenant)
