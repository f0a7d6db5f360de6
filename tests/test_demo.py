"""The README's demo app: real sign-in, TOTP step, logout (SQLite file)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import httpx
import pytest

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
