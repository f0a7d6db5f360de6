"""The session cookie: ``<session_id>.<signature>``.

``session_id`` is 32 random bytes, base64url without padding (43 chars).
The signature is an itsdangerous ``Signer`` (HMAC-SHA256) over the id, with
one signer per signing key so we know *which* key verified: a cookie that
only verifies with a previous key is re-signed with the active one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from itsdangerous import Signer

from axess.clock import Random
from axess.errors import ConfigurationError
from axess.keys import Keyring, Purpose
from axess.stack import join_headers

ID_BYTES: Final = 32
ID_CHARS: Final = 43
SIG_CHARS: Final = 43
COOKIE_CHARS: Final = ID_CHARS + 1 + SIG_CHARS
MAX_COOKIE_BYTES: Final = 4096
_B64URL_RE: Final = re.compile(rb"[A-Za-z0-9_-]{43}")
_HKDF_INFO: Final = "session-cookie-v1"


def new_session_id(random: Random) -> str:
    """32 random bytes, base64url without padding."""
    return base64.urlsafe_b64encode(random.token_bytes(ID_BYTES)).rstrip(b"=").decode("ascii")


def storage_key(session_id: str) -> str:
    """SHA-256 of the id (hex). The only form of the id a store ever sees."""
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


def is_canonical_id(raw: bytes) -> bool:
    """43 base64url chars that decode to 32 bytes and re-encode identically."""
    if _B64URL_RE.fullmatch(raw) is None:
        return False
    # The last char carries 2 unused bits; only the canonical form (zeros) is accepted.
    return base64.urlsafe_b64encode(base64.urlsafe_b64decode(raw + b"=")).rstrip(b"=") == raw


@dataclass(frozen=True, slots=True)
class VerifiedCookie:
    session_id: str
    #: ``storage_key(session_id)``, computed once.
    storage_key: str
    #: True when the signature came from a previous signing key.
    needs_resign: bool
    #: True when another cookie of the name in the same Cookie header verified
    #: too (a planted one, or the real one behind it): when this one names no
    #: live session, the session middleware tries the others.
    has_others: bool = False


class SessionCookieSigner:
    """Signs and verifies ``<id>.<signature>`` cookie values with every key of
    one keyring purpose: ``signing`` for the session cookie (the default),
    ``device`` for the device cookie (with its own HKDF ``info``)."""

    __slots__ = ("_active", "_signers")

    def __init__(
        self,
        keys: Keyring,
        *,
        purpose: Purpose = "signing",
        info: str = _HKDF_INFO,
    ) -> None:
        # key_derivation="none": the HKDF subkey is already purpose-bound, and
        # skipping itsdangerous's per-call derivation keeps verification cheap.
        self._signers = [
            Signer(
                keys.derive(purpose, info, kid=k.kid),
                key_derivation="none",
                digest_method=hashlib.sha256,
            )
            for k in keys.keys(purpose)
        ]
        self._active = self._signers[0]

    def sign(self, session_id: str) -> str:
        return self._active.sign(session_id.encode("ascii")).decode("ascii")

    def verify(self, raw: bytes) -> VerifiedCookie | None:
        """The id if ``raw`` is a canonical cookie value signed by a configured key.

        Not memoized here: the session middleware remembers the verdict per
        Cookie header, which is what a returning browser repeats.
        """
        if len(raw) != COOKIE_CHARS or raw[ID_CHARS] != 0x2E:  # "."
            return None
        sid, sig = raw[:ID_CHARS], raw[ID_CHARS + 1 :]
        if not is_canonical_id(sid):
            return None
        # Compare whole signature strings: a non-canonical base64 spelling of
        # the right MAC is refused instead of silently accepted.
        for index, signer in enumerate(self._signers):
            if hmac.compare_digest(signer.get_signature(sid), sig):
                text = sid.decode("ascii")
                return VerifiedCookie(text, storage_key(text), needs_resign=index > 0)
        return None


#: Cookies of one name looked at in one Cookie header. A browser sends
#: several when a sibling subdomain planted one for the parent domain or a
#: longer path (book: Sessions, "Cookie tossing"); the rest are ignored, so
#: a header stuffed with look-alikes costs at most this many checks.
MAX_SAME_NAME: Final = 8


def cookie_values(header: bytes | None, name: bytes) -> Iterator[bytes]:
    """The values of the cookies called ``name`` in a Cookie header value, in
    the order sent (at most :data:`MAX_SAME_NAME`).

    Values over :data:`MAX_COOKIE_BYTES` are skipped. Callers take the first
    value that *verifies*, not the first present: a planted cookie of the
    same name ahead of the real one must not hide it.
    """
    if header is None:
        return
    needle = name + b"="
    seen = 0
    start = header.find(needle)
    while start != -1:
        # Only a match at the start of a cookie pair counts: "xaxess.sid="
        # does not, nor "q=a axess.sid=" (a value may hold spaces, and a
        # script-written cookie could plant a session id ahead of ours).
        before = start
        while before and header[before - 1] in b" \t":
            before -= 1
        if before == 0 or header[before - 1] == 0x3B:  # ';'
            end = header.find(b";", start)
            if end == -1:
                end = len(header)
            v = header[start + len(needle) : end].strip()
            if len(v) <= MAX_COOKIE_BYTES:
                if len(v) >= 2 and v[0] == v[-1] == 0x22:  # tolerate RFC 6265 quoting
                    v = v[1:-1]
                yield v
            seen += 1
            if seen == MAX_SAME_NAME or end == len(header):
                return
            start = header.find(needle, end)
        else:
            start = header.find(needle, start + 1)


def find_cookie(header: bytes | None, name: bytes) -> bytes | None:
    """The value of the first cookie called ``name`` in a Cookie header value
    (see :func:`cookie_values`), or ``None``."""
    return next(cookie_values(header, name), None)


def default_cookie_name(base: str, *, secure: bool, path: str, domain: str | None = None) -> str:
    """``__Host-<base>`` when a cookie with these attributes can carry the
    prefix (Secure, ``Path=/``, no ``Domain``), else ``base``.

    A ``__Host-`` cookie can only be set by the host itself, so a sibling
    subdomain cannot plant one for the parent domain ahead of ours (book:
    Sessions, "Cookie tossing").
    """
    return f"__Host-{base}" if secure and path == "/" and domain is None else base


def check_cookie_prefix(name: str, *, secure: bool, path: str, domain: str | None = None) -> None:
    """Raise :class:`ConfigurationError` when ``name``'s prefix asks for
    attributes the cookie does not have (a browser would refuse to store it)."""
    if name.startswith(("__Host-", "__Secure-")) and not secure:
        raise ConfigurationError(f"a {name.split('-')[0]}- cookie requires secure=True")
    if name.startswith("__Host-") and (path != "/" or domain is not None):
        raise ConfigurationError("a __Host- cookie requires path='/' and no domain")


#: Cookie headers up to this size are remembered by header value (the
#: session middleware's verdicts, CSRF's "token fits" answers); larger ones
#: are searched every time (the memory bound of each memo is in the book's
#: sessions chapter, "Memos").
MAX_MEMO_HEADER_BYTES: Final = 1024
#: Characters of a :func:`storage_key` (SHA-256 in hex).
STORAGE_KEY_CHARS: Final = 64


def first_cookie(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """:func:`find_cookie` over a raw ASGI header list (all Cookie lines, in order)."""
    return find_cookie(join_headers(headers).get(b"cookie"), name)
