"""AuditPipeline: delivery, retries, conservation, overflow policies, the
authentication gate, drain on stop, recovery log and replay."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from test_audit_support import (
    FlakyStoreSink,
    GateSink,
    HangingCloseSink,
    HangingRetention,
    HangingSink,
    MemorySink,
    RecordingMetrics,
    StubbornSink,
    VirtualTime,
)

from axess.audit import (
    AuditPipeline,
    AuditQuery,
    AuditUnavailable,
    AuthEvent,
    Block,
    DropOldest,
    ShutdownAuthn,
    StoreSink,
)
from axess.audit.recovery import RecoveryLog, append_lines, encode_entry
from axess.clock import MockClock, SeededRandom
from axess.errors import ConfigurationError
from axess.observability.health import HealthState
from axess.stores import MemoryStore
from axess.stores.sql import SQLStore

PG = pytest.mark.backend("postgres")
MY = pytest.mark.backend("mysql")


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime(MockClock())


def build(vt: VirtualTime, sinks: list[Any], **kw: Any) -> AuditPipeline:
    kw.setdefault("flush_interval", 0.0)
    return AuditPipeline(sinks=sinks, clock=vt.clock, random=SeededRandom(7), sleep=vt.sleep, **kw)


def events(p: AuditPipeline, n: int, *, start: int = 0, tenant: str = "t1") -> list[AuthEvent]:
    return [
        p.event("authenticated", tenant=tenant, user=f"u{i}", extras={"n": i})
        for i in range(start, start + n)
    ]


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The lines the next start replays from the recovery log ``path``, in
    order: its replay segments, then the file itself."""
    files = [*RecoveryLog(path).segments(), *([path] if path.exists() else [])]
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]


# -- configuration ----------------------------------------------------------------------
def test_configuration_is_validated(vt: VirtualTime) -> None:
    with pytest.raises(ConfigurationError, match="at least one sink"):
        build(vt, [])
    with pytest.raises(ConfigurationError, match="unique"):
        build(vt, [MemorySink("a"), MemorySink("a")])
    with pytest.raises(ConfigurationError, match="batch_size"):
        build(vt, [MemorySink()], max_buffer=10, batch_size=11)
    with pytest.raises(ConfigurationError, match="on_full"):
        build(vt, [MemorySink()], on_full="drop")
    with pytest.raises(ConfigurationError, match="resume_at"):
        ShutdownAuthn(resume_at=1.0)
    with pytest.raises(ConfigurationError, match="timeout"):
        Block(timeout=-1)


def test_weakenings_are_logged(vt: VirtualTime, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "axess.audit"):
        build(vt, [MemorySink("sql", regulatory=True)], on_full=DropOldest())
    text = caplog.text
    assert "regulatory audit sink 'sql' drops events" in text
    assert "without recovery_log" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "axess.audit"):
        build(vt, [MemorySink("siem")], recovery_log="x.jsonl")
    assert "without a regulatory sink" in caplog.text


# -- delivery -----------------------------------------------------------------------------
async def test_batches_per_sink_in_emission_order(vt: VirtualTime) -> None:
    a, b = MemorySink("a", regulatory=True), MemorySink("b")
    p = build(vt, [a, b], batch_size=4, flush_interval=1.0)
    await p.start()
    evs = events(p, 10)
    for e in evs[:3]:
        p.emit(e)
    await vt.settle()
    assert a.batches == []  # lingering: fewer than batch_size, interval not over
    vt.advance(1.0)
    await vt.settle()
    assert [len(x) for x in a.batches] == [3]
    for e in evs[3:]:
        p.emit(e)
    await vt.settle()
    assert [len(x) for x in a.batches] == [3, 4]  # a full batch goes at once
    async with vt.autojump():
        await p.flush()
    assert a.ids == b.ids == [e.id for e in evs]
    await p.stop()
    assert a.closed and b.closed


async def test_retries_with_backoff_and_reports_health(
    vt: VirtualTime, caplog: pytest.LogCaptureFixture
) -> None:
    sql = MemorySink("sql", regulatory=True, fail_first=12)
    siem = MemorySink("siem", fail_first=3)
    p = build(vt, [sql, siem], retry_initial=0.1, retry_max=2.0)
    await p.start()
    assert (await p.check_health()).state is HealthState.HEALTHY
    with caplog.at_level(logging.DEBUG, "axess.audit"):
        p.emit(events(p, 1)[0])
        await vt.settle()
        checks = p.health_checks()
        assert (await checks["sql"].check_health()).state is HealthState.UNHEALTHY
        assert (await checks["siem"].check_health()).state is HealthState.DEGRADED
        status = await p.check_health()
        assert status.state is HealthState.UNHEALTHY and "ConnectionError" in (status.reason or "")
        async with vt.autojump():
            await p.flush()
    assert (await p.check_health()).state is HealthState.HEALTHY
    assert (sql.calls, siem.calls) == (13, 4)
    backoffs = [s for s in vt.requested if s > 0]
    assert max(backoffs) <= 2.0
    assert 0.05 <= min(backoffs) <= 0.1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("audit sink 'sql' failed (ConnectionError)" in m for m in warnings) == 1
    assert "audit sink 'sql' recovered after 12 failed attempt(s)" in caplog.text
    assert p.sink_stats("sql").failures == 12 and p.sink_stats("sql").delivered == 1
    await p.stop()


async def test_metrics_and_stats(vt: VirtualTime) -> None:
    metrics = RecordingMetrics()
    sink = MemorySink("sql", regulatory=True)
    p = build(vt, [sink], metrics=metrics, batch_size=5, max_buffer=50)
    await p.start()
    for e in events(p, 12):
        p.emit(e)
    async with vt.autojump():
        await p.flush()
    assert metrics.depths[-1] == 0 and max(metrics.depths) <= 12
    (st,) = p.stats()
    assert (st.accepted, st.delivered, st.dropped, st.recovered, st.depth) == (12, 12, 0, 0, 0)
    assert p.emitted == 12
    await p.stop()


# -- conservation: a sink that fails for a while, then recovers -------------------------------
@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=PG),
        pytest.param("mysql", id="mysql", marks=MY),
    ]
)
def audit_store(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return MemoryStore()
    store: SQLStore = request.getfixturevalue(f"{request.param}_store")
    return store


async def test_every_event_lands_exactly_once_in_the_sql_table(
    vt: VirtualTime, audit_store: Any
) -> None:
    sink = FlakyStoreSink(audit_store, down=5, lost_acks=3)
    metrics = RecordingMetrics()
    p = build(vt, [sink], metrics=metrics, batch_size=50, retry_initial=0.01)
    await p.start()
    emitted: list[AuthEvent] = []
    async with vt.autojump():
        for burst in range(20):
            batch = events(p, 100, start=burst * 100)
            for e in batch:
                p.emit(e)
            emitted.extend(batch)
            await vt.settle(5)
        await p.flush()
    await p.stop()
    stored: list[AuthEvent] = []
    cursor = None
    while True:
        page = await audit_store.query_audit_events(
            "t1", AuditQuery(order="asc", limit=1000, cursor=cursor)
        )
        stored.extend(page)
        if len(page) < 1000:
            break
        cursor = (page[-1].time, page[-1].id)
    ids = [e.id for e in stored]
    assert len(ids) == len(set(ids)) == 2000  # no duplicates
    assert set(ids) == {e.id for e in emitted}  # no gaps
    assert {e.id: e for e in stored} == {e.id: e for e in emitted}  # intact
    st = p.sink_stats("sql")
    assert st.failures == 8 and st.delivered == 2000 and st.dropped == st.recovered == 0
    assert p.emitted == st.delivered + st.recovered
    assert metrics.counts == {}


# -- drain on stop, recovery log, replay --------------------------------------------------------
async def test_stop_with_a_hanging_sink_is_bounded_and_saves_exactly_the_leftovers(
    vt: VirtualTime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "recovery.jsonl"
    sql, siem = MemorySink("sql", regulatory=True), HangingSink("siem")
    metrics = RecordingMetrics()
    p = build(vt, [sql, siem], batch_size=10, drain_timeout=10.0, recovery_log=log, metrics=metrics)
    await p.start()
    first = events(p, 50)
    for e in first:
        p.emit(e)
    await vt.settle()
    assert sql.ids == [e.id for e in first]  # the healthy sink is not held back
    started = time.monotonic()
    stopping = asyncio.create_task(p.stop())
    await vt.settle()
    assert not stopping.done()
    vt.advance(9.9)
    await vt.settle()
    assert not stopping.done()  # still within drain_timeout
    with caplog.at_level(logging.WARNING, "axess.audit"):
        vt.advance(0.1)
        await asyncio.wait_for(stopping, 2)
    assert time.monotonic() - started < 2  # virtual seconds, not wall-clock ones
    assert siem.cancelled == 1
    lines = log_lines(log)
    assert [ln["event"]["id"] for ln in lines] == [e.id for e in first]
    assert all(ln["sinks"] == ["siem"] for ln in lines)
    assert [AuthEvent.from_dict(ln["event"]) for ln in lines] == first
    assert "audit drain timed out after 10s: 50 event(s) written to the recovery log" in caplog.text
    assert metrics.counts["recovered"] == 50
    st = p.sink_stats("siem")
    assert (st.accepted, st.delivered, st.recovered, st.depth) == (50, 0, 50, 0)
    assert p.sink_stats("sql").delivered == 50

    # A new pipeline replays the leftovers first, to the sinks that missed them.
    sql2, siem2 = MemorySink("sql", regulatory=True), MemorySink("siem")
    p2 = build(vt, [sql2, siem2], batch_size=10, recovery_log=log)
    fresh = events(p2, 5, start=100)
    for e in fresh:
        p2.emit(e)  # before start: queued behind the replay
    await p2.start()
    assert p2.replayed == 50
    async with vt.autojump():
        await p2.flush()
    assert siem2.ids == [e.id for e in first + fresh]
    assert sql2.ids == [e.id for e in fresh]
    assert not log.exists() and not log.with_name("recovery.jsonl.replaying").exists()
    await p2.stop()
    emitted = p.emitted + p2.emitted
    delivered = {e.id for e in sql.events + siem.events + sql2.events + siem2.events}
    assert emitted == 55 and delivered == {e.id for e in first + fresh}


async def test_stop_does_not_wait_forever_for_a_hanging_close_or_retention(
    vt: VirtualTime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sql = MemorySink("sql", regulatory=True)
    hangs, stubborn = HangingCloseSink("siem"), HangingCloseSink("otel", stubborn=True)
    retention = HangingRetention()
    log = tmp_path / "r.jsonl"
    p = build(vt, [sql, hangs, stubborn], recovery_log=log, retention=retention)
    await p.start()
    evs = events(p, 3)
    for e in evs:
        p.emit(e)
    await vt.settle()
    stopping = asyncio.create_task(p.stop())
    await vt.settle()
    assert not stopping.done() and retention.stop_cancelled == 0
    with caplog.at_level(logging.WARNING, "axess.audit"):
        vt.advance(2.0)  # the retention's grace: the drain goes on
        await vt.settle()
        assert retention.stop_cancelled == 1 and not stopping.done()
        vt.advance(2.0)  # the sinks' grace, together
        await asyncio.wait_for(stopping, 2)
    assert sql.closed and not hangs.closed and not stubborn.closed
    assert hangs.close_cancelled == 1 and stubborn.close_cancelled == 1
    assert "audit retention: close did not finish within 2s" in caplog.text
    assert "audit sink 'siem': close did not finish within 2s" in caplog.text
    assert "audit sink 'otel': close did not finish within 2s" in caplog.text
    assert sql.ids == hangs.ids == stubborn.ids == [e.id for e in evs]
    assert not log.exists()
    stubborn.release.set()  # let the abandoned close end with the test
    await vt.settle()


async def test_a_fast_drain_leaves_no_recovery_log(vt: VirtualTime, tmp_path: Path) -> None:
    log = tmp_path / "r.jsonl"
    sink = MemorySink("sql", regulatory=True)
    p = build(vt, [sink], batch_size=7, recovery_log=log, flush_interval=5.0)
    await p.start()
    for e in events(p, 30):
        p.emit(e)
    await p.stop()  # no linger while stopping: everything goes at once
    assert len(sink.ids) == 30 and not log.exists()
    assert p.sink_stats("sql").recovered == 0


async def test_emit_after_stop_goes_to_the_recovery_log(vt: VirtualTime, tmp_path: Path) -> None:
    log = tmp_path / "r.jsonl"
    p = build(vt, [MemorySink("sql", regulatory=True), MemorySink("siem")], recovery_log=log)
    await p.start()
    await p.stop()
    late = events(p, 1)[0]
    p.emit(late)
    assert [(ln["event"]["id"], ln["sinks"]) for ln in log_lines(log)] == [
        (late.id, ["sql", "siem"])
    ]
    assert not p.accepting_authn
    with pytest.raises(AuditUnavailable):
        p.authn_gate()


async def test_stop_without_start_saves_what_was_emitted(vt: VirtualTime, tmp_path: Path) -> None:
    log = tmp_path / "r.jsonl"
    p = build(vt, [MemorySink("sql", regulatory=True)], recovery_log=log)
    evs = events(p, 3)
    for e in evs:
        p.emit(e)
    await p.stop()
    assert [ln["event"]["id"] for ln in log_lines(log)] == [e.id for e in evs]


async def test_torn_last_line_is_skipped_with_a_warning(
    vt: VirtualTime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "r.jsonl"
    p0 = build(vt, [MemorySink("sql", regulatory=True)])
    good = events(p0, 3)
    torn = encode_entry(events(p0, 1, start=9)[0], ["sql"])[:40]
    log.write_text("".join(encode_entry(e, ["sql"]) + "\n" for e in good) + torn)
    sink = MemorySink("sql", regulatory=True)
    p = build(vt, [sink], recovery_log=log)
    with caplog.at_level(logging.WARNING, "axess.audit"):
        await p.start()
    assert "skipped 1 line(s) that do not parse (line 4), kept in" in caplog.text
    assert (tmp_path / "r.jsonl.rejected").read_text() == torn + "\n"
    async with vt.autojump():
        await p.flush()
    assert sink.ids == [e.id for e in good]
    assert not log.with_name("r.jsonl.replaying").exists()
    await p.stop()


def test_appending_after_a_torn_line_keeps_lines_apart(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"sinks":["sql"],"ev')  # a crash mid-write
    append_lines(path, ['{"a":1}', '{"b":2}'])
    assert path.read_text() == '{"sinks":["sql"],"ev\n{"a":1}\n{"b":2}\n'
    fresh = tmp_path / "new.jsonl"
    append_lines(fresh, ["{}"])
    assert fresh.stat().st_mode & 0o777 == 0o600  # audit data: owner only


async def test_a_replay_interrupted_by_a_crash_is_replayed_again(
    vt: VirtualTime, tmp_path: Path
) -> None:
    log = tmp_path / "r.jsonl"
    p0 = build(vt, [MemorySink("sql", regulatory=True)])
    a, b, c = events(p0, 3)
    # The crash left a .replaying file (a, b) and a new log (b again, c).
    log.with_name("r.jsonl.replaying").write_text(
        encode_entry(a, ["sql"]) + "\n" + encode_entry(b, ["sql"]) + "\n"
    )
    log.write_text(encode_entry(b, ["siem"]) + "\n" + encode_entry(c, ["sql"]) + "\n")
    sql, siem = MemorySink("sql", regulatory=True), MemorySink("siem")
    p = build(vt, [sql, siem], recovery_log=log)
    await p.start()
    async with vt.autojump():
        await p.flush()
    assert sql.ids == [a.id, b.id, c.id]  # each once, duplicates merged
    assert siem.ids == [b.id]
    assert not log.exists() and not log.with_name("r.jsonl.replaying").exists()
    await p.stop()


async def test_a_requeue_cut_short_by_a_crash_is_replayed_too(
    vt: VirtualTime, tmp_path: Path
) -> None:
    log = tmp_path / "r.jsonl"
    a, b, c = events(build(vt, [MemorySink("x", regulatory=True)]), 3)
    # The crash came between writing the copy aside (the replay's rest a,
    # the leftover b, then what the log held, c) and renaming it.
    log.with_name("r.jsonl.replaying").write_text(encode_entry(a, ["sql"]) + "\n")
    log.with_name("r.jsonl.requeue").write_text(
        "".join(encode_entry(e, ["sql"]) + "\n" for e in (a, b, c))
    )
    log.write_text(encode_entry(c, ["sql"]) + "\n")
    sql = MemorySink("sql", regulatory=True)
    p = build(vt, [sql], recovery_log=log)
    await p.start()
    async with vt.autojump():
        await p.flush()
    # At least once (a and c come twice), in order, and b is not lost.
    assert list(dict.fromkeys(sql.ids)) == [a.id, b.id, c.id]
    assert not log.with_name("r.jsonl.requeue").exists()
    assert not log.with_name("r.jsonl.replaying").exists()
    await p.stop()


async def test_unknown_sink_names_in_the_log_go_to_the_regulatory_sinks(
    vt: VirtualTime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "r.jsonl"
    ev = events(build(vt, [MemorySink("x", regulatory=True)]), 1)[0]
    log.write_text(encode_entry(ev, ["old_siem"]) + "\n")
    sql, siem = MemorySink("sql", regulatory=True), MemorySink("siem")
    p = build(vt, [sql, siem], recovery_log=log)
    with caplog.at_level(logging.WARNING, "axess.audit"):
        await p.start()
    async with vt.autojump():
        await p.flush()
    assert sql.ids == [ev.id] and siem.ids == []
    assert "unknown sink(s) ['old_siem']" in caplog.text
    await p.stop()


async def test_stop_during_replay_keeps_the_undelivered_replayed_events(
    vt: VirtualTime, tmp_path: Path
) -> None:
    log = tmp_path / "r.jsonl"
    p0 = build(vt, [MemorySink("sql", regulatory=True)])
    old = events(p0, 4)
    log.write_text("".join(encode_entry(e, ["sql"]) + "\n" for e in old))
    hang = HangingSink("sql", regulatory=True)
    p = build(vt, [hang], recovery_log=log, drain_timeout=1.0)
    await p.start()
    assert not log.exists()
    stopping = asyncio.create_task(p.stop())
    await vt.settle()
    vt.advance(1.0)
    await stopping
    assert [ln["event"]["id"] for ln in log_lines(log)] == [e.id for e in old]
    assert not log.with_name("r.jsonl.replaying").exists()


def _write_log(path: Path, evs: list[AuthEvent], sinks: list[str]) -> None:
    path.write_text("".join(encode_entry(e, sinks) + "\n" for e in evs))


def _logged(vt: VirtualTime, path: Path, n: int, sinks: list[str]) -> list[AuthEvent]:
    """``n`` events left in the recovery log ``path`` for ``sinks`` (by an
    earlier run), oldest first."""
    old = events(build(vt, [MemorySink("x", regulatory=True)]), n)
    _write_log(path, old, sinks)
    return old


async def test_a_second_pipeline_on_a_recovery_log_in_use_is_refused(
    vt: VirtualTime, tmp_path: Path
) -> None:
    log = tmp_path / "r.jsonl"
    old = _logged(vt, log, 4, ["sql"])
    first = build(vt, [HangingSink("sql", regulatory=True)], recovery_log=log, drain_timeout=1.0)
    await first.start()
    sql = MemorySink("sql", regulatory=True)
    second = build(vt, [sql], recovery_log=log)
    with pytest.raises(ConfigurationError, match="in use by another running audit pipeline"):
        await second.start()
    # Refused before touching the files: the first one's replay is intact.
    assert log.with_name("r.jsonl.replaying").exists() and second.replayed == 0
    stopping = asyncio.create_task(first.stop())
    await vt.settle()
    vt.advance(1.0)
    await asyncio.wait_for(stopping, 2)
    await second.start()  # the lock went with the first one's stop()
    async with vt.autojump():
        await second.flush()
    assert sql.ids == [e.id for e in old]
    await second.stop()


async def test_replay_keeps_memory_bounded_order_and_every_event(
    vt: VirtualTime, tmp_path: Path
) -> None:
    log = tmp_path / "r.jsonl"
    old = _logged(vt, log, 100, ["sql"])
    metrics = RecordingMetrics()
    sql = GateSink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=10, batch_size=2, recovery_log=log, metrics=metrics)
    await p.start()
    assert p.replayed == 100
    assert p.sink_stats("sql").depth <= 5  # half of max_buffer, the rest stays on disk
    assert p.accepting_authn
    fresh = events(p, 3, start=500)
    for e in fresh:
        p.emit(e)
    sql.gate.set()
    async with vt.autojump():
        await p.flush()
    assert sql.ids == [e.id for e in old + fresh]  # in order, each once
    assert max(metrics.depths) <= p.hard_limit
    assert not log.exists() and not log.with_name("r.jsonl.replaying").exists()
    await p.stop()


async def test_only_new_events_close_the_gate_during_a_replay(
    vt: VirtualTime, tmp_path: Path
) -> None:
    log = tmp_path / "r.jsonl"
    old = _logged(vt, log, 20, ["sql"])
    sql = GateSink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=10, batch_size=4, recovery_log=log)
    fresh = events(p, 12, start=500)
    for e in fresh[:8]:
        p.emit(e)  # before start: 8 of 10, logins still accepted
    await p.start()
    # A chunk of the file goes ahead of the new events, but it is on disk
    # already: 8 new events of 10, logins still accepted.
    assert p.sink_stats("sql").depth == 13
    assert p.accepting_authn
    for e in fresh[8:]:
        p.emit(e)  # ten new events: full
    assert not p.accepting_authn
    assert (await p.check_health()).state is HealthState.UNHEALTHY
    sql.gate.set()
    async with vt.autojump():
        while not p.accepting_authn:
            await vt.settle(1)
        await p.flush()
    assert sql.ids == [e.id for e in old + fresh]
    await p.stop()


async def test_new_events_queued_behind_a_long_replay_do_not_hold_logins_back(
    vt: VirtualTime, tmp_path: Path
) -> None:
    log = tmp_path / "r.jsonl"
    old = _logged(vt, log, 400, ["sql"])
    sql = GateSink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=10, batch_size=2, recovery_log=log)
    await p.start()
    fresh = events(p, 6, start=1000)
    for e in fresh:  # a short burst while the sink is slow: 6 new events of 10
        p.emit(e)
    gate: list[bool] = []
    real_write = sql.write

    async def write(batch: Any) -> None:
        gate.append(p.accepting_authn)
        await real_write(batch)

    sql.write = write  # type: ignore[method-assign]
    sql.gate.set()
    async with vt.autojump():
        await p.flush()
    # Each refill queues another chunk of the file ahead of the 6 new events:
    # counted, they kept the gate closed until the file ended.
    assert len(gate) == 203 and all(gate)
    assert sql.ids == [e.id for e in old + fresh]
    await p.stop()


async def test_the_replay_alone_never_closes_the_gate(vt: VirtualTime, tmp_path: Path) -> None:
    log = tmp_path / "r.jsonl"
    old = _logged(vt, log, 200, ["sql"])
    sql = GateSink("sql", regulatory=True)
    # batch_size == max_buffer: the first chunk is a whole batch, 100 of 100.
    p = build(vt, [sql], max_buffer=100, batch_size=100, recovery_log=log)
    await p.start()
    assert p.sink_stats("sql").depth == 100
    assert p.accepting_authn
    assert (await p.check_health()).ok
    sql.gate.set()
    async with vt.autojump():
        await p.flush()
    assert sql.ids == [e.id for e in old]
    await p.stop()


async def test_flush_waits_for_the_rest_of_the_replayed_file(
    vt: VirtualTime, tmp_path: Path
) -> None:
    log = tmp_path / "r.jsonl"
    old = _logged(vt, log, 100, ["sql"])
    sql = MemorySink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=4, batch_size=2, recovery_log=log)
    assert p.recovery is not None
    real_read = p.recovery.read
    reads = 0
    inside, disk = threading.Event(), threading.Event()

    def slow_read(*args: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads > 1:  # the first chunk (at start) at once, the next ones slowly
            inside.set()
            disk.wait(5)
        return real_read(*args)

    p.recovery.read = slow_read  # type: ignore[method-assign]
    await p.start()
    assert await asyncio.to_thread(inside.wait, 5)
    # The worker is reading its next chunk: its buffer is empty meanwhile.
    assert p.sink_stats("sql").depth == 0 and len(sql.ids) == 2
    flushing = asyncio.ensure_future(p.flush())
    await vt.settle()
    assert not flushing.done()
    disk.set()
    async with vt.autojump():
        await asyncio.wait_for(flushing, 5)
    assert sql.ids == [e.id for e in old]
    assert not log.with_name("r.jsonl.replaying").exists()
    await p.stop()


async def test_stop_during_a_bounded_replay_requeues_exactly_what_each_sink_lacks(
    vt: VirtualTime, tmp_path: Path
) -> None:
    log = tmp_path / "r.jsonl"
    old = _logged(vt, log, 30, ["sql", "siem"])
    sql, siem = MemorySink("sql", regulatory=True), HangingSink("siem")
    p = build(vt, [sql, siem], max_buffer=10, batch_size=2, recovery_log=log, drain_timeout=1.0)
    await p.start()
    fresh = events(p, 4, start=500)
    for e in fresh:
        p.emit(e)
    # The healthy sink reads the whole file (chunks read in a thread) while
    # the hanging one holds back only itself.
    await asyncio.wait_for(sql.has(len(old + fresh)), 5)
    assert sql.ids == [e.id for e in old + fresh]
    assert p.sink_stats("siem").depth <= 10
    stopping = asyncio.create_task(p.stop())
    await vt.settle()
    vt.advance(1.0)
    await asyncio.wait_for(stopping, 2)
    lines = log_lines(log)
    assert [ln["event"]["id"] for ln in lines] == [e.id for e in old + fresh]
    assert all(ln["sinks"] == ["siem"] for ln in lines)
    assert not log.with_name("r.jsonl.replaying").exists()
    st = p.sink_stats("siem")
    assert st.depth == 0 and st.delivered == 0
    # The next start delivers each event once more, to the sink that missed it.
    sql2, siem2 = MemorySink("sql", regulatory=True), MemorySink("siem")
    p2 = build(vt, [sql2, siem2], max_buffer=10, batch_size=2, recovery_log=log)
    await p2.start()
    async with vt.autojump():
        await p2.flush()
    assert siem2.ids == [e.id for e in old + fresh] and sql2.ids == []
    assert not log.exists() and not log.with_name("r.jsonl.replaying").exists()
    await p2.stop()


async def test_a_crash_during_a_bounded_replay_loses_nothing(
    vt: VirtualTime, tmp_path: Path
) -> None:
    log = tmp_path / "r.jsonl"
    old = _logged(vt, log, 30, ["sql"])
    sql = GateSink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=10, batch_size=2, recovery_log=log)
    await p.start()
    sql.gate.set()
    async with vt.autojump():
        while len(sql.ids) < 10:
            await vt.settle(1)
    sql.gate.clear()
    await vt.settle()
    for st in p._sinks:  # the process dies: no stop()
        assert st.task is not None
        st.task.cancel()
    await vt.settle()
    assert p.recovery is not None
    p.recovery.release()  # a dead process's descriptors, and so its lock, are gone
    assert log.with_name("r.jsonl.replaying").exists()
    sql2 = MemorySink("sql", regulatory=True)
    p2 = build(vt, [sql2], max_buffer=10, batch_size=2, recovery_log=log)
    await p2.start()
    async with vt.autojump():
        await p2.flush()
    assert sql2.ids == [e.id for e in old]  # replayed whole again: at least once
    await p2.stop()


# -- overflow policies -----------------------------------------------------------------------------
async def test_drop_oldest_drops_exactly_the_oldest_buffered_events(
    vt: VirtualTime, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = RecordingMetrics()
    siem = GateSink("siem")
    p = build(vt, [siem], max_buffer=10, batch_size=4, metrics=metrics)
    await p.start()
    evs = events(p, 15)
    for e in evs[:4]:
        p.emit(e)
    await vt.settle()
    assert siem.waiting == 1  # e0..e3 in flight
    with caplog.at_level(logging.WARNING, "axess.audit"):
        for e in evs[4:]:
            p.emit(e)
    # Capacity 10 = 4 in flight + 6 buffered: e4..e8 were pushed out by e10..e14.
    st = p.sink_stats("siem")
    assert (st.accepted, st.dropped, st.depth) == (15, 5, 10)
    assert metrics.counts["dropped"] == 5
    assert caplog.text.count("dropping the oldest (DropOldest)") == 1
    siem.gate.set()
    async with vt.autojump():
        await p.flush()
    assert siem.ids == [e.id for e in evs[:4] + evs[9:]]
    assert (await p.check_health()).state is HealthState.HEALTHY
    await p.stop()


async def test_drop_oldest_during_a_replay_keeps_the_file_events_and_their_order(
    vt: VirtualTime, tmp_path: Path
) -> None:
    log = tmp_path / "r.jsonl"
    old = _logged(vt, log, 30, ["siem"])
    siem = GateSink("siem")
    p = build(vt, [siem], max_buffer=6, batch_size=3, recovery_log=log)
    await p.start()
    assert p.sink_stats("siem").depth == 3  # the first chunk of the file
    fresh = events(p, 8, start=500)
    for e in fresh:  # 6 new events fit; the 7th and 8th push out the oldest new ones
        p.emit(e)
    st = p.sink_stats("siem")
    assert (st.depth, st.dropped) == (9, 2)
    siem.gate.set()
    async with vt.autojump():
        await p.flush()
    # Every file event, in order, before any new one.
    assert siem.ids == [e.id for e in old + fresh[2:]]
    assert not log.with_name("r.jsonl.replaying").exists()
    await p.stop()


async def test_drop_oldest_with_everything_in_flight_drops_the_new_event(
    vt: VirtualTime,
) -> None:
    siem = GateSink("siem")
    p = build(vt, [siem], max_buffer=2, batch_size=2)
    await p.start()
    evs = events(p, 3)
    p.emit(evs[0])
    p.emit(evs[1])
    await vt.settle()
    p.emit(evs[2])
    assert p.sink_stats("siem").dropped == 1
    siem.gate.set()
    async with vt.autojump():
        await p.flush()
    assert siem.ids == [evs[0].id, evs[1].id]
    await p.stop()


async def test_block_waits_for_room_then_times_out(vt: VirtualTime) -> None:
    sql = GateSink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=4, batch_size=2, on_full=Block(timeout=2.0))
    await p.start()
    evs = events(p, 8)
    for e in evs[:4]:
        await p.emit_wait(e)  # room: returns at once
    await vt.settle()
    assert p.sink_stats("sql").depth == 4 and sql.waiting == 1
    waiting = asyncio.create_task(p.emit_wait(evs[4]))
    await vt.settle()
    assert not waiting.done()
    sql.gate.set()  # the sink takes the first batch: room for e4
    await asyncio.wait_for(waiting, 1)
    async with vt.autojump():
        await p.flush()
    sql.gate.clear()
    for e in evs[5:7]:
        await p.emit_wait(e)
    await vt.settle()
    p.emit(evs[7])  # sync emit cannot wait: kept beyond max_buffer, never dropped
    extra = p.event("logout", tenant="t1")
    for e in (p.event("logout", tenant="t1"), p.event("logout", tenant="t1")):
        p.emit(e)
    assert p.sink_stats("sql").dropped == 0
    timing_out = asyncio.create_task(p.emit_wait(extra))
    await vt.settle()
    vt.advance(1.9)
    await vt.settle()
    assert not timing_out.done()
    vt.advance(0.1)
    with pytest.raises(AuditUnavailable):
        await asyncio.wait_for(timing_out, 1)
    assert p.refused == 1
    sql.gate.set()
    async with vt.autojump():
        await p.flush()
    assert extra.id not in sql.ids  # refused: accepted by no sink
    assert len(sql.ids) == 10 and p.sink_stats("sql").dropped == 0
    await p.stop()


def _gate_app(p: AuditPipeline) -> Starlette:
    async def login(request: Request) -> Response:
        try:
            p.authn_gate()
        except AuditUnavailable as exc:
            return exc.response()
        p.record("login_attempt", tenant="t1", user="alice")
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/login", login, methods=["POST"])])


async def test_shutdown_authn_refuses_logins_while_full_and_resumes_after_drain(
    vt: VirtualTime, caplog: pytest.LogCaptureFixture
) -> None:
    sql = GateSink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=10, batch_size=2, on_full=ShutdownAuthn())
    app = _gate_app(p)
    await p.start()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://t"
    ) as client:
        with caplog.at_level(logging.WARNING, "axess.audit"):
            for _ in range(9):
                assert (await client.post("/login")).status_code == 200
            assert p.accepting_authn
            assert (await client.post("/login")).status_code == 200  # the 10th fills it
            assert not p.accepting_authn
            assert "refusing new logins with 503 until it drains (ShutdownAuthn)" in caplog.text
            refused = await client.post("/login")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "5"
            assert refused.json() == {
                "error": "service_unavailable",
                "detail": "audit trail unavailable",
                "retry_after": 5,
            }
            assert (await client.post("/login")).status_code == 503
            with pytest.raises(AuditUnavailable):
                p.authn_gate()
        assert caplog.text.count("login refused with 503") == 1  # rate limited
        assert p.refused == 3
        status = await p.check_health()
        assert status.state is HealthState.UNHEALTHY and "logins paused" in (status.reason or "")
        # Events that are not logins are still kept, never dropped.
        for _ in range(3):
            p.record("session_expired", tenant="t1")
        assert p.sink_stats("sql").depth == 13 and p.sink_stats("sql").dropped == 0
        # Drain until the buffer is down to half (5): logins resume.
        with caplog.at_level(logging.WARNING, "axess.audit"):
            sql.gate.set()
            async with vt.autojump():
                while not p.accepting_authn:
                    await vt.settle(1)
        assert p.sink_stats("sql").depth <= 5
        assert "drained to" in caplog.text and "logins resume" in caplog.text
        assert (await client.post("/login")).status_code == 200
    async with vt.autojump():
        await p.flush()
    assert len(sql.ids) == 14 and p.emitted == 14
    await p.stop()


async def test_shutdown_authn_resume_threshold_is_configurable(vt: VirtualTime) -> None:
    sql = GateSink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=10, batch_size=1, on_full=ShutdownAuthn(resume_at=0.0))
    await p.start()
    for e in events(p, 10):
        p.emit(e)
    assert not p.accepting_authn
    sql.gate.set()
    seen_depths: list[int] = []
    async with vt.autojump():
        while not p.accepting_authn:
            seen_depths.append(p.sink_stats("sql").depth)
            await vt.settle(1)
    assert p.sink_stats("sql").depth == 0 and min(seen_depths) >= 1
    await p.stop()


async def test_over_the_hard_limit_events_go_to_the_recovery_log(
    vt: VirtualTime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "r.jsonl"
    metrics = RecordingMetrics()
    sql = GateSink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=5, batch_size=5, recovery_log=log, metrics=metrics)
    assert p.hard_limit == 10
    await p.start()
    evs = events(p, 15)
    with caplog.at_level(logging.WARNING, "axess.audit"):
        for e in evs:
            p.emit(e)
    st = p.sink_stats("sql")
    assert (st.depth, st.recovered, st.dropped) == (10, 5, 0)
    assert [ln["event"]["id"] for ln in log_lines(log)] == [e.id for e in evs[10:]]
    assert "over its hard limit (10)" in caplog.text
    assert metrics.counts["recovered"] == 5
    sql.gate.set()
    async with vt.autojump():
        await p.flush()
    assert sql.ids == [e.id for e in evs[:10]]
    # The buffer is empty again, but a later event delivered now would
    # overtake the spilled ones: it goes to the log after them.
    later = events(p, 2, start=15)
    for e in later:
        p.emit(e)
    assert [ln["event"]["id"] for ln in log_lines(log)] == [e.id for e in evs[10:] + later]
    assert p.sink_stats("sql").recovered == 7
    health = await p.check_health()
    assert health.state is HealthState.DEGRADED and "until restart" in (health.reason or "")
    await p.stop()
    assert sql.ids == [e.id for e in evs[:10]]
    # The next start delivers the spilled ones, in order.
    sink2 = MemorySink("sql", regulatory=True)
    p2 = build(vt, [sink2], recovery_log=log)
    await p2.start()
    async with vt.autojump():
        await p2.flush()
    assert sink2.ids == [e.id for e in evs[10:] + later]
    await p2.stop()


async def test_leftovers_at_stop_go_ahead_of_the_spilled_events(
    vt: VirtualTime, tmp_path: Path
) -> None:
    log = tmp_path / "r.jsonl"
    sql = HangingSink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=5, batch_size=2, recovery_log=log, drain_timeout=1.0)
    await p.start()
    evs = events(p, 15)
    for e in evs:
        p.emit(e)  # 10 buffered (hard limit), 5 spilled to the log
    await vt.settle()
    stopping = asyncio.create_task(p.stop())
    await vt.settle()
    vt.advance(1.0)
    await asyncio.wait_for(stopping, 2)
    # The 10 buffered ones are older than the 5 the log held already.
    assert [ln["event"]["id"] for ln in log_lines(log)] == [e.id for e in evs]
    st = p.sink_stats("sql")
    assert (st.recovered, st.depth, st.accepted) == (15, 0, 15)


async def test_leftovers_of_several_sinks_keep_each_sinks_order(
    vt: VirtualTime, tmp_path: Path
) -> None:
    class HangsAfterOneBatch(MemorySink):
        async def write(self, events: Any) -> None:
            if self.batches:
                await asyncio.Event().wait()
            await super().write(events)

    log = tmp_path / "r.jsonl"
    sql, siem = HangsAfterOneBatch("sql", regulatory=True), HangingSink("siem")
    p = build(vt, [sql, siem], max_buffer=10, batch_size=2, recovery_log=log, drain_timeout=1.0)
    await p.start()
    evs = events(p, 4)
    for e in evs:
        p.emit(e)
    await vt.settle()
    assert sql.ids == [e.id for e in evs[:2]]  # sql still lacks e2, e3; siem all four
    stopping = asyncio.create_task(p.stop())
    await vt.settle()
    vt.advance(1.0)
    await asyncio.wait_for(stopping, 2)
    lines = log_lines(log)
    assert [ln["event"]["id"] for ln in lines] == [e.id for e in evs]
    assert [ln["sinks"] for ln in lines] == [["siem"], ["siem"], ["sql", "siem"], ["sql", "siem"]]


async def test_leftovers_at_stop_go_ahead_of_events_emitted_while_it_waits(
    vt: VirtualTime, tmp_path: Path
) -> None:
    log = tmp_path / "r.jsonl"
    sql = StubbornSink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=5, batch_size=2, recovery_log=log, drain_timeout=1.0)
    await p.start()
    evs = events(p, 5)
    for e in evs[:4]:
        p.emit(e)
    await vt.settle()
    stopping = asyncio.create_task(p.stop())
    await vt.settle()
    vt.advance(1.0)  # the drain deadline: workers cancelled, the grace runs
    await vt.settle()
    try:
        p.emit(evs[4])  # emitted after the deadline: to the log at once
        async with vt.autojump():
            await asyncio.wait_for(stopping, 5)
        assert [ln["event"]["id"] for ln in log_lines(log)] == [e.id for e in evs]
    finally:
        sql.release.set()  # the worker that ignored its cancellation ends
        await vt.settle()


async def test_over_the_hard_limit_without_recovery_log_drops_loudly(
    vt: VirtualTime, caplog: pytest.LogCaptureFixture
) -> None:
    sql = GateSink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=2, batch_size=2)
    await p.start()
    with caplog.at_level(logging.ERROR, "axess.audit"):
        for e in events(p, 5):
            p.emit(e)
    assert p.sink_stats("sql").dropped == 1
    assert "no recovery_log: event dropped" in caplog.text
    sql.gate.set()
    await p.stop()


# -- producers ----------------------------------------------------------------------------------
async def test_session_event_hook_chains_and_never_raises(vt: VirtualTime) -> None:
    from axess.session.events import SessionEvent

    sink = MemorySink("sql", regulatory=True)
    p = build(vt, [sink])
    seen: list[SessionEvent] = []
    hook = p.session_event_hook(then=seen.append)
    hook(SessionEvent("session_rotated", "0123456789abcdef", "alice", "t1", None))
    hook(SessionEvent("session_invalidated", "*", "alice", "t1", "invalidate_user"))
    await p.start()
    async with vt.autojump():
        await p.flush()
    rotated, everywhere = sink.events
    assert (rotated.type, rotated.status, rotated.session) == (
        "session_rotated",
        "success",
        "0123456789ab",
    )
    assert everywhere.session is None and everywhere.reason == "invalidate_user"
    assert rotated.time == round(vt.clock.time() * 1e6) and len(seen) == 2
    await p.stop()


async def test_query_events_goes_through_the_store_sink(vt: VirtualTime) -> None:
    store = MemoryStore()
    p = build(vt, [StoreSink(store)])
    await p.start()
    p.record("authenticated", tenant="a", user="u")
    p.record("authenticated", tenant="b", user="u")
    async with vt.autojump():
        await p.flush()
    got = await p.query_events("a", AuditQuery(user="u"))
    assert [e.tenant for e in got] == ["a"]
    await p.stop()
    with pytest.raises(ConfigurationError):
        await build(vt, [MemorySink()]).query_events("a")


async def test_lifecycle_guards(vt: VirtualTime) -> None:
    p = build(vt, [MemorySink("sql", regulatory=True)])
    with pytest.raises(RuntimeError):
        await p.flush()
    assert (await p.check_health()).state is HealthState.UNHEALTHY  # a regulatory sink waits
    await p.start()
    await p.start()  # idempotent
    await p.stop()
    await p.stop()  # idempotent
    with pytest.raises(RuntimeError):
        await p.start()
    assert (await p.check_health()).state is HealthState.UNHEALTHY


async def test_sinks_of_a_pipeline_not_started_are_not_healthy(
    vt: VirtualTime, caplog: pytest.LogCaptureFixture
) -> None:
    from axess import Axess
    from axess.keys import Keyring

    sql, siem = MemorySink("sql", regulatory=True), MemorySink("siem")
    p = build(vt, [sql, siem])
    with caplog.at_level(logging.WARNING, logger="axess.audit"):
        for e in events(p, 3):
            p.emit(e)
    told = [r for r in caplog.records if "before AuditPipeline.start()" in r.getMessage()]
    assert len(told) == 1  # the first event says it, once
    checks = p.health_checks()
    regulatory, analytics = await checks["sql"].check_health(), await checks["siem"].check_health()
    assert regulatory.state is HealthState.UNHEALTHY
    assert regulatory.reason == "audit sink sql: pipeline not started (3 events waiting)"
    assert analytics.state is HealthState.DEGRADED and "not started" in (analytics.reason or "")
    assert (await p.check_health()).state is HealthState.UNHEALTHY
    # /healthz of an app whose lifespan never started the pipeline.
    auth = Axess(store=MemoryStore(), keys=Keyring.generate(), audit=p, debug=True)
    app = Starlette(routes=[Route("/healthz", auth.healthz)])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://t"
    ) as client:
        response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["components"]["audit.sql"] == "unhealthy"
    assert response.json()["components"]["audit.siem"] == "degraded"
    await p.start()
    assert (await p.check_health()).state is HealthState.HEALTHY
    async with vt.autojump():
        await p.flush()
    await p.stop()


def _bind_check(make: Callable[[], AuditPipeline]) -> None:  # pragma: no cover - helper
    make()


def test_bind_fills_only_what_was_not_given() -> None:
    clock = MockClock(1000.0)
    p = AuditPipeline(sinks=[MemorySink("x", regulatory=True)], recovery_log="r.jsonl")
    p.bind(clock=clock, random=SeededRandom(1))
    assert p.event("logout").time == 1_000_000_000
    other = MockClock(5.0)
    p.bind(clock=other)
    assert p.clock is clock


async def test_a_cancelled_stop_still_saves_the_buffer(vt: VirtualTime, tmp_path: Path) -> None:
    log = tmp_path / "r.jsonl"
    p = build(vt, [HangingSink("sql", regulatory=True)], recovery_log=log, batch_size=2)
    await p.start()
    evs = events(p, 5)
    for e in evs:
        p.emit(e)
    await vt.settle()
    stopping = asyncio.create_task(p.stop())
    await vt.settle()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert [ln["event"]["id"] for ln in log_lines(log)] == [e.id for e in evs]


@pytest.mark.parametrize("at", ["retention stop", "cancel grace"])
async def test_a_stop_cancelled_at_any_wait_still_saves_the_buffer(
    vt: VirtualTime, tmp_path: Path, at: str
) -> None:
    log = tmp_path / "r.jsonl"
    sql = StubbornSink("sql", regulatory=True)  # its write ignores cancellation
    retention = HangingRetention() if at == "retention stop" else None
    p = build(vt, [sql], recovery_log=log, batch_size=2, drain_timeout=1.0, retention=retention)
    await p.start()
    try:
        evs = events(p, 5)
        for e in evs:
            p.emit(e)
        await vt.settle()
        stopping = asyncio.create_task(p.stop())
        await vt.settle()
        if at == "cancel grace":
            vt.advance(1.0)  # drain deadline: the worker is cancelled, and ignores it
            await vt.settle()
            assert sql.cancelled == 1
        assert not stopping.done()
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        assert [ln["event"]["id"] for ln in log_lines(log)] == [e.id for e in evs]
        await asyncio.wait_for(p.stop(), 1)  # a second stop() has nothing left to do
        st = p.sink_stats("sql")
        assert (st.recovered, st.depth) == (5, 0)
        assert not p.accepting_authn
        sql.release.set()  # the stuck write ends after all; nothing counted twice
        await vt.settle()
        st = p.sink_stats("sql")
        assert (st.accepted, st.delivered, st.recovered, st.depth) == (5, 0, 5, 0)
    finally:
        sql.release.set()  # never leave a stuck task behind


async def test_health_registration_and_a_crashed_worker(
    vt: VirtualTime, caplog: pytest.LogCaptureFixture
) -> None:
    from axess.observability.health import CompositeHealthCheck

    class Boom(BaseException):
        pass

    class Crashing(MemorySink):
        async def write(self, events: Any) -> None:
            raise Boom

    sql, siem = MemorySink("sql", regulatory=True), Crashing("siem")
    p = build(vt, [sql, siem])
    composite = CompositeHealthCheck()
    p.register_health(composite)
    assert composite.names == ["audit.sql", "audit.siem"]
    await p.start()
    with caplog.at_level(logging.ERROR, "axess.audit"):
        p.emit(events(p, 1)[0])
        await vt.settle()
    assert "audit worker axess-audit-siem crashed" in caplog.text
    report = await composite.report()
    assert report.status.state is HealthState.DEGRADED  # siem is not critical
    assert report.components["audit.siem"].state is HealthState.UNHEALTHY
    with pytest.raises(RuntimeError, match="siem"):
        await p.flush()
    await p.stop()


async def test_emit_from_another_thread_reaches_the_loop(vt: VirtualTime) -> None:
    sink = MemorySink("sql", regulatory=True)
    p = build(vt, [sink])
    await p.start()
    evs = events(p, 3)
    for e in evs:
        await asyncio.to_thread(p.emit, e)  # e.g. from a sync endpoint
    async with vt.autojump():
        while p.emitted < 3:
            await vt.settle(1)
        await p.flush()
    assert sink.ids == [e.id for e in evs]
    await p.stop()


async def test_a_stop_while_start_reads_the_log_starts_no_worker(
    vt: VirtualTime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # stop() runs while start() is still taking the recovery log (in a
    # thread): start() must not go on to start workers writing to sinks
    # stop() already closed; the file keeps every event for the next start.
    from axess.audit import recovery

    log = tmp_path / "r.jsonl"
    old = _logged(vt, log, 6, ["sql"])
    entered, go = threading.Event(), threading.Event()
    take = recovery.RecoveryLog.take

    def blocked_take(self: recovery.RecoveryLog) -> Any:
        entered.set()
        go.wait(5)
        return take(self)

    monkeypatch.setattr(recovery.RecoveryLog, "take", blocked_take)
    sql = MemorySink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=10, batch_size=2, recovery_log=log, drain_timeout=1.0)
    starting = asyncio.create_task(p.start())
    await asyncio.to_thread(entered.wait, 5)
    async with vt.autojump():
        await p.stop()
    go.set()
    await asyncio.wait_for(starting, 5)
    await vt.settle()
    assert not any(st.running for st in p._sinks)
    assert sql.ids == []
    monkeypatch.setattr(recovery.RecoveryLog, "take", take)
    sql2 = MemorySink("sql", regulatory=True)
    p2 = build(vt, [sql2], max_buffer=10, batch_size=2, recovery_log=log)
    await p2.start()
    async with vt.autojump():
        await p2.flush()
    assert sql2.ids == [e.id for e in old]
    await p2.stop()
