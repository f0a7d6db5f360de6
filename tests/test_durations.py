"""Durations in settings: finite, positive and at most a century, checked
when the setting is made. Infinity or 1e20 seconds would reach the stores
as an expiry that SQLite cannot hold (a raw OverflowError on every login
or request), PostgreSQL and MySQL refuse, and memory keeps."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from axess import ConfigurationError, SessionConfig
from axess.authn import Lever, LockoutPolicy
from axess.clock import MAX_DURATION
from axess.errors import StoreError
from axess.testing.contract import make_record

TOO_LONG = [math.inf, math.nan, 1e20, MAX_DURATION + 1]


@pytest.mark.parametrize("value", [*TOO_LONG, 0, -1])
def test_session_lifetimes(value: float) -> None:
    with pytest.raises(ConfigurationError, match="max_age"):
        SessionConfig(max_age=value)
    with pytest.raises(ConfigurationError, match="idle_timeout"):
        SessionConfig(idle_timeout=value, touch_interval=0)


@pytest.mark.parametrize("value", TOO_LONG)
def test_lockout_durations(value: float) -> None:
    with pytest.raises(ConfigurationError, match="trusted_origin_ttl"):
        LockoutPolicy(trusted_origin_ttl=value)
    for field in ("window", "lock_for"):
        with pytest.raises(ConfigurationError, match=rf"Lever\.{field}"):
            Lever(5, **{"window": 60, "lock_for": 60, field: value})
    with pytest.raises(ConfigurationError, match=r"Lever\.max_lock"):
        Lever(5, 60, 60, max_lock=value)


def test_the_longest_durations_are_accepted() -> None:
    assert SessionConfig(max_age=MAX_DURATION).max_age == MAX_DURATION
    assert LockoutPolicy(trusted_origin_ttl=0).trusted_origin_ttl == 0
    assert Lever(5, MAX_DURATION, 60, max_lock=MAX_DURATION).max_lock == MAX_DURATION


async def test_a_time_no_sql_store_can_hold_is_a_store_error(sql_store: Any) -> None:
    """For code that calls a store directly: the same StoreError on every
    dialect, never a driver's OverflowError."""
    record = make_record("far", created=time.time(), ttl=1e16)
    with pytest.raises(StoreError):
        await sql_store.create_session(record)


@pytest.mark.parametrize("value", [0, -3, 2.5, True, 86_401])
def test_retry_after_is_whole_seconds_from_one(value: Any) -> None:
    """It becomes a Retry-After header: whole seconds, at least 1 (0 would
    ask clients to retry at once during the outage it announces)."""
    with pytest.raises(ConfigurationError, match="retry_after"):
        SessionConfig(retry_after=value)
    assert SessionConfig(retry_after=1).retry_after == 1
