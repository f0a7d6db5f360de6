"""Helpers for the audit tests (no tests here): virtual time for the
pipeline's injected ``sleep``, controllable sinks, recording metrics."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Sequence

from axess.audit.events import AuthEvent
from axess.audit.sinks import StoreSink
from axess.clock import MockClock
from axess.observability.metrics import NoopMetrics
from axess.stores.base import AuditStore


class VirtualTime:
    """Sleeps that end when the test moves time forward (``advance``), or
    automatically inside ``autojump()`` whenever every task is waiting.

    The MockClock moves along, so events stamped during the test carry the
    virtual time.
    """

    def __init__(self, clock: MockClock | None = None) -> None:
        self.clock = clock or MockClock()
        self.now = 0.0
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._new = asyncio.Event()
        #: Every sleep requested, in order (seconds).
        self.requested: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.requested.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self.now + seconds, next(self._seq), fut))
        self._new.set()
        await fut

    def _live(self) -> list[tuple[float, int, asyncio.Future[None]]]:
        while self._heap and self._heap[0][2].done():
            heapq.heappop(self._heap)
        return self._heap

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        heap = self._live()
        while heap and heap[0][0] <= target:
            _, _, fut = heapq.heappop(heap)
            if not fut.done():
                fut.set_result(None)
        self.clock.advance(target - self.now)
        self.now = target

    def pending(self) -> int:
        return sum(1 for _, _, f in self._heap if not f.done())

    @staticmethod
    async def settle(rounds: int = 50) -> None:
        """Let every runnable task run (no wall-clock wait)."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    @contextlib.asynccontextmanager
    async def autojump(self) -> AsyncIterator[None]:
        """While inside, jump to the next sleeper's deadline whenever the
        runnable tasks have settled."""

        async def jumper() -> None:
            while True:
                await self.settle(20)
                heap = self._live()
                if heap:
                    self.advance(max(0.0, heap[0][0] - self.now))
                else:
                    self._new.clear()
                    await self._new.wait()

        task = asyncio.create_task(jumper())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class MemorySink:
    """Records every batch. ``fail_first`` makes the first N writes raise."""

    def __init__(self, name: str = "mem", *, regulatory: bool = False, fail_first: int = 0) -> None:
        self.name = name
        self.regulatory = regulatory
        self.fail_first = fail_first
        self.calls = 0
        self.batches: list[list[AuthEvent]] = []
        self.closed = False
        self._written = asyncio.Event()

    @property
    def events(self) -> list[AuthEvent]:
        return [e for b in self.batches for e in b]

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events]

    async def write(self, events: Sequence[AuthEvent]) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise ConnectionError("sink down (test)")
        self.batches.append(list(events))
        self._written.set()

    async def has(self, count: int) -> None:
        """Returns once at least ``count`` events were written."""
        while len(self.ids) < count:
            self._written.clear()
            await self._written.wait()

    async def close(self) -> None:
        self.closed = True


class GateSink(MemorySink):
    """A sink whose writes wait until ``gate`` is open."""

    def __init__(self, name: str = "gate", *, regulatory: bool = False) -> None:
        super().__init__(name, regulatory=regulatory)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def write(self, events: Sequence[AuthEvent]) -> None:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        await super().write(events)


class HangingSink(MemorySink):
    """A sink whose writes never return (a SIEM that stopped answering)."""

    def __init__(self, name: str = "hang", *, regulatory: bool = False) -> None:
        super().__init__(name, regulatory=regulatory)
        self.cancelled = 0

    async def write(self, events: Sequence[AuthEvent]) -> None:
        self.calls += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


class StubbornSink(MemorySink):
    """A sink whose writes ignore cancellation until ``release`` is set (a
    driver stuck in a blocking call)."""

    def __init__(self, name: str = "stubborn", *, regulatory: bool = False) -> None:
        super().__init__(name, regulatory=regulatory)
        self.release = asyncio.Event()
        self.cancelled = 0

    async def write(self, events: Sequence[AuthEvent]) -> None:
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
        await super().write(events)


class HangingCloseSink(MemorySink):
    """A sink whose ``close()`` never returns; with ``stubborn`` it also
    ignores cancellation until ``release`` is set."""

    def __init__(self, name: str = "hangclose", *, stubborn: bool = False) -> None:
        super().__init__(name)
        self.stubborn = stubborn
        self.release = asyncio.Event()
        self.close_cancelled = 0

    async def close(self) -> None:
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.close_cancelled += 1
                if not self.stubborn:
                    raise
        self.closed = True


class HangingRetention:
    """Stands in for AuditRetention: its ``stop()`` never returns."""

    def __init__(self) -> None:
        self.started = False
        self.stop_cancelled = 0

    def bind(self, **_: object) -> None:
        pass

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.stop_cancelled += 1
            raise


class FlakyStoreSink(StoreSink):
    """The SQL sink behind an unreliable link: the first ``down`` writes fail
    before reaching the database, the next ``lost_acks`` reach it (the rows
    commit) but the acknowledgement is lost, then everything works."""

    def __init__(self, store: AuditStore, *, down: int, lost_acks: int) -> None:
        super().__init__(store, name="sql")
        self.down = down
        self.lost_acks = lost_acks
        self.calls = 0

    async def write(self, events: Sequence[AuthEvent]) -> None:
        self.calls += 1
        if self.calls <= self.down:
            raise ConnectionError("database unreachable (test)")
        await super().write(events)
        if self.calls <= self.down + self.lost_acks:
            raise TimeoutError("acknowledgement lost (test)")


class RecordingMetrics(NoopMetrics):
    """Records the audit metrics."""

    __slots__ = ("counts", "depths")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.depths: list[int] = []

    def audit_dropped(self, count: int = 1) -> None:
        self.counts["dropped"] += count

    def audit_recovered(self, count: int = 1) -> None:
        self.counts["recovered"] += count

    def audit_buffer_depth(self, depth: int) -> None:
        self.depths.append(depth)
