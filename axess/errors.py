"""Exception hierarchy. Every error axess raises on purpose is an ``AxessError``."""

from __future__ import annotations


class AxessError(Exception):
    """Base class of every error raised by axess."""


class ConfigurationError(AxessError):
    """The configuration is unsafe or inconsistent; the app must not start."""


class StoreError(AxessError):
    """A backend could not answer (outage, timeout, protocol error).

    The middleware maps it to 503 with ``Retry-After``; it never means
    "not found".
    """

    def __init__(self, message: str, *, backend: str = "", substore: str = "") -> None:
        super().__init__(message)
        self.backend = backend
        self.substore = substore


class SchemaVersionError(ConfigurationError):
    """The database schema is newer than this version of axess knows."""


class EnvelopeError(AxessError):
    """A sealed session payload could not be opened (tampered, truncated, unknown kid)."""


class SessionTooLarge(AxessError):
    """The session's custom data exceeds the configured size cap."""
