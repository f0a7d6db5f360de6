"""The per-sink buffer and its overflow policies (axess.audit.buffer): pure,
no event loop, no I/O (book: Audit, "When a buffer is full")."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
from axess.audit.events import AuthEvent
from axess.clock import MockClock, SeededRandom
from axess.errors import ConfigurationError


def events(n: int) -> list[AuthEvent]:
    clock, rnd = MockClock(), SeededRandom(7)
    out = []
    for i in range(n):
        clock.advance(0.001)
        out.append(AuthEvent.create("logout", clock=clock, random=rnd, user=f"u{i}"))
    return out


def ids(evs: list[AuthEvent]) -> list[str]:
    return [e.id for e in evs]


def check_counts(buf: SinkBuffer, accepted: int) -> None:
    assert buf.accepted == accepted
    assert accepted == buf.delivered + buf.dropped + buf.recovered + buf.depth


def test_public_import_paths_are_kept() -> None:
    import axess.audit as audit
    import axess.audit.pipeline as pipeline

    for name in ("Block", "DropOldest", "OverflowPolicy", "ShutdownAuthn"):
        assert getattr(audit, name) is getattr(pipeline, name)
    assert audit.ShutdownAuthn is ShutdownAuthn


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        SinkBuffer(DropOldest(), max_buffer=0, batch_size=1)
    with pytest.raises(ConfigurationError):
        SinkBuffer(DropOldest(), max_buffer=4, batch_size=5)
    with pytest.raises(ConfigurationError):
        Block(timeout=-1)
    with pytest.raises(ConfigurationError):
        ShutdownAuthn(resume_at=1.0)
    assert DropOldest().keeps_everything is False
    assert Block().keeps_everything and ShutdownAuthn().keeps_everything


def test_first_event_and_full_batch_wake_the_worker() -> None:
    buf = SinkBuffer(ShutdownAuthn(), max_buffer=10, batch_size=3)
    e = events(4)
    assert buf.put(e[0]) == WAKE
    assert buf.put(e[1]) == 0
    assert buf.put(e[2]) == WAKE  # a full batch
    assert buf.put(e[3]) == 0
    assert ids(list(buf.events)) == ids(e)
    check_counts(buf, 4)


def test_batches_leave_in_emission_order_and_are_counted_once_written() -> None:
    buf = SinkBuffer(ShutdownAuthn(), max_buffer=10, batch_size=3)
    e = events(7)
    for event in e:
        buf.put(event)
    batch = buf.take()
    assert ids(batch) == ids(e[:3])
    assert buf.depth == 7  # in flight still counts
    assert buf.delivered_batch() == 0
    assert (buf.delivered, buf.depth) == (3, 4)
    assert ids(buf.take()) == ids(e[3:6])
    buf.delivered_batch()
    assert ids(buf.take()) == ids(e[6:])
    buf.delivered_batch()
    assert (buf.delivered, buf.depth) == (7, 0)
    check_counts(buf, 7)


def test_reaching_max_buffer_says_filled_once() -> None:
    buf = SinkBuffer(ShutdownAuthn(), max_buffer=3, batch_size=3)
    e = events(3)
    buf.put(e[0])
    buf.put(e[1])
    assert buf.put(e[2]) == WAKE | FILLED
    assert buf.full


def test_drop_oldest_at_capacity_drops_the_oldest_buffered_event() -> None:
    buf = SinkBuffer(DropOldest(), max_buffer=3, batch_size=1)
    e = events(5)
    for event in e[:3]:
        buf.put(event)
    assert buf.put(e[3]) == FILLED | OVERFLOW | DROPPED
    assert buf.put(e[4]) == DROPPED  # the overflow is reported once
    assert ids(list(buf.events)) == ids(e[2:])
    assert buf.dropped == 2 and buf.depth == 3
    check_counts(buf, 5)


def test_drop_oldest_never_drops_the_batch_in_flight() -> None:
    buf = SinkBuffer(DropOldest(), max_buffer=2, batch_size=2)
    e = events(3)
    buf.put(e[0])
    buf.put(e[1])
    assert ids(buf.take()) == ids(e[:2])
    assert buf.put(e[2]) & DROPPED  # everything is in flight: the new event goes
    assert ids(buf.inflight) == ids(e[:2]) and not buf.events
    buf.delivered_batch()
    check_counts(buf, 3)
    assert (buf.delivered, buf.dropped) == (2, 1)


@pytest.mark.parametrize("policy", [ShutdownAuthn(), Block(timeout=1.0)])
def test_keep_everything_policies_keep_up_to_the_hard_limit_then_spill(
    policy: OverflowPolicy,
) -> None:
    buf = SinkBuffer(policy, max_buffer=2, batch_size=2)
    assert buf.hard_limit == 4
    e = events(6)
    signals = [buf.put(event) for event in e]
    assert signals[:2] == [WAKE, WAKE | FILLED]
    assert signals[2] == FILLED | OVERFLOW | WAKE
    assert signals[3] == WAKE
    assert signals[4:] == [SPILL, SPILL]  # not buffered: the caller spills them
    assert ids(list(buf.events)) == ids(e[:4])
    assert buf.dropped == 0
    buf.recovered += 2  # what the pipeline does once the recovery log took them
    check_counts(buf, 6)


def test_room_again_after_a_batch_ends_the_overflow_once() -> None:
    buf = SinkBuffer(ShutdownAuthn(), max_buffer=2, batch_size=2)
    for event in events(3):
        buf.put(event)
    assert buf.overflowing and not buf.room_again()
    buf.take()
    buf.delivered_batch()
    assert buf.room_again() is True
    assert buf.room_again() is False
    assert not buf.overflowing


def test_resume_depth_follows_the_policy() -> None:
    gate = SinkBuffer(ShutdownAuthn(resume_at=0.25), max_buffer=100, batch_size=1)
    assert gate.resume_depth == 25
    assert SinkBuffer(Block(), max_buffer=100, batch_size=1).resume_depth == 50


def test_replayed_events_go_first_and_are_tracked_until_written() -> None:
    buf = SinkBuffer(ShutdownAuthn(), max_buffer=10, batch_size=2)
    e = events(5)
    buf.put(e[3])
    buf.put(e[4])
    assert buf.prepend(e[:3]) == 3
    assert ids(list(buf.events)) == ids(e)
    assert buf.replaying
    buf.take()
    assert buf.delivered_batch() == 2
    buf.take()  # one replayed, one new
    assert buf.delivered_batch() == 1
    assert not buf.replaying
    check_counts(buf, 5)


def test_replayed_events_never_fill_the_buffer() -> None:
    # Replayed events are on disk already: only new ones fill the buffer
    # (and close the authentication gate), even queued behind a full replay.
    buf = SinkBuffer(ShutdownAuthn(), max_buffer=4, batch_size=4)
    e = events(8)
    buf.prepend(e[:4])
    assert not buf.full and buf.fresh == 0
    assert [buf.put(x) & FILLED for x in e[4:8]] == [0, 0, 0, FILLED]
    assert buf.full and buf.depth == 8
    buf.take()  # the replayed batch: still full of new events
    buf.delivered_batch()
    assert buf.full
    buf.take()
    buf.delivered_batch()
    assert not buf.full
    check_counts(buf, 8)


def test_drop_oldest_drops_the_oldest_new_event_never_a_replayed_one() -> None:
    buf = SinkBuffer(DropOldest(), max_buffer=2, batch_size=1)
    e = events(5)
    buf.prepend(e[:2])
    for x in e[2:4]:
        assert not buf.put(x) & DROPPED
    assert buf.put(e[4]) & DROPPED  # drops e[2], the oldest new event
    assert buf.replay_left == 2
    assert ids(list(buf.events)) == ids(e[:2] + e[3:])
    assert buf.dropped == 1
    check_counts(buf, 5)


def test_pending_and_clear_hand_over_every_undelivered_event() -> None:
    buf = SinkBuffer(ShutdownAuthn(), max_buffer=10, batch_size=2)
    e = events(5)
    for event in e:
        buf.put(event)
    buf.take()
    assert ids(buf.pending()) == ids(e)  # in flight first, then buffered
    assert buf.clear() == 5
    assert buf.depth == 0 and not buf.replaying


@settings(max_examples=200, deadline=None)
@given(
    policy=st.sampled_from([DropOldest(), ShutdownAuthn(), Block(timeout=0.0)]),
    max_buffer=st.integers(1, 6),
    ops=st.lists(st.sampled_from(["put", "take", "write", "spill_fails"]), max_size=60),
)
def test_counts_always_add_up(policy: OverflowPolicy, max_buffer: int, ops: list[str]) -> None:
    """emitted = delivered + recovered + dropped + depth, whatever happens; and
    once everything is written, emitted = delivered + recovered + dropped."""
    buf = SinkBuffer(policy, max_buffer=max_buffer, batch_size=max(1, max_buffer // 2))
    pool = iter(events(len(ops)))
    emitted = 0
    for op in ops:
        if op in ("put", "spill_fails"):
            emitted += 1
            signal = buf.put(next(pool))
            if signal & SPILL:
                if op == "spill_fails":
                    buf.dropped += 1
                else:
                    buf.recovered += 1
            assert buf.depth <= buf.hard_limit
            if not policy.keeps_everything:
                assert buf.depth <= max_buffer
                assert buf.recovered == 0
        elif op == "take" and not buf.inflight:
            buf.take()
        elif op == "write" and buf.inflight:
            buf.delivered_batch()
        check_counts(buf, emitted)
    if buf.inflight:
        buf.delivered_batch()
    while buf.events:
        buf.take()
        buf.delivered_batch()
    assert emitted == buf.delivered + buf.recovered + buf.dropped
