"""GCRA properties (hypothesis, MockClock) and limit-string parsing."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from axess import ConfigurationError, MockClock
from axess.ratelimit import Limit, MemoryBucketStore, RateLimit, gcra, parse_limits
from axess.ratelimit.limits import GLOB_MAX_PATH, _path_regex

US = 1_000_000

limits = st.builds(
    lambda count, period, burst: (count, period, burst),
    st.integers(1, 50),
    st.sampled_from([1, 2, 7, 60, 3600]),
    st.integers(1, 20),
)
# Gaps between arrivals in whole microseconds: bursts (0), near the
# emission interval, and long pauses.
gaps = st.lists(
    st.one_of(st.just(0), st.integers(0, 2 * US), st.integers(0, 4000 * US)),
    min_size=1,
    max_size=80,
)


def drive(
    limit: Limit, arrivals: list[int], cost: int = 1
) -> tuple[list[int], list[tuple[bool, int, int, int]]]:
    """Send a request after each gap through a MemoryBucketStore on a MockClock."""
    clock = MockClock()
    store = MemoryBucketStore(clock=clock)
    rule = RateLimit(limit, name="p", cost=cost)
    times: list[int] = []
    out: list[tuple[bool, int, int, int]] = []
    for gap in arrivals:
        clock.advance(gap / US)
        allowed, states = store.check_sync([("p:k", rule)])
        now = round(clock.monotonic() * US)
        times.append(now)
        remaining, reset_us, retry_us = states[0]
        out.append((allowed, remaining, reset_us, retry_us))
    return times, out


@settings(max_examples=300, deadline=None)
@given(limits, gaps, st.integers(1, 3))
def test_never_more_than_burst_plus_rate_times_elapsed(
    spec: tuple[int, int, int], arrivals: list[int], cost: int
) -> None:
    count, period, burst = spec
    assume(cost <= burst)
    limit = Limit(count, period, burst)
    times, results = drive(limit, arrivals, cost)
    admitted = [t for t, r in zip(times, results, strict=True) if r[0]]
    # Any window [admitted[i], admitted[j]]: the cost admitted in it is at
    # most burst + rate * elapsed (exact rational check).
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            spent = (j - i + 1) * cost
            elapsed = admitted[j] - admitted[i]
            assert (spent - burst) * period * US <= elapsed * count, (i, j, spent, elapsed)


@settings(max_examples=300, deadline=None)
@given(limits, gaps)
def test_conformance_restored_exactly_after_retry(
    spec: tuple[int, int, int], arrivals: list[int]
) -> None:
    count, period, burst = spec
    limit = Limit(count, period, burst)
    clock = MockClock()
    store = MemoryBucketStore(clock=clock)
    rule = RateLimit(limit, name="p")
    for gap in arrivals:
        clock.advance(gap / US)
        store.check_sync([("p:k", rule)])
    # Exhaust what is left right now.
    while store.check_sync([("p:k", rule)])[0]:
        pass
    allowed, states = store.check_sync([("p:k", rule)])
    assert not allowed
    remaining, _, retry_us = states[0]
    assert remaining == 0
    assert 0 < retry_us <= limit.emission_us
    clock.advance((retry_us - 1) / US)
    assert not store.check_sync([("p:k", rule)])[0]
    clock.advance(1 / US)
    assert store.check_sync([("p:k", rule)])[0]
    # The bucket is now exactly full: the next slot is one emission interval away.
    allowed, states = store.check_sync([("p:k", rule)])
    assert not allowed and states[0][2] == limit.emission_us
    clock.advance(limit.emission_us / US)
    assert store.check_sync([("p:k", rule)])[0]


@settings(max_examples=200, deadline=None)
@given(limits, gaps)
def test_multi_limit_check_agrees_with_single(
    spec: tuple[int, int, int], arrivals: list[int]
) -> None:
    count, period, burst = spec
    limit = Limit(count, period, burst)
    params = (limit.emission_us, limit.capacity_us, 1)
    tat_one, tats, now = 0, [0], 10 * US
    for gap in arrivals:
        now += gap
        ok_one, tat_one, state_one = gcra.check_one(tat_one, now, *params)
        ok, tats, states = gcra.check(tats, now, [params])
        assert (ok, [tat_one], [state_one]) == (ok_one, tats, states)


def test_refused_request_costs_nothing_and_limits_are_all_or_nothing() -> None:
    fast, slow = Limit.parse("2/second"), Limit.parse("3/hour")
    params = [(lim.emission_us, lim.capacity_us, 1) for lim in (fast, slow)]
    now = 100 * US
    tats = [0, 0]
    ok, tats, _ = gcra.check(tats, now, params)
    ok2, tats, _ = gcra.check(tats, now, params)
    assert ok and ok2
    ok3, after, states = gcra.check(tats, now, params)
    assert not ok3 and after == tats  # the hourly limit still had room: not consumed
    assert states[0] == (0, US, gcra.US // 2)  # fast: full for 1 s, next slot in 0.5 s
    assert states[1][2] == 0 and states[1][0] == 1  # slow: not violated, 1 left


def test_emission_rounds_up() -> None:
    assert gcra.emission_us(3, 1) == 333_334
    assert gcra.emission_us(10, 60) == 6 * US
    with pytest.raises(ValueError):
        gcra.emission_us(0, 1)


# -- limit strings ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "count", "period", "burst"),
    [
        ("10/minute", 10, 60, 10),
        ("100/hour;burst=20", 100, 3600, 20),
        ("5/30s", 5, 30, 5),
        ("1000 / 1 day", 1000, 86400, 1000),
        ("3/SECOND", 3, 1, 3),
        ("7/2hours ; burst = 1", 7, 7200, 1),
        ("1/d", 1, 86400, 1),
        ("60/min;burst=120", 60, 60, 120),
    ],
)
def test_limit_parse(text: str, count: int, period: int, burst: int) -> None:
    limit = Limit.parse(text)
    assert (limit.count, limit.period, limit.burst) == (count, period, burst)
    assert Limit.parse(str(limit)) == limit


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected '<count>/<period>'"),
        ("10", "expected '<count>/<period>'"),
        ("ten/minute", "expected '<count>/<period>'"),
        ("10/fortnight", "unknown period 'fortnight'"),
        ("0/minute", "count must be between"),
        ("10/0minutes", "multiplier must be >= 1"),
        ("10/minute;burst=0", "burst must be between"),
        ("10/minute;burst=x", "bad parameter"),
        ("10/minute;rate=3", "unknown parameter 'rate'"),
        ("10/minute;burst=2;burst=3", "burst given twice"),
        ("10/400days", "period must be between"),
        ("1/day;burst=1000", "longer than 366 days to refill"),
        ("-1/minute", "expected '<count>/<period>'"),
        ("10/minute" + " " * 300, "too long"),
        ("\uff11\uff10/minute", "expected '<count>/<period>'"),  # full-width digits
    ],
)
def test_limit_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Limit.parse(text)


@settings(max_examples=500, deadline=None)
@given(
    st.text(max_size=60) | st.from_regex(r"\d{1,12}\s?/\s?\d{0,4}\s?[a-z]{1,8}(;burst=\d{1,12})?")
)
def test_any_limit_string_parses_or_raises_value_error(text: str) -> None:
    try:
        limit = Limit.parse(text)
    except ValueError:
        return
    assert limit.capacity_us <= 366 * 86400 * US
    assert 2 * (10**15) + limit.capacity_us < 2**53  # exact in Lua's doubles


def test_parse_limits_several() -> None:
    parsed = parse_limits("10/minute, 100/hour;burst=20", Limit.parse("1/day"))
    assert [str(x) for x in parsed] == ["10/1m", "100/1h;burst=20", "1/1d"]
    with pytest.raises(ValueError, match="given twice"):
        parse_limits("10/minute", "10/60s")
    with pytest.raises(ValueError, match="empty"):
        parse_limits(" , ")
    with pytest.raises(ValueError, match="not int"):
        parse_limits(10)  # type: ignore[arg-type]


def test_rule_validation() -> None:
    with pytest.raises(ConfigurationError, match="unknown period"):
        RateLimit("10/fortnight")
    with pytest.raises(ConfigurationError, match="invalid rate-limit name"):
        RateLimit("10/minute", name="bad name")
    with pytest.raises(ConfigurationError, match="on_store_error"):
        RateLimit("10/minute", on_store_error="maybe")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="exceeds a burst"):
        RateLimit("10/minute;burst=2", cost=3)
    with pytest.raises(ConfigurationError, match="must start with"):
        RateLimit("10/minute", paths=["login"])
    assert RateLimit("1/s", paths=["/auth/login"], key="login").name == "auth-login-login"
    assert RateLimit("1/s").name == "all-ip"
    multi = RateLimit("10/minute", "100/hour", "1000/day", name="api")
    assert multi.policy_names() == ("api-1m", "api-1h", "api-1d")


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        ("/login", "/login", True),
        ("/login", "/login/", True),
        ("/login", "/login/x", False),
        ("/login", "/Login", False),
        ("/api/", "/api/items/1", True),
        ("/api/", "/api", True),
        ("/api/", "/apix", False),
        ("/users/*/reset", "/users/42/reset", True),
        ("/users/*/reset", "/users/42/x/reset", False),
        ("/files/**", "/files/a/b/c", True),
        ("/", "/anything/at/all", True),
        ("/a.b", "/axb", False),
    ],
)
def test_path_patterns(pattern: str, path: str, hit: bool) -> None:
    assert RateLimit("1/s", paths=[pattern]).matches_path(path) is hit


_PATTERN_CHARS = st.sampled_from(["a", "b", "/", "*", "**", "."])
_PATH_CHARS = st.sampled_from(["a", "b", "/", ".", "\n"])


def _backtracking(pattern: str) -> re.Pattern[str]:
    """The plain translation of a path pattern (what ``_Glob`` must agree with)."""
    below = pattern.endswith("/**")
    body = pattern[:-3] if below else pattern
    out, i = [], 0
    while i < len(body):
        if body.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            out.append("[^/]*" if body[i] == "*" else re.escape(body[i]))
            i += 1
    return re.compile("".join(out) + ("(?:/.*)?" if below else ""), re.DOTALL)


@settings(max_examples=1500, deadline=None)
@given(
    st.lists(_PATTERN_CHARS, max_size=8).map(lambda p: "/" + "".join(p)),
    st.lists(_PATH_CHARS, max_size=12).map(lambda p: "/" + "".join(p)),
)
@example("/*a*", "/x/a")
@example("/**a*", "/x/a")
@example("/a*/*b", "/a/b")
@example("/*/**", "/")
@example("/a/**/b/", "/a/b")
def test_wildcard_patterns_match_like_their_regex(pattern: str, path: str) -> None:
    assume("*" in pattern)
    compiled = _path_regex(pattern)
    assert not isinstance(compiled, str)
    full = pattern + "**" if pattern.endswith("/") else pattern
    expected = _backtracking(full).fullmatch(path) is not None
    assert bool(compiled.fullmatch(path)) is expected


def test_many_wildcards_on_a_long_path_take_one_pass() -> None:
    """``/api/**/admin/**/delete`` as a regular expression backtracks
    quadratically on a long path that misses (seconds at 100 KiB); the
    matcher answers from one pass, and past its bound the rule applies."""
    rule = RateLimit("1/s", paths=["/api/**/admin/**/delete", "/x/*a*b*c/"])
    long = "/api/" + "admin/" * 1300 + "x"
    assert len(long) < GLOB_MAX_PATH and not rule.matches_path(long)
    assert rule.matches_path("/api/" + "admin/" * 1300 + "delete")
    assert not rule.matches_path("/x/" + "a" * 8000)
    assert rule.matches_path("/x/zazbzc") and rule.matches_path("/x/abc/deep/er")
    assert rule.matches_path("/api/" + "admin/" * 2000)  # over the bound: applies


def test_methods() -> None:
    rule = RateLimit("1/s", methods=["post"])
    assert rule.matches("POST", "/x") and not rule.matches("GET", "/x")
    assert RateLimit("1/s", methods="GET").matches("GET", "/")
