"""Deeply nested (or self-containing) input from the app's resource and
context callbacks is a deny with reason "error", never a RecursionError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from axess.authz import CedarAuthorizer, Entity, EntityUid, Principal
from axess.authz.model import MAX_VALUE_DEPTH, cedar_value

DOCS = Path(__file__).parent / "policies" / "docs"
ALICE = Principal("alice", "t1", ("password",), 0.0, (EntityUid("Docs::Role", "editor"),))


def _authorizer(strict: bool = True) -> CedarAuthorizer:
    return CedarAuthorizer(
        policies=DOCS / "policies.cedar",
        schema=DOCS / "schema.cedarschema",
        namespace="Docs",
        strict=strict,
    )


def _doc(**attrs: Any) -> Entity:
    base = {
        "tenant": EntityUid("Docs::Tenant", "t1"),
        "owner": EntityUid("Docs::User", "bob"),
        "classification": "internal",
    }
    return Entity(EntityUid("Docs::Document", "d1"), {**base, **attrs})


def _deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


def _looped() -> Any:
    value: list[Any] = []
    value.append(value)
    return value


def test_the_fixture_allows_the_plain_request() -> None:
    assert _authorizer().evaluate(ALICE, "view", _doc()).allowed


@pytest.mark.parametrize("value", [_deep(5000), _looped(), {"a": _deep(3000)}])
@pytest.mark.parametrize("strict", [True, False])
def test_deep_context_or_attribute_is_a_deny(value: Any, strict: bool) -> None:
    authz = _authorizer(strict)
    for decision in (
        authz.evaluate(ALICE, "view", _doc(), extra_context={"junk": value}),
        authz.evaluate(ALICE, "view", _doc(junk=value)),
    ):
        assert not decision.allowed and decision.reason == "error"
        assert decision.errors == (f"a value nested more than {MAX_VALUE_DEPTH} levels deep",)


def test_values_up_to_the_limit_convert() -> None:
    assert cedar_value(_deep(MAX_VALUE_DEPTH)) == _deep(MAX_VALUE_DEPTH)
    with pytest.raises(ValueError, match="nested more than"):
        cedar_value(_deep(MAX_VALUE_DEPTH + 1))
