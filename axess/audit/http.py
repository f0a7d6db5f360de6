"""HTTP mapping of the audit pipeline's refusal (book: Audit, "The
authentication gate").

:class:`~axess.audit.pipeline.AuditUnavailable` (a login while the
regulatory buffer is full, an ``emit_wait`` past its ``Block`` timeout, any
login after ``stop()``) becomes one response: 503, body
``{"error": "service_unavailable", "detail": "audit trail unavailable"}``,
``Retry-After`` and ``Cache-Control: no-store``.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from axess.audit.pipeline import AuditUnavailable

AUDIT_UNAVAILABLE_BODY: Final = {
    "error": "service_unavailable",
    "detail": "audit trail unavailable",
}


def audit_unavailable_response(retry_after: int = 5) -> JSONResponse:
    """503 JSON with ``Retry-After``, never cached."""
    return JSONResponse(
        dict(AUDIT_UNAVAILABLE_BODY),
        status_code=503,
        headers={"Retry-After": str(retry_after), "Cache-Control": "no-store"},
    )


async def audit_unavailable_handler(request: Request, exc: Exception) -> Response:
    """Exception handler answering :class:`AuditUnavailable` with a 503
    (``Axess.install`` registers it)."""
    if isinstance(exc, AuditUnavailable):
        return audit_unavailable_response(exc.retry_after)
    raise exc
