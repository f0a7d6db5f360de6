"""HTTP mapping of login outcomes (book: Login, Lockout).

One shape per outcome, whatever caused it, so responses never tell an
attacker which lever locked, whether a user exists, or why a login failed:

* ``Locked`` → 429, ``Retry-After`` and :func:`~axess.authn.lockout.locked_body`;
* ``InvalidCredentials`` → 401 ``{"error": "invalid_credentials", …}``;
* ``FactorRequired`` → 200 ``{"factor_required": "totp"}``;
* ``Authenticated`` → 200 ``{"authenticated": true, …}``.

Every response carries ``Cache-Control: no-store``.
"""

from __future__ import annotations

from typing import Final

from starlette.responses import JSONResponse

from axess.authn.lockout import LOCKED_STATUS, Locked, locked_body
from axess.authn.outcomes import Authenticated, FactorRequired, InvalidCredentials, LoginOutcome

INVALID_CREDENTIALS_BODY: Final = {
    "error": "invalid_credentials",
    "detail": "invalid identifier or credentials",
}
_NO_STORE: Final = {"Cache-Control": "no-store"}


def outcome_response(outcome: LoginOutcome) -> JSONResponse:
    """The JSON response for ``outcome`` (see the module docstring)."""
    if isinstance(outcome, Locked):
        headers = {**_NO_STORE, "Retry-After": str(outcome.retry_after)}
        return JSONResponse(locked_body(outcome), status_code=LOCKED_STATUS, headers=headers)
    if isinstance(outcome, InvalidCredentials):
        return JSONResponse(dict(INVALID_CREDENTIALS_BODY), status_code=401, headers=_NO_STORE)
    if isinstance(outcome, FactorRequired):
        return JSONResponse({"factor_required": outcome.kind}, headers=_NO_STORE)
    if isinstance(outcome, Authenticated):
        body = {
            "authenticated": True,
            "user_id": outcome.user_id,
            "tenant_id": outcome.tenant_id,
            "factors": list(outcome.factors),
        }
        return JSONResponse(body, headers=_NO_STORE)
    raise TypeError(f"not a login outcome: {outcome!r}")


def unavailable_response(retry_after: int = 5) -> JSONResponse:
    """503 for a store outage during a login (fail closed, never 500)."""
    return JSONResponse(
        {"error": "unavailable", "detail": "authentication is temporarily unavailable"},
        status_code=503,
        headers={**_NO_STORE, "Retry-After": str(retry_after)},
    )
