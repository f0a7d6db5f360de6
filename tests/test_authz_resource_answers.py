"""A resource callback's answer that is slightly off (uid text where a uid
goes, ``attrs=None``, a bare uid among the related entities) is read as
meant or denied, and anything that fails while deciding is a deny with
reason ``error``: never a 500."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from starlette.requests import HTTPConnection
from test_authz_support import FORBIDDEN, authorizer, axess_with, client, login, sign_in

from axess.authz import AuthzDecision, Entity, EntityUid, Principal, Resource

ALICE = Principal("alice", "acme", ("password",), 1_700_000_000)
NOW = 1_700_000_010
D1 = EntityUid("Docs::Document", "d1")
F1 = EntityUid("Docs::Folder", "f1")
ATTRS = {
    "tenant": EntityUid("Docs::Tenant", "acme"),
    "owner": EntityUid("Docs::User", "alice"),
    "classification": "internal",
}


class Exploding(Mapping[str, Any]):
    """Attributes whose reading fails with a message that must not be logged."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("password=hunter2")

    def __len__(self) -> int:
        return 3

    def get(self, key: str, default: Any = None) -> Any:
        return default


def test_uid_text_and_references_become_uids() -> None:
    e = Entity('Docs::Document::"d1"', ATTRS, ['Docs::Folder::"f1"'])  # type: ignore[arg-type]
    assert e.uid == D1 and e.parents == (F1,)
    e = Entity({"__entity": {"type": "Docs::Document", "id": "d1"}}, ATTRS)  # type: ignore[arg-type]
    assert e.uid == D1
    assert Entity(D1, None).attrs == {}  # type: ignore[arg-type]
    r = Resource(D1, [F1, 'Docs::Folder::"f2"'])  # type: ignore[arg-type, list-item]
    assert r.entity == Entity(D1)
    assert r.related == (Entity(F1), Entity(EntityUid("Docs::Folder", "f2")))


@pytest.mark.parametrize(
    "build",
    [
        lambda: Entity(42),  # type: ignore[arg-type]
        lambda: Entity("d1"),  # type: ignore[arg-type]  (a bare id has no type)
        lambda: Entity(D1, ["tenant"]),  # type: ignore[arg-type]
        lambda: Entity(D1, ATTRS, 'Docs::Folder::"f1"'),  # type: ignore[arg-type]
        lambda: Entity(D1, ATTRS, [42]),  # type: ignore[list-item]
        lambda: Resource(Entity(D1), Entity(F1)),  # type: ignore[arg-type]
        lambda: Resource(None),  # type: ignore[arg-type]
    ],
    ids=["int-uid", "bare-id", "list-attrs", "text-parents", "int-parent", "one-related", "none"],
)
def test_what_is_no_entity_is_refused_where_it_is_built(build: Callable[[], Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        build()


def test_an_unexpected_failure_while_deciding_is_a_deny_logged_once_without_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    authz = authorizer()
    with caplog.at_level(logging.WARNING, logger="axess.authz"):
        decision = authz.evaluate(ALICE, "view", Entity(D1, Exploding()), now=NOW)
    assert not decision.allowed and decision.reason == "error"
    assert decision.errors and decision.errors[0].startswith("unexpected RuntimeError at ")
    records = [r for r in caplog.records if r.name.startswith("axess.authz")]
    assert len(records) == 1 and "RuntimeError" in records[0].getMessage()
    assert "hunter2" not in caplog.text and "hunter2" not in str(decision)


def test_evaluate_denies_a_resource_that_is_not_one() -> None:
    decision = authorizer().evaluate(ALICE, "view", 42, now=NOW)  # type: ignore[arg-type]
    assert not decision.allowed and decision.reason == "error" and decision.resource is None


def _answers() -> dict[str, tuple[Callable[[HTTPConnection], Any], int]]:
    """Callback answers and the status each gets (strict schema: a folder
    or document without its attributes is a deny)."""
    return {
        "parent-text": (lambda c: Entity(D1, ATTRS, ['Docs::Folder::"f1"']), 200),
        "uid-text": (lambda c: Entity('Docs::Document::"d1"', ATTRS), 200),
        "resource-text": (lambda c: 'Docs::Document::"d1"', 403),
        "related-uid": (lambda c: Resource(Entity(D1, ATTRS, [F1]), [F1]), 403),
        "attrs-none": (lambda c: Entity(D1, None), 403),
        "exploding-attrs": (lambda c: Entity(D1, Exploding()), 403),
        "not-a-resource": (lambda c: 42, 403),
    }


async def test_slightly_wrong_answers_over_http_are_decisions_never_500() -> None:
    authz = authorizer()
    auth = axess_with(authz)
    app = FastAPI(lifespan=auth.lifespan)
    app.add_route("/login", login, methods=["POST"])
    answers = _answers()
    for name, (answer, _) in answers.items():
        guard = authz.require("view", resource=answer)

        async def route(d: AuthzDecision = Depends(guard)) -> dict[str, bool]:
            return {"ok": True}

        app.add_api_route(f"/answers/{name}", route, methods=["GET"])
    auth.install(app)
    async with auth.lifespan(), client(app) as c:
        await sign_in(c, "alice")
        for name, (_, status) in answers.items():
            r = await c.get(f"/answers/{name}")
            assert r.status_code == status, (name, r.text)
            if status == 403:
                assert r.json() == FORBIDDEN
