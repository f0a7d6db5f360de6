"""TOTP: RFC 6238 vectors, window, replay refusal, sealing, otpauth URI."""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axess.authn.totp import (
    MemoryTOTPReplayGuard,
    TOTPCode,
    TOTPReplayGuard,
    TOTPSecretSealer,
    generate_secret,
    hotp,
    provisioning_uri,
    time_step,
    totp,
    verify,
)
from axess.clock import MockClock, SeededRandom
from axess.errors import EnvelopeError
from axess.keys import Key, Keyring

RFC_SECRET = b"12345678901234567890"
# RFC 6238 Appendix B, SHA-1 column (8 digits).
RFC_VECTORS = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


@pytest.mark.parametrize(("t", "code"), RFC_VECTORS)
def test_rfc6238_sha1_vectors(t: int, code: str) -> None:
    assert totp(RFC_SECRET, t, digits=8) == code
    assert totp(RFC_SECRET, t) == code[-6:]
    assert verify(RFC_SECRET, code, t, None, digits=8) == time_step(t)
    assert verify(RFC_SECRET, code[-6:], t, None) == time_step(t)


def test_rfc4226_hotp_vectors() -> None:
    expected = ["755224", "287082", "359152", "969429", "338314"]
    assert [hotp(RFC_SECRET, i) for i in range(5)] == expected


def test_window_is_plus_minus_one_step() -> None:
    clock = MockClock()
    now = clock.time()
    step = time_step(now)
    for delta, ok in ((-2, False), (-1, True), (0, True), (1, True), (2, False)):
        code = hotp(RFC_SECRET, step + delta)
        assert (verify(RFC_SECRET, code, now, None) == step + delta) is ok


def test_replay_of_same_or_older_step_is_refused() -> None:
    now = MockClock().time()
    step = time_step(now)
    code = totp(RFC_SECRET, now)
    assert verify(RFC_SECRET, code, now, step - 1) == step
    assert verify(RFC_SECRET, code, now, step) is None
    older = hotp(RFC_SECRET, step - 1)
    assert verify(RFC_SECRET, older, now, step) is None


def test_code_normalization_and_repr() -> None:
    now = 1111111111
    code = totp(RFC_SECRET, now)
    assert verify(RFC_SECRET, TOTPCode(f" {code[:3]} {code[3:]} "), now, None) is not None
    assert verify(RFC_SECRET, TOTPCode(f"{code[:3]}-{code[3:]}"), now, None) is not None
    assert code not in repr(TOTPCode(code))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=50), st.floats(allow_nan=True, allow_infinity=True))
def test_any_input_is_a_clean_outcome(code: str, now: float) -> None:
    result = verify(RFC_SECRET, code, now, None)
    assert result is None or isinstance(result, int)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="0123456789", min_size=6, max_size=6))
def test_wrong_codes_rarely_match(code: str) -> None:
    now = 1_767_225_600.0
    step = verify(RFC_SECRET, code, now, None)
    if step is not None:
        assert hotp(RFC_SECRET, step) == code


async def test_replay_guard_two_concurrent_submissions_one_wins() -> None:
    guard = MemoryTOTPReplayGuard()
    assert isinstance(guard, TOTPReplayGuard)
    clock = MockClock()
    code = totp(RFC_SECRET, clock.time())

    async def submit() -> bool:
        last = await guard.last_step("u1")
        step = verify(RFC_SECRET, code, clock.time(), last)
        if step is None:
            return False
        await asyncio.sleep(0)  # both tasks verified before either records
        return await guard.compare_and_set("u1", step)

    results = await asyncio.gather(submit(), submit())
    assert sorted(results) == [False, True]
    assert await guard.last_step("u1") == time_step(clock.time())
    assert await guard.compare_and_set("u2", 5)  # per user


def _keys(*envelope: Key) -> Keyring:
    return Keyring(
        signing=[Key.generate("s1")],
        envelope=list(envelope),
        fingerprint=[Key.generate("f1")],
        csrf=[Key.generate("c1")],
        device=[Key.generate("d1")],
    )


def test_secret_sealing_binds_user_and_rotates() -> None:
    old, new = Key.generate("e1"), Key.generate("e2")
    secret = generate_secret(SeededRandom(1))
    sealed = TOTPSecretSealer(_keys(old)).seal(secret, "user-1")
    assert secret not in sealed
    rotated = TOTPSecretSealer(_keys(new, old))
    assert rotated.open(sealed, "user-1") == secret
    assert rotated.needs_reseal(sealed)
    with pytest.raises(EnvelopeError):
        rotated.open(sealed, "user-2")  # associated data = user id
    with pytest.raises(EnvelopeError):
        TOTPSecretSealer(_keys(new)).open(sealed, "user-1")  # key gone
    resealed = rotated.seal(secret, "user-1")
    assert not rotated.needs_reseal(resealed)
    assert sealed[0] == 1 and sealed[2:4] == b"e1"


def test_sealing_uses_a_subkey_distinct_from_sessions() -> None:
    from axess.session.envelope import SessionCrypto

    keys = _keys(Key.generate("e1"))
    sealed = TOTPSecretSealer(keys).seal(b"x" * 20, "a" * 64)
    with pytest.raises(EnvelopeError):
        SessionCrypto(keys).open(sealed, "a" * 64)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100))
def test_garbage_sealed_secret_only_raises_envelope_error(raw: bytes) -> None:
    sealer = TOTPSecretSealer(_keys(Key(kid="e1", secret=b"k" * 32)))
    with pytest.raises(EnvelopeError):
        sealer.open(raw, "u")


def test_provisioning_uri_encoding() -> None:
    secret = b"\x00" * 10 + b"\xff" * 10
    uri = provisioning_uri(secret, "alice smith@example.com", "ACME: Corp & Co")
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth" and parts.netloc == "totp"
    assert parts.path == "/ACME%3A%20Corp%20%26%20Co:alice%20smith%40example.com"
    q = parse_qs(parts.query)
    assert q == {
        "secret": [base64.b32encode(secret).decode().rstrip("=")],
        "issuer": ["ACME: Corp & Co"],
        "algorithm": ["SHA1"],
        "digits": ["6"],
        "period": ["30"],
    }
    assert "+" not in uri and "=" not in q["secret"][0]
    with pytest.raises(ValueError):
        provisioning_uri(secret, "", "x")
