"""The metrics protocol. One method per counter; implementations must be cheap
and must never raise into the request path.

Labels are bounded: ``lever`` is one of ``user``/``ip``/``tenant``, ``policy``
is a configured rate-limit policy name, ``substore`` a substore name,
``operation`` the name of a store operation (a fixed set per backend), ``use``
one of ``totp_secret``/``fingerprint``/``csrf``.
Ready adapters: ``axess.observability.prometheus.PrometheusMetrics`` and
``axess.observability.otel.OTelMetrics`` (book: "Health and metrics").
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class AuthnMetrics(Protocol):
    def auth_attempt(self) -> None: ...
    def auth_success(self) -> None: ...
    def auth_failure(self) -> None: ...
    def factor_attempt(self) -> None: ...
    def factor_success(self) -> None: ...
    def factor_failure(self) -> None: ...
    def account_locked(self, lever: str) -> None: ...
    def session_created(self) -> None: ...
    def session_invalidated(self) -> None: ...
    def session_binding_mismatch(self) -> None: ...
    def session_decrypted_with_previous_key(self) -> None: ...
    def previous_key_used(self, use: str) -> None:
        """A previous (rotated) key was needed: ``use`` is ``totp_secret``
        (envelope keys), ``fingerprint`` or ``csrf``. Quiet means the old key
        can go (book: Keys and key rotation)."""

    def session_size_exceeded(self) -> None: ...
    def rate_limit_allowed(self, policy: str) -> None: ...
    def rate_limit_rejected(self, policy: str) -> None: ...
    def audit_dropped(self, count: int = 1) -> None: ...
    def audit_recovered(self, count: int = 1) -> None: ...
    def audit_buffer_depth(self, depth: int) -> None: ...
    def store_error(self, substore: str) -> None: ...
    def store_latency(self, substore: str, operation: str, seconds: float) -> None: ...
    def authz_decision(self, outcome: str) -> None:
        """One Cedar decision; ``outcome`` is ``allow`` or ``deny`` (book: Authorization)."""

    def authz_error(self) -> None:
        """A Cedar evaluation error (a policy erroring at run time, a request the
        schema refuses, a failing app callback); the decision was a deny."""


class NoopMetrics:
    """Discards everything. The default."""

    __slots__ = ()

    def auth_attempt(self) -> None:
        pass

    def auth_success(self) -> None:
        pass

    def auth_failure(self) -> None:
        pass

    def factor_attempt(self) -> None:
        pass

    def factor_success(self) -> None:
        pass

    def factor_failure(self) -> None:
        pass

    def account_locked(self, lever: str) -> None:
        pass

    def session_created(self) -> None:
        pass

    def session_invalidated(self) -> None:
        pass

    def session_binding_mismatch(self) -> None:
        pass

    def session_decrypted_with_previous_key(self) -> None:
        pass

    def previous_key_used(self, use: str) -> None:
        pass

    def session_size_exceeded(self) -> None:
        pass

    def rate_limit_allowed(self, policy: str) -> None:
        pass

    def rate_limit_rejected(self, policy: str) -> None:
        pass

    def audit_dropped(self, count: int = 1) -> None:
        pass

    def audit_recovered(self, count: int = 1) -> None:
        pass

    def audit_buffer_depth(self, depth: int) -> None:
        pass

    def store_error(self, substore: str) -> None:
        pass

    def store_latency(self, substore: str, operation: str, seconds: float) -> None:
        pass

    def authz_decision(self, outcome: str) -> None:
        pass

    def authz_error(self) -> None:
        pass
