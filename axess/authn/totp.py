"""TOTP second factor (RFC 6238: HMAC-SHA-1, 6 digits, 30 s steps, ±1 step).

* :func:`verify` is pure: it takes the time and the last accepted step and
  returns the step it accepts (or ``None``). A step at or below the last
  accepted one is refused, so a code can be used once.
* The store records the accepted step with a compare-and-set
  (:class:`TOTPReplayGuard`): of two concurrent submissions of one code
  exactly one wins.
* Secrets are stored sealed (:class:`TOTPSecretSealer`): AES-256-GCM under an
  HKDF subkey of the keyring's ``envelope`` keys, the user id as associated
  data (a sealed secret copied to another user does not open), in the same
  byte format as session envelopes.
* A secret being enrolled travels as a *pending token*
  (:meth:`TOTPSecretSealer.seal_pending`): the same sealing with other
  associated data (a ``pending`` label and the user id) and the creation
  time inside, so it can neither be stored as, nor opened as, anyone's
  active secret. :class:`~axess.authn.users.UserAdmin` activates it only
  after a first correct code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import struct
from typing import Final, Protocol, runtime_checkable
from urllib.parse import quote, urlencode

from axess.clock import Random, SystemRandom
from axess.crypto import Sealer
from axess.errors import EnvelopeError, StoreError
from axess.keys import Keyring

logger = logging.getLogger(__name__)

DIGITS: Final = 6
PERIOD: Final = 30
#: Steps accepted on each side of the current one (clock drift, typing time).
WINDOW: Final = 1
SECRET_BYTES: Final = 20  # 160 bits, the RFC 4226 recommendation for SHA-1
_HKDF_INFO: Final = "totp-secret-v1"
_MAX_CODE_CHARS: Final = 32
#: Associated-data prefix of pending enrolment tokens (an active secret's is
#: the bare user id).
_PENDING_AD: Final = b"\x00totp-pending\x00"
_PENDING_VERSION: Final = 1
_PENDING_HEADER: Final = struct.Struct(">Bd")  # version, creation time (epoch s)
_MAX_PENDING_CHARS: Final = 512


class TOTPCode:
    """A TOTP code submitted by a user. ``repr`` never shows it.

    Spaces and dashes are ignored (``"123 456"``). Any string is accepted
    here; one that is not a code simply never verifies.
    """

    __slots__ = ("_value",)
    kind: Final = "totp"

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("a TOTP code must be a str")
        self._value = value

    @property
    def value(self) -> str:
        return self._value

    def normalized(self, digits: int = DIGITS) -> str | None:
        """The code as ``digits`` ASCII digits, or ``None`` if it is not one."""
        if len(self._value) > _MAX_CODE_CHARS:
            return None
        text = self._value.replace(" ", "").replace("-", "").strip()
        if len(text) != digits or not (text.isascii() and text.isdigit()):
            return None
        return text

    def __repr__(self) -> str:
        return "TOTPCode('***')"

    __str__ = __repr__


def generate_secret(random: Random | None = None) -> bytes:
    """A fresh 160-bit TOTP secret."""
    return (random or SystemRandom()).token_bytes(SECRET_BYTES)


def hotp(secret: bytes, counter: int, digits: int = DIGITS) -> str:
    """RFC 4226 HOTP value (HMAC-SHA-1, dynamic truncation) as ``digits`` digits."""
    if not 6 <= digits <= 8:
        raise ValueError("digits must be 6, 7 or 8")
    mac = hmac.new(secret, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def time_step(now: float, period: int = PERIOD) -> int:
    """The RFC 6238 time step ``T`` of ``now`` (epoch seconds)."""
    return math.floor(now / period)


def totp(secret: bytes, now: float, *, digits: int = DIGITS, period: int = PERIOD) -> str:
    """The code valid at ``now``."""
    return hotp(secret, time_step(now, period), digits)


def verify(
    secret: bytes,
    code: TOTPCode | str,
    now: float,
    last_step: int | None,
    *,
    window: int = WINDOW,
    digits: int = DIGITS,
    period: int = PERIOD,
) -> int | None:
    """The time step ``code`` is valid for (current ±``window``), or ``None``.

    Steps at or below ``last_step`` (the last accepted one) are refused: a
    code is never accepted twice, and neither is an older one after a newer
    one was used. The caller records the returned step with
    :meth:`TOTPReplayGuard.compare_and_set`. Never raises for any ``code``.
    """
    wanted = (code if isinstance(code, TOTPCode) else TOTPCode(code)).normalized(digits)
    if wanted is None or not math.isfinite(now):
        return None
    current = time_step(now, period)
    accepted: int | None = None
    # Every candidate is computed and compared (no early exit on a match).
    for step in range(current - window, current + window + 1):
        if step < 0 or (last_step is not None and step <= last_step):
            continue
        if hmac.compare_digest(hotp(secret, step, digits), wanted) and accepted is None:
            accepted = step
    return accepted


def provisioning_uri(
    secret: bytes,
    account: str,
    issuer: str,
    *,
    digits: int = DIGITS,
    period: int = PERIOD,
) -> str:
    """``otpauth://totp/<issuer>:<account>?secret=…&issuer=…&algorithm=SHA1&digits=6&period=30``.

    Label parts and parameters are percent-encoded (spaces as ``%20``, a
    ``:`` inside a part as ``%3A``) so that authenticator apps parse them.
    """
    if not account or not issuer:
        raise ValueError("account and issuer must be non-empty")
    b32 = base64.b32encode(secret).decode("ascii").rstrip("=")
    label = f"{quote(issuer, safe='')}:{quote(account, safe='')}"
    query = urlencode(
        {
            "secret": b32,
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": str(digits),
            "period": str(period),
        },
        quote_via=quote,
        safe="",
    )
    return f"otpauth://totp/{label}?{query}"


class TOTPSecretUnavailable(StoreError):
    """A stored TOTP secret opens with no configured envelope key (its key was
    removed too early, or the row was altered). A fault of the deployment,
    not of the user: the login answers 503 like a store outage (it is a
    :class:`~axess.errors.StoreError`), and nothing counts toward the lockout
    (book: Keys and key rotation)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"TOTP secret cannot be opened ({reason})", substore="factors")
        self.reason = reason


class TOTPSecretSealer:
    """Seals TOTP secrets for storage, bound to the user id.

    Uses the envelope format of :mod:`axess.crypto` with its own
    HKDF label; previous envelope keys still open. A secret opened with a
    previous key must be re-sealed under the active one before that key is
    removed: the login does it on a correct code (:meth:`open_checked`,
    :meth:`reseal`), a batch job can do it with :meth:`reseal` (book: Keys
    and key rotation). :meth:`open` raises :class:`~axess.errors.EnvelopeError`
    for anything that does not open.
    """

    __slots__ = ("_sealer",)

    def __init__(self, keys: Keyring, *, random: Random | None = None) -> None:
        self._sealer = Sealer(keys, _HKDF_INFO, random=random)

    def seal(self, secret: bytes, user_id: str) -> bytes:
        return self._sealer.seal(secret, user_id.encode("utf-8"))

    def open(self, sealed: bytes, user_id: str) -> bytes:
        return self._sealer.open(sealed, user_id.encode("utf-8"))[0]

    def open_checked(self, sealed: bytes, user_id: str) -> tuple[bytes, bool]:
        """``(secret, opened_with_previous_key)``; :class:`EnvelopeError` as
        :meth:`open` (``unknown key id`` when its key is no longer configured)."""
        return self._sealer.open(sealed, user_id.encode("utf-8"))

    def needs_reseal(self, sealed: bytes) -> bool:
        return self._sealer.needs_reseal(sealed)

    def reseal(self, sealed: bytes, user_id: str) -> bytes | None:
        """``sealed`` re-sealed under the active key, or ``None`` when it already
        is. Store it with
        :meth:`~axess.stores.base.IdentityStore.reseal_totp_secret` (which
        keeps the last accepted step). :class:`EnvelopeError` as :meth:`open`."""
        if not self._sealer.needs_reseal(sealed):
            return None
        return self.seal(self.open(sealed, user_id), user_id)

    def seal_pending(self, secret: bytes, user_id: str, created_at: float) -> str:
        """An opaque, URL-safe token carrying ``secret`` for ``user_id``'s
        enrolment and its creation time. Bound to the user id with a
        ``pending`` label, so it opens neither as an active secret nor for
        another user."""
        plaintext = _PENDING_HEADER.pack(_PENDING_VERSION, created_at) + secret
        sealed = self._sealer.seal(plaintext, _PENDING_AD + user_id.encode("utf-8"))
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open_pending(self, token: str, user_id: str) -> tuple[bytes, float]:
        """``(secret, created_at)`` of a token from :meth:`seal_pending`.

        Any configured envelope key opens it (rotation-safe). Raises
        :class:`~axess.errors.EnvelopeError` — never anything else — for a
        token that is not a string, malformed, tampered with, sealed for
        another user, or sealed with a key no longer configured. Expiry is
        the caller's decision (it knows the clock).
        """
        if not isinstance(token, str) or not 0 < len(token) <= _MAX_PENDING_CHARS:
            raise EnvelopeError("not a pending TOTP token")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise EnvelopeError("not a pending TOTP token") from None
        plaintext = self._sealer.open(raw, _PENDING_AD + user_id.encode("utf-8"))[0]
        header = _PENDING_HEADER.size
        if len(plaintext) <= header:
            raise EnvelopeError("truncated pending TOTP token")
        version, created_at = _PENDING_HEADER.unpack_from(plaintext)
        if version != _PENDING_VERSION or not math.isfinite(created_at):
            raise EnvelopeError("unsupported pending TOTP token")
        return plaintext[header:], created_at


@runtime_checkable
class TOTPReplayGuard(Protocol):
    """Where the last accepted step lives (the factor store implements it)."""

    async def compare_and_set(self, user: str, step: int) -> bool:
        """Atomically record ``step`` for ``user`` if it is above the stored
        one; True if it was recorded (the code is accepted)."""
        ...

    async def last_step(self, user: str) -> int | None: ...


class MemoryTOTPReplayGuard:
    """In-process :class:`TOTPReplayGuard` (no await between read and write)."""

    __slots__ = ("_steps",)

    def __init__(self) -> None:
        self._steps: dict[str, int] = {}

    async def compare_and_set(self, user: str, step: int) -> bool:
        current = self._steps.get(user)
        if current is not None and step <= current:
            return False
        self._steps[user] = step
        return True

    async def last_step(self, user: str) -> int | None:
        return self._steps.get(user)
