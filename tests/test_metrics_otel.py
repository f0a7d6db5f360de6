"""OTelMetrics: values read back through the SDK's InMemoryMetricReader;
names, instrument kinds, attributes, bounds; one provider shared by two
instances."""

from __future__ import annotations

import sys
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    Sum,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from axess import AuthnMetrics, Axess, Keyring, RateLimit, get_session
from axess.errors import ConfigurationError
from axess.observability.otel import MAX_LABEL_VALUES, OTelMetrics
from axess.stores import MemoryStore

COUNTERS = (
    "auth_attempt",
    "auth_success",
    "auth_failure",
    "factor_attempt",
    "factor_success",
    "factor_failure",
    "account_locked",
    "session_created",
    "session_invalidated",
    "session_binding_mismatch",
    "session_decrypted_with_previous_key",
    "previous_key_used",
    "session_size_exceeded",
    "rate_limit_allowed",
    "rate_limit_rejected",
    "audit_dropped",
    "audit_recovered",
    "store_error",
    "authz_decision",
    "authz_error",
)


def setup() -> tuple[InMemoryMetricReader, MeterProvider]:
    reader = InMemoryMetricReader()
    return reader, MeterProvider(metric_readers=[reader])


def read(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: metric
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        if sm.scope.name == "axess"
        for metric in sm.metrics
    }


def point(metric: Any, **attributes: str) -> Any:
    for p in metric.data.data_points:
        if dict(p.attributes or {}) == attributes:
            return p
    raise AssertionError(f"no point {attributes} in {metric.name}")


def test_every_instrument_with_its_kind() -> None:
    reader, provider = setup()
    m = OTelMetrics(meter_provider=provider)
    assert isinstance(m, AuthnMetrics)
    m.store_latency("sessions", "load", 0.001)
    m.audit_buffer_depth(3)
    # Policies are not known in advance: their counters appear with the first one.
    assert "axess.rate_limit_allowed" not in read(reader)
    m.rate_limit_allowed("login-ip")
    m.rate_limit_rejected("login-ip")
    found = read(reader)
    assert set(found) == {f"axess.{n}" for n in COUNTERS} | {
        "axess.store_latency",
        "axess.audit_buffer_depth",
    }
    for name in COUNTERS:
        data = found[f"axess.{name}"].data
        assert isinstance(data, Sum) and data.is_monotonic, name
    assert isinstance(found["axess.store_latency"].data, Histogram)
    assert found["axess.store_latency"].unit == "s"
    assert isinstance(found["axess.audit_buffer_depth"].data, Gauge)


def test_every_method_lands_in_its_instrument() -> None:
    reader, provider = setup()
    m = OTelMetrics(meter_provider=provider)
    m.auth_attempt(), m.auth_success(), m.auth_failure()
    m.factor_attempt(), m.factor_success(), m.factor_failure()
    m.account_locked("user")
    m.session_created(), m.session_invalidated(), m.session_binding_mismatch()
    m.session_decrypted_with_previous_key(), m.session_size_exceeded()
    m.previous_key_used("fingerprint")
    m.rate_limit_allowed("login-ip"), m.rate_limit_rejected("login-ip")
    m.audit_dropped(5), m.audit_recovered(2)
    m.store_error("lockout")
    m.authz_decision("allow"), m.authz_error()
    m.audit_buffer_depth(9)
    m.store_latency("sessions", "load_session", 0.002)
    m.store_latency("sessions", "load_session", 0.004)
    found = read(reader)
    attributes = {
        "account_locked": {"lever": "user"},
        "previous_key_used": {"use": "fingerprint"},
        "rate_limit_allowed": {"policy": "login-ip"},
        "rate_limit_rejected": {"policy": "login-ip"},
        "store_error": {"substore": "lockout"},
        "authz_decision": {"outcome": "allow"},
    }
    for name in COUNTERS:
        expected = {"audit_dropped": 5, "audit_recovered": 2}.get(name, 1)
        assert point(found[f"axess.{name}"], **attributes.get(name, {})).value == expected, name
    assert point(found["axess.audit_buffer_depth"]).value == 9
    hist = point(found["axess.store_latency"], substore="sessions", operation="load_session")
    assert hist.count == 2 and hist.sum == pytest.approx(0.006)
    assert hist.explicit_bounds[0] == 0.0001  # the advisory sub-millisecond buckets
    # Bounded label sets are there at zero.
    assert point(found["axess.account_locked"], lever="tenant").value == 0


def test_one_provider_two_instances_share_the_instruments() -> None:
    reader, provider = setup()
    a, b = OTelMetrics(meter_provider=provider), OTelMetrics(meter_provider=provider)
    a.session_created()
    b.session_created()
    assert point(read(reader)["axess.session_created"]).value == 2
    other_reader, other = setup()
    OTelMetrics(meter_provider=other).session_created()
    assert point(read(other_reader)["axess.session_created"]).value == 1
    assert point(read(reader)["axess.session_created"]).value == 2


def test_attributes_stay_bounded() -> None:
    reader, provider = setup()
    m = OTelMetrics(meter_provider=provider)
    for i in range(MAX_LABEL_VALUES * 2):
        m.rate_limit_allowed(f"p{i}")
        m.store_latency("sessions", f"op{i}", 0.001)
    found = read(reader)
    assert len(found["axess.rate_limit_allowed"].data.data_points) == MAX_LABEL_VALUES + 1
    assert point(found["axess.rate_limit_allowed"], policy="other").value == MAX_LABEL_VALUES
    assert len(found["axess.store_latency"].data.data_points) == MAX_LABEL_VALUES + 1
    other = point(found["axess.store_latency"], substore="other", operation="other")
    assert other.count == MAX_LABEL_VALUES
    # The attribute cache behind it stays bounded too, however many names.
    for i in range(MAX_LABEL_VALUES * 20):
        m.store_latency("sessions", f"more{i}", 0.001)
    cached = m._state.latency_attributes.cache  # type: ignore[attr-defined]
    assert len(cached) == MAX_LABEL_VALUES + 1


async def login(request: Request) -> PlainTextResponse:
    get_session(request).authenticate("alice")
    return PlainTextResponse("ok")


async def test_an_app_reports_through_its_meter_provider() -> None:
    reader, provider = setup()
    auth = Axess(
        store=MemoryStore(),
        keys=Keyring.generate(),
        debug=True,
        metrics=OTelMetrics(meter_provider=provider),
        rate_limits=[RateLimit("1/minute", paths=["/login"], name="login-ip")],
        cleanup_interval=None,
    )
    app = Starlette(routes=[Route("/login", login, methods=["POST"])])
    auth.install(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
        assert (await c.post("/login")).status_code == 200
        assert (await c.post("/login")).status_code == 429
    found = read(reader)
    assert point(found["axess.session_created"]).value == 1
    assert point(found["axess.rate_limit_allowed"], policy="login-ip").value == 1
    assert point(found["axess.rate_limit_rejected"], policy="login-ip").value == 1
    with pytest.raises(ConfigurationError, match="no /metrics endpoint"):
        auth.metrics_endpoint


def test_without_opentelemetry_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigurationError, match=r"axess\[otel\]"):
        OTelMetrics()
