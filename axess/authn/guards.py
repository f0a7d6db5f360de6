"""Route guards (book: Login): ``require_authn`` and ``require_partial_authn``.

A guard is both a FastAPI dependency and a Starlette route decorator::

    @app.get("/me")
    async def me(session: Session = Depends(require_authn())): ...

    @require_authn(login_url="/login")
    async def dashboard(request: Request) -> Response: ...

Refusal: ``401`` ``unauthenticated`` (JSON, or the HTML page for a browser:
book, Errors and refusals); with ``login_url``,
``GET``/``HEAD`` requests are redirected (``303``) to
``login_url?next=<path>`` instead — ``next`` is only ever a same-origin
relative path (:func:`safe_next`). As a dependency the guard raises
:class:`AuthnRequired`; register :func:`authn_exception_handler` (``Axess``
does) so the response is exactly the one above — without it FastAPI still
answers with the same status and headers.

``require_partial_authn`` admits sessions in the middle of a multi-factor
login (``Authenticating``), for the "enter your code" page; a fully
authenticated or guest session is refused.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Final, overload
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException, WebSocketException
from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response
from starlette.status import WS_1008_POLICY_VIOLATION
from starlette.types import Scope

from axess.refusals import Refusal, RefusalResponse
from axess.session import data as d
from axess.session.handle import Session, get_session

Endpoint = Callable[[Request], Awaitable[Response]] | Callable[[Request], Response]

UNAUTHENTICATED: Final = Refusal(401, "unauthenticated", "authentication required")
_REDIRECT_METHODS: Final = frozenset({"GET", "HEAD"})


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a same-origin relative path (``/a/b?c``), else ``None``.

    Refuses scheme-relative (``//evil``) and absolute (``https://evil``)
    URLs, backslashes (browsers read ``/\\evil`` as ``//evil``), control
    characters and anything not starting with a single ``/``.
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target):
        return None
    if "://" in target.split("?", 1)[0]:
        return None
    return target


def _full_path(scope: Scope) -> str:
    """The path the browser asked for. Servers and Starlette's ``Mount`` put
    the ``root_path`` at the start of ``path`` already (ASGI's current
    rule); an older server leaves it out, and it is added back."""
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    return path if path.startswith(root) else root + path


class AuthnRequired(HTTPException):
    """Raised by a guard used as a dependency; ``response`` is the refusal."""

    def __init__(self, response: Response) -> None:
        headers = {k: v for k, v in response.headers.items() if k.lower() == "location"}
        super().__init__(response.status_code, "authentication required", headers or None)
        self.response = response


async def authn_exception_handler(request: Request, exc: Exception) -> Response:
    """Exception handler answering :class:`AuthnRequired` with its response."""
    if isinstance(exc, AuthnRequired):
        return exc.response
    raise exc


class AuthnGuard:
    """What :func:`require_authn` / :func:`require_partial_authn` return."""

    def __init__(self, *, partial: bool, login_url: str | None) -> None:
        self.partial = partial
        self.login_url = login_url
        # FastAPI reads the dependency's parameters from this signature.
        self.__signature__ = inspect.Signature(
            [
                # HTTPConnection: FastAPI fills it on websocket routes too
                # (a Request parameter only on HTTP ones).
                inspect.Parameter(
                    "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=HTTPConnection
                )
            ]
        )

    def allows(self, session: Session) -> bool:
        state = session.auth_state
        if self.partial:
            return isinstance(state, d.Authenticating)
        return isinstance(state, d.Authenticated)

    def refusal(self, conn: HTTPConnection) -> Response:
        method = conn.scope.get("method", "GET")
        if self.login_url is not None and method in _REDIRECT_METHODS:
            path = _full_path(conn.scope)
            query = conn.scope.get("query_string", b"").decode("latin-1")
            path += f"?{query}" if query else ""
            target = safe_next(path) or "/"
            sep = "&" if "?" in self.login_url else "?"
            location = f"{self.login_url}{sep}next={quote(target, safe='/')}"
            return RedirectResponse(
                location, status_code=303, headers={"Cache-Control": "no-store"}
            )
        return RefusalResponse(UNAUTHENTICATED)

    def check(self, conn: HTTPConnection) -> Session:
        """The session if the guard admits it; raises :class:`AuthnRequired` otherwise."""
        session = get_session(conn)
        if not self.allows(session):
            if conn.scope["type"] == "websocket":
                # No response to send on a handshake: close it, before accept.
                raise WebSocketException(WS_1008_POLICY_VIOLATION, "unauthenticated")
            raise AuthnRequired(self.refusal(conn))
        return session

    @overload
    def __call__(self, request: HTTPConnection) -> Session: ...

    @overload
    def __call__(self, request: Endpoint) -> Callable[[Request], Awaitable[Response]]: ...

    def __call__(self, request: Any) -> Any:
        """As a dependency: the admitted session. As a decorator: the guarded endpoint."""
        if isinstance(request, HTTPConnection):
            return self.check(request)
        if callable(request):
            return self._wrap(request)
        raise TypeError("a guard takes a request (dependency) or an endpoint (decorator)")

    def _wrap(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            if not self.allows(get_session(request)):
                return self.refusal(request)
            if inspect.iscoroutinefunction(endpoint):
                result: Response = await endpoint(request)
                return result
            return await run_in_threadpool(endpoint, request)  # type: ignore[arg-type]

        return guarded


def require_authn(*, login_url: str | None = None) -> AuthnGuard:
    """Admit only authenticated sessions (see the module docstring)."""
    return AuthnGuard(partial=False, login_url=login_url)


def require_partial_authn(*, login_url: str | None = None) -> AuthnGuard:
    """Admit only sessions in the middle of a multi-factor login."""
    return AuthnGuard(partial=True, login_url=login_url)
