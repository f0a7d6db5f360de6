"""Rate-limit keys: normalization, bounds, IP fallback, and bodies read without
being consumed for the app (garbage never raises)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axess import ConfigurationError
from axess.ratelimit import keys
from axess.ratelimit.keys import KeyContext, resolve
from axess.text import normalize_identifier


def make_scope(
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    client_ip: str | None = "203.0.113.7",
    peer: str | None = "10.0.0.1",
    state: dict[str, Any] | None = None,
    kind: str = "http",
) -> dict[str, Any]:
    st_: dict[str, Any] = dict(state or {})
    if client_ip is not None:
        st_["client_ip"] = client_ip
    return {
        "type": kind,
        "method": "POST",
        "path": "/login",
        "headers": headers or [],
        "client": (peer, 1234) if peer else None,
        "state": st_,
    }


def receiver(chunks: list[bytes]) -> Any:
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    calls = {"n": 0}

    async def receive() -> dict[str, Any]:
        calls["n"] += 1
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    receive.calls = calls  # type: ignore[attr-defined]
    return receive


async def drain(receive: Any) -> bytes:
    out = b""
    while True:
        m = await receive()
        if m["type"] != "http.request":
            return out
        out += m.get("body", b"")
        if not m.get("more_body"):
            return out


async def login_key(
    body: bytes | list[bytes], ctype: bytes, key: keys.Key | None = None
) -> tuple[str | None, bytes]:
    chunks = body if isinstance(body, list) else [body]
    ctx = KeyContext(make_scope([(b"content-type", ctype)]), receiver(chunks))
    value = await (key or keys.login_identifier())(ctx)
    return value, await drain(ctx.receive)


# -- ip --------------------------------------------------------------------------------
async def test_ip_key_uses_resolved_client_ip() -> None:
    ctx = KeyContext(make_scope(), receiver([]))
    assert await keys.ip()(ctx) == "ip:203.0.113.7"


async def test_ip_key_falls_back_to_peer_without_client_ip_stage() -> None:
    ctx = KeyContext(make_scope(client_ip=None, peer="::ffff:198.51.100.9"), receiver([]))
    assert await keys.ip()(ctx) == "ip:198.51.100.9"


async def test_ipv6_keyed_by_prefix() -> None:
    key = keys.ip()
    a = await key(KeyContext(make_scope(client_ip="2001:db8:1:2::1"), receiver([])))
    b = await key(KeyContext(make_scope(client_ip="2001:db8:1:2:ffff::9"), receiver([])))
    c = await key(KeyContext(make_scope(client_ip="2001:db8:1:3::1"), receiver([])))
    assert a == b == "ip:2001:db8:1:2::/64" and c != a
    full = keys.ip(v6_prefix=128)
    assert await full(KeyContext(make_scope(client_ip="2001:db8::1"), receiver([]))) == (
        "ip:2001:db8::1"
    )
    with pytest.raises(ConfigurationError):
        keys.ip(v6_prefix=0)


# -- login identifier ------------------------------------------------------------------
async def test_login_identifier_from_form_json_and_multipart() -> None:
    form, _ = await login_key(
        b"username=Alice%40Example.com&password=x", b"application/x-www-form-urlencoded"
    )
    js, _ = await login_key(
        json.dumps({"email": " alice@example.COM ", "password": "x"}).encode(),
        b"application/json; charset=utf-8",
    )
    boundary = b"XyZ"
    multipart = (
        b'--XyZ\r\nContent-Disposition: form-data; name="username"\r\n\r\nALICE@example.com\r\n'
        b"--XyZ--\r\n"
    )
    mp, _ = await login_key(multipart, b"multipart/form-data; boundary=" + boundary)
    assert form is not None and form.startswith("login#") and len(form) == len("login#") + 32
    assert form == js == mp  # normalized: case, surrounding space
    assert "alice" not in form  # only a digest


async def test_login_identifier_normalizes_unicode() -> None:
    a, _ = await login_key(
        json.dumps({"username": "\uff21\uff4c\uff49\uff43\uff45"}).encode(), b"application/json"
    )
    b, _ = await login_key(json.dumps({"username": "alice"}).encode(), b"application/json")
    assert a == b


async def _login_bucket(identifier: str) -> str | None:
    value, _ = await login_key(json.dumps({"username": identifier}).encode(), b"application/json")
    return value


async def test_every_spelling_of_an_account_is_one_bucket() -> None:
    """The bucket is keyed by the login's own normalization of the whole
    value: padding past any cap, case, compatibility forms and combining
    sequences that name one account never reach a bucket of their own."""
    victim = "alice@example.com"
    one = await _login_bucket(victim)
    assert one is not None
    spellings = [
        " " * 256 + victim,  # past the old 256-character cap: was the IP's bucket
        " " * 255 + victim,  # cut inside the address: was a bucket per length
        " " * 250 + victim.upper() + " " * 40,
        "\uff41lice@example.com",
    ]
    assert {await _login_bucket(s) for s in spellings} == {one}
    # Two spellings of one account the login folds to the same identifier
    # (NFKC applied again after casefolding).
    assert normalize_identifier("\u00df\u0301@x") == normalize_identifier("s\u015b@x")
    assert await _login_bucket("\u00df\u0301@x") == await _login_bucket("s\u015b@x")


async def test_an_identifier_the_login_refuses_is_keyed_by_the_ip() -> None:
    # It names no account (the login refuses it before any lever or hash).
    for refused in (" " * 2000 + "alice", "   ", "a\x00b"):
        assert await _login_bucket(refused) is None


async def test_body_is_replayed_to_the_app_unchanged() -> None:
    chunks = [b"username=bob&", b"password=secret&x=", b"y" * 1000]
    value, replay = await login_key(chunks, b"application/x-www-form-urlencoded")
    assert value is not None
    assert replay == b"".join(chunks)


async def test_body_over_the_cap_is_not_parsed_but_fully_replayed() -> None:
    """The limiter cannot tell whose it is: counted on the IP, marked for refusal."""
    key = keys.login_identifier(max_body=100)
    chunks = [b"username=bob&pad=" + b"a" * 80, b"b" * 80, b"c" * 80]
    value, replay = await login_key(chunks, b"application/x-www-form-urlencoded", key)
    assert value == "ambiguous:ip:203.0.113.7"
    assert replay == b"".join(chunks)


async def test_declared_length_over_the_cap_is_not_read_at_all() -> None:
    receive = receiver([b"username=bob"])
    scope = make_scope(
        [(b"content-type", b"application/x-www-form-urlencoded"), (b"content-length", b"99999")]
    )
    ctx = KeyContext(scope, receive)
    assert await keys.login_identifier(max_body=1000)(ctx) == "ambiguous:ip:203.0.113.7"
    assert ctx.refusal is not None and ctx.refusal.status_code == 400
    assert receive.calls["n"] == 0 and ctx.receive is receive


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"{not json", b"application/json"),
        (b"\xff\xfe\x00garbage", b"application/json"),
        (b"[1, 2, 3]", b"application/json"),
        (b'{"username": "   "}', b"application/json"),
        (b"[" * 100_000 + b"]" * 100_000, b"application/json"),
        (b"1" * 50_000, b"application/json"),
        (b"&" * 150 + b"=" * 5000, b"application/x-www-form-urlencoded"),
        (b"--x\r\ngarbage", b"multipart/form-data; boundary=x"),
        (b"anything", b"multipart/form-data"),
        (b"username=bob", b"text/plain"),
        (b"", b"application/json"),
    ],
)
async def test_garbage_bodies_give_none_and_are_replayed(body: bytes, ctype: bytes) -> None:
    value, replay = await login_key(body, ctype, keys.login_identifier(max_body=300_000))
    assert value is None
    assert replay == body


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    st.sampled_from(
        [
            b"application/json",
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=b",
            b"application/problem+json",
            b"\xff\x00",
        ]
    ),
)
async def test_any_body_never_raises_and_is_replayed(chunks: list[bytes], ctype: bytes) -> None:
    value, replay = await login_key(chunks, ctype, keys.login_identifier(max_body=600))
    assert value is None or value.startswith(("login#", "ambiguous:ip:"))
    assert replay == b"".join(chunks)


async def test_client_disconnect_while_reading() -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    ctx = KeyContext(make_scope([(b"content-type", b"application/json")]), receive)
    assert await keys.login_identifier()(ctx) is None
    assert (await ctx.receive())["type"] == "http.disconnect"


async def test_websocket_has_no_body() -> None:
    ctx = KeyContext(
        make_scope([(b"content-type", b"application/json")], kind="websocket"), receiver([])
    )
    assert await keys.login_identifier()(ctx) is None


# -- session, header, composite, custom ----------------------------------------------------
class FakeSession:
    def __init__(self, user_id: str | None, tenant_id: str | None = None) -> None:
        self.user_id = user_id
        self.tenant_id = tenant_id


async def test_user_and_tenant_keys() -> None:
    scope = make_scope(state={"session": FakeSession("u-1", "acme")})
    ctx = KeyContext(scope, receiver([]))
    user = await keys.user()(ctx)
    tenant = await keys.tenant()(ctx)
    assert user is not None and user.startswith("user#") and "u-1" not in user
    assert tenant is not None and tenant.startswith("tenant#")
    guest = KeyContext(make_scope(state={"session": FakeSession(None)}), receiver([]))
    assert await keys.user()(guest) is None
    assert await keys.user()(KeyContext(make_scope(), receiver([]))) is None


async def test_header_key_is_hashed_and_capped() -> None:
    key = keys.header("X-API-Key")
    one = await key(KeyContext(make_scope([(b"x-api-key", b"secret-1")]), receiver([])))
    assert one is not None and "secret" not in one and one.startswith("header:x-api-key#")
    long_a = b"k" * 5000 + b"a"
    long_b = b"k" * 5000 + b"b"
    a = await key(KeyContext(make_scope([(b"x-api-key", long_a)]), receiver([])))
    b = await key(KeyContext(make_scope([(b"x-api-key", long_b)]), receiver([])))
    assert a == b and a is not None and len(a) < 64  # capped before hashing
    assert await key(KeyContext(make_scope([(b"x-api-key", b"   ")]), receiver([]))) is None
    with pytest.raises(ConfigurationError):
        keys.header("bad name")


async def test_composite_needs_every_part() -> None:
    key = keys.composite("ip", "header:x-device")
    with_device = KeyContext(make_scope([(b"x-device", b"d1")]), receiver([]))
    value = await key(with_device)
    assert value is not None and value.startswith("ip:203.0.113.7|header:x-device#")
    assert await key(KeyContext(make_scope(), receiver([]))) is None
    with pytest.raises(ConfigurationError):
        keys.CompositeKey(keys.ip())


async def test_custom_key_sync_async_and_failing() -> None:
    def sync(conn: Any) -> str | None:
        return conn.headers.get("x-org")

    async def asynchronous(conn: Any) -> str:
        return "org-" + conn.headers["x-org"]

    def broken(conn: Any) -> str:
        raise RuntimeError("boom")

    ctx = KeyContext(make_scope([(b"x-org", b"acme")]), receiver([]))
    assert (await keys.custom(sync)(ctx) or "").startswith("custom#")
    assert (await keys.as_key(asynchronous)(ctx) or "").startswith("custom#")
    assert await keys.custom(broken)(ctx) is None
    assert await keys.custom(lambda conn: 42)(ctx) is None  # type: ignore[arg-type,return-value]


async def test_resolve_never_empty_falls_back_to_ip() -> None:
    ip = keys.ip()
    ctx = KeyContext(make_scope(), receiver([]))
    for key in (
        keys.user(),
        keys.header("x-none"),
        keys.login_identifier(),
        keys.custom(lambda c: ""),
    ):
        assert await resolve(key, ip, ctx) == "ip:203.0.113.7"

    class Exploding(keys.Key):
        async def __call__(self, ctx: KeyContext) -> str | None:
            raise ValueError("bad")

    assert await resolve(Exploding(), ip, ctx) == "ip:203.0.113.7"


def test_as_key() -> None:
    assert isinstance(keys.as_key("ip"), keys.IPKey)
    assert isinstance(keys.as_key("login"), keys.LoginIdentifierKey)
    assert isinstance(keys.as_key("header:x-a"), keys.HeaderKey)
    with pytest.raises(ConfigurationError, match="unknown rate-limit key"):
        keys.as_key("session")
    with pytest.raises(ConfigurationError):
        keys.as_key(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        keys.login_identifier(fields=())


def test_loggable_truncates() -> None:
    assert keys.loggable("ip:1.2.3.4") == "ip:1.2.3.4"
    long = keys.digest("login", "x") + "|" + keys.digest("header", "y")
    assert len(keys.loggable(long)) == 48
