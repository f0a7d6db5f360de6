"""Cookie parsing and verification through the public HTTP surface."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from helpers import SESSION_COOKIE, asgi_request, client, cookie_of, make_app, make_auth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import Signer

from axess import Key, Keyring
from axess.session.cookie import (
    MAX_COOKIE_BYTES,
    MAX_SAME_NAME,
    SessionCookieSigner,
    cookie_values,
    first_cookie,
)

#: ``<session cookie name>=`` as the Cookie header spells it.
SID_EQ = SESSION_COOKIE.encode() + b"="


def keyring(signing: list[Key]) -> Keyring:
    return Keyring(
        signing=signing,
        envelope=[Key("e1", b"e" * 32)],
        fingerprint=[Key("f1", b"f" * 32)],
        csrf=[Key("c1", b"c" * 32)],
        device=[Key("d1", b"d" * 32)],
    )


async def logged_in(auth: Any) -> tuple[Any, str]:
    app = make_app(auth)
    async with client(app) as c:
        r = await c.post("/login?user=alice")
    value = cookie_of(r)
    assert value
    return app, value


async def whoami(app: Any, cookie_header: str) -> Any:
    async with client(app) as c:
        r = await c.get("/read", headers={"cookie": cookie_header})
    return r


async def test_valid_cookie_authenticates() -> None:
    app, value = await logged_in(make_auth())
    r = await whoami(app, f"{SESSION_COOKIE}={value}")
    assert r.status_code == 200 and r.json()["user"] == "alice"


class _Loop:
    """One event loop and app shared by all hypothesis examples (fast)."""

    loop = asyncio.new_event_loop()
    app, value = loop.run_until_complete(logged_in(make_auth()))


def _flip(value: str, index: int, bit: int) -> bytes:
    raw = bytearray(value.encode())
    raw[index % len(raw)] ^= 1 << bit
    return bytes(raw)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(min_value=0, max_value=200), bit=st.integers(min_value=0, max_value=7))
def test_any_byte_flip_gives_guest(index: int, bit: int) -> None:
    flipped = _flip(_Loop.value, index, bit)
    status, _, body = _Loop.loop.run_until_complete(
        asgi_request(_Loop.app, headers=[(b"cookie", SID_EQ + flipped)])
    )
    assert status == 200
    assert json.loads(body)["user"] is None


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_cookie_bytes_give_guest(raw: bytes) -> None:
    signer = SessionCookieSigner(keyring([Key("s1", b"s" * 32)]))
    assert signer.verify(raw) is None
    status, _, body = _Loop.loop.run_until_complete(
        asgi_request(_Loop.app, headers=[(b"cookie", SID_EQ + raw)])
    )
    assert status == 200 and json.loads(body)["user"] is None


async def test_previous_signing_key_verifies_and_is_resigned() -> None:
    old = Key("s-old", b"o" * 32)
    new = Key("s-new", b"n" * 32)
    auth_old = make_auth(keys=keyring([old]))
    _, value = await logged_in(auth_old)
    # Same store, rotated keyring: the new key is active, the old one verifies.
    auth_new = make_auth(auth_old.store, keys=keyring([new, old]), clock=auth_old.clock)  # type: ignore[arg-type]
    app = make_app(auth_new)
    writes_before = auth_old.store.writes  # type: ignore[attr-defined]
    r = await whoami(app, f"{SESSION_COOKIE}={value}")
    assert r.json()["user"] == "alice"
    resigned = cookie_of(r)
    assert resigned and resigned != value
    assert resigned.split(".")[0] == value.split(".")[0]  # same session id, new signature
    assert auth_old.store.writes == writes_before  # type: ignore[attr-defined]  # re-sign: no write
    # A key that has been removed no longer verifies.
    auth_removed = make_auth(auth_old.store, keys=keyring([new]), clock=auth_old.clock)  # type: ignore[arg-type]
    r = await whoami(make_app(auth_removed), f"{SESSION_COOKIE}={value}")
    assert r.json()["user"] is None
    r = await whoami(make_app(auth_removed), f"{SESSION_COOKIE}={resigned}")
    assert r.json()["user"] == "alice"


async def test_signature_is_itsdangerous_hmac_sha256() -> None:
    ring = keyring([Key("s1", b"s" * 32)])
    signer = SessionCookieSigner(ring)
    value = signer.sign("A" * 43)
    reference = Signer(
        ring.derive("signing", "session-cookie-v1"),
        key_derivation="none",
        digest_method=hashlib.sha256,
    )
    assert reference.unsign(value.encode()) == b"A" * 43


async def test_oversized_cookie_is_ignored() -> None:
    app, value = await logged_in(make_auth())
    padded = value + "x" * MAX_COOKIE_BYTES
    r = await whoami(app, f"{SESSION_COOKIE}={padded}")
    assert r.status_code == 200 and r.json()["user"] is None
    assert (
        first_cookie([(b"cookie", b"axess.sid=" + b"a" * (MAX_COOKIE_BYTES + 1))], b"axess.sid")
        is None
    )


async def test_the_first_cookie_of_the_name_that_verifies_wins() -> None:
    # Not simply the first one sent: a look-alike planted ahead of the real
    # cookie must not hide it (book: Sessions, "Cookie tossing").
    app, value = await logged_in(make_auth())
    r = await whoami(app, f"other=1; {SESSION_COOKIE}={value}; {SESSION_COOKIE}=garbage")
    assert r.json()["user"] == "alice"
    r = await whoami(app, f"{SESSION_COOKIE}=garbage; {SESSION_COOKIE}={value}")
    assert r.json()["user"] == "alice"


async def test_non_canonical_encodings_refused() -> None:
    ring = keyring([Key("s1", b"s" * 32)])
    signer = SessionCookieSigner(ring)
    sid = "A" * 42 + "B"  # last char carries non-zero padding bits: not canonical
    raw = signer._active.sign(sid.encode())  # bypass sign()'s own checks
    assert signer.verify(raw) is None
    good = signer.sign("A" * 43).encode()
    assert signer.verify(good) is not None
    assert signer.verify(good + b"=") is None
    assert signer.verify(b" " + good) is None


def test_first_cookie_parsing_rules() -> None:
    name = b"axess.sid"
    assert first_cookie([(b"cookie", b"xaxess.sid=1; axess.sid=2")], name) == b"2"
    assert first_cookie([(b"cookie", b"a=1;axess.sid=2")], name) == b"2"
    assert first_cookie([(b"cookie", b'axess.sid="q"')], name) == b"q"
    assert first_cookie([(b"cookie", b"a=1"), (b"cookie", b"axess.sid=3")], name) == b"3"
    assert first_cookie([(b"cookie", b"axess.sidx=1")], name) is None
    assert first_cookie([(b"x-cookie", b"axess.sid=1")], name) is None
    assert first_cookie([(b"cookie", b"a=1; \t axess.sid=2")], name) == b"2"
    # Text inside another cookie's value is not a cookie.
    assert first_cookie([(b"cookie", b"q=shoes axess.sid=X; axess.sid=2")], name) == b"2"
    assert first_cookie([(b"cookie", b"q=\taxess.sid=X")], name) is None


async def test_a_session_id_inside_another_cookies_value_is_not_the_session_cookie() -> None:
    # A cookie a page script writes from user text (q=...) cannot plant a
    # session id ahead of the real HttpOnly cookie.
    app, victim = await logged_in(make_auth())
    async with client(app) as c:
        planted = cookie_of(await c.post("/login?user=mallory"))
    r = await whoami(app, f"q=shoes {SESSION_COOKIE}={planted}; {SESSION_COOKIE}={victim}")
    assert r.json()["user"] == "alice"
    r = await whoami(app, f"q=shoes {SESSION_COOKIE}={planted}")
    assert r.json()["user"] is None


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"a", b"axess.sid", b"b"]),
            st.one_of(
                st.binary(max_size=20),
                # values holding what looks like another pair
                st.tuples(st.binary(max_size=4), st.sampled_from([b" ", b"\t", b""])).map(
                    lambda t: t[0] + t[1] + b"axess.sid=" + t[0]
                ),
            ).filter(lambda v: b";" not in v),
        ),
        max_size=12,
    )
)
def test_first_cookie_matches_reference(pairs: list[tuple[bytes, bytes]]) -> None:
    header = b"; ".join(k + b"=" + v for k, v in pairs)
    expected = [_unquoted(v.strip()) for k, v in pairs if k == b"axess.sid"]
    assert first_cookie([(b"cookie", header)], b"axess.sid") == next(iter(expected), None)
    # Every value of the name, in order: the callers try each in turn.
    assert list(cookie_values(header, b"axess.sid")) == expected[:MAX_SAME_NAME]


def _unquoted(value: bytes) -> bytes:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == 0x22 else value


def test_cookie_values_skip_oversized_values_and_stop_at_the_cap() -> None:
    big = b"x" * (MAX_COOKIE_BYTES + 1)
    header = b"axess.sid=" + big + b"; axess.sid=2"
    assert list(cookie_values(header, b"axess.sid")) == [b"2"]
    many = b"; ".join(b"axess.sid=%d" % i for i in range(3 * MAX_SAME_NAME))
    assert len(list(cookie_values(many, b"axess.sid"))) == MAX_SAME_NAME
