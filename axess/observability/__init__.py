"""Health checks and metrics."""

from axess.observability.health import (
    CompositeHealthCheck,
    HealthCheck,
    HealthState,
    HealthStatus,
    healthz_endpoint,
)
from axess.observability.metrics import AuthnMetrics, NoopMetrics

__all__ = [
    "AuthnMetrics",
    "CompositeHealthCheck",
    "HealthCheck",
    "HealthState",
    "HealthStatus",
    "NoopMetrics",
    "healthz_endpoint",
]
