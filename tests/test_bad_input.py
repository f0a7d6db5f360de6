"""Bad input gets a clear 4xx, never a 500: the cases the HTTP fuzz
(``tests/test_fuzz_http.py``) found, one example each, through the public API.

Clients raise app exceptions (httpx's default), so a crash fails the test
instead of turning into a 500.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import sqlite3
import sys
from pathlib import Path

import pytest
from helpers import ROUTES, client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from axess import Axess, Keyring, MockClock, csrf_token
from axess.authn.http import outcome_response
from axess.authn.lockout import normalize_identifier
from axess.authn.password import PasswordHasher
from axess.session.csrf import CSRFConfig
from axess.stores import MemoryStore, SQLiteStore
from axess.testing import SeededRandom

ROOT = Path(__file__).resolve().parent.parent
FORM = {"content-type": "application/x-www-form-urlencoded"}


def fast_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


async def token(request: Request) -> JSONResponse:
    return JSONResponse({"token": csrf_token(request)})


async def echo_form(request: Request) -> JSONResponse:
    data = await request.form()
    return JSONResponse({"fields": len(data)})


def csrf_app() -> Starlette:
    auth = Axess(
        store=MemoryStore(),
        keys=Keyring.generate(),
        clock=MockClock(),
        random=SeededRandom(1),
        csrf=CSRFConfig(),
        debug=True,
        cleanup_interval=None,
    )
    app = Starlette(
        routes=[*ROUTES, Route("/token", token), Route("/echo", echo_form, methods=["POST"])]
    )
    auth.install(app)
    return app


async def test_a_csrf_form_field_that_is_not_latin1_is_403() -> None:
    async with client(csrf_app()) as c:
        await c.get("/token")  # the CSRF cookie: the check runs
        r = await c.post("/write", content=b"csrf_token=%E2%82%AC", headers=FORM)
        assert r.status_code == 403 and r.json()["error"] == "csrf_failed"
        r = await c.post("/write", content=b"csrf_token=%ED%A0%80%FF&x=%zz", headers=FORM)
        assert r.status_code == 403


async def test_a_multipart_csrf_field_that_is_not_ascii_is_403() -> None:
    async with client(csrf_app()) as c:
        await c.get("/token")
        r = await c.post("/write", data={"csrf_token": "€"}, files={"f": ("a", b"x")})
        assert r.status_code == 403
        # A client-chosen charset that decodes to a lone surrogate.
        body = (
            b'--B\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n\\ud800\r\n--B--\r\n'
        )
        ctype = "multipart/form-data; boundary=B; charset=unicode_escape"
        r = await c.post("/write", content=body, headers={"content-type": ctype})
        assert r.status_code == 403


async def test_a_form_with_more_than_1000_fields_is_a_clear_4xx() -> None:
    async with client(csrf_app()) as c:
        t = (await c.get("/token")).json()["token"]
        many = "&".join(f"f{i}=1" for i in range(1500))
        # The token among the first 1000 fields: CSRF passes, and the app's
        # own form parser refuses the body.
        r = await c.post("/echo", content=f"csrf_token={t}&{many}", headers=FORM)
        assert r.status_code == 400 and "Too many fields" in r.text
        # The token further on is not looked for.
        r = await c.post("/echo", content=f"{many}&csrf_token={t}", headers=FORM)
        assert r.status_code == 403
        # Within the limit all is well.
        r = await c.post("/echo", content=f"csrf_token={t}&a=1&b=2", headers=FORM)
        assert r.status_code == 200 and r.json() == {"fields": 3}


async def test_the_first_non_empty_csrf_field_counts() -> None:
    async with client(csrf_app()) as c:
        t = (await c.get("/token")).json()["token"]
        r = await c.post("/write", content=f"csrf_token=&csrf+token=x&csrf_token={t}", headers=FORM)
        assert r.status_code == 200
        r = await c.post("/write", content=f"csrf%5Ftoken={t}", headers=FORM)
        assert r.status_code == 200


# -- login identifiers, passwords and tenants that no store can hold ------------------------
def login_app(store: MemoryStore | SQLiteStore) -> tuple[Axess, Starlette]:
    auth = Axess(
        store=store,
        keys=Keyring.generate(),
        clock=MockClock(),
        random=SeededRandom(1),
        password_hasher=fast_hasher(),
        csrf=False,
        debug=True,
        cleanup_interval=None,
    )
    assert auth.authn is not None
    authn = auth.authn

    async def login(request: Request) -> Response:
        body = json.loads(await request.body())  # JSON carries lone surrogates (\ud800)
        tenant = body.get("tenant")
        outcome = await authn.login_password(request, body["identifier"], body["password"], tenant)
        return outcome_response(outcome)

    app = Starlette(routes=[Route("/login", login, methods=["POST"])])
    auth.install(app)
    return auth, app


def rows(store: MemoryStore | SQLiteStore, path: Path) -> tuple[int, int]:
    """(lockout counters, sessions) in the store."""
    if isinstance(store, MemoryStore):
        return len(store._levers), len(store._sessions)
    with contextlib.closing(sqlite3.connect(path)) as db:
        (levers,) = db.execute("SELECT COUNT(*) FROM axess_lockouts").fetchone()
        (sessions,) = db.execute("SELECT COUNT(*) FROM axess_sessions").fetchone()
    return levers, sessions


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_lone_surrogate_is_invalid_credentials_before_any_lever(
    kind: str, tmp_path: Path
) -> None:
    db = tmp_path / "axess.db"
    store = MemoryStore() if kind == "memory" else SQLiteStore(str(db))
    auth, app = login_app(store)
    async with auth.lifespan():
        assert auth.users is not None
        await auth.users.create_user("alice@example.com", password="correct horse")
        async with client(app) as c:
            for body in (
                {"identifier": "\ud800", "password": "x"},
                {"identifier": "alice\udfff@example.com", "password": "correct horse"},
                {"identifier": "alice@example.com", "password": "\ud800"},
                {"identifier": "alice@example.com", "password": ""},
                {"identifier": "alice@example.com", "password": "pw", "tenant": "\udc80"},
            ):
                raw = json.dumps(body).encode()  # ensure_ascii: "\\ud800" on the wire
                r = await c.post(
                    "/login", content=raw, headers={"content-type": "application/json"}
                )
                assert r.status_code == 401, body
                assert r.json()["error"] == "invalid_credentials"
                assert "set-cookie" not in r.headers  # no pending login stored
        # Refused before any lever: nothing counted, nothing stored.
        assert rows(store, db) == (0, 0)
        # The admin API refuses such an identifier like an empty one.
        for call in (auth.users.create_user, auth.users.find_user):
            with pytest.raises(ValueError, match="not valid Unicode"):
                await call("bob\ud800@example.com")
        with pytest.raises(ValueError, match="not valid Unicode"):
            normalize_identifier("\ud800")


async def test_demo_login_with_smuggled_surrogates_is_invalid_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AXESS_DEMO_DB", str(tmp_path / "demo.db"))
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("examples.demo", None)
    demo = importlib.import_module("examples.demo")
    demo.authn.hasher = demo.users.hasher = fast_hasher()
    async with demo.lifespan(demo.app), client(demo.app) as c:
        page = (await c.get("/")).text
        t = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        # Starlette decodes multipart fields with the charset the client names:
        # unicode_escape turns "\ud800" into a lone surrogate.
        parts = [("csrf_token", t), ("email", "\\ud800"), ("password", "pw\\udfff")]
        body = b"".join(
            f'--B\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in parts
        )
        r = await c.post(
            "/login",
            content=body + b"--B--\r\n",
            headers={"content-type": "multipart/form-data; boundary=B; charset=unicode_escape"},
        )
        assert r.status_code == 303 and "Invalid" in r.headers["location"]
        # More fields than Starlette parses: its clear 400, after the CSRF check.
        many = "&".join(f"f{i}=1" for i in range(1500))
        r = await c.post("/login", content=f"csrf_token={t}&{many}", headers=FORM)
        assert r.status_code == 400
    sys.modules.pop("examples.demo", None)
