"""Shared pieces for the authorization tests that run a whole app: an
``Axess`` with the docs policies, a login route, a client (no tests here)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from axess import Axess, Keyring, MockClock, get_session
from axess.authz import CedarAuthorizer, Entity, EntityUid, Principal
from axess.stores import MemoryStore
from axess.testing import SeededRandom

DOCS = Path(__file__).parent / "policies" / "docs"
ROLES = {"ada": ["admin"], "audrey": ["auditor"], "erin": ["editor"]}
FORBIDDEN = {"error": "forbidden", "detail": "not allowed"}
#: An auditor of tenant acme: ``auditors-view`` permits every document,
#: whatever its tenant, so only the tenancy rail keeps globex's from her.
AUDREY = Principal(
    "audrey", "acme", ("password",), 1_700_000_000, (EntityUid("Docs::Role", "auditor"),)
)


async def roles(user: str, tenant: str) -> list[str]:
    return ROLES.get(user, [])


def authorizer(*, strict: bool = True, with_roles: bool = True) -> CedarAuthorizer:
    return CedarAuthorizer(
        policies=DOCS / "policies.cedar",
        schema=DOCS / "schema.cedarschema",
        namespace="Docs",
        roles=roles if with_roles else None,
        strict=strict,
    )


def axess_with(authz: CedarAuthorizer | None) -> Axess:
    return Axess(
        store=MemoryStore(),
        keys=Keyring.generate(),
        clock=MockClock(1_700_000_000),
        random=SeededRandom(7),
        debug=True,
        csrf=False,
        cleanup_interval=None,
        authz=authz,
    )


async def login(request: Request) -> Response:
    body = await request.json()
    get_session(request).authenticate(body["user"], body["tenant"], ("password",))
    return JSONResponse({"ok": True})


def client(app: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="https://testserver")


async def sign_in(
    c: httpx.AsyncClient, user: str, tenant: str = "acme", *, path: str = "/login"
) -> None:
    r = await c.post(path, json={"user": user, "tenant": tenant})
    assert r.status_code == 200, r.text


def cookie_header(cookies: Sequence[tuple[str, str]]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies)


#: The documents the mount and websocket tests guard, by id: their tenant.
DOC_TENANTS = {"d1": "acme", "g1": "globex"}


def load_doc(conn: HTTPConnection) -> Entity:
    """The document named by the route's ``doc_id``, in its tenant."""
    doc_id = conn.path_params["doc_id"]
    return Entity(
        EntityUid("Docs::Document", doc_id),
        {
            "tenant": EntityUid("Docs::Tenant", DOC_TENANTS[doc_id]),
            "owner": EntityUid("Docs::User", "gina"),
            "classification": "internal",
        },
    )
