"""Every refusal, from a stage or from inside the app, answers with one JSON
shape, or a small HTML page for a browser, or the app's own refusal page
(book: Errors and refusals)."""

from __future__ import annotations

import asyncio
import functools
import html
import logging
from collections.abc import Awaitable, Callable
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from helpers import CSRF_COOKIE, CountingStore, asgi_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from axess import Axess, Keyring, LockoutPolicy, LoginFields, MockClock, get_session
from axess.audit.pipeline import AuditUnavailable
from axess.authn.guards import require_authn
from axess.authn.http import outcome_response
from axess.authn.lockout import Lever
from axess.authn.password import PasswordHasher
from axess.authz import CedarAuthorizer, Entity, EntityUid
from axess.ratelimit import RateLimit
from axess.refusals import (
    Refusal,
    RefusalPage,
    RefusalResponse,
    html_page,
    retry_after_words,
    wants_html,
)
from axess.session.csrf import CSRFConfig
from axess.testing import SeededRandom

POLICIES = Path(__file__).parent / "policies" / "docs"
DOCUMENTS = {"d1": "acme", "g1": "globex"}
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


class Env:
    """A FastAPI app with every refusal source behind ``Axess.install``."""

    def __init__(self, refusal_page: RefusalPage | None = None) -> None:
        self.store = CountingStore()
        self.clock = MockClock(1_700_000_000)
        authz = CedarAuthorizer(
            policies=POLICIES / "policies.cedar",
            schema=POLICIES / "schema.cedarschema",
            namespace="Docs",
        )
        self.auth = Axess(
            store=self.store,
            keys=Keyring.generate(),
            clock=self.clock,
            random=SeededRandom(5),
            debug=True,
            cleanup_interval=None,
            csrf=CSRFConfig(),
            rate_limits=[
                RateLimit("1/minute", name="limited", paths=["/limited"]),
                RateLimit("100/minute", key="login", name="login", paths=["/login"]),
            ],
            lockout=LockoutPolicy(user=Lever(2, 600, 120)),
            password_hasher=PasswordHasher(time_cost=1, memory_cost=64, parallelism=1),
            authz=authz,
            refusal_page=refusal_page,
        )
        self.app = app = FastAPI()
        auth = self.auth

        def load_doc(conn: HTTPConnection) -> Entity | None:
            tenant = DOCUMENTS.get(conn.path_params["doc_id"])
            if tenant is None:
                return None
            return Entity(
                EntityUid("Docs::Document", conn.path_params["doc_id"]),
                {
                    "tenant": EntityUid("Docs::Tenant", tenant),
                    "owner": EntityUid("Docs::User", "alice"),
                    "classification": "internal",
                },
            )

        @app.get("/")
        async def home(request: Request) -> dict[str, bool]:
            get_session(request)["seen"] = True
            return {"ok": True}

        @app.post("/as/{user}")
        async def sign_in(user: str, request: Request) -> dict[str, bool]:
            get_session(request).authenticate(user, "acme", ("password",))
            return {"ok": True}

        @app.api_route("/limited", methods=["GET", "POST"])
        async def limited() -> dict[str, bool]:
            return {"ok": True}

        @app.get("/dep", dependencies=[Depends(auth.limit("1/minute", name="dep"))])
        async def dep() -> dict[str, bool]:
            return {"ok": True}

        @app.post("/login")
        async def login(request: Request) -> Response:
            body = await request.json()
            assert auth.authn is not None
            outcome = await auth.authn.login_password(request, body["username"], body["password"])
            return outcome_response(outcome)

        @app.post("/fields")
        async def fields(request: Request) -> dict[str, str]:
            return {"identifier": await LoginFields().read(request)}

        @app.api_route("/me", methods=["GET", "POST"], dependencies=[Depends(require_authn())])
        async def me() -> dict[str, bool]:
            return {"ok": True}

        @app.api_route(
            "/page", methods=["GET", "POST"], dependencies=[Depends(require_authn(login_url="/in"))]
        )
        async def page() -> dict[str, bool]:
            return {"ok": True}

        view = authz.require('Action::"view"', resource=load_doc)

        @app.get("/docs/{doc_id}", dependencies=[Depends(view)])
        async def doc(doc_id: str) -> dict[str, str]:
            return {"doc": doc_id}

        @app.get("/audit")
        async def audit() -> dict[str, bool]:
            raise AuditUnavailable("audit trail unavailable", retry_after=5)

        auth.install(app)

    def client(self, accept: str | None = None) -> httpx.AsyncClient:
        headers = {"accept": accept} if accept is not None else {}
        # httpx sends "Accept: */*" unless told otherwise; None means no header.
        # Cookies are sent only where a source passes them (no jar).
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="https://testserver",
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
        )
        if accept is None:
            del client.headers["accept"]
        client.headers.update(headers)
        return client


Source = Callable[[Env, httpx.AsyncClient], Awaitable[httpx.Response]]


async def csrf_token_missing(env: Env, c: httpx.AsyncClient) -> httpx.Response:
    return await c.post("/limited", headers={"cookie": f"{CSRF_COOKIE}=forged"})


async def csrf_foreign_origin(env: Env, c: httpx.AsyncClient) -> httpx.Response:
    return await c.post("/limited", headers={"origin": "https://evil.example"})


async def rate_limit_middleware(env: Env, c: httpx.AsyncClient) -> httpx.Response:
    assert (await c.get("/limited")).status_code == 200
    return await c.get("/limited")


async def rate_limit_dependency(env: Env, c: httpx.AsyncClient) -> httpx.Response:
    assert (await c.get("/dep")).status_code == 200
    return await c.get("/dep")


async def invalid_credentials(env: Env, c: httpx.AsyncClient) -> httpx.Response:
    return await c.post("/login", json={"username": "ghost", "password": "wrong"})


async def locked(env: Env, c: httpx.AsyncClient) -> httpx.Response:
    for _ in range(2):
        r = await c.post("/login", json={"username": "ghost", "password": "wrong"})
        assert r.status_code == 401
    return await c.post("/login", json={"username": "ghost", "password": "wrong"})


async def unauthenticated(env: Env, c: httpx.AsyncClient) -> httpx.Response:
    return await c.get("/me")


async def forbidden(env: Env, c: httpx.AsyncClient) -> httpx.Response:
    signed_in = await c.post("/as/bob")
    assert signed_in.status_code == 200
    cookie = signed_in.headers["set-cookie"].split(";", 1)[0]
    return await c.get("/docs/g1", headers={"cookie": cookie})  # another tenant's


async def session_store_down(env: Env, c: httpx.AsyncClient) -> httpx.Response:
    first = await c.get("/")
    cookie = first.headers["set-cookie"].split(";", 1)[0]
    env.store.down = True
    return await c.get("/", headers={"cookie": cookie})


async def ambiguous_in_middleware(env: Env, c: httpx.AsyncClient) -> httpx.Response:
    body = b"username=decoy&username=victim&password=x"
    ctype = {"content-type": "application/x-www-form-urlencoded"}
    return await c.post("/login", content=body, headers=ctype)


async def ambiguous_in_handler(env: Env, c: httpx.AsyncClient) -> httpx.Response:
    return await c.post("/fields", json={"username": "decoy", "email": "victim@example.com"})


async def audit_unavailable(env: Env, c: httpx.AsyncClient) -> httpx.Response:
    return await c.get("/audit")


#: source -> (status, error code, Retry-After seconds or None)
SOURCES: dict[Source, tuple[int, str, int | None]] = {
    csrf_token_missing: (403, "csrf_failed", None),
    csrf_foreign_origin: (403, "csrf_failed", None),
    rate_limit_middleware: (429, "rate_limited", 60),
    rate_limit_dependency: (429, "rate_limited", 60),
    invalid_credentials: (401, "invalid_credentials", None),
    locked: (429, "locked", 120),
    unauthenticated: (401, "unauthenticated", None),
    forbidden: (403, "forbidden", None),
    session_store_down: (503, "service_unavailable", 5),
    ambiguous_in_middleware: (400, "ambiguous_identifier", None),
    ambiguous_in_handler: (400, "ambiguous_identifier", None),
    audit_unavailable: (503, "service_unavailable", 5),
}
EACH_SOURCE = pytest.mark.parametrize("source", list(SOURCES), ids=lambda s: s.__name__)


async def refuse(source: Source, accept: str | None, page: RefusalPage | None = None) -> Any:
    env = Env(page)
    async with env.client(accept) as c:
        return await source(env, c)


def assert_refusal_headers(r: httpx.Response, retry_after: int | None) -> None:
    assert r.headers["cache-control"] == "no-store"
    assert "accept" in r.headers["vary"].lower()
    if retry_after is None:
        assert "retry-after" not in r.headers
    else:
        assert r.headers["retry-after"] == str(retry_after)


@EACH_SOURCE
@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "text/html;q=0.5, */*"])
async def test_api_clients_get_the_one_json_shape(source: Source, accept: str | None) -> None:
    status, error, retry_after = SOURCES[source]
    r = await refuse(source, accept)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    expected: dict[str, object] = {"error": error, "detail": r.json().get("detail")}
    if retry_after is not None:
        expected["retry_after"] = retry_after
    assert r.json() == expected
    assert isinstance(expected["detail"], str) and expected["detail"]
    assert_refusal_headers(r, retry_after)


async def test_the_route_dependency_answers_exactly_like_the_middleware() -> None:
    by_middleware = await refuse(rate_limit_middleware, "application/json")
    by_dependency = await refuse(rate_limit_dependency, "application/json")
    assert by_middleware.json() == by_dependency.json()
    for r, policy in ((by_middleware, "limited"), (by_dependency, "dep")):
        assert r.headers["ratelimit-policy"] == f'"{policy}";q=1;w=60'
        assert r.headers["ratelimit"] == f'"{policy}";r=0;t=60'


@EACH_SOURCE
async def test_browsers_get_a_small_html_page(source: Source) -> None:
    status, error, retry_after = SOURCES[source]
    json_body = (await refuse(source, "application/json")).json()
    r = await refuse(source, BROWSER)
    assert r.status_code == status
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    page = r.text
    assert '<meta name="viewport"' in page and '<a href="/">' in page
    assert "<link" not in page and "<script" not in page and "src=" not in page
    detail = str(json_body["detail"])
    assert html.escape(detail[1:]) in page  # (capitalized, as a sentence)
    assert error not in page  # the code is for programs
    assert_refusal_headers(r, retry_after)
    if retry_after is not None:
        assert retry_after_words(retry_after) in page
    else:
        assert "Try again in" not in page
    if error == "rate_limited":
        assert "ratelimit" in r.headers and "ratelimit-policy" in r.headers


async def test_retry_after_in_words_on_the_page() -> None:
    r = await refuse(locked, BROWSER)
    assert "Try again in 2 minutes." in r.text
    r = await refuse(rate_limit_middleware, BROWSER)
    assert "Try again in 1 minute." in r.text


async def test_guard_with_login_url_still_redirects_browsers() -> None:
    env = Env()
    async with env.client(BROWSER) as c:
        r = await c.get("/page?x=1")
        assert r.status_code == 303
        assert r.headers["location"] == "/in?next=/page%3Fx%3D1"
        # A POST is not redirected: it is refused, negotiated like the rest.
        r = await c.post("/page")
        assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")


def custom_page(request: Request, refusal: Refusal) -> Response:
    return PlainTextResponse(
        f"custom {refusal.error} on {request.url.path}",
        status_code=refusal.status,
        headers={"x-custom": "1"},
    )


@EACH_SOURCE
async def test_the_apps_refusal_page_renders_every_refusal(source: Source) -> None:
    status, error, retry_after = SOURCES[source]
    r = await refuse(source, BROWSER, custom_page)
    assert r.status_code == status
    assert r.text.startswith(f"custom {error} on /")
    assert r.headers["x-custom"] == "1"
    assert_refusal_headers(r, retry_after)  # kept on the app's page


async def test_an_async_refusal_page_and_one_that_declines() -> None:
    async def async_page(request: Request, refusal: Refusal) -> Response | None:
        if not wants_html(request.headers.get("accept")):
            return None  # API clients keep the JSON body
        return PlainTextResponse("async page", status_code=refusal.status)

    r = await refuse(unauthenticated, BROWSER, async_page)
    assert r.status_code == 401 and r.text == "async page"
    r = await refuse(csrf_foreign_origin, "application/json", async_page)
    assert r.status_code == 403 and r.json()["error"] == "csrf_failed"


def raising_page(request: Request, refusal: Refusal) -> Response:
    raise RuntimeError("template missing")


def garbage_page(request: Request, refusal: Refusal) -> Any:
    return {"not": "a response"}


@pytest.mark.parametrize("page", [raising_page, garbage_page], ids=["raises", "garbage"])
@pytest.mark.parametrize(
    "source",
    [csrf_token_missing, rate_limit_dependency, session_store_down, invalid_credentials],
    ids=lambda s: s.__name__,
)
async def test_a_failing_refusal_page_falls_back_to_the_default(
    page: RefusalPage, source: Source, caplog: pytest.LogCaptureFixture
) -> None:
    status, error, _ = SOURCES[source]
    with caplog.at_level(logging.ERROR, logger="axess.refusals"):
        r = await refuse(source, BROWSER, page)
        assert r.status_code == status and r.headers["content-type"].startswith("text/html")
        r = await refuse(source, "application/json", page)
        assert r.status_code == status and r.json()["error"] == error
    failures = [rec for rec in caplog.records if rec.name == "axess.refusals"]
    assert len(failures) == 2 and all(rec.levelno == logging.ERROR for rec in failures)
    if page is raising_page:
        assert all(rec.exc_info for rec in failures)


async def test_allowed_requests_never_meet_the_hook() -> None:
    calls: list[Refusal] = []

    def page(request: Request, refusal: Refusal) -> None:
        calls.append(refusal)

    env = Env(page)
    async with env.client(BROWSER) as c:
        assert (await c.get("/limited")).status_code == 200
        assert (await c.get("/dep")).status_code == 200
        assert calls == []
        assert (await c.get("/dep")).status_code == 429
    assert [r.error for r in calls] == ["rate_limited"]


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER, True),
        ("text/html", True),
        ("text/*", True),
        ("text/html;q=0.9, application/json;q=0.2", True),
        ("TEXT/HTML;Q=1", True),
        ("application/json", False),
        ("*/*", False),
        (None, False),
        ("", False),
        ("text/html, application/json", False),  # a tie: JSON
        ("application/json, text/html;q=0.5", False),
        ("text/html;q=0", False),
        ("text/html;q=2", False),  # not a qvalue: ignored as 0
        ("text/html;q=nan", False),
        ("text/html;q=0.5, */*", False),  # */* gives JSON q=1
        ("text/html, text/*;q=0.1, application/*;q=0.2", True),
        (b"text/html", True),
    ],
)
def test_wants_html(accept: str | bytes | None, html: bool) -> None:
    assert wants_html(accept) is html


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (1, "Try again in 1 second."),
        (45, "Try again in 45 seconds."),
        (60, "Try again in 1 minute."),
        (61, "Try again in 2 minutes."),
        (120, "Try again in 2 minutes."),
        (3599, "Try again in 1 hour."),
        (3601, "Try again in 2 hours."),
        (86400, "Try again in 1 day."),
        (90000, "Try again in 2 days."),
        (0, "Try again in 1 second."),
    ],
)
def test_retry_after_words(seconds: int, words: str) -> None:
    assert retry_after_words(seconds) == words


def test_the_default_page_escapes_the_detail() -> None:
    page = html_page(Refusal(400, "bad_request", '<script>alert("x")</script>'))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert html_page(Refusal(599, "odd", "odd status")).count("599") == 2


@functools.cache
def _raw_app() -> Any:
    return Env().app


async def _asgi(method: str, path: str, accept: bytes) -> tuple[int, bytes]:
    headers = [(b"accept", accept)]
    if method == "POST":
        headers.append((b"origin", b"https://evil.example"))
    status, sent, _ = await asgi_request(_raw_app(), path, headers, method)
    return status, dict(sent)[b"content-type"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(accept=st.binary(max_size=200))
def test_any_accept_header_gets_a_refusal_never_a_500(accept: bytes) -> None:
    assert isinstance(wants_html(accept), bool)
    # A stage (CSRF), a guard (inside the app), the rate limiter (429 once
    # its one request a minute is spent: the clock never moves).
    for method, path, statuses in (
        ("POST", "/as/x", {403}),
        ("GET", "/me", {401}),
        ("GET", "/limited", {200, 429}),
    ):
        got, ctype = asyncio.run(_asgi(method, path, accept))
        assert got in statuses
        assert ctype in (b"application/json", b"text/html; charset=utf-8")


async def test_a_refusal_response_keeps_headers_added_to_it_in_either_form() -> None:
    async def endpoint(request: Request) -> Response:
        response = RefusalResponse(Refusal(503, "service_unavailable", "down", retry_after=7))
        response.set_cookie("seen", "1")
        return response

    app = Starlette(routes=[Route("/", endpoint)])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
        for accept, ctype in ((BROWSER, "text/html; charset=utf-8"), ("*/*", "application/json")):
            r = await c.get("/", headers={"accept": accept})
            assert r.status_code == 503 and r.headers["content-type"] == ctype
            assert r.headers["set-cookie"].startswith("seen=1")
            assert r.headers["retry-after"] == "7" and r.headers["cache-control"] == "no-store"
            assert int(r.headers["content-length"]) == len(r.content)
