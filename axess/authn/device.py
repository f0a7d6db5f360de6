"""The device cookie: a long-lived, signed, HttpOnly cookie that names a
browser which completed a login (book: Lockout, "Trusted origins").

Its value has the session cookie's format, ``<device_id>.<signature>``
(32 random bytes, base64url; HMAC-SHA256 under an HKDF subkey of the
keyring's ``device`` keys), but it is a separate secret that opens nothing:
it only lets the lockout tell "a browser that logged in to this account
before" from "anyone else on the same network". Verification tries every
``device`` key, so rotating them works like the other purposes; a cookie
signed by a previous key is re-signed on the next successful login.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Final

from starlette.requests import HTTPConnection

from axess.clock import Random, SystemRandom
from axess.errors import ConfigurationError
from axess.keys import Keyring
from axess.session.cookie import (
    SessionCookieSigner,
    check_cookie_prefix,
    cookie_values,
    default_cookie_name,
    new_session_id,
)
from axess.stack import queue_response_headers

logger = logging.getLogger(__name__)

#: The device cookie's name without a prefix: the default when the cookie
#: cannot carry ``__Host-`` (not Secure, or a path other than ``/``).
DEVICE_COOKIE: Final = "axess.device"
_HKDF_INFO: Final = "device-cookie-v1"


@dataclass(frozen=True, slots=True)
class DeviceCookieConfig:
    """Cookie attributes of the device cookie. ``max_age`` (seconds) is
    normally the lockout's ``trusted_origin_ttl``.

    ``name``: ``""`` (the default) is ``__Host-axess.device`` when the cookie
    can carry the prefix (``secure`` and ``path="/"``), else ``axess.device``
    (book: Lockout, "Trusted origins and the device cookie"); the name in use is
    :attr:`resolved_name`."""

    name: str = ""
    max_age: int = 30 * 86_400
    secure: bool = True
    path: str = "/"
    #: The cookie name in use, resolved at construction.
    resolved_name: str = field(init=False)

    def __post_init__(self) -> None:
        name = self.name or default_cookie_name(DEVICE_COOKIE, secure=self.secure, path=self.path)
        object.__setattr__(self, "resolved_name", name)
        if any(c in name for c in ' ;,=\t\r\n"') or not name.isascii():
            raise ConfigurationError(f"invalid device cookie name {name!r}")
        check_cookie_prefix(name, secure=self.secure, path=self.path)


class DeviceCookie:
    """Reads and issues the device cookie (see the module docstring)."""

    def __init__(
        self,
        keys: Keyring,
        config: DeviceCookieConfig | None = None,
        *,
        random: Random | None = None,
    ) -> None:
        self.config = config or DeviceCookieConfig()
        self._name = self.config.resolved_name.encode("ascii")
        # Read on login attempts only, never on the request hot path: no memo.
        self._signer = SessionCookieSigner(keys, purpose="device", info=_HKDF_INFO)
        self._random = random or SystemRandom()

    def read(self, conn: HTTPConnection) -> str | None:
        """The device id of a validly signed device cookie, else ``None``
        (absent, malformed or forged cookies are all just absent). Of several
        cookies of the name, the first that verifies: one planted ahead of
        the browser's own does not hide it (book: Lockout, "Trusted origins
        and the device cookie")."""
        header = conn.headers.get("cookie")
        if not header:
            return None
        try:
            raw_header = header.encode("latin-1")
        except UnicodeEncodeError:
            return None
        for raw in cookie_values(raw_header, self._name):
            verified = self._signer.verify(raw)
            if verified is not None:
                return verified.session_id
        return None

    def new_id(self) -> str:
        return new_session_id(self._random)

    def set_cookie(self, device_id: str) -> bytes:
        """The ``Set-Cookie`` header value carrying ``device_id``."""
        cfg = self.config
        attrs = [f"Max-Age={cfg.max_age}", f"Path={cfg.path}", "HttpOnly", "SameSite=Lax"]
        if cfg.secure:
            attrs.append("Secure")
        value = self._signer.sign(device_id)
        return f"{cfg.resolved_name}={value}; {'; '.join(attrs)}".encode("latin-1")

    def issue(self, conn: HTTPConnection, device_id: str) -> bool:
        """Have the response to ``conn`` set the cookie for ``device_id``.

        False when no axess stack runs the request (nothing can be queued);
        the login still succeeds, the client simply gets no device cookie.
        """
        queued = queue_response_headers(conn.scope, [(b"set-cookie", self.set_cookie(device_id))])
        if not queued:
            logger.debug("no axess stack on this request: device cookie not set")
        return queued
