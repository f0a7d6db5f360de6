"""Login outcomes (book: Login): what :class:`~axess.authn.service.AuthnService` returns.

``Locked`` is the lockout's own outcome (:class:`axess.authn.lockout.Locked`):
``retry_after`` seconds, and a ``lever`` for logs and metrics only (never
shown to the client). Map any outcome to HTTP with
:func:`axess.authn.http.outcome_response`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from axess.authn.lockout import Locked


@dataclass(frozen=True, slots=True)
class FactorRequired:
    """The next step: prove ``kind`` (``"password"`` after ``begin_login``,
    ``"totp"`` — or a recovery code — after the password)."""

    kind: str


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The session is now authenticated (its id rotates on this response)."""

    user_id: str
    tenant_id: str | None
    factors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InvalidCredentials:
    """The attempt failed. Deliberately carries no reason: unknown users,
    wrong passwords, suspended accounts and IP-policy rejections all look
    the same."""


LoginOutcome: TypeAlias = FactorRequired | Authenticated | InvalidCredentials | Locked

__all__ = ["Authenticated", "FactorRequired", "InvalidCredentials", "Locked", "LoginOutcome"]
