"""Rate-limit keys: *who* a bucket belongs to.

A key function looks at a request and returns a bucket key, or ``None``
when the thing it keys on is absent (no session user, no identifier in the
body, no header). Whoever applies the limit then falls back to the client
IP: a key is never empty, so no request lands in a bucket shared by every
client (which one client could exhaust for everyone).

Keys are normalized and bounded:

* ``ip``: the client IP as resolved behind trusted proxies
  (``scope["state"]["client_ip"]``, set by ``ClientIPMiddleware``); IPv6
  addresses are keyed by their /64 (one subscriber usually owns a whole
  /64, so per-address IPv6 buckets are free to evade). Kept readable
  (``ip:203.0.113.7``, ``ip:2001:db8:1:2::/64``) so operators can find and
  clear a bucket.
* ``user``, ``tenant`` (from the session), ``login`` (the identifier typed
  into a login form, where :class:`~axess.login_fields.LoginFields` says;
  an ambiguous body gets a bucket of the client IP and is refused with
  400), ``header`` and custom keys carry identifiers: their
  value is capped, normalized (Unicode NFKC, case-folded, whitespace
  collapsed for identifiers) and stored only as a 128-bit BLAKE2b digest
  (``login#3f…``), so neither the store, the logs nor rate-limit events
  hold an e-mail address or an API key in clear. The digest is unkeyed: it
  pseudonymizes, it does not make a guessable identifier secret.
"""

from __future__ import annotations

import hashlib
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, cast

from starlette.requests import HTTPConnection, Request
from starlette.types import Message, Receive, Scope

from axess._cache import Memo
from axess.errors import ConfigurationError
from axess.login_fields import (
    DEFAULT_LOGIN_FIELDS,
    AmbiguousIdentifier,
    LoginFields,
    readable,
)
from axess.net import MAX_ADDRESS_CHARS, client_ip, ip_prefix
from axess.text import normalize_identifier

#: Characters of a raw value looked at before normalizing and hashing.
MAX_VALUE_CHARS: Final = 256
#: Bytes of a header value looked at.
MAX_HEADER_BYTES: Final = 1024
_PERSON: Final = b"axess-ratelimit"


def digest(kind: str, value: str) -> str:
    """``kind#<32 hex>``: the bucket key of an identifier-bearing value."""
    raw = value.encode("utf-8", "surrogatepass")
    return kind + "#" + hashlib.blake2b(raw, digest_size=16, person=_PERSON).hexdigest()


def loggable(key: str) -> str:
    """A key safe for logs: digests shortened, anything else truncated."""
    return key if len(key) <= 48 else key[:45] + "..."


class KeyContext:
    """What a key function sees of a request: the ASGI ``scope`` and, on
    demand, a bounded copy of the body that is handed on to the app
    (``receive`` replays it).

    A key that finds the request must be refused once it is counted (an
    ambiguous login body) sets :attr:`refusal`; the limiter then answers
    400 with its :meth:`~axess.login_fields.AmbiguousIdentifier.body`.
    """

    __slots__ = ("_body", "_read", "_request", "body_too_large", "receive", "refusal", "scope")

    def __init__(self, scope: Scope, receive: Receive, request: Request | None = None) -> None:
        self.scope = scope
        self.receive = receive
        self._request = request
        self._read = False
        self._body: bytes | None = None
        #: True when :meth:`body` gave ``None`` because the body is over the cap.
        self.body_too_large = False
        self.refusal: AmbiguousIdentifier | None = None

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.scope["headers"]:
            if k == name:
                return cast(bytes, v)
        return None

    def content_type(self) -> bytes:
        value = self.header(b"content-type")
        return value.split(b";", 1)[0].strip().lower() if value else b""

    async def body(self, max_bytes: int) -> bytes | None:
        """The request body when it is at most ``max_bytes`` long, else ``None``.

        Reads at most ``max_bytes`` (plus one chunk); whatever was read is
        replayed to the app through :attr:`receive`. Never raises.
        """
        if self._read:
            return self._body
        self._read = True
        if self.scope["type"] != "http":
            return None
        length = self.header(b"content-length")
        if length is not None:
            try:
                if int(length) > max_bytes:
                    self.body_too_large = True
                    return None
            except ValueError:
                return None
        if self._request is not None:
            if length is None:
                return None  # chunked: reading it all through Request would be unbounded
            try:
                self._body = await self._request.body()
            except Exception:  # client went away
                return None
            if len(self._body) > max_bytes:
                self.body_too_large = True
                return None
            return self._body
        self._body = await self._read_bounded(max_bytes)
        return self._body

    async def _read_bounded(self, max_bytes: int) -> bytes | None:
        messages: list[Message] = []
        size = 0
        body: bytes | None = None
        receive = self.receive
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > max_bytes:
                self.body_too_large = True
                break
            if not message.get("more_body", False):
                body = b"".join(m.get("body", b"") for m in messages)
                break
        pending = deque(messages)

        async def replay() -> Message:
            if pending:
                return pending.popleft()
            return await receive()

        self.receive = replay
        return body


class Key:
    """A key function. ``kind`` names it in default policy names.

    Subclasses implement ``async __call__``; keys that never need to await
    set ``sync = True`` and implement :meth:`value` instead (the hot path
    then costs no coroutine).
    """

    kind: str = "key"
    sync: bool = False

    def value(self, ctx: KeyContext) -> str | None:
        raise NotImplementedError

    async def __call__(self, ctx: KeyContext) -> str | None:
        if self.sync:
            return self.value(ctx)
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class IPKey(Key):
    """The client IP (IPv6 by ``/v6_prefix``, default 64). Never ``None``."""

    kind = "ip"
    sync = True

    def __init__(self, *, v6_prefix: int = 64) -> None:
        if not 1 <= v6_prefix <= 128:
            raise ConfigurationError("v6_prefix must be between 1 and 128")
        self.v6_prefix = v6_prefix
        # IPv6 address -> its rate-limit key (the /v6_prefix network).
        self._v6: Memo[str, str] = Memo(self._v6_key, 4096, max_key_bytes=MAX_ADDRESS_CHARS)

    def _v6_key(self, ip: str) -> str:
        prefix = ip_prefix(ip, v6=self.v6_prefix) if self.v6_prefix < 128 else ip
        return "ip:" + (prefix or ip)

    def of(self, scope: Scope) -> str:
        ip = scope.get("state", {}).get("client_ip")
        if not isinstance(ip, str):
            ip = client_ip(HTTPConnection(scope))
        if ":" not in ip:
            return "ip:" + ip
        return self._v6[ip]

    def value(self, ctx: KeyContext) -> str | None:
        return self.of(ctx.scope)


class _SessionKey(Key):
    attr = ""
    sync = True

    def value(self, ctx: KeyContext) -> str | None:
        session = ctx.scope.get("state", {}).get("session")
        value = getattr(session, self.attr, None) if session is not None else None
        if not isinstance(value, str) or not value:
            return None
        return digest(self.kind, value[:MAX_VALUE_CHARS])


class UserKey(_SessionKey):
    """The authenticated user of the session (``None`` for guests, and in
    the middleware, which runs before the session is loaded: use it in a
    route dependency)."""

    kind = "user"
    attr = "user_id"


class TenantKey(_SessionKey):
    """The tenant of the session's user (``None`` without one)."""

    kind = "tenant"
    attr = "tenant_id"


class HeaderKey(Key):
    """The value of a request header (e.g. an API key), hashed."""

    kind = "header"
    sync = True

    def __init__(self, name: str) -> None:
        clean = name.strip().lower()
        if not clean or any(c in clean for c in " :\r\n\t"):
            raise ConfigurationError(f"invalid header name {name!r}")
        self.name = clean
        self._name = clean.encode("latin-1")

    def value(self, ctx: KeyContext) -> str | None:
        value = ctx.header(self._name)
        if value is None:
            return None
        value = value[:MAX_HEADER_BYTES].strip()
        if not value:
            return None
        return digest(self.kind + ":" + self.name, value.decode("latin-1"))

    def __repr__(self) -> str:
        return f"HeaderKey({self.name!r})"


class LoginIdentifierKey(Key):
    """The login identifier a client submits (form, multipart or JSON body),
    in the fields ``fields`` declares — the same
    :class:`~axess.login_fields.LoginFields` the login handler reads with.

    The body is read at most ``fields.max_body`` bytes and replayed to the
    app untouched. A missing or unparseable body, or no identifier, gives
    ``None``, so the IP is used. An ambiguous body (a field repeated, two
    fields filled in, over ``max_body``…) is keyed ``ambiguous:<client IP>``
    and marked for refusal (:attr:`KeyContext.refusal`): it is counted, then
    answered 400.
    """

    kind = "login"

    def __init__(
        self,
        fields: LoginFields | Iterable[str] = DEFAULT_LOGIN_FIELDS,
        *,
        max_body: int | None = None,
    ) -> None:
        declared = LoginFields.of(fields)
        if max_body is not None:
            declared = LoginFields(*declared.names, max_body=max_body)
        #: The declaration (share it with the login handler).
        self.login_fields = declared
        self.fields = declared.names
        self.max_body = declared.max_body
        self._ip = IPKey()

    async def __call__(self, ctx: KeyContext) -> str | None:
        if not readable(ctx.content_type()):
            return None
        body = await ctx.body(self.max_body)
        if body is None:
            if ctx.body_too_large:
                return self._refuse(ctx, AmbiguousIdentifier("the login body is too large"))
            return None
        try:
            value = await self.login_fields.identifier_in(ctx.scope, body)
        except AmbiguousIdentifier as exc:
            return self._refuse(ctx, exc)
        if value is None:
            return None
        # The login's own normalization, of the whole value: any spelling of
        # one account (padding, case, compatibility forms) is one bucket. A
        # value it refuses names no account, and the login refuses it before
        # any lever or hash: the IP's bucket counts it.
        try:
            ident = normalize_identifier(value)
        except ValueError:
            return None
        return digest(self.kind, ident)

    def _refuse(self, ctx: KeyContext, exc: AmbiguousIdentifier) -> str:
        """Count an ambiguous body against the client's IP (whichever value it
        meant, it gets no bucket of its own), and have it refused."""
        ctx.refusal = exc
        return "ambiguous:" + self._ip.of(ctx.scope)

    def __repr__(self) -> str:
        return f"LoginIdentifierKey({self.login_fields!r})"


class CompositeKey(Key):
    """Several keys joined: one bucket per combination (e.g. IP and login
    identifier). ``None`` when any part is missing, so the IP is used."""

    kind = "composite"

    def __init__(self, *parts: Key) -> None:
        if len(parts) < 2:
            raise ConfigurationError("a composite key needs at least two parts")
        self.parts = parts
        self.kind = "+".join(p.kind for p in parts)

    async def __call__(self, ctx: KeyContext) -> str | None:
        values: list[str] = []
        for part in self.parts:
            value = await part(ctx)
            if not value:
                return None
            values.append(value)
        return "|".join(values)

    def __repr__(self) -> str:
        return "CompositeKey(" + ", ".join(map(repr, self.parts)) + ")"


CustomFn = Callable[[HTTPConnection], str | Awaitable[str | None] | None]


class CustomKey(Key):
    """Your own key: ``fn(conn)`` returns a string (hashed) or ``None``.
    ``fn`` may be sync or async; an exception counts as ``None``."""

    kind = "custom"

    def __init__(self, fn: CustomFn, *, kind: str = "custom") -> None:
        if not callable(fn):
            raise ConfigurationError("a custom key must be callable")
        self.fn = fn
        self.kind = kind

    async def __call__(self, ctx: KeyContext) -> str | None:
        conn = ctx._request if ctx._request is not None else HTTPConnection(ctx.scope)
        try:
            value = self.fn(conn)
            if inspect.isawaitable(value):
                value = await value
        except Exception:
            return None
        if not isinstance(value, str):
            return None
        value = value[:MAX_VALUE_CHARS].strip()
        return digest(self.kind, value) if value else None

    def __repr__(self) -> str:
        return f"CustomKey({self.fn!r})"


# -- the public factories ---------------------------------------------------------------
def ip(*, v6_prefix: int = 64) -> IPKey:
    return IPKey(v6_prefix=v6_prefix)


def user() -> UserKey:
    return UserKey()


def tenant() -> TenantKey:
    return TenantKey()


def header(name: str) -> HeaderKey:
    return HeaderKey(name)


def login_identifier(
    fields: LoginFields | Iterable[str] = DEFAULT_LOGIN_FIELDS, *, max_body: int | None = None
) -> LoginIdentifierKey:
    return LoginIdentifierKey(fields, max_body=max_body)


def composite(*parts: Key | str | CustomFn) -> CompositeKey:
    return CompositeKey(*(as_key(p) for p in parts))


def custom(fn: CustomFn, *, kind: str = "custom") -> CustomKey:
    return CustomKey(fn, kind=kind)


KeySpec = Key | str | CustomFn

_NAMED: Final[dict[str, Callable[[], Key]]] = {
    "ip": IPKey,
    "user": UserKey,
    "tenant": TenantKey,
    "login": LoginIdentifierKey,
}


def as_key(spec: KeySpec) -> Key:
    """``Key`` objects as they are; ``"ip"``, ``"user"``, ``"tenant"``,
    ``"login"``, ``"header:<name>"``; any other callable becomes a
    :class:`CustomKey`. Raises :class:`ConfigurationError` otherwise."""
    if isinstance(spec, Key):
        return spec
    if isinstance(spec, str):
        if spec.startswith("header:"):
            return HeaderKey(spec[len("header:") :])
        factory = _NAMED.get(spec)
        if factory is None:
            raise ConfigurationError(
                f"unknown rate-limit key {spec!r}: use ip, user, tenant, login, "
                "header:<name>, a Key or a callable"
            )
        return factory()
    if callable(spec):
        return CustomKey(spec)
    raise ConfigurationError(f"a rate-limit key must be a Key, a name or a callable, not {spec!r}")


async def resolve(key: Key, ip_key: IPKey, ctx: KeyContext) -> str:
    """The bucket key for ``ctx``: ``key``'s value, else the client IP."""
    try:
        value = key.value(ctx) if key.sync else await key(ctx)
    except Exception:  # a key must never turn a request into a 500
        value = None
    return value or ip_key.of(ctx.scope)


def resolve_now(key: Key, ip_key: IPKey, ctx: KeyContext) -> str | None:
    """:func:`resolve` for keys that need no awaiting; ``None`` for the others."""
    if not key.sync:
        return None
    try:
        value = key.value(ctx)
    except Exception:
        value = None
    return value or ip_key.of(ctx.scope)
