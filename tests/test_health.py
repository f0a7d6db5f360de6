from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from axess import CompositeHealthCheck, HealthStatus, healthz_endpoint
from axess.observability.health import HealthState


class Fixed:
    def __init__(self, status: HealthStatus) -> None:
        self.status = status
        self.calls = 0

    async def check_health(self) -> HealthStatus:
        self.calls += 1
        return self.status


class Hangs:
    async def check_health(self) -> HealthStatus:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class Raises:
    async def check_health(self) -> HealthStatus:
        raise RuntimeError("secret-password-in-message")


async def test_all_healthy() -> None:
    c = (
        CompositeHealthCheck()
        .add("a", Fixed(HealthStatus.healthy()))
        .add("b", Fixed(HealthStatus.healthy()))
    )
    assert (await c.check_health()).state is HealthState.HEALTHY


async def test_non_critical_failure_degrades() -> None:
    c = CompositeHealthCheck()
    c.add("db", Fixed(HealthStatus.healthy()))
    c.add("siem", Fixed(HealthStatus.unhealthy("down")), critical=False)
    report = await c.report()
    assert report.status.state is HealthState.DEGRADED
    assert report.components["siem"].reason == "down"


async def test_critical_failure_is_unhealthy_and_timeouts_are_bounded() -> None:
    c = CompositeHealthCheck()
    c.add("db", Hangs(), timeout=0.05)
    c.add("boom", Raises(), critical=False)
    report = await c.report()
    assert report.status.state is HealthState.UNHEALTHY
    assert "no answer" in (report.components["db"].reason or "")
    assert "secret" not in (report.components["boom"].reason or "")


async def test_checks_run_concurrently() -> None:
    started: list[str] = []
    gate = asyncio.Event()

    class Waits:
        def __init__(self, name: str) -> None:
            self.name = name

        async def check_health(self) -> HealthStatus:
            started.append(self.name)
            if len(started) == 2:
                gate.set()
            await gate.wait()
            return HealthStatus.healthy()

    c = CompositeHealthCheck().add("a", Waits("a"), timeout=1).add("b", Waits("b"), timeout=1)
    assert (await c.check_health()).state is HealthState.HEALTHY  # would time out if sequential


async def test_duplicate_name_refused() -> None:
    c = CompositeHealthCheck().add("a", Fixed(HealthStatus.healthy()))
    try:
        c.add("a", Fixed(HealthStatus.healthy()))
    except ValueError:
        return
    raise AssertionError("duplicate accepted")


async def test_endpoint_status_codes_and_details() -> None:
    ok = Fixed(HealthStatus.healthy())
    bad = Fixed(HealthStatus.unhealthy("db: connection refused"))
    c = CompositeHealthCheck().add("store", ok).add("cache", bad, critical=False)
    app = Starlette(
        routes=[
            Route("/healthz", healthz_endpoint(c)),
            Route("/d", healthz_endpoint(c, details=True)),
        ]
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        r = await client.get("/healthz")
        assert r.status_code == 200
        assert r.json() == {
            "status": "degraded",
            "components": {"store": "healthy", "cache": "unhealthy"},
        }
        r = await client.get("/d")
        assert r.json()["components"]["cache"] == {
            "status": "unhealthy",
            "reason": "db: connection refused",
        }
        ok.status = HealthStatus.unhealthy("x")
        r = await client.get("/healthz")
        assert r.status_code == 503 and r.headers["retry-after"]


async def test_axess_healthz_wires_store() -> None:
    from helpers import client, make_app, make_auth

    auth = make_auth()
    async with client(make_app(auth)) as c:
        r = await c.get("/healthz")
    assert r.status_code == 200 and r.json()["components"] == {"store": "healthy"}


async def test_an_unreachable_rate_limit_store_degrades_the_report() -> None:
    """Every instance shares the rate-limit store: its outage must not take
    them all out of rotation (a 503), only say so (200, degraded)."""
    from axess import Axess, Keyring
    from axess.ratelimit import ValkeyBucketStore
    from axess.stores import MemoryStore

    buckets = ValkeyBucketStore("redis://127.0.0.1:1/0", allow_insecure=True)
    auth = Axess(
        store=MemoryStore(),
        keys=Keyring.generate(),
        debug=True,
        cleanup_interval=None,
        rate_limit_store=buckets,
    )
    assert "ratelimit" in auth.health.names
    app = Starlette(routes=[Route("/healthz", auth.healthz)])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://t"
    ) as client:
        r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {
        "status": "degraded",
        "components": {"store": "healthy", "ratelimit": "unhealthy"},
    }
    await buckets.close()
