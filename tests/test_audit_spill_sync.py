"""Once a sink spills to the recovery log, every later event of it goes there
too, until restart: emit() must not fsync on the event loop for each of them
(book: Audit, "When a buffer is full")."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from test_audit_support import GateSink, VirtualTime

from axess.audit import AuditPipeline, AuthEvent
from axess.clock import MockClock, SeededRandom


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime(MockClock())


def build(vt: VirtualTime, sinks: list[Any], **kw: Any) -> AuditPipeline:
    kw.setdefault("flush_interval", 0.0)
    return AuditPipeline(sinks=sinks, clock=vt.clock, random=SeededRandom(7), sleep=vt.sleep, **kw)


def events(p: AuditPipeline, n: int, *, start: int = 0) -> list[AuthEvent]:
    return [p.event("authenticated", tenant="t1", user=f"u{i}") for i in range(start, start + n)]


async def test_spilled_events_are_fsynced_in_a_thread_not_per_emit_on_the_loop(
    vt: VirtualTime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "r.jsonl"
    sql = GateSink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=2, batch_size=1, recovery_log=log)
    await p.start()
    early = events(p, 6)
    for e in early:
        p.emit(e)  # 4 kept (hard limit), 2 to the recovery log
    sql.gate.set()
    await p.flush()  # the buffer drained; the sink still spills until restart
    assert p.sink_stats("sql").depth == 0 and p.sink_stats("sql").recovered == 2

    loop_thread = threading.get_ident()
    on_loop: list[int] = []
    in_thread = threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if threading.get_ident() == loop_thread:
            on_loop.append(fd)
        else:
            in_thread.set()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    late = events(p, 50, start=100)
    for e in late:
        p.emit(e)
    assert on_loop == []  # no fsync per emit on the event loop
    assert await _wait(in_thread)  # one in a thread soon after, for them all
    await p.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [ln["event"]["id"] for ln in lines] == [e.id for e in early[4:] + late]


async def _wait(event: threading.Event) -> bool:

    return await asyncio.to_thread(event.wait, 5)
