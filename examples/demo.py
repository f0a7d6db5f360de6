"""The axess demo: a product tour on the embedded SQLite store.

Run it with ``./scripts/demo`` (or ``axess demo --port N``) and open
http://127.0.0.1:8000. The demo user ``demo@example.com`` /
``demo-password`` is created at the first start. The tour:

1. **Sign in**, with a wrong password first: the answer never says whether
   the account exists.
2. **Two-factor sign-in**: the account page shows whether TOTP is on. Setting
   it up shows a QR code (inline SVG) and the key as text; it becomes active
   only once a first code is confirmed, and then shows ten recovery codes,
   once. Each change asks for a fresh proof, as the JSON router does:
   setting TOTP up asks for the password; turning it off and new recovery
   codes ask for a code of the factor itself (from the app, or a recovery
   code), since the password is what leaks most. Replacing the authenticator
   is turning TOTP off and setting it up again. These step-up checks count
   on the lockout like a sign-in.
3. **Sessions**: every session of the account with its creation time, last
   activity, device and IP prefix; the current one is marked, the others can
   be revoked.
4. **Lockout and rate limits**: three wrong passwords for one address lock
   it for a minute (a short lock so the tour can show it); the page explains
   the levers, and why a browser that signed in to an account before is a
   trusted origin for it (localhost is not special). Refusals from the
   stack (the rate limiter's 429, a CSRF 403) get the demo's own page through
   ``Axess(refusal_page=...)``.
5. **Restart**: keys live in a key file next to the database (``demo.keys``
   for ``demo.db``), so sessions and TOTP secrets survive a restart.

Settings (environment): ``AXESS_DEMO_DB`` (SQLite file, default ``demo.db``),
``AXESS_DEMO_KEYS`` (key file, default the database path with ``.keys``).
The key file is created with mode 0600 on first start and is for
development only: production keys come from ``Keyring.from_env()``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from axess import (
    Axess,
    CSRFConfig,
    Lever,
    LockoutPolicy,
    LoginFields,
    SessionConfig,
    TOTPCode,
    csrf_input,
    get_session,
)
from axess.authn import (
    Authenticated,
    FactorRequired,
    InvalidCredentials,
    Locked,
    LoginOutcome,
    Password,
    RecoveryCode,
    TOTPEnrolment,
    TOTPSecretUnavailable,
)
from axess.ratelimit import auth_rules
from axess.refusals import Refusal, retry_after_words, wants_html
from axess.stores import SQLiteStore
from examples.demo_keys import load_or_create_keys
from examples.demo_pages import (
    TRUSTED_ORIGINS,
    code_list,
    device_summary,
    esc,
    form,
    hidden,
    lockout_rules,
    moment,
    notice,
    qr_svg,
)
from examples.demo_pages import page as render

logger = logging.getLogger(__name__)

DEMO_USER = "demo@example.com"
DEMO_PASSWORD = "demo-password"
DB_PATH = Path(os.environ.get("AXESS_DEMO_DB") or "demo.db")
KEY_PATH = Path(os.environ.get("AXESS_DEMO_KEYS") or DB_PATH.with_suffix(".keys"))
#: Session key of the TOTP enrolment waiting for its first code.
TOTP_PENDING = "demo.totp_pending"
#: Where the sign-in form carries the identifier. The rate limiter counts the
#: very field /login reads, and a body naming it twice is refused (400).
LOGIN_FIELDS = LoginFields("email")
#: The account lever of the demo: it locks before the rate limiter's
#: 5 attempts per minute per account answer, so the tour can show it.
USER_LEVER = Lever(3, window=15 * 60, lock_for=60, backoff=2.0, max_lock=15 * 60)


def page(
    title: str, body: str, *, status: int = 200, headers: dict[str, str] | None = None
) -> HTMLResponse:
    return render(title, body, account=(DEMO_USER, DEMO_PASSWORD), status=status, headers=headers)


# -- refusals from the stack -----------------------------------------------------------------
REFUSAL_TEXTS = {
    "rate_limited": (
        "Too many requests",
        "<p>The rate limiter allows 5 sign-in attempts per minute for one address and 10 "
        "per minute from one IP address. It answers before any password is checked, so "
        "guessing costs time even before the lockout counts anything.</p>",
    ),
    "csrf_failed": (
        "Request refused",
        "<p>This form came without the CSRF token the demo's own pages carry, or from "
        "another site. A page elsewhere cannot read that token, so it cannot send a form "
        "here in your name. If you left a page open for long or cleared cookies, go back, "
        "reload and try again.</p>",
    ),
}


def refusal_page(request: Request, refusal: Refusal) -> Response | None:
    """The demo's page for a refusal from the stack (``None``: the default,
    e.g. JSON for API clients). Runs outside the session stage: no session."""
    if not wants_html(request.headers.get("accept")):
        return None
    title, explanation = REFUSAL_TEXTS.get(refusal.error, ("Request refused", ""))
    sentence = refusal.detail[:1].upper() + refusal.detail[1:].rstrip(".") + "."
    body = f'<p class="notice" role="alert">{esc(sentence)}'
    if refusal.retry_after is not None:
        wait = retry_after_words(refusal.retry_after)
        body += f' <strong id="retry-after">{esc(wait)}</strong>'
    body += f'</p>{explanation}<p><a href="/">Back to the demo</a></p>'
    return page(title, body, status=refusal.status)


_db_existed = DB_PATH.exists()
keys, keys_created = load_or_create_keys(KEY_PATH)
logger.warning(
    "DEVELOPMENT ONLY: demo keys %s %s (never use a key file like this in production)",
    "created in" if keys_created else "loaded from",
    KEY_PATH,
)
if keys_created and _db_existed:
    logger.warning(
        "%s was made with other keys: its sessions, TOTP secrets and recovery codes no "
        "longer open; delete it to start afresh",
        DB_PATH,
    )

auth = Axess(
    store=SQLiteStore(str(DB_PATH)),
    keys=keys,
    # Plain http on 127.0.0.1: browsers would drop a Secure cookie. These are
    # named weakenings and are logged as WARNINGs at startup. Without Secure
    # the cookies cannot carry the __Host- prefix either: they are axess.sid,
    # axess.csrf and axess.device here (book: Sessions, "Cookie tossing").
    session=SessionConfig(secure=False, idle_timeout=30 * 60),
    csrf=CSRFConfig(secure=False),
    rate_limits=[*auth_rules(login_paths=["/login", "/login/totp"], login_fields=LOGIN_FIELDS)],
    lockout=LockoutPolicy(user=USER_LEVER),
    refusal_page=refusal_page,
    debug=True,
)
assert auth.authn is not None and auth.users is not None
authn, users = auth.authn, auth.users
#: The device cookie's name as the app resolved it (``axess.device`` on plain http).
DEVICE_COOKIE = authn.device_cookie.config.resolved_name

#: The only texts ``/?msg=`` shows (anything else is ignored, so a link
#: cannot put words on the page). Value: (text, is it good news).
NOTICES: dict[str, tuple[str, bool]] = {
    "Invalid credentials": (
        "Invalid credentials. The answer is the same for an unknown address, a wrong "
        "password and a suspended account.",
        False,
    ),
    "Invalid code": (
        "That code was not accepted. Each code works once: after using one, wait for the "
        "next (every 30 seconds). Each recovery code works once too.",
        False,
    ),
    "Signed out": ("Signed out.", True),
    "Signed out everywhere": ("Every session of the account ended, this one too.", True),
    "Session revoked": ("That session ended; its browser is signed out.", True),
    "TOTP turned off": (
        "Two-factor sign-in is off, and the recovery codes no longer work.",
        True,
    ),
    "Start the TOTP setup again": ("Start the TOTP setup again.", False),
    "Password not accepted": (
        "That password was not accepted, so nothing changed. Wrong passwords here count "
        "on the account's lockout even from this browser.",
        False,
    ),
    "Code not accepted": (
        "That code was not accepted, so nothing changed. Each code works once: if you "
        "just signed in with the one the app shows, wait for the next. Wrong codes here "
        "count on the account's lockout.",
        False,
    ),
    "TOTP is already on": (
        "TOTP is already on. To move to another authenticator app, turn TOTP off (with "
        "a code) and set it up again.",
        False,
    ),
    "Browser forgotten": (
        "This browser's device cookie is gone: for every account, its wrong passwords "
        "count on the account lever again.",
        True,
    ),
}


def redirect(msg: str | None = None) -> RedirectResponse:
    assert msg is None or msg in NOTICES
    return RedirectResponse("/" if msg is None else "/?msg=" + quote(msg), status_code=303)


def shown_notice(request: Request) -> str:
    found = NOTICES.get(request.query_params.get("msg", ""))
    return "" if found is None else notice(found[0], ok=found[1])


# -- pages -------------------------------------------------------------------------------
async def home(request: Request) -> Response:
    s = get_session(request)
    if s.is_authenticated and s.user_id:
        return await account_page(request, s.user_id)
    if s.auth_state.kind == "authenticating":
        inner = (
            '<label>Code from your authenticator app, or a recovery code <input name="code" '
            'required maxlength="32" autocomplete="one-time-code"></label>'
        )
        body = (
            shown_notice(request)
            + "<p>Password accepted. This account has two-factor sign-in.</p>"
            + form(request, "/login/totp", "Verify", inner)
            + form(request, "/logout", "Cancel")
        )
        return page("Second step", body)
    return page("Sign in", sign_in_body(request))


def sign_in_body(request: Request) -> str:
    inner = (
        '<label>E-mail <input name="email" type="email" required maxlength="254" '
        'autocomplete="username"></label>'
        '<label>Password <input name="password" type="password" required maxlength="1024" '
        'autocomplete="current-password"></label>'
    )
    trusted = DEVICE_COOKIE in request.cookies
    forget = (
        "<p>This browser holds a device cookie.</p>"
        + form(request, "/device/forget", "Forget this browser")
        if trusted
        else "<p>This browser holds no device cookie yet.</p>"
    )
    return (
        shown_notice(request)
        + form(request, "/login", "Sign in", inner)
        + '<div class="card"><h2>Things to try</h2><ol>'
        "<li>A wrong password, then the right one.</li>"
        "<li>Set up two-factor sign-in (TOTP) with the QR code; sign out and in again.</li>"
        "<li>Sign in from a second browser or a private window, and revoke that session "
        "from the first.</li>"
        "<li>Three wrong passwords for one address: the fourth attempt shows the lockout. "
        "Keep trying and the rate limiter answers instead.</li>"
        "<li>Restart the demo: you stay signed in, and TOTP keeps working.</li></ol></div>"
        '<div class="card" id="trusted-origins"><h2>Why localhost may never lock</h2>'
        + TRUSTED_ORIGINS
        + forget
        + "</div>"
    )


async def account_page(request: Request, user_id: str) -> Response:
    s = get_session(request)
    user = await users.get_user(user_id)
    factors = await users.store.get_factors(user_id)
    now = auth.clock.time()
    name = user.identifier if user else user_id
    body = shown_notice(request) + f"<p>Signed in as <strong>{esc(name)}</strong>.</p>"
    if factors.totp_secret is None:
        two_factor = totp_off_card(request)
    else:
        two_factor = totp_on_card(request, factors.recovery_codes)
    body += (
        f'<div class="card" id="two-factor"><h2>Two-factor sign-in</h2>{two_factor}</div>'
        "<h2>Your sessions</h2>"
    )
    for info in await auth.list_sessions(user_id):
        current = info.storage_key == s.storage_key
        body += (
            f'<div class="card session{" current" if current else ""}">'
            f"<dl><dt>Device</dt><dd>{esc(device_summary(info.user_agent))}</dd>"
            f"<dt>IP prefix</dt><dd>{esc(info.ip_prefix or 'unknown')}</dd>"
            f"<dt>Signed in</dt><dd>{esc(moment(info.created_at, now))}</dd>"
            f"<dt>Last seen</dt><dd>{esc(moment(info.last_seen_at, now))}</dd></dl>"
        )
        if current:
            body += "<p><strong>This session</strong> (this browser).</p>"
        else:
            body += form(request, "/sessions/revoke", "Revoke", hidden("key", info.storage_key))
        body += "</div>"
    body += (
        "<p>"
        + form(request, "/logout", "Log out", inline=True)
        + form(request, "/logout-everywhere", "Log out everywhere", inline=True)
        + "</p>"
    )
    return page("Your account", body)


def totp_off_card(request: Request) -> str:
    inner = (
        '<label>Your password, to confirm <input name="password" type="password" '
        'required maxlength="1024" autocomplete="current-password"></label>'
    )
    return (
        '<p id="totp-status">TOTP is <strong>off</strong>: signing in needs only the '
        "password.</p>"
        + form(request, "/totp/enrol", "Set up TOTP", inner)
        + '<p class="muted">Setting up asks for your password again: whoever has only this '
        "session (a copied cookie, a laptop left unlocked) must not be able to tie your "
        "account to an authenticator of their own.</p>"
    )


def totp_on_card(request: Request, recovery_codes: int) -> str:
    # One form, one code field: each button posts it to its own action.
    return (
        '<p id="totp-status">TOTP is <strong>on</strong>: signing in asks for a code after '
        f"the password. Recovery codes left: {recovery_codes}.</p>"
        f'<form method="post" action="/recovery-codes">{csrf_input(request)}'
        '<label>A code from your authenticator app, or a recovery code <input name="code" '
        'required maxlength="32" autocomplete="one-time-code"></label>'
        '<button formaction="/recovery-codes">New recovery codes</button>'
        '<button formaction="/totp/disable">Turn off TOTP</button></form>'
        '<p class="muted">These ask for a code, not your password. The password is the '
        "factor most likely to have leaked (a phishing page, a reused password), so it "
        "alone must not be able to remove or reissue the second factor. A recovery code "
        "used here is spent. To move to another authenticator app, turn TOTP off and set "
        "it up again.</p>"
    )


def locked_page(locked: Locked) -> Response:
    body = (
        '<p class="notice" role="alert">Too many failed attempts. Try again in '
        f'<strong id="retry-after">{locked.retry_after}</strong> seconds.</p>'
        "<h2>What happened</h2>"
        + lockout_rules(
            user_threshold=USER_LEVER.threshold,
            user_lock=int(USER_LEVER.lock_for),
            user_max_lock=int(USER_LEVER.cap),
        )
        + '<h2 id="trusted-origins">Trusted origins</h2>'
        + TRUSTED_ORIGINS
        + '<p><a href="/">Back to sign-in</a></p>'
    )
    headers = {"Retry-After": str(locked.retry_after)}
    return page("Sign-in locked for now", body, status=429, headers=headers)


def after_login(outcome: LoginOutcome, *, second_step: bool) -> Response:
    if isinstance(outcome, Authenticated | FactorRequired):
        return redirect()
    if isinstance(outcome, Locked):
        return locked_page(outcome)
    return redirect("Invalid code" if second_step else "Invalid credentials")


# -- sign-in and out ---------------------------------------------------------------------
async def login(request: Request) -> Response:
    email = await LOGIN_FIELDS.read(request)  # raises AmbiguousIdentifier: a 400
    password = str((await request.form()).get("password", ""))
    # Refused whole, never cut: the rate limiter counted the field as sent,
    # and a cut one would be a new bucket per padding for the same account.
    if not password or len(email) > 254 or len(password) > 1024:
        return redirect("Invalid credentials")
    return after_login(await authn.login_password(request, email, password), second_step=False)


def one_time_code(text: str) -> TOTPCode | RecoveryCode:
    """What the one code field holds: a TOTP code when it is digits, else a
    recovery code (an empty field is a recovery code that never matches)."""
    code = text.strip()[:32]
    digits = code.replace(" ", "").replace("-", "")
    # Six digits are a TOTP code; recovery codes are ten letters and digits.
    if digits.isdigit() and len(digits) <= 8:
        return TOTPCode(code)
    return RecoveryCode(code or "-")


def totp_unavailable_page() -> Response:
    body = (
        '<p class="notice" role="alert">This account\'s TOTP key was sealed with keys '
        "this demo no longer has (the key file was replaced or deleted), so no code can "
        "be checked. Recovery codes depend on the same keys.</p><p>To start afresh, stop "
        f"the demo and delete <code>{esc(DB_PATH.name)}</code>.</p>"
    )
    return page("Code check unavailable", body, status=503)


async def login_totp(request: Request) -> Response:
    credential = one_time_code(str((await request.form()).get("code", "")))
    try:
        outcome = await authn.verify_factor(request, credential)
    except TOTPSecretUnavailable:
        return totp_unavailable_page()
    return after_login(outcome, second_step=True)


async def logout(request: Request) -> Response:
    was_signed_in = get_session(request).is_authenticated
    await authn.logout(request)
    return redirect("Signed out" if was_signed_in else None)


async def logout_everywhere(request: Request) -> Response:
    s = get_session(request)
    if s.is_authenticated and s.user_id:
        await auth.invalidate_user(s.user_id)
        return redirect("Signed out everywhere")
    return redirect()


async def revoke(request: Request) -> Response:
    s = get_session(request)
    key = str((await request.form()).get("key", ""))
    if s.is_authenticated and s.user_id and key != s.storage_key:
        # Only the user's own sessions can be revoked from here.
        mine = {i.storage_key for i in await auth.list_sessions(s.user_id)}
        if key in mine:
            await auth.invalidate_session(key)
            return redirect("Session revoked")
    return redirect()


async def forget_device(request: Request) -> Response:
    response = redirect("Browser forgotten")
    device = authn.device_cookie.config
    response.delete_cookie(
        DEVICE_COOKIE, path=device.path, secure=device.secure, httponly=True, samesite="lax"
    )
    return response


# -- two-factor settings -------------------------------------------------------------------
# The policy of the JSON router (book: FastAPI auth routes, "a fresh proof"):
# setting TOTP up asks for the password; turning it off and new recovery codes
# ask for a code of the factor being changed, as the password is what leaks.
async def signed_in_user(request: Request, *, totp: bool) -> str | Response:
    """The signed-in user's id when their TOTP is on (``totp``) or off (not
    ``totp``), else the response to send. Checked before any proof is read,
    so a change that cannot happen counts on no lever."""
    s = get_session(request)
    if not (s.is_authenticated and s.user_id):
        return redirect()
    totp_on = (await users.store.get_factors(s.user_id)).totp_secret is not None
    if totp_on and not totp:
        return redirect("TOTP is already on")
    if totp and not totp_on:
        return redirect()
    return s.user_id


async def step_up(request: Request, *, field: str) -> Response | None:
    """``None`` once the form's ``field`` (``password``, or ``code``: a TOTP
    or recovery code) proves the signed-in user again
    (:meth:`AuthnService.reverify`: counted on the lockout), else the
    response to send. An empty field, or a password no one can have, is
    refused without counting."""
    raw = str((await request.form()).get(field, ""))
    proof: Password | TOTPCode | RecoveryCode | None = None
    if field == "password":
        with contextlib.suppress(ValueError):  # empty, too long, not Unicode
            proof = Password(raw)
    elif raw.strip():
        proof = one_time_code(raw)
    try:
        outcome = InvalidCredentials() if proof is None else await authn.reverify(request, proof)
    except TOTPSecretUnavailable:
        return totp_unavailable_page()
    if isinstance(outcome, Authenticated):
        return None
    if isinstance(outcome, Locked):
        return locked_page(outcome)
    return redirect("Password not accepted" if field == "password" else "Code not accepted")


async def stepped_up_user(request: Request, *, totp: bool, field: str) -> str | Response:
    """The signed-in user's id (see :func:`signed_in_user`) once ``field``
    proves them again (see :func:`step_up`), else the response to send."""
    user_id = await signed_in_user(request, totp=totp)
    if isinstance(user_id, Response):
        return user_id
    refused = await step_up(request, field=field)
    return user_id if refused is None else refused


def enrolment_body(request: Request, enrolment: TOTPEnrolment, error: str = "") -> str:
    inner = (
        '<label>The code your app shows <input name="code" required maxlength="32" '
        'autocomplete="one-time-code" inputmode="numeric"></label>'
    )
    return (
        (notice(error) if error else "")
        + "<p>Scan this QR code with an authenticator app:</p>"
        + qr_svg(enrolment.uri)
        + '<p>Or type the key: <code id="totp-secret">'
        + esc(enrolment.secret)
        + "</code></p><p>Then enter the code the app shows. TOTP is switched on only once "
        "a code is accepted; until then nothing changes.</p>"
        + form(request, "/totp/confirm", "Activate", inner)
        + '<p><a href="/">Cancel</a></p>'
    )


async def totp_enrol(request: Request) -> Response:
    user_id = await stepped_up_user(request, totp=False, field="password")
    if isinstance(user_id, Response):
        return user_id
    s = get_session(request)
    # A set-up still waiting (another tab) is shown again rather than
    # replaced: its QR code may be in the authenticator already.
    waiting = s.get(TOTP_PENDING)
    enrolment = None
    if isinstance(waiting, str):
        enrolment = await users.pending_totp_enrolment(user_id, waiting)
    if enrolment is None:
        enrolment = await users.begin_totp_enrolment(user_id)
        # Only the sealed token is kept; nothing is stored until a code is accepted.
        s[TOTP_PENDING] = enrolment.pending
    return page("Set up TOTP", enrolment_body(request, enrolment))


async def totp_confirm(request: Request) -> Response:
    s = get_session(request)
    if not (s.is_authenticated and s.user_id):
        return redirect()
    pending = s.get(TOTP_PENDING)
    code = str((await request.form()).get("code", ""))[:32]
    if (await users.store.get_factors(s.user_id)).totp_secret is not None:
        # Turned on meanwhile (another tab, the form sent again): replacing
        # it takes a code first.
        s.pop(TOTP_PENDING, None)
        return redirect("TOTP is already on")
    if not isinstance(pending, str):
        return redirect("Start the TOTP setup again")
    user_id = s.user_id
    enrolment = await users.pending_totp_enrolment(user_id, pending)
    if enrolment is None:  # expired (or keys gone): start again
        del s[TOTP_PENDING]
        body = notice("The setup expired; nothing changed.") + (
            '<p><a href="/">Start again from your account</a></p>'
        )
        return page("Set up TOTP", body, status=400)
    # Each code tried is a guess of the login's budget (a stolen session
    # must not try them all); an empty field is refused without counting.
    outcome: Authenticated | InvalidCredentials | Locked = InvalidCredentials()
    if code.strip():
        outcome = await authn.check_code(
            request,
            lambda: users.confirm_totp_enrolment(
                user_id, pending, code, actor=user_id, replace=False
            ),
            reason="totp_enrolment",
        )
    if isinstance(outcome, Locked):
        return locked_page(outcome)
    if not isinstance(outcome, Authenticated):
        if (await users.store.get_factors(user_id)).totp_secret is not None:
            s.pop(TOTP_PENDING, None)  # the form was sent twice: the other one won
            return redirect("TOTP is already on")
        body = enrolment_body(request, enrolment, "Wrong code; try again.")
        return page("Set up TOTP", body, status=400)
    del s[TOTP_PENDING]
    codes = await users.regenerate_recovery_codes(s.user_id, actor=s.user_id)
    lead = "From now on, signing in asks for a code after the password."
    return recovery_codes_page("TOTP is on", lead, codes)


def recovery_codes_page(title: str, lead: str, codes: list[str]) -> Response:
    body = (
        notice(lead, ok=True)
        + "<p>Recovery codes: each works once instead of a code, for when the phone is "
        "lost. They are shown <strong>only now</strong>; store them somewhere safe. Any "
        "earlier codes no longer work.</p>"
        + code_list(codes)
        + '<p><a href="/">Back to your account</a></p>'
    )
    return page(title, body)


async def totp_disable(request: Request) -> Response:
    user_id = await stepped_up_user(request, totp=True, field="code")
    if isinstance(user_id, Response):
        return user_id
    await users.disable_totp(user_id, actor=user_id)  # the recovery codes go too
    return redirect("TOTP turned off")


async def new_recovery_codes(request: Request) -> Response:
    user_id = await stepped_up_user(request, totp=True, field="code")
    if isinstance(user_id, Response):
        return user_id
    codes = await users.regenerate_recovery_codes(user_id, actor=user_id)
    return recovery_codes_page("New recovery codes", "Your code was accepted.", codes)


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
        Route("/device/forget", forget_device, methods=["POST"]),
        Route("/totp/enrol", totp_enrol, methods=["POST"]),
        Route("/totp/confirm", totp_confirm, methods=["POST"]),
        Route("/totp/disable", totp_disable, methods=["POST"]),
        Route("/recovery-codes", new_recovery_codes, methods=["POST"]),
        Route("/healthz", auth.healthz),
    ],
    lifespan=lifespan,
)
auth.install(app)
