"""require_authn / require_partial_authn as Starlette decorators and FastAPI dependencies."""

from __future__ import annotations

import httpx
import pytest
from authn_app import Env, make_env
from fastapi import Depends, FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from axess.authn.guards import (
    AuthnRequired,
    authn_exception_handler,
    require_authn,
    require_partial_authn,
    safe_next,
)
from axess.authn.totp import generate_secret, totp
from axess.session.handle import Session


@require_authn(login_url="/login")
async def secret_page(request: Request) -> Response:
    return PlainTextResponse("secret")


@require_authn()
async def secret_api(request: Request) -> Response:
    return JSONResponse({"ok": True})


@require_partial_authn()
def mfa_page(request: Request) -> Response:  # a sync endpoint works too
    return PlainTextResponse("enter your code")


def _env() -> Env:
    env = make_env()
    env.app.add_route("/secret", secret_page, methods=["GET", "POST"])
    env.app.add_route("/api", secret_api)
    env.app.add_route("/mfa", mfa_page)
    return env


async def _login(c: httpx.AsyncClient, ident: str = "alice") -> None:
    r = await c.post("/login", json={"identifier": ident, "password": "correct horse"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "target",
    [
        "//evil.com",
        "https://evil.com",
        "/\\evil.com",
        "\\\\evil",
        "evil",
        "",
        None,
        "/a\nb",
        "/x://y",
    ],
)
def test_safe_next_rejects_foreign_targets(target: str | None) -> None:
    assert safe_next(target) is None


def test_safe_next_keeps_relative_paths() -> None:
    assert safe_next("/a/b?c=1&d=//x") == "/a/b?c=1&d=//x"
    assert safe_next("/") == "/"


async def test_starlette_decorator_refuses_guests() -> None:
    env = _env()
    async with env.client() as c:
        r = await c.get("/secret?a=1")
        assert r.status_code == 303
        assert r.headers["location"] == "/login?next=/secret%3Fa%3D1"
        r = await c.post("/secret")  # not a page load: JSON 401, no redirect
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
        r = await c.get("/api")
        assert r.status_code == 401 and r.json() == {
            "error": "unauthenticated",
            "detail": "authentication required",
        }
        assert (await c.get("/mfa")).status_code == 401


def test_redirect_never_points_elsewhere() -> None:
    guard = require_authn(login_url="/login?x=1")
    for path in ("//evil.com/a", "/\\evil.com"):
        scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": []}
        r = guard.refusal(Request(scope))
        assert r.headers["location"] == "/login?x=1&next=/"


def test_redirect_names_the_path_the_browser_asked_for_under_a_root_path() -> None:
    guard = require_authn(login_url="/app/login")
    base = {"type": "http", "method": "GET", "query_string": b"q=1", "headers": []}
    # ASGI today: path already starts with root_path (uvicorn --root-path, Mount).
    current = {**base, "path": "/app/secret", "root_path": "/app"}
    # An older server: path relative to root_path.
    older = {**base, "path": "/secret", "root_path": "/app"}
    for scope in (current, older):
        r = guard.refusal(Request(scope))
        assert r.headers["location"] == "/app/login?next=/app/secret%3Fq%3D1"


async def test_starlette_decorator_admits_authenticated() -> None:
    env = _env()
    await env.add_user("alice")
    async with env.client() as c:
        await _login(c)
        assert (await c.get("/secret")).text == "secret"
        assert (await c.get("/api")).json() == {"ok": True}
        assert (await c.get("/mfa")).status_code == 401  # not mid-MFA any more


async def test_partial_guard_admits_only_mid_mfa_sessions() -> None:
    env = _env()
    uid = await env.add_user("alice")
    secret = generate_secret()
    await env.store.set_totp_secret(uid, env.authn.sealer.seal(secret, uid))
    async with env.client() as c:
        r = await c.post("/login", json={"identifier": "alice", "password": "correct horse"})
        assert r.json() == {"factor_required": "totp"}
        assert (await c.get("/mfa")).text == "enter your code"
        assert (await c.get("/api")).status_code == 401
        await c.post("/factor", json={"totp": totp(secret, env.clock.time())})
        assert (await c.get("/api")).status_code == 200
        assert (await c.get("/mfa")).status_code == 401


def _fastapi(env: Env, *, handler: bool = True) -> FastAPI:
    app = FastAPI()

    @app.get("/me")
    async def me(session: Session = Depends(require_authn())) -> dict[str, str | None]:
        return {"user": session.user_id}

    @app.get("/page")
    async def page(session: Session = Depends(require_authn(login_url="/login"))) -> str:
        return "page"

    @app.get("/mfa")
    async def mfa(session: Session = Depends(require_partial_authn())) -> str:
        return "code please"

    app.router.routes.extend(env.app.router.routes)
    if handler:
        app.add_exception_handler(AuthnRequired, authn_exception_handler)
    env.auth.install(app)
    return app


async def test_fastapi_dependency() -> None:
    env = make_env()
    await env.add_user("alice")
    app = _fastapi(env)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://testserver"
    ) as c:
        r = await c.get("/me")
        assert r.status_code == 401 and r.json() == {
            "error": "unauthenticated",
            "detail": "authentication required",
        }
        r = await c.get("/page?q=1")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/page%3Fq%3D1"
        assert (await c.get("/mfa")).status_code == 401
        await _login(c)
        assert (await c.get("/me")).json() == {"user": "u-alice"}
        assert (await c.get("/page")).json() == "page"


async def test_fastapi_without_handler_keeps_status_and_location() -> None:
    env = make_env()
    app = _fastapi(env, handler=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://testserver"
    ) as c:
        assert (await c.get("/me")).status_code == 401
        r = await c.get("/page")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/page"


def test_guard_rejects_other_arguments() -> None:
    with pytest.raises(TypeError):
        require_authn()(42)  # type: ignore[call-overload]
