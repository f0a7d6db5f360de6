"""The audit pipeline: buffers, background delivery, overflow policies,
bounded drain on shutdown, recovery log.

``emit(event)`` is synchronous and O(number of sinks): it appends the event
to one bounded buffer per sink and returns. One background worker per sink
takes batches from its buffer and writes them, retrying a failed batch with
exponential backoff until it succeeds — a slow or dead SIEM never holds back
the SQL audit table, and the other way round.

Guarantee (counted per sink): every event a sink accepted is *delivered*,
*dropped* (only analytics sinks under :class:`DropOldest`, counted in the
``audit_dropped`` metric) or *recovered* (written with fsync to the
recovery log, counted in ``audit_recovered``, delivered by the next start).
A regulatory sink never drops, so for it ``emitted = delivered +
recovered``.

The parts (book: Audit, "How the pipeline is built"): the buffer and the
overflow policies (:mod:`axess.audit.buffer`), one sink's delivery loop
(:mod:`axess.audit.worker`), the recovery spill (:mod:`axess.audit.recovery`),
health (:mod:`axess.audit.health`) and the 503 (:mod:`axess.audit.http`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from axess.audit.buffer import (
    DROPPED,
    FILLED,
    OVERFLOW,
    SPILL,
    WAKE,
    Block,
    DropOldest,
    OverflowPolicy,
    ShutdownAuthn,
    SinkBuffer,
)
from axess.audit.events import AuditQuery, AuthEvent
from axess.audit.health import SinkHealth, sink_status, worst_status
from axess.audit.recovery import RecoveryLog, RecoverySpill
from axess.audit.sinks import AuditSink
from axess.audit.worker import DeliveryControl, SinkWorker, Sleep
from axess.clock import Clock, Random, SystemClock, SystemRandom, check_duration
from axess.errors import AxessError, ConfigurationError
from axess.observability.health import CompositeHealthCheck, HealthStatus
from axess.observability.metrics import AuthnMetrics, NoopMetrics
from axess.session.events import SessionEvent, SessionEventHook

if TYPE_CHECKING:
    from starlette.responses import JSONResponse

__all__ = [
    "AuditPipeline",
    "AuditUnavailable",
    "Block",
    "DropOldest",
    "OverflowPolicy",
    "ShutdownAuthn",
    "SinkStats",
]

logger = logging.getLogger(__name__)

_SYSTEM_CLOCK: Final = SystemClock()
_SYSTEM_RANDOM: Final = SystemRandom()
_NO_METRICS: Final = NoopMetrics()
_thread_id: Final = threading.get_ident

#: Seconds ``stop()`` waits for cancelled workers to finish after the drain
#: deadline (a sink that ignores cancellation must not hang shutdown).
_CANCEL_GRACE: Final = 1.0
#: Seconds ``stop()`` gives the retention loop's stop and, together, the
#: sinks' ``close()``: they run after the drain deadline, so without a bound
#: a hanging one would hold shutdown forever.
_CLOSE_GRACE: Final = 2.0
#: Seconds between two "login refused" WARNINGs (the count is in the next one).
_REFUSAL_LOG_INTERVAL: Final = 10.0


class AuditUnavailable(AxessError):
    """The audit trail cannot take the operation's events right now.

    Raised by :meth:`AuditPipeline.authn_gate` (regulatory buffer full under
    :class:`ShutdownAuthn`) and by :meth:`AuditPipeline.emit_wait` (no room
    within the :class:`Block` timeout). Answer with :meth:`response` (503).
    """

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        """503 JSON with ``Retry-After``, never cached (see :mod:`axess.audit.http`)."""
        from axess.audit.http import audit_unavailable_response

        return audit_unavailable_response(self.retry_after)


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


# -- per-sink state -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SinkStats:
    """Counters of one sink. ``accepted = delivered + dropped + recovered + depth``."""

    name: str
    regulatory: bool
    policy: str
    accepted: int
    delivered: int
    dropped: int
    recovered: int
    depth: int
    consecutive_failures: int
    failures: int
    last_error: str | None


class AuditPipeline:
    """Buffers audit events and delivers them to every sink in the background.

    * ``sinks``: the destinations (names must be unique). Regulatory sinks
      (``sink.regulatory``) use ``on_full`` (default :class:`ShutdownAuthn`),
      analytics sinks ``analytics_on_full`` (default :class:`DropOldest`).
    * ``max_buffer``: events buffered per sink before the policy applies.
      Policies that keep everything accept up to :attr:`hard_limit` (twice
      ``max_buffer``); beyond it events go straight to the recovery log.
    * ``batch_size`` / ``flush_interval``: a worker writes as soon as
      ``batch_size`` events are waiting, otherwise ``flush_interval``
      seconds after it found the first one.
    * ``retry_initial`` / ``retry_max``: backoff (seconds, doubling, with
      jitter) between attempts at a failed batch; attempts never stop.
    * ``stall_after``: seconds a sink's write may stay in flight before
      health reports the sink failing (unhealthy if regulatory, else
      degraded) and a WARNING says so (once per write); default 30. The
      write is not cancelled: give the sink its own timeout.
    * ``drain_timeout``: how long :meth:`stop` keeps delivering.
    * ``recovery_log``: where leftovers go (JSONL, fsync); replayed by
      :meth:`start`. Without one, leftovers at shutdown are lost (logged
      and counted as dropped).
    * ``retention``: an :class:`~axess.audit.retention.AuditRetention`
      started and stopped with the pipeline.
    * ``clock`` / ``random`` / ``metrics`` default to what ``Axess`` binds
      (:meth:`bind`), else the system clock, system randomness, no metrics;
      ``sleep`` (default :func:`asyncio.sleep`) is injectable for tests.
    """

    def __init__(
        self,
        *,
        sinks: Sequence[AuditSink],
        max_buffer: int = 10_000,
        on_full: OverflowPolicy | None = None,
        analytics_on_full: OverflowPolicy | None = None,
        batch_size: int = 200,
        flush_interval: float = 0.25,
        drain_timeout: float = 10.0,
        recovery_log: str | os.PathLike[str] | None = None,
        retry_initial: float = 0.05,
        retry_max: float = 30.0,
        stall_after: float = 30.0,
        retention: Any = None,
        clock: Clock | None = None,
        random: Random | None = None,
        metrics: AuthnMetrics | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if not sinks:
            raise ConfigurationError("AuditPipeline needs at least one sink")
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"audit sink names must be unique, got {names}")
        if max_buffer < 1 or not 1 <= batch_size <= max_buffer:
            raise ConfigurationError("need max_buffer >= 1 and 1 <= batch_size <= max_buffer")
        for what, value in (
            ("flush_interval", flush_interval),
            ("drain_timeout", drain_timeout),
            ("retry_max", retry_max),
        ):
            if value < 0:
                raise ConfigurationError(f"{what} must not be negative")
        if retry_initial <= 0:
            raise ConfigurationError("retry_initial must be positive")
        check_duration(stall_after, "stall_after")
        regulatory_policy = on_full if on_full is not None else ShutdownAuthn()
        analytics_policy = analytics_on_full if analytics_on_full is not None else DropOldest()
        for policy in (regulatory_policy, analytics_policy):
            if not isinstance(policy, OverflowPolicy):
                raise ConfigurationError(
                    "on_full must be DropOldest(), Block(timeout=...) or ShutdownAuthn()"
                )
        self.max_buffer = max_buffer
        #: Buffer depth beyond which events of keep-everything policies are
        #: written to the recovery log instead of memory.
        self.hard_limit = 2 * max_buffer
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.drain_timeout = drain_timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.stall_after = stall_after
        self.recovery = RecoveryLog(recovery_log) if recovery_log is not None else None
        self.retention = retention
        self._clock = clock
        self._random = random
        self._metrics = metrics
        self._sleep: Sleep = sleep or asyncio.sleep
        self._control = DeliveryControl()
        self._sinks = tuple(
            SinkWorker(
                s,
                SinkBuffer(
                    regulatory_policy if s.regulatory else analytics_policy,
                    max_buffer=max_buffer,
                    batch_size=batch_size,
                    hard_limit=self.hard_limit,
                ),
                control=self._control,
                flush_interval=flush_interval,
                retry_initial=retry_initial,
                retry_max=retry_max,
                sleep=self._sleep,
                on_batch=self._batch_written,
                on_retry=self._report_depth,
                now=self._monotonic,
                stall_after=stall_after,
            )
            for s in sinks
        )
        self._by_name = {st.name: st for st in self._sinks}
        self._puts = tuple((st, st.buffer.put) for st in self._sinks)
        self._spill = RecoverySpill(
            self.recovery, {st.name: st.buffer for st in self._sinks}, metrics=lambda: self.metrics
        )
        #: Events handed to :meth:`emit` (and accepted by :meth:`emit_wait`).
        self.emitted = 0
        #: Login attempts refused by :meth:`authn_gate`.
        self.refused = 0
        self._gated: set[str] = set()
        self._started = False
        self._told_unstarted = False
        self._closed = False
        self._progress = asyncio.Event()
        #: The loop (and its thread) the workers run on, once started.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._last_refusal_log = -_REFUSAL_LOG_INTERVAL
        self._refused_since_log = 0
        self._warn_weakenings()

    def _warn_weakenings(self) -> None:
        regulatory = [st for st in self._sinks if st.regulatory]
        if not regulatory:
            logger.warning(
                "axess security weakened: audit pipeline without a regulatory sink "
                "(every sink is best effort)"
            )
        for st in regulatory:
            if not st.policy.keeps_everything:
                logger.warning(
                    "axess security weakened: regulatory audit sink %r drops events when its "
                    "buffer is full (on_full=%s)",
                    st.name,
                    type(st.policy).__name__,
                )
        if self.recovery is None:
            logger.warning(
                "axess security weakened: audit pipeline without recovery_log "
                "(events still buffered when the drain times out are lost)"
            )

    # -- wiring -----------------------------------------------------------------------
    def bind(
        self,
        *,
        clock: Clock | None = None,
        random: Random | None = None,
        metrics: AuthnMetrics | None = None,
    ) -> None:
        """Use the app's clock, randomness and metrics unless given to the constructor."""
        self._clock = self._clock or clock
        self._random = self._random or random
        self._metrics = self._metrics or metrics
        bind = getattr(self.retention, "bind", None)
        if bind is not None:
            bind(clock=self.clock)

    @property
    def clock(self) -> Clock:
        """The clock events are stamped with (the system clock until one is bound)."""
        return self._clock or _SYSTEM_CLOCK

    @property
    def random(self) -> Random:
        return self._random or _SYSTEM_RANDOM

    @property
    def metrics(self) -> AuthnMetrics:
        return self._metrics or _NO_METRICS

    @property
    def replayed(self) -> int:
        """Events read back from the recovery log by :meth:`start`."""
        return self._spill.replayed

    @property
    def sinks(self) -> list[AuditSink]:
        return [st.sink for st in self._sinks]

    # -- producing ----------------------------------------------------------------------
    def event(self, type: str, **fields: Any) -> AuthEvent:
        """A new :class:`AuthEvent` stamped with the pipeline's clock and randomness."""
        return AuthEvent.create(type, clock=self.clock, random=self.random, **fields)

    def record(self, type: str, **fields: Any) -> AuthEvent:
        """Build an event (see :meth:`event`) and :meth:`emit` it; returns it."""
        event = self.event(type, **fields)
        self.emit(event)
        return event

    def emit(self, event: AuthEvent) -> None:
        """Queue ``event`` for every sink. Never blocks, never raises.

        On a full buffer the sink's policy applies (see the policy classes).
        After :meth:`stop` the event is written to the recovery log at once.
        Safe to call from another thread (a sync endpoint): the event is
        handed to the pipeline's event loop.
        """
        if self._closed:
            self._emit_after_close(event)
            return
        if self._loop is not None and _thread_id() != self._thread:
            try:
                self._loop.call_soon_threadsafe(self.emit, event)
            except RuntimeError:  # the loop is gone: keep the event on disk
                self._emit_after_close(event)
            return
        self.emitted += 1
        if not self._started and not self._told_unstarted:
            self._told_unstarted = True
            logger.warning(
                "audit event emitted before AuditPipeline.start(): events wait in memory, "
                "reaching no sink until start() (run the app with lifespan=auth.lifespan) "
                "or deliver_once()"
            )
        for st, put in self._puts:
            signal = put(event)
            if signal:
                if signal == DROPPED:  # DropOldest on a full buffer: the common overflow
                    self.metrics.audit_dropped(1)
                else:
                    self._react(st, event, signal)

    async def emit_wait(self, event: AuthEvent) -> None:
        """:meth:`emit`, but first wait for room in every :class:`Block` sink.

        Waits at most the policy's ``timeout``; then raises
        :class:`AuditUnavailable` and the event is not accepted by any sink.
        """
        blocking = [st for st in self._sinks if isinstance(st.policy, Block)]
        timer: asyncio.Task[None] | None = None
        try:
            while not self._closed:
                full = [st for st in blocking if st.buffer.full]
                if not full:
                    break
                if timer is None:
                    timeout = min(
                        p.timeout for p in (st.policy for st in full) if isinstance(p, Block)
                    )
                    timer = asyncio.ensure_future(self._sleep(timeout))
                waiters = [asyncio.ensure_future(st.room.wait()) for st in full]
                try:
                    await asyncio.wait([timer, *waiters], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
                if timer.done() and any(st.buffer.full for st in blocking):
                    self.refused += 1
                    logger.warning(
                        "audit buffer of sink(s) %s still full after the Block timeout; "
                        "operation refused",
                        ", ".join(st.name for st in full),
                    )
                    raise AuditUnavailable("audit buffer full (Block timeout)")
        finally:
            if timer is not None:
                timer.cancel()
        self.emit(event)

    def session_event_hook(self, then: SessionEventHook | None = None) -> SessionEventHook:
        """A hook for ``Axess(on_session_event=...)`` that emits each session
        event as an :class:`AuthEvent` (same wire string), then calls ``then``."""

        def hook(event: SessionEvent) -> None:
            try:
                self.emit(AuthEvent.from_session_event(event, clock=self.clock, random=self.random))
            except Exception:  # an unexpected event shape must not break the request
                logger.exception("could not turn a session event into an audit event")
            if then is not None:
                then(event)

        return hook

    # -- the authentication gate --------------------------------------------------------------
    @property
    def accepting_authn(self) -> bool:
        """False while a :class:`ShutdownAuthn` buffer is full or after :meth:`stop`."""
        return not self._gated and not self._closed

    def authn_gate(self) -> None:
        """Call before starting a login: raises :class:`AuditUnavailable` (→ 503)
        when the login could not be audited. Logs a WARNING (at most every 10 s,
        with the number of refusals since the previous one)."""
        if self._gated or self._closed:
            self.refused += 1
            self._refused_since_log += 1
            now = self.clock.monotonic()
            if now - self._last_refusal_log >= _REFUSAL_LOG_INTERVAL:
                logger.warning(
                    "login refused with 503: audit trail unavailable (%s); %d refusal(s) "
                    "since the last report",
                    "pipeline stopped"
                    if self._closed
                    else "regulatory audit buffer full: " + ", ".join(sorted(self._gated)),
                    self._refused_since_log,
                )
                self._last_refusal_log = now
                self._refused_since_log = 0
            raise AuditUnavailable("audit trail unavailable: logins are paused")

    # -- overflow ---------------------------------------------------------------------------
    def _filled(self, st: SinkWorker) -> None:
        """``st`` just reached ``max_buffer``."""
        st.room.clear()
        if isinstance(st.policy, ShutdownAuthn) and st.name not in self._gated:
            self._gated.add(st.name)
            logger.warning(
                "audit buffer of sink %r is full (%d events): refusing new logins with 503 "
                "until it drains (ShutdownAuthn)",
                st.name,
                self.max_buffer,
            )
            self.metrics.audit_buffer_depth(self._max_depth())

    def _react(self, st: SinkWorker, event: AuthEvent, signal: int) -> None:
        """Do what :meth:`SinkBuffer.put` asked for (see :mod:`axess.audit.buffer`)."""
        if signal & WAKE:
            st.wake.set()
        if signal & FILLED:
            self._filled(st)
        if signal & OVERFLOW and not st.policy.keeps_everything:
            logger.warning(
                "audit buffer of sink %r is full (%d events): dropping the oldest (DropOldest)",
                st.name,
                self.max_buffer,
            )
        if signal & DROPPED:
            self.metrics.audit_dropped(1)
        if signal & SPILL:
            self._spill.overflow(st.name, event)

    def _emit_after_close(self, event: AuthEvent) -> None:
        self.emitted += 1
        self._spill.after_close(event)

    # -- delivery ----------------------------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` has begun (the pipeline takes no new work)."""
        return self._closed

    async def start(self) -> None:
        """Replay the recovery log (ahead of anything emitted so far), then start
        the workers and the retention loop. Idempotent. Raises
        :class:`ConfigurationError` if another running pipeline holds the
        recovery log (its lock is held from here until :meth:`stop`)."""
        if self._closed:
            raise RuntimeError("a stopped AuditPipeline cannot be restarted; build a new one")
        if self._started:
            return
        if self.recovery is not None:
            # Before anything is taken from the file: refused, nothing changed.
            self.recovery.acquire()
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        fallback = [st.name for st in self._sinks if st.regulatory] or list(self._by_name)
        woken = await self._spill.replay(fallback)
        if self.stopped:
            # stop() ran while the log was read: it saved what there was, and
            # workers started now would write to sinks it already closed.
            return
        for name in woken:
            self._by_name[name].wake.set()
        for st in self._sinks:
            st.start()
        if self.retention is not None:
            self.retention.bind(clock=self.clock)
            await self.retention.start()

    async def deliver_once(self) -> dict[str, Exception]:
        """Write what :meth:`emit` queued, straight to each sink, then close
        the sinks: for a pipeline that never starts, in a one-shot process
        (the ``axess user`` command) that must not take the running app's
        recovery log. Batches go in order, each sink on its own. Returns the
        sinks whose write failed, by name; their events stay undelivered
        (:meth:`undelivered`) for the caller to report. Call it once, at the
        end. Raises :class:`RuntimeError` once :meth:`start` or :meth:`stop`
        has run."""
        if self._started or self._closed:
            raise RuntimeError("deliver_once() is for a pipeline that never starts")
        failed: dict[str, Exception] = {}
        for st in self._sinks:
            while st.buffer.depth:
                batch = st.buffer.take()
                try:
                    await st.sink.write(batch)
                except Exception as exc:
                    failed[st.name] = exc
                    break
                st.buffer.delivered_batch()
            close = getattr(st.sink, "close", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    logger.exception("closing audit sink %r failed", st.name)
        return failed

    def undelivered(self) -> dict[str, list[AuthEvent]]:
        """The events each sink has not been given yet, oldest first, by sink
        name (sinks with none are left out)."""
        return {st.name: pending for st in self._sinks if (pending := st.buffer.pending())}

    async def _batch_written(self, st: SinkWorker, replayed: int) -> None:
        if self._spill.wants_refill(st.name):
            # Before the worker takes its next batch: new events must not
            # overtake the older ones still in the file.
            await self._spill.refill(st.name)
        if replayed:
            self._spill.replay_done()
        self._after_batch(st)
        await self._spill.sync_in_thread()

    def _monotonic(self) -> float:
        return self.clock.monotonic()

    def _report_depth(self) -> None:
        self.metrics.audit_buffer_depth(self._max_depth())

    def _after_batch(self, st: SinkWorker) -> None:
        buf = st.buffer
        # New events only: replayed ones are on disk already and never hold
        # logins back (they drain only after the file, so counting them kept
        # the gate closed for the whole replay).
        depth = buf.fresh
        if depth < self.max_buffer:
            st.room.set()
            if buf.room_again():
                logger.info(
                    "audit buffer of sink %r has room again (%d dropped, %d sent to the "
                    "recovery log so far)",
                    st.name,
                    buf.dropped,
                    buf.recovered,
                )
        if st.name in self._gated:
            if depth <= buf.resume_depth:
                self._gated.discard(st.name)
                logger.warning(
                    "audit buffer of sink %r drained to %d events: logins resume", st.name, depth
                )
        self.metrics.audit_buffer_depth(self._max_depth())
        self._progress.set()

    def _max_depth(self) -> int:
        return max(st.depth for st in self._sinks)

    async def flush(self) -> None:
        """Deliver everything buffered now, without lingering; returns when every
        buffer is empty and every sink has delivered its part of the replayed
        recovery log. Unbounded (a dead sink makes it wait): use :meth:`stop`
        for the bounded drain."""
        if not self._started or self._closed:
            raise RuntimeError("flush() needs a started, not stopped, pipeline")
        self._control.urgent += 1
        try:
            for st in self._sinks:
                st.wake.set()
            # A replaying sink's buffer is empty while its worker reads the
            # next chunk of the file: that is not done yet.
            while any(st.depth or self._spill.reading(st.name) for st in self._sinks):
                dead = [st.name for st in self._sinks if not st.running]
                if dead:
                    raise RuntimeError(f"audit worker(s) of {dead} are not running")
                self._progress.clear()
                await self._progress.wait()
        finally:
            self._control.urgent -= 1

    async def stop(self) -> None:
        """Drain for at most ``drain_timeout`` seconds, then write what is left
        to the recovery log (fsync) and stop. Idempotent; never raises for a
        sink's failure."""
        if self._closed:
            return
        self._control.stopping = True
        self._control.urgent += 1
        workers = [st.task for st in self._sinks if st.task is not None]
        try:
            timed_out = await self._drain(workers)
        except asyncio.CancelledError:
            # Shutdown itself was cancelled, at whichever wait: still never lose
            # what is buffered (a second stop() returns at once).
            self._closed = True
            for worker in workers:
                worker.cancel()
            self._spill.save_leftovers(timed_out=False, drain_timeout=self.drain_timeout)
            self._spill.sync()
            self._release()
            raise
        self._closed = True
        if not self._spill.save_leftovers(timed_out=timed_out, drain_timeout=self.drain_timeout):
            self._spill.replay_done()
        self._spill.sync()
        self._release()
        closes = {f"audit sink {st.name!r}": getattr(st.sink, "close", None) for st in self._sinks}
        await self._within_grace({what: close for what, close in closes.items() if close})
        self.metrics.audit_buffer_depth(0)
        logger.info(
            "audit pipeline stopped; events delivered since start: %s",
            ", ".join(f"{st.name}={st.buffer.delivered}" for st in self._sinks),
        )

    def _release(self) -> None:
        if self.recovery is not None:
            self.recovery.release()

    async def _drain(self, workers: list[asyncio.Task[None]]) -> bool:
        """Stop the retention loop, deliver for at most ``drain_timeout``, then
        cancel the workers still running and give them :data:`_CANCEL_GRACE`
        to end. True if the deadline passed with events left."""
        if self.retention is not None:
            await self._within_grace({"audit retention": self.retention.stop})
        for st in self._sinks:
            st.wake.set()
        pending = await self._wait(set(workers), self.drain_timeout)
        if not pending:
            return False
        # From here on nothing is delivered: new events go to the recovery log.
        self._closed = True
        for future in pending:
            future.cancel()
        await self._wait(pending, _CANCEL_GRACE)
        return True

    async def _wait(
        self, futures: set[asyncio.Future[Any]], seconds: float
    ) -> set[asyncio.Future[Any]]:
        """Wait until ``futures`` are done, at most ``seconds`` of the injected
        sleep; the ones still pending."""
        pending = set(futures)
        if not pending:
            return pending
        timer = asyncio.ensure_future(self._sleep(seconds))
        try:
            while pending and not timer.done():
                done, _ = await asyncio.wait({*pending, timer}, return_when=asyncio.FIRST_COMPLETED)
                pending -= done
        finally:
            timer.cancel()
        return pending

    async def _within_grace(self, calls: dict[str, Callable[[], Awaitable[object]]]) -> None:
        """Run ``calls`` (by name) together; give up on those still running after
        :data:`_CLOSE_GRACE` seconds (cancelled, not awaited: one that ignores
        cancellation must not hold shutdown either). Failures are logged."""

        async def call(fn: Callable[[], Awaitable[object]]) -> None:
            await fn()

        tasks: dict[asyncio.Future[Any], str] = {
            asyncio.ensure_future(call(fn)): what for what, fn in calls.items()
        }
        pending: set[asyncio.Future[Any]] = set(tasks)
        try:
            pending = await self._wait(pending, _CLOSE_GRACE)
        finally:
            for task in pending:
                task.cancel()
                # Nobody awaits it any more: consume its outcome when it ends.
                task.add_done_callback(_consume)
        for task, what in tasks.items():
            if task in pending:
                logger.warning(
                    "%s: close did not finish within %gs; shutdown goes on without it",
                    what,
                    _CLOSE_GRACE,
                )
            elif not task.cancelled() and task.exception() is not None:
                logger.warning("%s: close failed (%s)", what, type(task.exception()).__name__)

    # -- observation --------------------------------------------------------------------------
    def stats(self) -> list[SinkStats]:
        return [
            SinkStats(
                name=st.name,
                regulatory=st.regulatory,
                policy=type(st.policy).__name__,
                accepted=st.buffer.accepted,
                delivered=st.buffer.delivered,
                dropped=st.buffer.dropped,
                recovered=st.buffer.recovered,
                depth=st.depth,
                consecutive_failures=st.streak,
                failures=st.failures,
                last_error=st.last_error,
            )
            for st in self._sinks
        ]

    def sink_stats(self, name: str) -> SinkStats:
        for s in self.stats():
            if s.name == name:
                return s
        raise KeyError(name)

    def health_checks(self) -> dict[str, SinkHealth]:
        """One health check per sink, by sink name (register them with
        ``critical=sink.regulatory``)."""
        return {st.name: self._health_check(st) for st in self._sinks}

    def _health_check(self, st: SinkWorker) -> SinkHealth:
        return SinkHealth(lambda: self._sink_status(st))

    def register_health(self, composite: CompositeHealthCheck, *, prefix: str = "audit.") -> None:
        """Add one check per sink to ``composite`` (``audit.<sink>``), critical
        for regulatory sinks."""
        for st in self._sinks:
            composite.add(prefix + st.name, self._health_check(st), critical=st.regulatory)

    def _sink_status(self, st: SinkWorker) -> HealthStatus:
        # A hung sink reports no batch and no retry: the gauge would stay
        # where its last batch left it while events pile up.
        if not self._closed:
            self._report_depth()
        return sink_status(st, closed=self._closed, gated=st.name in self._gated)

    async def check_health(self) -> HealthStatus:
        """Unhealthy while logins are paused or a regulatory sink fails or is
        not started; degraded while an analytics sink fails, drops or is not
        started."""
        return worst_status(self._sink_status(st) for st in self._sinks)

    async def query_events(
        self, tenant: str | None, filters: AuditQuery | None = None
    ) -> list[AuthEvent]:
        """Events of ``tenant`` from the first sink that can be queried (the
        store sink). See :func:`axess.audit.sinks.query_events`."""
        for st in self._sinks:
            query = getattr(st.sink, "query_events", None)
            if query is not None:
                result: list[AuthEvent] = await query(tenant, filters)
                return result
        raise ConfigurationError("no queryable audit sink (add a StoreSink)")

    def __repr__(self) -> str:
        return f"AuditPipeline(sinks={[st.name for st in self._sinks]})"
