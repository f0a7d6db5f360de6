"""Argon2id password hashing: PHC format, verification, rehash, off-loop, bad input."""

from __future__ import annotations

import asyncio
import base64
import threading

import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from hypothesis import given, settings
from hypothesis import strategies as st

from axess.authn import Password, PasswordHasher
from axess.authn.password import MAX_PASSWORD_BYTES, PHCHash, default_max_concurrency
from axess.clock import SeededRandom

# Cheap parameters keep the suite fast; the defaults are checked separately.
FAST = {"time_cost": 1, "memory_cost": 64, "parallelism": 1}


def fast(**kw: object) -> PasswordHasher:
    return PasswordHasher(**{**FAST, **kw})  # type: ignore[arg-type]


def test_defaults_are_the_design_parameters() -> None:
    h = PasswordHasher()
    assert (h.time_cost, h.memory_cost, h.parallelism) == (2, 19456, 1)
    assert h.max_concurrency == default_max_concurrency()


@pytest.mark.parametrize(("cpus", "expected"), [(None, 1), (1, 1), (2, 1), (4, 3), (16, 4)])
def test_default_concurrency_leaves_a_core_to_the_loop(cpus: int | None, expected: int) -> None:
    assert default_max_concurrency(cpus or 0) == expected


async def test_default_hash_has_reference_phc_prefix() -> None:
    phc = await PasswordHasher().hash("correct horse")
    assert phc.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    salt, digest = phc.split("$")[4:]
    assert "=" not in salt + digest
    assert len(base64.b64decode(salt + "==")) == 16
    assert len(base64.b64decode(digest + "=")) == 32


async def test_hash_matches_cryptography_reference_encoding() -> None:
    h = fast(random=SeededRandom(1))
    phc = await h.hash("pw")
    salt = PHCHash.parse(phc).salt
    ref = Argon2id(salt=salt, length=32, iterations=1, lanes=1, memory_cost=64)
    assert ref.derive_phc_encoded(b"pw") == phc
    # And the reference verifier accepts our string (interoperability).
    Argon2id.verify_phc_encoded(b"pw", phc)


async def test_verify_accepts_reference_hashes() -> None:
    ref = Argon2id(salt=b"s" * 16, length=32, iterations=2, lanes=1, memory_cost=128)
    phc = ref.derive_phc_encoded("pässwörd".encode())
    h = fast()
    assert await h.verify(phc, "pässwörd")
    assert not await h.verify(phc, "passwörd")


async def test_verify_round_trip_and_wrong_password() -> None:
    h = fast()
    phc = await h.hash(Password("s3cret!"))
    assert await h.verify(phc, Password("s3cret!"))
    assert await h.verify(phc, "s3cret!")
    assert not await h.verify(phc, "s3cret")
    assert await h.hash("s3cret!") != phc  # fresh salt


def test_password_repr_never_shows_value() -> None:
    p = Password("hunter2")
    assert "hunter2" not in repr(p) and "hunter2" not in str(p)
    assert p.value == "hunter2" and p.kind == "password"


@pytest.mark.parametrize("bad", ["", "x" * (MAX_PASSWORD_BYTES + 1), "é" * 513])
async def test_absurd_passwords_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        Password(bad)
    h = fast()
    with pytest.raises(ValueError):
        await h.hash(bad)
    phc = await h.hash("ok")
    calls = h.hash_calls
    assert await h.verify(phc, bad) is False
    assert h.hash_calls == calls  # refused before hashing


def test_longest_password_accepted() -> None:
    assert Password("x" * MAX_PASSWORD_BYTES).value


def test_needs_rehash() -> None:
    h = fast()
    phc = h.hash_sync("pw")
    assert not h.needs_rehash(phc)
    assert fast(time_cost=2).needs_rehash(phc)
    assert fast(memory_cost=128).needs_rehash(phc)
    assert h.needs_rehash("garbage")


MALFORMED = [
    "",
    "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
    "$argon2id$v=16$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
    "$argon2id$v=19$m=64,t=0,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
    "$argon2id$v=19$m=99999999999,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
    "$argon2id$v=19$m=64,t=1,p=0$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
    "$argon2id$v=19$m=4,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
    "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$",
    "$argon2id$v=19$m=64,t=1,p=1$!!!!!!!!!!!!$aGFzaGhhc2hoYXNoaGFzaA",
    "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0A$aGFzaGhhc2hoYXNoaGFzaA",
    "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA$extra",
    "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA\n",
]


@pytest.mark.parametrize("phc", MALFORMED)
async def test_malformed_phc_is_false_never_a_crash(phc: str) -> None:
    h = fast()
    assert await h.verify(phc, "pw") is False
    with pytest.raises(ValueError):
        PHCHash.parse(phc)
    assert h.hash_calls == 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_string_as_phc_is_clean(phc: str) -> None:
    h = fast()
    assert h.verify_sync(phc, "pw") in (False, True)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_byte_flips_in_hash_never_verify(noise: bytes) -> None:
    h = fast(random=SeededRandom(3))
    phc = h.hash_sync("pw")
    if not noise:
        return
    i = noise[0] % len(phc)
    flipped = phc[:i] + chr((ord(phc[i]) ^ (noise[-1] | 1)) % 128) + phc[i + 1 :]
    if flipped != phc:
        assert h.verify_sync(flipped, "pw") is False or PHCHash.parse(flipped) == PHCHash.parse(phc)


async def test_hashing_runs_off_the_event_loop_with_bounded_concurrency() -> None:
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    running = 0
    peak = 0
    lock = threading.Lock()

    def on_hash() -> None:
        nonlocal running, peak
        threads.add(threading.get_ident())
        with lock:
            running += 1
            peak = max(peak, running)
        # Hold the slot a little so overlaps are observable.
        threading.Event().wait(0.01)
        with lock:
            running -= 1

    h = fast(max_concurrency=2, on_hash=on_hash)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(5):
            ticks += 1
            await asyncio.sleep(0)

    await asyncio.gather(*(h.hash(f"pw{i}") for i in range(8)), ticker())
    assert loop_thread not in threads
    assert peak <= 2
    assert h.hash_calls == 8
    assert ticks == 5


async def test_verify_dummy_costs_one_hash_and_is_false() -> None:
    h = fast()
    assert await h.verify_dummy("anything") is False
    assert await h.verify_dummy("anything") is False
    assert h.hash_calls == 2


def test_invalid_parameters_rejected() -> None:
    for kw in ({"time_cost": 0}, {"memory_cost": 4}, {"parallelism": 0}, {"max_concurrency": 0}):
        with pytest.raises(ValueError):
            fast(**kw)
