"""One sink's delivery loop (book: Audit, "Delivery").

A :class:`SinkWorker` takes batches from its sink's
:class:`~axess.audit.buffer.SinkBuffer` and writes them: as soon as
``batch_size`` events wait, otherwise ``flush_interval`` seconds after the
first one (at once while the pipeline flushes or drains). A failed batch is
retried, whole, with exponential backoff and jitter until it succeeds, so a
slow or dead sink holds back only its own buffer. A write that neither
succeeds nor fails within ``stall_after`` seconds (a connection without a
timeout) is logged once and reported by health as a failing sink. Blocking sinks hand their
I/O to a thread themselves (see :mod:`axess.audit.sinks`); the worker only
awaits ``sink.write``.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
from collections.abc import Awaitable, Callable

from axess.audit.buffer import OverflowPolicy, SinkBuffer
from axess.audit.events import AuthEvent
from axess.audit.sinks import AuditSink
from axess.errors import AxessError

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class DeliveryControl:
    """What the pipeline tells all its workers at once."""

    __slots__ = ("stopping", "urgent")

    def __init__(self) -> None:
        #: > 0 while someone flushes or drains: write back to back, no lingering.
        self.urgent = 0
        #: Set by ``stop()``: a worker returns once its buffer is empty.
        self.stopping = False


class SinkWorker:
    """The buffer, the delivery loop and the failure counters of one sink.

    ``on_batch(worker, replayed)`` runs after every written batch
    (``replayed``: how many of its events came from the recovery log);
    ``on_retry()`` before every backoff sleep. ``now()`` is the pipeline's
    monotonic clock; a write in flight for ``stall_after`` seconds of it
    (waited for with ``sleep``) is *stalled*.
    """

    __slots__ = (
        "buffer",
        "control",
        "failures",
        "flush_interval",
        "last_error",
        "name",
        "now",
        "on_batch",
        "on_retry",
        "regulatory",
        "retry_initial",
        "retry_max",
        "room",
        "sink",
        "sleep",
        "stall_after",
        "streak",
        "task",
        "wake",
        "write_started",
    )

    def __init__(
        self,
        sink: AuditSink,
        buffer: SinkBuffer,
        *,
        control: DeliveryControl,
        flush_interval: float,
        retry_initial: float,
        retry_max: float,
        sleep: Sleep,
        on_batch: Callable[[SinkWorker, int], Awaitable[None]],
        on_retry: Callable[[], None],
        now: Callable[[], float],
        stall_after: float,
    ) -> None:
        self.sink = sink
        self.name: str = sink.name
        self.regulatory = bool(sink.regulatory)
        self.buffer = buffer
        self.control = control
        self.flush_interval = flush_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.sleep = sleep
        self.on_batch = on_batch
        self.on_retry = on_retry
        self.now = now
        self.stall_after = stall_after
        #: When (``now()``) the write in flight began; None between writes.
        self.write_started: float | None = None
        self.failures = 0
        self.streak = 0  # consecutive failures
        self.last_error: str | None = None
        #: Set when there is something to look at (new events, flush, stop).
        self.wake = asyncio.Event()
        #: Set while the buffer has room (``Block`` waits for it).
        self.room = asyncio.Event()
        self.room.set()
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"SinkWorker({self.name!r}, {self.buffer!r})"

    @property
    def policy(self) -> OverflowPolicy:
        return self.buffer.policy

    @property
    def depth(self) -> int:
        return self.buffer.depth

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self) -> None:
        """Start the loop as a task of the running event loop."""
        self.task = asyncio.create_task(self.run(), name=f"axess-audit-{self.name}")
        self.task.add_done_callback(_worker_done)

    async def run(self) -> None:
        buf = self.buffer
        control = self.control
        while True:
            if not buf.events:
                if control.stopping:
                    return
                self.wake.clear()
                await self.wake.wait()
                continue
            if len(buf.events) < buf.batch_size and not control.urgent:
                await self._linger()
                if not buf.events:
                    continue
            await self._deliver(buf.take())
            await self.on_batch(self, buf.delivered_batch())

    async def _linger(self) -> None:
        """Wait up to ``flush_interval`` for a full batch (or a flush/stop)."""
        self.wake.clear()
        timer = asyncio.ensure_future(self.sleep(self.flush_interval))
        woken = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait([timer, woken], return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            woken.cancel()

    async def _deliver(self, batch: list[AuthEvent]) -> None:
        """Write ``batch`` until it succeeds (backoff between attempts)."""
        while True:
            try:
                await self._attempt(tuple(batch))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self.streak += 1
                self.last_error = type(exc).__name__
                delay = min(self.retry_max, self.retry_initial * 2 ** min(self.streak - 1, 30))
                delay *= 0.5 + _random.random() / 2
                if self.streak == 1:
                    logger.warning(
                        "audit sink %r failed (%s); retrying the batch of %d with backoff",
                        self.name,
                        describe(exc),
                        len(batch),
                    )
                else:
                    logger.debug("audit sink %r failed again (%s)", self.name, type(exc).__name__)
                # The buffer grows while the sink is down: report it per attempt.
                self.on_retry()
                await self.sleep(delay)
                continue
            if self.streak:
                logger.info(
                    "audit sink %r recovered after %d failed attempt(s)", self.name, self.streak
                )
                self.streak = 0
            return

    async def _attempt(self, batch: tuple[AuthEvent, ...]) -> None:
        """One ``sink.write``, awaited directly (cancelling the worker cancels
        it), watched: still in flight after ``stall_after`` seconds, it is
        logged once. Never timed out: retried, a write that may yet succeed
        would be delivered twice (book: Audit, "Delivery")."""
        self.write_started = self.now()
        watchdog = asyncio.ensure_future(self._watch(len(batch)))
        try:
            await self.sink.write(batch)
        finally:
            self.write_started = None
            watchdog.cancel()

    async def _watch(self, size: int) -> None:
        await self.sleep(self.stall_after)
        logger.warning(
            "audit sink %r: a write of %d event(s) has not returned after %gs; %d event(s) "
            "wait for it (a sink without a timeout?)",
            self.name,
            size,
            self.stall_after,
            self.depth,
        )
        self.on_retry()  # the depth gauge, as for a failed attempt

    def stalled_for(self) -> float | None:
        """Seconds the write in flight has run if at least ``stall_after``, else None."""
        started = self.write_started
        if started is None:
            return None
        running = self.now() - started
        return running if running >= self.stall_after else None


def _worker_done(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "audit worker %s crashed: %r (its sink receives nothing until restart)",
            task.get_name(),
            task.exception(),
        )


def describe(exc: BaseException) -> str:
    """Type and (for axess's own errors, which are scrubbed) message."""
    if isinstance(exc, AxessError):
        text = str(exc)
        return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
    return type(exc).__name__
