"""axess: sessions and authentication for ASGI apps (Starlette, FastAPI)."""

from axess.app import Axess
from axess.clock import Clock, MockClock, Random, SeededRandom, SystemClock, SystemRandom
from axess.errors import (
    AxessError,
    ConfigurationError,
    EnvelopeError,
    SchemaVersionError,
    StoreError,
)
from axess.keys import Key, Keyring
from axess.net import ClientIPMiddleware, TrustedProxies, client_ip
from axess.observability.health import (
    CompositeHealthCheck,
    HealthCheck,
    HealthStatus,
    healthz_endpoint,
)
from axess.observability.metrics import AuthnMetrics, NoopMetrics
from axess.session.binding import BindingPolicy
from axess.session.config import SessionConfig
from axess.session.csrf import CSRFConfig, CSRFMiddleware, csrf_input, csrf_token
from axess.session.data import AuthState
from axess.session.envelope import SessionCrypto
from axess.session.handle import Session, get_session
from axess.session.middleware import SessionMiddleware
from axess.session.registry import SessionInfo

__all__ = [
    "AuthState",
    "AuthnMetrics",
    "Axess",
    "AxessError",
    "BindingPolicy",
    "CSRFConfig",
    "CSRFMiddleware",
    "ClientIPMiddleware",
    "Clock",
    "CompositeHealthCheck",
    "ConfigurationError",
    "EnvelopeError",
    "HealthCheck",
    "HealthStatus",
    "Key",
    "Keyring",
    "MockClock",
    "NoopMetrics",
    "Random",
    "SchemaVersionError",
    "SeededRandom",
    "Session",
    "SessionConfig",
    "SessionCrypto",
    "SessionInfo",
    "SessionMiddleware",
    "StoreError",
    "SystemClock",
    "SystemRandom",
    "TrustedProxies",
    "client_ip",
    "csrf_input",
    "csrf_token",
    "get_session",
    "healthz_endpoint",
]
