"""Key material: ordered key lists per purpose, loaded from the environment.

A :class:`Keyring` holds one ordered list of :class:`Key` per purpose. The
first key of a list is *active* (signs, seals); the others only verify or
open, which is what makes zero-downtime rotation possible.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from axess.errors import ConfigurationError

logger = logging.getLogger(__name__)

Purpose = Literal["signing", "envelope", "fingerprint", "csrf", "device"]
PURPOSES: Final[tuple[Purpose, ...]] = ("signing", "envelope", "fingerprint", "csrf", "device")
ENV_VARS: Final[dict[Purpose, str]] = {
    "signing": "AXESS_SIGNING_KEYS",
    "envelope": "AXESS_ENVELOPE_KEYS",
    "fingerprint": "AXESS_FINGERPRINT_KEYS",
    "csrf": "AXESS_CSRF_KEYS",
    "device": "AXESS_DEVICE_KEYS",
}
KEY_BYTES: Final = 32
_KID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True, slots=True)
class Key:
    """One secret with its key id. ``repr`` never shows the secret."""

    kid: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _KID_RE.fullmatch(self.kid):
            raise ConfigurationError(
                f"key id {self.kid!r} is invalid: use 1-32 characters from [A-Za-z0-9_-]"
            )
        if len(self.secret) < KEY_BYTES:
            raise ConfigurationError(
                f"key {self.kid!r} is {len(self.secret)} bytes; at least {KEY_BYTES} are required"
            )
        if not any(self.secret):
            raise ConfigurationError(f"key {self.kid!r} is all zero bytes")

    @classmethod
    def generate(cls, kid: str) -> Key:
        """A fresh random 32-byte key."""
        return cls(kid, secrets.token_bytes(KEY_BYTES))

    def encode(self) -> str:
        """``kid:base64url`` as read by :meth:`Keyring.from_env`."""
        return f"{self.kid}:{base64.urlsafe_b64encode(self.secret).rstrip(b'=').decode()}"


def parse_key_list(text: str, *, purpose: str = "key") -> list[Key]:
    """Parse ``kid:base64url,kid:base64url`` (first = active).

    Raises :class:`ConfigurationError` on any malformed entry; the message
    names the purpose and the position, never the secret.
    """
    keys: list[Key] = []
    for position, raw in enumerate(text.split(","), start=1):
        entry = raw.strip()
        if not entry:
            raise ConfigurationError(f"{purpose} keys: entry {position} is empty")
        kid, sep, b64 = entry.partition(":")
        if not sep:
            raise ConfigurationError(f"{purpose} keys: entry {position} is not 'kid:base64url'")
        try:
            secret = base64.b64decode(b64 + "=" * (-len(b64) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(
                f"{purpose} keys: entry {position} ({kid!r}) is not valid base64url"
            ) from None
        keys.append(Key(kid.strip(), secret))
    return keys


class Keyring:
    """Ordered key lists for the five purposes (``signing``, ``envelope``,
    ``fingerprint``, ``csrf``, ``device``).

    Raises :class:`ConfigurationError` for an empty list, duplicate kids within
    a purpose, or the same secret used for two purposes (or twice within one).
    """

    __slots__ = ("_keys", "ephemeral")

    def __init__(
        self,
        *,
        signing: Sequence[Key],
        envelope: Sequence[Key],
        fingerprint: Sequence[Key],
        csrf: Sequence[Key],
        device: Sequence[Key],
        ephemeral: bool = False,
    ) -> None:
        lists: dict[Purpose, tuple[Key, ...]] = {
            "signing": tuple(signing),
            "envelope": tuple(envelope),
            "fingerprint": tuple(fingerprint),
            "csrf": tuple(csrf),
            "device": tuple(device),
        }
        seen_secrets: dict[bytes, str] = {}
        for purpose, keys in lists.items():
            if not keys:
                raise ConfigurationError(f"no {purpose} key configured ({ENV_VARS[purpose]})")
            kids = [k.kid for k in keys]
            dup = {k for k in kids if kids.count(k) > 1}
            if dup:
                raise ConfigurationError(f"duplicate {purpose} key id(s): {sorted(dup)}")
            for key in keys:
                other = seen_secrets.get(key.secret)
                if other is not None:
                    raise ConfigurationError(
                        f"key {key.kid!r} ({purpose}) has the same bytes as {other}; "
                        "every purpose needs its own keys"
                    )
                seen_secrets[key.secret] = f"{key.kid!r} ({purpose})"
        self._keys = lists
        #: True for keys made by :meth:`generate`: fine for a demo, refused
        #: outside ``debug=True`` because they vanish with the process.
        self.ephemeral = ephemeral

    # -- construction -----------------------------------------------------
    @classmethod
    def generate(cls) -> Keyring:
        """Fresh random keys for development. Marked ``ephemeral``."""
        return cls(
            signing=[Key.generate("s1")],
            envelope=[Key.generate("e1")],
            fingerprint=[Key.generate("f1")],
            csrf=[Key.generate("c1")],
            device=[Key.generate("d1")],
            ephemeral=True,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring:
        """Read ``AXESS_SIGNING_KEYS``, ``AXESS_ENVELOPE_KEYS``,
        ``AXESS_FINGERPRINT_KEYS``, ``AXESS_CSRF_KEYS`` and ``AXESS_DEVICE_KEYS``.

        Raises :class:`ConfigurationError` naming the missing variable.
        """
        env = os.environ if environ is None else environ
        lists: dict[str, list[Key]] = {}
        for purpose, var in ENV_VARS.items():
            text = env.get(var, "").strip()
            if not text:
                raise ConfigurationError(
                    f"{var} is not set; generate keys with `axess keygen` "
                    "(or use Keyring.generate() with debug=True for local development)"
                )
            lists[purpose] = parse_key_list(text, purpose=purpose)
        return cls(**lists)  # type: ignore[arg-type]

    # -- access -------------------------------------------------------------
    def keys(self, purpose: Purpose) -> tuple[Key, ...]:
        """All keys for ``purpose``, active first."""
        return self._keys[purpose]

    def active(self, purpose: Purpose) -> Key:
        """The key that signs/seals for ``purpose``."""
        return self._keys[purpose][0]

    def find(self, purpose: Purpose, kid: str) -> Key | None:
        """The key with this kid, or ``None``."""
        for key in self._keys[purpose]:
            if key.kid == kid:
                return key
        return None

    def derive(
        self,
        purpose: Purpose,
        info: str,
        *,
        length: int = 32,
        kid: str | None = None,
        salt: bytes | None = None,
    ) -> bytes:
        """HKDF-SHA256 subkey of ``purpose``'s active key (or ``kid``) for ``info``
        (and the optional HKDF ``salt``).

        Distinct ``info`` labels (or salts) give independent subkeys.
        """
        key = self.active(purpose) if kid is None else self.find(purpose, kid)
        if key is None:
            raise ConfigurationError(f"no {purpose} key with id {kid!r}")
        return hkdf(key.secret, info=f"axess/{purpose}/{info}".encode(), length=length, salt=salt)

    def env_lines(self) -> list[str]:
        """``VAR=value`` lines that :meth:`from_env` reads back."""
        return [f"{ENV_VARS[p]}={','.join(k.encode() for k in self._keys[p])}" for p in PURPOSES]

    def __repr__(self) -> str:
        kids = {p: [k.kid for k in ks] for p, ks in self._keys.items()}
        return f"Keyring({kids}, ephemeral={self.ephemeral})"


def hkdf(secret: bytes, *, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)
