"""Storage backends.

``MemoryStore`` is always available; the SQL and Valkey stores import their
drivers only when first used, so the install without extras stays small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from axess.stores.base import (
    NOT_NOW,
    Backend,
    ImmediateSessionRead,
    NotNow,
    SessionRecord,
    SessionStore,
)
from axess.stores.memory import MemoryStore

if TYPE_CHECKING:
    from axess.stores.composite import CompositeStore
    from axess.stores.sql import MySQLStore, PostgresStore, SQLiteStore
    from axess.stores.valkey import ValkeyStore

_LAZY = {
    "SQLiteStore": "axess.stores.sql",
    "PostgresStore": "axess.stores.sql",
    "MySQLStore": "axess.stores.sql",
    "ValkeyStore": "axess.stores.valkey",
    "CompositeStore": "axess.stores.composite",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'axess.stores' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "NOT_NOW",
    "Backend",
    "CompositeStore",
    "ImmediateSessionRead",
    "MemoryStore",
    "MySQLStore",
    "NotNow",
    "PostgresStore",
    "SQLiteStore",
    "SessionRecord",
    "SessionStore",
    "ValkeyStore",
]
