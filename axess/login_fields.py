"""``LoginFields``: the one declaration of where a request body carries the
login identifier.

The rate limiter keys its ``login`` buckets with it (``auth_rules(login_fields=…)``,
``keys.login_identifier(…)``) and the login handler reads the identifier with
it (``await fields.read(request)``): the identifier that is counted is the one
that is checked. Both parse the same bytes with the same code.

A body that names the identifier more than once is *ambiguous* and refused
(400): a declared field repeated (``email=decoy&email=victim``: one parser
would take the first, another the last), two declared fields filled in
(``username=decoy&email=victim``), a declared field that is not text, too many
fields, or a body too large to read. See the book, Rate limiting, "One login
identifier".
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from axess.errors import AxessError, ConfigurationError
from axess.refusals import Refusal, RefusalResponse, Refused, refusal_body
from axess.stack import request_with_body

#: The identifier fields when none are declared: ``username``, else ``email``.
DEFAULT_LOGIN_FIELDS: Final = ("username", "email")
#: Largest body read for the identifier (the limiter reads no more either).
DEFAULT_MAX_BODY: Final = 64 * 1024
#: Most fields a login body may have (form and multipart).
MAX_FIELDS: Final = 200

_FORM: Final = b"application/x-www-form-urlencoded"
_MULTIPART: Final = b"multipart/form-data"


class AmbiguousIdentifier(AxessError, Refused):
    """A login body that does not name exactly one identifier (a 400).

    Also a Starlette ``HTTPException``, so it is a 400 even where no handler
    for it is registered; with the handler ``Axess.install`` registers
    (:func:`~axess.refusals.refused_handler`) it answers like every refusal,
    ``{"error": "ambiguous_identifier", "detail": …}``.
    """

    error: Final = "ambiguous_identifier"

    def __init__(self, detail: str) -> None:
        Refused.__init__(self, Refusal(400, self.error, detail))

    def body(self) -> dict[str, object]:
        return refusal_body(self.refusal)


async def ambiguous_identifier_handler(request: Request, exc: Exception) -> Response:
    """Exception handler: :class:`AmbiguousIdentifier` → its 400 refusal."""
    if not isinstance(exc, AmbiguousIdentifier):
        exc = AmbiguousIdentifier("ambiguous login identifier")
    return RefusalResponse(exc.refusal)


def content_type(scope: Scope) -> bytes:
    """The request's media type, lower case, without parameters (``b""`` if none)."""
    for k, v in scope.get("headers", ()):
        if k == b"content-type":
            return bytes(v).split(b";", 1)[0].strip().lower()
    return b""


def readable(ctype: bytes) -> bool:
    """Whether a body of this media type can carry a login identifier."""
    return ctype in (_FORM, _MULTIPART, b"application/json") or (
        ctype.startswith(b"application/") and ctype.endswith(b"+json")
    )


class LoginFields:
    """Which body fields carry the login identifier: ``LoginFields("email")``.

    ``names``: the fields, at least one (default ``username`` and ``email``);
    a body may fill in only one of them. ``max_body``: the largest body read
    (default 64 KiB); a larger one is refused, since the limiter would not
    have read it either.
    """

    __slots__ = ("max_body", "names")

    def __init__(self, *names: str, max_body: int = DEFAULT_MAX_BODY) -> None:
        names = names or DEFAULT_LOGIN_FIELDS
        if not all(isinstance(n, str) and n and n.isprintable() for n in names):
            raise ConfigurationError(
                f"login fields must be non-empty strings, e.g. LoginFields('email'), not {names!r}"
            )
        if len(set(names)) != len(names):
            raise ConfigurationError(f"login field named twice: {names!r}")
        if not isinstance(max_body, int) or max_body < 1:
            raise ConfigurationError("max_body must be a positive integer")
        self.names: tuple[str, ...] = tuple(names)
        self.max_body = max_body

    @classmethod
    def of(cls, spec: LoginFields | Iterable[str]) -> LoginFields:
        """``spec`` itself, or a declaration of the field names ``spec`` lists."""
        if isinstance(spec, LoginFields):
            return spec
        names = (spec,) if isinstance(spec, str) else tuple(spec)
        if not names:
            raise ConfigurationError("login fields: name at least one field")
        return cls(*names)

    async def read(self, request: Request) -> str:
        """The identifier in ``request``'s body, as sent ('' when there is none).

        Raises :class:`AmbiguousIdentifier` for an ambiguous body or one over
        ``max_body``. Reads the body through ``request``, which keeps it, so
        ``await request.form()`` still works afterwards.
        """
        if not readable(content_type(request.scope)):
            return ""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise AmbiguousIdentifier(_TOO_LARGE)
        body = await request.body()
        if len(body) > self.max_body:
            raise AmbiguousIdentifier(_TOO_LARGE)
        return await self.identifier_in(request.scope, body) or ""

    async def identifier_in(self, scope: Scope, body: bytes) -> str | None:
        """The identifier in ``body`` (a request body of ``scope``'s content type);
        ``None`` when it holds none or does not parse. Raises
        :class:`AmbiguousIdentifier` for an ambiguous body."""
        ctype = content_type(scope)
        if not body or not readable(ctype):
            return None
        try:
            if ctype == _FORM:
                found = self._from_form(body)
            elif ctype == _MULTIPART:
                found = await self._from_multipart(scope, body)
            else:
                found = self._from_json(body)
        except AmbiguousIdentifier:
            raise
        except Exception:  # a garbage body names no identifier
            return None
        return self._one(found)

    def _one(self, found: list[tuple[str, object]]) -> str | None:
        """The single identifier among the occurrences of the declared fields."""
        seen: set[str] = set()
        filled: list[str] = []
        for name, value in found:
            if name in seen:
                raise AmbiguousIdentifier(f"the field {name!r} appears more than once")
            seen.add(name)
            if value is None:  # JSON null: not filled in
                continue
            if not isinstance(value, str):
                raise AmbiguousIdentifier(f"the field {name!r} must be text")
            if value.strip():
                filled.append(value)
        if len(filled) > 1:
            raise AmbiguousIdentifier(
                "send the identifier in one field only: " + ", ".join(sorted(seen))
            )
        return filled[0] if filled else None

    def _from_form(self, body: bytes) -> list[tuple[str, object]]:
        if body.count(b"&") >= MAX_FIELDS:
            raise AmbiguousIdentifier(_TOO_MANY)
        pairs = parse_qsl(
            body.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="replace"
        )
        names = self.names
        return [(k, v) for k, v in pairs if k in names]

    def _from_json(self, body: bytes) -> list[tuple[str, object]]:
        data = json.loads(body, object_pairs_hook=_Pairs)
        if not isinstance(data, _Pairs):
            return []  # an array or a scalar: no fields at all
        names = self.names
        return [(k, v) for k, v in data if k in names]

    async def _from_multipart(self, scope: Scope, body: bytes) -> list[tuple[str, object]]:
        try:
            form = await request_with_body(scope, body).form(
                max_files=MAX_FIELDS, max_fields=MAX_FIELDS
            )
        except (HTTPException, MultiPartException) as exc:
            detail = exc.detail if isinstance(exc, HTTPException) else exc.message
            if "Too many" in str(detail):  # more parts than a login form has
                raise AmbiguousIdentifier(_TOO_MANY) from None
            raise
        try:
            names = self.names
            return [(k, v) for k, v in form.multi_items() if k in names]
        finally:
            await form.close()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LoginFields):
            return NotImplemented
        return (self.names, self.max_body) == (other.names, other.max_body)

    def __hash__(self) -> int:
        return hash((self.names, self.max_body))

    def __repr__(self) -> str:
        args = ", ".join(map(repr, self.names))
        if self.max_body != DEFAULT_MAX_BODY:
            args += f", max_body={self.max_body}"
        return f"LoginFields({args})"


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, duplicates kept."""


_TOO_LARGE: Final = "the login body is too large"
_TOO_MANY: Final = f"the login body has more than {MAX_FIELDS} fields"
