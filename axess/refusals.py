"""Refusals: the one shape of every "no" axess answers (book: Errors and refusals).

A :class:`Refusal` is what was refused and why: status, a ``snake_case``
code, one human sentence, and ``Retry-After`` seconds when waiting helps.
Every stage, guard and dependency answers through here, so a client sees
one JSON shape whoever refused it::

    {"error": "rate_limited", "detail": "too many requests", "retry_after": 30}

A browser (``Accept`` ranks ``text/html`` above ``application/json``) gets
a small HTML page instead, with the wait in words. An app may render its
own through a *refusal page* hook, ``Axess(refusal_page=...)``: a callable
``(request, refusal) -> Response | None`` (or an awaitable of one); ``None``
keeps the default. A hook that fails is logged and the default is sent.

Nothing here runs on allowed requests: the ``Accept`` header is read and
the hook looked up only when a refusal is sent.
"""

from __future__ import annotations

import html
import inspect
import logging
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from axess.errors import StoreError

logger = logging.getLogger(__name__)

#: ``app.state`` attribute where ``Axess.install`` puts the refusal page hook
#: (guards and dependencies answer from inside the app and look it up there).
APP_STATE_ATTR: Final = "axess_refusal_page"

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused request: ``status``, ``error`` (a ``snake_case`` code),
    ``detail`` (one human sentence), ``retry_after`` (whole seconds, sent
    as ``Retry-After`` too; ``None`` when there is nothing to wait for) and
    extra response ``headers`` (lowercase names, e.g. the RateLimit fields)."""

    status: int
    error: str
    detail: str
    retry_after: int | None = None
    headers: Headers = ()


#: The app-supplied renderer: ``(request, refusal)`` → a response, or
#: ``None`` for the default page or body. May be a coroutine function.
RefusalPage = Callable[[Request, Refusal], Response | Awaitable[Response | None] | None]


def refusal_body(refusal: Refusal) -> dict[str, object]:
    """The JSON body: ``error`` and ``detail``, plus ``retry_after`` when the
    answer carries ``Retry-After``."""
    body: dict[str, object] = {"error": refusal.error, "detail": refusal.detail}
    if refusal.retry_after is not None:
        body["retry_after"] = refusal.retry_after
    return body


def refusal_headers(refusal: Refusal) -> list[tuple[bytes, bytes]]:
    """Every refusal's headers but the content ones: never cached, varies by
    ``Accept`` (the body does), ``Retry-After`` when set, then the extras."""
    out = [(b"cache-control", b"no-store"), (b"vary", b"Accept")]
    if refusal.retry_after is not None:
        out.append((b"retry-after", str(refusal.retry_after).encode("ascii")))
    out.extend(refusal.headers)
    return out


# -- content negotiation --------------------------------------------------------------

# RFC 9110 qvalue: 0, 0.5, 1, 1.000 (at most three decimals, never above 1).
_QVALUE: Final = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")


def _quality(accept: str, media_type: str) -> float:
    """The q the ``Accept`` value gives ``media_type`` (``type/subtype``,
    lowercase): that of the most specific matching range, 0 when none."""
    kind = media_type.split("/", 1)[0] + "/*"
    best_rank, best_q = -1, 0.0
    for part in accept.split(","):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        rank = 2 if media == media_type else 1 if media == kind else 0 if media == "*/*" else -1
        if rank < best_rank or rank < 0:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                q = float(value) if _QVALUE.fullmatch(value) else 0.0
                break
        if rank > best_rank or q > best_q:
            best_rank, best_q = rank, q
    return best_q


def wants_html(accept: str | bytes | None) -> bool:
    """True when ``accept`` ranks ``text/html`` strictly above
    ``application/json`` (a browser loading a page). A missing header,
    ``*/*`` alone, a tie or anything unreadable means JSON."""
    if not accept:
        return False
    if isinstance(accept, bytes):
        accept = accept.decode("latin-1")
    html_q = _quality(accept, "text/html")
    return html_q > 0 and html_q > _quality(accept, "application/json")


def _accept(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"accept":
            return bytes(value)
    return None


# -- the default page -----------------------------------------------------------------


def retry_after_words(seconds: int) -> str:
    """``Retry-After`` for people: "Try again in 2 minutes." Rounded up, so
    never sooner than allowed."""
    seconds = max(1, seconds)
    if seconds < 60:
        count, unit = seconds, "second"
    elif (count := math.ceil(seconds / 60)) < 60:
        unit = "minute"
    elif (count := math.ceil(seconds / 3600)) < 24:
        unit = "hour"
    else:
        count, unit = math.ceil(seconds / 86400), "day"
    return f"Try again in {count} {unit}{'' if count == 1 else 's'}."


_HEADLINES: Final = {
    400: "This request could not be read",
    401: "Please sign in",
    403: "Not allowed",
    429: "Too many attempts",
    503: "Temporarily unavailable",
}

_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{status} {phrase}</title>
<style>body{{font:1.05rem/1.5 system-ui,sans-serif;max-width:32rem;margin:3rem auto;\
padding:0 1rem;color:#222;background:#fff}}h1{{font-size:1.4rem}}small{{color:#666}}</style>
</head><body><main>
<h1>{headline}</h1>
<p>{detail}</p>{wait}
<p><a href="/">Back to the home page</a></p>
<p><small>{status} {phrase}</small></p>
</main></body></html>
"""


def html_page(refusal: Refusal) -> str:
    """The default HTML page: self-contained, readable at phone width, the
    detail escaped, the wait in words."""
    try:
        phrase = HTTPStatus(refusal.status).phrase
    except ValueError:
        phrase = "Error"
    detail = refusal.detail[:1].upper() + refusal.detail[1:]
    if not detail.endswith((".", "!", "?")):
        detail += "."
    wait = ""
    if refusal.retry_after is not None:
        wait = f"\n<p><strong>{retry_after_words(refusal.retry_after)}</strong></p>"
    return _PAGE.format(
        status=refusal.status,
        phrase=html.escape(phrase),
        headline=html.escape(_HEADLINES.get(refusal.status, phrase)),
        detail=html.escape(detail),
        wait=wait,
    )


# -- answering ------------------------------------------------------------------------


async def disconnected() -> Message:
    """A ``receive`` for a refusal sent where the request's own is out of
    reach (at response start): the body reads as gone."""
    return {"type": "http.disconnect"}


def page_of(scope: Scope) -> RefusalPage | None:
    """The hook ``Axess.install`` put on the app running ``scope``, if any."""
    state = getattr(scope.get("app"), "state", None)
    page: RefusalPage | None = getattr(state, APP_STATE_ATTR, None)
    return page


def _default(
    refusal: Refusal, html_wanted: bool, headers: Sequence[tuple[bytes, bytes]]
) -> Response:
    if html_wanted:
        response = Response(html_page(refusal), refusal.status, media_type="text/html")
    else:
        response = JSONResponse(refusal_body(refusal), refusal.status)
    response.raw_headers.extend(headers)
    return response


async def _from_hook(
    page: RefusalPage, scope: Scope, receive: Receive, refusal: Refusal
) -> Response | None:
    """The hook's response, or ``None`` (declined, failed or not a response)."""
    try:
        result: object = page(Request(scope, receive), refusal)
        if inspect.isawaitable(result):
            result = await result
    except Exception:
        logger.exception("refusal page hook failed; sending the default %d", refusal.status)
        return None
    if result is None or isinstance(result, Response):
        return result
    logger.error(
        "refusal page hook returned %s, not a Response or None; sending the default %d",
        type(result).__name__,
        refusal.status,
    )
    return None


def _keep_headers(response: Response, headers: Sequence[tuple[bytes, bytes]]) -> None:
    """Add to the hook's ``response`` the refusal headers it lacks (a name it
    sets itself wins), and ``Accept`` to its ``Vary``."""
    present = {name for name, _ in response.raw_headers}
    for name, value in headers:
        if name == b"vary":
            response.headers.add_vary_header(value.decode("latin-1"))
        elif name not in present:
            response.raw_headers.append((name, value))


async def refusal_response(
    scope: Scope,
    receive: Receive,
    refusal: Refusal,
    *,
    page: RefusalPage | None = None,
    headers: Sequence[tuple[bytes, bytes]] | None = None,
) -> Response:
    """The response for ``refusal`` on this request: the hook's (``page``,
    else the app's), else the default HTML page or JSON body by ``Accept``.
    ``headers`` replaces :func:`refusal_headers` (a response's own lines)."""
    if headers is None:
        headers = refusal_headers(refusal)
    if page is None:
        page = page_of(scope)
    if page is not None:
        response = await _from_hook(page, scope, receive, refusal)
        if response is not None:
            _keep_headers(response, headers)
            return response
    return _default(refusal, wants_html(_accept(scope)), headers)


async def send_refusal(
    scope: Scope,
    receive: Receive,
    send: Send,
    refusal: Refusal,
    *,
    page: RefusalPage | None = None,
) -> None:
    """Answer an HTTP request with ``refusal`` (what stages call; see
    :func:`refusal_response`)."""
    response = await refusal_response(scope, receive, refusal, page=page)
    await response(scope, receive, send)


class RefusalResponse(JSONResponse):
    """A refusal as a Starlette response, negotiated when it is sent.

    Its attributes (``status_code``, ``body``, ``headers``) are the JSON
    form; sent to a browser, or on an app with a refusal page hook, it
    becomes what :func:`refusal_response` picks. Headers added to it
    (cookies) are kept either way.
    """

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal
        super().__init__(refusal_body(refusal), refusal.status)
        self.raw_headers.extend(refusal_headers(refusal))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        page = page_of(scope)
        if page is None and not wants_html(_accept(scope)):
            await super().__call__(scope, receive, send)
            return
        own = [h for h in self.raw_headers if h[0] not in (b"content-type", b"content-length")]
        response = await refusal_response(scope, receive, self.refusal, page=page, headers=own)
        if self.background is not None:
            response.background = self.background
        await response(scope, receive, send)


class Refused(HTTPException):
    """Raise from a dependency or endpoint to answer with ``refusal``.

    ``Axess.install`` registers :func:`refused_handler`, which sends the
    :class:`RefusalResponse`. Without it, Starlette and FastAPI still
    answer with the same status and headers (their own body).
    """

    def __init__(self, refusal: Refusal) -> None:
        str_headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in refusal_headers(refusal)
            if k != b"vary"
        }
        super().__init__(refusal.status, refusal.detail, str_headers)
        self.refusal = refusal


def store_unavailable_handler(
    retry_after: int = 5,
) -> Callable[[Request, Exception], Awaitable[Response]]:
    """An exception handler answering a :class:`~axess.errors.StoreError`
    that app code let through (``session.invalidate()``, an admin call, a
    store read in a route) with the 503 and ``Retry-After`` axess answers
    its own store outages with, never a 500. ``Axess.install`` registers
    one with the session configuration's ``retry_after``."""

    async def handler(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StoreError):
            raise exc
        logger.warning("store unavailable in the app (%s); answering 503", exc)
        detail = "temporarily unavailable"
        return RefusalResponse(Refusal(503, "service_unavailable", detail, retry_after))

    return handler


async def refused_handler(request: Request, exc: Exception) -> Response:
    """Exception handler answering :class:`Refused` with its refusal."""
    if isinstance(exc, Refused):
        return RefusalResponse(exc.refusal)
    raise exc
