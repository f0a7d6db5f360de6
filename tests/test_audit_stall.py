"""A sink whose write never returns (no error, no timeout): health reports it
failing after ``stall_after`` seconds, a WARNING says so once, and the depth
gauge follows the buffer (book: Audit, "Delivery")."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from test_audit_support import GateSink, HangingSink, MemorySink, RecordingMetrics, VirtualTime

from axess.audit import AuditPipeline, AuthEvent
from axess.clock import MockClock, SeededRandom
from axess.errors import ConfigurationError
from axess.observability.health import HealthState


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime(MockClock())


def build(vt: VirtualTime, sinks: list[Any], **kw: Any) -> AuditPipeline:
    kw.setdefault("flush_interval", 0.0)
    return AuditPipeline(sinks=sinks, clock=vt.clock, random=SeededRandom(7), sleep=vt.sleep, **kw)


def events(p: AuditPipeline, n: int) -> list[AuthEvent]:
    return [p.event("authenticated", tenant="t1", user=f"u{i}") for i in range(n)]


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf")])
def test_stall_after_is_validated(vt: VirtualTime, value: float) -> None:
    with pytest.raises(ConfigurationError, match="stall_after"):
        build(vt, [MemorySink("sql", regulatory=True)], stall_after=value)


async def test_a_hung_write_makes_the_sink_fail_its_health_check(
    vt: VirtualTime, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = RecordingMetrics()
    sql, siem = HangingSink("sql", regulatory=True), HangingSink("siem")
    p = build(vt, [sql, siem], batch_size=2, metrics=metrics, stall_after=30.0)
    await p.start()
    for e in events(p, 2):
        p.emit(e)
    await vt.settle()
    assert sql.calls == siem.calls == 1  # both writes in flight, neither returns
    for e in events(p, 5):
        p.emit(e)  # piling up behind them: no batch, no retry reports it
    vt.advance(29.0)
    await vt.settle()
    assert (await p.check_health()).ok  # a slow write is not a hung one yet
    assert metrics.depths[-1] == 7  # the health check reports the depth
    with caplog.at_level(logging.WARNING, "axess.audit"):
        vt.advance(1.0)
        await vt.settle()
        status = await p.check_health()
        assert status.state is HealthState.UNHEALTHY
        assert status.reason == "audit sink sql: write not returned after 30s (7 events waiting)"
        checks = p.health_checks()
        siem_status = await checks["siem"].check_health()
        assert siem_status.state is HealthState.DEGRADED
        assert p.sink_stats("sql").consecutive_failures == 0
        vt.advance(120.0)
        await vt.settle()
    assert (
        caplog.text.count("audit sink 'sql': a write of 2 event(s) has not returned after 30s") == 1
    )
    assert caplog.text.count("audit sink 'siem': a write of 2 event(s)") == 1
    assert "sql: write not returned after 150s" in str((await p.check_health()).reason)
    p.drain_timeout = 0.0
    await p.stop()


async def test_a_write_that_returns_in_time_is_never_reported(
    vt: VirtualTime, caplog: pytest.LogCaptureFixture
) -> None:
    sql = GateSink("sql", regulatory=True)
    p = build(vt, [sql], batch_size=2, stall_after=30.0)
    await p.start()
    for e in events(p, 2):
        p.emit(e)
    await vt.settle()
    vt.advance(20.0)
    with caplog.at_level(logging.WARNING, "axess.audit"):
        sql.gate.set()
        await vt.settle()
        vt.advance(60.0)  # the next write's watchdog only: none is in flight
        await vt.settle()
    assert len(sql.ids) == 2 and "has not returned" not in caplog.text
    assert (await p.check_health()).state is HealthState.HEALTHY
    await p.stop()
