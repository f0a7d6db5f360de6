"""Exception hierarchy. Every error axess raises on purpose is an ``AxessError``."""

from __future__ import annotations


class AxessError(Exception):
    """Base class of every error raised by axess."""


class ConfigurationError(AxessError, ValueError):
    """The configuration is unsafe or inconsistent; the app must not start.

    The one rule for errors a caller can make (book: Internals, "Errors"):
    every configuration mistake — a constructor argument out of range, an
    unparsable limit string, an unknown option, a missing key — raises
    ``ConfigurationError``. It is also a ``ValueError``, so code written
    against plain ``ValueError`` keeps working. Bad *input* at run time
    (a malformed identifier, a PHC string, an audit event) stays a plain
    ``ValueError``, and never reaches a client as a 500.
    """


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
    """The database schema is newer than this version of axess knows, or
    older than it needs (``axess migrate`` was not run)."""


class EnvelopeError(AxessError):
    """A sealed session payload could not be opened (tampered, truncated, unknown kid)."""
