"""Every per-process memo of the request path has a worst-case memory,
whatever clients send.

Each test fills one memo to capacity with the largest inputs it still
remembers (plus a few larger ones it must not remember), then checks its
size against the per-entry bound documented in the book (sessions chapter,
"Memos"; the figures there are these bounds times the default capacity).
Memos sized by ``memo_size`` are filled at a scaled-down size: what is
checked is the bound per entry.
"""

from __future__ import annotations

import base64
import gc
import json
import sys
import tracemalloc
from array import array
from collections.abc import Iterable
from typing import Any

import pytest
from helpers import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    asgi_request,
    client,
    cookie_of,
    make_app,
    make_bound_auth,
)

from axess import Keyring, MockClock
from axess._cache import (
    DEFAULT_MAX_KEY_BYTES,
    UNKNOWN_KEY_BYTES,
    BoundedDict,
    Memo,
    key_bytes,
)
from axess.net import MAX_ADDRESS_CHARS, TrustedProxies
from axess.observability.metrics import NoopMetrics
from axess.ratelimit import RateLimit
from axess.ratelimit.keys import IPKey
from axess.ratelimit.middleware import RateLimiter, Verdict, _EventGate
from axess.session import data as d
from axess.session.binding import BindingPolicy, FingerprintBinding, TenantPeppers
from axess.session.cookie import MAX_MEMO_HEADER_BYTES, VerifiedCookie, storage_key
from axess.session.csrf import CSRFMiddleware
from axess.session.handle import Session
from axess.session.middleware import MAX_TEMPLATE_JSON, SessionMiddleware
from axess.stack import HEADERS_KEY
from axess.stores import MemoryStore
from axess.stores.base import SessionRecord
from axess.testing import SeededRandom

KiB = 1024
#: Entries of the memos sized by ``memo_size`` in these tests.
SCALED = 512

#: Worst-case bytes per entry (key + value + table slot), as in the book.
PER_ENTRY = {
    "peer address": 512,
    "rate-limit IPv6 prefix": 512,
    "rate-limit rules": int(1.5 * KiB),
    "rate-limit items": 512,
    "rate-limit events": int(1.5 * KiB),
    "binding verdicts": int(1.5 * KiB),
    "session cookie": int(1.5 * KiB),
    "opened payloads": 10 * KiB,
    "opened payloads, parsed": 16 * KiB,
    "csrf cookie fits": int(1.5 * KiB),
}

_SINGLETONS = (None, True, False)


def retained(memo: BoundedDict[Any, Any], shared: Iterable[object] = ()) -> int:
    """Bytes ``memo`` holds: its table and every object reachable from its
    keys and values, each counted once (``shared`` objects, such as the
    configuration's rules, not at all)."""
    seen = {id(o) for o in (*shared, *_SINGLETONS)}
    total = sys.getsizeof(memo)
    todo: list[object] = [*memo.keys(), *memo.values()]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, tuple | list | set | frozenset):
            todo.extend(obj)
        elif isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif not isinstance(obj, str | bytes | int | float):
            for cls in type(obj).__mro__:
                slots = cls.__dict__.get("__slots__", ())
                for name in (slots,) if isinstance(slots, str) else slots:
                    if hasattr(obj, name):
                        todo.append(getattr(obj, name))
            if hasattr(obj, "__dict__"):
                todo.append(vars(obj))
    return total


def assert_bounded(memo: BoundedDict[Any, Any], name: str, shared: Iterable[object] = ()) -> None:
    """Full, and within the documented bound per entry."""
    assert len(memo) == memo.capacity, "the largest remembered inputs must be remembered"
    used = retained(memo, shared)
    assert used <= memo.capacity * PER_ENTRY[name], (name, used / memo.capacity)


def pad(prefix: str, total: int) -> str:
    """``prefix`` and filler, ``total`` characters in all."""
    return prefix + "x" * (total - len(prefix))


# -- the memo class ---------------------------------------------------------------


def test_key_bytes_counts_the_text_of_a_key() -> None:
    assert key_bytes(b"abc") == 3
    assert key_bytes("abc") == 3
    assert key_bytes(("ab", b"cd", 7, None, ("e", b"f"))) == 6
    wide = "\u20ac" * 10  # stored two bytes a character
    assert key_bytes(wide) >= 20
    assert key_bytes(wide) == sys.getsizeof(wide) - sys.getsizeof("")


def test_key_bytes_counts_any_buffer_by_its_bytes() -> None:
    # A store may hand a payload out as a memoryview (psycopg2 does for
    # bytea): counted as nothing, it let the opened-payload memo keep any size.
    assert key_bytes(memoryview(b"x" * 5000)) == 5000
    assert key_bytes(memoryview(array("q", range(10)))) == 80
    assert key_bytes(bytearray(b"abc")) == 3
    assert key_bytes(("k" * 64, memoryview(b"p" * 100))) == 164


class Opaque:
    """A key part whose size key_bytes cannot tell."""


def test_key_bytes_takes_a_part_it_cannot_measure_as_over_every_bound() -> None:
    assert key_bytes(Opaque()) == UNKNOWN_KEY_BYTES
    assert key_bytes(("a", Opaque())) >= UNKNOWN_KEY_BYTES
    assert key_bytes((7, 1.5, True, None, 2j)) == 0
    memo: BoundedDict[Any, int] = BoundedDict(2, max_key_bytes=10**9)
    opaque = ("a", Opaque())
    memo.put(opaque, 1)
    assert opaque not in memo  # answered, never remembered
    unbounded: BoundedDict[Any, int] = BoundedDict(2, max_key_bytes=None)
    unbounded.put(opaque, 1)
    assert unbounded[opaque] == 1


class Text(str):
    """A str subclass: not the exact type the fast path of put() looks for."""


@pytest.mark.parametrize(
    "key",
    [
        b"x" * 40,
        "y" * 40,
        "\u00e9" * 40,
        ("a" * 10, b"b" * 10, 7, None, True, 1.5),
        ("\u20ac" * 10, b"b"),
        ("a", ("b" * 20, b"c" * 20), None),
        (Text("t" * 30), 1),
        ("k" * 10, memoryview(b"m" * 30)),
    ],
)
def test_put_measures_keys_as_key_bytes_does(key: Any) -> None:
    size = key_bytes(key)
    assert size >= 20
    at_bound: BoundedDict[Any, int] = BoundedDict(2, max_key_bytes=size)
    at_bound.put(key, 1)
    assert at_bound.get(key) == 1
    over: BoundedDict[Any, int] = BoundedDict(2, max_key_bytes=size - 1)
    over.put(key, 1)
    assert key not in over


def test_a_memo_never_remembers_a_key_over_its_bound() -> None:
    memo: BoundedDict[Any, int] = BoundedDict(4, max_key_bytes=8)
    assert memo.put(b"x" * 9, 1) == 1  # answered, not remembered
    memo[("abcd", b"efgh!")] = 2  # item assignment is held to the bound too
    assert len(memo) == 0
    memo.put(("abcd", b"efgh"), 3)
    assert memo.get(("abcd", b"efgh")) == 3
    unbounded: BoundedDict[str, int] = BoundedDict(2, max_key_bytes=None)
    unbounded.put("x" * 100_000, 1)
    assert len(unbounded) == 1
    for i in range(5):
        unbounded.put(str(i), i)
    assert list(unbounded) == ["3", "4"]  # first in, first out
    with pytest.raises(ValueError):
        BoundedDict(0)
    with pytest.raises(ValueError):
        BoundedDict(1, max_key_bytes=-1)


def test_a_memo_computes_each_key_once_and_remembers_within_its_bounds() -> None:
    calls: list[Any] = []

    def compute(key: Any) -> Any:
        calls.append(key)
        if key == "boom":
            raise RuntimeError(key)
        return ("value", key)

    memo: Memo[Any, Any] = Memo(compute, 2, max_key_bytes=8)
    assert memo["a"] == ("value", "a") and memo["a"] == ("value", "a")
    assert calls == ["a"]  # the second lookup was a hit
    assert memo["x" * 9] == ("value", "x" * 9)  # over the key bound: answered...
    assert memo["x" * 9] == ("value", "x" * 9) and calls.count("x" * 9) == 2  # ...every time
    with pytest.raises(RuntimeError):
        memo["boom"]
    assert "boom" not in memo  # a failure is not remembered
    memo["b"], memo["c"]
    assert list(memo) == ["b", "c"]  # capacity 2, first in, first out
    assert memo.get("zzz") is None and "zzz" not in calls  # .get never computes


# -- client IP and rate limit (fixed capacities) -----------------------------------


def test_peer_address_memo() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    memo = proxies._peers
    for i in range(memo.capacity + 10):
        # Padding is tolerated (stripped) up to the address size: the
        # longest text the memo takes, for the longest normalized address.
        addr = f"2001:db8:{i + 1:x}:aaaa:bbbb:cccc:dddd:eeee"
        assert memo[addr.rjust(MAX_ADDRESS_CHARS)][0] == addr
    for i in range(20):
        huge = f"2001:db8::{i + 1:x}".rjust(60 * KiB)
        assert memo[huge][0] == f"2001:db8::{i + 1:x}"  # still answered
        assert huge not in memo
    assert_bounded(memo, "peer address")


def test_rate_limit_ipv6_prefix_memo() -> None:
    key = IPKey(v6_prefix=128 - 1)
    memo = key._v6
    for i in range(memo.capacity):
        ip = f"fe80::{i:x}%" + pad(f"if{i}", MAX_ADDRESS_CHARS - 12)
        assert key.of({"state": {"client_ip": ip}}).startswith("ip:")
    assert_bounded(memo, "rate-limit IPv6 prefix")


def test_rate_limit_rules_memo() -> None:
    rules = [RateLimit("5/minute", name="n" * 64)]
    limiter = RateLimiter(rules)
    memo = limiter._matches
    method = "M" * 16  # any token is a method
    for i in range(memo.capacity):
        path = pad(f"/api/{i}/", DEFAULT_MAX_KEY_BYTES - len(method))
        assert limiter.match(method, path) == tuple(rules)
    for i in range(20):
        long_path = pad(f"/api/{i}/", 60 * KiB)
        assert limiter.match("GET", long_path) == tuple(rules)
        assert ("GET", long_path) not in memo
    assert_bounded(memo, "rate-limit rules", shared=rules)


def test_rate_limit_items_memo() -> None:
    rule = RateLimit("100000/hour", name="n" * 64)
    limiter = RateLimiter([rule])
    memo = limiter._items
    for i in range(memo.capacity):
        verdict = Verdict(True, [rule], states=[(100_000 - i, 3_600_000_000, 0)])
        assert limiter.limit_field(verdict).startswith(b'"n')
    assert_bounded(memo, "rate-limit items", shared=[rule])


def test_rate_limit_event_memo() -> None:
    rule = RateLimit("5/minute", name="n" * 64)
    gate = _EventGate(MockClock(), None, 0)
    memo = gate._seen
    for i in range(memo.capacity):
        assert gate.admit(rule, pad(f"k{i}:", DEFAULT_MAX_KEY_BYTES - 64)) == 0
    for i in range(20):
        gate.admit(rule, pad(f"k{i}:", 60 * KiB))
    assert_bounded(memo, "rate-limit events", shared=[rule.name])


# -- binding --------------------------------------------------------------------------


def _binding() -> FingerprintBinding:
    peppers = TenantPeppers(Keyring.generate())
    return FingerprintBinding(
        BindingPolicy(accept_language=True), peppers, NoopMetrics(), memo_size=SCALED
    )


def _scope(ua: bytes, ip: str, lang: bytes = b"en-GB,en;q=0.9") -> dict[str, Any]:
    headers = {b"user-agent": ua, b"accept-language": lang}
    return {
        "type": "http",
        "headers": list(headers.items()),
        "state": {HEADERS_KEY: headers, "client_ip": ip},
    }


def _bound(binding: FingerprintBinding, scope: dict[str, Any]) -> d.SessionData:
    pepper = binding.peppers.cached("acme")
    assert pepper is not None
    fp = binding.fingerprint("acme", pepper, 1, binding.material(scope))
    state = d.Authenticated("alice", "acme", 0.0, ("password",))
    return d.SessionData(0.0, 0.0, state, fp, 1, tenant_id="acme")


def test_binding_verdict_memo() -> None:
    binding = _binding()
    memo = binding._verdicts
    ip = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff"
    lang = pad("en-GB,", 100).encode()
    data = _bound(binding, _scope(b"victim", ip))
    rest = key_bytes((data.fingerprint, lang, ip, "acme"))
    for i in range(memo.capacity):
        ua = pad(f"UA {i} ", DEFAULT_MAX_KEY_BYTES - rest).encode()
        assert binding.check(_scope(ua, ip, lang), data) == -1  # someone else
    assert_bounded(memo, "binding verdicts")


def test_huge_user_agents_are_checked_but_never_remembered() -> None:
    """The finding: 60 KB User-Agents used to be remembered whole."""
    binding = _binding()
    ip = "198.51.100.10"
    owner = b"M" * (60 * KiB)
    data = _bound(binding, _scope(owner, ip))
    for i in range(200):
        thief = owner[:500] + b"T%d" % i + owner  # differs in the fingerprinted part
        assert binding.check(_scope(thief, ip), data) == -1
        assert binding.check(_scope(owner + b"%d" % i, ip), data) == 0
    assert len(binding._verdicts) == 0
    assert retained(binding._verdicts) < 4 * KiB
    assert len(binding.peppers._peppers) == 1  # the one tenant's pepper


async def test_requests_with_huge_user_agents_leave_no_trace() -> None:
    """The finding end to end: a signed-in client sending 60 KB User-Agents
    (each one different) through the whole stack; memory must not grow with
    the number of requests (it grew by the User-Agent size per request)."""
    app = make_app(make_bound_auth())
    owner = b"M" * (60 * KiB)
    forwarded = (b"x-forwarded-for", b"198.51.100.10")
    async with client(app) as c:
        r = await c.post(
            "/login", params={"user": "alice"}, headers=[forwarded, (b"user-agent", owner)]
        )
    cookie = (b"cookie", SESSION_COOKIE.encode() + b"=" + (cookie_of(r) or "").encode())

    async def burst(start: int, n: int) -> None:
        for i in range(start, start + n):
            headers = [forwarded, (b"user-agent", owner + b"%d" % i), cookie]
            status, _, body = await asgi_request(app, headers=headers)
            assert status == 200 and json.loads(body)["user"] == "alice"

    await burst(0, 20)  # warm: every memo that will hold something does
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await burst(20, 200)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 60 * KiB  # was 200 x 60 KB


# -- session ----------------------------------------------------------------------------


def _sessions() -> SessionMiddleware:
    keys = Keyring.generate()
    return SessionMiddleware(
        store=MemoryStore(), keys=keys, clock=MockClock(), random=SeededRandom(1), memo_size=SCALED
    )


def _sid(i: int) -> str:
    """A canonical session id (43 base64url characters)."""
    return base64.urlsafe_b64encode(i.to_bytes(32, "big")).rstrip(b"=").decode()


async def _enter(stage: SessionMiddleware, cookie_header: bytes) -> bool:
    """Run the session stage on a request with this Cookie header: had a cookie?"""
    scope: dict[str, Any] = {"type": "http", "state": {HEADERS_KEY: {b"cookie": cookie_header}}}
    await stage.enter(scope, None, None)  # type: ignore[arg-type]
    return bool(scope["state"]["session"].had_cookie)


async def test_session_cookie_memo() -> None:
    stage = _sessions()
    memo = stage._cookies
    for i in range(memo.capacity):
        value = stage.signer.sign(_sid(i))
        assert await _enter(
            stage, pad(f"{SESSION_COOKIE}={value}; other=", MAX_MEMO_HEADER_BYTES).encode()
        )
    assert_bounded(memo, "session cookie")
    huge = f"{SESSION_COOKIE}={value}; other=".encode() + b"x" * (60 * KiB)
    assert await _enter(stage, huge)
    assert huge not in memo


def test_opened_payload_memo() -> None:
    stage = _sessions()
    memo = stage._opened
    for i in range(memo.capacity):
        verified = VerifiedCookie(_sid(i), storage_key(_sid(i)), needs_resign=False)
        state = d.Authenticated(pad("user", 64), pad("tenant", 64), 0.0, ("password", "totp"))
        data = d.SessionData(
            0.0, 0.0, state, "f" * 64, 1, "dev", pad("tenant", 64), "2001:db8::/64", "U" * 200
        )
        meta = d.encode(data, b"")
        # Custom data fills the sealed payload up to the largest size remembered.
        overhead = len(stage.crypto.seal(meta + b'{"k":""}', verified.storage_key))
        custom = b'{"k":"' + b"v" * (4096 - overhead) + b'"}'
        payload = stage.crypto.seal(meta + custom, verified.storage_key)
        assert len(payload) == 4096
        record = SessionRecord(verified.storage_key, payload, 0.0, 3600.0)
        assert stage._open(verified, record, 1.0) is not None
    assert_bounded(memo, "opened payloads")
    large = stage.crypto.seal(meta + b'{"k":"' + b"v" * 8192 + b'"}', verified.storage_key)
    opened = stage._open(verified, SessionRecord(verified.storage_key, large, 0.0, 3600.0), 1.0)
    assert opened is not None and (verified.storage_key, large) not in memo
    # The same payload as a memoryview (a store's driver may return one) is
    # measured by its bytes too, not taken for empty.
    view = memoryview(large)
    opened = stage._open(verified, SessionRecord(verified.storage_key, view, 0.0, 3600.0), 1.0)
    assert opened is not None and (verified.storage_key, large) not in memo


def _tiny_keys(i: int) -> bytes:
    pairs: list[bytes] = []
    while len(b"{" + b",".join(pairs) + b"}") < MAX_TEMPLATE_JSON - 12:
        pairs.append(b'"%d":%d' % (len(pairs) + 1000 * i, len(pairs)))
    return b"{" + b",".join(pairs) + b"}"


def _nested(i: int) -> bytes:
    """Containers packed as tightly as JSON allows: each ``[`` is a list."""
    depth = (MAX_TEMPLATE_JSON - 20) // 2
    return b'{"%d":' % i + b"[" * depth + b"]" * depth + b"}"


def _empty_objects(i: int) -> bytes:
    n = (MAX_TEMPLATE_JSON - 20) // 3
    return b'{"%d":[' % i + b",".join([b"{}"] * n) + b"]}"


@pytest.mark.parametrize("shape", [_tiny_keys, _nested, _empty_objects])
def test_opened_payload_memo_with_parsed_custom_data(shape: Any) -> None:
    """Custom data small enough to be kept parsed (MAX_TEMPLATE_JSON), in the
    costliest shapes: as many distinct tiny keys as fit, or as many nested
    or empty containers (which parse to 20 times their bytes when kept), in
    a payload that metadata fills up to the largest size remembered."""
    stage = _sessions()
    memo = stage._opened
    for i in range(memo.capacity):
        verified = VerifiedCookie(_sid(i), storage_key(_sid(i)), needs_resign=False)
        state = d.Authenticated(pad("user", 64), pad("tenant", 64), 0.0, ("password", "totp"))
        custom = shape(i)
        n = len(json.loads(custom))
        assert len(custom) <= MAX_TEMPLATE_JSON

        def meta(ua: int) -> d.SessionData:
            return d.SessionData(
                0.0, 0.0, state, "f" * 64, 1, "dev", pad("tenant", 64), "2001:db8::/64", "U" * ua
            )

        size = len(stage.crypto.seal(d.encode(meta(0), b"") + custom, verified.storage_key))
        data = meta(4096 - size)
        payload = stage.crypto.seal(d.encode(data, b"") + custom, verified.storage_key)
        assert len(payload) == 4096
        session = stage._open(
            verified, SessionRecord(verified.storage_key, payload, 0.0, 3600.0), 1.0
        )
        assert isinstance(session, Session) and len(session) == n
    assert_bounded(memo, "opened payloads, parsed")


# -- CSRF ----------------------------------------------------------------------------------


def test_csrf_cookie_fits_memo() -> None:
    keys = Keyring.generate()
    stage = CSRFMiddleware(keys=keys, memo_size=SCALED)
    sessions = SessionMiddleware(store=MemoryStore(), keys=keys, clock=MockClock())
    memo = stage._fits
    token = stage.tokens.mint(None)
    size = MAX_MEMO_HEADER_BYTES + 64  # what a guest's key leaves of the bound
    for i in range(memo.capacity):
        header = pad(f"{CSRF_COOKIE}={token}; n={i}; f=", size).encode()
        state = {HEADERS_KEY: {b"cookie": header}, "session": sessions._new_guest()}
        message: dict[str, Any] = {"type": "http.response.start", "headers": []}
        assert stage.on_response_start_now({"type": "http", "state": state}, message)
        assert message["headers"] == []  # the token fits: nothing to send
    assert_bounded(memo, "csrf cookie fits")
