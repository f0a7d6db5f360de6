"""One sink's bounded buffer and the overflow policies (book: Audit, "When a
buffer is full").

Pure: no I/O, no event loop, no logging. :meth:`SinkBuffer.put` applies the
sink's policy and answers with flags saying what the caller has to do (wake
the worker, close the authentication gate, count a drop, write the event to
the recovery log); the pipeline does it.

Counts, per sink, at all times::

    accepted = delivered + dropped + recovered + depth

so once a buffer is empty ``emitted = delivered + recovered + dropped``
(``dropped`` only under :class:`DropOldest`, or when the recovery log
cannot take an event).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Final

from axess.audit.events import AuthEvent
from axess.errors import ConfigurationError


# -- overflow policies ------------------------------------------------------------------
class OverflowPolicy:
    """What happens when a sink's buffer holds ``max_buffer`` events."""

    __slots__ = ()

    #: True if the policy never discards an event.
    keeps_everything: bool = True


@dataclass(frozen=True, slots=True)
class DropOldest(OverflowPolicy):
    """A new event pushes out the oldest buffered new one (counted in ``audit_dropped``).

    The default for analytics sinks. Events already handed to the sink (the
    batch in flight) and events replayed from the recovery log are never
    dropped; if every new event is in flight the new event itself is dropped.
    """

    keeps_everything = False


@dataclass(frozen=True, slots=True)
class Block(OverflowPolicy):
    """``await pipeline.emit_wait(event)`` waits for room, at most ``timeout`` seconds,
    then raises :class:`~axess.audit.pipeline.AuditUnavailable` without
    accepting the event.

    ``emit()`` cannot wait: on a full buffer it keeps the event beyond
    ``max_buffer`` (see :attr:`~axess.audit.pipeline.AuditPipeline.hard_limit`).
    """

    timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.timeout >= 0:
            raise ConfigurationError("Block(timeout=...) must be a non-negative number of seconds")


@dataclass(frozen=True, slots=True)
class ShutdownAuthn(OverflowPolicy):
    """While the buffer is full, new logins are refused with 503 (no
    authentication without an audit trail); other events are kept beyond
    ``max_buffer``. Logins resume once the buffer is down to ``resume_at``
    (a fraction of ``max_buffer``; default half). The regulatory default.
    """

    resume_at: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.resume_at < 1:
            raise ConfigurationError("ShutdownAuthn(resume_at=...) must be in [0, 1)")


# -- what put() asks of the caller (bit flags; 0: nothing) -------------------------------
#: The worker should look: first buffered event, a full batch, or an event kept
#: beyond ``max_buffer``.
WAKE: Final = 1
#: The buffer just reached ``max_buffer``: no room (``Block`` waits,
#: ``ShutdownAuthn`` closes the authentication gate).
FILLED: Final = 2
#: First event past ``max_buffer`` since the buffer last had room.
OVERFLOW: Final = 4
#: An event was dropped (``DropOldest``); already counted in ``dropped``.
DROPPED: Final = 8
#: Past the hard limit: the event is *not* buffered. The caller writes it to
#: the recovery log and counts it in ``recovered`` (or ``dropped``).
SPILL: Final = 16


class SinkBuffer:
    """The events waiting for one sink, the batch in flight, and the counters.

    ``max_buffer`` new events (the batch in flight included) fit; past that
    the ``policy`` decides. Events replayed from the recovery log are already
    safe on disk: they never make the buffer full (the replay alone never
    closes the authentication gate), they only count toward the memory cap.
    Policies that keep everything hold up to ``hard_limit`` events in memory
    (replayed ones included), then ask for a spill.
    """

    __slots__ = (
        "batch_size",
        "delivered",
        "dropped",
        "events",
        "hard_limit",
        "inflight",
        "max_buffer",
        "overflowing",
        "policy",
        "recovered",
        "replay_inflight",
        "replay_left",
        "resume_depth",
        "spilling",
    )

    def __init__(
        self,
        policy: OverflowPolicy,
        *,
        max_buffer: int,
        batch_size: int,
        hard_limit: int | None = None,
    ) -> None:
        if max_buffer < 1 or not 1 <= batch_size <= max_buffer:
            raise ConfigurationError("need max_buffer >= 1 and 1 <= batch_size <= max_buffer")
        self.policy = policy
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.hard_limit = 2 * max_buffer if hard_limit is None else hard_limit
        #: Depth at or below which a closed authentication gate opens again.
        resume_at = policy.resume_at if isinstance(policy, ShutdownAuthn) else 0.5
        self.resume_depth = resume_at * max_buffer
        self.events: deque[AuthEvent] = deque()
        #: The batch handed to the sink (never dropped).
        self.inflight: list[AuthEvent] = []
        self.delivered = 0
        self.dropped = 0
        self.recovered = 0
        #: True from the first event past ``max_buffer`` until there is room again.
        self.overflowing = False
        #: Replayed events still in ``events`` (at its front) / in ``inflight``.
        self.replay_left = 0
        self.replay_inflight = 0
        #: Set by the recovery spill once an event of this sink went to the
        #: recovery log: every later one goes there too (see :meth:`put`).
        self.spilling = False

    def __repr__(self) -> str:
        return (
            f"SinkBuffer({type(self.policy).__name__}, depth={self.depth}, "
            f"max_buffer={self.max_buffer})"
        )

    @property
    def depth(self) -> int:
        """Events not delivered yet: buffered plus in flight."""
        return len(self.events) + len(self.inflight)

    @property
    def accepted(self) -> int:
        """Events this buffer took: ``delivered + dropped + recovered + depth``."""
        return self.delivered + self.dropped + self.recovered + self.depth

    @property
    def fresh(self) -> int:
        """New events not delivered yet (``depth`` without the replayed ones):
        what fills the buffer and, under :class:`ShutdownAuthn`, closes and
        reopens the authentication gate."""
        return self.depth - self.replay_left - self.replay_inflight

    @property
    def full(self) -> bool:
        return self.fresh >= self.max_buffer

    # -- producing ------------------------------------------------------------------------
    def put(self, event: AuthEvent) -> int:
        """Take ``event``; what the caller must do, as flags (see ``WAKE`` …).

        On the hot path of ``emit()`` (once per sink and event): keep it flat.
        """
        if self.spilling:
            # Events of this sink already wait in the recovery log: a later one
            # delivered now would overtake them (they come at the next start).
            return SPILL
        events = self.events
        n = len(events) + 1
        depth = n + len(self.inflight)  # with the new event
        # Replayed events are not counted: they are on disk already, and new
        # events queued behind them must not close the gate on their account.
        fresh = depth - self.replay_left - self.replay_inflight
        if fresh <= self.max_buffer:
            events.append(event)
            signal = WAKE if n == 1 or n == self.batch_size else 0
            return signal if fresh < self.max_buffer else signal | FILLED
        # Full: the policy decides.
        signal = 0
        if not self.overflowing:
            self.overflowing = True
            signal = FILLED | OVERFLOW
        if not self.policy.keeps_everything:
            # The oldest *new* event: replayed ones (at the front) are kept,
            # they would be lost from the file, and dropping them would let
            # new events into a batch ahead of the rest of the file.
            if len(events) > self.replay_left:
                del events[self.replay_left]
                events.append(event)
            self.dropped += 1
            return signal | DROPPED
        if depth <= self.hard_limit:
            events.append(event)
            return signal | WAKE
        return signal | SPILL

    def prepend(self, events: Iterable[AuthEvent]) -> int:
        """Queue replayed ``events`` (in their order) after the replayed events
        still waiting and ahead of everything else; how many."""
        batch = list(events)
        if batch:
            head = [self.events.popleft() for _ in range(self.replay_left)]
            self.events.extendleft(reversed(head + batch))
            self.replay_left += len(batch)
        return len(batch)

    def replayed_pending(self) -> list[AuthEvent]:
        """The replayed events not delivered yet, oldest first."""
        return [*self.inflight[: self.replay_inflight], *islice(self.events, self.replay_left)]

    def drop_replayed(self) -> int:
        """Forget the replayed events not delivered yet (the caller saved and
        counts them); how many."""
        count = self.replay_inflight + self.replay_left
        del self.inflight[: self.replay_inflight]
        for _ in range(self.replay_left):
            self.events.popleft()
        self.replay_inflight = self.replay_left = 0
        return count

    # -- delivering -----------------------------------------------------------------------
    def take(self) -> list[AuthEvent]:
        """Move the next batch (at most ``batch_size``, oldest first) in flight."""
        events = self.events
        count = min(self.batch_size, len(events))
        self.inflight = [events.popleft() for _ in range(count)]
        self.replay_inflight = min(self.replay_left, count)
        self.replay_left -= self.replay_inflight
        return self.inflight

    def delivered_batch(self) -> int:
        """The batch in flight was written: count it; how many of its events
        were replayed ones."""
        self.delivered += len(self.inflight)
        self.inflight = []
        replayed, self.replay_inflight = self.replay_inflight, 0
        return replayed

    def room_again(self) -> bool:
        """After a batch: True once, when an overflowing buffer has room again."""
        if self.overflowing and self.fresh < self.max_buffer:
            self.overflowing = False
            return True
        return False

    @property
    def replaying(self) -> bool:
        """Replayed events are still waiting or in flight."""
        return bool(self.replay_left or self.replay_inflight)

    # -- leftovers ------------------------------------------------------------------------
    def pending(self) -> list[AuthEvent]:
        """Every undelivered event, the batch in flight first."""
        return [*self.inflight, *self.events]

    def clear(self) -> int:
        """Forget every undelivered event (the caller counted them); how many."""
        depth = self.depth
        self.events.clear()
        self.inflight = []
        self.replay_left = 0
        self.replay_inflight = 0
        return depth
