"""Policy and schema text nested deeper than cedarpy's parser survives is a
ConfigurationError, not a crash of the process (cedarpy overflows the
native stack: exit 139). Each load runs in a subprocess so that a crash
fails the test instead of killing the test run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from axess import ConfigurationError
from axess.authz import CedarAuthorizer, Entity, EntityUid, Principal
from axess.authz.policies import MAX_NESTING, check_nesting

DOCS = Path(__file__).parent / "policies" / "docs"
SCHEMA = DOCS / "schema.cedarschema"
HEAD = 'permit (principal, action == Docs::Action::"view", resource) when { '


def _nested(opening: str, closing: str, levels: int) -> str:
    return HEAD + opening * levels + "true" + closing * levels + " };\n"


def _load(tmp_path: Path, policies: str, *, reload: bool = False, schema: str = "") -> dict:
    """Build (or build, then reload onto) an authorizer in a fresh process."""
    (tmp_path / "p.cedar").write_text(policies)
    (tmp_path / "ok.cedar").write_text(HEAD + "true };\n")
    if schema:
        (tmp_path / "s.cedarschema").write_text(schema)
    script = textwrap.dedent(
        f"""
        import json
        from pathlib import Path
        from axess import ConfigurationError
        from axess.authz import CedarAuthorizer
        tmp, schema = Path({str(tmp_path)!r}), Path({str(SCHEMA)!r})
        if {bool(schema)!r}:
            schema = tmp / "s.cedarschema"
        first = tmp / ("ok.cedar" if {reload!r} else "p.cedar")
        try:
            az = CedarAuthorizer(policies=first, schema=schema, namespace="Docs")
            if {reload!r}:
                az.reload(policies=tmp / "p.cedar")
        except ConfigurationError as exc:
            print(json.dumps({{"error": str(exc)}}))
        else:
            print(json.dumps({{"loaded": True}}))
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-500:]}"
    return json.loads(r.stdout)


@pytest.mark.parametrize(("opening", "closing"), [("(", ")"), ("[", "] == [true]"), ("{a: ", "}")])
@pytest.mark.parametrize("reload", [False, True])
def test_policies_nested_past_the_limit_are_refused(
    tmp_path: Path, opening: str, closing: str, reload: bool
) -> None:
    got = _load(tmp_path, _nested(opening, closing, 1000), reload=reload)
    assert "error" in got
    column = len(HEAD) + (MAX_NESTING - 1) * len(opening) + 1  # the opening past the limit
    assert f"p.cedar:1:{column}: more than {MAX_NESTING} nested" in got["error"]


def test_too_many_ifs_in_one_policy_are_refused(tmp_path: Path) -> None:
    body = "if true then " * 10_000 + "true" + " else false" * 10_000
    got = _load(tmp_path, HEAD + body + " };\n")
    assert f"more than {MAX_NESTING} `if` in one policy" in got["error"]


def test_a_schema_nested_past_the_limit_is_refused(tmp_path: Path) -> None:
    record = "{ a: " * 5000 + "Long" + " }" * 5000
    schema = SCHEMA.read_text().replace("classification: String,", f"deep: {record},")
    got = _load(tmp_path, HEAD + "true };\n", schema=schema)
    assert "Cedar schema" in got["error"] and f"more than {MAX_NESTING} nested" in got["error"]


def test_nesting_up_to_the_limit_loads_and_decides() -> None:
    depth = MAX_NESTING - 1  # the policy's own braces are one level
    authz = CedarAuthorizer(policies=_nested("(", ")", depth), schema=SCHEMA, namespace="Docs")
    alice = Principal("alice", "t1", ("password",), 0.0)
    doc = Entity(
        EntityUid("Docs::Document", "d1"),
        {
            "tenant": EntityUid("Docs::Tenant", "t1"),
            "owner": EntityUid("Docs::User", "bob"),
            "classification": "internal",
        },
    )
    assert authz.evaluate(alice, "view", doc).allowed
    with pytest.raises(
        ConfigurationError, match=f"<policies>:1:{len(HEAD) + MAX_NESTING}: more than"
    ):
        authz.reload(policies=_nested("(", ")", depth + 1))
    assert authz.evaluate(alice, "view", doc).allowed  # the old set is kept


def test_strings_and_comments_do_not_count() -> None:
    deep = "(" * 1000
    check_nesting(
        f'// {deep}\npermit (principal, action, resource) when {{ "{deep}" == "" }};', "x"
    )
    for _ in range(2):  # the if count restarts with each policy
        check_nesting(
            "permit (principal, action, resource) when { if true then true else false };" * 300, "x"
        )
