"""No 5xx on any input: hypothesis over the whole HTTP surface.

Two apps are driven in-process through a raw ASGI harness (so header bytes,
framing and bodies are exactly what the strategy made, which an HTTP client
would refuse to send):

* the README's demo (``examples/demo.py``) on a temporary SQLite file;
* an app with every stage on — trusted proxies, rate limits (IP, login
  identifier, header, composite), sessions, binding, CSRF — with JSON and
  form login routes, a second factor, session writes, a guard and
  ``/healthz``, on the memory store with an audit pipeline.

Requests get random methods, paths, headers (Cookie with random and forged
session / CSRF cookie values as well as live ones, huge User-Agent,
Forwarded, X-Forwarded-For, Origin, Sec-Fetch-Site, Content-Type…) and
bodies (form, JSON with lone surrogates, deep nesting and huge numbers,
multipart well-formed and broken, binary, over the limits, many fields).
Most requests are plausible — a live session's cookie and its CSRF token,
from the client the session is bound to — so the fuzz reaches the routes
behind the stages; a request that ends such a session (logout, a binding
mismatch…) is followed by a fresh sign-in under a new user and address.

The demo's step-up routes (setting TOTP up, turning it off, new recovery
codes) get a focused run besides: only well-formed requests of the live
session each route serves, so every one reaches it, with anything in the
password or code field.

Every answer must be below 500 with no exception escaping the app and no
ERROR logged; a request refused before the app (CSRF, rate limit) must leave
no session row, lockout counter or login audit event behind.

The examples are derandomized, so a run is reproducible; the regression
tests for what the fuzz found are plain example tests in
``tests/test_bad_input.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import logging
import os
import re
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from axess import (
    AuditPipeline,
    Axess,
    BindingPolicy,
    CSRFConfig,
    Keyring,
    MockClock,
    RateLimit,
    SessionConfig,
    StoreError,
    TrustedProxies,
    csrf_token,
    get_session,
    require_authn,
)
from axess.audit import StoreSink
from axess.authn import Password, RecoveryCode, TOTPCode
from axess.authn.http import outcome_response, unavailable_response
from axess.authn.password import PasswordHasher
from axess.authn.totp import generate_secret
from axess.ratelimit import auth_rules
from axess.ratelimit.keys import composite
from axess.stores import MemoryStore
from axess.testing import SeededRandom

# A client may name the unicode_escape charset for its multipart body; the
# decoder then warns about the escapes it was sent. That is the point here.
pytestmark = pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent
UA = b"fuzz/1"
PRIMER_PASSWORD = "primer password"
#: Event types only a login route emits: none may appear for a refused request.
LOGIN_EVENTS = frozenset(
    {"login_attempt", "factor_failed", "factor_verified", "authenticated", "lockout_triggered"}
)


def fast_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


# -- the raw ASGI harness -----------------------------------------------------------------
@dataclass
class Req:
    method: str
    path: str
    query: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    chunks: int = 1
    #: The TCP peer; ``("home<k>", i)``: host ``k`` of the /24 live session
    #: ``i`` is bound to (one network, so the binding holds; many hosts, so
    #: per-address rate limits do not refuse everything after a few requests).
    client: tuple[str, int] | None = ("127.0.0.1", 50000)


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    reached: bool  # the app behind the axess stack ran

    def cookies(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in self.headers:
            if k == b"set-cookie":
                name, _, rest = v.decode("latin-1").partition("=")
                out[name] = rest.split(";", 1)[0]
        return out


class Reached:
    """Innermost middleware: notes that a request got past every stage."""

    def __init__(self, app: ASGIApp, hits: list[int]) -> None:
        self.app = app
        self.hits = hits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.hits.append(1)
        await self.app(scope, receive, send)


def instrument(app: Starlette) -> list[int]:
    """Put :class:`Reached` inside the axess stack (before the first request)."""
    hits: list[int] = []
    app.user_middleware.append(Middleware(Reached, hits=hits))
    return hits


async def call(app: ASGIApp, hits: list[int], req: Req) -> Answer:
    """One request, as an ASGI server would hand it over; fails on a protocol
    violation and lets any exception out of the app propagate."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": req.method,
        "scheme": "https",
        "path": req.path,
        "raw_path": quote(req.path, safe="/:@!$&'()*+,;=").encode("ascii"),
        "query_string": req.query,
        "root_path": "",
        "headers": req.headers,
        "client": req.client,
        "server": ("testserver", 443),
    }
    size = -(-len(req.body) // max(1, req.chunks)) or 1
    pending = [req.body[i : i + size] for i in range(0, len(req.body), size)] or [b""]

    async def receive() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    start: Message | None = None
    body: list[bytes] = []
    done = False

    async def send(message: Message) -> None:
        nonlocal start, done
        assert not done, f"message after the response ended: {message['type']}"
        if message["type"] == "http.response.start":
            assert start is None, "two response starts"
            start = message
        else:
            assert message["type"] == "http.response.body", message["type"]
            assert start is not None, "body before the response start"
            body.append(message.get("body", b""))
            done = not message.get("more_body", False)

    before = len(hits)
    await app(scope, receive, send)
    assert start is not None and done, "no complete response"
    headers = list(start.get("headers", []))
    return Answer(start["status"], headers, b"".join(body), len(hits) > before)


class ErrorLog(logging.Handler):
    """Collects records at ERROR and above (a swallowed crash still logs one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def cookie_header(jar: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in jar.items() if v)


# -- live sessions, named by placeholder -----------------------------------------------------
def token_placeholder(i: int) -> str:
    """As long as a token and made of letters, so percent-encoding keeps it."""
    return f"LIVETOKEN{i}".ljust(43, "Q")


class Surface:
    """An app under test with live sessions the strategies refer to by
    placeholder: slot ``i`` has a Cookie header, a CSRF token and a home
    client (the address its session is bound to). Subclasses sign in."""

    #: Slot kinds; slot 0 is a guest (its token fits any guest).
    slots: tuple[str, ...] = ("guest",)
    paths: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    #: Paths whose handlers read login fields, and those fields (identifier, secret).
    login_paths: tuple[str, ...] = ()
    login_fields: tuple[tuple[str, str], ...] = ()

    def __init__(self, app: Starlette, auth: Axess) -> None:
        self.app = app
        # The cookie names the app resolved (the demo serves plain http: no
        # __Host- prefix; the full app the __Host- defaults).
        self.sid_cookie = auth.session_config.resolved_cookie_name
        assert auth.csrf_config is not None
        self.csrf_cookie = auth.csrf_config.resolved_cookie_name
        self.hits = instrument(app)
        self.values: dict[bytes, bytes] = {}
        self.homes: dict[int, str] = {}
        self.signed_in = 0
        #: Real cookie pairs seen at the start: forged cookies are mutations of them.
        self.forgeable: list[str] = []

    # placeholders
    def cookie(self, i: int) -> str:
        return f"{self.csrf_cookie}=@csrf{i}@; {self.sid_cookie}=@sid{i}@"

    def token(self, i: int) -> str:
        return token_placeholder(i)

    def resolve(self, req: Req) -> Req:
        def sub(raw: bytes) -> bytes:
            if b"@" in raw or b"LIVETOKEN" in raw:
                for k, v in self.values.items():
                    raw = raw.replace(k, v)
            return raw

        headers = [(k, sub(v)) for k, v in req.headers]
        client = req.client
        if client is not None and client[0].startswith("home"):
            network = self.homes[client[1]].rsplit(".", 1)[0]
            client, extra = self.home(f"{network}.{client[0][4:]}")
            headers = extra + headers
        return replace(req, headers=headers, body=sub(req.body), client=client)

    def home(self, ip: str) -> tuple[tuple[str, int], list[tuple[bytes, bytes]]]:
        """The peer and headers of a request from ``ip``."""
        return (ip, 40000), []

    def remember(self, i: int, jar: dict[str, str], token: str, ip: str) -> None:
        self.values[f"@csrf{i}@".encode()] = jar.get(self.csrf_cookie, "").encode()
        self.values[f"@sid{i}@".encode()] = jar.get(self.sid_cookie, "").encode()
        self.values[self.token(i).encode()] = token.encode()
        self.homes[i] = ip

    def fresh_ip(self) -> str:
        self.signed_in += 1
        n = self.signed_in
        return f"10.{n // 250}.{n % 250}.1"

    async def get(self, path: str, ip: str, jar: dict[str, str]) -> Answer:
        client, headers = self.home(ip)
        headers = [*headers, (b"user-agent", UA), (b"cookie", cookie_header(jar).encode())]
        return await call(self.app, self.hits, Req("GET", path, headers=headers, client=client))

    async def post(
        self,
        path: str,
        ip: str,
        jar: dict[str, str],
        ctype: str,
        body: bytes,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> Answer:
        client, headers = self.home(ip)
        headers = [
            *headers,
            (b"user-agent", UA),
            (b"cookie", cookie_header(jar).encode()),
            (b"content-type", ctype.encode()),
            *(extra or []),
        ]
        req = Req("POST", path, headers=headers, body=body, client=client)
        return await call(self.app, self.hits, req)

    def jar(self, i: int) -> dict[str, str]:
        return {
            self.csrf_cookie: self.values[f"@csrf{i}@".encode()].decode(),
            self.sid_cookie: self.values[f"@sid{i}@".encode()].decode(),
        }

    async def prime(self) -> None:
        for i in range(len(self.slots)):
            await self.sign_in(i)
        self.forgeable = [
            f"{k}={v}" for i in range(len(self.slots)) for k, v in self.jar(i).items() if v
        ]

    async def refresh(self) -> None:
        """Sign in again where a request ended a live session."""
        for i, kind in enumerate(self.slots):
            if kind != "guest" and not await self.alive(i):
                await self.sign_in(i)

    async def sign_in(self, i: int) -> None:
        raise NotImplementedError

    async def alive(self, i: int) -> bool:
        raise NotImplementedError


# -- strategies ---------------------------------------------------------------------------
SURROGATES = ["\ud800", "a\udfffb", "\udbff", "\ud83d\ude00", "x\udc80@example.com"]
#: Text that may hold lone surrogates (hypothesis leaves them out by default).
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(SURROGATES),
    st.builds(lambda a, s: a + s, st.text(max_size=8), st.sampled_from(SURROGATES)),
)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
methods = st.one_of(
    st.sampled_from(METHODS),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=12),
)
#: Header values: any bytes but CR/LF (which no HTTP parser hands on).
raw_values = st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def wire(text: str) -> bytes:
    """Text as a client would put it on the wire (a surrogate as its CESU bytes)."""
    return text.encode("utf-8", "surrogatepass")


ips = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(
        ["unknown", "_hidden", "[::1]:80", "1.2.3.4:5", "999.1.1.1", "", "::ffff:1.2.3.4"]
    ),
    texts,
)
xff = st.lists(ips, max_size=6).map(lambda v: wire(", ".join(v)))
forwarded = st.lists(
    st.builds(
        lambda k, v, q: f"{k}={json.dumps(v) if q else v}",
        st.sampled_from(["for", "by", "proto", "host", "For", "x"]),
        ips,
        st.booleans(),
    ),
    max_size=5,
).map(lambda parts: wire(";".join(parts[:2]) + "".join("," + p for p in parts[2:])))
user_agents = st.one_of(
    texts.map(wire),
    st.sampled_from([1_000, 9_000, 70_000]).map(lambda n: b"Mozilla/5.0 " + b"A" * n),
    raw_values,
)
origins = st.one_of(
    st.sampled_from([b"https://testserver", b"https://evil.example", b"null", b"", b"https://t"]),
    raw_values,
)
sec_fetch = st.one_of(
    st.sampled_from([b"same-origin", b"same-site", b"cross-site", b"none"]), raw_values
)

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
CHARSETS = ["utf-8", "latin-1", "unicode_escape", "utf-7", "utf-16", "bogus", ""]
QUERY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789=&%+;/?:@-._~!$'()*,"
HEADER_NAMES = [
    b"host", b"user-agent", b"forwarded", b"x-forwarded-for", b"x-real-ip", b"origin",
    b"referer", b"sec-fetch-site", b"accept-language", b"accept", b"authorization",
    b"x-api-key", b"transfer-encoding", b"x-csrf-token", b"content-length", b"content-type",
    b"cookie",
]  # fmt: skip
#: Peers besides the home clients: a trusted proxy (the full app reads its
#: forwarded header), a few that come back (their buckets fill), any address.
peers = st.one_of(
    st.sampled_from([("127.0.0.1", 50000), ("198.51.100.7", 1234), ("2001:db8::1", 443)]),
    st.builds(lambda ip, port: (ip, port), st.ip_addresses().map(str), st.integers(0, 65535)),
    st.none(),
)


def mutate(value: str, at: int, char: str) -> str:
    at %= max(1, len(value))
    return value[:at] + char + value[at + 1 :]


def cookie_headers(s: Surface) -> st.SearchStrategy[bytes]:
    live = [s.cookie(i) for i in range(len(s.slots))]
    tokens = [s.token(i) for i in range(len(s.slots))]
    token_text = st.one_of(
        st.text(max_size=60),
        st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.", max_size=120),
        st.sampled_from(tokens),
    )
    pair = st.one_of(
        st.sampled_from([p for c in live for p in c.split("; ")]),
        st.builds(  # well-formed but forged: a real value with one character changed
            mutate,
            st.sampled_from(s.forgeable),
            st.integers(12, 200),
            st.sampled_from(["A", "-", "_", ".", "=", "\u00e9", " "]),
        ),
        st.builds(lambda v: f"{s.sid_cookie}={v}", token_text),
        st.builds(lambda v: f"{s.csrf_cookie}={v}", token_text),
        st.builds(lambda k, v: f"{k}={v}", st.text(max_size=10), st.text(max_size=20)),
    )
    return st.one_of(
        st.sampled_from(live).map(wire),
        st.lists(pair, max_size=5).map(lambda ps: wire("; ".join(ps))),
        st.builds(
            lambda ps, sep: wire(sep.join(ps)),
            st.lists(pair, max_size=4),
            st.sampled_from([";", ",", ";;", " ; "]),
        ),
        raw_values,
        st.just(s.sid_cookie.encode() + b"=" + b"A" * 9000),
    )


def form_values(s: Surface) -> st.SearchStrategy[str]:
    return st.one_of(
        texts,
        st.sampled_from([s.token(i) for i in range(len(s.slots))]),
        st.sampled_from(["demo@example.com", "alice@example.com", "primer1@example.com"]),
        st.sampled_from(["demo-password", "correct horse", PRIMER_PASSWORD]),
        st.sampled_from(["123456", "000000", "ABCD-EFGH-JKLM", ""]),
        st.sampled_from([300, 2000]).map(lambda n: "x" * n),
    )


def hostile_values(s: Surface) -> st.SearchStrategy[str]:
    """Values for the fields a login reads: mostly ones that are not plain text."""
    return st.one_of(
        st.sampled_from(SURROGATES),
        st.sampled_from(SURROGATES),
        st.sampled_from(["", " ", "\x00", "\u00e9@example.com", "A\u030a", "\ufb01@x", "x" * 5000]),
        form_values(s),
    )


def smuggle(value: str, charset: str) -> str:
    """``value`` written so that Starlette, decoding with ``charset``, gets it back
    (lone surrogates included)."""
    if charset == "unicode_escape":
        return value.encode("unicode_escape").decode("ascii")
    return value.encode("utf-7", "surrogatepass").decode("ascii")


@functools.cache
def json_values(s: Surface) -> st.SearchStrategy[Any]:
    """JSON documents: mostly objects naming the app's fields (built once)."""
    leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), form_values(s))

    def nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3)

    tree = st.recursive(leaf, nest, max_leaves=8)
    names = st.one_of(st.sampled_from([*s.fields, "csrf_token"]), texts)
    return st.one_of(st.dictionaries(names, leaf | tree, max_size=5), tree)


def urlencoded(pairs: list[tuple[str, str]]) -> bytes:
    return b"&".join(
        quote_from_bytes(wire(k), safe="").encode()
        + b"="
        + quote_from_bytes(wire(v), safe="").encode()
        for k, v in pairs
    )


def multipart(pairs: list[tuple[str, str]], boundary: str, file: bool) -> bytes:
    out = [
        wire(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n')
        for k, v in pairs
    ]
    if file:
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="up"; filename="a.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + b"\x00\xff" * 40
            + b"\r\n"
        )
    return b"".join(out) + f"--{boundary}--\r\n".encode()


BODY_KINDS = [
    "none", "form", "form", "form", "json", "json", "json", "multipart", "multipart",
    "broken-multipart", "binary", "huge", "many", "raw-form",
]  # fmt: skip


@st.composite
def bodies(
    draw: st.DrawFn, s: Surface, token: str | None, login: bool = False
) -> tuple[bytes | None, bytes, bool]:
    """(Content-Type or ``None``, body, whether ``token`` went into the body
    as the ``csrf_token`` field). ``login``: often a login-shaped body."""
    names = st.one_of(st.sampled_from([*s.fields, "csrf_token", "_charset_"]), texts)
    pairs = st.lists(st.tuples(names, form_values(s)), max_size=6)
    if token is not None:
        # Now and then a bad csrf_token field comes first (the one CSRF reads).
        decoy = st.one_of(st.just([]), st.just([]), st.just([]), texts.map(lambda t: [t]))
        pairs = st.builds(
            lambda ps, at, bad: [
                *ps[:at],
                *(("csrf_token", b) for b in bad),
                ("csrf_token", token),
                *ps[at:],
            ],
            st.lists(st.tuples(st.sampled_from(s.fields), form_values(s)), max_size=4),
            st.integers(0, 4),
            decoy,
        )
    kind = "login" if login and draw(st.booleans()) else draw(st.sampled_from(BODY_KINDS))
    if kind == "login":  # what a login route reads, with hostile values, in every encoding
        ident, secret = draw(st.sampled_from(s.login_fields))
        password = st.sampled_from([PRIMER_PASSWORD] * 3 + ["", "\ud800", "x" * 2000])
        fields = [(ident, draw(hostile_values(s))), (secret, draw(password))]
        fields += draw(st.lists(st.tuples(st.sampled_from(s.fields), form_values(s)), max_size=1))
        if token is not None:
            fields.insert(draw(st.integers(0, len(fields))), ("csrf_token", token))
        how = draw(st.sampled_from(["form", "json", "unicode_escape", "utf-7"]))
        if how == "form":
            return FORM.encode(), urlencoded(fields), token is not None
        if how == "json":
            return JSON.encode(), json.dumps(dict(fields)).encode(), False
        # The client names a charset that decodes to whatever it likes, lone surrogates too.
        fields = [(k, smuggle(v, how)) for k, v in fields]
        ctype = f"multipart/form-data; boundary=b0undary; charset={how}".encode()
        return ctype, multipart(fields, "b0undary", False), token is not None
    if kind == "none":
        return draw(st.sampled_from([None, FORM.encode(), JSON.encode()])), b"", False
    if kind == "form":
        return FORM.encode(), urlencoded(draw(pairs)), token is not None
    if kind == "raw-form":  # not percent-encoded: bytes as they come, bad escapes
        parts = [b"csrf_token=", b"%", b"%zz", b"%E2%82%AC", b"%ED%A0%80", b"&", b"=", b"+",
                 b";", b"\xff", b"email=", b"password=x"]  # fmt: skip
        raw = b"".join(draw(st.lists(st.sampled_from(parts), max_size=12)))
        prefix = b"csrf_token=" + token.encode() + b"&" if token else b""
        ctype = FORM.encode() + draw(st.sampled_from([b"", b"; charset=latin-1"]))
        return ctype, prefix + raw, token is not None
    if kind == "many":
        n = draw(st.sampled_from([999, 1000, 1001, 1500]))
        fields = [f"f{i}=1".encode() for i in range(n)]
        value = token or draw(st.sampled_from([s.token(i) for i in range(len(s.slots))]))
        fields.insert(draw(st.sampled_from([0, n])), b"csrf_token=" + value.encode())
        return FORM.encode(), b"&".join(fields), token is not None
    if kind == "json":
        value = draw(json_values(s))
        raw = json.dumps(value).encode()  # lone surrogates become \ud800 escapes
        special = draw(st.sampled_from([None, None, None, "deep", "bignum", "truncated", "bom"]))
        if special == "deep":
            depth = draw(st.sampled_from([100, 5_000, 50_000]))
            raw = b'{"email":' + b"[" * depth + b"]" * depth + b"}"
        elif special == "bignum":
            digits = draw(st.sampled_from([400, 5000]))
            raw = b'{"email": 1' + b"0" * digits + b', "x": 1e99999, "y": -1e400}'
        elif special == "truncated":
            raw = raw[:-1]
        elif special == "bom":
            raw = b"\xef\xbb\xbf" + raw
        ctype = draw(
            st.sampled_from(
                [JSON, JSON, "application/problem+json", JSON + "; charset=utf-8", "text/json"]
            )
        )
        return ctype.encode(), raw, False
    if kind == "multipart":
        boundary = draw(st.sampled_from(["b0undary", "b0undary", "x" * 70, "a b"]))
        charset = draw(st.sampled_from(CHARSETS))
        ctype = f"multipart/form-data; boundary={boundary}"
        if charset:
            ctype += f"; charset={charset}"
        values = draw(pairs)
        if charset in ("unicode_escape", "utf-7"):  # how a client smuggles lone surrogates
            smuggled = "\\ud800" if charset == "unicode_escape" else "+2AA-"
            values = [*values, ("email", smuggled), ("password", smuggled)]
        return ctype.encode(), multipart(values, boundary, draw(st.booleans())), token is not None
    if kind == "broken-multipart":
        good = multipart(draw(pairs), "b0undary", draw(st.booleans()))
        cut = draw(st.integers(0, len(good)))
        ctype = draw(
            st.sampled_from(
                [
                    b"multipart/form-data; boundary=b0undary",
                    b"multipart/form-data",
                    b"multipart/form-data; boundary=",
                    b"multipart/form-data; boundary=other",
                    b'multipart/form-data; boundary="b0undary"',
                ]
            )
        )
        return ctype, good[:cut] + draw(st.binary(max_size=30)), False
    if kind == "binary":
        plain = [FORM, JSON, "multipart/form-data; boundary=x", "application/octet-stream"]
        ctype = draw(st.one_of(st.none(), st.sampled_from(plain).map(str.encode), raw_values))
        return ctype, draw(st.binary(max_size=300)), False
    # huge: beyond the login key's 64 KiB and, once in a while, CSRF's 1 MiB
    size = draw(st.sampled_from([70_000, 70_000, 1_100_000]))
    ctype = draw(st.sampled_from([FORM, JSON, "multipart/form-data; boundary=b0undary"]))
    value = token or s.token(0)
    return ctype.encode(), b"csrf_token=" + value.encode() + b"&email=" + b"a" * size, False


def extra_headers(s: Surface) -> st.SearchStrategy[tuple[bytes, bytes]]:
    tokens = [s.token(i).encode() for i in range(len(s.slots))]
    names = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(str.encode)
    return st.one_of(
        st.tuples(st.just(b"user-agent"), user_agents),
        st.tuples(st.just(b"x-forwarded-for"), xff),
        st.tuples(st.just(b"forwarded"), forwarded),
        st.tuples(st.just(b"origin"), origins),
        st.tuples(st.just(b"referer"), origins),
        st.tuples(st.just(b"sec-fetch-site"), sec_fetch),
        st.tuples(st.just(b"accept-language"), raw_values),
        st.tuples(st.just(b"cookie"), cookie_headers(s)),  # a second Cookie line
        st.tuples(st.just(b"x-csrf-token"), st.one_of(st.sampled_from(tokens), raw_values)),
        st.tuples(st.sampled_from(HEADER_NAMES), raw_values),
        st.tuples(names, raw_values),
    )


@st.composite
def requests(draw: st.DrawFn, s: Surface) -> Req:
    """Mostly plausible requests (a live cookie with its token, from its
    home client, to the app's paths) with garbage mixed in; sometimes
    nothing but garbage."""
    plausible = draw(st.integers(0, 3)) > 0
    headers: list[tuple[bytes, bytes]] = [(b"user-agent", UA)]
    token: str | None = None
    client: tuple[str, int] | None
    if plausible:
        method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"]))
        # Half of them to a login route: that is where request text meets the store.
        path = draw(st.sampled_from(s.login_paths if draw(st.booleans()) else s.paths))
        i = draw(st.integers(0, len(s.slots) - 1))
        headers.append((b"cookie", wire(s.cookie(i))))
        token = s.token(i)
        host = draw(st.integers(1, 254))
        client = (f"home{host}", i) if draw(st.integers(0, 3)) else draw(peers)
    else:
        method = draw(methods)
        path = draw(
            st.one_of(
                st.sampled_from(s.paths),
                st.sampled_from(s.paths).map(lambda p: p + "/"),
                st.builds(lambda p: "/" + p, st.text(max_size=30)),
                st.sampled_from(["//", "/%2e%2e/", "/login/../login", "/\u00e9", "/" + "a" * 3000]),
            )
        )
        if draw(st.booleans()):
            headers.append((b"cookie", draw(cookie_headers(s))))
        client = draw(peers)
    # ASCII only: Starlette's own URL (its trailing-slash redirect) decodes a
    # raw non-UTF-8 query string and fails before axess is involved.
    query = draw(
        st.one_of(
            st.just(b""),
            st.text(QUERY_CHARS, max_size=40).map(str.encode),
            texts.map(lambda t: b"msg=" + quote(wire(t)).encode()),
        )
    )
    login = plausible and path in s.login_paths
    ctype, body, carried = draw(bodies(s, token if draw(st.integers(0, 3)) else None, login))
    if token is not None and not carried and draw(st.integers(0, 5)):
        headers.append((b"x-csrf-token", token.encode()))
    if ctype is not None:
        headers.append((b"content-type", ctype))
    length = draw(st.sampled_from(["right", "right", "right", "none", "wrong", "garbage"]))
    if length == "right":
        headers.append((b"content-length", str(len(body)).encode()))
    elif length == "wrong":
        headers.append((b"content-length", str(draw(st.integers(0, 10**6))).encode()))
    elif length == "garbage":
        garbage = [b"-1", b"1e3", b"0x10", b" 12", b"", b"1_0", b"99999999999999999999"]
        headers.append((b"content-length", draw(st.sampled_from(garbage))))
    headers += draw(st.lists(extra_headers(s), max_size=2 if plausible else 6))
    if draw(st.booleans()):
        headers.insert(0, (b"host", draw(st.sampled_from([b"testserver", b"t", b"", b"[::1"]))))
    return Req(method, path, query, headers, body, draw(st.integers(1, 3)), client)


#: ``AXESS_FUZZ_EXAMPLES=2000`` (and ``AXESS_FUZZ_RANDOM=1`` for fresh
#: examples each run; ``--timeout=0`` for pytest) digs deeper than the CI budget.
FUZZ = settings(
    max_examples=int(os.environ.get("AXESS_FUZZ_EXAMPLES", "150")),
    deadline=None,
    derandomize=not os.environ.get("AXESS_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- app (a): the demo ---------------------------------------------------------------------
def load_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AXESS_DEMO_DB", str(tmp_path / "demo.db"))
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("examples.demo", None)
    demo = importlib.import_module("examples.demo")
    # Argon2 at its real cost would spend the time budget on hashing.
    demo.authn.hasher = demo.users.hasher = fast_hasher()
    return demo


def csrf_of(html: bytes) -> str:
    found = re.search(rb'name="csrf_token" value="([^"]+)"', html)
    assert found
    return found.group(1).decode()


class Demo(Surface):
    """The demo's route table; a signed-in user with TOTP off (it may set TOTP
    up) and one with TOTP on (it may turn it off or get new recovery codes),
    so the step-up checks read the password and code fields they are sent."""

    slots = ("guest", "signed-in", "two-factor")
    paths = (
        "/", "/login", "/login/totp", "/logout", "/logout-everywhere", "/sessions/revoke",
        "/device/forget", "/totp/enrol", "/totp/confirm", "/totp/disable", "/recovery-codes",
        "/healthz",
    )  # fmt: skip
    fields = ("email", "password", "code", "key", "username")
    login_paths = (
        "/login", "/login", "/login/totp", "/totp/confirm", "/totp/enrol", "/totp/disable",
        "/recovery-codes",
    )  # fmt: skip
    login_fields = (
        ("email", "password"), ("email", "password"), ("code", "code"), ("password", "code"),
    )  # fmt: skip

    def __init__(self, demo: Any) -> None:
        super().__init__(demo.app, demo.auth)
        self.users = demo.users

    async def sign_in(self, i: int) -> None:
        ip = self.fresh_ip()
        page = await self.get("/", ip, {})
        jar = page.cookies()
        if self.slots[i] != "guest":
            ident = f"primer{self.signed_in}@example.com"
            user = await self.users.create_user(ident, password=PRIMER_PASSWORD)
            form = [("csrf_token", csrf_of(page.body)), ("email", ident)]
            body = urlencoded([*form, ("password", PRIMER_PASSWORD)])
            r = await self.post("/login", ip, jar, FORM, body)
            assert r.status == 303 and "Invalid" not in dict(r.headers)[b"location"].decode()
            jar.update(r.cookies())
            page = await self.get("/", ip, jar)
            assert b"Signed in as" in page.body
            jar.update(page.cookies())
            if self.slots[i] == "two-factor":  # on after the login: the session stays
                await self.users.enrol_totp(user.id)
                await self.users.regenerate_recovery_codes(user.id)
                page = await self.get("/", ip, jar)
                assert b'formaction="/totp/disable"' in page.body
        self.remember(i, jar, csrf_of(page.body), ip)

    async def alive(self, i: int) -> bool:
        jar = self.jar(i)
        page = await self.get("/", self.homes[i], jar)
        if b"Signed in as" not in page.body:
            return False
        jar.update(page.cookies())
        self.remember(i, jar, csrf_of(page.body), self.homes[i])
        return True


class SQLiteRows:
    """Sessions and lockout counters in the demo's SQLite file (a separate reader)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def snapshot(self) -> tuple[int, list[tuple[Any, ...]]]:
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            (sessions,) = db.execute("SELECT COUNT(*) FROM axess_sessions").fetchone()
            levers = db.execute("SELECT * FROM axess_lockouts ORDER BY lkey").fetchall()
        return sessions, levers


@contextlib.contextmanager
def primed_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[asyncio.Runner, Demo, ErrorLog]]:
    """The demo started (lifespan) with its live sessions signed in."""
    demo = load_demo(tmp_path, monkeypatch)
    surface = Demo(demo)
    with asyncio.Runner() as runner, error_log() as errors:
        lifespan = demo.lifespan(demo.app)
        runner.run(lifespan.__aenter__())
        try:
            runner.run(surface.prime())
            yield runner, surface, errors
        finally:
            runner.run(lifespan.__aexit__(None, None, None))
            sys.modules.pop("examples.demo", None)


def test_demo_answers_every_request_below_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = SQLiteRows(tmp_path / "demo.db")
    with primed_demo(tmp_path, monkeypatch) as (runner, surface, errors):

        @FUZZ
        @given(req=requests(surface))
        def check(req: Req) -> None:
            before = rows.snapshot()
            answer = runner.run(call(surface.app, surface.hits, surface.resolve(req)))
            assert answer.status < 500, (answer.status, answer.body[:300])
            after = rows.snapshot()
            assert after[0] <= before[0] + 1  # one request: at most one new session
            if not answer.reached:
                assert after[0] <= before[0], "a refused request left a session row"
                assert after[1] == before[1], "a refused request touched a lockout counter"
            assert not errors.records, [r.getMessage() for r in errors.records]
            runner.run(surface.refresh())

        check()


#: The demo's step-up routes: the session that may use each, the proof field it reads.
STEP_UPS = {
    "/totp/enrol": ("signed-in", "password"),
    "/totp/disable": ("two-factor", "code"),
    "/recovery-codes": ("two-factor", "code"),
}


@st.composite
def step_up_requests(draw: st.DrawFn, s: Demo) -> Req:
    """A live session's POST to a step-up route, with its CSRF token and from
    its home client, whose proof field is missing, repeated or holds hostile
    text (lone surrogates, NUL, over the length limits) in any encoding."""
    path = draw(st.sampled_from(sorted(STEP_UPS)))
    kind, proof = STEP_UPS[path]
    i = s.slots.index(kind)
    other = "code" if proof == "password" else "password"
    fields = [(proof, v) for v in draw(st.lists(hostile_values(s), max_size=3))]
    fields += [(other, v) for v in draw(st.lists(hostile_values(s), max_size=1))]
    fields = draw(st.permutations(fields))
    headers = [(b"user-agent", UA), (b"cookie", wire(s.cookie(i)))]
    how = draw(st.sampled_from(["form", "form", "json", "unicode_escape", "utf-7"]))
    if how == "json":  # the demo reads forms only: a JSON body is no proof at all
        headers += [(b"x-csrf-token", s.token(i).encode()), (b"content-type", JSON.encode())]
        body = json.dumps(dict(fields)).encode()
    else:
        fields.insert(draw(st.integers(0, len(fields))), ("csrf_token", s.token(i)))
        if how == "form":
            headers.append((b"content-type", FORM.encode()))
            body = urlencoded(fields)
        else:  # a charset that decodes to whatever the client likes
            fields = [(k, smuggle(v, how)) for k, v in fields]
            ctype = f"multipart/form-data; boundary=b0undary; charset={how}"
            headers.append((b"content-type", ctype.encode()))
            body = multipart(fields, "b0undary", False)
    headers.append((b"content-length", str(len(body)).encode()))
    return Req("POST", path, b"", headers, body, 1, (f"home{draw(st.integers(1, 254))}", i))


def test_demo_step_up_routes_answer_any_proof_below_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request reaches the route (none refused by CSRF or the session
    binding), and the route's answer is a page or a redirect, never a 5xx."""
    with primed_demo(tmp_path, monkeypatch) as (runner, surface, errors):

        @FUZZ
        @given(req=step_up_requests(surface))
        def check(req: Req) -> None:
            answer = runner.run(call(surface.app, surface.hits, surface.resolve(req)))
            assert answer.reached, (req.path, answer.status, answer.body[:300])
            assert answer.status in (200, 303, 429), (answer.status, answer.body[:300])
            assert not errors.records, [r.getMessage() for r in errors.records]
            runner.run(surface.refresh())

        check()


# -- app (b): every stage on, memory store --------------------------------------------------
def _str(body: Any, name: str) -> str:
    value = body.get(name, "") if isinstance(body, dict) else ""
    return value if isinstance(value, str) else ""


async def json_body(request: Request) -> Any:
    """The JSON body, or ``None`` when it is not JSON an app would accept."""
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError):  # bad JSON, huge integers, deep nesting
        return None


def full_app(store: MemoryStore, clock: MockClock, audit: AuditPipeline, header: str) -> Axess:
    return Axess(
        store=store,
        keys=Keyring.generate(),
        session=SessionConfig(idle_timeout=600, max_custom_bytes=2048, max_sessions_per_user=3),
        clock=clock,
        random=SeededRandom(11),
        trusted_proxies=TrustedProxies(["127.0.0.0/8", "::1/128"], header=header),
        binding=BindingPolicy(accept_language=True),
        csrf=CSRFConfig(),
        rate_limits=[
            *auth_rules(login_paths=["/login", "/login/form", "/login/factor"]),
            RateLimit("600/minute", key="ip", name="all-ip"),
            RateLimit("60/minute", key="header:x-api-key", paths=["/api/**"], name="api-key"),
            RateLimit(
                "20/minute",
                key=composite("ip", "login"),
                paths=["/login"],
                methods=["POST"],
                name="login-ip-id",
            ),
        ],
        password_hasher=fast_hasher(),
        audit=audit,
        debug=True,
        cleanup_interval=None,
    )


def full_routes(auth: Axess) -> list[Route]:
    authn = auth.authn
    assert authn is not None

    async def guarded(outcome: Any) -> Response:
        try:
            return outcome_response(await outcome)
        except StoreError:
            return unavailable_response()

    async def login(request: Request) -> Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            return JSONResponse({"error": "bad_request"}, status_code=400)
        ident = _str(body, "identifier") or _str(body, "email")
        tenant = _str(body, "tenant") or None
        return await guarded(authn.login_password(request, ident, _str(body, "password"), tenant))

    async def login_form(request: Request) -> Response:
        form = await request.form()
        email, password = form.get("email", ""), form.get("password", "")
        if not (isinstance(email, str) and isinstance(password, str)):
            return JSONResponse({"error": "bad_request"}, status_code=400)
        return await guarded(authn.login_password(request, email, password))

    async def factor(request: Request) -> Response:
        body = await json_body(request)
        credential: Password | TOTPCode | RecoveryCode
        try:
            if _str(body, "password"):
                credential = Password(_str(body, "password"))
            elif _str(body, "totp"):
                credential = TOTPCode(_str(body, "totp"))
            else:
                credential = RecoveryCode(_str(body, "recovery"))
        except ValueError:  # not a password at all
            return JSONResponse({"error": "bad_request"}, status_code=400)
        return await guarded(authn.verify_factor(request, credential))

    async def logout(request: Request) -> Response:
        await authn.logout(request)
        return JSONResponse({"ok": True})

    async def me(request: Request) -> Response:
        s = get_session(request)
        return JSONResponse({"kind": s.auth_state.kind, "user": s.user_id})

    async def token(request: Request) -> Response:
        return JSONResponse({"token": csrf_token(request)})

    async def write(request: Request) -> Response:
        body = await json_body(request)
        s = get_session(request)
        if isinstance(body, dict):
            for k, v in list(body.items())[:8]:
                s[k] = v
        try:
            size = s.size()
        except ValueError:  # inf, NaN, lone surrogates: json.loads takes them, JSON does not
            return JSONResponse({"error": "not_json"}, status_code=400)
        return JSONResponse({"size": size})

    async def regenerate(request: Request) -> Response:
        get_session(request).regenerate()
        return JSONResponse({"ok": True})

    @require_authn()
    async def private(request: Request) -> Response:
        return JSONResponse({"user": get_session(request).user_id})

    async def api(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return [
        Route("/login", login, methods=["POST"]),
        Route("/login/form", login_form, methods=["POST"]),
        Route("/login/factor", factor, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/me", me),
        Route("/csrf", token),
        Route("/session/write", write, methods=["POST", "PUT", "PATCH"]),
        Route("/session/regenerate", regenerate, methods=["POST"]),
        Route("/private", private),
        Route("/api/thing", api, methods=["GET", "POST", "DELETE"]),
        Route("/healthz", auth.healthz),
    ]


class Full(Surface):
    slots = ("guest", "authenticated", "authenticating")
    paths = (
        "/login", "/login/form", "/login/factor", "/logout", "/me", "/csrf", "/session/write",
        "/session/regenerate", "/private", "/api/thing", "/healthz",
    )  # fmt: skip
    fields = ("identifier", "email", "username", "password", "totp", "recovery", "tenant")
    login_paths = ("/login", "/login/form", "/login/form", "/login/factor")
    login_fields = (("identifier", "password"), ("email", "password"), ("totp", "recovery"))

    def __init__(self, header: str) -> None:
        self.store = MemoryStore()
        self.clock = MockClock()
        self.audit = AuditPipeline(sinks=[StoreSink(self.store)], flush_interval=0.0)
        self.header = header
        self.auth = full_app(self.store, self.clock, self.audit, header)
        app = Starlette(routes=full_routes(self.auth))
        self.auth.install(app)
        super().__init__(app, self.auth)

    def home(self, ip: str) -> tuple[tuple[str, int], list[tuple[bytes, bytes]]]:
        # Behind the trusted proxy: the address comes in its header.
        value = ip if self.header == "x-forwarded-for" else f"for={ip}"
        return ("127.0.0.1", 40000), [(self.header.encode(), value.encode())]

    async def sign_in(self, i: int) -> None:
        ip = self.fresh_ip()
        page = await self.get("/csrf", ip, {})
        jar = page.cookies()
        token = json.loads(page.body)["token"]
        kind = self.slots[i]
        if kind != "guest":
            users, authn = self.auth.users, self.auth.authn
            assert users is not None and authn is not None
            ident = f"primer{self.signed_in}@example.com"
            user = await users.create_user(ident, password=PRIMER_PASSWORD)
            if kind == "authenticating":  # TOTP on: the password step leaves it half-way
                secret = authn.sealer.seal(generate_secret(SeededRandom(5)), user.id)
                await self.store.set_totp_secret(user.id, secret)
            body = json.dumps({"identifier": ident, "password": PRIMER_PASSWORD}).encode()
            r = await self.post("/login", ip, jar, JSON, body, [(b"x-csrf-token", token.encode())])
            assert r.status == 200, (r.status, r.body)
            jar.update(r.cookies())
            page = await self.get("/csrf", ip, jar)
            jar.update(page.cookies())
            token = json.loads(page.body)["token"]
        self.remember(i, jar, token, ip)

    async def alive(self, i: int) -> bool:
        jar = self.jar(i)
        me = await self.get("/me", self.homes[i], jar)
        if me.status != 200 or json.loads(me.body)["kind"] != self.slots[i]:
            return False
        jar.update(me.cookies())
        page = await self.get("/csrf", self.homes[i], jar)
        jar.update(page.cookies())
        self.remember(i, jar, json.loads(page.body)["token"], self.homes[i])
        return True

    def login_events(self) -> int:
        return sum(1 for row in self.store._audit.values() if row.event.type in LOGIN_EVENTS)


@pytest.mark.parametrize("header", ["x-forwarded-for", "forwarded"])
def test_every_stage_answers_every_request_below_500(header: str) -> None:
    surface = Full(header)
    store = surface.store
    with asyncio.Runner() as runner, error_log() as errors:
        runner.run(surface.auth.startup())
        try:
            runner.run(surface.prime())

            @FUZZ
            @given(req=requests(surface), dt=st.sampled_from([0.0, 0.0, 1.0, 30.0, 700.0]))
            def check(req: Req, dt: float) -> None:
                surface.clock.advance(dt)
                runner.run(surface.audit.flush())
                sessions, levers = len(store._sessions), dict(store._levers)
                events = surface.login_events()
                answer = runner.run(call(surface.app, surface.hits, surface.resolve(req)))
                assert answer.status < 500, (answer.status, answer.body[:300])
                runner.run(surface.audit.flush())
                assert len(store._sessions) <= sessions + 1
                if not answer.reached:
                    assert len(store._sessions) <= sessions, "a refused request left a session"
                    assert store._levers == levers, "a refused request touched a lockout counter"
                    assert surface.login_events() == events, "a refused request was audited"
                assert not errors.records, [r.getMessage() for r in errors.records]
                runner.run(surface.refresh())

            check()
            runner.run(surface.audit.flush())
            (stats,) = surface.audit.stats()
            assert stats.dropped == 0 and stats.failures == 0
            assert stats.accepted == stats.delivered == len(store._audit)
        finally:
            runner.run(surface.auth.shutdown())
