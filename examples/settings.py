"""What the examples read from the environment: keys and the store.

* Keys: with ``AXESS_SIGNING_KEYS`` (and the other ``AXESS_*_KEYS``, printed
  by ``.venv/bin/axess keygen``) set, :func:`keyring` reads them with
  ``Keyring.from_env()`` and cookies are ``Secure``. Without it the examples
  run in development mode (:data:`DEV`): generated keys (every restart logs
  everyone out), ``debug=True`` and cookies without ``Secure`` so that plain
  ``http://127.0.0.1`` works. axess logs each of these weakenings at startup.
* Store: ``AXESS_STORE_URL`` — ``memory``, ``sqlite:///path.db``,
  ``postgresql://…`` or ``mysql://…`` (run ``.venv/bin/axess migrate URL``
  first for the server stores). Each example names its default.
"""

from __future__ import annotations

import os

from axess import ConfigurationError, Keyring
from axess.stores import MemoryStore, MySQLStore, PostgresStore, SessionStore, SQLiteStore

#: Development mode: no keys in the environment.
DEV = not os.environ.get("AXESS_SIGNING_KEYS")


def keyring() -> Keyring:
    """Keys from the environment, or fresh development keys in :data:`DEV` mode."""
    return Keyring.generate() if DEV else Keyring.from_env()


def store_from_env(default: str) -> SessionStore:
    """The store named by ``AXESS_STORE_URL`` (``default`` when unset).

    Raises :class:`ConfigurationError` for a URL of another kind.
    """
    url = os.environ.get("AXESS_STORE_URL") or default
    if url == "memory":
        return MemoryStore()
    if url.startswith("sqlite:///"):
        return SQLiteStore(url.removeprefix("sqlite:///"))  # migrates itself on open
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if url.startswith("mysql://"):
        return MySQLStore(url)
    # Valkey holds sessions but no users, and these examples sign users in.
    raise ConfigurationError(
        "AXESS_STORE_URL must be memory, sqlite:///path, postgresql://… or mysql://…"
    )
