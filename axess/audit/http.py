"""HTTP mapping of the audit pipeline's refusal (book: Audit, "The
authentication gate").

:class:`~axess.audit.pipeline.AuditUnavailable` (a login while the
regulatory buffer is full, an ``emit_wait`` past its ``Block`` timeout, any
login after ``stop()``) becomes one response: 503, body
``{"error": "service_unavailable", "detail": "audit trail unavailable",
"retry_after": …}`` (or the HTML page for a browser), ``Retry-After`` and
``Cache-Control: no-store``.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from axess.audit.pipeline import AuditUnavailable
from axess.refusals import Refusal, RefusalResponse

AUDIT_UNAVAILABLE_DETAIL: Final = "audit trail unavailable"


def audit_unavailable_response(retry_after: int = 5) -> JSONResponse:
    """The 503 refusal with ``Retry-After``, never cached."""
    return RefusalResponse(
        Refusal(503, "service_unavailable", AUDIT_UNAVAILABLE_DETAIL, retry_after=retry_after)
    )


async def audit_unavailable_handler(request: Request, exc: Exception) -> Response:
    """Exception handler answering :class:`AuditUnavailable` with a 503
    (``Axess.install`` registers it)."""
    if isinstance(exc, AuditUnavailable):
        return audit_unavailable_response(exc.retry_after)
    raise exc
