"""store_latency from the SQL and Valkey stores' operation wrappers, bound by
``Axess(metrics=...)``; the audit buffer depth while a sink is down. Read
back through PrometheusMetrics' exposition."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from test_audit_support import MemorySink, VirtualTime

from axess import Axess, Keyring, RateLimit, get_session
from axess.audit import AuditPipeline
from axess.clock import MockClock, SeededRandom
from axess.errors import StoreError
from axess.observability.prometheus import PrometheusMetrics
from axess.ratelimit import ValkeyBucketStore
from axess.stores.sql import SQLiteStore
from axess.stores.valkey import ValkeyStore


def latency_counts(metrics: PrometheusMetrics) -> dict[tuple[str, str], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.labels["substore"], s.labels["operation"]): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "axess_store_latency_seconds_count"
    }


async def login(request: Request) -> PlainTextResponse:
    get_session(request).authenticate("alice")
    return PlainTextResponse("ok")


async def post_login(auth: Axess) -> None:
    app = Starlette(routes=[Route("/login", login, methods=["POST"])])
    auth.install(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
        assert (await c.post("/login")).status_code == 200


async def test_sql_operations_report_their_latency(sqlite_store: SQLiteStore) -> None:
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    auth = Axess(
        store=sqlite_store,
        keys=Keyring.generate(),
        debug=True,
        metrics=metrics,
        cleanup_interval=None,
    )
    await post_login(auth)
    await sqlite_store.lockout_status(["user:alice"], None, 0.0)
    counts = latency_counts(metrics)
    assert counts[("sessions", "create_session")] == 1
    assert counts[("lockout", "lockout_status")] == 1  # its own substore, not sessions
    # Operations on the whole store belong to no substore.
    await sqlite_store.check_health()
    await sqlite_store.schema_version()
    counts = latency_counts(metrics)
    assert counts[("store", "health check")] == 1 and counts[("store", "schema_version")] == 1
    assert not any(op in ("health check", "schema_version") for sub, op in counts if sub != "store")
    # A failing operation is timed too.
    await sqlite_store.close()
    with pytest.raises(StoreError):
        await sqlite_store.load_session("nope", 0.0)
    assert latency_counts(metrics)[("sessions", "load_session")] == 1


async def test_valkey_commands_and_scripts_report_their_latency(
    valkey_store: ValkeyStore,
) -> None:
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    auth = Axess(
        store=valkey_store,
        keys=Keyring.generate(),
        debug=True,
        metrics=metrics,
        rate_limits=[RateLimit("5/minute", paths=["/login"], name="login-ip")],
        rate_limit_store=ValkeyBucketStore(valkey_store),
        cleanup_interval=None,
    )
    await auth.rate_limiter.open()
    await post_login(auth)
    await valkey_store.load_session("nope", 0.0)
    counts = latency_counts(metrics)
    assert counts[("sessions", "create")] == 1  # a Lua script
    assert counts[("sessions", "load")] == 1  # a plain command
    # The bucket store's script on this store (its SCRIPT LOAD at open counts too).
    assert counts[("ratelimit", "gcra")] == 2
    assert all(s in {"sessions", "ratelimit", "lockout"} for s, _ in counts)


async def test_a_store_without_axess_metrics_reports_nothing(sqlite_store: SQLiteStore) -> None:
    Axess(store=sqlite_store, keys=Keyring.generate(), debug=True, cleanup_interval=None)
    assert sqlite_store.metrics is None
    await sqlite_store.load_session("nope", 0.0)


async def test_the_audit_buffer_depth_follows_a_sink_outage() -> None:
    vt = VirtualTime(MockClock())
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    sink = MemorySink("siem", fail_first=2)
    pipeline = AuditPipeline(
        sinks=[sink],
        clock=vt.clock,
        random=SeededRandom(7),
        sleep=vt.sleep,
        flush_interval=0.0,
        metrics=metrics,
    )

    def depth() -> float:
        text = generate_latest(metrics.registry).decode()
        return next(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "axess_audit_buffer_depth"
        )

    await pipeline.start()
    for i in range(3):
        pipeline.emit(pipeline.event("authenticated", tenant="t1", user=f"u{i}"))
    await vt.settle()
    assert depth() == 3  # the first delivery failed: reported while retrying
    async with vt.autojump():
        await pipeline.flush()
    assert depth() == 0
    await pipeline.stop()
