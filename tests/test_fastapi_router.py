"""The JSON auth routes (``axess.fastapi.auth_router``), driven end to end by
JSON clients: CSRF bootstrap, two-step login, TOTP, recovery codes, sessions,
lockout, rate limits, bad input, OpenAPI, and the main flow on every backend."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authn_app import fast_hasher
from fastapi import Depends, FastAPI, Request
from helpers import CSRF_COOKIE, SESSION_COOKIE

from axess import (
    Axess,
    Keyring,
    LoginFields,
    MockClock,
    Session,
    StoreError,
    get_session,
    require_authn,
)
from axess.audit import AuditPipeline, AuthEvent, CallableSink
from axess.authn.lockout import Lever, LockoutPolicy
from axess.authn.recovery import RecoveryCode
from axess.authn.totp import totp
from axess.errors import ConfigurationError
from axess.fastapi import MAX_BODY_BYTES, auth_router
from axess.ratelimit import RateLimit, auth_rules
from axess.stores import CompositeStore, MemoryStore
from axess.stores.base import SessionRecord

PASSWORD = "correct horse battery"


@dataclass
class Api:
    """A FastAPI app with the auth router, and what the tests look at."""

    auth: Axess
    app: FastAPI
    clock: MockClock
    events: list[AuthEvent] = field(default_factory=list)

    def client(self) -> Client:
        return Client(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=self.app), base_url="https://testserver"
            )
        )

    async def add_user(self, identifier: str, password: str = PASSWORD) -> str:
        assert self.auth.users is not None
        return (await self.auth.users.create_user(identifier, password=password)).id


class Client:
    """A pure JSON client: it keeps cookies like any HTTP client, but takes its
    CSRF token only from response bodies (GET /auth/csrf, logins, logouts)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.token: str | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    def _remember(self, response: httpx.Response) -> httpx.Response:
        if response.headers.get("content-type", "").startswith("application/json"):
            body = response.json()
            if isinstance(body, dict) and body.get("csrf_token"):
                self.token = body["csrf_token"]
        return response

    async def get(self, path: str) -> httpx.Response:
        return self._remember(await self.http.get(path))

    async def send(
        self, method: str, path: str, body: Any = None, **headers: str
    ) -> httpx.Response:
        if self.token is not None:
            headers.setdefault("x-csrf-token", self.token)
        return self._remember(await self.http.request(method, path, json=body, headers=headers))

    async def post(self, path: str, body: Any = None, **headers: str) -> httpx.Response:
        return await self.send("POST", path, body, **headers)

    async def bootstrap(self) -> None:
        r = await self.get("/auth/csrf")
        assert r.status_code == 200 and self.token

    async def login(self, identifier: str, password: str = PASSWORD) -> httpx.Response:
        return await self.post("/auth/login", {"username": identifier, "password": password})

    async def signed_in(self, identifier: str, password: str = PASSWORD) -> dict[str, Any]:
        await self.bootstrap()
        r = await self.login(identifier, password)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def state(self) -> str:
        r = await self.get("/auth/me")
        assert r.status_code == 200
        return str(r.json()["auth_state"])


def make_api(
    store: Any = None,
    *,
    rate_limits: Sequence[RateLimit] = (),
    lockout: LockoutPolicy | None = None,
    audit: bool = False,
    **router: Any,
) -> Api:
    clock = MockClock()
    events: list[AuthEvent] = []
    pipeline = None
    if audit:
        pipeline = AuditPipeline(sinks=[CallableSink(events.extend, in_thread=False)])
    auth = Axess(
        store=store if store is not None else MemoryStore(),
        keys=Keyring.generate(),
        clock=clock,
        password_hasher=fast_hasher(),
        rate_limits=rate_limits,
        lockout=lockout,
        audit=pipeline,
        debug=True,
        cleanup_interval=None,
    )
    app = FastAPI()
    auth.install(app)
    app.include_router(auth_router(auth, **router))

    @app.get("/private")
    async def private(session: Session = Depends(require_authn())) -> dict[str, Any]:
        return {"user": session.user_id}

    return Api(auth, app, clock, events)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    built = make_api()
    async with built.auth.lifespan():
        yield built


def secret_of(enrolment: dict[str, Any]) -> bytes:
    b32 = enrolment["secret"]
    return base64.b32decode(b32 + "=" * (-len(b32) % 8))


async def enable_totp(api: Api, c: Client) -> tuple[bytes, list[str]]:
    """Enrol and confirm TOTP for the signed-in client; the secret and codes."""
    r = await c.post("/auth/totp/enrol", {"password": PASSWORD})
    assert r.status_code == 200, r.text
    secret = secret_of(r.json())
    r = await c.post("/auth/totp/confirm", {"code": totp(secret, api.clock.time())})
    assert r.status_code == 200, r.text
    api.clock.advance(30)  # the confirming code's step is used up
    return secret, r.json()["recovery_codes"]


# -- CSRF bootstrap and the password login -------------------------------------------
async def test_csrf_bootstrap_wrong_password_then_right(api: Api) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        r = await c.get("/auth/csrf")
        assert r.status_code == 200
        assert r.json()["csrf_token"] == c.http.cookies[CSRF_COOKIE]
        assert r.headers["cache-control"] == "no-store"
        r = await c.login("alice@example.com", "wrong password")
        assert r.status_code == 401
        assert r.json() == {
            "error": "invalid_credentials",
            "detail": "invalid identifier or credentials",
        }
        r = await c.login("alice@example.com")  # the same token: not refused by CSRF
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["authenticated"] is True and body["factors"] == ["password"]
        assert body["tenant_id"] is None
        # The session id rotated and the token with it; the body carries the new one.
        assert body["csrf_token"] == c.http.cookies[CSRF_COOKIE]
        r = await c.get("/auth/me")
        assert r.json()["auth_state"] == "authenticated"
        assert r.json()["user_id"] == body["user_id"]
        assert r.json()["totp_enabled"] is False
        assert (await c.get("/private")).json() == {"user": body["user_id"]}
        r = await c.post("/auth/logout")
        assert r.status_code == 200 and r.json()["logged_out"] is True
        assert await c.state() == "guest"
        assert (await c.get("/private")).status_code == 401


async def test_a_tenant_login(api: Api) -> None:
    assert api.auth.users is not None
    await api.auth.users.create_tenant("acme")
    await api.auth.users.create_user("alice@example.com", tenant="acme", password=PASSWORD)
    async with api.client() as c:
        await c.bootstrap()
        r = await c.login("alice@example.com")  # not in the default tenant
        assert r.status_code == 401
        body = {"username": "alice@example.com", "password": PASSWORD, "tenant": "acme"}
        r = await c.post("/auth/login", body)
        assert r.status_code == 200 and r.json()["tenant_id"] == "acme"
        assert (await c.get("/auth/me")).json()["tenant_id"] == "acme"


async def test_guest_me_shows_nothing(api: Api) -> None:
    async with api.client() as c:
        r = await c.get("/auth/me")
        assert r.json() == {
            "auth_state": "guest",
            "user_id": None,
            "tenant_id": None,
            "factors": [],
            "authenticated_at": None,
            "factor_required": None,
            "totp_enabled": None,
            "recovery_codes_remaining": None,
        }


async def test_the_token_of_the_guest_session_is_refused_after_login(api: Api) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.bootstrap()
        guest_token = c.token
        await c.login("alice@example.com")
        r = await c.post("/auth/logout", **{"x-csrf-token": guest_token or ""})
        assert r.status_code == 403 and r.json()["error"] == "csrf_failed"
        assert await c.state() == "authenticated"


async def test_cross_site_post_is_refused(api: Api) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.signed_in("alice@example.com")
        # A form on another site: the browser says where it comes from.
        r = await c.post("/auth/logout/everywhere", origin="https://evil.example")
        assert r.status_code == 403 and r.json()["error"] == "csrf_failed"
        r = await c.post("/auth/logout", **{"sec-fetch-site": "cross-site"})
        assert r.status_code == 403
        # Our own page without the token.
        r = await c.http.post("/auth/logout")
        assert r.status_code == 403 and r.json()["error"] == "csrf_failed"
        r = await c.http.delete("/auth/sessions/000000000000")
        assert r.status_code == 403
        assert await c.state() == "authenticated"


# -- the two-step login ------------------------------------------------------------
async def test_login_then_totp_then_me(api: Api) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.signed_in("alice@example.com")
        secret, _ = await enable_totp(api, c)
        await c.post("/auth/logout")
        assert await c.state() == "guest"

        r = await c.login("alice@example.com")
        assert r.status_code == 200
        assert r.json() == {"factor_required": "totp", "csrf_token": c.token}
        r = await c.get("/auth/me")
        # Half-way: the next factor, and nothing about the user.
        assert r.json()["auth_state"] == "authenticating"
        assert r.json()["factor_required"] == "totp"
        assert r.json()["user_id"] is None
        assert (await c.get("/private")).status_code == 401

        r = await c.post("/auth/login/factor", {"code": "000000"})
        if totp(secret, api.clock.time()) == "000000":  # pragma: no cover - 1 in 10^6
            pytest.skip("the current code happens to be 000000")
        assert r.status_code == 401 and r.json()["error"] == "invalid_credentials"
        r = await c.post("/auth/login/factor", {"code": totp(secret, api.clock.time())})
        assert r.status_code == 200, r.text
        assert r.json()["factors"] == ["password", "totp"]
        r = await c.get("/auth/me")
        assert r.json()["auth_state"] == "authenticated"
        assert r.json()["factors"] == ["password", "totp"]
        assert r.json()["totp_enabled"] is True
        assert r.json()["authenticated_at"] == api.clock.time()


async def test_second_factor_without_a_login_in_progress(api: Api) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.bootstrap()
        r = await c.post("/auth/login/factor", {"code": "123456"})
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
        await c.login("alice@example.com")  # no TOTP: complete at once
        r = await c.post("/auth/login/factor", {"code": "123456"})
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated"


async def test_session_management_stays_in_the_tenant() -> None:
    # An app whose user ids are per tenant (it verifies credentials itself
    # and calls authenticate(uid, tenant)) has user 42 in two tenants: each
    # sees, ends and logs out only its own sessions.
    api = make_api()

    @api.app.post("/sso/{tenant}/{uid}")
    async def sso(request: Request, tenant: str, uid: str) -> dict[str, bool]:
        get_session(request).authenticate(uid, tenant)
        return {"ok": True}

    async with api.auth.lifespan(), api.client() as acme, api.client() as globex:
        for c, tenant in ((acme, "acme"), (globex, "globex")):
            await c.bootstrap()
            assert (await c.post(f"/sso/{tenant}/42")).status_code == 200
            c.token = c.http.cookies[CSRF_COOKIE]
        mine = (await acme.get("/auth/sessions")).json()["sessions"]
        assert [s["current"] for s in mine] == [True]
        theirs = (await globex.get("/auth/sessions")).json()["sessions"]
        r = await acme.send("DELETE", f"/auth/sessions/{theirs[0]['handle']}")
        assert r.status_code == 404
        r = await acme.post("/auth/logout/everywhere")
        assert r.json()["sessions_ended"] == 1  # this one only
        assert await globex.state() == "authenticated"


# -- TOTP and recovery codes -------------------------------------------------------
async def test_enrolment_codes_spend_the_login_budget(api: Api) -> None:
    # A stolen session holding a pending enrolment must not try every code of
    # its secret: each wrong code is a guess of the user's budget, a burst
    # included (from this trusted browser: its own lever's 5, then the
    # account's 5), and once it is spent even the right code waits.
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.signed_in("alice@example.com")
        r = await c.post("/auth/totp/enrol", {"password": PASSWORD})
        secret = secret_of(r.json())
        right = totp(secret, api.clock.time())
        wrong = [f"{(int(right) + 1 + i) % 1_000_000:06d}" for i in range(40)]
        results = await asyncio.gather(*(c.post("/auth/totp/confirm", {"code": w}) for w in wrong))
        codes = Counter(r.status_code for r in results)
        assert codes == {400: 10, 429: 30}
        r = await c.post("/auth/totp/confirm", {"code": right})
        assert r.status_code == 429
        assert (await c.get("/auth/me")).json()["totp_enabled"] is False


async def test_totp_enrolment(api: Api) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.signed_in("alice@example.com")
        r = await c.post("/auth/totp/confirm", {"code": "123456"})
        assert r.status_code == 409 and r.json()["error"] == "conflict"
        r = await c.post("/auth/totp/enrol", {})
        assert r.status_code == 422
        r = await c.post("/auth/totp/enrol", {"password": "not it"})
        assert r.status_code == 401 and r.json()["error"] == "invalid_credentials"
        r = await c.post("/auth/totp/enrol", {"password": PASSWORD})
        assert r.status_code == 200
        enrolment = r.json()
        assert enrolment["expires_in"] == 600
        uri = urlsplit(enrolment["otpauth_uri"])
        assert uri.scheme == "otpauth"
        assert parse_qs(uri.query)["secret"] == [enrolment["secret"]]
        secret = secret_of(enrolment)
        assert "pending" not in r.text  # the sealed token stays in the session

        wrong = "000000" if totp(secret, api.clock.time()) != "000000" else "111111"
        r = await c.post("/auth/totp/confirm", {"code": wrong})
        assert r.status_code == 400 and r.json()["error"] == "invalid_code"
        r = await c.get("/auth/me")
        assert r.json()["totp_enabled"] is False  # nothing is active before a code
        code = totp(secret, api.clock.time())
        r = await c.post("/auth/totp/confirm", {"code": code})
        assert r.status_code == 200
        codes = r.json()["recovery_codes"]
        assert r.json()["totp_enabled"] is True
        assert len(codes) == 10 and all(re.fullmatch(r"[A-Z2-9]{5}-[A-Z2-9]{5}", x) for x in codes)
        me = (await c.get("/auth/me")).json()
        assert me["totp_enabled"] is True and me["recovery_codes_remaining"] == 10
        r = await c.post("/auth/totp/confirm", {"code": code})
        assert r.status_code == 409  # the enrolment is over
        r = await c.post("/auth/totp/enrol", {"password": PASSWORD})
        assert r.status_code == 409  # disable first

        await c.post("/auth/logout")
        await c.login("alice@example.com")
        # The confirming code cannot be replayed at login.
        r = await c.post("/auth/login/factor", {"code": code})
        assert r.status_code == 401
        api.clock.advance(30)
        r = await c.post("/auth/login/factor", {"code": totp(secret, api.clock.time())})
        assert r.status_code == 200


async def test_an_enrolment_begun_before_totp_went_on_elsewhere_cannot_replace_it(
    api: Api,
) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as stale, api.client() as owner:
        await stale.signed_in("alice@example.com")
        r = await stale.post("/auth/totp/enrol", {"password": PASSWORD})
        stale_secret = secret_of(r.json())
        await owner.signed_in("alice@example.com")
        owner_secret, _ = await enable_totp(api, owner)
        r = await stale.post("/auth/totp/confirm", {"code": totp(stale_secret, api.clock.time())})
        assert r.status_code == 409 and r.json()["error"] == "conflict"
        r = await stale.post("/auth/totp/confirm", {"code": totp(stale_secret, api.clock.time())})
        assert "no TOTP enrolment" in r.json()["detail"]  # the stale one is gone
    async with api.client() as c:
        await c.login("alice@example.com")
        r = await c.post("/auth/login/factor", {"code": totp(owner_secret, api.clock.time())})
        assert r.status_code == 200  # the owner's authenticator still signs in


async def test_an_expired_enrolment_starts_again(api: Api) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.signed_in("alice@example.com")
        r = await c.post("/auth/totp/enrol", {"password": PASSWORD})
        secret = secret_of(r.json())
        api.clock.advance(601)
        r = await c.post("/auth/totp/confirm", {"code": totp(secret, api.clock.time())})
        assert r.status_code == 409 and "expired" in r.json()["detail"]
        r = await c.post("/auth/totp/confirm", {"code": totp(secret, api.clock.time())})
        assert r.status_code == 409 and "no TOTP enrolment" in r.json()["detail"]
        assert (await c.get("/auth/me")).json()["totp_enabled"] is False


async def test_recovery_code_works_once(api: Api) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.signed_in("alice@example.com")
        _, codes = await enable_totp(api, c)
        await c.post("/auth/logout")

        await c.login("alice@example.com")
        # Case, spaces and dashes do not matter.
        typed = codes[0].lower().replace("-", " ")
        r = await c.post("/auth/login/factor", {"code": typed, "kind": "recovery_code"})
        assert r.status_code == 200, r.text
        assert r.json()["factors"] == ["password", "recovery_code"]
        assert (await c.get("/auth/me")).json()["recovery_codes_remaining"] == 9
        await c.post("/auth/logout")

        await c.login("alice@example.com")
        r = await c.post("/auth/login/factor", {"code": codes[0], "kind": "recovery_code"})
        assert r.status_code == 401 and r.json()["error"] == "invalid_credentials"
        assert await c.state() == "authenticating"
        # A recovery code sent as a TOTP code is no TOTP code.
        r = await c.post("/auth/login/factor", {"code": codes[1]})
        assert r.status_code == 401
        r = await c.post("/auth/login/factor", {"code": codes[1], "kind": "recovery_code"})
        assert r.status_code == 200


async def test_disable_totp_needs_a_code_not_the_password(api: Api) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.signed_in("alice@example.com")
        secret, codes = await enable_totp(api, c)
        r = await c.post("/auth/totp/disable", {"password": PASSWORD})
        assert r.status_code == 422  # the password is not a proof here
        r = await c.post("/auth/totp/disable", {"code": "12345"})
        assert r.status_code == 401 and r.json()["error"] == "invalid_credentials"
        assert (await c.get("/auth/me")).json()["totp_enabled"] is True
        r = await c.post("/auth/totp/disable", {"code": totp(secret, api.clock.time())})
        assert r.status_code == 200 and r.json() == {"totp_enabled": False}
        me = (await c.get("/auth/me")).json()
        assert me["totp_enabled"] is False
        assert me["recovery_codes_remaining"] == 0  # the backup codes went with it
        r = await c.post("/auth/totp/disable", {"code": codes[0], "kind": "recovery_code"})
        assert r.status_code == 409
        await c.post("/auth/logout")
        r = await c.login("alice@example.com")
        assert r.json()["authenticated"] is True  # password only again


async def test_disable_totp_with_a_recovery_code(api: Api) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.signed_in("alice@example.com")
        _, codes = await enable_totp(api, c)
        r = await c.post("/auth/totp/disable", {"code": codes[3], "kind": "recovery_code"})
        assert r.status_code == 200
        assert (await c.get("/auth/me")).json()["totp_enabled"] is False


async def test_regenerate_recovery_codes(api: Api) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.signed_in("alice@example.com")
        r = await c.post("/auth/recovery-codes/regenerate", {"code": "123456"})
        assert r.status_code == 409  # nothing to back up without TOTP
        secret, old = await enable_totp(api, c)
        r = await c.post("/auth/recovery-codes/regenerate", {"code": "nope"})
        assert r.status_code == 401
        r = await c.post(
            "/auth/recovery-codes/regenerate", {"code": totp(secret, api.clock.time())}
        )
        assert r.status_code == 200
        new = r.json()["recovery_codes"]
        assert len(new) == 10 and not set(new) & set(old)
        # Using a recovery code as the proof consumes it, then all are replaced.
        r = await c.post(
            "/auth/recovery-codes/regenerate", {"code": new[0], "kind": "recovery_code"}
        )
        assert r.status_code == 200
        newest = r.json()["recovery_codes"]
        await c.post("/auth/logout")
        for code, status in ((old[1], 401), (new[1], 401), (newest[1], 200)):
            await c.login("alice@example.com")
            r = await c.post("/auth/login/factor", {"code": code, "kind": "recovery_code"})
            assert r.status_code == status, code


# -- sessions ---------------------------------------------------------------------
async def test_list_and_revoke_another_session(api: Api) -> None:
    uid = await api.add_user("alice@example.com")
    async with api.client() as laptop, api.client() as phone:
        await laptop.signed_in("alice@example.com")
        api.clock.advance(5)
        phone.http.headers["user-agent"] = "Phone/1.0"
        await phone.signed_in("alice@example.com")
        assert await phone.state() == "authenticated"

        r = await laptop.get("/auth/sessions")
        assert r.status_code == 200
        sessions = r.json()["sessions"]
        assert len(sessions) == 2
        mine, other = sessions  # oldest first
        assert mine["current"] is True and other["current"] is False
        assert other["device"] == "Phone/1.0"
        assert other["created_at"] == mine["created_at"] + 5
        assert other["ip_prefix"] == mine["ip_prefix"] is not None
        for entry in sessions:
            assert re.fullmatch(r"[0-9a-f]{12}", entry["handle"])
        # Neither the storage keys nor the session cookies appear.
        for info in await api.auth.list_sessions(uid):
            assert info.storage_key not in r.text
        for client in (laptop, phone):
            assert client.http.cookies[SESSION_COOKIE] not in r.text

        r = await laptop.send("DELETE", f"/auth/sessions/{other['handle']}")
        assert r.status_code == 200
        assert r.json()["revoked"] == other["handle"] and r.json()["current"] is False
        assert await phone.state() == "guest"
        assert (await phone.get("/auth/sessions")).status_code == 401
        assert await laptop.state() == "authenticated"
        r = await laptop.send("DELETE", f"/auth/sessions/{other['handle']}")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        assert len((await laptop.get("/auth/sessions")).json()["sessions"]) == 1


async def test_revoke_the_current_session_logs_out(api: Api) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.signed_in("alice@example.com")
        (entry,) = (await c.get("/auth/sessions")).json()["sessions"]
        r = await c.send("DELETE", f"/auth/sessions/{entry['handle']}")
        assert r.status_code == 200 and r.json()["current"] is True
        assert await c.state() == "guest"
        # The body carried the guest session's token: the client goes on.
        await api.add_user("bob@example.com")
        assert (await c.login("bob@example.com")).status_code == 200


async def test_another_users_session_cannot_be_revoked(api: Api) -> None:
    await api.add_user("alice@example.com")
    bob_id = await api.add_user("bob@example.com")
    async with api.client() as alice, api.client() as bob:
        await alice.signed_in("alice@example.com")
        await bob.signed_in("bob@example.com")
        (bobs,) = await api.auth.list_sessions(bob_id)
        r = await alice.send("DELETE", f"/auth/sessions/{bobs.key_prefix}")
        assert r.status_code == 404
        assert await bob.state() == "authenticated"
        for bad in ("XYZ", bobs.storage_key, "0" * 11, "G" * 12):
            r = await alice.send("DELETE", f"/auth/sessions/{bad}")
            assert r.status_code == 422, bad
        assert await bob.state() == "authenticated"


async def test_logout_everywhere(api: Api) -> None:
    await api.add_user("alice@example.com")
    await api.add_user("bob@example.com")
    async with api.client() as a, api.client() as b, api.client() as bob:
        await a.signed_in("alice@example.com")
        await b.signed_in("alice@example.com")
        await bob.signed_in("bob@example.com")
        r = await a.post("/auth/logout/everywhere")
        assert r.status_code == 200 and r.json()["sessions_ended"] == 2
        assert await a.state() == "guest" and await b.state() == "guest"
        assert await bob.state() == "authenticated"
        r = await a.post("/auth/logout/everywhere")
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
        assert (await a.login("alice@example.com")).status_code == 200  # the new token works


# -- lockout, step-up budget, rate limits ----------------------------------------------
async def test_lockout_answers_429_with_retry_after(api: Api) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.bootstrap()
        statuses = [(await c.login("alice@example.com", "wrong")).status_code for _ in range(6)]
        assert statuses == [401] * 5 + [429]
        r = await c.login("alice@example.com")  # the right password is refused too
        assert r.status_code == 429
        body = r.json()
        assert body["error"] == "locked" and body["retry_after"] > 0
        assert r.headers["retry-after"] == str(body["retry_after"])
        api.clock.advance(body["retry_after"])
        assert (await c.login("alice@example.com")).status_code == 200


async def test_step_up_guesses_count_and_successes_do_not() -> None:
    api = make_api(lockout=LockoutPolicy(user=Lever(threshold=3, window=900, lock_for=900)))
    async with api.auth.lifespan():
        await api.add_user("alice@example.com")
        async with api.client() as c:
            await c.signed_in("alice@example.com")
            # Correct proofs hand their unit back: any number of them is fine.
            for _ in range(5):
                r = await c.post("/auth/totp/enrol", {"password": PASSWORD})
                assert r.status_code == 200
            # Wrong ones count: from this trusted browser on its own lever,
            # then on the account's (3 each).
            statuses = [
                (await c.post("/auth/totp/enrol", {"password": "guess"})).status_code
                for _ in range(7)
            ]
            assert statuses == [401] * 6 + [429]
            r = await c.post("/auth/totp/enrol", {"password": PASSWORD})
            assert r.status_code == 429 and r.json()["retry_after"] > 0
            assert r.headers["retry-after"] == str(r.json()["retry_after"])


async def test_rate_limit_answers_429() -> None:
    limit = RateLimit("3/minute", key="ip", paths=["/auth/login"], methods=["POST"])
    api = make_api(rate_limits=[limit])
    async with api.auth.lifespan():
        await api.add_user("alice@example.com")
        async with api.client() as c:
            await c.bootstrap()
            statuses = [(await c.login("alice@example.com", "wrong")).status_code for _ in range(4)]
            assert statuses == [401, 401, 401, 429]
            r = await c.login("alice@example.com")
            assert r.status_code == 429
            assert r.json()["error"] == "rate_limited"
            assert r.json()["retry_after"] == int(r.headers["retry-after"]) > 0
            api.clock.advance(60)
            assert (await c.login("alice@example.com")).status_code == 200


async def test_the_login_reads_the_identifier_the_limits_count() -> None:
    email = LoginFields("email")
    api = make_api(rate_limits=auth_rules(login_fields=email))
    async with api.auth.lifespan():
        await api.add_user("alice@example.com")
        async with api.client() as c:
            await c.bootstrap()
            r = await c.post("/auth/login", {"email": "alice@example.com", "password": PASSWORD})
            assert r.status_code == 200
            r = await c.post("/auth/login", {"username": "alice@example.com", "password": PASSWORD})
            assert r.status_code == 422  # not a field of this login
            body = '{"email": "decoy@example.com", "email": "alice@example.com", "password": "x"}'
            r = await c.http.post(
                "/auth/login",
                content=body,
                headers={"content-type": "application/json", "x-csrf-token": c.token or ""},
            )
            assert r.status_code == 400 and r.json()["error"] == "ambiguous_identifier"
    schema = api.app.openapi()["components"]["schemas"]["LoginRequest"]
    assert schema["required"] == ["password", "email"]
    with pytest.raises(ConfigurationError, match="differs"):
        auth_router(api.auth, login_fields=["username"])
    assert auth_router(api.auth, login_fields=email).routes


async def test_both_default_fields_one_of_them(api: Api) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.bootstrap()
        r = await c.post("/auth/login", {"email": "alice@example.com", "password": PASSWORD})
        assert r.status_code == 200
        await c.post("/auth/logout")
        r = await c.post("/auth/login", {"password": PASSWORD})
        assert r.status_code == 422
        r = await c.post(
            "/auth/login",
            {"username": "alice@example.com", "email": "bob@example.com", "password": PASSWORD},
        )
        assert r.status_code == 400 and r.json()["error"] == "ambiguous_identifier"


def test_a_store_without_logins_is_refused(valkey_store: Any) -> None:
    auth = Axess(store=valkey_store, keys=Keyring.generate(), debug=True, cleanup_interval=None)
    with pytest.raises(ConfigurationError, match="identity substore"):
        auth_router(auth)


# -- audit, outages ------------------------------------------------------------------
async def test_routes_are_audited() -> None:
    api = make_api(audit=True)
    assert api.auth.audit is not None
    async with api.auth.lifespan():
        await api.add_user("alice@example.com")
        async with api.client() as c:
            await c.signed_in("alice@example.com")
            secret, _ = await enable_totp(api, c)
            await c.post("/auth/totp/disable", {"code": totp(secret, api.clock.time())})
            await c.post("/auth/logout")
        await api.auth.audit.flush()
    types = [e.type for e in api.events]
    for expected in (
        "login_attempt",
        "factor_verified",
        "authenticated",
        "totp_enrolled",
        "recovery_codes_regenerated",
        "totp_disabled",
        "logout",
    ):
        assert expected in types, expected
    step_ups = [e for e in api.events if e.type == "factor_verified" and e.reason == "step_up"]
    assert [e.factor for e in step_ups] == ["password", "totp"]
    enrolled = [e for e in api.events if e.reason == "totp_enrolment"]
    assert [(e.type, e.factor) for e in enrolled] == [("factor_verified", "totp")]


class FlakyStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def list_user_sessions(
        self, user_id: str, now: float, *, tenant_id: str | None = None
    ) -> list[SessionRecord]:
        if self.down:
            raise StoreError("down (test)", backend="memory", substore="sessions")
        return await super().list_user_sessions(user_id, now, tenant_id=tenant_id)

    async def delete_user_sessions(
        self, user_id: str, *, tenant_id: str | None = None, except_key: str | None = None
    ) -> int:
        if self.down:
            raise StoreError("down (test)", backend="memory", substore="sessions")
        return await super().delete_user_sessions(
            user_id, tenant_id=tenant_id, except_key=except_key
        )


async def test_a_store_outage_is_a_503_not_a_500() -> None:
    store = FlakyStore()
    api = make_api(store)
    async with api.auth.lifespan():
        await api.add_user("alice@example.com")
        async with api.client() as c:
            await c.signed_in("alice@example.com")
            store.down = True
            r = await c.get("/auth/sessions")
            assert r.status_code == 503
            assert r.json()["error"] == "service_unavailable"
            assert int(r.headers["retry-after"]) > 0
            r = await c.post("/auth/logout/everywhere")
            assert r.status_code == 503


# -- bad input ----------------------------------------------------------------------
BAD_BODIES: list[Any] = [
    None,
    [],
    "text",
    42,
    {"password": 12},
    {"code": 123456},
    {"code": ["1"]},
    {"code": "1" * 10_000},
    {"code": "123456", "kind": "sms"},
    {"password": {"a": 1}},
    {"username": None, "password": None},
    {"unexpected": True},
]
POST_ROUTES = [
    "/auth/login",
    "/auth/login/factor",
    "/auth/totp/enrol",
    "/auth/totp/confirm",
    "/auth/totp/disable",
    "/auth/recovery-codes/regenerate",
]


@pytest.mark.parametrize("path", POST_ROUTES)
async def test_bad_bodies_are_422_or_400(api: Api, path: str) -> None:
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.signed_in("alice@example.com")
        for body in BAD_BODIES:
            r = await c.post(path, body)
            assert r.status_code in (400, 401, 409, 422), (body, r.status_code, r.text)
            assert r.headers["content-type"] == "application/json"
            assert await c.state() == "authenticated"
        for raw, ctype in (
            (b"{not json", "application/json"),
            (b"\xff\xfe", "application/json"),
            (b"code=1", "application/x-www-form-urlencoded"),
        ):
            r = await c.http.post(
                path, content=raw, headers={"content-type": ctype, "x-csrf-token": c.token or ""}
            )
            assert r.status_code in (400, 401, 422), (raw, r.text)
            assert r.headers["content-type"] == "application/json"
        big = b'{"code": "' + b"1" * MAX_BODY_BYTES + b'"}'
        r = await c.http.post(
            path,
            content=big,
            headers={"content-type": "application/json", "x-csrf-token": c.token or ""},
        )
        assert r.status_code == 400 and r.json()["error"] == "bad_request"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length
            for _ in range(5):
                yield b" " * (MAX_BODY_BYTES // 4)

        r = await c.http.post(
            path,
            content=chunks(),
            headers={"content-type": "application/json", "x-csrf-token": c.token or ""},
        )
        assert r.status_code == 400


async def test_odd_text_in_a_login_is_a_refusal_not_an_error(api: Api) -> None:
    async with api.client() as c:
        await c.bootstrap()
        for identifier, password, status in (
            ("\ud800", PASSWORD, 422),  # Pydantic refuses lone surrogates
            ("alice@example.com", "\ud800", 422),
            ("x" * 4096, PASSWORD, 401),  # too long to be anyone's
            ("x" * 4097, PASSWORD, 422),
            ("alice@example.com", "p" * 4096, 401),
            ("   ", PASSWORD, 401),
            ("alice@example.com", "", 401),
        ):
            # Escaped in JSON, a lone surrogate is a valid body.
            body = json.dumps({"username": identifier, "password": password})
            r = await c.http.post(
                "/auth/login",
                content=body,
                headers={"content-type": "application/json", "x-csrf-token": c.token or ""},
            )
            assert r.status_code == status, (identifier[:10], r.text)
            assert r.headers["content-type"] == "application/json"


async def test_non_finite_json_numbers_are_a_422_not_an_error(api: Api) -> None:
    # Python's JSON parser takes NaN, Infinity and 1e999; the 422 that echoes
    # them must still render.
    await api.add_user("alice@example.com")
    async with api.client() as c:
        await c.signed_in("alice@example.com")
        for path, raw in (
            ("/auth/login", b'{"username": "a@b", "password": NaN}'),
            ("/auth/login", b"1e999"),
            ("/auth/totp/enrol", b'{"password": -Infinity}'),
            ("/auth/totp/confirm", b"NaN"),
            ("/auth/totp/disable", b'{"code": "123456", "kind": NaN}'),
            ("/auth/recovery-codes/regenerate", b"[1e400]"),
        ):
            r = await c.http.post(
                path,
                content=raw,
                headers={"content-type": "application/json", "x-csrf-token": c.token or ""},
            )
            assert r.status_code == 422, (path, raw, r.text)
            assert r.headers["content-type"] == "application/json"


# -- OpenAPI ------------------------------------------------------------------------
ROUTES: dict[tuple[str, str], tuple[str | None, str, set[int]]] = {
    # (method, path): (request schema, 200 schema(s), documented refusals)
    ("get", "/auth/csrf"): (None, "CSRFTokenResponse", set()),
    ("post", "/auth/login"): (
        "LoginRequest",
        "LoginAuthenticated|LoginFactorRequired",
        {400, 401, 403, 429, 503},
    ),
    ("post", "/auth/login/factor"): (
        "CodeProof",
        "LoginAuthenticated|LoginFactorRequired",
        {400, 401, 403, 429, 503},
    ),
    ("post", "/auth/logout"): (None, "LoggedOut", {403, 503}),
    ("post", "/auth/logout/everywhere"): (None, "LoggedOutEverywhere", {401, 403, 503}),
    ("get", "/auth/me"): (None, "Me", {503}),
    ("get", "/auth/sessions"): (None, "SessionList", {401, 503}),
    ("delete", "/auth/sessions/{handle}"): (None, "SessionRevoked", {401, 403, 404, 503}),
    ("post", "/auth/totp/enrol"): (
        "PasswordProof",
        "TOTPEnrolmentResponse",
        {401, 403, 409, 429, 503},
    ),
    ("post", "/auth/totp/confirm"): ("TOTPCodeRequest", "TOTPEnabled", {400, 401, 403, 409, 503}),
    ("post", "/auth/totp/disable"): ("CodeProof", "TOTPDisabled", {401, 403, 409, 429, 503}),
    ("post", "/auth/recovery-codes/regenerate"): (
        "CodeProof",
        "RecoveryCodesResponse",
        {401, 403, 409, 429, 503},
    ),
}


def _refs(schema: dict[str, Any]) -> str:
    options = schema.get("anyOf") or schema.get("oneOf") or [schema]
    return "|".join(sorted(o["$ref"].rsplit("/", 1)[1] for o in options))


def test_openapi_describes_every_route(api: Api) -> None:
    doc = api.app.openapi()
    listed = {
        (method, path)
        for path, item in doc["paths"].items()
        if path.startswith("/auth")
        for method in item
    }
    assert listed == set(ROUTES)
    schemas = doc["components"]["schemas"]
    for (method, path), (request, response, refusals) in ROUTES.items():
        op = doc["paths"][path][method]
        assert op["tags"] == ["auth"] and op["summary"] and op["description"]
        if request is None:
            assert "requestBody" not in op
        else:
            body = op["requestBody"]
            assert body["required"] is True
            assert _refs(body["content"]["application/json"]["schema"]) == request
        ok = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert _refs(ok) == response, path
        for status in refusals:
            answer = op["responses"][str(status)]
            assert _refs(answer["content"]["application/json"]["schema"]) == "Refusal"
            assert answer["description"]
        if request is not None or "{" in path:
            assert "422" in op["responses"]
    refusal = schemas["Refusal"]
    assert set(refusal["properties"]) == {"error", "detail", "retry_after"}
    assert refusal["required"] == ["error", "detail"]
    # Every field of every auth model is described.
    for name in {n for r in ROUTES.values() for n in (r[0] or "", *r[1].split("|")) if n}:
        for prop, spec in schemas[name]["properties"].items():
            assert spec.get("description"), (name, prop)
    login = schemas["LoginRequest"]
    assert set(login["properties"]) == {"username", "email", "password", "tenant"}
    assert login["additionalProperties"] is False
    handle = doc["paths"]["/auth/sessions/{handle}"]["delete"]["parameters"][0]
    assert handle["schema"]["pattern"] == "^[0-9a-f]{12}$"


def test_router_prefix_and_tags() -> None:
    api = make_api(prefix="/api/auth", tags=("accounts",))
    doc = api.app.openapi()
    assert "/api/auth/login" in doc["paths"]
    assert doc["paths"]["/api/auth/me"]["get"]["tags"] == ["accounts"]


# -- the main flow on every backend -------------------------------------------------
@pytest.fixture(params=("sqlite", "postgres", "mysql", "valkey"))
def backend_store(request: pytest.FixtureRequest) -> Any:
    if request.param == "valkey":
        valkey = request.getfixturevalue("valkey_store")
        sqlite = request.getfixturevalue("sqlite_store")
        return CompositeStore(default=sqlite, sessions=valkey, lockout=valkey)
    return request.getfixturevalue(f"{request.param}_store")


async def test_main_flow_on_backend(backend_store: Any) -> None:
    api = make_api(backend_store)
    await api.add_user("alice@example.com")
    async with api.client() as c, api.client() as other:
        await c.bootstrap()
        assert (await c.login("alice@example.com", "wrong")).status_code == 401
        assert (await c.login("alice@example.com")).status_code == 200
        secret, codes = await enable_totp(api, c)
        assert (await c.post("/auth/logout")).status_code == 200

        r = await c.login("alice@example.com")
        assert r.json()["factor_required"] == "totp"
        r = await c.post("/auth/login/factor", {"code": totp(secret, api.clock.time())})
        assert r.status_code == 200 and r.json()["factors"] == ["password", "totp"]
        me = (await c.get("/auth/me")).json()
        assert me["totp_enabled"] is True and me["recovery_codes_remaining"] == 10

        api.clock.advance(1)  # listed oldest first
        await other.signed_in("alice@example.com")
        r = await other.post("/auth/login/factor", {"code": codes[0], "kind": "recovery_code"})
        assert r.status_code == 200
        sessions = (await c.get("/auth/sessions")).json()["sessions"]
        assert [s["current"] for s in sessions] == [True, False]
        r = await c.send("DELETE", f"/auth/sessions/{sessions[1]['handle']}")
        assert r.status_code == 200
        assert await other.state() == "guest"

        await other.signed_in("alice@example.com")
        r = await other.post("/auth/login/factor", {"code": codes[0], "kind": "recovery_code"})
        assert r.status_code == 401  # used once already
        r = await other.post("/auth/login/factor", {"code": codes[1], "kind": "recovery_code"})
        assert r.status_code == 200
        r = await c.post("/auth/logout/everywhere")
        assert r.json()["sessions_ended"] == 2
        assert await c.state() == "guest" and await other.state() == "guest"


async def test_confirming_totp_twice_at_once_issues_one_set_of_codes(backend_store: Any) -> None:
    """The confirm form sent twice (a double click), or two tabs confirming
    enrolments of their own at the same moment: one request turns TOTP on
    and gets the recovery codes, every other one gets 409, and what is
    stored is the winner's secret and codes."""
    api = make_api(backend_store)
    uid = await api.add_user("alice@example.com")
    async with api.client() as c, api.client() as other:
        await c.signed_in("alice@example.com")
        r = await c.post("/auth/totp/enrol", {"password": PASSWORD})
        secret = secret_of(r.json())
        code = totp(secret, api.clock.time())
        answers = await asyncio.gather(
            *(c.post("/auth/totp/confirm", {"code": code}) for _ in range(4))
        )
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200, 409, 409, 409], statuses
        (won,) = [a for a in answers if a.status_code == 200]
        issued = won.json()["recovery_codes"]
        recovery = api.auth.authn.recovery  # type: ignore[union-attr]
        for issued_code in issued[:2]:  # the codes shown are the codes stored
            candidates = recovery.candidates(RecoveryCode(issued_code))
            assert await api.auth.store.consume_recovery_code(uid, candidates)  # type: ignore[attr-defined]

        # Two tabs, each with an enrolment of its own.
        await api.auth.users.disable_totp(uid)  # type: ignore[union-attr]
        await other.signed_in("alice@example.com")
        secrets_ = []
        for client in (c, other):
            r = await client.post("/auth/totp/enrol", {"password": PASSWORD})
            secrets_.append(secret_of(r.json()))
        api.clock.advance(30)
        now = api.clock.time()
        first, second = await asyncio.gather(
            c.post("/auth/totp/confirm", {"code": totp(secrets_[0], now)}),
            other.post("/auth/totp/confirm", {"code": totp(secrets_[1], now)}),
        )
        assert sorted((first.status_code, second.status_code)) == [200, 409]
        winner = secrets_[0] if first.status_code == 200 else secrets_[1]
    async with api.client() as c:
        await c.login("alice@example.com")
        api.clock.advance(30)
        r = await c.post("/auth/login/factor", {"code": totp(winner, api.clock.time())})
        assert r.status_code == 200  # the winner's authenticator signs in
