"""Recovery codes: 10 single-use codes, stored only as keyed hashes.

A code is 10 characters from a 31-letter alphabet without look-alikes
(no 0/O, 1/I/L), shown as ``XXXXX-XXXXX``: about 49.5 random bits each.

**Why HMAC and not Argon2.** A slow hash protects *low-entropy* secrets
(passwords) against offline guessing. A recovery code carries 50 random
bits, and the hash is keyed with an HKDF subkey of the keyring's
``fingerprint`` (pepper) keys, which never live in the database: a stolen
table cannot be attacked offline at all without the key, and even with it
2^49 guesses per code remain. A fast HMAC-SHA256 therefore suffices and
keeps a recovery attempt cheap (the lockout still limits online guessing).

Input is normalized before hashing: case, spaces and dashes are ignored.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Sequence
from typing import Final, Protocol, runtime_checkable

from axess.clock import Random, SystemRandom
from axess.keys import Keyring

ALPHABET: Final = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH: Final = 10
CODE_COUNT: Final = 10
_HKDF_INFO: Final = "recovery-code-v1"
_MAX_INPUT: Final = 64
# 31 letters: rejection sampling keeps the choice uniform.
_LIMIT: Final = 256 - 256 % len(ALPHABET)


class RecoveryCode:
    """A recovery code submitted by a user. ``repr`` never shows it."""

    __slots__ = ("_value",)
    kind: Final = "recovery"

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("a recovery code must be a str")
        self._value = value

    @property
    def value(self) -> str:
        return self._value

    def normalized(self) -> str | None:
        """Upper-case, without spaces and dashes; ``None`` if not a well-formed code."""
        return normalize_code(self._value)

    def __repr__(self) -> str:
        return "RecoveryCode('***')"

    __str__ = __repr__


def normalize_code(value: str) -> str | None:
    """``value`` upper-cased without spaces/dashes, or ``None`` if it is not
    :data:`CODE_LENGTH` characters of :data:`ALPHABET`."""
    if not isinstance(value, str) or len(value) > _MAX_INPUT:
        return None
    text = "".join(value.split()).replace("-", "").upper()
    if len(text) != CODE_LENGTH or any(c not in ALPHABET for c in text):
        return None
    return text


class RecoveryCodeHasher:
    """Generates codes and computes their stored hashes."""

    __slots__ = ("_keys", "_random")

    def __init__(self, keys: Keyring, *, random: Random | None = None) -> None:
        # One subkey per configured pepper key: codes hashed before a key
        # rotation still match through the previous key.
        self._keys = [
            keys.derive("fingerprint", _HKDF_INFO, kid=k.kid) for k in keys.keys("fingerprint")
        ]
        self._random = random or SystemRandom()

    def generate(self, count: int = CODE_COUNT) -> list[str]:
        """``count`` fresh codes in display form ``XXXXX-XXXXX`` (all distinct)."""
        codes: list[str] = []
        while len(codes) < count:
            chars: list[str] = []
            while len(chars) < CODE_LENGTH:
                for b in self._random.token_bytes(CODE_LENGTH):
                    if b < _LIMIT and len(chars) < CODE_LENGTH:
                        chars.append(ALPHABET[b % len(ALPHABET)])
            code = "".join(chars)
            display = f"{code[:5]}-{code[5:]}"
            if display not in codes:
                codes.append(display)
        return codes

    def hash(self, code: str) -> str:
        """The stored form of ``code`` (hex HMAC-SHA256 under the active key).
        ValueError if ``code`` is not a well-formed code."""
        normalized = normalize_code(code)
        if normalized is None:
            raise ValueError("not a recovery code")
        return self._digest(self._keys[0], normalized)

    def candidates(self, code: RecoveryCode | str) -> list[str]:
        """Hashes ``code`` could be stored under (one per configured key);
        empty for malformed input."""
        text = code.value if isinstance(code, RecoveryCode) else code
        normalized = normalize_code(text)
        if normalized is None:
            return []
        return [self._digest(k, normalized) for k in self._keys]

    @staticmethod
    def _digest(key: bytes, normalized: str) -> str:
        return hmac.new(key, normalized.encode("ascii"), hashlib.sha256).hexdigest()


@runtime_checkable
class RecoveryCodeStore(Protocol):
    """Where a user's code hashes live (the factor store implements it)."""

    async def replace_recovery_codes(self, user: str, hashes: Sequence[str]) -> None:
        """Store ``hashes`` as the user's codes, invalidating all previous ones."""
        ...

    async def consume_recovery_code(self, user: str, candidates: Collection[str]) -> bool:
        """Atomically remove one stored hash among ``candidates``; True if one was."""
        ...

    async def count_recovery_codes(self, user: str) -> int: ...


class RecoveryCodes:
    """Regenerate and consume a user's codes over a :class:`RecoveryCodeStore`."""

    __slots__ = ("_hasher", "_store")

    def __init__(self, hasher: RecoveryCodeHasher, store: RecoveryCodeStore) -> None:
        self._hasher = hasher
        self._store = store

    async def regenerate(self, user: str, count: int = CODE_COUNT) -> list[str]:
        """New codes for ``user`` (shown once); every previous code stops working."""
        codes = self._hasher.generate(count)
        await self._store.replace_recovery_codes(user, [self._hasher.hash(c) for c in codes])
        return codes

    async def consume(self, user: str, code: RecoveryCode | str) -> bool:
        """True exactly once per issued code; False for anything else."""
        candidates = self._hasher.candidates(code)
        if not candidates:
            return False
        return await self._store.consume_recovery_code(user, candidates)

    async def remaining(self, user: str) -> int:
        return await self._store.count_recovery_codes(user)
