from __future__ import annotations

import logging

import pytest
from helpers import SESSION_COOKIE, client, cookie_of, make_app, make_auth
from hypothesis import given, settings
from hypothesis import strategies as st

from axess import EnvelopeError, Key, Keyring, SessionCrypto
from axess.crypto import NONCE_BYTES, TAG_BYTES, VERSION
from axess.session.cookie import storage_key


def ring(*envelope: Key) -> Keyring:
    return Keyring(
        signing=[Key("s1", b"s" * 32)],
        envelope=list(envelope),
        fingerprint=[Key("f1", b"f" * 32)],
        csrf=[Key("c1", b"c" * 32)],
        device=[Key("d1", b"d" * 32)],
    )


E1 = Key("e1", b"1" * 32)
E2 = Key("e2", b"2" * 32)
KEY = storage_key("A" * 43)


def test_byte_format() -> None:
    crypto = SessionCrypto(ring(E1))
    sealed = crypto.seal(b"hello", KEY)
    assert sealed[0] == VERSION
    assert sealed[1] == 2 and sealed[2:4] == b"e1"
    assert len(sealed) == 4 + NONCE_BYTES + len(b"hello") + TAG_BYTES
    assert crypto.open(sealed, KEY) == b"hello"
    assert crypto.seal(b"hello", KEY) != sealed  # fresh nonce each time


def test_byte_flip_matrix() -> None:
    crypto = SessionCrypto(ring(E1))
    sealed = crypto.seal(b'{"user":"alice"}', KEY)
    for i in range(len(sealed)):
        for bit in range(8):
            flipped = bytearray(sealed)
            flipped[i] ^= 1 << bit
            with pytest.raises(EnvelopeError):
                crypto.open(bytes(flipped), KEY)


def test_truncations_fail_cleanly() -> None:
    crypto = SessionCrypto(ring(E1))
    sealed = crypto.seal(b"payload", KEY)
    for n in range(len(sealed)):
        with pytest.raises(EnvelopeError):
            crypto.open(sealed[:n], KEY)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_envelope_error(raw: bytes) -> None:
    crypto = SessionCrypto(ring(E1))
    with pytest.raises(EnvelopeError):
        crypto.open(raw, KEY)


def test_row_copied_to_another_key_does_not_open() -> None:
    crypto = SessionCrypto(ring(E1))
    sealed = crypto.seal(b"payload", KEY)
    with pytest.raises(EnvelopeError):
        crypto.open(sealed, storage_key("B" * 43))


def test_unknown_kid() -> None:
    sealed = SessionCrypto(ring(E2)).seal(b"x", KEY)
    with pytest.raises(EnvelopeError, match="unknown key id"):
        SessionCrypto(ring(E1)).open(sealed, KEY)


def test_previous_key_opens_logs_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    sealed = SessionCrypto(ring(E1)).seal(b"x", KEY)
    hits: list[int] = []
    rotated = SessionCrypto(ring(E2, E1), on_previous_key=lambda: hits.append(1))
    with caplog.at_level(logging.INFO, logger="axess.session.envelope"):
        assert rotated.open(sealed, KEY) == b"x"
    assert hits == [1]
    assert "previous (rotated) key" in caplog.text
    assert rotated.needs_reseal(sealed)
    assert not rotated.needs_reseal(rotated.seal(b"x", KEY))


async def test_previous_key_session_is_resealed_on_next_write() -> None:
    old_auth = make_auth(keys=ring(E1))
    async with client(make_app(old_auth)) as c:
        r = await c.post("/login?user=alice")
        cookie = cookie_of(r)
    store = old_auth.store
    (row,) = await store.list_user_sessions("alice", old_auth.clock.time())  # type: ignore[attr-defined]
    assert SessionCrypto(ring(E1)).kid_of(row.payload) == "e1"
    new_auth = make_auth(store, keys=ring(E2, E1), clock=old_auth.clock)  # type: ignore[arg-type]
    async with client(make_app(new_auth)) as c:
        c.cookies.set(SESSION_COOKIE, cookie or "")
        r = await c.get("/read")
        assert r.json()["user"] == "alice"
        (row,) = await store.list_user_sessions("alice", new_auth.clock.time())  # type: ignore[attr-defined]
        assert SessionCrypto(ring(E1)).kid_of(row.payload) == "e1"  # a read does not write
        r = await c.post("/write?k=v")
        assert r.status_code == 200
    (row,) = await store.list_user_sessions("alice", new_auth.clock.time())  # type: ignore[attr-defined]
    assert SessionCrypto(ring(E2)).kid_of(row.payload) == "e2"


async def test_unknown_kid_in_store_gives_guest(caplog: pytest.LogCaptureFixture) -> None:
    old_auth = make_auth(keys=ring(E1))
    async with client(make_app(old_auth)) as c:
        cookie = cookie_of(await c.post("/login?user=alice"))
    new_auth = make_auth(old_auth.store, keys=ring(E2), clock=old_auth.clock)  # type: ignore[arg-type]
    async with client(make_app(new_auth)) as c:
        c.cookies.set(SESSION_COOKIE, cookie or "")
        with caplog.at_level(logging.WARNING, logger="axess.session"):
            r = await c.get("/read")
            r2 = await c.get("/read")
    assert r.status_code == 200 and r.json()["user"] is None
    assert r2.status_code == 200
    assert caplog.text.count("could not be opened") == 1  # once per occurrence class
