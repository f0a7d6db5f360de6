"""Fingerprint binding: tie an authenticated session to the client that
created it, so a stolen cookie replayed elsewhere is caught.

Material = User-Agent, client-IP prefix (/24 IPv4, /64 IPv6 by default) and
optionally the primary Accept-Language tag. Fingerprint = HMAC-SHA256(tenant
pepper, length-prefixed material). Bound at the first non-guest transition,
compared in constant time on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from starlette.types import Scope

from axess._cache import BoundedMemo
from axess.errors import ConfigurationError
from axess.keys import Keyring
from axess.net import ip_prefix
from axess.observability.metrics import AuthnMetrics

logger = logging.getLogger("axess.session.binding")

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
    """Per-tenant fingerprint peppers, derived by HKDF from the ``fingerprint``
    key, the tenant id and a version; :meth:`rotate` bumps a tenant's version.

    Versions live in this process (``versions`` can be pre-seeded, e.g. from
    the tenant records once they exist); peppers are memoized.
    """

    def __init__(self, keys: Keyring, versions: dict[str, int] | None = None) -> None:
        self._keys = keys
        #: Fingerprint key ids, active first: previous keys still verify so a
        #: key rotation re-binds sessions instead of logging them out.
        self.kids = tuple(k.kid for k in keys.keys("fingerprint"))
        self._versions: dict[str, int] = dict(versions or {})
        self._memo: BoundedMemo[tuple[str, int, str], bytes] = BoundedMemo(1024)

    def version(self, tenant: str | None) -> int:
        return self._versions.get(tenant or "", 1)

    def pepper(self, tenant: str | None, version: int, kid: str | None = None) -> bytes:
        """The pepper of ``tenant`` at ``version`` under fingerprint key ``kid``
        (default: the active key)."""
        kid = kid or self.kids[0]
        memo_key = (tenant or "", version, kid)
        pepper = self._memo.get(memo_key)
        if pepper is None:
            label = f"pepper/v{version}/{len(memo_key[0])}:{memo_key[0]}"
            pepper = self._keys.derive("fingerprint", label, kid=kid)
            self._memo.put(memo_key, pepper)
        return pepper

    def rotate(self, tenant: str | None) -> int:
        """Issue a new pepper for ``tenant``; returns the new version."""
        new = self.version(tenant) + 1
        self._versions[tenant or ""] = new
        return new


#: (User-Agent or None, client-IP prefix, primary language tag); a plain
#: tuple because it is built and hashed on every request.
Material = tuple[str | None, str, str]


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
    ) -> None:
        self.policy = policy
        self.peppers = peppers
        self.metrics = metrics
        self._on_mismatch_event = on_mismatch_event
        # (tenant, version, material) -> fingerprint: HMAC is the costly part
        # and the same client sends the same material on every request.
        self._memo: BoundedMemo[tuple[str, int, Material, str], str] = BoundedMemo(8192)
        self._prefixes: BoundedMemo[str, str] = BoundedMemo(8192)

    def material(self, scope: Scope) -> Material:
        ua: str | None = None
        lang = ""
        for k, v in scope["headers"]:
            if k == b"user-agent":
                ua = v[:_MAX_UA].decode("latin-1")
            elif k == b"accept-language" and self.policy.accept_language:
                lang = (
                    v.split(b",")[0]
                    .split(b";")[0]
                    .split(b"-")[0]
                    .strip()[:_MAX_LANG]
                    .decode("latin-1")
                    .lower()
                )
        state = scope.get("state") or {}
        ip = state.get("client_ip")
        if not isinstance(ip, str):
            client = scope.get("client")
            ip = client[0] if client else ""
        prefix = self._prefixes.get(ip)
        if prefix is None:
            policy = self.policy
            prefix = ip_prefix(ip, v4=policy.ipv4_prefix, v6=policy.ipv6_prefix) or ""
            self._prefixes.put(ip, prefix)
        return (ua or None, prefix, lang)

    def fingerprint(
        self, tenant: str | None, version: int, material: Material, kid: str | None = None
    ) -> str:
        kid = kid or self.peppers.kids[0]
        memo_key = (tenant or "", version, material, kid)
        fp = self._memo.get(memo_key)
        if fp is None:
            msg = _lp(material[0] or "") + _lp(material[1]) + _lp(material[2])
            pepper = self.peppers.pepper(tenant, version, kid)
            fp = hmac.new(pepper, msg, hashlib.sha256).hexdigest()
            self._memo.put(memo_key, fp)
        return fp

    def bind(self, scope: Scope, tenant: str | None) -> tuple[str, int]:
        """The fingerprint and pepper version to store on a session now."""
        version = self.peppers.version(tenant)
        return self.fingerprint(tenant, version, self.material(scope)), version

    def verify(self, scope: Scope, tenant: str | None, stored: str, version: int) -> int:
        """Constant-time check of ``stored`` against this request.

        Returns 0 when it matches under the active fingerprint key, a positive
        index when it matches only under a previous key (re-bind), and -1 on a
        mismatch. A missing User-Agent on a bound session is a mismatch.
        """
        material = self.material(scope)
        if material[0] is None:
            return -1
        raw = stored.encode()
        for index, kid in enumerate(self.peppers.kids):
            expected = self.fingerprint(tenant, version, material, kid)
            if hmac.compare_digest(expected.encode(), raw):
                return index
        return -1

    def mismatch(self, user: str | None, tenant: str | None) -> None:
        self.metrics.session_binding_mismatch()
        logger.warning("session fingerprint mismatch (policy %s)", self.policy.on_mismatch)
        if self._on_mismatch_event is not None:
            self._on_mismatch_event(user, tenant)
