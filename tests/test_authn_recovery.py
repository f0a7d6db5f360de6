"""Recovery codes: generation, normalization, keyed hashes, single use, regeneration."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axess.authn import RecoveryCode, RecoveryCodes
from axess.authn.recovery import (
    ALPHABET,
    RecoveryCodeHasher,
    RecoveryCodeStore,
    normalize_code,
)
from axess.clock import SeededRandom
from axess.keys import Key, Keyring
from axess.stores.memory_identity import MemoryRecoveryCodes


def _keys(*fingerprint: Key) -> Keyring:
    return Keyring(
        signing=[Key.generate("s1")],
        envelope=[Key.generate("e1")],
        fingerprint=list(fingerprint) or [Key.generate("f1")],
        csrf=[Key.generate("c1")],
        device=[Key.generate("d1")],
    )


def _codes() -> tuple[RecoveryCodes, MemoryRecoveryCodes]:
    store = MemoryRecoveryCodes()
    assert isinstance(store, RecoveryCodeStore)
    return RecoveryCodes(RecoveryCodeHasher(_keys(), random=SeededRandom(7)), store), store


def test_generate_ten_distinct_well_formed_codes() -> None:
    codes = RecoveryCodeHasher(_keys()).generate()
    assert len(codes) == 10 == len(set(codes))
    for code in codes:
        assert len(code) == 11 and code[5] == "-"
        assert all(c in ALPHABET for c in code.replace("-", ""))
    assert not set("01ILO") & set(ALPHABET)


async def test_only_hashes_are_stored_and_each_code_works_once() -> None:
    codes, store = _codes()
    issued = await codes.regenerate("u1")
    stored = store._codes["u1"]
    assert not any(c.replace("-", "") in h.upper() for c in issued for h in stored)
    assert await codes.remaining("u1") == 10
    assert await codes.consume("u1", RecoveryCode(issued[0]))
    assert not await codes.consume("u1", issued[0])
    assert not await codes.consume("u2", issued[1])  # per user
    assert await codes.remaining("u1") == 9


async def test_normalization_case_dashes_spaces() -> None:
    codes, _ = _codes()
    issued = await codes.regenerate("u1")
    raw = issued[0].replace("-", "")
    assert await codes.consume("u1", f"  {raw[:3].lower()} {raw[3:7]}-{raw[7:]} ")
    assert normalize_code("abcde-fghjk") == "ABCDEFGHJK"
    assert normalize_code("ABCDE-FGHJ") is None
    assert normalize_code("ABCDE-FGHJ0") is None


async def test_regenerate_invalidates_old_codes() -> None:
    codes, _ = _codes()
    old = await codes.regenerate("u1")
    new = await codes.regenerate("u1")
    assert not set(old) & set(new)
    assert not await codes.consume("u1", old[0])
    assert await codes.consume("u1", new[0])


async def test_concurrent_consumption_of_one_code_succeeds_once() -> None:
    codes, _ = _codes()
    issued = await codes.regenerate("u1")
    results = await asyncio.gather(*(codes.consume("u1", issued[3]) for _ in range(20)))
    assert results.count(True) == 1


async def test_codes_survive_a_pepper_key_rotation() -> None:
    old, new = Key.generate("f1"), Key.generate("f2")
    store = MemoryRecoveryCodes()
    issued = await RecoveryCodes(RecoveryCodeHasher(_keys(old)), store).regenerate("u1")
    rotated = RecoveryCodes(RecoveryCodeHasher(_keys(new, old)), store)
    assert await rotated.consume("u1", issued[0])
    other = RecoveryCodes(RecoveryCodeHasher(_keys(new)), store)
    assert not await other.consume("u1", issued[1])


def test_repr_hides_code() -> None:
    assert "ABCDE" not in repr(RecoveryCode("ABCDE-FGHJK"))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_input_is_a_clean_outcome(text: str) -> None:
    hasher = RecoveryCodeHasher(_keys(Key(kid="f1", secret=b"p" * 32)))
    cands = hasher.candidates(text)
    assert cands == [] or (len(cands) == 1 and len(cands[0]) == 64)
    if normalize_code(text) is None:
        with pytest.raises(ValueError):
            hasher.hash(text)
