"""Storage backends. Server backends import their drivers lazily."""

from axess.stores.base import Backend, SessionRecord, SessionStore
from axess.stores.memory import MemoryStore

__all__ = ["Backend", "MemoryStore", "SessionRecord", "SessionStore"]
