"""Cedar policy sets: the example apps' ALLOW/DENY fixtures, startup validation,
reload, template links, the tenancy rail and the pure entity model."""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from axess import ConfigurationError, MockClock
from axess.authz import (
    AuthzStore,
    CedarAuthorizer,
    Entity,
    EntityUid,
    Principal,
    Resource,
    TemplateLink,
    parse_uid,
)
from axess.authz.model import (
    Types,
    cedar_value,
    context_record,
    escape_cedar_string,
    principal_entity,
    tenant_of,
)
from axess.authz.policies import split_policies
from axess.observability.metrics import NoopMetrics
from axess.refusals import wants_html

POLICIES = Path(__file__).parent / "policies"
DOCS = POLICIES / "docs"
ROLES = POLICIES / "roles"
LOGIN_TIME = 1_700_000_000


class Counting(NoopMetrics):
    def __init__(self) -> None:
        self.decisions: dict[str, int] = {}
        self.errors = 0

    def authz_decision(self, outcome: str) -> None:
        self.decisions[outcome] = self.decisions.get(outcome, 0) + 1

    def authz_error(self) -> None:
        self.errors += 1


def docs_authorizer(**kwargs: Any) -> CedarAuthorizer:
    return CedarAuthorizer(
        policies=DOCS / "policies.cedar",
        schema=DOCS / "schema.cedarschema",
        namespace="Docs",
        **kwargs,
    )


def roles_authorizer(**kwargs: Any) -> CedarAuthorizer:
    kwargs.setdefault("entities", ROLES / "entities.json")
    return CedarAuthorizer(
        policies=ROLES / "policies.cedar", schema=ROLES / "schema.json", role_type="Group", **kwargs
    )


def _value(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"__entity"}:
        return parse_uid(v["__entity"])
    return v


def fixture_request(
    authz: CedarAuthorizer, case: dict[str, Any]
) -> tuple[Principal, str, Resource, dict[str, Any]]:
    p = case["principal"]
    principal = Principal(
        p["user"],
        p["tenant"],
        tuple(p["factors"]),
        LOGIN_TIME,
        tuple(EntityUid(authz.types.role, r) for r in p["roles"]),
    )
    r = case["resource"]
    resource = Resource(
        Entity(
            EntityUid(r["type"], r["id"]),
            {k: _value(v) for k, v in r["attrs"].items()},
            tuple(parse_uid(x) for x in r["parents"]),
        )
    )
    ctx = case.get("context", {})
    kwargs = {
        "ip": ctx.get("ip", "192.0.2.1"),
        "method": ctx.get("method", "GET"),
        "path": ctx.get("path", "/"),
        "now": LOGIN_TIME + p["login_age"],
    }
    return principal, case["action"], resource, kwargs


def cases(app: Path) -> list[Any]:
    data = json.loads((app / "requests.json").read_text())
    return [pytest.param(c, id=c["name"]) for c in data]


@pytest.mark.parametrize("case", cases(DOCS))
def test_multi_tenant_document_app(case: dict[str, Any]) -> None:
    authz = docs_authorizer()
    principal, action, resource, kwargs = fixture_request(authz, case)
    decision = authz.evaluate(principal, action, resource, **kwargs)
    assert decision.errors == ()
    assert ("ALLOW" if decision.allowed else "DENY") == case["expect"], decision
    assert sorted(decision.policies) == sorted(case["policies"])


@pytest.mark.parametrize("case", cases(ROLES))
def test_role_and_group_app(case: dict[str, Any]) -> None:
    authz = roles_authorizer()
    principal, action, resource, kwargs = fixture_request(authz, case)
    decision = authz.evaluate(principal, action, resource, **kwargs)
    assert decision.errors == ()
    assert ("ALLOW" if decision.allowed else "DENY") == case["expect"], decision
    assert sorted(decision.policies) == sorted(case["policies"])


def test_fixtures_cover_both_outcomes() -> None:
    for app in (DOCS, ROLES):
        expects = {c["expect"] for c in json.loads((app / "requests.json").read_text())}
        assert expects == {"ALLOW", "DENY"}


def _doc(tenant: str, owner: str = "gina", cls: str = "internal") -> Resource:
    return Resource(
        Entity(
            EntityUid("Docs::Document", f"{tenant}-doc"),
            {
                "tenant": EntityUid("Docs::Tenant", tenant),
                "owner": EntityUid("Docs::User", owner),
                "classification": cls,
            },
        )
    )


def _user(user: str, tenant: str = "acme", *roles: str, mfa: bool = False) -> Principal:
    factors = ("password", "totp") if mfa else ("password",)
    return Principal(
        user, tenant, factors, LOGIN_TIME, tuple(EntityUid("Docs::Role", r) for r in roles)
    )


def test_tenancy_rail_denies_other_tenants_unless_a_policy_is_marked_cross_tenant() -> None:
    authz = docs_authorizer()
    now = LOGIN_TIME + 5
    auditor = _user("audrey", "acme", "auditor")
    # Cedar itself allows (auditors-view forgets the tenant), axess refuses.
    own = authz.evaluate(auditor, "view", _doc("acme"), now=now)
    other = authz.evaluate(auditor, "view", _doc("globex"), now=now)
    assert own.allowed and own.reason == "allow"
    assert not other.allowed and other.reason == "tenant_rail"
    assert other.policies == ("auditors-view",)
    # @cross_tenant on the permitting policy lifts the rail, for that policy only.
    support = _user("sam", "acme", "support")
    assert authz.evaluate(support, "view", _doc("globex", cls="public"), now=now).allowed
    assert not authz.evaluate(support, "view", _doc("globex"), now=now).allowed
    # A resource that is not tenant-scoped (no tenant attribute or parent) is
    # not subject to the rail; the tenant of the principal comes from the session.
    assert "Docs::Tenant" == authz.types.tenant
    assert tenant_of(Entity(EntityUid("Docs::Document", "x")), "Docs::Tenant") is None
    parent = Entity(EntityUid("Docs::Folder", "f"), parents=(EntityUid("Docs::Tenant", "t9"),))
    assert tenant_of(parent, "Docs::Tenant") == "t9"


def test_cross_tenant_annotation_on_a_forbid_is_refused() -> None:
    text = (DOCS / "policies.cedar").read_text() + (
        '\n@cross_tenant\nforbid (principal, action, resource) when { context.method == "X" };\n'
    )
    with pytest.raises(ConfigurationError, match="forbid policy policy9"):
        CedarAuthorizer(policies=text, schema=DOCS / "schema.cedarschema", namespace="Docs")


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        (
            "unknown_attribute.cedar",
            [
                'policy0 (@id("typo")) at ',
                "unknown_attribute.cedar:1:1",
                "attribute `tenent` on entity type `Docs::Document` not found",
            ],
        ),
        (
            "wrong_type.cedar",
            [
                'policy1 (@id("string-vs-long")) at ',
                "wrong_type.cedar:4:1",
                "the types Long and String are not compatible",
            ],
        ),
        (
            "unknown_action.cedar",
            [
                'policy0 (@id("no-such-action"))',
                'unrecognized action `Docs::Action::"archive"`',
            ],
        ),
        ("parse_error.cedar", ["policy1 at ", "parse_error.cedar:4:1", "parse error"]),
    ],
)
def test_startup_refuses_an_invalid_policy_naming_the_error(file: str, expected: list[str]) -> None:
    with pytest.raises(ConfigurationError) as info:
        CedarAuthorizer(
            policies=POLICIES / "invalid" / file,
            schema=DOCS / "schema.cedarschema",
            namespace="Docs",
        )
    message = str(info.value)
    for part in expected:
        assert part in message, message


def test_every_error_is_listed_with_positions_across_files() -> None:
    with pytest.raises(ConfigurationError) as info:
        CedarAuthorizer.from_files(
            [
                POLICIES / "invalid" / "unknown_attribute.cedar",
                POLICIES / "invalid" / "wrong_type.cedar",
                POLICIES / "invalid" / "unknown_action.cedar",
            ],
            DOCS / "schema.cedarschema",
            namespace="Docs",
        )
    message = str(info.value)
    assert "unknown_attribute.cedar:1:1" in message
    assert "wrong_type.cedar:4:1" in message  # policy2 of the concatenation
    assert "unknown_action.cedar:1:1" in message
    assert "tenent" in message and "Long and String" in message and "archive" in message


def test_invalid_schema_and_entities_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="invalid Cedar schema"):
        CedarAuthorizer(policies="", schema="namespace { entity")
    with pytest.raises(ConfigurationError, match="invalid JSON schema"):
        CedarAuthorizer(policies="", schema={"": {"entityTypes": {"A": {"bad": 1}}}})
    with pytest.raises(ConfigurationError, match="cannot read policy file"):
        CedarAuthorizer(policies=tmp_path / "missing.cedar", schema=DOCS / "schema.cedarschema")
    bad = [{"uid": {"type": "Group", "id": "x"}, "attrs": {"nope": 1}, "parents": []}]
    with pytest.raises(ConfigurationError, match="invalid static entities"):
        roles_authorizer(entities=bad)
    user = [{"uid": {"type": "User", "id": "u"}, "attrs": {}, "parents": []}]
    with pytest.raises(ConfigurationError, match="may not include User"):
        CedarAuthorizer(policies="", schema=ROLES / "schema.json", entities=user)
    with pytest.raises(ConfigurationError, match="not a valid Cedar type name"):
        docs_authorizer(principal_type="Us er")


def test_duplicate_policy_ids_are_refused() -> None:
    text = (
        '@id("a")\npermit (principal, action, resource);\n'
        '@id("a")\nforbid (principal, action, resource);'
    )
    with pytest.raises(ConfigurationError, match=r'@id\("a"\) names two policies'):
        CedarAuthorizer(policies=text, schema=ROLES / "schema.json")


def test_reload_keeps_the_old_set_when_the_new_one_is_invalid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policies.cedar"
    shutil.copy(DOCS / "policies.cedar", path)
    authz = CedarAuthorizer(policies=path, schema=DOCS / "schema.cedarschema", namespace="Docs")
    before = authz.policies
    bob = _user("bob")
    assert authz.evaluate(bob, "view", _doc("acme"), now=LOGIN_TIME).allowed

    path.write_text((POLICIES / "invalid" / "unknown_attribute.cedar").read_text())
    with caplog.at_level(logging.ERROR), pytest.raises(ConfigurationError, match="tenent"):
        authz.reload()
    assert "keeping policy set" in caplog.text
    assert authz.policies is before
    assert authz.evaluate(bob, "view", _doc("acme"), now=LOGIN_TIME).allowed

    # A valid new set replaces it: now nobody may view.
    path.write_text('permit (principal, action == Docs::Action::"edit", resource);')
    new = authz.reload()
    assert new.digest != before.digest and authz.policies is new
    assert not authz.evaluate(bob, "view", _doc("acme"), now=LOGIN_TIME).allowed
    # Reload from text also validates first.
    with pytest.raises(ConfigurationError):
        authz.reload(policies='permit (principal, action == Docs::Action::"nope", resource);')
    assert authz.policies is new


def test_template_links_share_one_document() -> None:
    alice_doc = Resource(
        Entity(
            EntityUid("Docs::Document", "plan"),
            {
                "tenant": EntityUid("Docs::Tenant", "acme"),
                "owner": EntityUid("Docs::User", "alice"),
                "classification": "secret-ish",
            },
        )
    )
    link = TemplateLink(
        "share-view",
        "share-plan-with-guest",
        principal=EntityUid("Docs::User", "guest"),
        resource=EntityUid("Docs::Document", "plan"),
    )
    guest = _user("guest", "acme")
    authz = docs_authorizer()
    # Without the link the guest is a member of acme and could view: use a
    # principal of another tenant-less role to show the link's effect instead.
    outsider = Principal("guest", "acme", ("password",), LOGIN_TIME)
    assert authz.evaluate(outsider, "view", alice_doc, now=LOGIN_TIME).policies == (
        "tenant-members-view",
    )
    authz.link(link)
    decision = authz.evaluate(guest, "view", alice_doc, now=LOGIN_TIME)
    assert decision.allowed
    assert set(decision.policies) == {"tenant-members-view", "share-plan-with-guest"}
    authz.unlink("share-plan-with-guest")
    assert "share-plan-with-guest" not in authz.evaluate(guest, "view", alice_doc).policies
    with pytest.raises(ConfigurationError, match="cannot link templates"):
        authz.link(TemplateLink("no-such-template", "x", principal=EntityUid("Docs::User", "a")))
    assert authz.policies.links == ()


def test_cross_tenant_template_links_inherit_the_annotation() -> None:
    text = (
        '@id("tpl")\n@cross_tenant\n'
        'permit (principal == ?principal, action == Action::"read", resource == ?resource);'
    )
    project = Resource(
        Entity(
            EntityUid("Project", "zeus"),
            {
                "tenant": EntityUid("Tenant", "globex"),
                "admins": EntityUid("Group", "x"),
                "archived": False,
            },
        )
    )
    link = TemplateLink(
        "tpl", "lend", principal=EntityUid("User", "sue"), resource=EntityUid("Project", "zeus")
    )
    authz = CedarAuthorizer(policies=text, schema=ROLES / "schema.json", template_links=[link])
    sue = Principal("sue", "acme", ("password",), LOGIN_TIME)
    decision = authz.evaluate(sue, "read", project, now=LOGIN_TIME)
    assert decision.allowed and decision.policies == ("lend",)


def test_evaluation_errors_deny_count_and_log(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Counting()
    authz = roles_authorizer(metrics=metrics)
    sue = Principal("sue", "acme", ("password",), LOGIN_TIME, (EntityUid("Group", "staff"),))
    # A resource the schema does not know: Cedar refuses the request.
    odd = EntityUid("Nope", "x")
    with caplog.at_level(logging.WARNING, logger="axess.authz"):
        decision = authz.evaluate(sue, "read", odd, now=LOGIN_TIME)
    assert not decision.allowed and decision.reason == "error" and decision.errors
    assert metrics.errors == 1 and metrics.decisions == {"deny": 1}
    assert "Cedar evaluation error" in caplog.text
    # An attribute of the wrong type: refused by the schema check, a deny.
    project = Entity(
        EntityUid("Project", "p"),
        {"tenant": EntityUid("Tenant", "acme"), "admins": "not-a-group", "archived": False},
    )
    assert authz.evaluate(sue, "read", project, now=LOGIN_TIME).reason == "error"
    assert metrics.errors == 2


def test_runtime_policy_error_is_counted_while_another_policy_decides() -> None:
    text = (
        '@id("reads")\npermit (principal, action == Action::"read", resource);\n'
        '@id("overflow")\nforbid (principal, action == Action::"read", resource)\n'
        "when { context.session_age * 9223372036854775807 > 1 };"
    )
    metrics = Counting()
    authz = CedarAuthorizer(policies=text, schema=ROLES / "schema.json", metrics=metrics)
    sue = Principal("sue", "acme", ("password",), LOGIN_TIME)
    project = Entity(
        EntityUid("Project", "p"),
        {
            "tenant": EntityUid("Tenant", "acme"),
            "admins": EntityUid("Group", "g"),
            "archived": False,
        },
    )
    # The erroring forbid is skipped (Cedar semantics); the error is still counted.
    decision = authz.evaluate(sue, "read", project, now=LOGIN_TIME + 100)
    assert decision.allowed and decision.policies == ("reads",)
    assert "overflow" in decision.errors[0] and metrics.errors == 1


def test_authzstore_from_files_is_the_same_object() -> None:
    store = AuthzStore.from_files(
        str(ROLES / "policies.cedar"), str(ROLES / "schema.json"), role_type="Group"
    )
    assert isinstance(store, CedarAuthorizer)
    assert len(store.policies.policy_set) == 5


def test_decision_log_has_latency(caplog: pytest.LogCaptureFixture) -> None:
    authz = roles_authorizer(clock=MockClock(LOGIN_TIME))
    sue = Principal("sue", "acme", ("password",), LOGIN_TIME, (EntityUid("Group", "staff"),))
    project = Entity(
        EntityUid("Project", "p"),
        {
            "tenant": EntityUid("Tenant", "acme"),
            "admins": EntityUid("Group", "g"),
            "archived": False,
        },
    )
    with caplog.at_level(logging.DEBUG, logger="axess.authz.decision"):
        assert authz.evaluate(sue, 'Action::"read"', project)
    record = next(r for r in caplog.records if r.name == "axess.authz.decision")
    assert "allow" in record.getMessage() and "latency_us=" in record.getMessage()
    assert "staff-read" in record.getMessage()


# -- the pure entity model ---------------------------------------------------------------
@pytest.mark.parametrize(
    "evil",
    ['alice" || true || "', "a\\", 'x"; permit(principal, action, resource); //', "new\nline"],
)
def test_ids_cannot_inject_cedar_syntax(evil: str) -> None:
    uid = EntityUid("Docs::User", evil)
    assert parse_uid(uid.cedar()) == uid  # the escaped text reads back as the same id
    assert uid.json() == {"type": "Docs::User", "id": evil}  # requests use the structure
    assert escape_cedar_string(evil).count('"') == escape_cedar_string(evil).count('\\"')
    authz = docs_authorizer()
    principal = Principal(evil, "acme", ("password",), LOGIN_TIME)
    # Still just an id: the owner check compares it as a value.
    assert authz.evaluate(principal, "edit", _doc("acme", owner=evil), now=LOGIN_TIME).allowed
    assert not authz.evaluate(principal, "edit", _doc("acme", owner="x"), now=LOGIN_TIME)


@pytest.mark.parametrize(
    "text", ['Action::"view" || true', "Action::view", 'Action::"a', '1A::"x"', 'if::"x"', ""]
)
def test_parse_uid_accepts_nothing_but_a_uid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_uid(text)


def test_parse_uid_reads_escapes() -> None:
    assert parse_uid('App::Doc::"a\\"b\\\\c\\u{41}"') == EntityUid("App::Doc", 'a"b\\cA')


def test_cedar_values() -> None:
    assert cedar_value({"s": {"b", "a"}, "n": 3, "t": True}) == {
        "s": ["a", "b"],
        "n": 3,
        "t": True,
    }
    assert cedar_value(ipaddress.ip_address("10.0.0.1")) == {
        "__extn": {"fn": "ip", "arg": "10.0.0.1"}
    }
    for bad in (1.5, None, 2**63, object()):
        with pytest.raises((TypeError, ValueError)):
            cedar_value(bad)


def test_principal_and_context_model() -> None:
    types = Types.build("App")
    p = Principal("u1", "t1", ("password", "totp"), 1000.7, (EntityUid("App::Role", "admin"),))
    assert principal_entity(p, types).json() == {
        "uid": {"type": "App::User", "id": "u1"},
        "attrs": {
            "tenant": {"__entity": {"type": "App::Tenant", "id": "t1"}},
            "factors": ["password", "totp"],
            "authn_time": 1000,
        },
        "parents": [{"type": "App::Role", "id": "admin"}],
    }
    ctx = context_record(p, ip="not-an-ip", method="POST", path="/x", now=1100.0)
    assert ctx == {
        "ip": {"__extn": {"fn": "ip", "arg": "0.0.0.0"}},
        "method": "POST",
        "path": "/x",
        "mfa": True,
        "session_age": 99,
    }
    with pytest.raises(ValueError, match="may not replace"):
        context_record(p, ip="::1", method="GET", path="/", now=0, extra={"mfa": True})


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html,application/xhtml+xml,*/*;q=0.8", True),
        ("application/json", False),
        (None, False),
        ("*/*", False),
        ("application/json, text/html;q=0.5", False),
        ("text/html;q=0.9, application/json;q=0.2", True),
    ],
)
def test_accept_negotiation(accept: str | None, html: bool) -> None:
    assert wants_html(accept) is html


def test_scanner_splits_at_top_level_semicolons_only() -> None:
    text = (
        '// c; c\n@id("a;b") permit(principal, action, resource) when { "x;y" == "x;y" };\n'
        "forbid(principal, action, resource);"
    )
    chunks = split_policies(text)
    assert len(chunks) == 2 and chunks[0].annotations == {"id": "a;b"}
    assert text[chunks[1].start :].startswith("forbid")
