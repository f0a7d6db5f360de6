"""The demo (examples/demo.py) over HTTP: every page and flow of the tour,
and its key file (keys survive a restart, nothing else does the job)."""

from __future__ import annotations

import base64
import contextlib
import importlib
import logging
import os
import re
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
import segno

from axess.authn import PasswordHasher
from axess.authn.totp import hotp, provisioning_uri, time_step, totp
from axess.clock import MockClock
from axess.errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent


def _token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found
    return found.group(1)


def _secret(html: str) -> bytes:
    found = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', html)
    assert found
    text = found.group(1)
    return base64.b32decode(text + "=" * (-len(text) % 8))


def _codes(html: str) -> list[str]:
    block = re.search(r'<ul class="codes" id="recovery-codes">(.*?)</ul>', html, re.S)
    assert block
    return re.findall(r"<code>([^<]+)</code>", block.group(1))


def _wrong_code(secret: bytes) -> str:
    step = time_step(time.time())
    valid = {hotp(secret, step + d) for d in range(-2, 3)}
    return next(x for x in ("000000", "111111", "222222", "333333") if x not in valid)


@contextlib.contextmanager
def _demo_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """examples.demo imported afresh on ``tmp_path``'s database and key file
    (a new import is a new app build: a restart)."""
    monkeypatch.setenv("AXESS_DEMO_DB", str(tmp_path / "demo.db"))
    monkeypatch.delenv("AXESS_DEMO_KEYS", raising=False)
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("examples.demo", None)
    demo = importlib.import_module("examples.demo")
    # Argon2 at its real cost would dominate the run time.
    demo.authn.hasher = demo.users.hasher = PasswordHasher(
        time_cost=1, memory_cost=64, parallelism=1
    )
    try:
        yield demo
    finally:
        sys.modules.pop("examples.demo", None)


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    with _demo_module(tmp_path, monkeypatch) as module:
        yield module


@contextlib.asynccontextmanager
async def _running(demo: ModuleType) -> AsyncIterator[None]:
    async with demo.lifespan(demo.app):
        yield


def _client(demo: ModuleType, ip: str = "203.0.113.7", ua: str = "test-agent") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=demo.app, client=(ip, 40000))
    return httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1:8000", headers={"user-agent": ua}
    )


async def _sign_in(c: httpx.AsyncClient, email: str, password: str) -> tuple[httpx.Response, str]:
    page = (await c.get("/")).text
    r = await c.post(
        "/login", data={"csrf_token": _token(page), "email": email, "password": password}
    )
    where = r.headers["location"] if r.status_code == 303 else "/"
    return r, (await c.get(where)).text


async def _post(c: httpx.AsyncClient, path: str, **data: str) -> httpx.Response:
    page = (await c.get("/")).text
    return await c.post(path, data={"csrf_token": _token(page), **data})


async def _enrol(demo: ModuleType, c: httpx.AsyncClient) -> tuple[bytes, list[str]]:
    r = await _post(c, "/totp/enrol", password=demo.DEMO_PASSWORD)
    assert r.status_code == 200
    secret = _secret(r.text)
    code = totp(secret, time.time())
    r = await c.post("/totp/confirm", data={"csrf_token": _token(r.text), "code": code})
    assert r.status_code == 200 and "TOTP is on" in r.text
    return secret, _codes(r.text)


async def _second_step(c: httpx.AsyncClient, code: str) -> httpx.Response:
    page = (await c.get("/")).text
    assert "Second step" in page
    return await c.post("/login/totp", data={"csrf_token": _token(page), "code": code})


def _two_factor_card(page: str) -> str:
    found = re.search(r'<div class="card" id="two-factor">(.*?)</div>', page, re.S)
    assert found
    return found.group(1)


def _next_code(secret: bytes) -> str:
    """A code the server has not seen yet: the next step (±1 is accepted)."""
    return hotp(secret, time_step(time.time()) + 1)


# -- pages ---------------------------------------------------------------------------------
async def test_every_page_is_a_phone_width_page_with_a_strict_policy(demo: ModuleType) -> None:
    async with _running(demo), _client(demo) as c:
        r = await c.get("/")
        assert r.status_code == 200
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in r.text
        assert "script-src" not in r.headers["content-security-policy"]
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"
        assert "DEVELOPMENT ONLY" in r.text and "Sign in" in r.text
        # every form carries the CSRF field
        r, page = await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
        assert page.count("<form") == page.count('name="csrf_token"') > 0


async def test_notices_come_from_a_fixed_list(demo: ModuleType) -> None:
    async with _running(demo), _client(demo) as c:
        r = await c.get("/", params={"msg": "Invalid credentials"})
        assert "The answer is the same for an unknown address" in r.text
        r = await c.get("/", params={"msg": "<script>Call 555-0100 now</script>"})
        assert "555-0100" not in r.text and "<script>" not in r.text


# -- sign-in and out ------------------------------------------------------------------------
async def test_sign_in_and_out(demo: ModuleType) -> None:
    async with _running(demo), _client(demo) as c:
        r, page = await _sign_in(c, demo.DEMO_USER, "nope")
        assert r.status_code == 303 and "Invalid" in r.headers["location"]
        assert "Invalid credentials" in page and "Sign in" in page
        r, page = await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "Signed in as <strong>demo@example.com</strong>" in page
        assert "TOTP is <strong>off</strong>" in page
        r = await c.post("/logout", data={"csrf_token": _token(page)})
        assert r.status_code == 303
        page = (await c.get(r.headers["location"])).text
        assert "Signed out." in page and "Signed in as" not in page
        # Without the CSRF token a state-changing POST is refused.
        r = await c.post("/login", data={"email": "x@example.com", "password": "y"})
        assert r.status_code == 403


async def test_an_empty_password_is_invalid_credentials(demo: ModuleType) -> None:
    async with _running(demo), _client(demo) as c:
        r, _ = await _sign_in(c, demo.DEMO_USER, "")
        assert r.status_code == 303 and "Invalid" in r.headers["location"]


async def test_an_over_long_email_is_refused_whole_not_cut(demo: ModuleType) -> None:
    """Cut to 254 characters, a padded address would be a new rate-limit
    bucket per padding (the limiter counts the field as sent) and still sign
    in as the account: refused as it comes."""
    async with _running(demo), _client(demo) as c:
        padded = demo.DEMO_USER + " " * 238 + "x1"
        r, page = await _sign_in(c, padded, demo.DEMO_PASSWORD)
        assert r.status_code == 303 and "Invalid" in r.headers["location"]
        assert "Signed in as" not in page


async def test_a_second_tab_setting_totp_up_gets_the_same_secret(demo: ModuleType) -> None:
    async with _running(demo), _client(demo) as c:
        await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
        first = _secret((await _post(c, "/totp/enrol", password=demo.DEMO_PASSWORD)).text)
        second = _secret((await _post(c, "/totp/enrol", password=demo.DEMO_PASSWORD)).text)
        assert first == second  # the first tab's QR code stays good
        r = await _post(c, "/totp/confirm", code=totp(first, time.time()))
        assert r.status_code == 200 and "TOTP is on" in r.text
        # The form sent again (back, reload): TOTP is on, said as much.
        r = await _post(c, "/totp/confirm", code=totp(first, time.time()))
        assert r.status_code == 303 and "already" in r.headers["location"]


# -- two-factor -------------------------------------------------------------------------------
async def test_totp_enrolment_shows_a_qr_code_and_is_confirmed_with_a_first_code(
    demo: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _running(demo), _client(demo) as c:
        user = await demo.users.find_user(demo.DEMO_USER)
        _, page = await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
        # confirming without a started enrolment is no error
        r = await c.post("/totp/confirm", data={"csrf_token": _token(page), "code": "1"})
        assert r.status_code == 303 and "again" in r.headers["location"]
        r = await _post(c, "/totp/enrol", password=demo.DEMO_PASSWORD)
        assert r.status_code == 200
        assert re.search(r'<div class="qr" role="img"[^>]*><svg [^>]*viewBox=', r.text)
        assert "otpauth://" not in r.text  # the URI is in the QR code only
        secret = _secret(r.text)
        # the QR code is the provisioning URI of the key shown as text
        uri = provisioning_uri(secret, demo.DEMO_USER, demo.users.issuer)
        expected = segno.make(uri, error="m").svg_inline(scale=4, omitsize=True)
        modules = re.compile(r'class="qrline"[^>]* d="([^"]+)"')
        shown, wanted = modules.search(r.text), modules.search(expected)
        assert shown and wanted and shown.group(1) == wanted.group(1)
        assert (await demo.users.store.get_factors(user.id)).totp_secret is None
        # a wrong code shows the page again with an error, and enrols nothing
        # (a wrong one spends a guess of the account's budget; an empty one not)
        for bad in (_wrong_code(secret), ""):
            r = await c.post("/totp/confirm", data={"csrf_token": _token(r.text), "code": bad})
            assert r.status_code == 400 and "Wrong code" in r.text
            assert _secret(r.text) == secret
        assert (await demo.users.store.get_factors(user.id)).totp_secret is None
        code = totp(secret, time.time())
        r = await c.post("/totp/confirm", data={"csrf_token": _token(r.text), "code": code})
        assert r.status_code == 200 and "TOTP is on" in r.text
        codes = _codes(r.text)
        assert len(codes) == 10 and len(set(codes)) == 10
        assert (await demo.users.store.get_factors(user.id)).totp_secret is not None
        page = (await c.get("/")).text
        assert "TOTP is <strong>on</strong>" in page and "Recovery codes left: 10" in page
        r = await c.post("/logout", data={"csrf_token": _token(page)})
        # the next sign-in asks for a code; the enrolment code is spent
        r, page = await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
        assert "Second step" in page
        r = await _second_step(c, code)
        assert r.status_code == 303 and "Invalid" in r.headers["location"]
        assert "Each code works once" in (await c.get(r.headers["location"])).text
        r = await _second_step(c, _next_code(secret))
        assert r.status_code == 303 and r.headers["location"] == "/"
        page = (await c.get("/")).text
        assert "Signed in as" in page
        # an expired enrolment asks to start again (400, not 500)
        r = await _post(c, "/totp/disable", code=codes[0])  # a recovery code as the proof
        assert "turned%20off" in r.headers["location"]
        r = await _post(c, "/totp/enrol", password=demo.DEMO_PASSWORD)
        later = MockClock(time.time() + 601)  # the admin's clock only
        monkeypatch.setattr(demo.users, "clock", later)
        code = totp(_secret(r.text), later.time())
        r = await c.post("/totp/confirm", data={"csrf_token": _token(r.text), "code": code})
        assert r.status_code == 400 and "expired" in r.text
        r = await _post(c, "/totp/confirm", code=code)
        assert r.status_code == 303 and "again" in r.headers["location"]  # it was dropped


async def test_recovery_codes_work_once_and_regenerating_revokes_the_old_ones(
    demo: ModuleType,
) -> None:
    async with _running(demo), _client(demo) as c:
        await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
        _, codes = await _enrol(demo, c)
        await _post(c, "/logout")
        await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
        r = await _second_step(c, codes[0])
        assert r.headers["location"] == "/"
        page = (await c.get("/")).text
        assert "Recovery codes left: 9" in page
        # a recovery code proves the factor for new codes (and is spent)
        r = await c.post("/recovery-codes", data={"csrf_token": _token(page), "code": codes[1]})
        assert r.status_code == 200 and "only now" in r.text
        fresh = _codes(r.text)
        assert len(fresh) == 10 and not set(fresh) & set(codes)
        await _post(c, "/logout")
        await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
        for spent in (codes[1], codes[2]):  # used as the proof; revoked by the regeneration
            r = await _second_step(c, spent)
            assert "Invalid" in r.headers["location"]
        r = await _second_step(c, fresh[0].lower())
        assert r.headers["location"] == "/"


async def test_turning_totp_off_revokes_the_recovery_codes(demo: ModuleType) -> None:
    async with _running(demo), _client(demo) as c:
        user = await demo.users.find_user(demo.DEMO_USER)
        await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
        secret, _ = await _enrol(demo, c)
        r = await _post(c, "/totp/disable", code=_next_code(secret))
        assert r.status_code == 303 and "turned%20off" in r.headers["location"]
        page = (await c.get(r.headers["location"])).text
        assert "recovery codes no longer work" in page and "TOTP is <strong>off</strong>" in page
        factors = await demo.users.store.get_factors(user.id)
        assert factors.totp_secret is None and factors.recovery_codes == 0
        await _post(c, "/logout")
        _, page = await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
        assert "Signed in as" in page  # no second step any more
        # regenerating codes, or turning off, without TOTP does nothing
        for path in ("/recovery-codes", "/totp/disable"):
            r = await _post(c, path, code=_next_code(secret))
            assert r.status_code == 303 and r.headers["location"] == "/"
        assert (await demo.users.store.get_factors(user.id)).recovery_codes == 0


async def test_setting_totp_up_asks_for_the_password_and_counts_on_the_lockout(
    demo: ModuleType,
) -> None:
    async with _running(demo), _client(demo) as c:
        user = await demo.users.find_user(demo.DEMO_USER)
        _, page = await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
        card = _two_factor_card(page)
        assert 'action="/totp/enrol"' in card and 'name="password"' in card
        assert 'name="code"' not in card and "your password again" in card
        # Empty and impossible passwords are refused without counting. A
        # signed-in browser is a trusted origin: wrong passwords here count
        # on its own lever (threshold 3), then on the account's: the sixth
        # trips the lock.
        for password in ("", "\u00e9" * 600, *["wrong"] * 6):
            r = await _post(c, "/totp/enrol", password=password)
            assert r.status_code == 303 and "Password" in r.headers["location"]
        assert "nothing changed" in (await c.get(r.headers["location"])).text
        r = await _post(c, "/totp/enrol", password=demo.DEMO_PASSWORD)
        assert r.status_code == 429 and "Too many failed attempts" in r.text
        assert (await demo.users.store.get_factors(user.id)).totp_secret is None
        assert "Signed in as" in (await c.get("/")).text  # the session itself stays


async def test_changing_an_active_second_factor_asks_for_a_code_not_the_password(
    demo: ModuleType,
) -> None:
    async with _running(demo), _client(demo) as c:
        user = await demo.users.find_user(demo.DEMO_USER)
        await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
        secret, codes = await _enrol(demo, c)
        card = _two_factor_card((await c.get("/")).text)
        assert 'formaction="/recovery-codes"' in card and 'formaction="/totp/disable"' in card
        assert 'name="code"' in card and 'name="password"' not in card
        assert "most likely to have leaked" in card
        # Replacing the authenticator is turning TOTP off first: enrolling
        # while it is on is refused before any password is read or counted.
        r = await _post(c, "/totp/enrol", password=demo.DEMO_PASSWORD)
        assert r.status_code == 303 and "already" in r.headers["location"]
        assert "turn TOTP off" in (await c.get(r.headers["location"])).text
        # The password is no proof here: the code field is empty (refused, not counted).
        for path in ("/totp/disable", "/recovery-codes"):
            r = await _post(c, path, password=demo.DEMO_PASSWORD)
            assert r.status_code == 303 and "Code" in r.headers["location"], path
        assert "nothing changed" in (await c.get(r.headers["location"])).text
        # Wrong codes count like a sign-in's: from this trusted browser on
        # its own lever (threshold 3), then on the account's: the sixth
        # failure trips the lock, and then not even a right recovery code is
        # checked (nor spent).
        wrong = _wrong_code(secret)
        attempts = [("/totp/disable", wrong), ("/recovery-codes", "ZZZZZ-ZZZZZ")] * 3
        for path, code in attempts:
            r = await _post(c, path, code=code)
            assert r.status_code == 303 and "Code" in r.headers["location"], path
        r = await _post(c, "/totp/disable", code=codes[0])
        assert r.status_code == 429 and "Too many failed attempts" in r.text
        factors = await demo.users.store.get_factors(user.id)
        assert factors.totp_secret is not None and factors.recovery_codes == 10
        assert "Signed in as" in (await c.get("/")).text  # the session itself stays


async def test_a_setup_begun_before_totp_went_on_elsewhere_cannot_replace_it(
    demo: ModuleType,
) -> None:
    async with _running(demo), _client(demo) as a, _client(demo, "198.51.100.9") as b:
        user = await demo.users.find_user(demo.DEMO_USER)
        await _sign_in(a, demo.DEMO_USER, demo.DEMO_PASSWORD)
        await _sign_in(b, demo.DEMO_USER, demo.DEMO_PASSWORD)
        r = await _post(a, "/totp/enrol", password=demo.DEMO_PASSWORD)
        stale = _secret(r.text)
        secret, _ = await _enrol(demo, b)  # the other browser turns TOTP on
        # A's setup would swap B's authenticator on a password alone: refused.
        r = await a.post(
            "/totp/confirm", data={"csrf_token": _token(r.text), "code": totp(stale, time.time())}
        )
        assert r.status_code == 303 and "already" in r.headers["location"]
        r = await _post(a, "/totp/confirm", code=totp(stale, time.time()))
        assert r.status_code == 303 and "already" in r.headers["location"]  # TOTP is on
        sealed = (await demo.users.store.get_factors(user.id)).totp_secret
        assert sealed is not None and demo.users.sealer.open(sealed, user.id) == secret


async def test_signed_out_clients_change_nothing(demo: ModuleType) -> None:
    async with _running(demo), _client(demo) as c:
        for path in ("/totp/enrol", "/totp/confirm", "/totp/disable", "/recovery-codes"):
            r = await _post(c, path, code="123456")
            assert r.status_code == 303 and r.headers["location"] == "/", path
        r = await _post(c, "/logout-everywhere")
        assert r.headers["location"] == "/"


# -- sessions ----------------------------------------------------------------------------------
async def test_sessions_list_times_devices_and_revokes_another_session(
    demo: ModuleType,
) -> None:
    firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
    phone = (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0 Mobile Safari/537.36"
    )
    async with (
        _running(demo),
        _client(demo, "203.0.113.7", firefox) as a,
        _client(demo, "198.51.100.9", phone) as b,
    ):
        await _sign_in(a, demo.DEMO_USER, demo.DEMO_PASSWORD)
        await _sign_in(b, demo.DEMO_USER, demo.DEMO_PASSWORD)
        page = (await a.get("/")).text
        cards = re.findall(r'<div class="card session( current)?">(.*?)</div>', page, re.S)
        assert len(cards) == 2
        current = [body for mark, body in cards if mark]
        other = [body for mark, body in cards if not mark]
        assert len(current) == 1 and "Firefox on Linux" in current[0]
        assert "This session" in current[0] and "Revoke" not in current[0]
        assert "Chrome on Android" in other[0] and "198.51.100.0/24" in other[0]
        assert re.search(
            r"Signed in</dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(just now\)", other[0]
        )
        assert "Last seen</dt><dd>" in other[0]
        key = re.search(r'name="key" value="([^"]+)"', other[0])
        assert key
        # B cannot revoke A's session by naming a key that is not its own...
        mine = re.search(r'name="key" value="([^"]+)"', (await b.get("/")).text)
        assert mine and mine.group(1) != key.group(1)
        r = await _post(a, "/sessions/revoke", key="not-a-session")
        assert r.headers["location"] == "/"
        # ...A revokes B's
        r = await _post(a, "/sessions/revoke", key=key.group(1))
        assert r.headers["location"] == "/?msg=Session%20revoked"
        assert "Signed in as" not in (await b.get("/")).text
        page = (await a.get("/")).text
        assert "Signed in as" in page and page.count('class="card session') == 1


async def test_logout_everywhere_ends_every_session(demo: ModuleType) -> None:
    async with _running(demo), _client(demo) as a, _client(demo, "198.51.100.9") as b:
        await _sign_in(a, demo.DEMO_USER, demo.DEMO_PASSWORD)
        await _sign_in(b, demo.DEMO_USER, demo.DEMO_PASSWORD)
        r = await _post(a, "/logout-everywhere")
        assert "everywhere" in r.headers["location"]
        for c in (a, b):
            assert "Signed in as" not in (await c.get("/")).text


# -- lockout and trusted origins ---------------------------------------------------------------
async def test_the_fourth_wrong_password_shows_the_lockout_page(demo: ModuleType) -> None:
    async with _running(demo), _client(demo) as c:
        for _ in range(demo.USER_LEVER.threshold):
            r, _ = await _sign_in(c, "nobody@example.com", "wrong")
            assert "Invalid" in r.headers["location"]
        r, _ = await _sign_in(c, "nobody@example.com", "wrong")
        assert r.status_code == 429
        assert 0 < int(r.headers["retry-after"]) <= 60
        assert f'<strong id="retry-after">{r.headers["retry-after"]}</strong>' in r.text
        assert "Sign-in locked for now" in r.text and "Localhost is not treated specially" in r.text
        assert r.headers["content-type"].startswith("text/html")
        # the lock is on that address only
        r, page = await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
        assert "Signed in as" in page


async def test_a_browser_that_signed_in_is_a_trusted_origin_until_it_is_forgotten(
    demo: ModuleType,
) -> None:
    async with _running(demo), _client(demo) as c:
        page = (await c.get("/")).text
        assert "holds no device cookie" in page
        await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
        await _post(c, "/logout")
        assert demo.DEVICE_COOKIE == "axess.device"  # plain http: no __Host- prefix
        assert demo.DEVICE_COOKIE in c.cookies
        # Wrong passwords from the trusted browser do not count on the account lever.
        for _ in range(demo.USER_LEVER.threshold + 1):
            r, page = await _sign_in(c, demo.DEMO_USER, "wrong")
            assert r.status_code == 303 and "Invalid" in r.headers["location"]
        assert "holds a device cookie" in page
        r = await c.post("/device/forget", data={"csrf_token": _token(page)})
        assert r.status_code == 303 and demo.DEVICE_COOKIE not in c.cookies
        assert "device cookie is gone" in (await c.get(r.headers["location"])).text


async def test_the_rate_limiter_answers_before_any_password_is_checked(demo: ModuleType) -> None:
    async with _running(demo), _client(demo) as c:
        answers = [(await _sign_in(c, "someone@example.com", "wrong"))[0] for _ in range(6)]
        assert [r.status_code for r in answers] == [303, 303, 303, 429, 429, 429]
        assert all("Sign-in locked" in r.text for r in answers[3:5])
        # the sixth attempt within a minute: the limiter's 5/minute per address
        assert "Sign-in locked" not in answers[5].text and "retry-after" in answers[5].headers


async def test_refusals_from_the_stack_get_the_demo_page_in_a_browser(demo: ModuleType) -> None:
    browser = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    async with _running(demo), _client(demo) as c:
        page = (await c.get("/")).text
        r = await c.post("/logout", data={"x": "1"}, headers=browser)
        assert r.status_code == 403 and "Request refused" in r.text
        assert "CSRF token" in r.text and 'name="viewport"' in r.text
        r = await c.post("/logout", data={"x": "1"})  # an API client: the JSON shape
        assert r.status_code == 403 and r.json()["error"] == "csrf_failed"
        for _ in range(5):
            await c.post(
                "/login",
                data={"csrf_token": _token(page), "email": "x@example.com", "password": "y"},
            )
        form = {"csrf_token": _token(page), "email": "x@example.com", "password": "y"}
        r = await c.post("/login", data=form, headers=browser)
        assert r.status_code == 429 and "Too many requests" in r.text
        assert "5 sign-in attempts per minute" in r.text
        assert int(r.headers["retry-after"]) > 0 and "Try again in" in r.text
        r = await c.post("/login", data=form)
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"


# -- keys ---------------------------------------------------------------------------------------
async def test_keys_persist_across_two_builds_from_the_same_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "demo.keys"
    with _demo_module(tmp_path, monkeypatch) as demo:
        assert demo.KEY_PATH == key_file and demo.keys_created
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert not demo.keys.ephemeral
        async with _running(demo), _client(demo) as c:
            await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
            secret, codes = await _enrol(demo, c)
            jar = c.cookies.jar
    text = key_file.read_text()
    with _demo_module(tmp_path, monkeypatch) as demo:
        assert not demo.keys_created and key_file.read_text() == text
        async with _running(demo), _client(demo) as c:
            for cookie in jar:  # the same browser
                c.cookies.jar.set_cookie(cookie)
            page = (await c.get("/")).text
            assert "Signed in as" in page  # the session survived the restart
            await _post(c, "/logout")
            await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
            r = await _second_step(c, _next_code(secret))  # the TOTP secret still opens
            assert r.headers["location"] == "/"
            await _post(c, "/logout")
            await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
            r = await _second_step(c, codes[0])  # and the recovery codes still match
            assert r.headers["location"] == "/"


async def test_new_keys_for_an_old_database_explain_why_totp_cannot_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with _demo_module(tmp_path, monkeypatch) as demo:
        async with _running(demo), _client(demo) as c:
            await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
            secret, _ = await _enrol(demo, c)
    (tmp_path / "demo.keys").unlink()
    with caplog.at_level(logging.WARNING), _demo_module(tmp_path, monkeypatch) as demo:
        assert demo.keys_created
        assert any("was made with other keys" in r.getMessage() for r in caplog.records)
        async with _running(demo), _client(demo) as c:
            await _sign_in(c, demo.DEMO_USER, demo.DEMO_PASSWORD)
            r = await _second_step(c, _next_code(secret))
            assert r.status_code == 503 and "delete <code>demo.db</code>" in r.text


def test_the_key_file_is_keygen_output_and_malformed_files_are_refused(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from examples.demo_keys import create_key_file, load_or_create_keys, read_key_file
    finally:
        sys.path.remove(str(ROOT))
    path = tmp_path / "k.env"
    assert create_key_file(path) and not create_key_file(path)  # never overwritten
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    ring = read_key_file(path)
    assert ring.env_lines() == lines
    os.chmod(path, 0o644)
    again, created = load_or_create_keys(path)
    assert not created and again.env_lines() == lines
    path.write_text(lines[0] + "\n")
    with pytest.raises(ConfigurationError, match=r"k\.env: AXESS_ENVELOPE_KEYS is not set"):
        read_key_file(path)
    path.write_text("AXESS_SIGNING_KEYS\n")
    with pytest.raises(ConfigurationError, match="line 1 is not NAME=value"):
        read_key_file(path)


# -- `axess demo` -----------------------------------------------------------------------------
def test_axess_demo_serves_the_demo_on_the_port_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    from axess.cli import main

    monkeypatch.setenv("AXESS_DEMO_DB", str(tmp_path / "demo.db"))
    monkeypatch.delenv("AXESS_DEMO_KEYS", raising=False)
    sys.modules.pop("examples.demo", None)
    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    try:
        assert main(["demo", "--port", "8123"]) == 0
        assert seen["port"] == 8123 and seen["app"] is sys.modules["examples.demo"].app
        assert (tmp_path / "demo.keys").is_file()
        for bad in ("0", "65536", "http"):
            with pytest.raises(SystemExit) as exit_info:
                main(["demo", "--port", bad])
            assert exit_info.value.code == 2
        assert "--port" in capsys.readouterr().err
    finally:
        sys.modules.pop("examples.demo", None)
