"""Bad input gets a clear 4xx, never a 500: the cases the HTTP fuzz
(``tests/test_fuzz_http.py``) found, one example each, through the public API.

Clients raise app exceptions (httpx's default), so a crash fails the test
instead of turning into a 500.
"""

from __future__ import annotations

from helpers import ROUTES, client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from axess import Axess, Keyring, MockClock, SeededRandom, csrf_token
from axess.session.csrf import CSRFConfig
from axess.stores import MemoryStore

FORM = {"content-type": "application/x-www-form-urlencoded"}


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
