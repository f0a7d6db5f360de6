"""A plain Starlette app on axess: sign in with a password, a page only a
signed-in user sees, sign out, and ``/healthz``.

Run it from the repository root::

    .venv/bin/uvicorn examples.starlette_app:app

then open http://127.0.0.1:8000 and sign in as ``alice@example.com`` with
the password ``correct horse battery staple`` (created at start when
missing). Without keys in the environment it runs in development mode; see
``examples/settings.py`` for the keys and ``AXESS_STORE_URL`` (default: the
SQLite file ``starlette_app.db`` in the current directory).
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import AsyncIterator
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from axess import (
    Axess,
    CSRFConfig,
    LoginFields,
    SessionConfig,
    csrf_input,
    get_session,
    require_authn,
)
from axess.authn import Authenticated, Locked
from axess.authn.guards import safe_next
from axess.ratelimit import auth_rules
from examples.settings import DEV, keyring, store_from_env

USER = "alice@example.com"
PASSWORD = "correct horse battery staple"
#: The login form's identifier field; the rate limiter counts the same one.
LOGIN_FIELDS = LoginFields("email")

auth = Axess(
    store=store_from_env("sqlite:///starlette_app.db"),
    keys=keyring(),
    session=SessionConfig(secure=not DEV, idle_timeout=30 * 60),
    csrf=CSRFConfig(secure=not DEV),
    rate_limits=auth_rules(login_paths=["/login"], login_fields=LOGIN_FIELDS),
    debug=DEV,
)
# The SQL and memory stores hold users, so the login service exists.
assert auth.authn is not None and auth.users is not None
authn, users = auth.authn, auth.users


def page(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html><head><meta charset="utf-8"><title>axess on Starlette</title>'
        f"</head><body>{body}</body></html>",
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


def login_form(request: Request, message: str = "", status_code: int = 200) -> HTMLResponse:
    next_path = safe_next(request.query_params.get("next")) or "/account"
    error = f"<p><strong>{html.escape(message)}</strong></p>" if message else ""
    return page(
        f"<h1>Sign in</h1>{error}"
        f'<form method="post" action="/login?{html.escape(urlencode({"next": next_path}))}">'
        f"{csrf_input(request)}"
        '<label>E-mail <input name="email" type="email" required></label> '
        '<label>Password <input name="password" type="password" required></label> '
        "<button>Sign in</button></form>",
        status_code,
    )


async def home(request: Request) -> Response:
    if get_session(request).is_authenticated:
        return RedirectResponse("/account", status_code=303)
    return login_form(request)


async def login(request: Request) -> Response:
    if request.method == "GET":
        return login_form(request)
    email = await LOGIN_FIELDS.read(request)  # a body naming it twice: 400
    password = str((await request.form()).get("password", ""))
    outcome = await authn.login_password(request, email, password)
    if isinstance(outcome, Authenticated):  # the session id rotated
        target = safe_next(request.query_params.get("next")) or "/account"
        return RedirectResponse(target, status_code=303)
    if isinstance(outcome, Locked):
        message = f"Too many attempts; try again in {outcome.retry_after} s."
        response = login_form(request, message, 429)
        response.headers["Retry-After"] = str(outcome.retry_after)
        return response
    # InvalidCredentials. (FactorRequired("totp") cannot happen here: these
    # users have no TOTP; the demo shows the second step.)
    return login_form(request, "Wrong e-mail or password.", 401)


@require_authn(login_url="/login")
async def account(request: Request) -> Response:
    session = get_session(request)
    assert session.user_id is not None  # the guard admitted an authenticated session
    user = await users.get_user(session.user_id)
    name = user.identifier if user is not None else session.user_id
    visits = session.get("visits", 0) + 1
    session["visits"] = visits  # stored sealed in the store, never in the cookie
    return page(
        f"<h1>Your account</h1><p>Signed in as <strong>{html.escape(name)}</strong>; "
        f"page views this session: {visits}.</p>"
        f'<form method="post" action="/logout">{csrf_input(request)}'
        "<button>Sign out</button></form>"
    )


async def logout(request: Request) -> Response:
    await authn.logout(request)  # deletes the session row, clears the cookie
    return RedirectResponse("/", status_code=303)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with auth.lifespan():  # opens (and migrates) the store, then closes it
        if await users.find_user(USER) is None:
            await users.create_user(USER, password=PASSWORD)
        yield


app = Starlette(
    routes=[
        Route("/", home),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/account", account),
        Route("/logout", logout, methods=["POST"]),
        Route("/healthz", auth.healthz),
    ],
    lifespan=lifespan,
)
auth.install(app)
