"""The package's layers, as allow-lists (book: Internals, "Layers").

The import-linter contracts in ``pyproject.toml`` forbid named imports;
these tests state the rule the other way round, so a module or an import
nobody thought to forbid cannot slip through: every module of the package
belongs to exactly one layer, and every import points to its own layer or
one below. Pure cores use only the standard library and ``cryptography``.
"""

from __future__ import annotations

import sys
from functools import cache

import grimp

PURE = frozenset(
    {
        "axess._cache",
        "axess.audit.events",
        "axess.clock",
        "axess.crypto",
        "axess.errors",
        "axess.keys",
        "axess.ratelimit.gcra",
        "axess.session.data",
        "axess.session.envelope",
        "axess.session.events",
        "axess.text",
    }
)
#: What stores may use besides the pure cores: the health value type, the
#: metrics protocol, the log throttle, and the rate-limit bucket protocol
#: (which is to rate limits what ``axess.stores.base`` is to the rest).
SHARED = frozenset(
    {
        "axess._throttle",
        "axess.observability.health",
        "axess.observability.metrics",
        "axess.ratelimit.stores",
    }
)
FACADE = frozenset({"axess", "axess.app", "axess.cli", "axess.fastapi", "axess.user_command"})
STAGE_PACKAGES = (
    "axess.audit",
    "axess.authn",
    "axess.authz",
    "axess.observability",
    "axess.ratelimit",
    "axess.session",
)
STAGE_MODULES = frozenset({"axess.login_fields", "axess.net", "axess.refusals", "axess.stack"})
RANKS = {"pure core": 0, "shared type": 1, "store": 2, "service or stage": 3, "facade": 4}


@cache
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("axess", include_external_packages=True)


def layer(module: str) -> str | None:
    if module in PURE:
        return "pure core"
    if module in SHARED:
        return "shared type"
    if module == "axess.stores" or module.startswith("axess.stores."):
        return "store"
    if module in FACADE or module == "axess.testing" or module.startswith("axess.testing."):
        return "facade"
    if module in STAGE_MODULES or module.startswith(STAGE_PACKAGES):
        return "service or stage"
    return None


def own_modules() -> list[str]:
    return sorted(m for m in graph().modules if m == "axess" or m.startswith("axess."))


def test_every_module_belongs_to_a_layer() -> None:
    assert [m for m in own_modules() if layer(m) is None] == []


def upward_imports(g: grimp.ImportGraph) -> list[str]:
    out = []
    for module in sorted(m for m in g.modules if m == "axess" or m.startswith("axess.")):
        rank = RANKS[layer(module) or ""]
        for imported in g.find_modules_directly_imported_by(module):
            target = layer(imported)
            if target is not None and RANKS[target] > rank:
                out.append(f"{module} ({layer(module)}) -> {imported} ({target})")
    return out


def test_imports_point_down_only() -> None:
    assert upward_imports(graph()) == []


def test_pure_cores_use_only_the_standard_library_and_cryptography() -> None:
    allowed = set(sys.stdlib_module_names) | {"__future__", "cryptography"}
    found = {
        module: sorted(
            imported
            for imported in graph().find_modules_directly_imported_by(module)
            if not imported.startswith("axess") and imported not in allowed
        )
        for module in PURE
    }
    assert {m: found[m] for m in found if found[m]} == {}


def test_the_check_sees_an_upward_import() -> None:
    # On a graph of its own (the cached one stays as built): the imports the
    # forbid-lists of import-linter missed are reported here.
    g = grimp.build_graph("axess", include_external_packages=True)
    g.add_import(importer="axess.text", imported="axess.refusals")
    g.add_import(importer="axess.stores.memory", imported="axess.observability.prometheus")
    assert upward_imports(g) == [
        "axess.stores.memory (store) -> axess.observability.prometheus (service or stage)",
        "axess.text (pure core) -> axess.refusals (service or stage)",
    ]
