"""The generic cell rate algorithm (GCRA), pure: no I/O, no clock, no imports
from the rest of axess.

A limit of ``count`` requests per ``period`` with a burst of ``burst`` is
kept as one number per key, the *theoretical arrival time* (TAT): the
instant at which the bucket would be full again if nothing else arrived.
Each request pushes the TAT ``emission`` further (``period / count``); a
request conforms when the pushed TAT lies at most ``capacity`` (``burst *
emission``) ahead of now. That is a token bucket of ``burst`` tokens
refilled one every ``emission``, kept exactly, with no window edges.

All times are integer microseconds. ``emission`` is rounded *up* to a whole
microsecond, so the implemented rate is never above the configured one. The
same arithmetic runs in Valkey (``axess/stores/lua/gcra.lua``); it uses only
integers below 2**53, so both give identical answers.

Guarantee (checked by property tests): over any interval of length ``L``
(inclusive of both ends), at most ``burst + L / emission`` cost units are
admitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

US: Final = 1_000_000


#: What one limit says about one check, as a plain tuple (this is the hot
#: path): ``(remaining, reset_us, retry_us)``. ``remaining``: cost units the
#: client may still spend right now (after this request when it was
#: admitted). ``reset_us``: time until the bucket is full again.
#: ``retry_us``: time until this request would conform (0 when it does now).
LimitState = tuple[int, int, int]


def emission_us(count: int, period_s: int) -> int:
    """Microseconds between two requests at the sustained rate (rounded up)."""
    if count < 1 or period_s < 1:
        raise ValueError("count and period must be >= 1")
    return -(-period_s * US // count)


def check_one(
    tat: int, now: int, emission: int, capacity: int, cost: int = 1
) -> tuple[bool, int, LimitState]:
    """One limit: ``(allowed, new_tat, state)``; ``new_tat`` is ``tat`` when refused."""
    base = tat if tat > now else now
    ahead = base - now + cost * emission
    if ahead <= capacity:
        return True, now + ahead, ((capacity - ahead) // emission, ahead, 0)
    left = (capacity - base + now) // emission
    return False, tat, (left if left > 0 else 0, base - now, ahead - capacity)


def states_from(
    allowed: bool, aheads: Sequence[int], params: Sequence[tuple[int, int, int]]
) -> list[LimitState]:
    """The states of a check from each limit's *ahead* value: how far its TAT
    is ahead of now after the check (the new TAT when admitted, the stored
    one when refused). The Valkey script returns only these."""
    states: list[LimitState] = []
    if allowed:
        for i, (emission, capacity, _) in enumerate(params):
            ahead = aheads[i]
            states.append(((capacity - ahead) // emission, ahead, 0))
        return states
    for i, (emission, capacity, cost) in enumerate(params):
        held = aheads[i]
        left = (capacity - held) // emission
        retry = held + cost * emission - capacity
        states.append((left if left > 0 else 0, held, retry if retry > 0 else 0))
    return states


def check(
    tats: Sequence[int], now: int, params: Sequence[tuple[int, int, int]]
) -> tuple[bool, list[int], list[LimitState]]:
    """Check one request against several limits at once.

    ``tats``: the stored TAT of each limit (0 when absent); ``params``:
    ``(emission, capacity, cost)`` per limit. The request is admitted only
    if it conforms to every limit; then (and only then) every TAT advances.

    Returns ``(allowed, new_tats, states)``; ``new_tats`` equals ``tats``
    when the request is refused (a refused request costs nothing).
    """
    if len(tats) != len(params):
        raise ValueError("one TAT per limit")
    aheads: list[int] = []
    allowed = True
    for i, (emission, capacity, cost) in enumerate(params):
        tat = tats[i]
        ahead = (tat if tat > now else now) - now + cost * emission
        aheads.append(ahead)
        if ahead > capacity:
            allowed = False
    if allowed:
        return True, [now + a for a in aheads], states_from(True, aheads, params)
    held = [a - p[2] * p[0] for a, p in zip(aheads, params, strict=True)]
    return False, list(tats), states_from(False, held, params)
