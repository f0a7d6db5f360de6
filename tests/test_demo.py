"""The README's demo app: real sign-in, TOTP step, logout (SQLite file)."""

from __future__ import annotations

import base64
import importlib
import re
import sys
import time
from pathlib import Path

import httpx
import pytest

from axess.authn.totp import hotp, time_step, totp
from axess.clock import MockClock

ROOT = Path(__file__).resolve().parent.parent


def _token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found
    return found.group(1)


async def test_demo_sign_in_and_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AXESS_DEMO_DB", str(tmp_path / "demo.db"))
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("examples.demo", None)
    demo = importlib.import_module("examples.demo")
    transport = httpx.ASGITransport(app=demo.app)
    async with demo.lifespan(demo.app):
        async with httpx.AsyncClient(transport=transport, base_url="https://t") as c:
            page = (await c.get("/")).text
            assert "Sign in" in page
            r = await c.post(
                "/login",
                data={"csrf_token": _token(page), "email": demo.DEMO_USER, "password": "nope"},
            )
            assert r.status_code == 303 and "Invalid" in r.headers["location"]
            page = (await c.get("/")).text
            r = await c.post(
                "/login",
                data={
                    "csrf_token": _token(page),
                    "email": demo.DEMO_USER,
                    "password": demo.DEMO_PASSWORD,
                },
            )
            assert r.status_code == 303
            page = (await c.get("/")).text
            assert "Signed in as" in page and "Your sessions" in page
            r = await c.post("/logout", data={"csrf_token": _token(page)})
            assert r.status_code == 303
            assert "Sign in" in (await c.get("/")).text
            # Without the CSRF token a state-changing POST is refused.
            r = await c.post("/login", data={"email": "x", "password": "y"})
            assert r.status_code == 403
    sys.modules.pop("examples.demo", None)


async def test_demo_totp_enrolment_is_confirmed_with_a_first_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AXESS_DEMO_DB", str(tmp_path / "demo.db"))
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("examples.demo", None)
    demo = importlib.import_module("examples.demo")
    transport = httpx.ASGITransport(app=demo.app)

    async def sign_in(c: httpx.AsyncClient) -> str:
        page = (await c.get("/")).text
        r = await c.post(
            "/login",
            data={
                "csrf_token": _token(page),
                "email": demo.DEMO_USER,
                "password": demo.DEMO_PASSWORD,
            },
        )
        assert r.status_code == 303
        return (await c.get("/")).text

    def key_of(page: str) -> bytes:
        found = re.search(r"Key: <code>([A-Z2-7]+)</code>", page)
        assert found
        text = found.group(1)
        return base64.b32decode(text + "=" * (-len(text) % 8))

    async with demo.lifespan(demo.app):
        user = await demo.users.find_user(demo.DEMO_USER)
        async with httpx.AsyncClient(transport=transport, base_url="https://t") as c:
            page = await sign_in(c)
            assert "Enrol TOTP" in page
            # confirming without a started enrolment is no error
            r = await c.post("/totp/confirm", data={"csrf_token": _token(page), "code": "1"})
            assert r.status_code == 303 and "again" in r.headers["location"]
            r = await c.post("/totp/enrol", data={"csrf_token": _token(page)})
            assert r.status_code == 200 and "otpauth://totp/" in r.text
            secret = key_of(r.text)
            assert (await demo.users.store.get_factors(user.id)).totp_secret is None
            # a wrong code shows the page again with an error, and enrols nothing
            step = time_step(time.time())
            valid = {hotp(secret, step + d) for d in (-2, -1, 0, 1, 2)}
            wrong = next(x for x in ("000000", "111111", "222222", "333333") if x not in valid)
            for bad in (wrong, "", "x" * 40):
                r = await c.post("/totp/confirm", data={"csrf_token": _token(r.text), "code": bad})
                assert r.status_code == 400 and "Wrong code" in r.text
                assert key_of(r.text) == secret
            assert (await demo.users.store.get_factors(user.id)).totp_secret is None
            code = totp(secret, time.time())
            r = await c.post("/totp/confirm", data={"csrf_token": _token(r.text), "code": code})
            assert r.status_code == 200 and "TOTP enrolled" in r.text
            assert len(re.findall(r"<code>[^<]+</code>", r.text)) >= 10  # recovery codes
            assert (await demo.users.store.get_factors(user.id)).totp_secret is not None
            page = (await c.get("/")).text
            r = await c.post("/logout", data={"csrf_token": _token(page)})
            assert r.status_code == 303
            # the next sign-in asks for a code; the enrolment code is spent
            page = await sign_in(c)
            assert "Enter your TOTP code" in page
            r = await c.post("/login/totp", data={"csrf_token": _token(page), "code": code})
            assert r.status_code == 303 and "Invalid" in r.headers["location"]
            page = (await c.get("/")).text
            nxt = hotp(secret, time_step(time.time()) + 1)
            r = await c.post("/login/totp", data={"csrf_token": _token(page), "code": nxt})
            assert r.status_code == 303
            page = (await c.get("/")).text
            assert "Signed in as" in page
            # an expired enrolment asks to start again (400, not 500)
            r = await c.post("/totp/enrol", data={"csrf_token": _token(page)})
            later = MockClock(time.time() + 601)  # the admin's clock only
            monkeypatch.setattr(demo.users, "clock", later)
            code = totp(key_of(r.text), later.time())
            r = await c.post("/totp/confirm", data={"csrf_token": _token(r.text), "code": code})
            assert r.status_code == 400 and "expired" in r.text
            r = await c.post("/totp/confirm", data={"csrf_token": _token(r.text), "code": code})
            assert r.status_code == 303  # the pending enrolment was dropped
    sys.modules.pop("examples.demo", None)
