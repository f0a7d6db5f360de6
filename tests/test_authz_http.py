"""Authorization guards on Starlette and FastAPI routes through the full stack:
Axess(authz=...) with sessions, CSRF off, audit pipeline and metrics."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from axess import AuditPipeline, AuthEvent, Axess, Keyring, MockClock, get_session
from axess.audit.sinks import CallableSink
from axess.authz import (
    AuthzDecision,
    CedarAuthorizer,
    Entity,
    EntityUid,
    require_authz,
)
from axess.observability.metrics import NoopMetrics
from axess.stores import MemoryStore
from axess.testing import SeededRandom

POLICIES = Path(__file__).parent / "policies" / "docs"
#: doc id -> (tenant, owner, classification)
DOCUMENTS = {
    "d1": ("acme", "alice", "internal"),
    "s1": ("acme", "alice", "secret"),
    "g1": ("globex", "gina", "internal"),
}
ROLES = {"ada": ["admin"], "audrey": ["auditor"], "erin": ["editor"]}
FORBIDDEN = {"error": "forbidden", "detail": "not allowed"}


class Metrics(NoopMetrics):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def authz_decision(self, outcome: str) -> None:
        self.counts[outcome] += 1

    def authz_error(self) -> None:
        self.counts["error"] += 1


class Env:
    def __init__(self, framework: str) -> None:
        self.events: list[AuthEvent] = []
        self.metrics = Metrics()
        self.loads: Counter[str] = Counter()
        self.clock = MockClock(1_700_000_000)

        async def sink(batch: Sequence[AuthEvent]) -> None:
            self.events.extend(batch)

        async def roles(user: str, tenant: str) -> list[str]:
            return ROLES.get(user, [])

        self.authz = CedarAuthorizer(
            policies=POLICIES / "policies.cedar",
            schema=POLICIES / "schema.cedarschema",
            namespace="Docs",
            roles=roles,
        )
        self.auth = Axess(
            store=MemoryStore(),
            keys=Keyring.generate(),
            clock=self.clock,
            random=SeededRandom(3),
            debug=True,
            csrf=False,
            cleanup_interval=None,
            metrics=self.metrics,
            audit=AuditPipeline(sinks=[CallableSink(sink, name="mem", regulatory=True)]),
            authz=self.authz,
        )
        self.app = starlette_app(self) if framework == "starlette" else fastapi_app(self)
        self.auth.install(self.app)

    def load_doc(self, conn: HTTPConnection) -> Entity | None:
        doc_id = conn.path_params["doc_id"]
        self.loads[doc_id] += 1
        if doc_id == "boom":
            raise RuntimeError("database exploded")
        if doc_id == "gone":
            raise HTTPException(404)
        if doc_id not in DOCUMENTS:
            return None
        tenant, owner, cls = DOCUMENTS[doc_id]
        return Entity(
            EntityUid("Docs::Document", doc_id),
            {
                "tenant": EntityUid("Docs::Tenant", tenant),
                "owner": EntityUid("Docs::User", owner),
                "classification": cls,
            },
        )

    def client(self, ip: str = "127.0.0.1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(ip, 1234))
        return httpx.AsyncClient(transport=transport, base_url="https://testserver")

    async def denials(self) -> list[AuthEvent]:
        assert self.auth.audit is not None
        await self.auth.audit.flush()
        return [e for e in self.events if e.type == "authz_denied"]


async def login(request: Request) -> Response:
    body = await request.json()
    session = get_session(request)
    if session.is_authenticated:
        await session.invalidate()
    session.authenticate(body["user"], body["tenant"], tuple(body["factors"]))
    return JSONResponse({"ok": True})


def starlette_app(env: Env) -> Starlette:
    view = env.authz.require('Action::"view"', resource=env.load_doc)

    @view
    async def show(request: Request) -> Response:
        decision: AuthzDecision = request.state.authz
        return JSONResponse({"doc": request.path_params["doc_id"], "by": decision.policies})

    @env.authz.require("edit", resource=env.load_doc, login_url="/login")
    def edit(request: Request) -> Response:  # a sync endpoint
        return PlainTextResponse("edited")

    @require_authz('Docs::Action::"delete"', resource=env.load_doc)
    async def delete(request: Request) -> Response:
        return PlainTextResponse("deleted")

    async def check(request: Request) -> Response:
        decision = await env.authz.is_authorized(request, "view", env.load_doc)
        return JSONResponse({"allowed": decision.allowed, "reason": decision.reason})

    async def public(request: Request) -> Response:
        return PlainTextResponse("public")

    return Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/docs/{doc_id}", show),
            Route("/docs/{doc_id}/edit", edit, methods=["GET", "POST"]),
            Route("/docs/{doc_id}/delete", delete, methods=["POST"]),
            Route("/check/{doc_id}", check),
            Route("/public", public),
        ],
        lifespan=env.auth.lifespan,
    )


def fastapi_app(env: Env) -> FastAPI:
    app = FastAPI(lifespan=env.auth.lifespan)
    app.add_route("/login", login, methods=["POST"])
    view = env.authz.require('Action::"view"', resource=env.load_doc)
    edit = env.authz.require("edit", resource=env.load_doc)

    @app.get("/docs/{doc_id}")
    async def show(doc_id: str, decision: AuthzDecision = Depends(view)) -> dict[str, Any]:
        return {"doc": doc_id, "by": list(decision.policies)}

    @app.get("/docs/{doc_id}/both")
    async def both(
        doc_id: str, a: AuthzDecision = Depends(view), b: AuthzDecision = Depends(edit)
    ) -> dict[str, Any]:
        return {"doc": doc_id}

    @app.post("/docs/{doc_id}/delete")
    async def delete(
        doc_id: str,
        decision: AuthzDecision = Depends(
            require_authz('Docs::Action::"delete"', resource=env.load_doc)
        ),
    ) -> dict[str, str]:
        return {"deleted": doc_id}

    @app.get("/sync/{doc_id}")
    def sync_route(doc_id: str, decision: AuthzDecision = Depends(view)) -> dict[str, str]:
        return {"doc": doc_id}

    @app.get("/public")
    async def public() -> str:
        return "public"

    return app


async def _login(
    c: httpx.AsyncClient, user: str, tenant: str = "acme", factors: Sequence[str] = ("password",)
) -> None:
    r = await c.post("/login", json={"user": user, "tenant": tenant, "factors": list(factors)})
    assert r.status_code == 200


FRAMEWORKS = pytest.mark.parametrize("framework", ["starlette", "fastapi"])


@FRAMEWORKS
async def test_guests_get_401_not_403(framework: str) -> None:
    env = Env(framework)
    async with env.auth.lifespan(), env.client() as c:
        r = await c.get("/docs/d1")
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
        assert (await c.get("/public")).text.strip('"') == "public"
        assert env.metrics.counts == Counter()  # no Cedar call for a guest
        assert await env.denials() == []


@FRAMEWORKS
async def test_allow_and_deny_through_the_stack(framework: str) -> None:
    env = Env(framework)
    async with env.auth.lifespan(), env.client() as c:
        await _login(c, "bob")
        r = await c.get("/docs/d1")
        assert r.status_code == 200 and r.json() == {"doc": "d1", "by": ["tenant-members-view"]}
        r = await c.get("/docs/g1")  # another tenant's document
        assert r.status_code == 403 and r.json() == FORBIDDEN
        assert r.headers["cache-control"] == "no-store"
        r = await c.get("/docs/s1", headers={"accept": "text/html,*/*;q=0.8"})
        assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
        assert "secret-needs-mfa" not in r.text and "Forbidden" in r.text
        assert env.metrics.counts == Counter({"allow": 1, "deny": 2})
        denials = await env.denials()
    assert [(e.user, e.tenant, e.reason) for e in denials] == [
        ("bob", "acme", "no_permit"),
        ("bob", "acme", "forbid"),
    ]
    first = denials[0]
    assert first.extras["action"] == 'Docs::Action::"view"'
    assert first.extras["resource"] == 'Docs::Document::"g1"'
    assert first.extras["policies"] == [] and first.status == "failure"
    # The entities' attributes are never logged.
    assert "globex" not in first.to_json() and "gina" not in first.to_json()


@FRAMEWORKS
async def test_denial_names_the_deciding_policies_in_the_audit_only(framework: str) -> None:
    env = Env(framework)
    async with env.auth.lifespan(), env.client() as c:
        await _login(c, "alice")
        r = await c.get("/docs/s1")  # her own secret doc, without MFA
        assert r.status_code == 403 and r.json() == FORBIDDEN
        await _login(c, "audrey")  # an auditor: Cedar allows globex, the tenancy rail denies
        assert (await c.get("/docs/d1")).status_code == 200
        assert (await c.get("/docs/g1")).status_code == 403
        denials = await env.denials()
    assert [(e.user, e.reason, e.extras["policies"]) for e in denials] == [
        ("alice", "forbid", ["secret-needs-mfa"]),
        ("audrey", "tenant_rail", ["auditors-view"]),
    ]


@FRAMEWORKS
async def test_mfa_and_roles_from_the_session(framework: str) -> None:
    env = Env(framework)
    async with env.auth.lifespan(), env.client() as c:
        await _login(c, "alice", factors=("password", "totp"))
        assert (await c.get("/docs/s1")).status_code == 200


@FRAMEWORKS
async def test_module_level_guard_uses_the_app_authorizer_and_the_client_ip(
    framework: str,
) -> None:
    env = Env(framework)
    async with env.auth.lifespan():
        async with env.client() as c:
            await _login(c, "ada")
            assert (await c.post("/docs/d1/delete")).status_code == 403  # not the office
        async with env.client(ip="10.9.8.7") as c:
            await _login(c, "ada")
            assert (await c.post("/docs/d1/delete")).status_code == 200
            env.clock.advance(601)  # the login is too old now
            assert (await c.post("/docs/d1/delete")).status_code == 403
        denials = await env.denials()
    assert denials[0].extras["policies"] == ["delete-from-office"]
    assert denials[0].ip == "127.0.0.1"


@FRAMEWORKS
async def test_evaluation_errors_are_403_a_log_line_and_a_metric(
    framework: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = Env(framework)
    async with env.auth.lifespan(), env.client() as c:
        await _login(c, "bob")
        with caplog.at_level(logging.WARNING, logger="axess.authz"):
            r = await c.get("/docs/boom")
        assert r.status_code == 403 and r.json() == FORBIDDEN
        assert "database exploded" in caplog.text
        assert env.metrics.counts["error"] == 1 and env.metrics.counts["deny"] == 1
        assert (await c.get("/docs/gone")).status_code == 404  # the app's own answer
        assert (await c.get("/docs/nope")).status_code == 403  # no such resource
        denials = await env.denials()
    assert [e.reason for e in denials] == ["error", "no_resource"]
    assert "database exploded" in denials[0].extras["errors"][0]


async def test_starlette_sync_endpoint_and_login_redirect() -> None:
    env = Env("starlette")
    async with env.auth.lifespan(), env.client() as c:
        r = await c.get("/docs/d1/edit")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/docs/d1/edit"
        assert (await c.post("/docs/d1/edit")).status_code == 401
        await _login(c, "erin")
        assert (await c.get("/docs/d1/edit")).text == "edited"
        await _login(c, "bob")
        assert (await c.get("/docs/d1/edit")).status_code == 403


async def test_plain_is_authorized() -> None:
    env = Env("starlette")
    async with env.auth.lifespan(), env.client() as c:
        assert (await c.get("/check/d1")).json() == {"allowed": False, "reason": "unauthenticated"}
        await _login(c, "bob")
        assert (await c.get("/check/d1")).json() == {"allowed": True, "reason": "allow"}
        assert (await c.get("/check/g1")).json() == {"allowed": False, "reason": "no_permit"}


async def test_fastapi_loads_the_resource_once_per_request() -> None:
    env = Env("fastapi")
    async with env.auth.lifespan(), env.client() as c:
        await _login(c, "erin")
        assert (await c.get("/docs/d1/both")).status_code == 200
        assert env.loads["d1"] == 1
        assert env.metrics.counts["allow"] == 2
        assert (await c.get("/sync/d1")).status_code == 200


async def test_facade_binds_metrics_audit_and_clock() -> None:
    env = Env("starlette")
    assert env.authz.metrics is env.metrics
    assert env.authz.audit is env.auth.audit
    assert env.authz.clock is env.clock
    assert env.auth.authz is env.authz


def test_require_without_an_authorizer_is_a_clear_error() -> None:
    app = Starlette()
    guard = require_authz("view", resource=EntityUid("Docs::Document", "d1"))
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "app": app}
    with pytest.raises(RuntimeError, match="no authorizer"):
        guard._authorizer(Request(scope))
    with pytest.raises(ValueError):
        require_authz('Action::"view" || true', resource=EntityUid("Docs::Document", "d1"))


def test_forbidden_body_is_json() -> None:
    assert json.loads(json.dumps(FORBIDDEN)) == FORBIDDEN


async def test_context_path_is_the_path_the_router_matches() -> None:
    # Mounted under /app (or served with --root-path), the app's routes and
    # its rate-limit rules say /check/d1; a policy on context.path must see
    # the same, not /app/check/d1 (a forbid on the path would never apply).
    from starlette.routing import Mount

    env = Env("starlette")
    seen: list[str] = []
    evaluate = env.authz.evaluate

    def spy(*args: Any, **kwargs: Any) -> AuthzDecision:
        seen.append(kwargs["path"])
        return evaluate(*args, **kwargs)

    env.authz.evaluate = spy  # type: ignore[method-assign]
    env.app = Starlette(routes=[Mount("/app", app=env.app)])
    async with env.auth.lifespan(), env.client() as c:
        r = await c.post("/app/login", json={"user": "bob", "tenant": "acme", "factors": []})
        assert r.status_code == 200
        assert (await c.get("/app/check/d1")).json()["allowed"] is True
    assert seen == ["/check/d1"]
