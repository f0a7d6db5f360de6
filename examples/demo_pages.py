"""HTML for the demo: one layout, small helpers, the explanatory texts.

Every value that comes from a request, the store or the user agent goes
through :func:`esc`. Pages carry a strict Content-Security-Policy (no
scripts, no external requests) and ``Cache-Control: no-store``: some of them
show secrets (the TOTP key, recovery codes).
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping

import segno
from starlette.requests import Request
from starlette.responses import HTMLResponse

from axess import csrf_input

esc = html.escape

CSS = """
*{box-sizing:border-box}
body{font:16px/1.5 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#f6f6f4}
header{background:#23303b;color:#fff;padding:.6rem 1rem}
header a{color:#fff;text-decoration:none;font-weight:600}
main{max-width:42rem;margin:0 auto;padding:.5rem 1rem 2rem}
h1{font-size:1.5rem}h2{font-size:1.25rem;margin-top:1.5rem}h3{font-size:1.05rem}
.dev{background:#fff3cd;border:1px solid #e2c15b;border-radius:.4rem;padding:.5rem .75rem;
font-size:.9rem}
.notice{background:#fff;border-left:4px solid #b3261e;padding:.5rem .75rem;margin:1rem 0}
.notice.ok{border-left-color:#1e7b34}
.card{background:#fff;border:1px solid #ddd;border-radius:.5rem;padding:.75rem 1rem;
margin:.75rem 0}
.card>h2:first-child{margin-top:.25rem}
.current{border-color:#1e7b34}
code{background:#ecece8;padding:0 .25rem;border-radius:.2rem;overflow-wrap:anywhere}
label{display:block;margin:.6rem 0}
input{display:block;width:100%;max-width:22rem;font:inherit;padding:.45rem;margin-top:.2rem}
button{font:inherit;padding:.45rem .9rem;margin:.25rem .4rem .25rem 0;cursor:pointer}
form.inline{display:inline}
.qr svg{display:block;width:100%;max-width:15rem;height:auto;background:#fff}
ul.codes{list-style:none;padding:0;display:grid;grid-template-columns:repeat(2,minmax(0,1fr));
gap:.3rem;font-family:ui-monospace,monospace}
dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.1rem .8rem;margin:.3rem 0}
dt{color:#555}dd{margin:0;overflow-wrap:anywhere}
.muted{color:#555;font-size:.9rem}
"""

#: No scripts at all; styles only from this page; forms post back here.
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · axess demo</title><style>{css}</style></head>
<body><header><a href="/">axess demo</a></header><main>
<p class="dev"><strong>DEVELOPMENT ONLY.</strong> Keys come from a local key file, cookies
are sent over plain http. Demo account: <code>{user}</code> / <code>{password}</code>.</p>
<h1>{title}</h1>
{body}
</main></body></html>"""


def page(
    title: str,
    body: str,
    *,
    account: tuple[str, str],
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """A complete page; ``title`` is escaped here, ``body`` must already be."""
    text = LAYOUT.format(
        title=esc(title),
        css=CSS,
        body=body,
        user=esc(account[0]),
        password=esc(account[1]),
    )
    response = HTMLResponse(text, status_code=status, headers=dict(headers or {}))
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def form(
    request: Request, action: str, button: str, inner: str = "", *, inline: bool = False
) -> str:
    """A POST form to ``action`` (a fixed path) with the CSRF token field."""
    cls = ' class="inline"' if inline else ""
    return (
        f'<form method="post" action="{esc(action)}"{cls}>{csrf_input(request)}{inner}'
        f"<button>{esc(button)}</button></form>"
    )


def hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{esc(name)}" value="{esc(value)}">'


def notice(text: str, *, ok: bool = False) -> str:
    return f'<p class="notice{" ok" if ok else ""}" role="status">{esc(text)}</p>'


def qr_svg(uri: str) -> str:
    """``uri`` as an inline SVG QR code (no external request, no script)."""
    svg = segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff", omitsize=True)
    return f'<div class="qr" role="img" aria-label="QR code of the TOTP key">{svg}</div>'


def code_list(codes: Iterable[str]) -> str:
    items = "".join(f"<li><code>{esc(c)}</code></li>" for c in codes)
    return f'<ul class="codes" id="recovery-codes">{items}</ul>'


def moment(ts: float | None, now: float) -> str:
    """``2024-05-01 12:00:03 UTC (4 min ago)``; ``unknown`` for ``None``."""
    if ts is None:
        return "unknown"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
    age = max(0.0, now - ts)
    if age < 60:
        ago = "just now"
    elif age < 3600:
        ago = f"{int(age // 60)} min ago"
    elif age < 86_400:
        ago = f"{int(age // 3600)} h ago"
    else:
        ago = f"{int(age // 86_400)} d ago"
    return f"{stamp} ({ago})"


# First match wins: Edge and Opera also name Chrome, Chrome also names Safari,
# Android also names Linux.
_BROWSERS = (
    ("Edg/", "Edge"),
    ("OPR/", "Opera"),
    ("Firefox/", "Firefox"),
    ("HeadlessChrome/", "Headless Chrome"),
    ("Chrome/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("Safari/", "Safari"),
    ("curl/", "curl"),
    ("python-httpx/", "httpx"),
)
_SYSTEMS = (
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
)


def device_summary(user_agent: str | None) -> str:
    """``Firefox on Linux`` from a User-Agent header; vague on purpose."""
    if not user_agent:
        return "unknown device"
    browser = next((name for token, name in _BROWSERS if token in user_agent), "other client")
    system = next((name for token, name in _SYSTEMS if token in user_agent), None)
    return browser if system is None else f"{browser} on {system}"


# -- explanations ------------------------------------------------------------------------
def lockout_rules(*, user_threshold: int, user_lock: int, user_max_lock: int) -> str:
    return (
        "<p>axess counts failed sign-ins on three levers: per account (in this demo "
        f"{user_threshold} failures within 15 minutes lock it for {user_lock} seconds, "
        f"doubling with each further lockout up to {user_max_lock // 60} minutes; the "
        "production default is 5 failures and 15 minutes, up to a day), per IP address "
        "(50 failures in 15 minutes) and per tenant. The answer is the same whichever "
        "lever locked and whether or not the account exists, so this page does not tell "
        "anyone which addresses have accounts.</p>"
        "<p>In front of the lockout, the rate limiter allows 5 sign-in attempts per minute "
        "per account and 10 per minute per IP address; beyond that it answers "
        "&ldquo;too many requests&rdquo; before any password is checked.</p>"
    )


TRUSTED_ORIGINS = """<p>A browser that completed a sign-in gets a <em>device cookie</em>
(<code>axess.device</code> on this plain-http demo, <code>__Host-axess.device</code> over
https). For that account it is then a <em>trusted origin</em>: its
wrong passwords do not count on the account lever, so someone guessing elsewhere can lock
the account but not lock you out of it. They still count on the IP lever, and second
factors (codes) always count.</p>
<p>Localhost is not treated specially. axess trusts a browser, not a network (trusting the
/24 of an address is a separate, off-by-default setting:
<code>LockoutPolicy(trust_ip_prefix=True)</code>). Every browser on this machine reaches the
demo from 127.0.0.1, so all of them share one IP lever. So: after signing in here, wrong
passwords for that same account from this browser never show the lockout: to see it,
use another address, a private window, or &ldquo;Forget this browser&rdquo; on the sign-in
page.</p>
<p>In production behind a reverse proxy, list the proxy in <code>TrustedProxies</code>:
otherwise every client shares the proxy's address and one IP lever.</p>"""
