"""The envelope format: AES-256-GCM sealing with versioned, kid-tagged
keys (book: Sessions, "The envelope format").

Byte format (version 1)::

    0x01 | len(kid) (1 byte) | kid (ASCII) | nonce (12 bytes) | AES-256-GCM ciphertext + tag (16)

The key is selected by ``kid``; there is no trial decryption. A pure core:
session payloads (:class:`axess.session.envelope.SessionCrypto`) and sealed
TOTP secrets (:class:`axess.authn.totp.TOTPSecretSealer`) both build on it
with their own HKDF label and associated data.
"""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from axess.clock import Random, SystemRandom
from axess.errors import EnvelopeError
from axess.keys import Keyring

VERSION: Final = 0x01
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16


class Sealer:
    """AES-256-GCM sealing in the envelope byte format above, with HKDF
    subkeys (label ``info``) of the keyring's ``envelope`` keys.

    Shared by :class:`SessionCrypto` and the sealed TOTP secrets: the active
    key seals; any configured key opens, selected by the kid in the header.
    """

    __slots__ = ("_active_kid", "_aeads", "_header", "_random")

    def __init__(self, keys: Keyring, info: str, *, random: Random | None = None) -> None:
        self._aeads: dict[bytes, AESGCM] = {}
        for key in keys.keys("envelope"):
            sub = keys.derive("envelope", info, kid=key.kid)
            self._aeads[key.kid.encode("ascii")] = AESGCM(sub)
        active = keys.active("envelope").kid.encode("ascii")
        self._active_kid = active
        self._header = bytes((VERSION, len(active))) + active
        self._random = random or SystemRandom()

    @property
    def active_kid(self) -> str:
        return self._active_kid.decode("ascii")

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt ``plaintext`` bound to ``associated_data`` under the active key."""
        nonce = self._random.token_bytes(NONCE_BYTES)
        aead = self._aeads[self._active_kid]
        return self._header + nonce + aead.encrypt(nonce, plaintext, associated_data)

    def kid_of(self, sealed: bytes) -> str:
        """The kid written in ``sealed``. Raises :class:`EnvelopeError` if malformed."""
        return self.parse(sealed)[0].decode("ascii", "replace")

    def needs_reseal(self, sealed: bytes) -> bool:
        """True when ``sealed`` was not written with the active key."""
        n = len(self._active_kid)
        return sealed[1:2] != bytes((n,)) or sealed[2 : 2 + n] != self._active_kid

    def open(self, sealed: bytes, associated_data: bytes) -> tuple[bytes, bool]:
        """``(plaintext, opened_with_previous_key)``. Raises :class:`EnvelopeError`
        (never anything else) for a bad version, unknown kid, truncation or a
        failed tag."""
        kid, nonce, body = self.parse(sealed)
        aead = self._aeads.get(kid)
        if aead is None:
            raise EnvelopeError("unknown key id")
        try:
            plaintext = aead.decrypt(nonce, body, associated_data)
        except InvalidTag:
            raise EnvelopeError("authentication tag mismatch") from None
        return plaintext, kid != self._active_kid

    @staticmethod
    def parse(sealed: bytes) -> tuple[bytes, bytes, bytes]:
        """``(kid, nonce, ciphertext+tag)``; :class:`EnvelopeError` if malformed."""
        if len(sealed) < 2 or sealed[0] != VERSION:
            raise EnvelopeError("unsupported envelope version")
        kid_len = sealed[1]
        start = 2 + kid_len
        if kid_len == 0 or len(sealed) < start + NONCE_BYTES + TAG_BYTES:
            raise EnvelopeError("truncated envelope")
        return sealed[2:start], sealed[start : start + NONCE_BYTES], sealed[start + NONCE_BYTES :]
