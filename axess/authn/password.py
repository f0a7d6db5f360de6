"""Password credentials and Argon2id hashing (book: Login).

Hashes are PHC strings in the reference Argon2 format::

    $argon2id$v=19$m=19456,t=2,p=1$<salt, base64 no padding>$<hash, base64 no padding>

(standard base64 alphabet, as written by the reference implementation,
argon2-cffi and passlib), so hashes move freely between them and axess.

Hashing is CPU- and memory-heavy (≈ 50 ms): it runs in a worker thread
(:func:`asyncio.to_thread`) behind a semaphore of ``max_concurrency``, so the
event loop never blocks on it and a login burst cannot exhaust memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from axess.clock import Random, SystemRandom
from axess.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: Longest accepted password, in UTF-8 bytes (longer input is refused, not truncated).
MAX_PASSWORD_BYTES: Final = 1024
SALT_BYTES: Final = 16
HASH_BYTES: Final = 32
_VERSION: Final = 19
# Bounds for parameters read from a stored hash: a corrupted or hostile row
# must not make a verification allocate gigabytes or spin for minutes.
_MAX_MEMORY_KIB: Final = 1 << 21  # 2 GiB
_MAX_TIME: Final = 64
_MAX_LANES: Final = 64
_PHC: Final = re.compile(
    r"^\$argon2id\$v=(\d{1,3})\$m=(\d{1,10}),t=(\d{1,10}),p=(\d{1,10})"
    r"\$([A-Za-z0-9+/]{11,88})\$([A-Za-z0-9+/]{6,172})$"
)


class Password:
    """A password submitted by a user. ``repr``/``str`` never show the value.

    Raises :class:`ValueError` for an empty password or one longer than
    :data:`MAX_PASSWORD_BYTES` UTF-8 bytes, :class:`TypeError` for a non-string.
    """

    __slots__ = ("_value",)
    kind: Final = "password"

    def __init__(self, value: str) -> None:
        self._value = _check(value)

    @property
    def value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Password('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Password):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Password, self._value))


def _check(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("a password must be a str")
    if not value:
        raise ValueError("the password is empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("the password is not valid Unicode text") from None
    if size > MAX_PASSWORD_BYTES:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    return value


def _secret(password: str | Password) -> bytes:
    text = password.value if isinstance(password, Password) else _check(password)
    return text.encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if len(text) % 4 == 1:
        raise ValueError("bad base64 length")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@dataclass(frozen=True, slots=True)
class PHCHash:
    """A parsed ``$argon2id$`` string."""

    memory_cost: int
    time_cost: int
    parallelism: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, phc: str) -> PHCHash:
        """Parse ``phc``; :class:`ValueError` (never anything else) if it is malformed,
        not Argon2id v19, or has out-of-bounds parameters."""
        if not isinstance(phc, str):
            raise ValueError("a PHC hash must be a str")
        m = _PHC.fullmatch(phc)
        if m is None:
            raise ValueError("not an $argon2id$v=19$ PHC string")
        version, mem, time_cost, lanes = (int(g) for g in m.group(1, 2, 3, 4))
        if version != _VERSION:
            raise ValueError("unsupported Argon2 version")
        if not (1 <= lanes <= _MAX_LANES and 8 * lanes <= mem <= _MAX_MEMORY_KIB):
            raise ValueError("Argon2 memory/parallelism out of bounds")
        if not 1 <= time_cost <= _MAX_TIME:
            raise ValueError("Argon2 time cost out of bounds")
        try:
            salt, digest = _unb64(m.group(5)), _unb64(m.group(6))
        except (binascii.Error, ValueError):
            raise ValueError("bad base64 in PHC string") from None
        if not (8 <= len(salt) <= 64 and 4 <= len(digest) <= 128):
            raise ValueError("salt or hash length out of bounds")
        return cls(mem, time_cost, lanes, salt, digest)

    def encode(self) -> str:
        return (
            f"$argon2id$v={_VERSION}$m={self.memory_cost},t={self.time_cost},"
            f"p={self.parallelism}${_b64(self.salt)}${_b64(self.digest)}"
        )


def _derive(secret: bytes, salt: bytes, length: int, t: int, m: int, p: int) -> bytes:
    kdf = Argon2id(salt=salt, length=length, iterations=t, lanes=p, memory_cost=m)
    return kdf.derive(secret)


def default_max_concurrency(cpus: int | None = None) -> int:
    """Concurrent hashes allowed by default: one core is left to the event
    loop (measured on 2 cores with 8 logins hashing: 4 concurrent hashes
    raised other requests' p99 ~14x, 1 hash ~1.7x), at most 4."""
    cpus = os.cpu_count() if cpus is None else cpus
    return max(1, min(4, (cpus or 2) - 1))


class PasswordHasher:
    """Argon2id hashing with configurable cost (defaults: OWASP's m=19 MiB, t=2, p=1).

    * :meth:`hash` / :meth:`verify` / :meth:`verify_dummy` run the KDF in a
      worker thread, at most ``max_concurrency`` at a time.
    * :meth:`needs_rehash` is true when a stored hash used other parameters
      (rehash on the next successful login).
    * :attr:`hash_calls` counts KDF runs and ``on_hash`` (if set) is called
      before each one: tests assert that a refused login performed none.
    """

    def __init__(
        self,
        *,
        time_cost: int = 2,
        memory_cost: int = 19456,
        parallelism: int = 1,
        max_concurrency: int | None = None,
        hash_len: int = HASH_BYTES,
        salt_len: int = SALT_BYTES,
        random: Random | None = None,
        on_hash: Callable[[], None] | None = None,
    ) -> None:
        if not 1 <= parallelism <= _MAX_LANES:
            raise ConfigurationError(f"parallelism must be in 1..{_MAX_LANES}")
        if not 8 * parallelism <= memory_cost <= _MAX_MEMORY_KIB:
            raise ConfigurationError(
                f"memory_cost must be in {8 * parallelism}..{_MAX_MEMORY_KIB} KiB"
            )
        if not 1 <= time_cost <= _MAX_TIME:
            raise ConfigurationError(f"time_cost must be in 1..{_MAX_TIME}")
        if max_concurrency is None:
            max_concurrency = default_max_concurrency()
        if max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be at least 1")
        if not 16 <= hash_len <= 128 or not 16 <= salt_len <= 64:
            raise ConfigurationError("hash_len must be in 16..128 and salt_len in 16..64")
        self.time_cost = time_cost
        self.memory_cost = memory_cost
        self.parallelism = parallelism
        self.max_concurrency = max_concurrency
        self.hash_len = hash_len
        self.salt_len = salt_len
        self.on_hash = on_hash
        #: Number of Argon2 computations started (hash, verify, verify_dummy).
        self.hash_calls = 0
        self._random = random or SystemRandom()
        self._semaphore: asyncio.Semaphore | None = None
        self._dummy: str | None = None

    def __repr__(self) -> str:
        return (
            f"PasswordHasher(time_cost={self.time_cost}, memory_cost={self.memory_cost}, "
            f"parallelism={self.parallelism}, max_concurrency={self.max_concurrency})"
        )

    # -- sync core (what the worker thread runs) ------------------------------
    def hash_sync(self, password: str | Password) -> str:
        """Hash in the calling thread. Prefer :meth:`hash` in async code."""
        secret = _secret(password)
        salt = self._random.token_bytes(self.salt_len)
        self._count()
        digest = _derive(
            secret, salt, self.hash_len, self.time_cost, self.memory_cost, self.parallelism
        )
        return PHCHash(self.memory_cost, self.time_cost, self.parallelism, salt, digest).encode()

    def verify_sync(self, phc: str, password: str | Password) -> bool:
        """Verify in the calling thread. False for a wrong password, an
        unacceptable password or a malformed hash; never raises for bad input."""
        try:
            secret = _secret(password)
            parsed = PHCHash.parse(phc)
        except (TypeError, ValueError):
            return False
        self._count()
        candidate = _derive(
            secret,
            parsed.salt,
            len(parsed.digest),
            parsed.time_cost,
            parsed.memory_cost,
            parsed.parallelism,
        )
        return hmac.compare_digest(candidate, parsed.digest)

    def _count(self) -> None:
        self.hash_calls += 1
        if self.on_hash is not None:
            self.on_hash()

    # -- async API ------------------------------------------------------------
    async def _off_loop(self, fn: Callable[[], str | bool]) -> str | bool:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        async with self._semaphore:
            return await asyncio.to_thread(fn)

    async def hash(self, password: str | Password) -> str:
        """A new PHC string for ``password`` (fresh salt). ValueError for an
        empty or over-long password."""
        secret = Password(password) if isinstance(password, str) else password
        result = await self._off_loop(lambda: self.hash_sync(secret))
        assert isinstance(result, str)
        return result

    async def verify(self, phc: str, password: str | Password) -> bool:
        """True iff ``password`` matches ``phc`` (constant-time comparison)."""
        return bool(await self._off_loop(lambda: self.verify_sync(phc, password)))

    async def verify_dummy(self, password: str | Password) -> bool:
        """Run one verification against a fixed dummy hash with the current
        parameters, for unknown users, so their attempt costs the same time
        as a real one. Always False."""
        if self._dummy is None:
            # Any well-formed hash with the current parameters costs the same
            # to verify; random bytes need no hashing to make.
            self._dummy = PHCHash(
                self.memory_cost,
                self.time_cost,
                self.parallelism,
                self._random.token_bytes(self.salt_len),
                self._random.token_bytes(self.hash_len),
            ).encode()
        await self.verify(self._dummy, password)
        return False

    def needs_rehash(self, phc: str) -> bool:
        """True when ``phc`` is malformed or was made with other parameters."""
        try:
            p = PHCHash.parse(phc)
        except ValueError:
            return True
        return (p.memory_cost, p.time_cost, p.parallelism, len(p.digest), len(p.salt)) != (
            self.memory_cost,
            self.time_cost,
            self.parallelism,
            self.hash_len,
            self.salt_len,
        )
