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
  into a login form), ``header`` and custom keys carry identifiers: their
  value is capped, normalized (Unicode NFKC, case-folded, whitespace
  collapsed for identifiers) and stored only as a 128-bit BLAKE2b digest
  (``login#3f…``), so neither the store, the logs nor rate-limit events
  hold an e-mail address or an API key in clear. The digest is unkeyed: it
  pseudonymizes, it does not make a guessable identifier secret.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import unicodedata
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, cast
from urllib.parse import parse_qs

from starlette.requests import HTTPConnection, Request
from starlette.types import Message, Receive, Scope

from axess._cache import BoundedMemo
from axess.errors import ConfigurationError
from axess.net import client_ip, ip_prefix

#: Characters of a raw value looked at before normalizing and hashing.
MAX_VALUE_CHARS: Final = 256
#: Bytes of a header value looked at.
MAX_HEADER_BYTES: Final = 1024
#: Largest request body read to find a login identifier.
DEFAULT_MAX_BODY: Final = 64 * 1024
DEFAULT_LOGIN_FIELDS: Final = ("username", "email")

_FORM: Final = b"application/x-www-form-urlencoded"
_MULTIPART: Final = b"multipart/form-data"
_PERSON: Final = b"axess-ratelimit"


def digest(kind: str, value: str) -> str:
    """``kind#<32 hex>``: the bucket key of an identifier-bearing value."""
    raw = value.encode("utf-8", "surrogatepass")
    return kind + "#" + hashlib.blake2b(raw, digest_size=16, person=_PERSON).hexdigest()


def normalize_identifier(value: str) -> str:
    """Cap, NFKC-normalize, case-fold and collapse whitespace ('' if nothing is left)."""
    value = unicodedata.normalize("NFKC", value[:MAX_VALUE_CHARS]).casefold()
    return " ".join(value.split())[:MAX_VALUE_CHARS]


def loggable(key: str) -> str:
    """A key safe for logs: digests shortened, anything else truncated."""
    return key if len(key) <= 48 else key[:45] + "..."


class KeyContext:
    """What a key function sees of a request: the ASGI ``scope`` and, on
    demand, a bounded copy of the body that is handed on to the app
    (``receive`` replays it)."""

    __slots__ = ("_body", "_read", "_request", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive, request: Request | None = None) -> None:
        self.scope = scope
        self.receive = receive
        self._request = request
        self._read = False
        self._body: bytes | None = None

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
            return self._body if len(self._body) <= max_bytes else None
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
        self._v6: BoundedMemo[str, str] = BoundedMemo(4096)

    def of(self, scope: Scope) -> str:
        ip = scope.get("state", {}).get("client_ip")
        if not isinstance(ip, str):
            ip = client_ip(HTTPConnection(scope))
        if ":" not in ip:
            return "ip:" + ip
        hit = self._v6.get(ip)
        if hit is None:
            prefix = ip_prefix(ip, v6=self.v6_prefix) if self.v6_prefix < 128 else ip
            hit = "ip:" + (prefix or ip)
            self._v6.put(ip, hit)
        return hit

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
    """The login identifier a client submits (form, multipart or JSON body).

    The first of ``fields`` holding a non-empty string wins. The body is read
    at most ``max_body`` bytes and replayed to the app untouched; a larger,
    missing or unparseable body (or an identifier that normalizes to
    nothing) gives ``None``, so the IP is used.
    """

    kind = "login"

    def __init__(
        self, fields: Iterable[str] = DEFAULT_LOGIN_FIELDS, *, max_body: int = DEFAULT_MAX_BODY
    ) -> None:
        self.fields = tuple(fields)
        if not self.fields or not all(isinstance(f, str) and f for f in self.fields):
            raise ConfigurationError("login identifier fields must be non-empty strings")
        if max_body < 1:
            raise ConfigurationError("max_body must be >= 1")
        self.max_body = max_body

    async def __call__(self, ctx: KeyContext) -> str | None:
        ctype = ctx.content_type()
        if ctype not in (_FORM, b"application/json", _MULTIPART) and not (
            ctype.startswith(b"application/") and ctype.endswith(b"+json")
        ):
            return None
        body = await ctx.body(self.max_body)
        if not body:
            return None
        try:
            if ctype == _FORM:
                value = self._from_form(body)
            elif ctype == _MULTIPART:
                value = await self._from_multipart(ctx.scope, body)
            else:
                value = self._from_json(body)
        except Exception:  # garbage body: fall back to the IP
            return None
        if value is None:
            return None
        ident = normalize_identifier(value)
        return digest(self.kind, ident) if ident else None

    def _from_form(self, body: bytes) -> str | None:
        fields = parse_qs(
            body.decode("latin-1"), encoding="utf-8", errors="replace", max_num_fields=200
        )
        for name in self.fields:
            for value in fields.get(name, ()):
                if value.strip():
                    return value
        return None

    def _from_json(self, body: bytes) -> str | None:
        data = json.loads(body)
        if not isinstance(data, dict):
            return None
        for name in self.fields:
            value = data.get(name)
            if isinstance(value, str) and value.strip():
                return value
        return None

    async def _from_multipart(self, scope: Scope, body: bytes) -> str | None:
        sent = False

        async def once() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(scope, once).form(max_files=0, max_fields=200)
        try:
            for name in self.fields:
                value = form.get(name)
                if isinstance(value, str) and value.strip():
                    return value
            return None
        finally:
            await form.close()

    def __repr__(self) -> str:
        return f"LoginIdentifierKey({self.fields!r})"


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
    fields: Iterable[str] = DEFAULT_LOGIN_FIELDS, *, max_body: int = DEFAULT_MAX_BODY
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
