"""``CSRFMiddleware``: signed double-submit tokens bound to the session.

Token = base64url(nonce (16) ‖ HMAC-SHA256(csrf subkey, nonce ‖ binding)[:16])
where *binding* is the session's storage key, or ``anon`` before the
session is stored. The token travels in the CSRF cookie
(``__Host-axess.csrf`` by default; readable by scripts) and must come back
in the ``X-CSRF-Token`` header or the ``csrf_token`` form field on unsafe
methods. When the session id rotates (login, logout) the cookie is re-minted
in the same response, so the next form works.

Before the token, an unsafe request is checked for where a browser says it
comes from (``Origin``, ``Sec-Fetch-Site``), with or without cookies: a
cross-site form cannot log a victim into the attacker's account even though
``SameSite=Lax`` sends it no cookie (book: CSRF, "Where a request comes from").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import unquote_to_bytes, urlsplit

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from axess._cache import DEFAULT_MEMO_SIZE, Memo
from axess.clock import Random, SystemRandom
from axess.errors import ConfigurationError
from axess.keys import Keyring
from axess.observability.metrics import AuthnMetrics, NoopMetrics
from axess.refusals import Refusal
from axess.session.cookie import (
    MAX_MEMO_HEADER_BYTES,
    STORAGE_KEY_CHARS,
    check_cookie_prefix,
    cookie_values,
    default_cookie_name,
)
from axess.session.data import Guest
from axess.session.handle import Session
from axess.stack import (
    HEADERS_KEY,
    Stage,
    mutable_headers,
    replay_body,
    request_headers,
    request_with_body,
    route_path,
    vary_cookie,
)

logger = logging.getLogger(__name__)
_WEB_SCHEME: Final = {"ws": "http", "wss": "https"}

#: The two refusals (403 ``csrf_failed``): a foreign ``Origin`` or ``Referer``,
#: and a missing or wrong token.
CROSS_ORIGIN: Final = Refusal(403, "csrf_failed", "cross-origin request refused")
BAD_TOKEN: Final = Refusal(403, "csrf_failed", "missing or invalid CSRF token")

UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NONCE: Final = 16
_MAC: Final = 16
_TOKEN_CHARS: Final = 43  # base64url of 32 bytes, no padding
_ANON: Final = b"anon"
_STATE_KEY: Final = "csrf_token"


@dataclass(frozen=True, slots=True)
class CSRFConfig:
    """CSRF settings. ``exempt_paths``: exact paths, or prefixes ending in
    ``/``, matched against the path the app's router sees (without the
    ``root_path``).

    ``cookie_name``: ``""`` (the default) is ``__Host-axess.csrf`` when the
    cookie can carry the prefix (``secure`` and ``path="/"``), else
    ``axess.csrf`` (book: CSRF, "Cookie tossing"); the name in use is
    :attr:`resolved_cookie_name`."""

    cookie_name: str = ""
    header_name: str = "x-csrf-token"
    form_field: str = "csrf_token"
    exempt_paths: tuple[str, ...] = ()
    secure: bool = True
    same_site: Literal["lax", "strict", "none"] = "lax"
    path: str = "/"
    #: Largest form body read to find the token (larger bodies must use the header).
    max_form_bytes: int = 1024 * 1024
    #: Origins besides the request's own that may send unsafe requests
    #: (``"https://app.example.com"``): other sites of yours, and your public
    #: origin when a proxy hides it from the app. Normalized at construction.
    allowed_origins: tuple[str, ...] = ()
    #: The cookie name in use (``cookie_name``, or the default for these
    #: attributes), resolved at construction.
    resolved_cookie_name: str = field(init=False)

    def __post_init__(self) -> None:
        cookie = self.cookie_name or default_cookie_name(
            "axess.csrf", secure=self.secure, path=self.path
        )
        object.__setattr__(self, "resolved_cookie_name", cookie)
        for name in (cookie, self.header_name, self.form_field):
            if not name or any(c in name for c in ' ;,=\r\n\t"') or not name.isascii():
                raise ConfigurationError(f"invalid CSRF name {name!r}")
        check_cookie_prefix(cookie, secure=self.secure, path=self.path)
        if self.same_site not in ("lax", "strict", "none"):
            raise ConfigurationError("same_site must be 'lax', 'strict' or 'none'")
        if self.max_form_bytes < 0:
            raise ConfigurationError("max_form_bytes must be >= 0")
        given: object = self.allowed_origins
        if isinstance(given, str):
            raise ConfigurationError(
                "allowed_origins must be a tuple of origins, e.g. ('https://app.example.com',)"
            )
        origins: list[str] = []
        for value in self.allowed_origins:
            origin = normalize_origin(value) if isinstance(value, str) else None
            if origin is None:
                raise ConfigurationError(
                    f"invalid allowed origin {value!r}: expected scheme://host[:port] with "
                    "scheme http or https and no path, e.g. 'https://app.example.com'"
                )
            origins.append(origin)
        object.__setattr__(self, "allowed_origins", tuple(origins))

    def is_exempt(self, path: str) -> bool:
        return any(path == p or (p.endswith("/") and path.startswith(p)) for p in self.exempt_paths)


class CSRFTokens:
    """Mints and checks tokens for one keyring.

    Tokens are minted with the active ``csrf`` key. A token minted with a
    previous key of the list still verifies (:meth:`valid`) but is not
    :meth:`current`: the middleware re-mints the cookie with the active key
    on the next response (book: Keys and key rotation).
    """

    def __init__(
        self,
        keys: Keyring,
        random: Random | None = None,
        *,
        metrics: AuthnMetrics | None = None,
    ) -> None:
        # Active key first; previous keys still verify tokens already in pages.
        self._keys = [keys.derive("csrf", "double-submit-v1", kid=k.kid) for k in keys.keys("csrf")]
        self._random = random or SystemRandom()
        self._metrics: AuthnMetrics = metrics or NoopMetrics()

    @staticmethod
    def _mac(key: bytes, nonce: bytes, binding: bytes) -> bytes:
        return hmac.new(key, nonce + binding, hashlib.sha256).digest()[:_MAC]

    def mint(self, binding: str | None) -> str:
        nonce = self._random.token_bytes(_NONCE)
        raw = nonce + self._mac(self._keys[0], nonce, _binding(binding))
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def valid(self, token: str | bytes | None, binding: str | None) -> bool:
        """True when ``token`` is well formed and was minted for ``binding``
        (with any configured CSRF key)."""
        return self.key_index(token, binding) >= 0

    def current(self, token: str | bytes | None, binding: str | None) -> bool:
        """True when ``token`` is valid for ``binding`` and minted with the
        active key (a browser holding it needs no new cookie)."""
        return self.key_index(token, binding) == 0

    def key_index(self, token: str | bytes | None, binding: str | None) -> int:
        """The position in the key list of the key that minted ``token`` for
        ``binding`` (0: the active key), or -1 when it is not valid.

        Not memoized: the middleware remembers its usual question ("does the
        browser's token still fit?") per Cookie header instead.
        """
        if token is None:
            return -1
        raw_token = token.encode("latin-1") if isinstance(token, str) else token
        if len(raw_token) != _TOKEN_CHARS:
            return -1
        try:
            raw = base64.urlsafe_b64decode(raw_token + b"=")
        except ValueError:
            return -1
        if len(raw) != _NONCE + _MAC or base64.urlsafe_b64encode(raw).rstrip(b"=") != raw_token:
            return -1
        nonce, mac, bound = raw[:_NONCE], raw[_NONCE:], _binding(binding)
        # The active key first; previous keys only when it does not match.
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(mac, self._mac(key, nonce, bound)):
                if index:
                    logger.info("CSRF token verified with a previous (rotated) key")
                    self._metrics.previous_key_used("csrf")
                return index
        return -1


def _binding(storage_key: str | None) -> bytes:
    return b"s:" + storage_key.encode("ascii") if storage_key else _ANON


_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: ``Sec-Fetch-Site`` values that need no allowed ``Origin``.
_OWN_SITE: Final = frozenset({b"same-origin", b"none"})


def normalize_origin(value: str) -> str | None:
    """``scheme://host[:port]`` lower-cased with the scheme's default port
    dropped (the form browsers send in ``Origin``); ``None`` when ``value``
    is not an http(s) origin (a path, credentials, ``null``, ``*``…)."""
    if len(value) > 512 or any(c.isspace() for c in value):
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if (
        scheme not in _DEFAULT_PORTS
        or not host
        or parts.path
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
        or value.endswith(("?", "#"))
    ):
        return None
    if ":" in host:
        host = f"[{host}]"
    return (
        f"{scheme}://{host}"
        if port in (None, _DEFAULT_PORTS[scheme])
        else f"{scheme}://{host}:{port}"
    )


class CSRFMiddleware(Stage):
    """Checks unsafe requests, answers 403 JSON on failure, and keeps the
    CSRF cookie valid for the session it rides with.

    Must run inside ``SessionMiddleware`` (``Axess.install`` orders it).
    An unsafe request a browser marks as coming from elsewhere (an ``Origin``
    that is neither the request's own nor allowed, ``Origin: null``, or
    ``Sec-Fetch-Site`` other than ``same-origin``/``none`` without an allowed
    ``Origin``) is refused whether or not it carries cookies. Otherwise,
    requests that carry no cookies at all are not checked: without ambient
    credentials there is nothing to forge (bearer-token API clients).
    """

    def __init__(
        self,
        app: ASGIApp | None = None,
        *,
        keys: Keyring,
        config: CSRFConfig | None = None,
        random: Random | None = None,
        memo_size: int = DEFAULT_MEMO_SIZE,
        metrics: AuthnMetrics | None = None,
    ) -> None:
        super().__init__(app)
        self.config = config or CSRFConfig()
        self.tokens = CSRFTokens(keys, random, metrics=metrics)
        self._cookie_name = self.config.resolved_cookie_name.encode("ascii")
        # (Cookie header, binding) -> whether the header's token is current
        # for it: the question every response asks, and a returning browser
        # asks it with the same header.
        self._fits: Memo[tuple[bytes | None, str | None], bool] = Memo(
            self._token_fits, memo_size, max_key_bytes=MAX_MEMO_HEADER_BYTES + STORAGE_KEY_CHARS
        )
        self._header = self.config.header_name.lower().encode("latin-1")
        attrs = [f"Path={self.config.path}", "SameSite=" + self.config.same_site.capitalize()]
        if self.config.secure:
            attrs.append("Secure")
        self._attrs = "; ".join(attrs)
        self._allowed = frozenset(o.encode("ascii") for o in self.config.allowed_origins)
        self._proxy_hint_logged = False

    def _session(self, state: dict[str, object]) -> Session:
        session = state.get("session")
        if not isinstance(session, Session):
            raise RuntimeError(
                "CSRFMiddleware needs SessionMiddleware outside it (use Axess.install)"
            )
        return session

    def enter_now(self, scope: Scope) -> bool:
        """Safe methods and exempt paths need no check (only note this
        middleware for :func:`csrf_token`); a websocket handshake needs only
        the origin check."""
        state = scope["state"]
        state["csrf"] = self
        method = scope.get("method")
        if method is None:  # a websocket handshake: it carries the cookies too
            return self.config.is_exempt(route_path(scope)) or not self._foreign(
                scope, state[HEADERS_KEY]
            )
        return method not in UNSAFE_METHODS or self.config.is_exempt(route_path(scope))

    async def enter(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        if self.enter_now(scope):
            return receive
        if scope["type"] == "websocket":  # another site's page opening it
            await send({"type": "websocket.close", "code": 1008})
            return None
        headers = request_headers(scope)
        if self._foreign(scope, headers):
            await self.refuse(scope, receive, send, CROSS_ORIGIN)
            return None
        cookie_header = headers.get(b"cookie")
        if cookie_header is None:
            return receive  # no ambient credentials: nothing to forge
        submitted = headers.get(self._header)
        if submitted is not None:
            submitted = submitted.strip()
        else:
            submitted, receive = await self._form_token(scope, receive)
        if submitted is None or not self._accepts_any(
            submitted, cookie_header, self._session(scope["state"]).csrf_binding
        ):
            logger.info("CSRF check failed for %s %s", scope["method"], scope["path"])
            await self.refuse(scope, receive, send, BAD_TOKEN)
            return None
        return receive

    def _accepts_any(self, submitted: bytes, cookie_header: bytes, binding: str | None) -> bool:
        """The double-submit check against each CSRF cookie in the header.

        Several cookies of the name arrive when a sibling subdomain planted
        one for the parent domain; the browser sends it first (book: CSRF,
        "Cookie tossing"). Any of them may match: whoever can plant a cookie
        could already make it the first, so trying the others gives an
        attacker nothing and keeps the user's own token working.
        """
        return any(
            self._accepts(submitted, token, binding)
            for token in cookie_values(cookie_header, self._cookie_name)
        )

    def _accepts(self, submitted: bytes, cookie_token: bytes, binding: str | None) -> bool:
        """The double-submit check: the submitted token is the cookie's and
        valid for the session.

        One exception, for a CSRF key rotation: a page rendered before the
        cookie was re-minted with the active key still submits the token of a
        previous key. It is accepted when it is valid for the same signed-in
        session (a binding an attacker cannot mint for) and the cookie holds
        that session's current token. Anonymous tokens are not secret to
        anyone with a browser, so for guests the cookie must match exactly.
        """
        if hmac.compare_digest(submitted, cookie_token):
            return self.tokens.valid(submitted, binding)
        return (
            binding is not None
            and self.tokens.key_index(submitted, binding) > 0
            and self.tokens.current(cookie_token, binding)
        )

    def _foreign(self, scope: Scope, headers: dict[bytes, bytes]) -> bool:
        """True when a browser says this unsafe request comes from another
        origin that is not allowed (book: CSRF, "Where a request comes from")."""
        origin = headers.get(b"origin")
        site = headers.get(b"sec-fetch-site")
        if origin is None and site is None:
            return False  # not a browser (or a very old one): the cookie rule decides
        if origin is not None:
            if origin in self._allowed:
                return False
            if not self._own_origin(scope, headers, origin):
                self._refused(scope, headers, origin)
                return True
        if site is None or site in _OWN_SITE:
            return False
        # cross-site, or same-site: a sibling subdomain may be someone else's.
        self._refused(scope, headers, origin)
        return True

    def _own_origin(self, scope: Scope, headers: dict[bytes, bytes], origin: bytes) -> bool:
        """Whether ``origin`` is the origin this request was sent to: the
        scheme the app sees and the ``Host`` header."""
        scheme = scope.get("scheme") or "http"
        scheme = _WEB_SCHEME.get(scheme, scheme)  # a websocket's page: http(s)
        host = headers.get(b"host")
        if host is None:
            server = scope.get("server")
            if not server:
                return False
            name = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
            host = name.encode("latin-1", "replace")
        if origin == scheme.encode("latin-1") + b"://" + host:
            return True  # what browsers send: lower case, no default port
        own = normalize_origin(f"{scheme}://{host.decode('latin-1')}")
        return own is not None and normalize_origin(origin.decode("latin-1")) == own

    def _refused(self, scope: Scope, headers: dict[bytes, bytes], origin: bytes | None) -> None:
        shown = origin[:100].decode("latin-1") if origin is not None else None
        logger.info(
            "CSRF: cross-origin %s %s refused (Origin %r, Sec-Fetch-Site %r)",
            scope.get("method", "websocket"),
            scope["path"],
            shown,
            (headers.get(b"sec-fetch-site") or b"")[:32].decode("latin-1") or None,
        )
        host = headers.get(b"host")
        scheme, _, origin_host = (origin or b"").partition(b"://")
        if (
            not self._proxy_hint_logged
            and origin is not None
            and host is not None
            and origin_host == host
            # The proxy case only: own host under another scheme (a refusal
            # for Sec-Fetch-Site alone must not spend the one hint).
            and scheme.decode("latin-1") != scope.get("scheme", "http")
        ):
            self._proxy_hint_logged = True
            logger.warning(
                "CSRF refused Origin %r on host %r because the app sees scheme %r: behind a "
                "TLS-terminating proxy, have the server take the scheme from the proxy "
                "(e.g. uvicorn --proxy-headers --forwarded-allow-ips) or list the public "
                "origin in CSRFConfig(allowed_origins=...)",
                shown,
                host[:100].decode("latin-1"),
                scope.get("scheme"),
            )

    def cookie_token(self, scope: Scope) -> str | None:
        """The token the browser sent in the CSRF cookie, if any: of several
        cookies of the name, the first current for the request's session."""
        session = scope.get("state", {}).get("session")
        binding = session.csrf_binding if isinstance(session, Session) else None
        raw = self._browser_token(request_headers(scope).get(b"cookie"), binding)
        return raw.decode("latin-1") if raw else None

    def _browser_token(self, header: bytes | None, binding: str | None) -> bytes | None:
        """The first CSRF cookie in ``header`` current for ``binding``, else
        the first one sent (``None`` without any): a planted cookie ahead of
        the browser's own does not hide it (book: CSRF, "Cookie tossing")."""
        first = None
        for token in cookie_values(header, self._cookie_name):
            if self.tokens.current(token, binding):
                return token
            if first is None:
                first = token
        return first

    def _token_fits(self, key: tuple[bytes | None, str | None]) -> bool:
        """Whether a CSRF cookie in Cookie header ``key[0]`` is current for
        binding ``key[1]``."""
        header, binding = key
        return any(
            self.tokens.current(token, binding)
            for token in cookie_values(header, self._cookie_name)
        )

    async def on_response_start(self, scope: Scope, message: Message, send: Send) -> bool:
        return self.on_response_start_now(scope, message)

    def on_response_start_now(self, scope: Scope, message: Message) -> bool:
        state = scope["state"]
        session = state.get("session")
        if type(session) is not Session:
            session = self._session(state)  # raises: SessionMiddleware is missing
        if session.stand_in:
            return True  # the session is unknown: its token may still fit it
        # The binding after the commit: the stored key of a signed-in session.
        committed = None if isinstance(session._data.auth_state, Guest) else session.committed_key
        header = state[HEADERS_KEY].get(b"cookie")
        asked = _STATE_KEY in state  # a page asked for a token
        # The usual answer: the browser's token still fits the session.
        if not asked and self._fits[(header, committed)]:
            return True
        current = self._browser_token(header, committed)
        set_cookie = self._remint(
            state,
            current.decode("latin-1") if current else None,
            session.arrival_csrf_binding,
            committed,
            session.committed_key is not None,
        )
        if set_cookie is not None:
            mutable_headers(message).append(set_cookie)
            vary_cookie(message)
        return True

    def _remint(
        self,
        state: dict[str, object],
        current: str | None,
        request_binding: str | None,
        committed_key: str | None,
        stored: bool,
    ) -> tuple[bytes, bytes] | None:
        """After the session commit: the cookie to send, if any.

        A token is (re-)minted when the page asked for one, when the browser
        holds one that no longer fits the session (e.g. the id rotated at
        login) or was minted with a previous CSRF key, when the session was
        just created or rotated, or when the browser holds none but a stored
        session (``stored``): its next unsafe request carries the session
        cookie, so it is checked and needs a token — e.g. a JSON client
        sending its password after ``begin_login`` stored the login in
        progress, with no separate call to fetch one.
        Otherwise nothing is sent, so plain page
        views carry no Set-Cookie.
        """
        rendered = state.get(_STATE_KEY)
        if isinstance(rendered, str) and self.tokens.current(rendered, committed_key):
            token = rendered  # what the page may already have embedded in a form
        elif self.tokens.current(current, committed_key):
            return None
        elif (
            current is not None
            or rendered is not None
            or committed_key != request_binding
            or stored
        ):
            token = self.tokens.mint(committed_key)
        else:
            return None
        if token == current:
            return None
        return (
            b"set-cookie",
            f"{self.config.resolved_cookie_name}={token}; {self._attrs}".encode(),
        )

    async def _form_token(self, scope: Scope, receive: Receive) -> tuple[bytes | None, Receive]:
        """Read the body (bounded) for the form field; returns a receive that replays it."""
        ctype = request_headers(scope).get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype not in (b"application/x-www-form-urlencoded", b"multipart/form-data"):
            return None, receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None, receive
            body = message.get("body", b"")
            size += len(body)
            if size > self.config.max_form_bytes:
                return None, receive
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        field = self.config.form_field
        if ctype == b"application/x-www-form-urlencoded":
            token = _urlencoded_field(body, field.encode("utf-8"))
        else:
            token = await _multipart_field(scope, body, field)
        return token, replay_body(body, receive)


#: Form fields looked at for the token (Starlette's own ``request.form()``
#: refuses more, with a 400).
_MAX_FORM_FIELDS: Final = 1000


def _urlencoded_field(body: bytes, field: bytes) -> bytes | None:
    """The first non-empty value of ``field`` in an urlencoded body, as raw bytes.

    Works on bytes throughout: a token is ASCII, so a value in any other
    encoding is simply no match (never a decoding error). Only the first
    :data:`_MAX_FORM_FIELDS` fields are looked at: a token further on is not
    found (403), and a body of any field count never raises.
    """
    for pair in body.split(b"&", _MAX_FORM_FIELDS)[:_MAX_FORM_FIELDS]:
        name, _, value = pair.partition(b"=")
        if value and unquote_to_bytes(name.replace(b"+", b" ")) == field:
            return unquote_to_bytes(value.replace(b"+", b" "))
    return None


async def _multipart_field(scope: Scope, body: bytes, field: str) -> bytes | None:
    try:
        form = await request_with_body(scope, body).form(max_files=100, max_fields=1000)
    except Exception:  # missing python-multipart or a malformed body: no token
        return None
    try:
        value = form.get(field)
        # A token is ASCII: any other text (e.g. a lone surrogate that a
        # client-chosen charset decoded to) is no token, not an error.
        return value.encode("ascii") if isinstance(value, str) and value.isascii() else None
    finally:
        await form.close()


def csrf_token(conn: HTTPConnection) -> str:
    """The CSRF token to embed in a page (minted when the request has none, or
    when the one it has no longer fits the session, e.g. right after login).

    The response carries the matching cookie.
    """
    state = conn.scope.setdefault("state", {})
    mw = state.get("csrf")
    session = state.get("session")
    if not isinstance(mw, CSRFMiddleware) or not isinstance(session, Session):
        raise RuntimeError(
            "csrf_token() needs CSRFMiddleware (use Axess.install with csrf enabled)"
        )
    binding = session.csrf_binding
    rendered = state.get(_STATE_KEY)
    if isinstance(rendered, str) and mw.tokens.current(rendered, binding):
        return rendered
    # The page may reuse the browser's token, unless a previous key minted it.
    current = mw.cookie_token(conn.scope)
    token = current if current and mw.tokens.current(current, binding) else mw.tokens.mint(binding)
    state[_STATE_KEY] = token
    return token


def csrf_input(conn: HTTPConnection) -> str:
    """``<input type="hidden" name="csrf_token" value="…">`` for HTML forms."""
    token = html.escape(csrf_token(conn))
    mw = conn.scope["state"]["csrf"]
    return f'<input type="hidden" name="{html.escape(mw.config.form_field)}" value="{token}">'
