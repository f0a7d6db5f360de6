"""The recovery log on a nearly full disk: stop() saves its leftovers and the
next start() works with free space for the leftovers alone, never for a
copy of the whole log (book: Audit, "The recovery log")."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_audit_support import HangingSink, MemorySink, VirtualTime

from axess.audit import AuditPipeline, AuthEvent
from axess.audit.recovery import RecoveryLog, encode_entry
from axess.clock import MockClock, SeededRandom


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime(MockClock())


def build(vt: VirtualTime, sinks: list[Any], **kw: Any) -> AuditPipeline:
    kw.setdefault("flush_interval", 0.0)
    return AuditPipeline(sinks=sinks, clock=vt.clock, random=SeededRandom(7), sleep=vt.sleep, **kw)


def events(p: AuditPipeline, n: int, *, start: int = 0) -> list[AuthEvent]:
    return [
        p.event("authenticated", tenant="t1", user=f"u{i}", extras={"n": i})
        for i in range(start, start + n)
    ]


class Disk:
    """A volume of ``limit`` bytes: an ``fsync`` while the files in the
    directory hold more raises ENOSPC, as a filesystem with delayed
    allocation reports a write that did not fit."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.limit: int | None = None
        self.refused = 0

    def used(self) -> int:
        return sum(f.stat().st_size for f in self.directory.iterdir() if f.is_file())

    def fill(self, free: int) -> None:
        """Something else fills the volume up to ``free`` bytes left."""
        self.limit = self.used() + free


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    d = Disk(tmp_path)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if d.limit is not None and d.used() > d.limit:
            d.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    yield d


class DownSink(MemorySink):
    async def write(self, batch: Any) -> None:
        raise ConnectionError("database down")


def replayable(log: Path) -> list[str]:
    """Event ids the next start replays from ``log``, in order."""
    files = [*RecoveryLog(log).segments(), *([log] if log.exists() else [])]
    return [line for f in files for line in f.read_text().splitlines() if line.strip()]


async def test_leftovers_are_saved_and_replayed_with_room_for_them_alone(
    vt: VirtualTime, tmp_path: Path, disk: Disk
) -> None:
    log = tmp_path / "r.jsonl"
    p = build(
        vt,
        [DownSink("sql", regulatory=True)],
        max_buffer=5,
        batch_size=2,
        recovery_log=log,
        drain_timeout=1.0,
    )
    await p.start()
    evs = events(p, 200)
    for e in evs:
        p.emit(e)  # 10 buffered (hard limit), 190 spilled to the log
    await vt.settle()
    line = len(encode_entry(evs[0], ["sql"])) + 1
    # Room for the 10 leftovers a few times over, far from a copy of the log.
    disk.fill(free=40 * line)
    stopping = asyncio.create_task(p.stop())
    await vt.settle()
    vt.advance(1.0)
    await asyncio.wait_for(stopping, 2)
    st = p.sink_stats("sql")
    assert (st.recovered, st.dropped, st.depth) == (200, 0, 0)
    assert not log.with_name("r.jsonl.requeue").exists()
    # The disk is still full at the next start: the app starts all the same,
    # and the buffered events come ahead of the spilled (newer) ones.
    sql = MemorySink("sql", regulatory=True)
    p2 = build(vt, [sql], max_buffer=5, batch_size=2, recovery_log=log)
    await p2.start()
    assert p2.replayed == 200
    async with vt.autojump():
        await p2.flush()
    await p2.stop()
    assert sql.ids == [e.id for e in evs]
    assert replayable(log) == []


async def test_a_start_on_a_full_disk_after_a_failed_requeue_replays_every_event_once(
    vt: VirtualTime, tmp_path: Path, disk: Disk
) -> None:
    # What a requeue that failed for a full disk left: the replay kept whole,
    # a partial copy of it next to it, and the log of spilled events.
    log = tmp_path / "r.jsonl"
    evs = events(build(vt, [MemorySink("x", regulatory=True)]), 300)
    old, spilled = evs[:150], evs[150:]
    entry = [encode_entry(e, ["sql"]) + "\n" for e in evs]
    log.with_name("r.jsonl.replaying").write_text("".join(entry[:150]))
    log.with_name("r.jsonl.requeue").write_text("".join(entry[:40]) + entry[40][:30])
    log.write_text("".join(entry[150:]))
    disk.fill(free=4096)
    sql = MemorySink("sql", regulatory=True)
    p = build(vt, [sql], max_buffer=10, batch_size=5, recovery_log=log)
    await p.start()  # renames only: no copy of one file into another
    async with vt.autojump():
        await p.flush()
    await p.stop()
    # The partial copy's lines come again (at least once after a failure),
    # in order; nothing is lost and the files are gone.
    assert list(dict.fromkeys(sql.ids)) == [e.id for e in old + spilled]
    assert replayable(log) == [] and not log.with_name("r.jsonl.requeue").exists()


async def test_a_requeue_that_does_not_fit_keeps_the_replay_and_saves_the_leftovers(
    vt: VirtualTime, tmp_path: Path, disk: Disk
) -> None:
    log = tmp_path / "r.jsonl"
    evs = events(build(vt, [MemorySink("x", regulatory=True)]), 100)
    log.write_text("".join(encode_entry(e, ["sql"]) + "\n" for e in evs))
    p = build(
        vt,
        [HangingSink("sql", regulatory=True)],
        max_buffer=10,
        batch_size=2,
        recovery_log=log,
        drain_timeout=1.0,
    )
    await p.start()
    fresh = events(p, 3, start=500)
    for e in fresh:
        p.emit(e)
    await vt.settle()
    line = len(encode_entry(evs[0], ["sql"])) + 1
    disk.fill(free=10 * line)  # the leftovers fit, the replay's rest does not
    stopping = asyncio.create_task(p.stop())
    await vt.settle()
    vt.advance(1.0)
    await asyncio.wait_for(stopping, 2)
    assert p.sink_stats("sql").dropped == 0 and disk.refused
    assert not log.with_name("r.jsonl.requeue").exists()
    sql = MemorySink("sql", regulatory=True)
    p2 = build(vt, [sql], max_buffer=10, batch_size=2, recovery_log=log)
    await p2.start()
    async with vt.autojump():
        await p2.flush()
    await p2.stop()
    assert sql.ids == [e.id for e in evs + fresh]  # the replay kept whole, then the leftovers
