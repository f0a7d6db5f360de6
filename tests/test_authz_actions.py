"""A guard naming an action the schema does not declare (a typo) refuses to
start, in strict mode and without it; a decision for such an action says so;
a reload that would drop an action a guard needs is refused."""

from __future__ import annotations

import pytest
from fastapi import Depends, FastAPI
from test_authz_support import DOCS, FORBIDDEN, authorizer, axess_with, client, login, sign_in

from axess.authz import AuthzDecision, EntityUid, Principal, require_authz
from axess.errors import ConfigurationError

D1 = EntityUid("Docs::Document", "d1")
ALICE = Principal("alice", "acme", ("password",), 1_700_000_000)


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize(
    "action",
    ["veiw", 'Action::"veiw"', 'Docs::Action::"veiw"', EntityUid("Docs::Action", "veiw")],
    ids=["bare", "text", "namespaced-text", "uid"],
)
def test_a_guard_for_an_undeclared_action_refuses_to_start(
    action: str | EntityUid, strict: bool
) -> None:
    authz = authorizer(strict=strict)
    with pytest.raises(ConfigurationError, match='Docs::Action::"veiw"'):
        authz.require(action, resource=D1)


@pytest.mark.parametrize(
    "action",
    ['Docs::Role::"admin"', 'Action::"view', EntityUid("Docs::Tenant", "view")],
    ids=["not-an-action", "malformed", "uid-of-another-type"],
)
def test_what_is_no_action_refuses_to_start(action: str | EntityUid) -> None:
    with pytest.raises(ConfigurationError):
        authorizer().require(action, resource=D1)


@pytest.mark.parametrize(
    "action",
    ["view", 'Action::"edit"', 'Docs::Action::"delete"', EntityUid("Docs::Action", "view")],
)
def test_declared_actions_are_accepted(action: str | EntityUid) -> None:
    authorizer().require(action, resource=D1)


@pytest.mark.parametrize("strict", [True, False])
def test_a_decision_for_an_undeclared_action_names_it(strict: bool) -> None:
    decision = authorizer(strict=strict).evaluate(ALICE, "veiw", D1)
    assert not decision.allowed and decision.reason == "error"
    assert any('Docs::Action::"veiw"' in e for e in decision.errors), decision.errors


async def test_a_module_level_guard_for_an_undeclared_action_denies_with_an_error() -> None:
    """``require_authz`` knows no authorizer until a request: its typo is a
    deny with reason ``error`` (and a WARNING), never an allow or a 500."""
    authz = authorizer(strict=False)
    auth = axess_with(authz)
    app = FastAPI(lifespan=auth.lifespan)
    app.add_route("/login", login, methods=["POST"])

    @app.get("/typo")
    async def typo(
        d: AuthzDecision = Depends(require_authz("veiw", resource=D1)),
    ) -> dict[str, bool]:
        return {"ok": True}

    auth.install(app)
    async with auth.lifespan(), client(app) as c:
        await sign_in(c, "alice")
        r = await c.get("/typo")
        assert r.status_code == 403 and r.json() == FORBIDDEN


def test_a_reload_that_drops_a_guarded_action_is_refused() -> None:
    authz = authorizer()
    authz.require("delete", resource=D1)
    before = authz.policies
    schema = (DOCS / "schema.cedarschema").read_text().replace("view, edit, delete", "view, edit")
    policies = 'permit (principal, action == Docs::Action::"view", resource);'
    with pytest.raises(ConfigurationError, match='Docs::Action::"delete"'):
        authz.reload(policies=policies, schema=schema)
    assert authz.policies is before
    # Without a guard on it, the same reload is fine.
    fresh = authorizer()
    fresh.require("view", resource=D1)
    fresh.reload(policies=policies, schema=schema)
