"""Guards inside a sub-app mounted under the app ``auth.install`` saw: they
find the authorizer (the stack publishes it with each request) and, with
``auth.install_handlers(sub_app)``, answer in axess's refusal format, not
the sub-app's default, without installing axess a second time (which would
run a second session stage)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import Depends, FastAPI
from starlette.requests import Request
from starlette.responses import Response
from test_authz_support import FORBIDDEN, authorizer, axess_with, client, load_doc, login, sign_in

from axess.authz import AuthzDecision, CedarAuthorizer, require_authz
from axess.authz.guards import APP_STATE_ATTR, AUTHORIZER_KEY, AuthorizerStage, authorizer_of

UNAUTHENTICATED = "unauthenticated"


def _apps(authz: CedarAuthorizer, *, handlers: bool = True) -> tuple[FastAPI, Any]:
    auth = axess_with(authz)
    app = FastAPI(lifespan=auth.lifespan)
    app.add_route("/login", login, methods=["POST"])
    sub = FastAPI()

    @sub.get("/module/{doc_id}")
    async def module_guard(
        doc_id: str, d: AuthzDecision = Depends(require_authz("view", resource=load_doc))
    ) -> dict[str, str]:
        return {"doc": doc_id}

    @sub.get("/bound/{doc_id}")
    async def bound_guard(
        doc_id: str, d: AuthzDecision = Depends(authz.require("view", resource=load_doc))
    ) -> dict[str, str]:
        return {"doc": doc_id}

    @sub.get("/login-first/{doc_id}")
    async def login_first(
        doc_id: str,
        d: AuthzDecision = Depends(authz.require("view", resource=load_doc, login_url="/login")),
    ) -> dict[str, str]:
        return {"doc": doc_id}

    app.mount("/sub", sub)
    auth.install(app)
    if handlers:
        auth.install_handlers(sub)  # the sub-app's exception handlers are its own
    return app, auth


@pytest.mark.parametrize("route", ["module", "bound"])
async def test_guards_in_a_mounted_sub_app_decide_and_refuse_like_the_app(route: str) -> None:
    app, auth = _apps(authorizer())
    async with auth.lifespan(), client(app) as c:
        r = await c.get(f"/sub/{route}/d1")
        assert r.status_code == 401 and r.json()["error"] == UNAUTHENTICATED, r.text
        await sign_in(c, "erin")
        assert (await c.get(f"/sub/{route}/d1")).json() == {"doc": "d1"}
        r = await c.get(f"/sub/{route}/g1")
        assert r.status_code == 403 and r.json() == FORBIDDEN, r.text
        assert r.headers["cache-control"] == "no-store"
        r = await c.get(f"/sub/{route}/g1", headers={"accept": "text/html"})
        assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")


async def test_without_its_handlers_a_sub_app_still_refuses_never_500() -> None:
    """The authorizer is found either way (the stack publishes it with the
    request); only the body is then the sub-app's own format."""
    app, auth = _apps(authorizer(), handlers=False)
    async with auth.lifespan(), client(app) as c:
        await sign_in(c, "erin")
        assert (await c.get("/sub/module/d1")).json() == {"doc": "d1"}
        r = await c.get("/sub/module/g1")
        assert r.status_code == 403 and r.json() == {"detail": "forbidden"}


async def test_a_sub_app_guard_redirects_to_the_login_page() -> None:
    app, auth = _apps(authorizer())
    async with auth.lifespan(), client(app) as c:
        r = await c.get("/sub/login-first/d1")
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")


def test_the_authorizer_is_found_in_the_request_state_before_the_app_state() -> None:
    mine, other = authorizer(), authorizer()
    app = FastAPI()
    setattr(app.state, APP_STATE_ATTR, other)
    scope: dict[str, Any] = {"type": "http", "headers": [], "app": app, "state": {}}
    assert authorizer_of(Request(scope)) is other
    scope["state"][AUTHORIZER_KEY] = mine
    assert authorizer_of(Request(scope)) is mine


async def test_the_stage_publishes_its_authorizer_for_every_request() -> None:
    authz = authorizer()
    seen: list[Any] = []

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["state"].get(AUTHORIZER_KEY))
        await Response("ok")(scope, receive, send)

    async with client(AuthorizerStage(endpoint, authorizer=authz)) as c:
        assert (await c.get("/")).text == "ok"
    assert seen == [authz]
