"""The axess demo: a tiny Starlette app on the embedded SQLite store.

Run it with ``./scripts/demo`` and open http://127.0.0.1:8000. Keys are
generated at every start (debug mode), so a restart logs everyone out — a
real deployment loads them with ``Keyring.from_env()``.
"""

from __future__ import annotations

import html
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from axess import Axess, CSRFConfig, Keyring, SessionConfig, csrf_input, get_session
from axess.stores import SQLiteStore

auth = Axess(
    store=SQLiteStore(os.environ.get("AXESS_DEMO_DB", "demo.db")),
    keys=Keyring.generate(),
    # Plain http on 127.0.0.1: browsers would drop a Secure cookie. This is a
    # named weakening and is logged as a WARNING at startup.
    session=SessionConfig(secure=False, idle_timeout=30 * 60),
    csrf=CSRFConfig(secure=False),
    debug=True,
)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>axess demo</title>
<style>body{{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem}}
code{{background:#eee;padding:0 .2rem}} form{{display:inline}} td{{padding:.2rem .6rem}}</style>
</head><body><h1>axess demo</h1>
<p><strong>Development keys:</strong> generated at start; restarting logs everyone out.</p>
{body}
</body></html>"""


def page(body: str) -> HTMLResponse:
    return HTMLResponse(PAGE.format(body=body))


async def home(request: Request) -> Response:
    s = get_session(request)
    visits = int(s.get("visits", 0)) + 1
    s["visits"] = visits
    who = html.escape(s.user_id) if s.user_id else "a guest"
    body = f"<p>You are <strong>{who}</strong> ({html.escape(s.auth_state.kind)}).</p>"
    body += f"<p>Visits in this session: <code>{visits}</code></p>"
    token = csrf_input(request)
    if s.is_authenticated and s.user_id:
        rows = "".join(
            f"<tr><td>{html.escape(i.key_prefix)}</td><td>{html.escape(i.ip_prefix or '?')}</td>"
            f"<td>{html.escape((i.user_agent or '?')[:40])}</td>"
            f"<td>{'this one' if i.storage_key == s.storage_key else ''}</td></tr>"
            for i in await auth.list_sessions(s.user_id)
        )
        body += f"<h2>Your sessions</h2><table>{rows}</table>"
        body += f'<form method="post" action="/logout">{token}<button>Log out</button></form> '
        body += (
            f'<form method="post" action="/logout-everywhere">{token}'
            "<button>Log out everywhere</button></form>"
        )
    else:
        body += (
            f'<form method="post" action="/login">{token}<label>Name <input name="user" required '
            'maxlength="64"></label> <button>Sign in (demo: no password)</button></form>'
        )
    return page(body)


async def login(request: Request) -> Response:
    form = await request.form()
    user = str(form.get("user", "")).strip()[:64]
    if user:
        # Real apps verify credentials first; this demo trusts the name.
        get_session(request).authenticate(user)
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> Response:
    await get_session(request).invalidate()
    return RedirectResponse("/", status_code=303)


async def logout_everywhere(request: Request) -> Response:
    s = get_session(request)
    if s.user_id:
        await auth.invalidate_user(s.user_id)
    return RedirectResponse("/", status_code=303)


app = Starlette(
    routes=[
        Route("/", home),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/logout-everywhere", logout_everywhere, methods=["POST"]),
        Route("/healthz", auth.healthz),
    ],
    lifespan=auth.lifespan,
)
auth.install(app)
