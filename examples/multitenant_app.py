"""A multi-tenant Starlette app on axess: two tenants, each with its own
users, sign-in and lockout levers; a session belongs to one tenant.

Run it from the repository root::

    .venv/bin/uvicorn examples.multitenant_app:app

and open http://127.0.0.1:8000. The tenants ``acme`` and ``globex`` and
their users are created at start when missing:

=========  ===================  ==================
tenant     e-mail               password
=========  ===================  ==================
acme       alice@example.com    alice at acme
acme       bob@example.com      bob at acme
globex     alice@example.com    alice at globex
=========  ===================  ==================

What it shows:

* Sign-in is per tenant (``login_password(..., tenant=...)``): the same
  e-mail names two different users, and Bob cannot sign in to globex.
* The session carries the tenant (``session.tenant_id``); every tenant page
  checks it, so a user signed in to acme gets 403 from globex's pages.
* globex's record overrides the lockout: three wrong passwords lock a
  globex account, and the lock does not touch the same e-mail at acme.

Keys and ``AXESS_STORE_URL`` as in ``examples/settings.py`` (default: the
SQLite file ``multitenant_app.db`` in the current directory).
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from axess import (
    Axess,
    CSRFConfig,
    LoginFields,
    RateLimit,
    Session,
    SessionConfig,
    csrf_input,
    get_session,
)
from axess.authn import Authenticated, Locked
from axess.ratelimit import keys
from examples.settings import DEV, keyring, store_from_env

#: Tenant id -> lockout overrides kept on its record (book: Lockout).
TENANTS: dict[str, dict[str, object]] = {
    "acme": {},
    "globex": {"user": {"threshold": 3}},
}
#: (tenant, e-mail, password) created at start when missing.
USERS = [
    ("acme", "alice@example.com", "alice at acme"),
    ("acme", "bob@example.com", "bob at acme"),
    ("globex", "alice@example.com", "alice at globex"),
]
LOGIN_FIELDS = LoginFields("email")
LOGIN_PATHS = ["/t/*/login"]


def path_tenant(conn: HTTPConnection) -> str | None:
    """The tenant of a ``/t/<tenant>/…`` path (the limiter runs before routing)."""
    parts = conn.url.path.split("/")
    return parts[2] if len(parts) > 2 and parts[1] == "t" else None


# auth_rules() with the identifier counted per tenant: guesses at
# alice@globex do not use up alice@acme's budget.
RATE_LIMITS = [
    RateLimit(
        "10/minute", "100/hour", key="ip", paths=LOGIN_PATHS, methods=["POST"], name="login-ip"
    ),
    RateLimit(
        "5/minute",
        "30/hour",
        key=keys.composite(path_tenant, keys.login_identifier(LOGIN_FIELDS)),
        paths=LOGIN_PATHS,
        methods=["POST"],
        name="login-id",
    ),
]
#: The tenants' own data (in memory: this example is about who may touch it).
NOTES: dict[str, list[str]] = {tenant: [] for tenant in TENANTS}

auth = Axess(
    store=store_from_env("sqlite:///multitenant_app.db"),
    keys=keyring(),
    session=SessionConfig(secure=not DEV),
    csrf=CSRFConfig(secure=not DEV),
    rate_limits=RATE_LIMITS,
    debug=DEV,
)
assert auth.authn is not None and auth.users is not None
authn, users = auth.authn, auth.users


def page(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html><head><meta charset="utf-8"><title>axess tenants</title>'
        f'</head><body>{body}<p><a href="/">All tenants</a></p></body></html>',
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


def post_form(request: Request, action: str, fields: str, button: str) -> str:
    return (
        f'<form method="post" action="{html.escape(action)}">{csrf_input(request)}'
        f"{fields}<button>{button}</button></form>"
    )


def member(request: Request) -> Session | None:
    """The session, when it is signed in to the tenant named in the path."""
    session = get_session(request)
    if session.is_authenticated and session.tenant_id == request.path_params["tenant"]:
        return session
    return None


async def not_a_member(request: Request) -> Response:
    """Signed in to another tenant: 403 (and this tenant's sign-in form).
    A guest is sent to the sign-in form."""
    if get_session(request).is_authenticated:
        return await tenant_page(request)
    return RedirectResponse(f"/t/{request.path_params['tenant']}/", status_code=303)


async def tenants(request: Request) -> Response:
    links = "".join(f'<li><a href="/t/{t}/">{t}</a></li>' for t in TENANTS)
    return page(f"<h1>Tenants</h1><ul>{links}</ul>")


async def tenant_home(request: Request) -> Response:
    return await tenant_page(request)


async def tenant_page(request: Request, message: str = "", status_code: int = 200) -> Response:
    """The tenant's notes for its members; its sign-in form for everyone else
    (403 for a session signed in to another tenant)."""
    tenant = request.path_params["tenant"]
    if tenant not in TENANTS:
        return page("<h1>No such tenant</h1>", 404)
    session = get_session(request)
    if member(request) is None:
        if session.is_authenticated and not message:  # signed in to another tenant
            elsewhere = session.tenant_id or "another tenant"
            message = (
                f"You are signed in to {elsewhere}, not to {tenant}. Signing in here ends that."
            )
            status_code = 403
        error = f"<p><strong>{html.escape(message)}</strong></p>" if message else ""
        fields = (
            '<label>E-mail <input name="email" type="email" required></label> '
            '<label>Password <input name="password" type="password" required></label> '
        )
        login = post_form(request, f"/t/{tenant}/login", fields, "Sign in")
        return page(f"<h1>Sign in to {tenant}</h1>{error}{login}", status_code)
    assert session.user_id is not None
    user = await users.get_user(session.user_id)
    name = user.identifier if user is not None else session.user_id
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in NOTES[tenant])
    add = post_form(request, f"/t/{tenant}/notes", '<input name="text" required> ', "Add note")
    logout = post_form(request, f"/t/{tenant}/logout", "", "Sign out")
    return page(
        f"<h1>{tenant}</h1><p>Signed in as <strong>{html.escape(name)}</strong> "
        f"(session tenant: <code>{html.escape(session.tenant_id or '')}</code>).</p>"
        f"<h2>Notes</h2><ul>{notes}</ul>{add}{logout}"
    )


async def login(request: Request) -> Response:
    tenant = request.path_params["tenant"]
    email = await LOGIN_FIELDS.read(request)
    password = str((await request.form()).get("password", ""))
    # The tenant scopes the user lookup and the lockout counters (an unknown
    # tenant never gets here: tenant_page answers 404, the tenants being
    # listed on the home page anyway).
    outcome = await authn.login_password(request, email, password, tenant=tenant)
    if isinstance(outcome, Authenticated):
        return RedirectResponse(f"/t/{tenant}/", status_code=303)
    if isinstance(outcome, Locked):
        message = f"Too many attempts; try again in {outcome.retry_after} s."
        response = await tenant_page(request, message, 429)
        response.headers["Retry-After"] = str(outcome.retry_after)
        return response
    return await tenant_page(request, "Wrong e-mail or password.", 401)


async def add_note(request: Request) -> Response:
    if member(request) is None:
        return await not_a_member(request)
    tenant = request.path_params["tenant"]
    text = str((await request.form()).get("text", "")).strip()[:200]
    if text:
        NOTES[tenant].append(text)
    return RedirectResponse(f"/t/{tenant}/", status_code=303)


async def logout(request: Request) -> Response:
    if member(request) is not None:
        await authn.logout(request)
    return RedirectResponse(f"/t/{request.path_params['tenant']}/", status_code=303)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with auth.lifespan():
        for tenant, overrides in TENANTS.items():
            if await users.store.get_tenant(tenant) is None:
                await users.create_tenant(tenant, lockout_overrides=overrides)
        for tenant, email, password in USERS:
            if await users.find_user(email, tenant=tenant) is None:
                await users.create_user(email, tenant=tenant, password=password)
        yield


app = Starlette(
    routes=[
        Route("/", tenants),
        Route("/t/{tenant}/", tenant_home),
        Route("/t/{tenant}/login", login, methods=["POST"]),
        Route("/t/{tenant}/notes", add_note, methods=["POST"]),
        Route("/t/{tenant}/logout", logout, methods=["POST"]),
        Route("/healthz", auth.healthz),
    ],
    lifespan=lifespan,
)
auth.install(app)
