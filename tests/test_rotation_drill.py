"""The key rotation drill (book: Keys and key rotation), over HTTP.

One store and one clock; each "deploy" is a new ``Axess`` over them with the
next keyring, behind the same front door, so browsers keep their cookies
across deploys. Live browsers are signed in (bound, with CSRF tokens in their
pages), users have TOTP and device cookies. Every purpose is rotated in turn
by promoting a new key and keeping the old one: inside that grace nobody is
logged out, no page gets a 403, no TOTP user fails or is locked. Then the old
keys are removed and what the book says happens, happens.
"""

from __future__ import annotations

import base64
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from helpers import CSRF_COOKIE, DEVICE_COOKIE_NAME, SESSION_COOKIE
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from axess import Axess, Key, Keyring, MockClock, StoreError, get_session
from axess.authn import PasswordHasher, TOTPCode
from axess.authn.http import outcome_response, unavailable_response
from axess.authn.totp import totp
from axess.keys import PURPOSES, Purpose
from axess.observability.metrics import NoopMetrics
from axess.session.csrf import csrf_token
from axess.stores import MemoryStore

UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"
PASSWORD = "correct horse battery"
OLD = {"signing": "s1", "envelope": "e1", "fingerprint": "f1", "csrf": "c1", "device": "d1"}
NEW = {"signing": "s2", "envelope": "e2", "fingerprint": "f2", "csrf": "c2", "device": "d2"}


def key(kid: str) -> Key:
    """Distinct, reproducible bytes per kid."""
    return Key(kid, kid.encode().ljust(32, b"#"))


def keyring(lists: dict[Purpose, list[str]]) -> Keyring:
    keys = {p: [key(k) for k in lists[p]] for p in PURPOSES}
    return Keyring(
        signing=keys["signing"],
        envelope=keys["envelope"],
        fingerprint=keys["fingerprint"],
        csrf=keys["csrf"],
        device=keys["device"],
    )


class Metrics(NoopMetrics):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def previous_key_used(self, use: str) -> None:
        self.counts[f"previous_key_used:{use}"] += 1

    def session_decrypted_with_previous_key(self) -> None:
        self.counts["session_decrypted_with_previous_key"] += 1

    def session_binding_mismatch(self) -> None:
        self.counts["session_binding_mismatch"] += 1

    def session_invalidated(self) -> None:
        self.counts["session_invalidated"] += 1

    def account_locked(self, lever: str) -> None:
        self.counts["account_locked"] += 1

    def factor_failure(self) -> None:
        self.counts["factor_failure"] += 1


class Front:
    """The load balancer: forwards to whatever is deployed now."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@dataclass
class Site:
    store: MemoryStore = field(default_factory=MemoryStore)
    clock: MockClock = field(default_factory=MockClock)
    front: Front = field(default_factory=Front)
    metrics: Metrics = field(default_factory=Metrics)
    hasher: PasswordHasher = field(
        default_factory=lambda: PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    )
    auth: Axess | None = None
    secrets: dict[str, bytes] = field(default_factory=dict)
    browsers: int = 0

    def deploy(self, lists: dict[Purpose, list[str]]) -> Axess:
        """A new release of the app with this keyring (fresh process state)."""
        auth = Axess(
            store=self.store,
            keys=keyring(lists),
            clock=self.clock,
            metrics=self.metrics,
            password_hasher=self.hasher,
            cleanup_interval=None,
        )
        authn = auth.authn
        assert authn is not None

        async def guarded(call: Any) -> Response:
            try:
                return outcome_response(await call)
            except StoreError:
                return unavailable_response()

        async def login(request: Request) -> Response:
            body = await request.json()
            return await guarded(authn.login_password(request, body["id"], body["password"]))

        async def factor(request: Request) -> Response:
            body = await request.json()
            return await guarded(authn.verify_factor(request, TOTPCode(body["totp"])))

        async def me(request: Request) -> Response:
            s = get_session(request)
            return JSONResponse({"kind": s.auth_state.kind, "user": s.user_id})

        async def page(request: Request) -> Response:
            return JSONResponse({"token": csrf_token(request)})

        async def write(request: Request) -> Response:
            s = get_session(request)
            s["n"] = int(s.get("n", 0)) + 1
            return JSONResponse({"n": s["n"], "user": s.user_id})

        app = Starlette(
            routes=[
                Route("/login", login, methods=["POST"]),
                Route("/factor", factor, methods=["POST"]),
                Route("/me", me),
                Route("/page", page),
                Route("/write", write, methods=["POST"]),
            ]
        )
        auth.install(app)
        self.front.app = app
        self.auth = auth
        return auth

    async def add_user(self, name: str, *, with_totp: bool) -> None:
        assert self.auth is not None and self.auth.users is not None
        user = await self.auth.users.create_user(name, password=PASSWORD, user_id=name)
        if with_totp:
            uri = await self.auth.users.enrol_totp(user.id)
            b32 = parse_qs(urlsplit(uri).query)["secret"][0]
            self.secrets[name] = base64.b32decode(b32 + "=" * (-len(b32) % 8))

    def code(self, name: str) -> str:
        return totp(self.secrets[name], self.clock.time())

    async def sealed_kid(self, name: str) -> str:
        sealed = (await self.store.get_factors(name)).totp_secret
        assert sealed is not None
        return sealed[2 : 2 + sealed[1]].decode()

    def browser(self) -> Browser:
        self.browsers += 1
        return Browser(self, f"{UA} (browser {self.browsers})")


class Browser:
    """One browser: a cookie jar, and the CSRF token of the page it shows."""

    def __init__(self, site: Site, user_agent: str) -> None:
        self.site = site
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=site.front),
            base_url="https://testserver",
            headers={"user-agent": user_agent},
        )
        self.page_token: str | None = None

    def cookie(self, name: str) -> str | None:
        return self.client.cookies.get(name)

    async def load_page(self) -> str:
        """Render a page with a form: its token is what the next post sends."""
        r = await self.client.get("/page")
        assert r.status_code == 200
        self.page_token = r.json()["token"]
        return self.page_token

    async def post(
        self, path: str, body: Any = None, *, token: str | None = None
    ) -> httpx.Response:
        sent = token or self.page_token or self.cookie(CSRF_COOKIE)
        headers = {"x-csrf-token": sent} if sent else {}
        return await self.client.post(path, json=body or {}, headers=headers)

    async def me(self) -> dict[str, Any]:
        r = await self.client.get("/me")
        assert r.status_code == 200
        body: dict[str, Any] = r.json()
        return body

    async def sign_in(self, user: str) -> httpx.Response:
        """Open the login page, send the password, then (for TOTP users) the
        current code; returns the last answer."""
        await self.load_page()
        r = await self.post("/login", {"id": user, "password": PASSWORD})
        if r.status_code == 200 and r.json().get("factor_required") == "totp":
            r = await self.send_code(user)
        return r

    async def send_code(self, user: str) -> httpx.Response:
        self.site.clock.advance(31)  # a fresh step: the last code was used
        return await self.post("/factor", {"totp": self.site.code(user)}, token=self.csrf())

    def csrf(self) -> str | None:
        return self.cookie(CSRF_COOKIE)

    async def signed_in_as(self, user: str) -> None:
        r = await self.sign_in(user)
        assert r.status_code == 200 and r.json()["authenticated"], r.text
        await self.load_page()


def promoted(current: dict[Purpose, list[str]], purpose: Purpose) -> dict[Purpose, list[str]]:
    """``purpose``'s new key first, the old one kept after it."""
    return {**current, purpose: [NEW[purpose], OLD[purpose]]}


async def everyone_still_works(site: Site, live: dict[str, Browser]) -> None:
    """Zero logouts, zero 403s: each live browser reads its session and posts
    with the token of the page it shows."""
    for user, browser in live.items():
        assert await browser.me() == {"kind": "authenticated", "user": user}
        r = await browser.post("/write")
        assert r.status_code == 200 and r.json()["user"] == user, r.text


async def test_rotation_drill(caplog: pytest.LogCaptureFixture) -> None:
    site = Site()
    keys: dict[Purpose, list[str]] = {p: [OLD[p]] for p in PURPOSES}
    site.deploy(keys)
    for name, with_totp in (
        ("alice", False),
        ("bob", True),
        ("carol", True),
        ("dave", False),
        ("walt", False),
        ("zoe", False),
    ):
        await site.add_user(name, with_totp=with_totp)

    # Live browsers, signed in before any rotation (bound, with a page token).
    live = {"alice": site.browser(), "bob": site.browser()}
    for user, browser in live.items():
        await browser.signed_in_as(user)
    walt = site.browser()  # comes back during the signing and envelope graces only
    await walt.signed_in_as("walt")
    zoe = site.browser()  # never comes back
    await zoe.signed_in_as("zoe")
    dave_laptop, dave_phone = site.browser(), site.browser()  # device cookies (d1)
    await dave_laptop.signed_in_as("dave")
    await dave_phone.signed_in_as("dave")
    assert dave_laptop.cookie(DEVICE_COOKIE_NAME) and dave_phone.cookie(DEVICE_COOKIE_NAME)
    carol = site.browser()  # TOTP user who does not sign in during the grace
    await carol.signed_in_as("carol")
    assert await site.sealed_kid("bob") == await site.sealed_kid("carol") == "e1"
    m = site.metrics.counts
    m.clear()

    # -- signing: cookies signed by s1 verify and are re-signed with s2 ---------
    keys = promoted(keys, "signing")
    site.deploy(keys)
    before = {u: b.cookie(SESSION_COOKIE) for u, b in live.items()}
    await everyone_still_works(site, live)
    assert all(live[u].cookie(SESSION_COOKIE) != before[u] for u in live)  # re-signed
    assert (await walt.me())["user"] == "walt"

    # -- envelope: payloads and TOTP secrets sealed by e1 open; both move to e2 --
    keys = promoted(keys, "envelope")
    site.deploy(keys)
    await everyone_still_works(site, live)  # each post re-seals its session
    assert (await walt.post("/write")).status_code == 200  # walt's row moves to e2
    assert m["session_decrypted_with_previous_key"] >= 3
    site.clock.advance(31)
    assert (await site.browser().sign_in("bob")).json()["authenticated"]
    assert m["previous_key_used:totp_secret"] == 1
    assert await site.sealed_kid("bob") == "e2"  # re-sealed on use
    assert await site.sealed_kid("carol") == "e1"
    site.clock.advance(31)
    assert (await site.browser().sign_in("bob")).json()["authenticated"]  # the step survived
    assert m["previous_key_used:totp_secret"] == 1  # already under e2

    # -- fingerprint: bindings made under f1 match and are re-bound under f2 ----
    keys = promoted(keys, "fingerprint")
    site.deploy(keys)
    await everyone_still_works(site, live)
    await everyone_still_works(site, live)
    assert m["previous_key_used:fingerprint"] == len(live)  # once each: re-bound

    # -- csrf: page tokens minted by c1 verify; cookies are re-minted with c2 ---
    keys = promoted(keys, "csrf")
    site.deploy(keys)
    page_tokens = {u: b.page_token for u, b in live.items()}
    await everyone_still_works(site, live)
    for user, browser in live.items():
        assert browser.cookie(CSRF_COOKIE) != page_tokens[user]  # re-minted (c2)
    await everyone_still_works(site, live)  # the old page still posts: no 403
    assert m["previous_key_used:csrf"] >= len(live)

    # -- device: device cookies signed by d1 verify; a login re-signs them ------
    keys = promoted(keys, "device")
    site.deploy(keys)
    await everyone_still_works(site, live)
    old_device = dave_laptop.cookie(DEVICE_COOKIE_NAME)
    await dave_laptop.signed_in_as("dave")
    assert dave_laptop.cookie(DEVICE_COOKIE_NAME) != old_device  # re-signed with d2

    # Inside every grace: nobody logged out, locked, refused or mismatched.
    assert m["session_binding_mismatch"] == m["session_invalidated"] == 0
    assert m["account_locked"] == m["factor_failure"] == 0

    # -- remove every old key --------------------------------------------------
    keys = {p: [NEW[p]] for p in PURPOSES}
    site.deploy(keys)
    m.clear()
    # Browsers that came back during the grace carry on; pages that did too.
    for browser in live.values():
        await browser.load_page()
    await everyone_still_works(site, live)
    assert m["session_binding_mismatch"] == 0
    # A page rendered before the csrf promotion and never reloaded: one 403.
    r = await live["alice"].post("/write", token=page_tokens["alice"])
    assert r.status_code == 403
    # zoe never came back: her cookie was signed by s1 only, she is a guest.
    assert (await zoe.me())["user"] is None
    # walt came back during the signing and envelope graces but not later: his
    # binding was made under f1, which can no longer be verified: a mismatch
    # (the default policy revokes the session).
    assert (await walt.me())["user"] is None
    assert m["session_binding_mismatch"] == 1
    # bob signed in during the envelope grace: his secret was re-sealed.
    site.clock.advance(31)
    assert (await site.browser().sign_in("bob")).json()["authenticated"]
    # carol did not: her secret opens with no configured key. 503, never a
    # wrong code, never a lockout, and one ERROR for the whole process.
    with caplog.at_level(logging.ERROR, logger="axess.authn"):
        assert (await carol.sign_in("carol")).status_code == 503
        for _ in range(8):  # more than the user lever's threshold of 5
            r = await carol.send_code("carol")
            assert r.status_code == 503, r.text
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot be opened" in errors[0].getMessage()
    assert m["account_locked"] == m["factor_failure"] == 0
    # dave's laptop logged in during the device grace (re-signed): still trusted
    # when someone else burns dave's user lever. His phone's d1 cookie is now
    # simply absent: the phone is locked out like any stranger.
    stranger = site.browser()
    for _ in range(5):
        r = await stranger.post("/login", {"id": "dave", "password": "wrong"})
        assert r.status_code == 401
    assert (await stranger.post("/login", {"id": "dave", "password": "wrong"})).status_code == 429
    assert (await dave_phone.sign_in("dave")).status_code == 429
    await dave_laptop.signed_in_as("dave")  # (and its success resets the lever)

    # Putting e1 back (second place) lets carol finish the same login, and
    # her secret moves to e2.
    site.deploy({**keys, "envelope": ["e2", "e1"]})
    assert (await carol.send_code("carol")).json()["authenticated"]
    assert await site.sealed_kid("carol") == "e2"
    site.deploy(keys)
    site.clock.advance(31)
    assert (await site.browser().sign_in("carol")).json()["authenticated"]


async def test_a_secret_that_opens_with_no_key_costs_no_guess() -> None:
    """Many attempts on an unopenable TOTP secret: 503 each time, and the
    user lever is untouched (the next login with the key back works at once)."""
    site = Site()
    site.deploy({p: [OLD[p]] for p in PURPOSES})
    await site.add_user("bob", with_totp=True)
    site.deploy({**{p: [OLD[p]] for p in PURPOSES}, "envelope": ["e2"]})
    browser = site.browser()
    assert (await browser.sign_in("bob")).status_code == 503
    for _ in range(20):
        assert (await browser.send_code("bob")).status_code == 503
    assert site.metrics.counts["account_locked"] == site.metrics.counts["factor_failure"] == 0
    site.deploy({**{p: [OLD[p]] for p in PURPOSES}, "envelope": ["e2", "e1"]})
    assert (await browser.send_code("bob")).json()["authenticated"]


async def test_a_replayed_code_is_refused_across_the_reseal() -> None:
    """Re-sealing keeps the accepted step: the code that triggered it cannot
    be used again, in another browser, after the write-back."""
    site = Site()
    site.deploy({p: [OLD[p]] for p in PURPOSES})
    await site.add_user("bob", with_totp=True)
    site.deploy({**{p: [OLD[p]] for p in PURPOSES}, "envelope": ["e2", "e1"]})
    first, second = site.browser(), site.browser()
    assert (await first.post("/login", {"id": "bob", "password": PASSWORD})).status_code == 200
    assert (await second.post("/login", {"id": "bob", "password": PASSWORD})).status_code == 200
    code = site.code("bob")
    r = await first.post("/factor", {"totp": code}, token=first.csrf())
    assert r.json()["authenticated"]
    assert await site.sealed_kid("bob") == "e2"
    r = await second.post("/factor", {"totp": code}, token=second.csrf())
    assert r.status_code == 401


async def test_a_reseal_does_not_undo_a_concurrent_re_enrolment() -> None:
    """The write-back is a compare-and-set on the sealed bytes: a secret
    replaced in between (re-enrolment) is not overwritten with the old one."""
    site = Site()
    auth = site.deploy({p: [OLD[p]] for p in PURPOSES})
    await site.add_user("bob", with_totp=True)
    old_sealed = (await site.store.get_factors("bob")).totp_secret
    assert old_sealed is not None and auth.users is not None
    await auth.users.enrol_totp("bob")  # a new secret
    new_sealed = (await site.store.get_factors("bob")).totp_secret
    assert new_sealed is not None
    assert not await site.store.reseal_totp_secret("bob", old_sealed, b"\x01x")
    assert (await site.store.get_factors("bob")).totp_secret == new_sealed


async def test_csrf_tokens_of_a_guest_must_match_the_cookie_after_a_re_mint() -> None:
    """The rotation exception is for signed-in sessions only: an anonymous
    token is not secret, so a guest's old page token must equal the cookie."""
    site = Site()
    keys: dict[Purpose, list[str]] = {p: [OLD[p]] for p in PURPOSES}
    site.deploy(keys)
    guest = site.browser()
    old = await guest.load_page()
    site.deploy(promoted(keys, "csrf"))
    assert (await guest.post("/write", token=old)).status_code == 200  # c1 still verifies
    assert guest.cookie(CSRF_COOKIE) != old  # the response re-minted it with c2
    assert (await guest.post("/write", token=old)).status_code == 403
    assert (await guest.post("/write", token=guest.cookie(CSRF_COOKIE))).status_code == 200
