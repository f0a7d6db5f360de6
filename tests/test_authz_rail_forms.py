"""The tenancy rail sees a resource's tenant in every form an app can hand
it: an ``EntityUid``, Cedar's JSON entity references (``{"__entity": {...}}``
and the bare ``{"type": ..., "id": ...}`` Cedar reads as one under a
schema), uid text, and parents given the same ways. An auditor of acme is
permitted every document by a policy that forgets the tenant; only the rail
keeps globex's from her."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import Depends, FastAPI
from starlette.requests import HTTPConnection
from test_authz_support import (
    AUDREY,
    FORBIDDEN,
    authorizer,
    axess_with,
    client,
    login,
    sign_in,
)

from axess.authz import AuthzDecision, Entity, EntityUid
from axess.authz.model import cedar_value, tenant_of

NOW = 1_700_000_010
GLOBEX_FORMS = {
    "uid": EntityUid("Docs::Tenant", "globex"),
    "entity-escape": {"__entity": {"type": "Docs::Tenant", "id": "globex"}},
    "type-id": {"type": "Docs::Tenant", "id": "globex"},
    "type-id-extra": {"type": "Docs::Tenant", "id": "globex", "name": "Globex"},
}


def _doc(tenant: Any, parents: Any = ()) -> Entity:
    attrs = {
        "owner": EntityUid("Docs::User", "gina"),
        "classification": "internal",
    }
    if tenant is not None:
        attrs["tenant"] = tenant
    return Entity(EntityUid("Docs::Document", "g1"), attrs, parents)


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("form", sorted(GLOBEX_FORMS))
def test_another_tenants_document_is_refused_whatever_form_its_tenant_takes(
    form: str, strict: bool
) -> None:
    decision = authorizer(strict=strict).evaluate(AUDREY, "view", _doc(GLOBEX_FORMS[form]), now=NOW)
    assert not decision.allowed
    assert decision.reason == "tenant_rail", decision


@pytest.mark.parametrize("form", sorted(GLOBEX_FORMS))
def test_the_own_tenants_document_is_allowed_in_every_form(form: str) -> None:
    tenant = GLOBEX_FORMS[form]
    acme: Any = (
        EntityUid("Docs::Tenant", "acme")
        if isinstance(tenant, EntityUid)
        else _replace_id(tenant, "acme")
    )
    decision = authorizer().evaluate(AUDREY, "view", _doc(acme), now=NOW)
    assert decision.allowed, decision


def _replace_id(value: dict[str, Any], new: str) -> dict[str, Any]:
    if "__entity" in value:
        return {"__entity": {**value["__entity"], "id": new}}
    return {**value, "id": new}


@pytest.mark.parametrize(
    "tenant", ["globex", 'Docs::Tenant::"globex"'], ids=["bare-id", "uid-text"]
)
def test_a_tenant_given_as_text_is_that_tenant(tenant: str) -> None:
    # Only a schema-less decision lets a String through to the policies (the
    # schema says Tenant); the rail treats the text as the tenant it names.
    decision = authorizer(strict=False).evaluate(AUDREY, "view", _doc(tenant), now=NOW)
    assert not decision.allowed and decision.reason == "tenant_rail", decision


@pytest.mark.parametrize(
    "parent",
    [
        EntityUid("Docs::Tenant", "globex"),
        'Docs::Tenant::"globex"',
        {"type": "Docs::Tenant", "id": "globex"},
        {"__entity": {"type": "Docs::Tenant", "id": "globex"}},
    ],
    ids=["uid", "uid-text", "type-id", "entity-escape"],
)
def test_a_tenant_parent_in_any_form_is_the_resources_tenant(parent: Any) -> None:
    doc = _doc(None, [parent])  # schema-less: the schema gives documents no Tenant parent
    assert doc.parents == (EntityUid("Docs::Tenant", "globex"),)
    assert tenant_of(doc, "Docs::Tenant") == "globex"
    decision = authorizer(strict=False).evaluate(AUDREY, "view", doc, now=NOW)
    assert not decision.allowed and decision.reason == "tenant_rail", decision


@pytest.mark.parametrize(
    "tenant",
    [
        {"__entity": {"type": "Docs::Tenant", "id": "globex", "also": "x"}},
        {"__entity": {"type": "Docs::Tenant", "id": "globex"}, "type": "Docs::Tenant"},
        {"__entity": 'Docs::Tenant::"globex"'},
        {"__entity": {"type": "Docs::Tenant", "id": 7}},
    ],
    ids=["extra-inner-key", "extra-outer-key", "text-inside", "non-string-id"],
)
@pytest.mark.parametrize("strict", [True, False])
def test_an_entity_escape_that_is_not_exactly_a_reference_is_a_deny(
    tenant: Any, strict: bool
) -> None:
    decision = authorizer(strict=strict).evaluate(AUDREY, "view", _doc(tenant), now=NOW)
    assert not decision.allowed and decision.reason == "error", decision


def test_nested_entity_escapes_are_checked_and_made_canonical() -> None:
    ref = {"type": "Docs::Tenant", "id": "globex"}
    assert cedar_value({"meta": {"owner": {"__entity": ref}}}) == {
        "meta": {"owner": {"__entity": ref}}
    }
    assert cedar_value([{"__entity": ref}]) == [{"__entity": ref}]
    with pytest.raises(ValueError, match="entity reference"):
        cedar_value({"meta": {"owner": {"__entity": {**ref, "x": 1}}}})


async def test_over_http_a_tenant_from_a_database_row_is_refused() -> None:
    """A row read straight from a JSON column, tenant in Cedar's JSON form."""
    authz = authorizer()
    auth = axess_with(authz)
    app = FastAPI(lifespan=auth.lifespan)
    app.add_route("/login", login, methods=["POST"])
    rows = {
        "g1": {"tenant": {"type": "Docs::Tenant", "id": "globex"}},
        "g2": {"tenant": {"__entity": {"type": "Docs::Tenant", "id": "globex"}}},
        "a1": {"tenant": {"type": "Docs::Tenant", "id": "acme"}},
    }

    def load_row(conn: HTTPConnection) -> Entity:
        doc_id = conn.path_params["doc_id"]
        attrs = {
            **rows[doc_id],
            "owner": {"type": "Docs::User", "id": "gina"},
            "classification": "internal",
        }
        return Entity(EntityUid("Docs::Document", doc_id), attrs)

    view = authz.require("view", resource=load_row)

    @app.get("/rows/{doc_id}")
    async def show(doc_id: str, d: AuthzDecision = Depends(view)) -> dict[str, str]:
        return {"doc": doc_id}

    auth.install(app)
    async with auth.lifespan(), client(app) as c:
        await sign_in(c, "audrey")
        for doc_id in ("g1", "g2"):
            r = await c.get(f"/rows/{doc_id}")
            assert r.status_code == 403 and r.json() == FORBIDDEN, (doc_id, r.text)
        assert (await c.get("/rows/a1")).status_code == 200


@pytest.mark.parametrize(
    "tenant",
    ['Docs::Tenant::"bad\\q"', {"type": "not a type", "id": "globex"}],
    ids=["bad-uid-text", "bad-type-name"],
)
def test_a_tenant_the_rail_cannot_read_is_a_deny(tenant: Any) -> None:
    decision = authorizer(strict=False).evaluate(AUDREY, "view", _doc(tenant), now=NOW)
    assert not decision.allowed and decision.reason == "error", decision
