"""axess: sessions and authentication for ASGI apps (Starlette, FastAPI).

The top level holds what an application writes: the facade (:class:`Axess`),
its configuration, the request helpers (``get_session``, ``csrf_input``,
``client_ip``), the building blocks named in the book, and the errors.
Stores are in :mod:`axess.stores`, test doubles in :mod:`axess.testing`
(``MockClock`` is here too), the clock and randomness protocols in
:mod:`axess.clock`, and each subsystem's details in its own package.
"""

from axess.app import Axess
from axess.audit import AuditPipeline, AuthEvent
from axess.authn import (
    AuthnService,
    Lever,
    LockoutPolicy,
    LoginOutcome,
    Password,
    RecoveryCode,
    TOTPCode,
    require_authn,
    require_partial_authn,
)
from axess.clock import MockClock
from axess.errors import (
    AxessError,
    ConfigurationError,
    EnvelopeError,
    SchemaVersionError,
    StoreError,
)
from axess.keys import Key, Keyring
from axess.login_fields import AmbiguousIdentifier, LoginFields
from axess.net import TrustedProxies, client_ip
from axess.observability.health import (
    CompositeHealthCheck,
    HealthCheck,
    HealthStatus,
    healthz_endpoint,
)
from axess.observability.metrics import AuthnMetrics, NoopMetrics
from axess.ratelimit import RateLimit, RateLimitMiddleware
from axess.session.binding import BindingPolicy
from axess.session.config import SessionConfig
from axess.session.csrf import CSRFConfig, CSRFMiddleware, csrf_input, csrf_token
from axess.session.data import AuthState
from axess.session.envelope import SessionCrypto
from axess.session.handle import Session, get_session
from axess.session.middleware import SessionMiddleware

__all__ = [
    "AmbiguousIdentifier",
    "AuditPipeline",
    "AuthEvent",
    "AuthState",
    "AuthnMetrics",
    "AuthnService",
    "Axess",
    "AxessError",
    "BindingPolicy",
    "CSRFConfig",
    "CSRFMiddleware",
    "CompositeHealthCheck",
    "ConfigurationError",
    "EnvelopeError",
    "HealthCheck",
    "HealthStatus",
    "Key",
    "Keyring",
    "Lever",
    "LockoutPolicy",
    "LoginFields",
    "LoginOutcome",
    "MockClock",
    "NoopMetrics",
    "Password",
    "RateLimit",
    "RateLimitMiddleware",
    "RecoveryCode",
    "SchemaVersionError",
    "Session",
    "SessionConfig",
    "SessionCrypto",
    "SessionMiddleware",
    "StoreError",
    "TOTPCode",
    "TrustedProxies",
    "client_ip",
    "csrf_input",
    "csrf_token",
    "get_session",
    "healthz_endpoint",
    "require_authn",
    "require_partial_authn",
]
