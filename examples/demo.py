"""The axess demo: a small Starlette app on the embedded SQLite store.

Run it with ``./scripts/demo`` and open http://127.0.0.1:8000. A demo user
is created at start (``demo@example.com`` / ``demo-password``). Keys are
generated at every start (debug mode), so a restart logs everyone out — a
real deployment loads them with ``Keyring.from_env()``.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from axess import (
    Axess,
    CSRFConfig,
    Keyring,
    LoginFields,
    SessionConfig,
    TOTPCode,
    csrf_input,
    get_session,
)
from axess.authn import Authenticated, FactorRequired, Locked, RecoveryCode, TOTPEnrolment
from axess.ratelimit import auth_rules
from axess.stores import SQLiteStore

logger = logging.getLogger("axess.demo")
DEMO_USER = "demo@example.com"
DEMO_PASSWORD = "demo-password"
#: Session key of the TOTP enrolment waiting for its first code.
TOTP_PENDING = "demo.totp_pending"
#: Where the sign-in form carries the identifier. The rate limiter counts the
#: very field /login reads, and a body naming it twice is refused (400).
LOGIN_FIELDS = LoginFields("email")

auth = Axess(
    store=SQLiteStore(os.environ.get("AXESS_DEMO_DB", "demo.db")),
    keys=Keyring.generate(),
    # Plain http on 127.0.0.1: browsers would drop a Secure cookie. These are
    # named weakenings and are logged as WARNINGs at startup.
    session=SessionConfig(secure=False, idle_timeout=30 * 60),
    csrf=CSRFConfig(secure=False),
    rate_limits=[*auth_rules(login_paths=["/login", "/login/totp"], login_fields=LOGIN_FIELDS)],
    debug=True,
)
assert auth.authn is not None and auth.users is not None
authn, users = auth.authn, auth.users

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>axess demo</title>
<style>body{{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem}}
code{{background:#eee;padding:0 .2rem}} form{{display:inline}} td{{padding:.2rem .6rem}}
.msg{{color:#a00}}</style>
</head><body><h1>axess demo</h1>
<p><strong>Development keys:</strong> generated at start; restarting logs everyone out.
Demo account: <code>{user}</code> / <code>{password}</code>.</p>
{body}
</body></html>"""


def page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        PAGE.format(body=body, user=DEMO_USER, password=DEMO_PASSWORD), status_code=status
    )


def form(request: Request, action: str, inner: str, button: str) -> str:
    return (
        f'<form method="post" action="{action}">{csrf_input(request)}{inner}'
        f"<button>{html.escape(button)}</button></form>"
    )


async def home(request: Request) -> Response:
    s = get_session(request)
    msg = request.query_params.get("msg", "")
    body = f'<p class="msg">{html.escape(msg)}</p>' if msg else ""
    if s.is_authenticated and s.user_id:
        user = await users.store.get_user(s.user_id)
        name = user.identifier if user else s.user_id
        body += f"<p>Signed in as <strong>{html.escape(name)}</strong>.</p>"
        rows = "".join(
            f"<tr><td>{html.escape(i.key_prefix)}</td><td>{html.escape(i.ip_prefix or '?')}</td>"
            f"<td>{html.escape((i.user_agent or '?')[:40])}</td><td>"
            + (
                "this one"
                if i.storage_key == s.storage_key
                else form(
                    request,
                    "/sessions/revoke",
                    f'<input type="hidden" name="key" value="{i.storage_key}">',
                    "Revoke",
                )
            )
            + "</td></tr>"
            for i in await auth.list_sessions(s.user_id)
        )
        body += f"<h2>Your sessions</h2><table>{rows}</table><p>"
        body += form(request, "/logout", "", "Log out") + " "
        body += form(request, "/logout-everywhere", "", "Log out everywhere") + "</p>"
        body += "<h2>Two-factor</h2><p>" + form(request, "/totp/enrol", "", "Enrol TOTP") + "</p>"
    elif s.auth_state.kind == "authenticating":
        inner = (
            '<label>Code from your app <input name="code" autocomplete="one-time-code"></label> '
        )
        body += "<p>Password accepted. Enter your TOTP code (or a recovery code).</p>"
        body += form(request, "/login/totp", inner, "Verify")
    else:
        inner = (
            '<label>E-mail <input name="email" required maxlength="254"></label> '
            '<label>Password <input name="password" type="password" required></label> '
        )
        body += form(request, "/login", inner, "Sign in")
    return page(body)


def after_login(outcome: object) -> Response:
    if isinstance(outcome, Authenticated | FactorRequired):
        return RedirectResponse("/", status_code=303)
    if isinstance(outcome, Locked):
        return RedirectResponse(
            f"/?msg=Too+many+attempts;+try+again+in+{outcome.retry_after}+s", status_code=303
        )
    return RedirectResponse("/?msg=Invalid+credentials", status_code=303)


async def login(request: Request) -> Response:
    email = (await LOGIN_FIELDS.read(request))[:254]  # raises AmbiguousIdentifier: a 400
    password = str((await request.form()).get("password", ""))[:1024]
    if not password:
        return RedirectResponse("/?msg=Invalid+credentials", status_code=303)
    return after_login(await authn.login_password(request, email, password))


async def login_totp(request: Request) -> Response:
    code = str((await request.form()).get("code", "")).strip()[:32]
    credential = TOTPCode(code) if code.isdigit() else RecoveryCode(code or "-")
    return after_login(await authn.verify_factor(request, credential))


async def logout(request: Request) -> Response:
    await authn.logout(request)
    return RedirectResponse("/", status_code=303)


async def logout_everywhere(request: Request) -> Response:
    s = get_session(request)
    if s.is_authenticated and s.user_id:
        await auth.invalidate_user(s.user_id)
    return RedirectResponse("/", status_code=303)


async def revoke(request: Request) -> Response:
    s = get_session(request)
    key = str((await request.form()).get("key", ""))
    if s.is_authenticated and s.user_id:
        # Only the user's own sessions can be revoked from here.
        mine = {i.storage_key for i in await auth.list_sessions(s.user_id)}
        if key in mine:
            await auth.invalidate_session(key)
    return RedirectResponse("/", status_code=303)


def enrolment_page(request: Request, enrolment: TOTPEnrolment, error: str = "") -> str:
    body = f'<p class="msg">{html.escape(error)}</p>' if error else ""
    inner = (
        '<label>First code from your app <input name="code" required maxlength="32"'
        ' autocomplete="one-time-code" inputmode="numeric"></label> '
    )
    return body + (
        "<h2>Enrol TOTP</h2><p>Add this to your authenticator app (as a QR code, or type"
        f" the key):</p><p><code>{html.escape(enrolment.uri)}</code></p>"
        f"<p>Key: <code>{html.escape(enrolment.secret)}</code></p>"
        "<p>Then enter the code it shows. Two-factor sign-in starts only once a code"
        " is accepted.</p>"
        + form(request, "/totp/confirm", inner, "Activate")
        + ' <a href="/">Cancel</a>'
    )


async def totp_enrol(request: Request) -> Response:
    s = get_session(request)
    if not (s.is_authenticated and s.user_id):
        return RedirectResponse("/", status_code=303)
    enrolment = await users.begin_totp_enrolment(s.user_id)
    # Only the sealed token is kept; nothing is stored until a code is accepted.
    s[TOTP_PENDING] = enrolment.pending
    return page(enrolment_page(request, enrolment))


async def totp_confirm(request: Request) -> Response:
    s = get_session(request)
    if not (s.is_authenticated and s.user_id):
        return RedirectResponse("/", status_code=303)
    pending = s.get(TOTP_PENDING)
    code = str((await request.form()).get("code", ""))[:32]
    if not isinstance(pending, str):
        return RedirectResponse("/?msg=Start+the+TOTP+enrolment+again", status_code=303)
    if not await users.confirm_totp_enrolment(s.user_id, pending, code, actor=s.user_id):
        enrolment = await users.pending_totp_enrolment(s.user_id, pending)
        if enrolment is None:  # expired (or keys gone): start again
            del s[TOTP_PENDING]
            body = '<p class="msg">The enrolment expired; start again.</p>' + form(
                request, "/totp/enrol", "", "Enrol TOTP"
            )
            return page(body, status=400)
        return page(enrolment_page(request, enrolment, "Wrong code; try again."), status=400)
    del s[TOTP_PENDING]
    codes = await users.regenerate_recovery_codes(s.user_id)
    body = (
        "<h2>TOTP enrolled</h2><p>Recovery codes (each works once; store them now):</p>"
        f"<p><code>{'</code> <code>'.join(html.escape(c) for c in codes)}</code></p>"
        '<p><a href="/">Back</a> — the next sign-in asks for a code.</p>'
    )
    return page(body)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with auth.lifespan():
        if await users.find_user(DEMO_USER) is None:
            await users.create_user(DEMO_USER, password=DEMO_PASSWORD)
            logger.warning("demo user %s created (password %s)", DEMO_USER, DEMO_PASSWORD)
        yield


app = Starlette(
    routes=[
        Route("/", home),
        Route("/login", login, methods=["POST"]),
        Route("/login/totp", login_totp, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/logout-everywhere", logout_everywhere, methods=["POST"]),
        Route("/sessions/revoke", revoke, methods=["POST"]),
        Route("/totp/enrol", totp_enrol, methods=["POST"]),
        Route("/totp/confirm", totp_confirm, methods=["POST"]),
        Route("/healthz", auth.healthz),
    ],
    lifespan=lifespan,
)
auth.install(app)
