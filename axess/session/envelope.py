"""``SessionCrypto``: the sealed envelope around a stored session payload.

Byte format (version 1)::

    0x01 | len(kid) (1 byte) | kid (ASCII) | nonce (12 bytes) | AES-256-GCM ciphertext + tag (16)

Associated data is the storage key (ASCII hex), so a row copied under
another key does not open. The key is selected by ``kid``; there is no
trial decryption.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from axess.clock import Random
from axess.crypto import Sealer
from axess.keys import Keyring

logger = logging.getLogger(__name__)

_HKDF_INFO: Final = "session-envelope-v1"


class SessionCrypto:
    """Seals and opens session payloads with the keyring's ``envelope`` keys.

    ``seal`` always uses the active key. ``open`` accepts any configured key;
    opening with a previous key logs INFO and calls ``on_previous_key`` (the
    metrics hook), and :meth:`needs_reseal` tells the caller to re-seal.
    """

    __slots__ = ("_on_previous", "_sealer")

    def __init__(
        self,
        keys: Keyring,
        *,
        random: Random | None = None,
        on_previous_key: Callable[[], None] | None = None,
    ) -> None:
        self._sealer = Sealer(keys, _HKDF_INFO, random=random)
        self._on_previous = on_previous_key

    @property
    def active_kid(self) -> str:
        return self._sealer.active_kid

    def seal(self, plaintext: bytes, storage_key: str) -> bytes:
        """Encrypt ``plaintext`` bound to ``storage_key`` under the active key."""
        return self._sealer.seal(plaintext, storage_key.encode("ascii"))

    def kid_of(self, sealed: bytes) -> str:
        """The kid written in ``sealed``. Raises :class:`EnvelopeError` if malformed."""
        return self._sealer.kid_of(sealed)

    def needs_reseal(self, sealed: bytes) -> bool:
        """True when ``sealed`` was not written with the active key."""
        return self._sealer.needs_reseal(sealed)

    def open(self, sealed: bytes, storage_key: str) -> bytes:
        """Decrypt ``sealed``. Raises :class:`EnvelopeError` (never anything else)
        for a bad version, unknown kid, truncation or a failed tag."""
        plaintext, previous = self._sealer.open(sealed, storage_key.encode("ascii"))
        if previous:
            logger.info("session decrypted with previous (rotated) key")
            if self._on_previous is not None:
                self._on_previous()
        return plaintext
