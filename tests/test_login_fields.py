"""One login identifier: the field the login handler reads and the field the
limiter counts come from one ``LoginFields`` declaration; an ambiguous body
is counted and refused with 400 before any password hash."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from axess import AmbiguousIdentifier, Axess, ConfigurationError, Keyring, LoginFields, MockClock
from axess.authn import PasswordHasher
from axess.authn.http import outcome_response
from axess.ratelimit import auth_rules, keys
from axess.stores import MemoryStore
from axess.testing import SeededRandom

FORM = "application/x-www-form-urlencoded"
AMBIGUOUS = "ambiguous_identifier"


class Env:
    def __init__(self, fields: LoginFields) -> None:
        self.fields = fields
        self.hasher = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
        self.auth = Axess(
            store=MemoryStore(),
            keys=Keyring.generate(),
            clock=MockClock(),
            random=SeededRandom(7),
            password_hasher=self.hasher,
            # /signin is outside the limiter's paths: only the handler checks there.
            rate_limits=auth_rules(login_paths=["/login"], login_fields=fields),
            csrf=False,
            debug=True,
            cleanup_interval=None,
        )
        self.read: list[str] = []

        async def login(request: Request) -> Response:
            identifier = await fields.read(request)  # before anything else
            self.read.append(identifier)
            password = await _password(request)
            assert self.auth.authn is not None
            return outcome_response(
                await self.auth.authn.login_password(request, identifier, password)
            )

        self.app = Starlette(
            routes=[
                Route("/login", login, methods=["POST"]),
                Route("/signin", login, methods=["POST"]),
            ]
        )
        self.auth.install(self.app)

    async def __aenter__(self) -> httpx.AsyncClient:
        assert self.auth.users is not None
        await self.auth.users.create_user("victim@example.com", password="right password")
        self.hasher.hash_calls = 0
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="https://testserver"
        )
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()


async def _password(request: Request) -> str:
    if request.headers.get("content-type", "").startswith("application/json"):
        value = json.loads(await request.body()).get("password", "")
    else:
        value = (await request.form()).get("password", "")
    return value if isinstance(value, str) else ""


def post(c: httpx.AsyncClient, body: bytes, ctype: str = FORM, path: str = "/login") -> Any:
    return c.post(path, content=body, headers={"content-type": ctype})


def remaining(r: httpx.Response, policy: str = "login-id-1m") -> int:
    for item in r.headers.get("ratelimit", "").split(", "):
        if item.startswith(f'"{policy}"'):
            return int(item.split(";r=")[1].split(";")[0])
    raise AssertionError(f"no {policy} in {r.headers.get('ratelimit')!r}")


DECOY_BODIES = [
    (b"username=r4nd0m&email=victim%40example.com&password=guess", FORM),
    (b"email=decoy%40example.com&email=victim%40example.com&password=guess", FORM),
    (b"email=victim%40example.com&email=&password=guess", FORM),
    (
        b'{"username": "r4nd0m", "email": "victim@example.com", "password": "guess"}',
        "application/json",
    ),
    (
        b'{"email": "decoy@example.com", "email": "victim@example.com", "password": "guess"}',
        "application/json",
    ),
    (b'{"email": ["victim@example.com"], "password": "guess"}', "application/json"),
    (
        b"--b\r\nContent-Disposition: form-data; name=email\r\n\r\ndecoy@example.com\r\n"
        b"--b\r\nContent-Disposition: form-data; name=email\r\n\r\nvictim@example.com\r\n"
        b"--b\r\nContent-Disposition: form-data; name=password\r\n\r\nguess\r\n--b--\r\n",
        "multipart/form-data; boundary=b",
    ),
]


@pytest.mark.parametrize(("body", "ctype"), DECOY_BODIES)
async def test_ambiguous_bodies_are_refused_before_any_hash_and_still_counted(
    body: bytes, ctype: str
) -> None:
    env = Env(LoginFields("username", "email"))
    async with env as c:
        seen = []
        for _ in range(5):  # login-id allows 5/minute
            r = await post(c, body, ctype)
            assert r.status_code == 400
            assert r.json()["error"] == AMBIGUOUS and r.json()["detail"]
            seen.append(remaining(r))
        assert seen == [4, 3, 2, 1, 0]  # the bucket depletes: no free requests
        r = await post(c, body, ctype)
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert env.hasher.hash_calls == 0 and env.read == []  # the app never ran


async def test_the_victims_own_bucket_is_untouched_by_ambiguous_bodies() -> None:
    """Ambiguous bodies are counted on the sender's IP, not on either value:
    they cannot lock the victim's identifier bucket (nor reach a fresh one)."""
    env = Env(LoginFields("email"))
    async with env as c:
        statuses = [
            (await post(c, b"email=a%40x&email=victim%40example.com&password=p")).status_code
            for _ in range(6)
        ]
        assert statuses == [400] * 5 + [429]
        r = await c.post(
            "/login", data={"email": "victim@example.com", "password": "right password"}
        )
        assert r.status_code == 200 and remaining(r) == 4  # the victim's bucket is full


async def test_a_field_outside_the_declaration_is_no_decoy() -> None:
    """With LoginFields("email"), a `username` field is just another field:
    the limiter counts the e-mail the handler reads, so a random username per
    request does not spread the guesses over fresh buckets."""
    env = Env(LoginFields("email"))
    async with env as c:
        for i in range(5):
            body = f"username=r{i}&email=victim%40example.com&password=guess".encode()
            r = await post(c, body)
            assert r.status_code == 401 and remaining(r) == 4 - i
        r = await post(c, b"username=fresh&email=victim%40example.com&password=guess")
        assert r.status_code == 429
        assert env.read == ["victim@example.com"] * 5 and env.hasher.hash_calls == 5


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"email=victim%40example.com&password=right+password", FORM),
        (b'{"email": "victim@example.com", "password": "right password"}', "application/json"),
        (
            b'{"username": null, "email": "victim@example.com", "password": "right password"}',
            "application/json",
        ),
        (b"username=&email=victim%40example.com&password=right+password", FORM),
        (
            b"--b\r\nContent-Disposition: form-data; name=email\r\n\r\nvictim@example.com\r\n"
            b"--b\r\nContent-Disposition: form-data; name=password\r\n\r\nright password\r\n"
            b"--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
    ],
)
async def test_plain_bodies_still_sign_in(body: bytes, ctype: str) -> None:
    env = Env(LoginFields("username", "email"))
    async with env as c:
        r = await post(c, body, ctype)
        assert r.status_code == 200 and r.json()["authenticated"] is True
        assert env.read == ["victim@example.com"] and remaining(r) == 4


async def test_the_handler_refuses_ambiguous_bodies_where_no_limit_applies() -> None:
    env = Env(LoginFields("email"))
    async with env as c:
        r = await post(c, b"email=a&email=b&password=p", path="/signin")
        assert r.status_code == 400 and r.json()["error"] == AMBIGUOUS
        assert r.headers["cache-control"] == "no-store"
        r = await post(c, b'{"email": "a", "email": "b"}', "application/json", "/signin")
        assert r.status_code == 400 and r.json()["error"] == AMBIGUOUS
        r = await post(c, b"email=x&password=" + b"p" * 70_000, path="/signin")
        assert r.status_code == 400 and "too large" in r.json()["detail"]
        r = await post(c, b"&".join([b"f=1"] * 300) + b"&email=x", path="/signin")
        assert r.status_code == 400
        assert env.hasher.hash_calls == 0 and env.read == []


async def test_a_body_too_large_for_the_limiter_is_refused_and_counted() -> None:
    """Padding a body past what the limiter reads must not move the guess to
    another bucket."""
    env = Env(LoginFields("email", max_body=1024))
    async with env as c:
        r = await post(c, b"email=victim%40example.com&pad=" + b"x" * 2000 + b"&password=p")
        assert r.status_code == 400 and remaining(r) == 4
        assert env.hasher.hash_calls == 0


async def test_route_dependency_counts_then_raises() -> None:
    fields = LoginFields("email")
    env = Env(fields)
    dep = env.auth.limit("2/minute", key=keys.login_identifier(fields), name="dep-login")

    async def guarded(request: Request) -> Response:
        await dep.check(request)
        return JSONResponse({"identifier": await fields.read(request)})

    env.app.add_route("/guarded", guarded, methods=["POST"])
    async with env as c:
        r = await post(c, b"email=a%40x&password=p", path="/guarded")
        assert r.json() == {"identifier": "a@x"}
        r = await post(c, b"email=a%40x&email=b%40x", path="/guarded")
        assert r.status_code == 400 and r.json()["error"] == AMBIGUOUS
        r = await post(c, b"email=a%40x&email=b%40x", path="/guarded")
        assert r.status_code == 400
        r = await post(c, b"email=a%40x&email=b%40x", path="/guarded")
        assert r.status_code == 429  # the ambiguous bucket of this IP is spent


def test_one_declaration_feeds_the_limiter() -> None:
    fields = LoginFields("login", max_body=4096)
    rules = {r.name: r for r in auth_rules(login_fields=fields)}
    key = rules["login-id"].key
    assert isinstance(key, keys.LoginIdentifierKey) and key.login_fields is fields
    assert rules["reset-id"].key.login_fields is fields  # type: ignore[attr-defined]
    assert LoginFields() == LoginFields("username", "email")
    assert repr(fields) == "LoginFields('login', max_body=4096)"
    for bad in [("",), ("a", "a"), (3,)]:
        with pytest.raises(ConfigurationError):
            LoginFields(*bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        LoginFields("email", max_body=0)
    with pytest.raises(ConfigurationError):
        auth_rules(login_fields=())


async def test_read_is_a_plain_helper() -> None:
    fields = LoginFields("email")

    def request(body: bytes, ctype: str) -> Request:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/",
            "query_string": b"",
            "headers": [(b"content-type", ctype.encode())],
        }
        return Request(scope, receive)

    assert await fields.read(request(b"email=a%40b", FORM)) == "a@b"
    assert await fields.read(request(b"other=1", FORM)) == ""
    assert await fields.read(request(b"email=a", "text/plain")) == ""
    assert await fields.read(request(b"{broken", "application/json")) == ""
    with pytest.raises(AmbiguousIdentifier) as info:
        await fields.read(request(b'{"email": 1}', "application/json"))
    assert info.value.status_code == 400
    # The body stays readable for the handler.
    req = request(b"email=a%40b&password=pw", FORM)
    assert await fields.read(req) == "a@b"
    assert (await req.form())["password"] == "pw"
