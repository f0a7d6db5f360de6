"""HTTP mapping of login outcomes (book: Login, Lockout).

One shape per outcome, whatever caused it, so responses never tell an
attacker which lever locked, whether a user exists, or why a login failed:

* ``Locked`` → 429 ``locked``, ``Retry-After`` (:func:`~axess.authn.lockout.locked_body`);
* ``InvalidCredentials`` → 401 ``invalid_credentials``;
* ``FactorRequired`` → 200 ``{"factor_required": "totp"}``;
* ``Authenticated`` → 200 ``{"authenticated": true, …}``.

The two refusals are :class:`~axess.refusals.RefusalResponse`: the one JSON
shape, or the HTML page for a browser (book: Errors and refusals). Every
response carries ``Cache-Control: no-store``.
"""

from __future__ import annotations

from typing import Final

from starlette.responses import JSONResponse

from axess.authn.lockout import LOCKED_STATUS, Locked, locked_body
from axess.authn.outcomes import Authenticated, FactorRequired, InvalidCredentials, LoginOutcome
from axess.refusals import Refusal, RefusalResponse

INVALID_CREDENTIALS: Final = Refusal(
    401, "invalid_credentials", "invalid identifier or credentials"
)
#: A store outage during a login: fail closed, never 500.
UNAVAILABLE_DETAIL: Final = "authentication is temporarily unavailable"
_NO_STORE: Final = {"Cache-Control": "no-store"}


def locked_refusal(locked: Locked) -> Refusal:
    """The 429 of a locked attempt: the same for every lever."""
    body = locked_body(locked)
    return Refusal(LOCKED_STATUS, str(body["error"]), str(body["detail"]), locked.retry_after)


def outcome_response(outcome: LoginOutcome) -> JSONResponse:
    """The response for ``outcome`` (see the module docstring)."""
    if isinstance(outcome, Locked):
        return RefusalResponse(locked_refusal(outcome))
    if isinstance(outcome, InvalidCredentials):
        return RefusalResponse(INVALID_CREDENTIALS)
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
    """503 ``service_unavailable`` for a store outage during a login (fail
    closed, never 500)."""
    return RefusalResponse(
        Refusal(503, "service_unavailable", UNAVAILABLE_DETAIL, retry_after=retry_after)
    )
