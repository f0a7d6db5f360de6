"""PrometheusMetrics: the /metrics endpoint scraped and parsed with
prometheus-client's own text parser; names, types, labels, bounds; separate
and shared registries; /metrics and /healthz never rate limited."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from axess import AuthnMetrics, Axess, Keyring, NoopMetrics, RateLimit, get_session
from axess.errors import ConfigurationError
from axess.observability.prometheus import MAX_LABEL_VALUES, PrometheusMetrics
from axess.stores import MemoryStore

COUNTERS = {
    "auth_attempt": None,
    "auth_success": None,
    "auth_failure": None,
    "factor_attempt": None,
    "factor_success": None,
    "factor_failure": None,
    "account_locked": "lever",
    "session_created": None,
    "session_invalidated": None,
    "session_binding_mismatch": None,
    "session_decrypted_with_previous_key": None,
    "previous_key_used": "use",
    "session_size_exceeded": None,
    "rate_limit_allowed": "policy",
    "rate_limit_rejected": "policy",
    "audit_dropped": None,
    "audit_recovered": None,
    "store_error": "substore",
    "authz_decision": "outcome",
    "authz_error": None,
}


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(text: str, sample: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {sample}{labels}")


async def login(request: Request) -> PlainTextResponse:
    get_session(request).authenticate("alice")
    return PlainTextResponse("ok")


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def build_app(metrics: PrometheusMetrics, rules: list[RateLimit]) -> tuple[Axess, Starlette]:
    auth = Axess(
        store=MemoryStore(),
        keys=Keyring.generate(),
        debug=True,
        metrics=metrics,
        rate_limits=rules,
        cleanup_interval=None,
    )
    app = Starlette(routes=[Route("/login", login, methods=["POST"]), Route("/limited", ok)])
    auth.install(app)
    app.add_route("/metrics", auth.metrics_endpoint)
    app.add_route("/healthz", auth.healthz)
    return auth, app


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://testserver")


async def test_the_endpoint_exposes_every_metric_with_its_type() -> None:
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    assert isinstance(metrics, AuthnMetrics)
    _, app = build_app(metrics, [])
    async with client(app) as c:
        r = await c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert r.headers["cache-control"] == "no-store"
    found = families(r.text)
    for name in COUNTERS:
        assert found[f"axess_{name}"].type == "counter", name
    assert found["axess_audit_buffer_depth"].type == "gauge"
    assert found["axess_store_latency_seconds"].type == "histogram"
    assert set(found) == {f"axess_{n}" for n in COUNTERS} | {
        "axess_audit_buffer_depth",
        "axess_store_latency_seconds",
    }
    # Counters are exposed as <name>_total, labelled ones with their one label.
    for name, label in COUNTERS.items():
        for s in found[f"axess_{name}"].samples:
            assert s.name == f"axess_{name}_total"
            assert list(s.labels) == ([label] if label else [])
    # Bounded label sets are there at zero before anything happens.
    assert value(r.text, "axess_account_locked_total", lever="tenant") == 0
    assert value(r.text, "axess_store_error_total", substore="lockout") == 0


async def test_requests_move_the_counters_and_the_endpoints_are_never_rate_limited() -> None:
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    # A rule on every path, allowing one request a minute per client.
    rules = [RateLimit("1/minute", name="everything"), RateLimit("2/minute", paths=["/limited"])]
    _, app = build_app(metrics, rules)
    async with client(app) as c:
        for _ in range(5):
            assert (await c.get("/metrics")).status_code == 200
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/metrics/")).status_code in (200, 307)
        assert (await c.post("/login")).status_code == 200  # the one allowed request
        assert (await c.get("/limited")).status_code == 429
        text = (await c.get("/metrics")).text
    assert value(text, "axess_session_created_total") == 1
    assert value(text, "axess_rate_limit_allowed_total", policy="everything") == 1
    assert value(text, "axess_rate_limit_rejected_total", policy="everything") == 1


async def test_openmetrics_is_served_when_asked_for() -> None:
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    metrics.auth_attempt()
    async with client(build_app(metrics, [])[1]) as c:
        r = await c.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert "axess_auth_attempt_total 1.0" in r.text and r.text.endswith("# EOF\n")


def scrape(metrics: PrometheusMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def test_separate_registries_are_independent_and_a_shared_one_adds_up() -> None:
    a = PrometheusMetrics(registry=CollectorRegistry())
    b = PrometheusMetrics(registry=CollectorRegistry())
    a.auth_attempt()
    b.auth_attempt()
    b.auth_attempt()
    assert value(scrape(a), "axess_auth_attempt_total") == 1
    assert value(scrape(b), "axess_auth_attempt_total") == 2
    again = PrometheusMetrics(registry=b.registry)  # no duplicate-name error
    again.auth_attempt()
    assert value(scrape(b), "axess_auth_attempt_total") == 3


def test_the_default_registry() -> None:
    from prometheus_client import REGISTRY

    first = PrometheusMetrics()
    second = PrometheusMetrics()
    assert first.registry is REGISTRY and second.registry is REGISTRY
    before = value(scrape(first), "axess_session_created_total")
    second.session_created()
    assert value(scrape(first), "axess_session_created_total") == before + 1


def test_a_foreign_collector_with_an_axess_name_is_a_configuration_error() -> None:
    from prometheus_client import Counter

    registry = CollectorRegistry()
    Counter("axess_auth_attempt", "someone else's", registry=registry)
    with pytest.raises(ConfigurationError, match="already has axess_"):
        PrometheusMetrics(registry=registry)


def test_every_method_lands_in_its_series() -> None:
    m = PrometheusMetrics(registry=CollectorRegistry())
    m.auth_attempt(), m.auth_success(), m.auth_failure()
    m.factor_attempt(), m.factor_success(), m.factor_failure()
    m.account_locked("ip")
    m.session_created(), m.session_invalidated(), m.session_binding_mismatch()
    m.session_decrypted_with_previous_key(), m.session_size_exceeded()
    m.previous_key_used("csrf")
    m.rate_limit_allowed("login-ip"), m.rate_limit_rejected("login-ip")
    m.audit_dropped(7), m.audit_recovered(), m.audit_recovered(0)
    m.store_error("sessions")
    m.authz_decision("deny"), m.authz_error()
    m.audit_buffer_depth(42)
    text = scrape(m)
    for name, label in COUNTERS.items():
        labels = {
            "lever": {"lever": "ip"},
            "use": {"use": "csrf"},
            "policy": {"policy": "login-ip"},
            "substore": {"substore": "sessions"},
            "outcome": {"outcome": "deny"},
            None: {},
        }[label]
        expected = 7 if name == "audit_dropped" else 1
        assert value(text, f"axess_{name}_total", **labels) == expected, name
    assert value(text, "axess_audit_buffer_depth") == 42


def test_store_latency_is_a_histogram_per_substore_and_operation() -> None:
    m = PrometheusMetrics(registry=CollectorRegistry(), buckets=(0.001, 0.01))
    m.store_latency("sessions", "load_session", 0.0005)
    m.store_latency("sessions", "load_session", 0.001)  # on the bound: counted in le=0.001
    m.store_latency("sessions", "load_session", 0.5)
    m.store_latency("lockout", "lockout_reserve", 0.002)
    text = scrape(m)
    labels = {"substore": "sessions", "operation": "load_session"}
    bucket = "axess_store_latency_seconds_bucket"
    assert value(text, bucket, le="0.001", **labels) == 2
    assert value(text, bucket, le="0.01", **labels) == 2
    assert value(text, bucket, le="+Inf", **labels) == 3
    assert value(text, "axess_store_latency_seconds_count", **labels) == 3
    assert value(text, "axess_store_latency_seconds_sum", **labels) == pytest.approx(0.5015)
    assert (
        value(
            text,
            "axess_store_latency_seconds_count",
            substore="lockout",
            operation="lockout_reserve",
        )
        == 1
    )


def test_labels_stay_bounded_whatever_the_caller_passes() -> None:
    m = PrometheusMetrics(registry=CollectorRegistry())
    for i in range(MAX_LABEL_VALUES * 3):
        m.rate_limit_rejected(f"policy-{i}")
        m.store_latency("sessions", f"op-{i}", 0.001)
    text = scrape(m)
    rejected = families(text)["axess_rate_limit_rejected"].samples
    assert len(rejected) == MAX_LABEL_VALUES + 1
    assert value(text, "axess_rate_limit_rejected_total", policy="other") == MAX_LABEL_VALUES * 2
    counts = [
        s
        for s in families(text)["axess_store_latency_seconds"].samples
        if s.name.endswith("_count")
    ]
    assert len(counts) == MAX_LABEL_VALUES + 1
    assert value(
        text, "axess_store_latency_seconds_count", substore="other", operation="other"
    ) == (MAX_LABEL_VALUES * 2)


def test_bad_buckets_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="bucket"):
        PrometheusMetrics(registry=CollectorRegistry(), buckets=(float("inf"),))


def test_the_facade_endpoint_needs_an_exporting_metrics_object() -> None:
    auth = Axess(store=MemoryStore(), keys=Keyring.generate(), debug=True, metrics=NoopMetrics())
    with pytest.raises(ConfigurationError, match="PrometheusMetrics"):
        auth.metrics_endpoint


def test_without_prometheus_client_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"axess\[prometheus\]"):
        PrometheusMetrics(registry=None)


def test_importing_axess_needs_neither_library() -> None:
    code = (
        "import sys\n"
        "for name in ('prometheus_client', 'opentelemetry'):\n"
        "    sys.modules[name] = None\n"
        "import axess, axess.observability.prometheus, axess.observability.otel\n"
        "from axess.observability.otel import OTelMetrics\n"
        "try:\n"
        "    OTelMetrics()\n"
        "except axess.ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "axess[otel]" in out.stdout
