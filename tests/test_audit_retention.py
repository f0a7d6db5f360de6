"""Retention: archive old events to day-partitioned JSONL, purge archived rows
after ``purge_after``; the loop under virtual time; run by the pipeline."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from test_audit_support import MemorySink, VirtualTime

from axess.audit import (
    AuditPipeline,
    AuditQuery,
    AuditRetention,
    AuthEvent,
    JSONLArchiver,
    RetentionReport,
)
from axess.audit.events import to_us
from axess.clock import MockClock, SeededRandom
from axess.stores import MemoryStore
from axess.testing.contract import make_event

DAY = 86_400.0
DAY_US = to_us(DAY)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return MemoryStore()
    return request.getfixturevalue("sqlite_store")


def _day_of(e: AuthEvent) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(e.time / 1e6, tz=dt.UTC).date().isoformat()


async def test_archive_then_purge_with_the_defaults(store: Any, tmp_path: Path) -> None:
    clock = MockClock()
    now_us = to_us(clock.time())
    # 100 days of history, one event per day per tenant, newest last.
    history = [
        make_event(d * 2 + t, tenant=f"t{t}", time_us=now_us - (100 - d) * DAY_US)
        for d in range(100)
        for t in (1, 2)
    ]
    await store.insert_audit_events(history)
    archiver = JSONLArchiver(tmp_path / "archive")
    retention = AuditRetention(store, archiver, clock=clock, batch_size=7)
    report = await retention.run_once()
    old = [e for e in history if e.time < now_us - 90 * DAY_US]
    assert (report.archived, report.purged) == (len(old), 0) == (20, 0)
    files = sorted(p.name for p in (tmp_path / "archive").iterdir())
    assert files == sorted({f"audit-{_day_of(e)}.jsonl" for e in old})
    archived = [
        AuthEvent.from_json(line)
        for f in sorted((tmp_path / "archive").iterdir())
        for line in f.read_text().splitlines()
    ]
    assert sorted(archived, key=lambda e: e.id) == sorted(old, key=lambda e: e.id)
    assert (await retention.run_once()).archived == 0  # nothing archived twice
    # Archived rows stay queryable for purge_after (7 days), then go.
    clock.advance(7 * DAY - 1)
    week = await retention.run_once()
    assert (week.archived, week.purged) == (14, 0)  # 7 more days crossed 90; none purged yet
    clock.advance(1)
    assert await retention.run_once() == RetentionReport(archived=0, purged=20)
    left = await store.query_audit_events("t1", AuditQuery(limit=1000))
    assert len(left) == 100 - 10
    assert all(e.time >= now_us - 90 * DAY_US for e in left)


async def test_rows_are_marked_only_after_the_archiver_succeeded(
    store: Any, tmp_path: Path
) -> None:
    class Failing:
        calls = 0

        async def archive(self, events: Sequence[AuthEvent]) -> None:
            self.calls += 1
            raise OSError("disk full")

    clock = MockClock()
    await store.insert_audit_events([make_event(1, time_us=to_us(clock.time()) - 91 * DAY_US)])
    retention = AuditRetention(store, Failing(), clock=clock)
    with pytest.raises(OSError):
        await retention.run_once()
    assert len(await store.audit_events_to_archive(to_us(clock.time()), 10)) == 1
    clock.advance(30 * DAY)
    assert await store.purge_archived_audit_events(clock.time()) == 0  # never archived


def test_archiver_partitions_by_utc_day(tmp_path: Path) -> None:
    a = JSONLArchiver(tmp_path, prefix="x-")
    assert a.path_for(0).name == "x-1970-01-01.jsonl"
    assert a.path_for(86_399_999_999).name == "x-1970-01-01.jsonl"
    assert a.path_for(86_400_000_000).name == "x-1970-01-02.jsonl"


async def test_the_loop_runs_every_interval_and_survives_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vt = VirtualTime(MockClock())
    store = MemoryStore()
    calls: list[float] = []
    original = store.purge_archived_audit_events

    async def flaky_purge(now: float) -> int:
        calls.append(now)
        if len(calls) == 2:
            raise ConnectionError("db down")
        return await original(now)

    store.purge_archived_audit_events = flaky_purge  # type: ignore[method-assign]
    retention = AuditRetention(
        store, JSONLArchiver(tmp_path), interval=3600, clock=vt.clock, sleep=vt.sleep
    )
    await retention.start()
    await retention.start()  # idempotent
    await vt.settle()
    assert calls == []  # first pass one interval after start
    with caplog.at_level(logging.WARNING, "axess.audit"):
        for _ in range(3):
            vt.advance(3600)
            await vt.settle()
    assert len(calls) == 3
    assert "audit retention pass failed (ConnectionError); retrying next tick" in caplog.text
    await retention.stop()
    await retention.stop()


async def test_the_pipeline_starts_and_stops_its_retention(tmp_path: Path) -> None:
    vt = VirtualTime(MockClock())
    store = MemoryStore()
    retention = AuditRetention(store, JSONLArchiver(tmp_path), interval=60, sleep=vt.sleep)
    p = AuditPipeline(
        sinks=[MemorySink("sql", regulatory=True)],
        retention=retention,
        clock=vt.clock,
        random=SeededRandom(0),
        sleep=vt.sleep,
    )
    assert retention.clock is not vt.clock or retention._clock is None
    await p.start()
    assert retention.clock is vt.clock  # bound to the pipeline's clock
    assert retention._task is not None and not retention._task.done()
    await p.stop()
    assert retention._task is None


def test_retention_arguments_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        AuditRetention(MemoryStore(), JSONLArchiver(tmp_path), archive_after=-1)
    with pytest.raises(ValueError):
        AuditRetention(MemoryStore(), JSONLArchiver(tmp_path), interval=0)
