"""Authorization guards: ``authz.require(action, resource=...)`` and the
module-level ``require_authz``.

A guard is both a FastAPI dependency and a Starlette route decorator::

    @app.get("/docs/{doc_id}")
    async def show(decision = Depends(auth.authz.require('Action::"view"', resource=load_doc))): ...

    @auth.authz.require('Action::"view"', resource=load_doc)
    async def show(request: Request) -> Response: ...

Answers (book: Authorization, "Guards"): an unauthenticated session gets
the authentication guard's ``401`` (or its redirect with ``login_url``),
never ``403``; a denial gets ``403`` ``forbidden``, the JSON body or the
HTML page by ``Accept`` like every refusal (book: Errors and refusals). On
a FastAPI websocket route both close the handshake with 1008 (policy
violation) before accepting it. The answer never names the policy that
denied. As a dependency the guard raises :class:`AuthzDenied` (or
:class:`~axess.authn.guards.AuthnRequired`); ``Axess.install`` registers
the handlers that turn them into exactly these responses
(``Axess.install_handlers`` on a mounted sub-app, whose handlers are its own).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import anyio.from_thread
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException, WebSocketException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.status import WS_1008_POLICY_VIOLATION
from starlette.types import ASGIApp, Scope

from axess.authn.guards import AuthnGuard, AuthnRequired
from axess.authz import model as m
from axess.refusals import Refusal, RefusalResponse
from axess.stack import Stage

if TYPE_CHECKING:
    from axess.authz.authorizer import AuthzDecision, CedarAuthorizer, ResourceSpec

Endpoint = Callable[[Request], Awaitable[Response]] | Callable[[Request], Response]

FORBIDDEN: Final = Refusal(403, "forbidden", "not allowed")
#: ``app.state`` attribute where ``Axess.install`` publishes the authorizer.
APP_STATE_ATTR: Final = "axess_authz"
#: ``scope["state"]`` entry where :class:`AuthorizerStage` publishes the
#: authorizer for each request; read before ``app.state``, which inside a
#: mounted sub-app is the sub-app's.
AUTHORIZER_KEY: Final = "axess.authz.authorizer"


def forbidden_response(conn: HTTPConnection) -> Response:
    """The 403 (negotiated when sent); no detail about which policy denied."""
    return RefusalResponse(FORBIDDEN)


class AuthzDenied(HTTPException):
    """Raised by a guard used as a dependency; ``response`` is the 403."""

    def __init__(self, response: Response) -> None:
        super().__init__(403, "forbidden")
        self.response = response


async def authz_exception_handler(request: Request, exc: Exception) -> Response:
    """Exception handler answering :class:`AuthzDenied` with its response."""
    if isinstance(exc, AuthzDenied):
        return exc.response
    raise exc


class AuthorizerStage(Stage):
    """A stack stage publishing ``authorizer`` in ``scope["state"]`` (under
    :data:`AUTHORIZER_KEY`) for every request and websocket, so
    :func:`require_authz` guards find it in a mounted sub-app too, whose
    ``app.state`` is not the app's. As a middleware:
    ``app.add_middleware(AuthorizerStage, authorizer=authz)``."""

    def __init__(self, app: ASGIApp | None = None, *, authorizer: CedarAuthorizer) -> None:
        super().__init__(app)
        self.authorizer = authorizer

    def enter_now(self, scope: Scope) -> bool:
        scope["state"][AUTHORIZER_KEY] = self.authorizer  # the stack made sure it exists
        return True


def authorizer_of(conn: HTTPConnection) -> CedarAuthorizer:
    """The authorizer of the request: the one an :class:`AuthorizerStage`
    published for it, else the one ``Axess.install`` put on the app. Raises
    RuntimeError when there is none (``Axess(authz=...)`` missing)."""
    state = conn.scope.get("state")
    found = state.get(AUTHORIZER_KEY) if isinstance(state, dict) else None
    if found is None:
        app = conn.scope.get("app")
        found = getattr(getattr(app, "state", None), APP_STATE_ATTR, None)
    if found is None:
        raise RuntimeError(
            "no authorizer on this app: pass Axess(authz=CedarAuthorizer(...)) and call "
            "auth.install(app), or use authz.require(...)"
        )
    authorizer: CedarAuthorizer = found
    return authorizer


class AuthzGuard:
    """What :meth:`CedarAuthorizer.require` and :func:`require_authz` return."""

    def __init__(
        self,
        action: m.EntityUid | str,
        *,
        resource: ResourceSpec,
        authorizer: CedarAuthorizer | None = None,
        login_url: str | None = None,
    ) -> None:
        if isinstance(action, str) and "::" in action:
            m.parse_uid(action)  # refuse malformed action text at import time
        self.action = action
        self.resource = resource
        self.authorizer = authorizer
        self.authn = AuthnGuard(partial=False, login_url=login_url)
        # FastAPI reads the dependency's signature through ``__wrapped__`` and
        # awaits it because the unwrapped callable is a coroutine function.
        # ``HTTPConnection``, not ``Request``: FastAPI hands a dependency so
        # annotated the Request of an HTTP route and the WebSocket of a
        # websocket route (a ``Request`` parameter gets nothing on the latter).
        self.__wrapped__ = self.dependency
        self.__signature__ = inspect.Signature(
            [
                inspect.Parameter(
                    "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=HTTPConnection
                )
            ]
        )

    def _authorizer(self, conn: HTTPConnection) -> CedarAuthorizer:
        return self.authorizer if self.authorizer is not None else authorizer_of(conn)

    async def decide(self, conn: HTTPConnection) -> AuthzDecision:
        """The decision for ``conn`` (no exception for a denial)."""
        return await self._authorizer(conn).is_authorized(conn, self.action, self.resource)

    def refusal(self, conn: HTTPConnection, decision: AuthzDecision) -> Response:
        if decision.reason == "unauthenticated":
            return self.authn.refusal(conn)
        return forbidden_response(conn)

    async def dependency(self, request: HTTPConnection) -> AuthzDecision:
        """As a FastAPI dependency: the allowing decision; raises
        :class:`AuthnRequired` (401) or :class:`AuthzDenied` (403) on an HTTP
        route, and on a websocket route a ``WebSocketException`` that closes
        the handshake with 1008 (policy violation) before it is accepted."""
        decision = await self.decide(request)
        if decision.allowed:
            return decision
        if request.scope.get("type") == "websocket":
            # A websocket has no status line to put a 401 or 403 on; closing
            # before accept is the refusal every server turns into a rejected
            # handshake, and the reason names no policy, like the 403.
            reason = "unauthenticated" if decision.reason == "unauthenticated" else "forbidden"
            raise WebSocketException(WS_1008_POLICY_VIOLATION, reason)
        if decision.reason == "unauthenticated":
            raise AuthnRequired(self.authn.refusal(request))
        raise AuthzDenied(forbidden_response(request))

    def __call__(self, request: Any) -> Any:
        """As a dependency (given a request): the decision, awaited by FastAPI.
        As a decorator (given an endpoint): the guarded endpoint."""
        if isinstance(request, HTTPConnection):
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # called from a worker thread: run on the loop
                return anyio.from_thread.run(self.dependency, request)
            return self.dependency(request)
        if callable(request):
            return self._wrap(request)
        raise TypeError("a guard takes a request (dependency) or an endpoint (decorator)")

    def _wrap(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            decision = await self.decide(request)
            if not decision.allowed:
                return self.refusal(request, decision)
            request.state.authz = decision
            if inspect.iscoroutinefunction(endpoint):
                result: Response = await endpoint(request)
                return result
            return await run_in_threadpool(endpoint, request)  # type: ignore[arg-type]

        return guarded


def require_authz(
    action: m.EntityUid | str,
    *,
    resource: ResourceSpec,
    login_url: str | None = None,
) -> AuthzGuard:
    """A guard using the authorizer of the app (``Axess(authz=...)``, found by
    :func:`authorizer_of`); see :meth:`CedarAuthorizer.require`."""
    return AuthzGuard(action, resource=resource, login_url=login_url)
